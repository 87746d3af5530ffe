"""From a request's sampling fields and prompts to what the engine is asked: limits checked
(413 for a prompt over the limit, 400 for max_tokens beyond the server's or the context),
OpenAI's defaults applied (temperature 1, top_p 1)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from lmforge.engine.sampling import SamplingParams
from lmforge.serve.config import MAX_CHOICES
from lmforge.serve.errors import APIError, bad_request
from lmforge.serve.schemas import SamplingFields
from lmforge.serve.state import ServerState


def check_prompts(state: ServerState, prompts: list[list[int]], n: int) -> None:
    if len(prompts) * n > MAX_CHOICES:
        raise bad_request(f"{len(prompts)} prompts x n={n} asks for {len(prompts) * n} "
                          f"choices; this server gives at most {MAX_CHOICES} per request.",
                          "n")
    limit = state.max_prompt_tokens
    vocab = state.served.model.design.vocab_size
    for i, ids in enumerate(prompts):
        if not ids:
            raise bad_request("The prompt is empty.", "prompt")
        if len(ids) > limit:
            where = f"Prompt {i} has" if len(prompts) > 1 else "The prompt has"
            raise APIError(413, f"{where} {len(ids)} tokens; this server accepts at most "
                                f"{limit} (the model's context is "
                                f"{state.served.context_length}).", param="prompt",
                           code="prompt_too_long")
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise bad_request(f"Token id {bad} is outside the vocabulary (0..{vocab - 1}).",
                              "prompt")


def max_new_tokens(state: ServerState, requested: int | None, param: str,
                   prompts: list[list[int]]) -> int:
    """The new-token budget of each choice. Left out: the server's default, cut where the
    context ends (finish_reason "length")."""
    cfg, context = state.cfg, state.served.context_length
    if requested is None:
        return min(cfg.default_max_tokens, cfg.max_tokens)
    if requested > cfg.max_tokens:
        raise bad_request(f"{param} is too large: {requested}. This server allows at most "
                          f"{cfg.max_tokens} new tokens per choice.", param, "invalid_value")
    longest = max(len(p) for p in prompts)
    if longest + requested > context:
        raise bad_request(f"This model's maximum context length is {context} tokens. However, "
                          f"you requested {longest + requested} tokens ({longest} in the "
                          f"prompt, {requested} for the completion). Reduce the prompt or "
                          f"{param}.", param, "context_length_exceeded")
    return requested


# Below this a temperature is greedy (as vLLM): dividing logits by 1e-300 overflows to
# inf, and the probabilities become NaN.
MIN_TEMPERATURE = 1e-5


def sampling_params(body: SamplingFields, max_new: int) -> SamplingParams:
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if top_p == 0 or temperature < MIN_TEMPERATURE:  # all the mass on one token: greedy
        temperature, top_p = 0.0, 1.0
    return SamplingParams(temperature=temperature, top_k=body.top_k or 0, top_p=top_p,
                          max_new_tokens=max_new, seed=body.seed)


def check_stops(body: SamplingFields) -> tuple[str, ...]:
    stops = body.stop_strings()
    if len(stops) > 4:
        raise bad_request("stop takes at most 4 strings.", "stop")
    if any(not s for s in stops):
        raise bad_request("stop strings must not be empty.", "stop")
    return stops


def check_supported(body: SamplingFields) -> None:
    problem = body.unsupported()
    if problem is not None:
        raise bad_request(problem[1], problem[0], "unsupported_parameter")


def _surrogate_at(value: Any, path: str) -> str | None:
    """The path of the first string holding a lone surrogate (JSON allows "\\ud800"; no
    tokenizer or database does), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or None
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, item in items:
        found = _surrogate_at(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def check_text(body: BaseModel) -> None:
    where = _surrogate_at(body.model_dump(), "")
    if where is not None:
        raise bad_request(f"Invalid value for '{where}': a lone UTF-16 surrogate is not "
                          "text.", where, "invalid_value")
