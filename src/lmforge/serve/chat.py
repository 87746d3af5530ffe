"""From OpenAI chat messages to the prompt the model reads, and from its text back to the
assistant message. Tool calling plugs in here, and only here: `prompt_for` renders
`tools`, `assistant_message` parses `tool_calls` out of the text."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from lmforge.chat_format import TOOL_CALL_OPEN, parse_tool_calls, tool_function
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


@dataclass
class ChatPrompt:
    """What the model reads, the tools it was offered, and text forced into its reply."""

    ids: list[int]
    tools: list[dict[str, Any]] | None = None  # offered (None: no tools, or tool_choice none)
    forced: str = ""  # the reply's first characters, already in `ids` (tool_choice)


def _forced_call(tools: list[dict[str, Any]], choice: Any) -> str:
    """The start of the reply that `tool_choice` forces: for "required" the opening of a
    call, for a named function its call up to the arguments; "" for "auto" and None."""
    if choice in (None, "auto"):
        return ""
    if choice == "required":
        return TOOL_CALL_OPEN + '{"name": "'
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise bad_request("tool_choice must be 'none', 'auto', 'required' or {'type': "
                          "'function', 'function': {'name': ...}}", "tool_choice")
    offered = [tool_function(t).get("name") for t in tools]
    if name not in offered:
        raise bad_request(f"tool_choice names {name!r}, which is not among the tools "
                          f"({', '.join(map(str, offered))})", "tool_choice")
    return TOOL_CALL_OPEN + f'{{"name": "{name}", "arguments": '


def prompt_for(tok: Tokenizer, messages: list[dict[str, Any]],
               tools: list[dict[str, Any]] | None, tool_choice: Any = None) -> ChatPrompt:
    """The token ids the model reads before writing the next assistant message.

    `messages` are the request's messages as dicts (content as sent: a string, text parts,
    or None; assistant `tool_calls` and `tool` results as OpenAI sends them). OpenAI's
    `developer` role is the system role of newer models. Tools are offered in the system
    turn unless `tool_choice` is "none"; "required" or a named function starts the reply
    with a call (the model writes the rest).
    """
    plain = []
    for i, m in enumerate(messages):
        role = "system" if m.get("role") == "developer" else m.get("role")
        if m.get("content") is None and role in ("system", "user", "tool"):
            raise bad_request(f"messages[{i}] ({role}) has no content", f"messages.{i}.content",
                              "missing_required_parameter")
        message: dict[str, Any] = {"role": role, "content": _text(i, m.get("content"))}
        if m.get("tool_calls"):
            message["tool_calls"] = m["tool_calls"]
        plain.append(message)
    offered = tools if tools and tool_choice != "none" else None
    try:
        forced = _forced_call(tools, tool_choice) if offered else ""
        ids, _ = tok.render_chat(plain, add_generation_prompt=True, tools=offered)
    except LmforgeError as e:
        field = "tools" if "tool " in e.message and "message" not in e.message else "messages"
        raise bad_request(e.message + (f" ({e.hint})" if e.hint else ""), field) from None
    return ChatPrompt(ids + tok.encode(forced) if forced else ids, offered, forced)


def chat_stop_ids(tok: Tokenizer) -> tuple[int, ...]:
    """A reply ends at <|end|>, EOS, or any special token (a role token would open a turn the
    model must not write), as in `lmforge chat`."""
    return tuple(range(len(SPECIAL_TOKENS)))


def completion_stop_ids(tok: Tokenizer) -> tuple[int, ...]:
    """A base model's continuation ends where its document ends."""
    return (tok.bos_id, tok.eos_id)


def assistant_message(text: str, prompt: ChatPrompt) -> tuple[dict[str, Any], bool]:
    """The `message` of a chat choice for the text the model wrote, and whether it calls
    tools (finish_reason "tool_calls"). A call that does not parse stays text."""
    text = prompt.forced + text
    if prompt.tools is None:
        return {"role": "assistant", "content": text}, False
    reply = parse_tool_calls(text)
    if not reply.calls:
        return {"role": "assistant", "content": text}, False
    return {"role": "assistant", "content": reply.content or None,
            "tool_calls": reply.openai_tool_calls(f"call_{uuid.uuid4().hex[:12]}")}, True


class ToolStream:
    """One streamed choice of a request that offered tools: text that may be a tool call is
    held back; at the end the calls come out as one `tool_calls` delta, or the held text
    as content when it was no call."""

    def __init__(self, prompt: ChatPrompt):
        self.prompt = prompt
        self.text = prompt.forced
        self.shown = 0  # characters of `text` already streamed
        self.hold = bool(prompt.forced)  # a forced call is held from its first character

    def add(self, piece: str) -> str:
        self.text += piece
        if self.hold:
            return ""
        upto = self.text.find(TOOL_CALL_OPEN)
        if upto < 0:
            upto = len(self.text)
            for k in range(min(len(TOOL_CALL_OPEN) - 1, len(self.text)), 0, -1):
                if self.text.endswith(TOOL_CALL_OPEN[:k]):
                    upto = len(self.text) - k
                    break
        out, self.shown = self.text[self.shown:upto], max(self.shown, upto)
        return out

    def finish(self) -> tuple[str, list[dict[str, Any]] | None]:
        """(text still to show, the calls' OpenAI deltas or None)."""
        message, calls = assistant_message(self.text[len(self.prompt.forced):], self.prompt)
        if not calls:
            return self.text[self.shown:], None
        return "", [dict(c, index=i) for i, c in enumerate(message["tool_calls"])]
