"""Choosing the next token: greedy, temperature, top-k and nucleus (top-p) sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.errors import LmforgeError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    max_new_tokens: int = 128
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise LmforgeError(f"temperature must be >= 0, got {self.temperature}",
                               hint="use 0 for greedy decoding")
        if self.top_k < 0:
            raise LmforgeError(f"top_k must be >= 0, got {self.top_k}", hint="0 turns it off")
        if not 0 < self.top_p <= 1:
            raise LmforgeError(f"top_p must be in (0, 1], got {self.top_p}", hint="1 turns it off")
        if self.max_new_tokens < 1:
            raise LmforgeError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def sample_next(logits: torch.Tensor, params: SamplingParams,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits (batch, vocab) -> token ids (batch,)."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1:
        # Keep the smallest set of tokens whose probability reaches top_p (Holtzman et al. 2019).
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= params.top_p
        # The likeliest token always stays: with a tiny top_p, rounding in the cumulative sum
        # (a few 1e-8 above 0) would otherwise drop every token and leave NaN probabilities.
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
