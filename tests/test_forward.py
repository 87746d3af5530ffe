"""The one forward: packed documents, explicit masks and positions, per-row KV-cache lengths.

Tolerances: packed and unpacked rows run the same math on different shapes, so fp32 sums differ
in order; 1e-5 absolute on per-token losses and logits (values of order 1-10) covers that on any
BLAS and thread count, and is far below any real masking bug (which moves losses by > 1e-2).
"""

import pytest
import torch

from lmforge.design.spec import ModelDesign
from lmforge.model.init import initialize
from lmforge.model.loss import IGNORE_INDEX
from lmforge.model.transformer import Transformer, segment_mask, segment_positions

SMALL = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=512,
                    context_length=64, name="test")
ATOL = 1e-5


@pytest.fixture(scope="module")
def model() -> Transformer:
    return initialize(Transformer(SMALL), "gpt2", 0).eval()


def _docs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, SMALL.vocab_size, (n,), generator=g) for n in lengths]


def test_segment_positions_restart_per_document():
    seg = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2]])
    assert segment_positions(seg).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    mask = segment_mask(seg)[0, 0]
    assert mask[4].tolist() == [False, False, False, True, True, False, False, False, False]
    assert mask[2, :3].all() and not mask[1, 2]  # causal inside a segment


def test_packed_documents_give_the_same_per_document_losses(model):
    docs = _docs([9, 17, 5, 12])
    with torch.no_grad():
        alone = [model(d[None, :-1], targets=d[None, 1:], reduction="none")[0] for d in docs]
        ids = torch.cat([d[:-1] for d in docs])[None]
        targets = torch.cat([d[1:] for d in docs])[None]
        seg = torch.cat([torch.full((len(d) - 1,), i) for i, d in enumerate(docs)])[None]
        packed = model(ids, targets=targets, segments=seg, reduction="none")[0]
    got = torch.split(packed, [len(d) - 1 for d in docs])
    for a, b in zip(alone, got):
        assert torch.allclose(a, b, atol=ATOL)


def test_packing_without_segments_would_leak(model):
    """The check above can fail: without segment ids the second document sees the first."""
    docs = _docs([9, 17])
    with torch.no_grad():
        alone = model(docs[1][None, :-1], targets=docs[1][None, 1:], reduction="none")[0]
        ids = torch.cat([d[:-1] for d in docs])[None]
        targets = torch.cat([d[1:] for d in docs])[None]
        leaked = model(ids, targets=targets, reduction="none")[0, 8:]
    assert not torch.allclose(alone, leaked, atol=1e-3)


def test_packed_mean_loss_equals_unpacked_mean_over_all_tokens(model):
    docs = _docs([6, 20, 11], seed=3)
    with torch.no_grad():
        total = sum(model(d[None, :-1], targets=d[None, 1:], reduction="sum") for d in docs)
        n = sum(len(d) - 1 for d in docs)
        # Pack into a row of 40 with right padding (segment -1, ignored targets).
        ids = torch.zeros(1, 40, dtype=torch.long)
        targets = torch.full((1, 40), IGNORE_INDEX)
        seg = torch.full((1, 40), -1)
        at = 0
        for i, d in enumerate(docs):
            ids[0, at:at + len(d) - 1], targets[0, at:at + len(d) - 1] = d[:-1], d[1:]
            seg[0, at:at + len(d) - 1] = i
            at += len(d) - 1
        packed = model(ids, targets=targets, segments=seg)
    assert packed.item() == pytest.approx((total / n).item(), abs=ATOL)


def test_packed_gradients_match_unpacked(model):
    docs = _docs([7, 13], seed=5)
    m = initialize(Transformer(SMALL), "gpt2", 1)
    m.zero_grad()
    for d in docs:
        m(d[None, :-1], targets=d[None, 1:], reduction="sum").backward()
    alone = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    ids = torch.cat([d[:-1] for d in docs])[None]
    seg = torch.cat([torch.full((len(d) - 1,), i) for i, d in enumerate(docs)])[None]
    m(ids, targets=torch.cat([d[1:] for d in docs])[None], segments=seg,
      reduction="sum").backward()
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, alone[n], atol=1e-4), n  # summed over ~20 tokens


def test_cache_rows_of_different_lengths_match_their_own_forward(model):
    """Right-padded prompts in one cache, then one decode step per row: each row's logits are
    those of that row run alone."""
    docs = _docs([5, 11, 8], seed=7)
    nxt = _docs([1, 1, 1], seed=8)
    ids = torch.zeros(3, 11, dtype=torch.long)
    for r, d in enumerate(docs):
        ids[r, :len(d)] = d
    lengths = torch.tensor([len(d) for d in docs])
    with torch.no_grad():
        cache = model.new_cache(3)
        prefill = model(ids, cache, lengths=lengths)
        assert cache.lengths.tolist() == [5, 11, 8]
        step = model(torch.stack(nxt), cache)[:, -1]
        for r, d in enumerate(docs):
            full = model(torch.cat([d, nxt[r]])[None])[0]
            assert torch.allclose(prefill[r, :len(d)], full[:len(d)], atol=ATOL)
            assert torch.allclose(step[r], full[-1], atol=ATOL)


def test_one_cache_row_refills_while_others_keep_theirs(model):
    docs = _docs([6, 9, 4], seed=9)
    with torch.no_grad():
        cache = model.new_cache(2)
        ids = torch.zeros(2, 9, dtype=torch.long)
        ids[0, :6], ids[1, :9] = docs[0], docs[1]
        model(ids, cache, lengths=torch.tensor([6, 9]))
        cache.reset(0)  # row 0's request finished: a new prompt takes its slot
        ids = torch.zeros(2, 4, dtype=torch.long)
        ids[0] = docs[2]
        out = model(ids, cache, lengths=torch.tensor([4, 0]))
        alone = model(docs[2][None])[0]
    assert cache.lengths.tolist() == [4, 9]
    assert torch.allclose(out[0], alone, atol=ATOL)


def test_positions_beyond_the_context_are_refused(model):
    with pytest.raises(ValueError, match="context length"):
        model(torch.zeros(1, 4, dtype=torch.long), positions=torch.tensor([[0, 1, 2, 64]]))
