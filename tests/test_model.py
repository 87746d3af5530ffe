import math

import pytest
import torch
import torch.nn.functional as F

from lmforge.design.spec import ModelDesign, from_preset
from lmforge.engine.generate import generate_tokens
from lmforge.engine.sampling import SamplingParams, sample_next
from lmforge.model.init import SCHEMES, initialize
from lmforge.model.loss import IGNORE_INDEX, linear_cross_entropy
from lmforge.model.transformer import Transformer

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
    # A vanishing top_p keeps the likeliest token (found by the server's fuzz: rounding in
    # the cumulative sum dropped every token, and sampling failed on NaN probabilities).
    wide = torch.randn(4, 4096, generator=torch.Generator().manual_seed(1)) * 3
    for top_p in (1e-300, 5e-324, 1e-12):
        picked = sample_next(wide, SamplingParams(1.0, top_p=top_p), gen)
        assert torch.equal(picked, wide.argmax(dim=-1))


def test_generation_stops_at_the_context_length():
    m = make()
    out = list(generate_tokens(m, list(range(60)), SamplingParams(0, max_new_tokens=50)))
    assert len(out) == 4


# --- the fused, chunked output head + loss (model/loss.py) ---------------------------------

def _head_case(n_ignored=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 41, 32, generator=g, requires_grad=True)
    weight = (torch.randn(300, 32, generator=g) * 0.5).requires_grad_()
    targets = torch.randint(0, 300, (3, 41), generator=g)
    targets.view(-1)[torch.randperm(123, generator=g)[:n_ignored]] = IGNORE_INDEX
    return hidden, weight, targets


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk", [1, 16, 50, 1000])  # uneven, one token, all in one chunk
def test_linear_cross_entropy_matches_f_cross_entropy(reduction, chunk):
    hidden, weight, targets = _head_case()
    ours = linear_cross_entropy(hidden, weight, targets, reduction=reduction, chunk=chunk)
    ref = F.cross_entropy((hidden @ weight.T).flatten(0, 1), targets.flatten(),
                          ignore_index=IGNORE_INDEX, reduction=reduction)
    ref = ref.view(targets.shape) if reduction == "none" else ref
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)
    upstream = torch.rand(ref.shape, generator=torch.Generator().manual_seed(1)) + 0.5
    got = torch.autograd.grad(ours, (hidden, weight), upstream)
    want = torch.autograd.grad(ref, (hidden, weight), upstream)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()


def test_linear_cross_entropy_ignored_tokens_and_no_grad():
    hidden, weight, targets = _head_case(n_ignored=0)
    targets[0] = IGNORE_INDEX  # a whole sequence without loss: no gradient reaches it
    loss = linear_cross_entropy(hidden, weight, targets, chunk=8)
    (grad_h,) = torch.autograd.grad(loss, hidden)
    assert torch.equal(grad_h[0], torch.zeros_like(grad_h[0])) and grad_h[1:].abs().sum() > 0
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(hidden, weight, targets, chunk=8), loss)
    everything_ignored = torch.full_like(targets, IGNORE_INDEX)
    assert linear_cross_entropy(hidden, weight, everything_ignored, reduction="sum") == 0
    with pytest.raises(ValueError):
        linear_cross_entropy(hidden, weight, targets[:, :-1])


@pytest.mark.parametrize("tie", [True, False])
def test_model_loss_path_equals_logits_path(tie):
    """model(ids, targets=...) gives the loss and every parameter's gradient of the plain
    logits + F.cross_entropy path."""
    m = make(SMALL.replace(tie_embeddings=tie)).train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (2, 33), generator=g)
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[1, :5] = IGNORE_INDEX
    fused = m(x, targets=y)
    fused_grads = torch.autograd.grad(fused, list(m.parameters()))
    plain = F.cross_entropy(m(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
    plain_grads = torch.autograd.grad(plain, list(m.parameters()))
    assert torch.allclose(fused, plain, atol=1e-5)
    for (name, _), a, b in zip(m.named_parameters(), fused_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4), name
    per_token = m(x, targets=y, reduction="none")
    assert per_token.shape == y.shape and torch.allclose(
        per_token.sum() / (y != IGNORE_INDEX).sum(), fused, atol=1e-5)


def test_compiled_blocks_keep_names_and_results():
    """Regional compilation traces each block whole (fullgraph) with unchanged parameter
    names; the eager backend keeps the test fast while exercising the same tracing."""
    m = make()
    ids = torch.randint(0, 512, (2, 16))
    keys = list(m.state_dict())
    with torch.no_grad():
        eager = m(ids)
    m.compile_blocks(backend="eager", fullgraph=True)
    assert list(m.state_dict()) == keys
    with torch.no_grad():
        assert torch.allclose(m(ids), eager, atol=1e-6)
        cache = m.new_cache(2)  # decoding with a cache still works, eagerly
        parts = [m(ids[:, :9], cache), m(ids[:, 9:10], cache), m(ids[:, 10:], cache)]
    assert torch.allclose(torch.cat(parts, 1), eager, atol=1e-5)
