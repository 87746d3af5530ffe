"""Multi-turn chat on top of the engine: history, a system prompt, streaming, end of turn.

`ChatSession` keeps the conversation as OpenAI-style messages and streams each reply through
`generate_tokens`. It knows nothing of terminals or HTTP, so `lmforge chat` and later the
server both drive it. A reply ends at <|end|>, at EOS, or at any other special token (a role
token would start a turn the model must not write); special tokens are never shown. When the
history and the room kept for the reply outgrow the context, the oldest turns go first; the
system prompt always stays.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmforge.engine.generate import generate_tokens
from lmforge.engine.sampling import SamplingParams
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
    """What happened in the latest `send`: sizes, why the reply ended, turns dropped."""

    prompt_tokens: int = 0
    reply_tokens: int = 0
    finish: str = ""  # "stop" (end of turn), "length" (max tokens) or "context" (full)
    dropped_turns: int = 0


@dataclass
class ChatSession:
    """One conversation with a model. `send` streams a reply and records the turn."""

    model: Transformer
    tok: Tokenizer
    params: SamplingParams = field(default_factory=SamplingParams)
    system: str | None = None
    max_context: int | None = None  # tokens of history + reply; default the model's context
    history: list[dict[str, str]] = field(default_factory=list)  # user/assistant turns
    last: TurnInfo = field(default_factory=TurnInfo)

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
    def messages(self) -> list[dict[str, str]]:
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

    def prompt_ids(self, user_text: str) -> tuple[list[int], int]:
        """The ids the model reads before answering `user_text`, and how many of the oldest
        turns must go so that they plus the reply budget fit the context (not yet dropped)."""
        tok = self.tok
        sizes = [2 + len(tok.encode(m["content"])) for m in self.history]  # role + text + end
        fixed = 1 + 2 + len(tok.encode(user_text)) + 1  # bos, the new turn, <|assistant|>
        if self.system:
            fixed += 2 + len(tok.encode(self.system))
        assert self.max_context is not None
        drop = 0
        while drop < len(sizes) and fixed + sum(sizes[drop:]) + self.params.max_new_tokens \
                > self.max_context:
            drop += 1  # whole turns only: a user message and the reply after it
            while drop < len(sizes) and self.history[drop]["role"] != "user":
                drop += 1
        head = [{"role": "system", "content": self.system}] if self.system else []
        ids, _ = tok.render_chat(head + self.history[drop:]
                                 + [{"role": "user", "content": user_text}],
                                 add_generation_prompt=True)
        return ids, drop

    def send(self, user_text: str) -> Iterator[str]:
        """Stream the reply to `user_text` as text pieces; the turn joins the history once
        the reply ends. A reply abandoned part-way (the caller stops iterating) leaves the
        history as it was."""
        if not isinstance(user_text, str):
            raise LmforgeError(f"a chat message is text, not {type(user_text).__name__}")
        ids, drop = self.prompt_ids(user_text)
        assert self.max_context is not None
        room = self.max_context - len(ids)
        if room < 1:
            raise LmforgeError(f"this message needs {len(ids)} tokens with the system prompt; "
                               f"the context holds {self.max_context}",
                               hint="send a shorter message, or shorten the system prompt")
        return self._stream(user_text, ids, drop, room)

    def _stream(self, user_text: str, ids: list[int], drop: int, room: int) -> Iterator[str]:
        budget = min(self.params.max_new_tokens, room)
        seed = None if self.params.seed is None else self.params.seed + self._turns
        params = dataclasses.replace(self.params, max_new_tokens=budget, seed=seed)
        stops = tuple(range(len(SPECIAL_TOKENS)))  # end, EOS, and tokens that open a turn
        decoder = self.tok.stream_decoder(skip_special=True)
        pieces: list[str] = []
        count, finish = 0, "length" if budget == self.params.max_new_tokens else "context"
        for token in generate_tokens(self.model, ids, params, stop_ids=stops):
            if token in stops:  # belt and braces: the engine stops here too
                finish = "stop"
                break
            count += 1
            piece = decoder.add(token)
            if piece:
                pieces.append(piece)
                yield piece
            if count >= budget:
                break
        tail = decoder.flush()
        if tail:
            pieces.append(tail)
            yield tail
        # Only a finished reply changes the session.
        dropped = sum(m["role"] == "user" for m in self.history[:drop])
        del self.history[:drop]
        self.history += [{"role": "user", "content": user_text},
                         {"role": "assistant", "content": "".join(pieces)}]
        self.last = TurnInfo(len(ids), count, finish, dropped)
        self._turns += 1
