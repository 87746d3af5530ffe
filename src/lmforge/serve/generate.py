"""Autoregressive generation for one prompt, with a KV cache, streaming token by token.

The batched engine with continuous batching (serve/engine) builds on the same pieces.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer
from lmforge.serve.sampling import SamplingParams, sample_next
from lmforge.tokenizer import Tokenizer


@torch.no_grad()
def generate_tokens(model: Transformer, prompt: Sequence[int], params: SamplingParams,
                    stop_ids: Sequence[int] = (), use_cache: bool = True) -> Iterator[int]:
    """Yield new token ids one at a time until max_new_tokens, a stop id or the context's end."""
    if not prompt:
        raise LmforgeError("the prompt is empty after tokenization",
                           hint="give some text, or let the BOS token start it")
    context = model.design.context_length
    if len(prompt) >= context:
        raise LmforgeError(f"the prompt has {len(prompt)} tokens; the model's context is "
                           f"{context}", hint="shorten the prompt")
    device = next(model.parameters()).device
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    budget = min(params.max_new_tokens, context - len(prompt))
    ids = torch.tensor([list(prompt)], device=device)
    cache = model.new_cache(1, len(prompt) + budget) if use_cache else None
    step_input = ids
    for _ in range(budget):
        logits = model(step_input, cache)[:, -1, :]
        token = sample_next(logits, params, generator)
        value = int(token.item())
        yield value
        if value in stop_ids:
            return
        if use_cache:
            step_input = token.view(1, 1)
        else:
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
            step_input = ids


def complete(model: Transformer, tok: Tokenizer, prompt: str, params: SamplingParams) -> str:
    """The text a base model writes after `prompt`, until the document ends (BOS/EOS)."""
    ids = [tok.bos_id] + tok.encode(prompt)
    out = generate_tokens(model, ids, params, stop_ids=(tok.bos_id, tok.eos_id))
    return tok.decode(list(out), skip_special=True)
