"""Response bodies in OpenAI's shapes: completions, chat completions, their stream chunks,
and the server-sent-event framing (`data: {json}` lines, ending with `data: [DONE]`)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


DONE = sse("[DONE]")


def completion_body(rid: str, created: int, model: str, choices: list[dict[str, Any]],
                    usage: dict[str, int]) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": None, "choices": [
                {"index": c["index"], "text": c["text"], "logprobs": None,
                 "finish_reason": c["finish_reason"]} for c in choices], "usage": usage}


def completion_chunk(rid: str, created: int, model: str, index: int, text: str,
                     finish_reason: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": None, "choices": [
                {"index": index, "text": text, "logprobs": None,
                 "finish_reason": finish_reason}]}


def chat_body(rid: str, created: int, model: str, choices: list[dict[str, Any]],
              usage: dict[str, int]) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": None, "choices": [
                {"index": c["index"], "message": c["message"], "logprobs": None,
                 "finish_reason": c["finish_reason"]} for c in choices], "usage": usage}


def chat_chunk(rid: str, created: int, model: str, index: int, delta: dict[str, Any],
               finish_reason: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None, "choices": [
                {"index": index, "delta": delta, "logprobs": None,
                 "finish_reason": finish_reason}]}


def usage_chunk(rid: str, created: int, model: str, obj: str,
                usage: dict[str, int]) -> dict[str, Any]:
    """The last chunk when stream_options.include_usage is set: no choices, the usage."""
    return {"id": rid, "object": obj, "created": created, "model": model,
            "system_fingerprint": None, "choices": [], "usage": usage}

