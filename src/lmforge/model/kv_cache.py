"""A preallocated key/value cache with a length per row.

Rows fill independently: prompts of different lengths share one batch, each row's new tokens
are written after its own history, and a row can be emptied and refilled while the others go
on (the base of continuous batching). The model's forward reads `lengths` to place rotary
positions and to mask keys a row has not written.
"""

from __future__ import annotations

import torch


class KVCache:
    # The forward in progress, from `begin` until `advance`: every row's length when the rows
    # are in step (else None), and the longest row's end after it. Class-level defaults: the
    # scheduler makes row views without __init__.
    _start: int | None = None
    _end: int | None = None

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_length: int,
                 head_dim: int, device: torch.device, dtype: torch.dtype):
        shape = (n_layers, batch_size, n_kv_heads, max_length, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        # Tokens stored per row (the same for every layer once a forward has finished).
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_length = max_length

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    def begin(self, new_tokens: int) -> int | None:
        """Start a forward of `new_tokens` per row: refuse one that does not fit; return the
        length every row holds when the rows are in step (None when they differ). The
        lengths are read once here for every layer's `update`, not once per layer: in a
        one-token decode step, small bookkeeping ops are a large share of the time."""
        lengths = self.lengths.tolist()
        end = max(lengths) + new_tokens
        if end > self.max_length:
            raise ValueError(f"KV cache full: a row would hold {end} tokens > {self.max_length}")
        self._start = lengths[0] if min(lengths) == lengths[0] == max(lengths) else None
        self._end = end
        return self._start

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Store one layer's new k/v (batch, kv_heads, t, head_dim) after each row's history;
        return that layer's keys/values up to the longest row's new end."""
        b, _, t, _ = k.shape
        if self._end is not None:  # inside a forward that began: lengths already read
            start, end = self._start, self._end
        else:
            end = int(self.lengths.max()) + t
            start = int(self.lengths[0]) if bool((self.lengths == self.lengths[0]).all()) \
                else None
        if start is not None:  # rows in step: one slice write, no scatter
            self.keys[layer, :, :, start:start + t] = k
            self.values[layer, :, :, start:start + t] = v
        else:
            rows = torch.arange(b, device=k.device)[:, None]
            cols = self.lengths[:, None] + torch.arange(t, device=k.device)
            # Advanced indices split by a slice put their dims first: (b, t, kv_heads, hd).
            self.keys[layer, rows, :, cols] = k.transpose(1, 2)
            self.values[layer, rows, :, cols] = v.transpose(1, 2)
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, steps: int | torch.Tensor) -> None:
        """Count `steps` new tokens per row (an int for all rows, or a (batch,) tensor: a row
        whose new tokens ended in right padding advances by its real tokens only)."""
        self.lengths += steps
        self._start = self._end = None  # the forward is over

    def reset(self, row: int | None = None) -> None:
        """Empty the cache, or one row of it (a finished request leaves its slot)."""
        self._start = self._end = None
        if row is None:
            self.lengths.zero_()
        else:
            self.lengths[row] = 0
