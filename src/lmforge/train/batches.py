"""Batches of token windows, a pure function of (seed, step): resuming at step s reads exactly
what an uninterrupted run would have read, with no sampler state to save."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch


class TokenSource(Protocol):
    tokens: int

    def get(self, start: int, length: int) -> np.ndarray: ...


def window_starts(source: TokenSource, seq_len: int, count: int, seed: int, step: int
                  ) -> np.ndarray:
    """`count` random window offsets for one step, from a generator keyed by (seed, step)."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, source.tokens - seq_len - 1, size=count, endpoint=True)


def to_batch(source: TokenSource, starts: np.ndarray, seq_len: int,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, (len(starts), seq_len) each."""
    rows = np.stack([source.get(int(s), seq_len + 1).astype(np.int64) for s in starts])
    data = torch.from_numpy(rows).to(device, non_blocking=True)
    return data[:, :-1], data[:, 1:]


def train_micro_batches(source: TokenSource, step: int, seed: int, micro_batch: int,
                        accumulation: int, seq_len: int, device: torch.device
                        ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    starts = window_starts(source, seq_len, micro_batch * accumulation, seed, step)
    for i in range(accumulation):
        yield to_batch(source, starts[i * micro_batch:(i + 1) * micro_batch], seq_len, device)


def validation_batches(source: TokenSource, seq_len: int, micro_batch: int, max_batches: int,
                       device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping windows from the start of the split: the same every time."""
    n_windows = min((source.tokens - 1) // seq_len, micro_batch * max_batches)
    starts = np.arange(n_windows) * seq_len
    for i in range(0, n_windows, micro_batch):
        yield to_batch(source, starts[i:i + micro_batch], seq_len, device)
