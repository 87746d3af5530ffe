"""Batched log-likelihood scoring of (context, continuation) token pairs.

The results are those of lm-evaluation-harness's HF backend (`HFLM._loglikelihood_tokens`):
the sum of log p(continuation token | everything before it), and whether every continuation
token is the argmax; contexts too long for the model are cut from the left so that
context + continuation fits, and the continuation stays whole (one longer than the model's
context cannot be scored: `unscorable` says so before scoring). What differs is the cost:

- Requests that share a (truncated) context are packed into ONE row: the context once,
  then each distinct continuation after it, with an attention mask that lets every
  continuation see the context and itself but not its siblings, and rotary positions that
  restart after the context for each continuation ("prefix sharing", as in tree attention
  for speculative decoding, Miao et al. 2023, SpecInfer). HellaSwag's 4 endings of one
  context cost one context plus 4 endings instead of 4 contexts plus 4 endings.
- The output head and the log-softmax run only at the positions that predict a
  continuation token (gathered hidden states times `lm_head`), never on [B, T, V] logits.
- Rows are sorted longest first and right-padded per batch (identical requests are scored
  once); results come back in input order.

`packed=False` scores one row per distinct request through `model.hidden` instead; the
tests check both against a naive full-logits loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import BOS_ID, Tokenizer

Request = tuple[Sequence[int], Sequence[int]]


def encode_pair(tok: Tokenizer, context: str, continuation: str, add_bos: bool = True
                ) -> tuple[list[int], list[int]]:
    """Token ids of a context and its continuation, split the way lm-eval's HFLM splits them.

    Trailing whitespace of the context moves to the continuation (so " Paris" stays one
    word token); the continuation ids are what `encode(context + continuation)` has beyond
    `encode(context)`. With `add_bos` the context starts with BOS, as our models saw every
    document in training; an empty context becomes BOS alone (lm-eval's prefix token).
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        return [tok.bos_id], tok.encode(continuation)
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    cont = whole[len(ctx):]
    return ([tok.bos_id] + ctx if add_bos else ctx), cont


def rolling_windows(tokens: Sequence[int], prefix_id: int, max_length: int
                    ) -> list[tuple[list[int], list[int]]]:
    """lm-eval's disjoint rolling windows (`get_rolling_token_windows` with context_len=1,
    then `make_disjoint_window`) as (context, continuation) requests: every token is
    predicted exactly once, the first from `prefix_id`, and every window's input is as long
    as the model allows, so later windows condition on the tokens before them."""
    tokens = list(tokens)
    out: list[tuple[list[int], list[int]]] = []
    if not tokens:
        return out
    first = min(max_length, len(tokens))
    out.append(([prefix_id], tokens[:first]))
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, max_length)
        end = done + n
        # lm-eval's window input is tokens[end - max_length - 1 : end - 1]; the first
        # max_length - n + 1 of them are context.
        start = max(end - max_length - 1, 0)
        out.append((tokens[start:done], tokens[done:end]))
        done = end
    return out


@dataclass
class _Group:
    """Distinct continuations that share one (already truncated) context."""
    context: tuple[int, ...]
    conts: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def length(self) -> int:  # tokens in the packed row
        return len(self.context) + sum(len(c) - 1 for c in self.conts)


