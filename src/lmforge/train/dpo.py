"""Direct preference optimization (Rafailov et al. 2023): learning from preference pairs without
a reward model, through the one training loop.

DPO raises the policy's log-probability of the chosen answer over the rejected one, measured
against a frozen reference (the starting model): with Δ = (log π(c) − log π_ref(c)) −
(log π(r) − log π_ref(r)), summed over each answer's tokens,

- sigmoid (DPO):  −log σ(βΔ), or with label smoothing ε (cDPO, for noisy labels)
                  −(1 − ε) log σ(βΔ) − ε log σ(−βΔ);
- ipo (Azar et al. 2023): (Δ̄ − 1/(2β))², Δ̄ from per-token mean log-probs, as TRL does;
- hinge (SLiC):   max(0, 1 − βΔ).

The reference's log-probs are computed ONCE, before training, over the training and validation
pairs; the reference (the policy's own starting weights, or `--reference`) is not kept, so
DPO holds one model in memory. Logged like TRL's DPOTrainer: rewards/chosen and
rewards/rejected (β × the log-ratio), rewards/margins, rewards/accuracies, logps/chosen,
logps/rejected.

Layout (`PairBatches`): a pair is ONE unit in a row: the prompt once, then the chosen answer,
then the rejected answer, each answer seeing the prompt and itself only (attention mask) with
positions that continue the prompt in both ("prefix sharing", as the eval scorer does for
multiple-choice endings). The prompt's last token predicts each answer's first token, so it is
given once per answer: unit = prompt[:-1] + (prompt[-1] + chosen[:-1]) + (prompt[-1] +
rejected[:-1]). Units are packed several to a row, best-fit decreasing. A `Batch.tokens`
counts pairs, so the loop's weighting makes a step's loss the mean over its pairs (and its
tokens/s figures are pairs/s).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data.preferences import PreferencePair, encode_pair
from lmforge.errors import LmforgeError
from lmforge.model.loss import IGNORE_INDEX, linear_cross_entropy
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer
from lmforge.train.batches import Batch, my_micro_batches

LOSSES = ("sigmoid", "ipo", "hinge")
PREFIX, CHOSEN, REJECTED = 0, 1, 2  # branch of each position of a unit


# ---- pairs as units --------------------------------------------------------------------------

@dataclass
class PairUnit:
    """One pair as token ids: the shared prompt (without its last token) and each answer's
    branch: inputs (the prompt's last token, then the answer but its last token) and targets
    (the answer's tokens). `ref_*`: the reference's summed log-probs of each answer."""
    prefix: list[int]
    chosen_in: list[int]
    chosen_out: list[int]
    rejected_in: list[int]
    rejected_out: list[int]
    ref_chosen: float = math.nan
    ref_rejected: float = math.nan

    @property
    def length(self) -> int:
        return len(self.prefix) + len(self.chosen_in) + len(self.rejected_in)


def _fit(a: int, b: int, room: int) -> tuple[int, int]:
    """Answer lengths cut to fit `room` positions together: the longer is cut first, neither
    below half the room unless the other needs less."""
    if a + b <= room:
        return a, b
    a2 = min(a, max(room // 2, room - b))
    return a2, min(b, room - a2)


def make_unit(tok: Tokenizer, pair: PreferencePair, seq_len: int) -> PairUnit | None:
    """The pair's unit, answers cut at their end so the unit fits `seq_len` positions; None
    when the prompt leaves no room for a token of each answer."""
    c_ids, c_mask, r_ids, r_mask = encode_pair(tok, pair)
    p = c_mask.index(True)  # the prompt's length (the same in both: encode_pair checks)
    room = seq_len - (p - 1)
    if room < 2:
        return None
    a, b = _fit(len(c_ids) - p, len(r_ids) - p, room)
    return PairUnit(c_ids[:p - 1], c_ids[p - 1:p - 1 + a], c_ids[p:p + a],
                    r_ids[p - 1:p - 1 + b], r_ids[p:p + b])


def make_units(tok: Tokenizer, pairs: Sequence[PreferencePair], seq_len: int
               ) -> tuple[list[PairUnit], int]:
    """Units of the pairs that fit, and how many were left out (prompt too long)."""
    units = [make_unit(tok, p, seq_len) for p in pairs]
    kept = [u for u in units if u is not None]
    return kept, len(units) - len(kept)


def pack_units(units: Sequence[PairUnit], seq_len: int) -> list[list[int]]:
    """Indices of units per row, best-fit decreasing: longest unit first, each into the
    fullest row it fits (a pair's unit is a large share of a row, where next fit would leave
    rows a quarter empty). Deterministic for a given list; rows keep no order of their own."""
    order = sorted(range(len(units)), key=lambda i: (-units[i].length, i))
    rows: list[list[int]] = []
    frees: list[tuple[int, int]] = []  # (free positions, row), sorted
    for i in order:
        n = units[i].length
        k = bisect.bisect_left(frees, (n, -1))
        if k < len(frees):
            free, r = frees.pop(k)
            rows[r].append(i)
        else:
            free, r = seq_len, len(rows)
            rows.append([i])
        if free > n:
            bisect.insort(frees, (free - n, r))
    return rows


def unit_batch(units: Sequence[PairUnit], rows: Sequence[list[int]], seq_len: int,
               device: torch.device) -> Batch:
    """Rows of packed units. Tensors: inputs, targets, positions, unit (-1 on padding),
    branch (PREFIX, CHOSEN, REJECTED), seq (the answer each target belongs to: 2k chosen and
    2k + 1 rejected for the k-th pair of the batch, -1 elsewhere), and per pair the
    reference log-probs and answer lengths."""
    b = len(rows)
    width = max(sum(units[i].length for i in row) for row in rows)
    width = min(seq_len, width)  # rows as wide as the widest: no padding beyond it
    inputs = torch.zeros(b, width, dtype=torch.long)
    targets = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros(b, width, dtype=torch.long)
    unit = torch.full((b, width), -1, dtype=torch.long)
    branch = torch.zeros(b, width, dtype=torch.long)
    seq = torch.full((b, width), -1, dtype=torch.long)
    ref, lengths = [], []
    k = 0
    for r, row in enumerate(rows):
        at = 0
        for j, i in enumerate(row):
            u = units[i]
            n = len(u.prefix)
            inputs[r, at:at + n] = torch.tensor(u.prefix, dtype=torch.long)
            positions[r, at:at + n] = torch.arange(n)
            unit[r, at:at + n] = j
            at += n
            for which, ids, out in ((CHOSEN, u.chosen_in, u.chosen_out),
                                    (REJECTED, u.rejected_in, u.rejected_out)):
                m = len(ids)
                inputs[r, at:at + m] = torch.tensor(ids, dtype=torch.long)
                targets[r, at:at + m] = torch.tensor(out, dtype=torch.long)
                positions[r, at:at + m] = torch.arange(n, n + m)  # both continue the prompt
                unit[r, at:at + m] = j
                branch[r, at:at + m] = which
                seq[r, at:at + m] = 2 * k + which - CHOSEN
                at += m
            ref.append((u.ref_chosen, u.ref_rejected))
            lengths.append((len(u.chosen_out), len(u.rejected_out)))
            k += 1
    tensors = {"inputs": inputs, "targets": targets, "positions": positions, "unit": unit,
               "branch": branch, "seq": seq,
               "ref_logps": torch.tensor(ref, dtype=torch.float32),  # (pairs, 2)
               "answer_lengths": torch.tensor(lengths, dtype=torch.float32)}
    return Batch({name: t.to(device, non_blocking=True) for name, t in tensors.items()}, k)


def unit_mask(unit: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """(b, 1, t, t): a position sees earlier positions of its own unit that are the prompt or
    its own answer (never the other answer, never another unit); padding sees padding."""
    t = unit.shape[1]
    order = torch.arange(t, device=unit.device)
    causal = order[:, None] >= order[None, :]
    same_unit = unit[:, :, None] == unit[:, None, :]
    visible = (branch[:, None, :] == PREFIX) | (branch[:, :, None] == branch[:, None, :])
    return (causal & same_unit & visible)[:, None]


def sequence_logps(model: Transformer, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each pair's chosen and rejected answer, (pairs,) each. The output
    head runs on answer positions only (model/loss.py: per-token losses, chunked)."""
    hidden = model.hidden(batch["inputs"], positions=batch["positions"],
                          attn_mask=unit_mask(batch["unit"], batch["branch"]))
    seq = batch["seq"]
    scored = seq >= 0
    token_ce = linear_cross_entropy(hidden[scored], model.lm_head.weight,
                                    batch["targets"][scored], reduction="none")
    sums = torch.zeros(2 * batch.tokens, dtype=torch.float32, device=hidden.device)
    sums = sums.index_add(0, seq[scored], -token_ce.float())
    return sums[0::2], sums[1::2]


# ---- the objective ---------------------------------------------------------------------------

def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
             loss: str = "sigmoid", label_smoothing: float = 0.0,
             lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair losses from summed log-probs (pairs,) each; `lengths` (pairs, 2) answer token
    counts, needed by IPO (which compares per-token means)."""
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if loss == "ipo":
        if lengths is None:
            raise ValueError("IPO needs the answer lengths")
        delta = chosen_ratio / lengths[:, 0].clamp(min=1) - rejected_ratio / lengths[:, 1].clamp(
            min=1)
        return (delta - 1 / (2 * beta)) ** 2
    delta = chosen_ratio - rejected_ratio
    if loss == "hinge":
        return torch.relu(1 - beta * delta)
    if loss == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * delta) \
            - label_smoothing * F.logsigmoid(-beta * delta)
    raise ValueError(f"unknown DPO loss {loss!r}")


def check_dpo_options(beta: float, loss: str, label_smoothing: float,
                      sft_weight: float = 0.0) -> None:
    if loss not in LOSSES:
        raise LmforgeError(f"unknown DPO loss {loss!r}",
                           hint=f"choose --loss {' or '.join(LOSSES)}")
    if not (isinstance(beta, int | float) and beta > 0 and math.isfinite(beta)):
        raise LmforgeError(f"beta must be a positive number, got {beta!r}",
                           hint="e.g. --beta 0.1 (higher stays closer to the reference)")
    if not 0 <= label_smoothing < 0.5:
        raise LmforgeError(f"label smoothing must be in [0, 0.5), got {label_smoothing}",
                           hint="e.g. --label-smoothing 0.1: a tenth of the labels may be wrong")
    if not (isinstance(sft_weight, int | float) and 0 <= sft_weight and math.isfinite(sft_weight)):
        raise LmforgeError(f"the SFT weight must be 0 or more, got {sft_weight!r}",
                           hint="e.g. --sft-weight 1.0 keeps the chosen answers likely (RPO)")
    if label_smoothing and loss != "sigmoid":
        raise LmforgeError(f"label smoothing is for the sigmoid loss, not {loss}",
                           hint="use --loss sigmoid --label-smoothing 0.1")


class DPO:
    """The DPO objective over `unit_batch` batches: mean loss over the batch's pairs, and
    TRL's metrics (means over the pairs). `sft_weight` > 0 adds that weight times the mean
    negative log-likelihood of the chosen answers' tokens (RPO, Pang et al. 2024; TRL's
    loss_type ["sigmoid", "sft"]): DPO alone may lower the chosen answers' likelihood along
    with the rejected ones', which a small model pays for in broken text."""

    name = "dpo"

    def __init__(self, beta: float = 0.1, loss: str = "sigmoid", label_smoothing: float = 0.0,
                 sft_weight: float = 0.0):
        check_dpo_options(beta, loss, label_smoothing, sft_weight)
        self.beta, self.loss, self.label_smoothing = beta, loss, label_smoothing
        self.sft_weight = sft_weight

    def __call__(self, model: Transformer, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = sequence_logps(model, batch)
        ref = batch["ref_logps"]
        lengths = batch["answer_lengths"]
        loss = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], self.beta, self.loss,
                        self.label_smoothing, lengths).mean()
        nll = -chosen.sum() / lengths[:, 0].sum()  # per chosen token, over the batch
        if self.sft_weight:
            loss = loss + self.sft_weight * nll
        with torch.no_grad():
            r_chosen = self.beta * (chosen - ref[:, 0])
            r_rejected = self.beta * (rejected - ref[:, 1])
            stats = torch.stack([r_chosen.mean(), r_rejected.mean(),
                                 (r_chosen > r_rejected).float().mean(),
                                 (r_chosen - r_rejected).mean(), chosen.mean(),
                                 rejected.mean(), nll]).tolist()  # one device sync
        names = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                 "logps/chosen", "logps/rejected", "nll/chosen")
        return loss, dict(zip(names, stats))


