"""Batch sources: what the training loop reads. A step's data is a pure function of (seed, step),
so resuming at step s reads exactly what an uninterrupted run would have read, with no sampler
state to save.

A source gives the micro-batches of one optimizer step and the validation batches (the same
every time). Each `Batch` says how many real tokens it holds: the loop weights micro-batches
by them (a step's loss is the mean over its real tokens, however they are split) and counts
throughput with them. Sources here: token windows (pretraining, domain adaptation) and packed
sequences with per-token loss masks (SFT's conversations; documents of any length). Preference
pairs and RL rollouts are sources too and join with their stages.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from lmforge.model.loss import IGNORE_INDEX


@dataclass
class Batch:
    """Named tensors for an objective, and the count of real (loss-bearing) tokens."""
    tensors: dict[str, torch.Tensor]
    tokens: int

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def get(self, name: str) -> torch.Tensor | None:
        return self.tensors.get(name)


class BatchSource(Protocol):
    tokens: int  # training tokens in one pass over the data (for `epochs`)

    def step_batches(self, step: int, seed: int, device: torch.device,
                     part: tuple[int, int] = (0, 1)) -> list[Batch]:
        """The step's micro-batches; with part = (rank, ranks) only that rank's share:
        micro-batches rank, rank + ranks, ... (train/distributed.py), nothing else read."""
        ...

    def validation_batches(self, device: torch.device) -> Iterator[Batch]: ...


def my_micro_batches(per_step: int, micro_batch: int, part: tuple[int, int]) -> range:
    """Start offsets, within a step's per_step items, of the micro-batches rank part[0] of
    part[1] reads: round-robin, so every rank gets the same number when they divide evenly."""
    rank, ranks = part
    return range(rank * micro_batch, per_step, ranks * micro_batch)


class TokenSource(Protocol):
    tokens: int

    def get(self, start: int, length: int) -> np.ndarray: ...


def _windows(source: TokenSource, starts: np.ndarray, seq_len: int,
             device: torch.device) -> Batch:
    """Inputs and next-token targets, (len(starts), seq_len) each."""
    rows = np.stack([source.get(int(s), seq_len + 1).astype(np.int64) for s in starts])
    data = torch.from_numpy(rows).to(device, non_blocking=True)
    return Batch({"inputs": data[:, :-1], "targets": data[:, 1:]}, len(starts) * seq_len)


@dataclass
class TokenWindows:
    """Random windows of a token stream for training, consecutive ones for validation."""
    train: TokenSource
    val: TokenSource
    seq_len: int
    micro_batch: int
    accumulation: int
    eval_batches: int

    @property
    def tokens(self) -> int:
        return self.train.tokens

    def step_batches(self, step: int, seed: int, device: torch.device,
                     part: tuple[int, int] = (0, 1)) -> list[Batch]:
        rng = np.random.default_rng([seed, step])
        count = self.micro_batch * self.accumulation
        starts = rng.integers(0, self.train.tokens - self.seq_len - 1, size=count, endpoint=True)
        return [_windows(self.train, starts[i:i + self.micro_batch], self.seq_len, device)
                for i in my_micro_batches(count, self.micro_batch, part)]

    def validation_batches(self, device: torch.device) -> Iterator[Batch]:
        n = min((self.val.tokens - 1) // self.seq_len, self.micro_batch * self.eval_batches)
        starts = np.arange(n) * self.seq_len
        for i in range(0, n, self.micro_batch):
            yield _windows(self.val, starts[i:i + self.micro_batch], self.seq_len, device)


# A training sequence: token ids, and optionally which of them are learned (a loss mask over
# the ids; position i's target is ids[i + 1], learned when mask[i + 1] is true).
Sequence_ = tuple[Sequence[int], Sequence[bool] | None]


def pack_rows(sequences: Sequence[Sequence_], seq_len: int) -> list[list[int]]:
    """Indices of sequences per row, in the given order: a sequence of n tokens takes n - 1
    input positions; a row takes sequences while they fit in seq_len, then the next row starts
    (next fit: linear time on any number of sequences). A longer sequence gets a row of its
    own and is cut to fit; one of a single token teaches nothing and is left out."""
    rows: list[list[int]] = []
    free = 0
    for i, (ids, _) in enumerate(sequences):
        n = min(len(ids), seq_len + 1) - 1
        if n < 1:
            continue
        if rows and n <= free:
            rows[-1].append(i)
            free -= n
        else:
            rows.append([i])
            free = seq_len - n
    return rows


def _packed_batch(sequences: Sequence[Sequence_], rows: Sequence[list[int]], seq_len: int,
                  device: torch.device) -> Batch:
    """Rows of packed sequences: inputs, targets (IGNORE_INDEX where not learned or padding) and
    segment ids (-1 for padding), so attention never crosses from one sequence to another."""
    b = len(rows)
    inputs = torch.zeros(b, seq_len, dtype=torch.long)
    targets = torch.full((b, seq_len), IGNORE_INDEX, dtype=torch.long)
    segments = torch.full((b, seq_len), -1, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for j, i in enumerate(members):
            ids, mask = sequences[i]
            ids = torch.as_tensor(list(ids)[:seq_len + 1], dtype=torch.long)
            n = len(ids) - 1
            if n < 1:
                continue
            learned = ids[1:].clone()
            if mask is not None:
                keep = torch.as_tensor(list(mask)[1:n + 1], dtype=torch.bool)
                learned[~keep] = IGNORE_INDEX
            inputs[r, at:at + n] = ids[:-1]
            targets[r, at:at + n] = learned
            segments[r, at:at + n] = j
            at += n
    real = int((targets != IGNORE_INDEX).sum())
    tensors = {"inputs": inputs, "targets": targets, "segments": segments}
    return Batch({k: v.to(device, non_blocking=True) for k, v in tensors.items()}, real)


class PackedSequences:
    """Sequences packed several to a row with document masks; rows shuffled every epoch.

    The packing is fixed once (`pack_rows`: next fit in the given order), so every epoch has
    the same number of rows and step s reads rows [s * rows_per_step, (s + 1) * rows_per_step)
    of the endless sequence of epochs, each epoch a permutation seeded by (seed, epoch).
    """

    def __init__(self, train: Sequence[Sequence_], val: Sequence[Sequence_], seq_len: int,
                 micro_batch: int, accumulation: int, eval_batches: int):
        if not train:
            raise ValueError("no training sequences to pack")
        self.train, self.val = train, val
        self.seq_len, self.micro_batch = seq_len, micro_batch
        self.accumulation, self.eval_batches = accumulation, eval_batches
        self.train_rows = pack_rows(train, seq_len)
        self.val_rows = pack_rows(val, seq_len)[:micro_batch * eval_batches]
        self.tokens = sum(min(len(ids), seq_len + 1) - 1 for ids, _ in train)
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def _epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        key = (seed, epoch)
        if key not in self._orders:
            self._orders = {key: np.random.default_rng([seed, epoch, 1]).permutation(
                len(self.train_rows))}  # one epoch kept: steps move through them in order
        return self._orders[key]

    def step_batches(self, step: int, seed: int, device: torch.device,
                     part: tuple[int, int] = (0, 1)) -> list[Batch]:
        per_step = self.micro_batch * self.accumulation
        n = len(self.train_rows)
        picked = []
        for k in range(step * per_step, (step + 1) * per_step):
            epoch, offset = divmod(k, n)
            picked.append(self.train_rows[self._epoch_order(seed, epoch)[offset]])
        return [_packed_batch(self.train, picked[i:i + self.micro_batch], self.seq_len, device)
                for i in my_micro_batches(per_step, self.micro_batch, part)]

    def validation_batches(self, device: torch.device) -> Iterator[Batch]:
        for i in range(0, len(self.val_rows), self.micro_batch):
            yield _packed_batch(self.val, self.val_rows[i:i + self.micro_batch], self.seq_len,
                                device)
