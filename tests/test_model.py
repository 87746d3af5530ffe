import math

import pytest
import torch

from lmforge.design.spec import ModelDesign, from_preset
from lmforge.model.init import SCHEMES, initialize
from lmforge.model.transformer import Transformer
from lmforge.serve.generate import generate_tokens
from lmforge.serve.sampling import SamplingParams, sample_next

SMALL = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=512,
                    context_length=64, name="test")


def make(design=SMALL, scheme="gpt2", seed=0):
    return initialize(Transformer(design), scheme, seed).eval()


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_init_is_seeded_and_reproducible(scheme):
    a, b, c = make(scheme=scheme, seed=1), make(scheme=scheme, seed=1), make(scheme=scheme, seed=2)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if pa.ndim == 2:
            assert not torch.equal(pa, pc), name


def test_gpt2_scheme_scales_residual_projections():
    m = make(from_preset("tiny"))
    assert m.model.layers[0].self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    expected = 0.02 / math.sqrt(2 * 4)
    assert m.model.layers[0].mlp.down_proj.weight.std().item() == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_v0_is_random_and_meaningless(scheme):
    """Mean next-token entropy of model v0 is within 5% of log(vocab): a uniform guesser."""
    d = from_preset("tiny")
    m = make(d, scheme)
    ids = torch.randint(0, d.vocab_size, (4, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp = m(ids).log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1).mean().item()
    assert entropy == pytest.approx(math.log(d.vocab_size), rel=0.05)


def test_kv_cache_chunks_match_full_forward():
    m = make()
    ids = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        full = m(ids)
        cache = m.new_cache(2)
        parts = [m(ids[:, :7], cache), m(ids[:, 7:8], cache), m(ids[:, 8:], cache)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_greedy_with_kv_cache_equals_greedy_without():
    m = make()
    params = SamplingParams(temperature=0, max_new_tokens=30)
    prompt = [1, 17, 42, 99]
    with_cache = list(generate_tokens(m, prompt, params, use_cache=True))
    without = list(generate_tokens(m, prompt, params, use_cache=False))
    assert with_cache == without and len(with_cache) == 30


def test_seeded_sampling_is_reproducible_and_stops_at_stop_ids():
    m = make()
    params = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, max_new_tokens=20, seed=3)
    a = list(generate_tokens(m, [1, 2, 3], params))
    assert a == list(generate_tokens(m, [1, 2, 3], params))
    stop = a[5]
    b = list(generate_tokens(m, [1, 2, 3], params, stop_ids=(stop,)))
    assert b[-1] == stop and len(b) == a.index(stop) + 1


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    top2 = {sample_next(logits, SamplingParams(1.0, top_k=2), gen).item() for _ in range(200)}
    assert top2 == {0, 1}
    # softmax mass: 0.64, 0.24, 0.09...: top_p=0.8 keeps tokens 0 and 1 only
    nucleus = {sample_next(logits, SamplingParams(1.0, top_p=0.8), gen).item() for _ in range(200)}
    assert nucleus == {0, 1}


def test_generation_stops_at_the_context_length():
    m = make()
    out = list(generate_tokens(m, list(range(60)), SamplingParams(0, max_new_tokens=50)))
    assert len(out) == 4
