"""The engine: batched generation of prompts of different lengths equals one-at-a-time output."""

import pytest
import torch

from lmforge.design.spec import ModelDesign
from lmforge.engine.generate import generate_batch, generate_tokens
from lmforge.engine.sampling import SamplingParams
from lmforge.errors import LmforgeError
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer

SMALL = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=512,
                    context_length=64, name="test")


@pytest.fixture(scope="module")
def model() -> Transformer:
    # A sharper model than a random init, so greedy choices are well separated and a masking
    # bug changes them: scale the output head up.
    m = initialize(Transformer(SMALL), "gpt2", 0).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(20)
    return m


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 512, (n,), generator=g).tolist() for n in lengths]


def test_batched_greedy_equals_one_at_a_time(model):
    prompts = _prompts([3, 17, 9, 1, 30])
    params = SamplingParams(temperature=0, max_new_tokens=12)
    batched = generate_batch(model, prompts, params)
    alone = [list(generate_tokens(model, p, params)) for p in prompts]
    assert batched == alone
    assert all(len(o) == 12 for o in batched)


def test_each_row_stops_at_its_own_stop_id_and_budget(model):
    prompts = _prompts([4, 10, 6], seed=1)
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    free = [list(generate_tokens(model, p, greedy)) for p in prompts]
    stop = free[1][3]  # row 1 stops at its 4th token; others stop wherever that id shows up
    rows = [SamplingParams(temperature=0, max_new_tokens=n) for n in (10, 10, 2)]
    out = generate_batch(model, prompts, rows, stop_ids=(stop,))
    expected = []
    for tokens, p in zip(free, rows):
        cut = tokens[:p.max_new_tokens]
        if stop in cut:
            cut = cut[:cut.index(stop) + 1]
        expected.append(cut)
    assert out == expected
    assert out[1][-1] == stop and len(out[2]) == 2


def test_sampled_rows_follow_their_own_seed(model):
    prompts = _prompts([5, 12], seed=2)
    rows = [SamplingParams(temperature=1.0, top_k=50, max_new_tokens=8, seed=s) for s in (1, 2)]
    together = generate_batch(model, prompts, rows)
    alone = [generate_batch(model, [p], [r])[0] for p, r in zip(prompts, rows)]
    assert together == alone
    assert together == [list(generate_tokens(model, p, r)) for p, r in zip(prompts, rows)]


def test_budget_stops_at_the_context_end(model):
    out = generate_batch(model, _prompts([60, 2]), SamplingParams(temperature=0,
                                                                 max_new_tokens=20))
    assert [len(o) for o in out] == [4, 20]


def test_bad_batches_are_refused(model):
    with pytest.raises(LmforgeError, match="empty"):
        generate_batch(model, [[1, 2], []], SamplingParams(temperature=0))
    with pytest.raises(LmforgeError, match="2 sampling settings for 1 prompts"):
        generate_batch(model, [[1, 2]], [SamplingParams(), SamplingParams()])
