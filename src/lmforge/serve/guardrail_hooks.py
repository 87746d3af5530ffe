"""Where `--guardrails` rules meet a request: the input check before anything is generated,
and the record of every hit (input here, output from the generation's watch) on /metrics and
in the access log. The rules themselves live in lmforge.guardrails."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from lmforge.guardrails import Match
from lmforge.serve.state import ServerState


def record_hit(request: Request, state: ServerState, match: Match) -> None:
    """Count a hit and note it in the request's access log line: the rule, never the matched
    text unless the server logs prompts."""
    state.metrics.guardrail_hits.labels(state.metrics.model_name, match.rule,
                                        match.direction).inc()
    note: dict[str, Any] = {"rule": match.rule, "direction": match.direction,
                            "where": match.where}
    if match.category:
        note["category"] = match.category
    if state.cfg.log_prompts:
        note["matched"] = match.text
    request.state.access.setdefault("guardrails", []).append(note)


def _prompt_texts(state: ServerState, prompt: Any, ids: list[list[int]]) -> list[str]:
    """A completion request's prompts as text: as sent, or decoded from token ids (which
    would otherwise slip past every rule)."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    return [state.served.tok.decode(p, skip_special=True) for p in ids]


def screen_input(request: Request, state: ServerState, *,
                 messages: list[dict[str, Any]] | None = None, prompt: Any = None,
                 prompt_ids: list[list[int]] | None = None) -> Match | None:
    """The first input rule the request matches (chat `messages`, or a completion's `prompt`
    with its token ids), recorded; None without input rules or without a match."""
    rules = state.guardrails
    if rules is None or not rules.input:
        return None
    if messages is not None:
        hit = rules.check_input(messages)
    else:
        texts = _prompt_texts(state, prompt, prompt_ids or [])
        hit = next((m for i, text in enumerate(texts) if (m := rules.check_prompt(
            text, "prompt" if len(texts) == 1 else f"prompt[{i}]")) is not None), None)
    if hit is not None:
        record_hit(request, state, hit)
    return hit