# ---- the batch source ------------------------------------------------------------------------

class PairBatches:
    """Pair units packed several to a row (best-fit decreasing, fixed once); rows shuffled
    every epoch, step s reads rows [s * rows_per_step, (s + 1) * rows_per_step) of the
    endless sequence of epochs, so a resumed run reads what an uninterrupted one would (as
    `PackedSequences`).
    `tokens` is one epoch's row positions, so `epochs` counts passes over the pairs."""

    def __init__(self, train: Sequence[PairUnit], val: Sequence[PairUnit], seq_len: int,
                 micro_batch: int, accumulation: int, eval_batches: int):
        if not train:
            raise ValueError("no training pairs")
        missing = [u for u in (*train, *val) if math.isnan(u.ref_chosen)]
        if missing:
            raise ValueError(f"{len(missing)} pairs have no reference log-probs")
        self.train, self.val = train, val
        self.seq_len, self.micro_batch = seq_len, micro_batch
        self.accumulation, self.eval_batches = accumulation, eval_batches
        self.train_rows = pack_units(train, seq_len)
        self.val_rows = pack_units(val, seq_len)[:micro_batch * eval_batches]
        self.unit = "pairs"  # a Batch's count: the progress line shows pairs/s
        self.tokens = len(self.train_rows) * seq_len
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def _epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        key = (seed, epoch)
        if key not in self._orders:
            self._orders = {key: np.random.default_rng([seed, epoch, 2]).permutation(
                len(self.train_rows))}
        return self._orders[key]

    def step_batches(self, step: int, seed: int, device: torch.device,
                     part: tuple[int, int] = (0, 1)) -> list[Batch]:
        per_step = self.micro_batch * self.accumulation
        n = len(self.train_rows)
        picked = []
        for k in range(step * per_step, (step + 1) * per_step):
            epoch, offset = divmod(k, n)
            picked.append(self.train_rows[self._epoch_order(seed, epoch)[offset]])
        return [unit_batch(self.train, picked[i:i + self.micro_batch], self.seq_len, device)
                for i in my_micro_batches(per_step, self.micro_batch, part)]

    def validation_batches(self, device: torch.device) -> Iterator[Batch]:
        for i in range(0, len(self.val_rows), self.micro_batch):
            yield unit_batch(self.val, self.val_rows[i:i + self.micro_batch], self.seq_len,
                             device)


