"""The decode fast paths. In the general forward, rows of a KV cache in step take a
rotary-table slice and no attention mask, and read the cache's lengths once per forward
(KVCache.begin); a small model's decode steps run `decode_step` on fused, transposed weights.
Both must give what the general path (a positions tensor and a mask) gives, and greedy
decoding must stay what it was: equal to decoding without a cache and to the batched engine."""

from __future__ import annotations

import pytest
import torch

from lmforge.design.spec import ModelDesign
from lmforge.engine.generate import generate_batch, generate_tokens
from lmforge.engine.sampling import SamplingParams
from lmforge.model import decode_step as decode_step_module
from lmforge.model.decode_step import decode_step, decode_weights
from lmforge.model.init import initialize
from lmforge.model.lora import apply_lora
from lmforge.model.transformer import Transformer

DESIGN = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=512,
                     context_length=64, name="test")


@pytest.fixture(scope="module")
def model() -> Transformer:
    return initialize(Transformer(DESIGN), "gpt2", seed=0).eval()


@torch.no_grad()
def test_a_decode_step_in_step_equals_the_masked_step(model):
    """The same steps twice: plain (the fast path) and with explicit positions, which take
    the general path (positions tensor, rotary gather, a mask). Same arithmetic apart from
    the mask's kernel path, so they agree to fp32 rounding (1e-5)."""
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(1))
    fast, general = model.new_cache(2), model.new_cache(2)
    model(ids, fast)
    model(ids, general)
    token = ids[:, -1:]
    for _ in range(6):
        a = model(token, fast)
        b = model(token, general, positions=general.lengths[:, None].clone())
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
        token = a[:, -1].argmax(-1, keepdim=True)
    assert fast.lengths.tolist() == general.lengths.tolist() == [15, 15]


@torch.no_grad()
def test_chunks_after_a_history_still_see_only_their_past(model):
    """Several new tokens after a history (rows in step, t > 1) still need the mask:
    chunked decoding equals the full forward (1e-5: chunking changes the matmul shapes)."""
    ids = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(2))
    full = model(ids)
    cache = model.new_cache(1)
    parts = [model(ids[:, :10], cache), model(ids[:, 10:11], cache), model(ids[:, 11:], cache)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_greedy_is_unchanged(model):
    """generate_tokens (fast path) = decoding without a cache = row 0 of a batch whose rows
    are out of step (general path): the same tokens, 40 of them."""
    prompt = [1, 17, 42, 99, 7]
    params = SamplingParams(temperature=0, max_new_tokens=40)
    fast = list(generate_tokens(model, prompt, params))
    assert fast == list(generate_tokens(model, prompt, params, use_cache=False))
    assert generate_batch(model, [prompt, [3, 4] + prompt], params)[0] == fast
    assert len(fast) == 40


@torch.no_grad()
def test_a_refused_forward_leaves_the_cache_usable(model):
    cache = model.new_cache(1, 8)
    model(torch.tensor([[1, 2, 3]]), cache)
    with pytest.raises(ValueError, match="KV cache full"):
        model(torch.arange(6)[None], cache)
    assert cache.lengths.tolist() == [3]
    step = model(torch.tensor([[4]]), cache)
    assert torch.allclose(step[:, -1], model(torch.tensor([[1, 2, 3, 4]]))[:, -1], atol=1e-5)


@torch.no_grad()
def test_the_fused_decode_step_equals_the_general_forward(model):
    """decode_step (fused, transposed weights) against Transformer.forward on the same
    cache history, rows in step and out of step (a mask), with the same cache writes."""
    for lengths in ([9, 9], [9, 4, 13], [9, 4, 13, 6, 11]):  # 5 rows: packed weights
        ids = torch.randint(0, 512, (len(lengths), max(lengths)),
                            generator=torch.Generator().manual_seed(3))
        fast, general = model.new_cache(len(lengths)), model.new_cache(len(lengths))
        real = torch.tensor(lengths)
        model(ids, fast, lengths=real)
        model(ids, general, lengths=real)
        token = ids[:, -1]
        weights = decode_weights(model)
        for i in range(5):
            ends = [n + i + 1 for n in lengths]
            a = decode_step(model, weights, token, fast, ends)
            b = model(token[:, None], general)[:, -1]
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
            token = a.argmax(-1)
        assert fast.lengths.tolist() == general.lengths.tolist() == [n + 5 for n in lengths]
        for r, n in enumerate(lengths):  # every slot a row wrote, and nothing else
            assert torch.allclose(fast.keys[:, r, :, :n + 5], general.keys[:, r, :, :n + 5],
                                  atol=1e-5)
            assert torch.allclose(fast.values[:, r, :, :n + 5],
                                  general.values[:, r, :, :n + 5], atol=1e-5)


def test_fused_weights_follow_the_model_and_stay_out_of_adapters_and_large_models(
        model, monkeypatch):
    trained = initialize(Transformer(DESIGN), "gpt2", seed=5).eval()
    first = decode_weights(trained)
    assert decode_weights(trained) is first  # reused while nothing changed
    with torch.no_grad():
        trained.model.layers[0].mlp.down_proj.weight.mul_(3)  # a training step, in place
    assert decode_weights(trained) is not first
    prompt, params = [1, 17, 42], SamplingParams(temperature=0, max_new_tokens=30)
    assert list(generate_tokens(trained, prompt, params)) == \
        list(generate_tokens(trained, prompt, params, use_cache=False))
    assert decode_weights(apply_lora(trained, r=2)) is None  # adapters: the general forward
    monkeypatch.setattr(decode_step_module, "FAST_DECODE_MAX_BYTES", 1000)
    assert decode_weights(model) is None
