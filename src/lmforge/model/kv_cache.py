"""A preallocated key/value cache with a length per row.

Rows fill independently: prompts of different lengths share one batch, each row's new tokens
are written after its own history, and a row can be emptied and refilled while the others go
on (the base of continuous batching). The model's forward reads `lengths` to place rotary
positions and to mask keys a row has not written.
"""

from __future__ import annotations

import torch


class KVCache:
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

    def check_room(self, new_tokens: int) -> None:
        end = int(self.lengths.max()) + new_tokens
        if end > self.max_length:
            raise ValueError(f"KV cache full: a row would hold {end} tokens > {self.max_length}")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Store one layer's new k/v (batch, kv_heads, t, head_dim) after each row's history;
        return that layer's keys/values up to the longest row's new end."""
        b, _, t, _ = k.shape
        end = int(self.lengths.max()) + t
        if bool((self.lengths == self.lengths[0]).all()):
            start = int(self.lengths[0])  # rows in step: one slice write, no scatter
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

    def reset(self, row: int | None = None) -> None:
        """Empty the cache, or one row of it (a finished request leaves its slot)."""
        if row is None:
            self.lengths.zero_()
        else:
            self.lengths[row] = 0