# ---- the reference, once ---------------------------------------------------------------------

@torch.no_grad()
def fill_reference_logps(reference: Transformer, units: Sequence[PairUnit], seq_len: int,
                         micro_batch: int, device: torch.device,
                         amp: torch.dtype | None = None) -> None:
    """Set every unit's ref_chosen and ref_rejected with the reference model, in eval mode
    (the policy's training batches see the same layout, so the log-probs match)."""
    import contextlib

    was_training = reference.training
    reference.eval()
    rows = pack_units(units, seq_len)
    ctx = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
    for i in range(0, len(rows), micro_batch):
        part = rows[i:i + micro_batch]
        batch = unit_batch(units, part, seq_len, device)
        with ctx:
            chosen, rejected = sequence_logps(reference, batch)
        order = [j for row in part for j in row]
        for j, c, r in zip(order, chosen.tolist(), rejected.tolist()):
            units[j].ref_chosen, units[j].ref_rejected = c, r
    reference.train(was_training)


def units_digest(*parts: Sequence[PairUnit]) -> str:
    """A digest of the token ids of every unit, in order (keys the run folder)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        for u in part:
            for ids in (u.prefix, u.chosen_in, u.chosen_out, u.rejected_in, u.rejected_out):
                h.update(len(ids).to_bytes(4, "little"))
                h.update(np.asarray(ids, dtype=np.int64).tobytes())
    return h.hexdigest()


def describe(metrics: dict[str, Any]) -> str:
    """'margin 0.41, accuracy 0.83' from validation metrics."""
    return (f"margin {metrics.get('rewards/margins', math.nan):.3f}, accuracy "
            f"{metrics.get('rewards/accuracies', math.nan):.2f}")