class LoglikelihoodScorer:
    """Scores requests with a `Transformer` in batches; fp32 math, no gradients."""

    def __init__(self, model: Transformer, batch_size: int = 32,
                 max_tokens_per_batch: int | None = None, prefix_id: int = BOS_ID,
                 packed: bool = True):
        if batch_size < 1:
            raise LmforgeError(f"batch size must be at least 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self.prefix_id = prefix_id
        self.packed = packed
        self.max_length = model.design.context_length
        self.device = next(model.parameters()).device
        self.desc = "scoring"  # the progress bar's label (the runner sets the task name)

    # ---- public API -------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[Request], progress: bool = False
                      ) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), continuation is the greedy decode) per
        request, in input order."""
        keys = [self._truncate(i, ctx, cont) for i, (ctx, cont) in enumerate(requests)]
        groups = self._groups(keys)
        results: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, bool]] = {}
        bar = _bar(len(set(keys)), progress, self.desc)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                # A context with one continuation gains nothing from packing, and the plain
                # causal forward (no explicit mask) is faster: rolling windows go that way.
                shared = [g for g in groups if len(g.conts) > 1]
                single = [g for g in groups if len(g.conts) == 1]
                for part, score in ((shared, self._score_packed), (single, self._score_rows)):
                    for batch in self._batches(part):
                        scored = score(batch)
                        results.update(scored)
                        if bar is not None:
                            bar.update(len(scored))
        finally:
            self.model.train(was_training)
            if bar is not None:
                bar.close()
        return [results[k] for k in keys]

    def rolling_loglikelihood(self, token_lists: Sequence[Sequence[int]],
                              progress: bool = False) -> list[float]:
        """Total log-likelihood of each whole token sequence, its first token given the
        prefix (BOS), over lm-eval's disjoint rolling windows of the model's context."""
        requests: list[Request] = []
        owner: list[int] = []
        for i, tokens in enumerate(token_lists):
            for window in rolling_windows(tokens, self.prefix_id, self.max_length):
                requests.append(window)
                owner.append(i)
        totals = [0.0] * len(token_lists)
        for i, (logp, _) in zip(owner, self.loglikelihood(requests, progress), strict=True):
            totals[i] += logp
        return totals

    # ---- request bookkeeping ----------------------------------------------------------

    def unscorable(self, continuation: Sequence[int]) -> str | None:
        """Why a request with this continuation cannot be scored, or None if it can.

        A context of any length can: it is cut from the left, as lm-eval does. A
        continuation longer than the model's context cannot (lm-eval's HFLM stops with an
        assertion on it), nor an empty one. The reason reads the same for every request it
        applies to, so a report can count items by reason; callers that score whole
        benchmarks skip such items and report them (see `lmforge.eval.runner`)."""
        if len(continuation) == 0:
            return "empty continuation"
        if len(continuation) > self.max_length:
            return f"continuation longer than the model's context ({self.max_length} tokens)"
        return None

    def _truncate(self, index: int, ctx: Sequence[int], cont: Sequence[int]
                  ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        cont = tuple(int(t) for t in cont)
        ctx = tuple(int(t) for t in ctx) or (self.prefix_id,)
        why = self.unscorable(cont)
        if why is not None:
            raise LmforgeError(
                f"request {index}: {why}" + (f"; it has {len(cont)}" if cont else ""),
                hint="lmforge eval skips such items and counts them in its report; to score "
                     "a long text whole, use rolling_loglikelihood")
        # Like lm-eval: keep the last max_length + 1 tokens of context + continuation.
        keep = self.max_length + 1 - len(cont)
        return ctx[-keep:], cont

    def _groups(self, keys: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[_Group]:
        by_context: dict[tuple[int, ...], _Group] = {}
        seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
        for key in keys:
            if key in seen:  # identical requests are scored once
                continue
            seen.add(key)
            ctx, cont = key
            by_context.setdefault(ctx, _Group(ctx)).conts.append(cont)
        if not self.packed:
            return [_Group(g.context, [c]) for g in by_context.values() for c in g.conts]
        # Split a context with very many or very long continuations so that one packed row
        # stays within twice the model's context (attention cost grows with its square).
        limit = 2 * self.max_length
        groups = []
        for g in by_context.values():
            part = _Group(g.context)
            for cont in g.conts:
                if part.conts and part.length + len(cont) - 1 > limit:
                    groups.append(part)
                    part = _Group(g.context)
                part.conts.append(cont)
            groups.append(part)
        return groups

    def _batches(self, groups: list[_Group]) -> Iterator[list[_Group]]:
        """Longest rows first; at most batch_size requests (and max_tokens_per_batch padded
        tokens) per forward pass, and always at least one row."""
        groups = sorted(groups, key=lambda g: (-g.length, g.context))
        batch: list[_Group] = []
        n_requests = 0
        for g in groups:
            width = batch[0].length if batch else g.length  # sorted: the first is the longest
            too_many = n_requests + len(g.conts) > self.batch_size
            too_big = (self.max_tokens_per_batch is not None
                       and (len(batch) + 1) * width > self.max_tokens_per_batch)
            if batch and (too_many or too_big):
                yield batch
                batch, n_requests = [], 0
            batch.append(g)
            n_requests += len(g.conts)
        if batch:
            yield batch

    # ---- scoring ----------------------------------------------------------------------

    def _score_packed(self, batch: list[_Group]):
        width = max(g.length for g in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        pos = torch.zeros(len(batch), width, dtype=torch.long)
        seg = torch.full((len(batch), width), -1, dtype=torch.long)  # -1: padding
        rows, cols, targets, owners = [], [], [], []
        keys = []
        for r, g in enumerate(batch):
            c = len(g.context)
            ids[r, :c] = torch.tensor(g.context)
            pos[r, :c] = torch.arange(c)
            seg[r, :c] = 0
            offset = c
            for j, cont in enumerate(g.conts):
                n = len(cont) - 1  # the last continuation token is predicted, never input
                if n:
                    ids[r, offset:offset + n] = torch.tensor(cont[:-1])
                    pos[r, offset:offset + n] = torch.arange(c, c + n)
                    seg[r, offset:offset + n] = j + 1
                # cont[0] is predicted at the context's last position, the rest in-segment.
                rows += [r] * len(cont)
                cols += [c - 1, *range(offset, offset + n)]
                targets += cont
                owners += [len(keys)] * len(cont)
                keys.append((g.context, cont))
                offset += n
        seg = seg.to(self.device)
        hidden = self.model.hidden(ids.to(self.device), positions=pos.to(self.device),
                                   attn_mask=_shared_prefix_mask(seg))
        return self._finish(hidden, rows, cols, targets, owners, keys)

    def _score_rows(self, batch: list[_Group]):
        keys = [(g.context, cont) for g in batch for cont in g.conts]
        width = max(len(ctx) + len(cont) - 1 for ctx, cont in keys)
        ids = torch.zeros(len(keys), width, dtype=torch.long)
        rows, cols, targets, owners = [], [], [], []
        for r, (ctx, cont) in enumerate(keys):
            inp = (ctx + cont)[:-1]
            ids[r, :len(inp)] = torch.tensor(inp)
            rows += [r] * len(cont)
            cols += range(len(ctx) - 1, len(inp))
            targets += cont
            owners += [r] * len(cont)
        # Right padding is safe: causal attention keeps later positions out of earlier ones.
        hidden = self.model.hidden(ids.to(self.device))
        return self._finish(hidden, rows, cols, targets, owners, keys)

    def _finish(self, hidden: torch.Tensor, rows: list[int], cols: list[int],
                targets: list[int], owners: list[int], keys: list):
        dev = hidden.device
        picked = hidden[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]
        weight = self.model.lm_head.weight
        logits = F.linear(picked.float(), weight.float())  # fp32 head and log-softmax
        logp = logits.log_softmax(-1)
        target = torch.tensor(targets, device=dev)
        token_logp = logp.gather(1, target[:, None])[:, 0]
        hit = (logits.argmax(-1) == target).float()
        owner = torch.tensor(owners, device=dev)
        sums = torch.zeros(len(keys), dtype=torch.float64, device=dev)
        sums.index_add_(0, owner, token_logp.double())
        misses = torch.zeros(len(keys), device=dev).index_add_(0, owner, 1.0 - hit)
        return {k: (float(s), bool(m == 0))
                for k, s, m in zip(keys, sums.tolist(), misses.tolist(), strict=True)}


def _shared_prefix_mask(seg: torch.Tensor) -> torch.Tensor:
    """(b, 1, t, t): causal, and a token sees the shared context (segment 0) and its own
    segment only; padding (segment -1) sees its own padding."""
    t = seg.shape[1]
    order = torch.arange(t, device=seg.device)
    causal = order[None, :, None] >= order[None, None, :]
    same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])
    return (causal & same)[:, None]


def _bar(total: int, enabled: bool, desc: str):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, disable=None)  # None: off when not a tty
