import random

import pytest
import torch

from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError
from lmforge.eval.scorer import LoglikelihoodScorer, encode_pair, rolling_windows
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import train_tokenizer

CTX = 32
DESIGN = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=512,
                     context_length=CTX, name="scorer-test")
# Scores of one request computed in different batches, paddings or thread counts differ by
# fp32 summation order only: about 1e-7 per log-prob here, so 1e-5 on a sum of at most 8
# (1e-4 on the longer rolling sums) is loose enough for any machine and far tighter than any
# real error (a wrong position or mask moves a score by more than 1e-2).
ABS = 1e-5
# "Greedy" compares an argmax: it may differ between two computations only where the top two
# logits are closer than their rounding noise, so it is compared where the margin is wider.
MARGIN = 1e-4


@pytest.fixture(scope="module")
def model():
    return initialize(Transformer(DESIGN), "gpt2", 0).eval()


def naive(model, ctx, cont, margin=False):
    """Full logits for the (left-truncated) sequence, one request at a time; with `margin`,
    also the smallest gap between the top two logits at the scored positions."""
    whole = (list(ctx) + list(cont))[-(CTX + 1):]
    with torch.no_grad():
        logp = model(torch.tensor([whole[:-1]])).float().log_softmax(-1)[0]
    first = len(whole) - 1 - len(cont)
    rows = logp[first:first + len(cont)]
    picked = rows[torch.arange(len(cont)), torch.tensor(cont)]
    out = picked.sum().item(), bool((rows.argmax(-1) == torch.tensor(cont)).all())
    if margin:
        top2 = rows.topk(2, dim=-1).values
        return (*out, float((top2[:, 0] - top2[:, 1]).min()))
    return out


def make_requests(seed=0, n_ctx=12, long=True):
    rng = random.Random(seed)
    reqs = []
    for i in range(n_ctx):
        # Some contexts longer than the model's context, to exercise left truncation.
        n = rng.randrange(1, 60 if long and i % 3 == 0 else 20)
        ctx = [rng.randrange(512) for _ in range(n)]
        for _ in range(rng.randrange(1, 5)):  # shared contexts with 1-4 continuations
            reqs.append((ctx, [rng.randrange(512) for _ in range(rng.randrange(1, 9))]))
    reqs.append(reqs[3])  # an exact duplicate
    rng.shuffle(reqs)
    return reqs


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_scores_equal_naive_full_logits(model, packed, batch_size):
    reqs = make_requests()
    assert any(len(c) + len(x) > CTX + 1 for c, x in reqs)  # truncation is exercised
    got = LoglikelihoodScorer(model, batch_size, packed=packed).loglikelihood(reqs)
    want = [naive(model, c, x, margin=True) for c, x in reqs]
    for (g_ll, g_greedy), (w_ll, w_greedy, gap) in zip(got, want, strict=True):
        assert g_ll == pytest.approx(w_ll, abs=ABS)
        assert g_greedy == w_greedy or gap < MARGIN


def test_batching_and_token_budget_do_not_change_results(model):
    reqs = make_requests(seed=1)
    ref = LoglikelihoodScorer(model, 1, packed=False).loglikelihood(reqs)
    gaps = [naive(model, c, x, margin=True)[2] for c, x in reqs]
    for scorer in (LoglikelihoodScorer(model, 64), LoglikelihoodScorer(model, 8,
                                                                       max_tokens_per_batch=50)):
        for (a, ga), (b, gb), gap in zip(scorer.loglikelihood(reqs), ref, gaps, strict=True):
            assert a == pytest.approx(b, abs=ABS) and (ga == gb or gap < MARGIN)


def test_is_greedy_on_a_constructed_continuation(model):
    ctx = [5, 17, 200, 33]
    ids = list(ctx)
    with torch.no_grad():
        for _ in range(4):  # the model's own greedy continuation
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    greedy = ids[len(ctx):]
    wrong = greedy[:2] + [(greedy[2] + 1) % 512] + greedy[3:]
    (_, g1), (_, g2) = LoglikelihoodScorer(model).loglikelihood([(ctx, greedy), (ctx, wrong)])
    assert g1 is True and g2 is False


def test_rolling_windows_match_lm_eval_and_cover_every_token():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens = list(range(100, 190))
    for max_len in (8, 32, 89, 90, 200):
        ours = rolling_windows(tokens, 0, max_len)
        theirs = [make_disjoint_window(w) for w in
                  get_rolling_token_windows(tokens, 0, max_len, context_len=1)]
        assert ours == [tuple(map(list, w)) for w in theirs]
        assert sum((cont for _, cont in ours), []) == tokens


def test_rolling_equals_one_full_pass_when_the_text_fits(model):
    tokens = [random.Random(2).randrange(7, 512) for _ in range(CTX)]
    scorer = LoglikelihoodScorer(model, prefix_id=0)
    (total,) = scorer.rolling_loglikelihood([tokens])
    ll, _ = naive(model, [0], tokens)
    assert total == pytest.approx(ll, abs=1e-4)


def test_rolling_longer_text_sums_its_windows(model):
    tokens = [random.Random(3).randrange(7, 512) for _ in range(3 * CTX + 5)]
    scorer = LoglikelihoodScorer(model, batch_size=2, prefix_id=0)
    total, empty = scorer.rolling_loglikelihood([tokens, []])
    expected = sum(naive(model, c, x)[0] for c, x in rolling_windows(tokens, 0, CTX))
    assert total == pytest.approx(expected, abs=1e-4) and empty == 0.0


def test_encode_pair_moves_trailing_space_and_adds_bos():
    tok = train_tokenizer(["the cat sat on the mat. Paris is in France."] * 20, 300,
                          show_progress=False)
    ctx, cont = encode_pair(tok, "The capital is ", "Paris")
    assert ctx[0] == tok.bos_id and tok.decode(ctx[1:]) == "The capital is"
    assert tok.decode(cont) == " Paris"
    ctx2, cont2 = encode_pair(tok, "The capital is ", "Paris", add_bos=False)
    assert ctx2 == ctx[1:] and cont2 == cont
    assert encode_pair(tok, "", "x") == ([tok.bos_id], tok.encode("x"))


def test_bad_requests_raise_clear_errors(model):
    scorer = LoglikelihoodScorer(model)
    with pytest.raises(LmforgeError, match="empty continuation"):
        scorer.loglikelihood([([1, 2], [])])
    with pytest.raises(LmforgeError, match="longer than the model's context"):
        scorer.loglikelihood([([1], list(range(CTX + 1)))])


def test_unscorable_says_why_before_scoring(model):
    scorer = LoglikelihoodScorer(model)
    assert scorer.unscorable(list(range(CTX))) is None  # exactly the context: scorable
    too_long = scorer.unscorable(list(range(CTX + 1)))
    assert too_long == f"continuation longer than the model's context ({CTX} tokens)"
    assert scorer.unscorable([]) == "empty continuation"
    # A continuation as long as the context is scored from the prefix alone (lm-eval's
    # HFLM keeps max_length + 1 tokens), and matches the naive full-logits score.
    cont = [random.Random(4).randrange(7, 512) for _ in range(CTX)]
    ((ll, _),) = scorer.loglikelihood([([5, 6, 7], cont)])
    assert ll == pytest.approx(naive(model, [5, 6, 7], cont)[0], abs=1e-4)
