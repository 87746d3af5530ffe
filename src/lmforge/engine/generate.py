"""Autoregressive generation with a KV cache: one prompt streamed token by token, or a batch of
prompts of different lengths decoded together.

Every caller that generates (`lmforge generate`, evaluation, training samples, and later the
server, red teaming and RL rollouts) goes through here; the continuous-batching scheduler
builds on the same per-row cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from lmforge.engine.sampling import SamplingParams, sample_next
from lmforge.errors import LmforgeError
from lmforge.model.decode_step import decode_step, decode_weights
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer


def _check_prompt(model: Transformer, prompt: Sequence[int]) -> None:
    if not prompt:
        raise LmforgeError("the prompt is empty after tokenization",
                           hint="give some text, or let the BOS token start it")
    context = model.design.context_length
    if len(prompt) >= context:
        raise LmforgeError(f"the prompt has {len(prompt)} tokens; the model's context is "
                           f"{context}", hint="shorten the prompt")


def _generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    if params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(params.seed)


@torch.inference_mode()  # no_grad, and no view or version tracking: less per-op work
def generate_tokens(model: Transformer, prompt: Sequence[int], params: SamplingParams,
                    stop_ids: Sequence[int] = (), use_cache: bool = True) -> Iterator[int]:
    """Yield new token ids one at a time until max_new_tokens, a stop id or the context's end."""
    _check_prompt(model, prompt)
    device = next(model.parameters()).device
    generator = _generator(params, device)
    budget = min(params.max_new_tokens, model.design.context_length - len(prompt))
    ids = torch.tensor([list(prompt)], device=device)
    cache = model.new_cache(1, len(prompt) + budget) if use_cache else None
    fast = decode_weights(model) if use_cache else None  # None: the general forward decodes
    step_input = ids
    for i in range(budget):
        if fast is not None and i > 0:  # a decode step: fused weights, one token
            logits = decode_step(model, fast, step_input[:, 0], cache, [len(prompt) + i])
        else:  # the head reads only the last position (the prompt's logits are not needed)
            logits = model.lm_head(model.hidden(step_input, cache)[:, -1])
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


@torch.no_grad()
def generate_batch(model: Transformer, prompts: Sequence[Sequence[int]],
                   params: SamplingParams | Sequence[SamplingParams],
                   stop_ids: Sequence[int] = ()) -> list[list[int]]:
    """New token ids for each prompt, decoded together in one batch.

    Prompts of different lengths are right-padded into one prefill; the cache then keeps a
    length per row, so each row continues from its own last token at its own positions and
    never sees another row's padding. Each row stops at its own budget or stop id (a stop id
    is included in its output, as `generate_tokens` yields it). Greedy output equals
    `generate_tokens` one prompt at a time. `params` is one for all rows or one per row; a
    row's seed drives its own generator, so its sample does not depend on its neighbours.
    """
    if not prompts:
        return []
    rows = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
    if len(rows) != len(prompts):
        raise LmforgeError(f"{len(rows)} sampling settings for {len(prompts)} prompts",
                           hint="give one SamplingParams, or one per prompt")
    for prompt in prompts:
        _check_prompt(model, prompt)
    device = next(model.parameters()).device
    context = model.design.context_length
    lengths = [len(p) for p in prompts]
    budgets = [min(r.max_new_tokens, context - n) for r, n in zip(rows, lengths)]
    cache = model.new_cache(len(prompts), max(n + b for n, b in zip(lengths, budgets)))
    ids = torch.zeros(len(prompts), max(lengths), dtype=torch.long, device=device)
    for r, prompt in enumerate(prompts):
        ids[r, :len(prompt)] = torch.tensor(list(prompt), device=device)
    real = torch.tensor(lengths, device=device)
    hidden = model.hidden(ids, cache, lengths=real)
    last = hidden[torch.arange(len(prompts), device=device), real - 1]
    generators = [_generator(r, device) for r in rows]
    outputs: list[list[int]] = [[] for _ in prompts]
    active = [b > 0 for b in budgets]
    greedy = all(r.temperature == 0 for r in rows)
    stops = set(stop_ids)
    while any(active):
        logits = model.lm_head(last)
        if greedy:
            tokens = logits.argmax(dim=-1)
        else:
            tokens = torch.stack([sample_next(logits[r:r + 1], rows[r], generators[r])[0]
                                  for r in range(len(prompts))])
        for r, token in enumerate(tokens.tolist()):
            if not active[r]:
                continue
            outputs[r].append(token)
            if token in stops or len(outputs[r]) >= budgets[r]:
                active[r] = False
        if not any(active):
            break
        # Finished rows still ride along (their slots are written but never read again);
        # the continuous-batching scheduler fills such slots with new requests instead.
        step = torch.tensor([[t if a else 0] for t, a in zip(tokens.tolist(), active)],
                            device=device)
        room = torch.tensor([int(a) for a in active], device=device)
        last = model.hidden(step, cache, lengths=room)[:, -1]
    return outputs


def complete(model: Transformer, tok: Tokenizer, prompt: str, params: SamplingParams) -> str:
    """The text a base model writes after `prompt`, until the document ends (BOS/EOS)."""
    ids = [tok.bos_id] + tok.encode(prompt)
    out = generate_tokens(model, ids, params, stop_ids=(tok.bos_id, tok.eos_id))
    return tok.decode(list(out), skip_special=True)
