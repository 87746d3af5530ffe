"""From OpenAI chat messages to the prompt the model reads, and from its text back to the
assistant message. Tool calling plugs in here, and only here: `prompt_for` renders
`tools`, `assistant_message` parses `tool_calls` out of the text."""

from __future__ import annotations

from typing import Any

from lmforge.errors import LmforgeError
from lmforge.serve.errors import bad_request
from lmforge.tokenizer import SPECIAL_TOKENS, Tokenizer


def _text(i: int, content: Any) -> str:
    """A message's content as one string: plain text, or text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    pieces = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise bad_request(f"messages[{i}].content: only text parts are supported, not "
                              f"{part.get('type')!r}", f"messages.{i}.content")
        pieces.append(part["text"])
    return "".join(pieces)


def prompt_for(tok: Tokenizer, messages: list[dict[str, Any]],
               tools: list[dict[str, Any]] | None) -> list[int]:
    """The token ids the model reads before writing the next assistant message.

    `messages` are the request's messages as dicts (content as sent: a string, text parts,
    or None). OpenAI's `developer` role is the system role of newer models.
    """
    if tools:
        raise bad_request("this model was not tuned to call tools", "tools",
                          "tools_not_supported")
    plain = []
    for i, m in enumerate(messages):
        role = "system" if m.get("role") == "developer" else m.get("role")
        if m.get("tool_calls"):
            raise bad_request(f"messages[{i}]: this model was not tuned to call tools, so it "
                              "cannot read tool_calls", f"messages.{i}.tool_calls",
                              "tools_not_supported")
        if m.get("content") is None and role in ("system", "user"):
            raise bad_request(f"messages[{i}] ({role}) has no content", f"messages.{i}.content",
                              "missing_required_parameter")
        plain.append({"role": role, "content": _text(i, m.get("content"))})
    try:
        ids, _ = tok.render_chat(plain, add_generation_prompt=True)
    except LmforgeError as e:
        raise bad_request(e.message + (f" ({e.hint})" if e.hint else ""), "messages") from None
    return ids


def chat_stop_ids(tok: Tokenizer) -> tuple[int, ...]:
    """A reply ends at <|end|>, EOS, or any special token (a role token would open a turn the
    model must not write), as in `lmforge chat`."""
    return tuple(range(len(SPECIAL_TOKENS)))


def completion_stop_ids(tok: Tokenizer) -> tuple[int, ...]:
    """A base model's continuation ends where its document ends."""
    return (tok.bos_id, tok.eos_id)


def assistant_message(text: str, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The `message` of a chat choice for the text the model wrote."""
    return {"role": "assistant", "content": text}
