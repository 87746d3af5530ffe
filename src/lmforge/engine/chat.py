"""Multi-turn chat on top of the engine: history, a system prompt, streaming, end of turn.

`ChatSession` keeps the conversation as OpenAI-style messages and streams each reply through
`generate_tokens`; offered tools are called when the model asks for them. It knows nothing
of terminals or HTTP, so `lmforge chat` and the server both drive it. A reply ends at
<|end|>, at EOS, or at any other special token (a role token would start a turn the model
must not write); special tokens are never shown. When the history and the room kept for the
reply outgrow the context, the oldest turns go first; the system prompt always stays.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmforge.chat_format import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, parse_tool_calls
from lmforge.engine.generate import generate_tokens
from lmforge.engine.sampling import SamplingParams
from lmforge.engine.tools import Tool, ToolEvent, run_call
from lmforge.errors import LmforgeError
from lmforge.model.io import load_model_dir
from lmforge.model.transformer import Transformer
from lmforge.registry import Workspace
from lmforge.tokenizer import ASSISTANT, END, SPECIAL_TOKENS, USER, Tokenizer

CHAT_HINT = ("use a model whose tokenizer has lmforge's role tokens and chat template: every "
             "tokenizer from `lmforge tokenizer train --input FILES` does, and models built "
             "on it with `lmforge init` inherit it")


def require_chat_template(tok: Any, model: str = "the model",
                          consequence: str = "it cannot chat") -> None:
    """Raise one clear LmforgeError unless `tok` renders chats with role and end tokens."""
    problems = []
    if not callable(getattr(tok, "render_chat", None)):
        problems.append("its tokenizer cannot render a chat")
    for attr, spelling in (("user_id", USER), ("assistant_id", ASSISTANT), ("end_id", END)):
        token_id = getattr(tok, attr, None)
        if not isinstance(token_id, int):
            problems.append(f"no {spelling} token")
        elif callable(getattr(tok, "id_to_token", None)) and tok.id_to_token(token_id) != spelling:
            problems.append(f"id {token_id} is {tok.id_to_token(token_id)!r}, not {spelling}")
    if hasattr(tok, "chat_template") and not tok.chat_template:
        problems.append("no chat template")
    if problems:
        raise LmforgeError(f"{model} has no chat template ({'; '.join(problems)}), so "
                           f"{consequence}", hint=CHAT_HINT)


def _check_stored_template(folder: Path, label: str) -> None:
    """The model folder's own files: an lmforge tokenizer, and a chat template where a
    tokenizer_config.json is stored (what transformers' apply_chat_template reads)."""
    try:
        Tokenizer.load(folder / "tokenizer.json")
    except LmforgeError as e:
        if (folder / "tokenizer.json").is_file():  # a missing file keeps load_model's error
            raise LmforgeError(f"{label} has no chat template ({e.message}), so it cannot "
                               "chat", hint=CHAT_HINT) from None
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise LmforgeError(f"{config}: not a valid tokenizer_config.json ({e})") from None
        if not template:
            raise LmforgeError(f"{label} has no chat template (its tokenizer_config.json "
                               "stores none), so it cannot chat", hint=CHAT_HINT)


def load_chat_model(ws: Workspace, ref: str, device: str | torch.device = "cpu"
                    ) -> tuple[Transformer, Tokenizer, str]:
    """A model (artifact ref or model folder) checked to be able to chat, and its label."""
    path = Path(ref)
    if path.is_dir() and not (path / "manifest.json").exists():
        folder, label = path, f"model folder {ref}"
    else:
        art = ws.resolve(ref, kind="model")  # checksums verified here
        folder = art.path
        label = f"model {art.id}" + (f" ({art.name})" if art.name else "")
    _check_stored_template(folder, label)
    model, tok = load_model_dir(folder, device)
    require_chat_template(tok, label)
    return model, tok, label


@dataclass
class TurnInfo:
    """What happened in the latest `send`: sizes, why the reply ended, turns dropped, and
    the tools called on the way."""

    prompt_tokens: int = 0
    reply_tokens: int = 0
    finish: str = ""  # "stop" (end of turn), "length" (max tokens) or "context" (full)
    dropped_turns: int = 0
    tool_events: list[ToolEvent] = field(default_factory=list)


def _tool_call_start(text: str) -> int:
    """Where text that could be (the start of) a tool call begins; len(text) if nowhere.
    Text from there on is held back until it is known not to be a call."""
    at = text.find(TOOL_CALL_OPEN)
    if at >= 0:
        return at
    for k in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if text.endswith(TOOL_CALL_OPEN[:k]):
            return len(text) - k
    return len(text)


@dataclass
class ChatSession:
    """One conversation with a model. `send` streams a reply and records the turn.

    With `tools`, the tools are offered to the model in the system turn; when a reply calls
    one, generation stops at the call, the tool runs (`on_tool` hears of it), its result
    joins the conversation as a tool message and the model goes on, up to `max_tool_rounds`
    calls per turn. A call's text is never streamed as the reply."""

    model: Transformer
    tok: Tokenizer
    params: SamplingParams = field(default_factory=SamplingParams)
    system: str | None = None
    max_context: int | None = None  # tokens of history + reply; default the model's context
    history: list[dict[str, Any]] = field(default_factory=list)  # the turns after the system
    last: TurnInfo = field(default_factory=TurnInfo)
    tools: Sequence[Tool] = ()
    on_tool: Callable[[ToolEvent], None] | None = None
    max_tool_rounds: int = 3

    def __post_init__(self) -> None:
        require_chat_template(self.tok)
        limit = self.model.design.context_length
        if self.max_context is None:
            self.max_context = limit
        if not 8 <= self.max_context <= limit:  # 8: room for the layout and a short reply
            raise LmforgeError(f"max_context must be between 8 and the model's context "
                               f"({limit}), got {self.max_context}",
                               hint=f"leave it out to use all {limit} tokens")
        self._turns = 0  # replies since the start or the last reset; seeds each turn

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation as OpenAI messages: the system prompt, then the turns."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + list(self.history)

    @property
    def notice(self) -> str | None:
        """A line for the user when the latest turn dropped history or was cut short."""
        notes = []
        if self.last.dropped_turns:
            notes.append(f"dropped the {self.last.dropped_turns} oldest turn(s) to fit the "
                         f"context of {self.max_context} tokens (the system prompt is kept)")
        if self.last.finish == "length":
            notes.append(f"the reply was cut at {self.params.max_new_tokens} tokens")
        elif self.last.finish == "context":
            notes.append(f"the reply was cut where the context of {self.max_context} tokens "
                         "ends")
        return "; ".join(notes) or None

    def reset(self) -> None:
        """Forget the turns (the system prompt stays)."""
        self.history.clear()
        self.last = TurnInfo()
        self._turns = 0

    def prompt_ids(self, new: str | list[dict[str, Any]]) -> tuple[list[int], int]:
        """The ids the model reads before answering the `new` messages (a user text, or the
        messages of the turn so far), and how many of the oldest history messages must go
        so that the prompt and the reply budget fit the context (not yet dropped)."""
        if isinstance(new, str):
            new = [{"role": "user", "content": new}]
        head = [{"role": "system", "content": self.system}] if self.system else []
        specs = [t.spec() for t in self.tools] or None
        assert self.max_context is not None
        drop = 0
        while True:
            ids, _ = self.tok.render_chat(head + self.history[drop:] + new,
                                          add_generation_prompt=True, tools=specs)
            if len(ids) + self.params.max_new_tokens <= self.max_context \
                    or drop >= len(self.history):
                return ids, drop
            drop += 1  # whole turns only: a user message and what answered it
            while drop < len(self.history) and self.history[drop]["role"] != "user":
                drop += 1

    def send(self, user_text: str) -> Iterator[str]:
        """Stream the reply to `user_text` as text pieces; the turn joins the history once
        the reply ends. A reply abandoned part-way (the caller stops iterating) leaves the
        history as it was."""
        if not isinstance(user_text, str):
            raise LmforgeError(f"a chat message is text, not {type(user_text).__name__}")
        new = [{"role": "user", "content": user_text}]
        ids, _ = self.prompt_ids(new)
        assert self.max_context is not None
        if len(ids) >= self.max_context:
            raise LmforgeError(f"this message needs {len(ids)} tokens with the system prompt"
                               f"{' and the tools' if self.tools else ''}; the context holds "
                               f"{self.max_context}",
                               hint="send a shorter message, or shorten the system prompt")
        return self._turn(new)

    def _turn(self, new: list[dict[str, Any]]) -> Iterator[str]:
        runnable = {t.name: t for t in self.tools}
        events: list[ToolEvent] = []
        prompt_tokens = count = 0
        for round_ in range(self.max_tool_rounds + 1):
            ids, drop = self.prompt_ids(new)
            assert self.max_context is not None
            room = self.max_context - len(ids)
            if room < 1:  # a tool's result filled the context: end the turn here
                finish = "context"
                new.append({"role": "assistant", "content": ""})
                break
            prompt_tokens = prompt_tokens or len(ids)
            reply = yield from self._generate(ids, room, watch_calls=bool(runnable))
            text, finish, used = reply
            count += used
            parsed = parse_tool_calls(text) if runnable else None
            if parsed is None or not parsed.calls or round_ == self.max_tool_rounds:
                new.append({"role": "assistant", "content": text})
                finish = "stop" if finish == "tool_calls" else finish  # not a valid call
                break
            calls = parsed.calls[:1]  # generation stopped at the first call
            new.append({"role": "assistant", "content": parsed.content, "tool_calls": [
                {"type": "function", "function": c} for c in calls]})
            for call in calls:
                event = ToolEvent(call["name"], call["arguments"], run_call(runnable, call))
                events.append(event)
                if self.on_tool is not None:
                    self.on_tool(event)
                new.append({"role": "tool", "content": event.result})
        # Only a finished reply changes the session.
        dropped = sum(m["role"] == "user" for m in self.history[:drop])
        del self.history[:drop]
        self.history += new
        self.last = TurnInfo(prompt_tokens, count, finish, dropped, events)
        self._turns += 1

    def _generate(self, ids: list[int], room: int, watch_calls: bool
                  ) -> Generator[str, None, tuple[str, str, int]]:
        """Stream one assistant message; return (its text, finish, tokens). With
        `watch_calls`, text that may be a tool call is held back, and generation stops
        right after a complete call."""
        budget = min(self.params.max_new_tokens, room)
        seed = None if self.params.seed is None else self.params.seed + self._turns
        params = dataclasses.replace(self.params, max_new_tokens=budget, seed=seed)
        stops = tuple(range(len(SPECIAL_TOKENS)))  # end, EOS, and tokens that open a turn
        decoder = self.tok.stream_decoder(skip_special=True)
        text, shown = "", 0
        count, finish = 0, "length" if budget == self.params.max_new_tokens else "context"
        for token in generate_tokens(self.model, ids, params, stop_ids=stops):
            if token in stops:  # belt and braces: the engine stops here too
                finish = "stop"
                break
            count += 1
            text += decoder.add(token)
            call_at = text.find(TOOL_CALL_OPEN) if watch_calls else -1
            if call_at >= 0 and TOOL_CALL_CLOSE in text[call_at:]:
                finish = "tool_calls"
                break
            upto = _tool_call_start(text) if watch_calls else len(text)
            if upto > shown:
                yield text[shown:upto]
                shown = upto
            if count >= budget:
                break
        text += decoder.flush()
        if not (watch_calls and parse_tool_calls(text).calls) and len(text) > shown:
            yield text[shown:]  # held-back text that turned out not to be a call
        return text, finish, count
