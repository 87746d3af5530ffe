"""Chat data for supervised fine-tuning: conversations, read and checked before anything trains.

A conversation is a list of OpenAI-style messages (role system, user or assistant; content a
string). `load_conversations` reads JSON Lines (also .gz, .zst), JSON arrays, folders, globs and
`hf:` datasets, and converts the common instruction shapes on load, record by record:

- OpenAI chat:     {"messages": [{"role": "user", "content": ...}, ...], "tools": [...]}
                   (roles system, user, assistant, tool; assistant `tool_calls`, optional
                   `tools` offered, as in OpenAI's fine-tuning files)
- ShareGPT:        {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}
- Alpaca:          {"instruction", "input", "output"}        (input may be empty or absent)
- Dolly:           {"instruction", "context", "response"}    (context may be empty or absent)
- self-instruct:   {"prompt", "completion"}, or {"instruction", "instances": [{input, output}]}
                   (one conversation per instance)

Anything else, an unknown role, an empty assistant turn or a conversation without one stops
the load with one `LmforgeError` that names `file:line`: nothing is returned partially, so
nothing half-read is trained on. `encode_conversation` renders a conversation with the
tokenizer's chat layout and refuses one whose loss mask would be all zero (after truncation
too), the silent failure SFT must never have.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.chat_format import ROLES, validate_messages, validate_tools
from lmforge.data.documents import make_reporter
from lmforge.data.hub import hub_records, is_hub_spec, parse_spec
from lmforge.data.readers import ReadProblem, json_records
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

__all__ = ["BUILTIN_CHAT", "SHAPES_HINT", "Conversation", "check_mask", "conversation_sources",
           "conversations_from_record", "encode_conversation", "load_conversations",
           "split_conversations"]

SHAPES_HINT = (
    'accepted records: {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", '
    '"content": "..."}], "tools": [...]} (roles system, user, assistant, tool), ShareGPT '
    '{"conversations": [{"from": '
    '"human"|"gpt"|"system", "value": "..."}]}, Alpaca {instruction, input, output}, Dolly '
    '{instruction, context, response}, self-instruct {prompt, completion} or {instruction, '
    'instances: [{input, output}]}'
)
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
JSON_SUFFIXES = (".json",)
# Built-in conversation sets, by name (checked when no file of that name exists).
BUILTIN_CHAT = ("pydocs-chat", "pydocs-chat:heldout")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "system": "system"}
_EOT = "<|endoftext|>"  # GPT-3 fine-tuning files end completions with it; <|end|> replaces it


@dataclass
class Conversation:
    messages: list[dict[str, Any]]
    source: str  # where it came from: "file:line", "hf:NAME:SPLIT[row]", "pydocs-chat:NAME"
    tools: list[dict] | None = None  # OpenAI tools offered in this conversation


class _Bad(Exception):
    """What is wrong with one record; the caller adds file:line."""


# ---- one record -> conversations ------------------------------------------------------------

def _text(rec: dict, key: str, required: bool = True) -> str:
    value = rec.get(key, "")
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise _Bad(f"field {key!r} is {type(value).__name__}, not a string")
    return value


def _prompt(instruction: str, extra: str, names: tuple[str, str]) -> str:
    if not instruction.strip():
        raise _Bad(f"field {names[0]!r} is empty (no user turn)")
    # The instruction, then its input/context after a blank line: how Alpaca's and Dolly's
    # own prompt templates order them.
    return instruction.strip() + (f"\n\n{extra.strip()}" if extra.strip() else "")


def _answer(text: str, key: str) -> str:
    if not text.strip():
        raise _Bad(f"field {key!r} is empty (an empty assistant turn)")
    return text.strip()


def _pair(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _checked(messages: Any) -> list[dict[str, Any]]:
    """OpenAI messages: known roles, string contents, no empty assistant turn, at least one;
    tool calls well formed, with their arguments as JSON objects."""
    if not isinstance(messages, list) or not messages:
        raise _Bad("'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _Bad(f"message {i} is a JSON {type(m).__name__}, not an object")
        role = m.get("role")
        if role not in ROLES:
            raise _Bad(f"message {i}: unknown role {role!r} (roles are {', '.join(ROLES)})")
        calls = m.get("tool_calls") or []
        content = m.get("content")
        if content is None and calls and role == "assistant":
            content = ""
        if not isinstance(content, str):
            what = "no 'content'" if "content" not in m else \
                f"content is {type(content).__name__}, not a string"
            raise _Bad(f"message {i} ({role}): {what}")
        if role == "assistant" and not content.strip() and not calls:
            raise _Bad(f"message {i}: empty assistant turn")
        kept: dict[str, Any] = {"role": role, "content": content}
        if calls:
            kept["tool_calls"] = calls  # checked below with the whole conversation
        out.append(kept)  # other keys (name, weight, tool_call_id) dropped
    try:
        validate_messages(out)
    except LmforgeError as e:
        raise _Bad(e.message) from None
    for m in out:  # arguments as objects: one canonical spelling to learn
        if "tool_calls" in m:
            m["tool_calls"] = [_canonical_call(c) for c in m["tool_calls"]]
    if not any(m["role"] == "assistant" for m in out):
        raise _Bad("no assistant turn (nothing to learn from)")
    return out


def _canonical_call(call: dict) -> dict:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    return {"type": "function", "function": {
        "name": fn["name"], "arguments": json.loads(args) if isinstance(args, str) else args}}


def _tools(rec: dict) -> list[dict] | None:
    if rec.get("tools") in (None, []):
        return None
    try:
        validate_tools(rec["tools"])
    except LmforgeError as e:
        raise _Bad(e.message) from None
    return rec["tools"]


def _sharegpt(turns: Any) -> list[dict[str, str]]:
    if not isinstance(turns, list):
        raise _Bad("'conversations' must be a list of {from, value} objects")
    messages = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise _Bad(f"turn {i} is a JSON {type(t).__name__}, not an object")
        speaker = t.get("from")
        if speaker not in _SHAREGPT_ROLES:
            raise _Bad(f"turn {i}: unknown speaker {speaker!r} (from is human, gpt or system)")
        messages.append({"role": _SHAREGPT_ROLES[speaker], "content": t.get("value")})
    return _checked(messages)


def _record_messages(rec: Any) -> list[list[dict[str, Any]]]:
    """The conversations of one record (a self-instruct task gives one per instance)."""
    if not isinstance(rec, dict):
        raise _Bad(f"a JSON {type(rec).__name__}, not an object")
    if "messages" in rec:
        return [_checked(rec["messages"])]
    if "conversations" in rec:
        return [_sharegpt(rec["conversations"])]
    if "instruction" in rec and "instances" in rec:
        instruction, instances = _text(rec, "instruction"), rec["instances"]
        if not isinstance(instances, list) or not instances:
            raise _Bad("field 'instances' must be a non-empty list of {input, output} objects")
        out = []
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict) or "output" not in inst:
                raise _Bad(f"instance {i} is not an {{input, output}} object")
            try:
                out.append(_pair(_prompt(instruction, _text(inst, "input", False),
                                         ("instruction", "input")),
                                 _answer(_text(inst, "output"), "output")))
            except _Bad as e:
                raise _Bad(f"instance {i}: {e}") from None
        return out
    if "instruction" in rec and "output" in rec:
        return [_pair(_prompt(_text(rec, "instruction"), _text(rec, "input", False),
                              ("instruction", "input")),
                      _answer(_text(rec, "output"), "output"))]
    if "instruction" in rec and "response" in rec:
        return [_pair(_prompt(_text(rec, "instruction"), _text(rec, "context", False),
                              ("instruction", "context")),
                      _answer(_text(rec, "response"), "response"))]
    if "prompt" in rec and "completion" in rec:
        completion = _text(rec, "completion").strip()
        completion = completion.removesuffix(_EOT)
        return [_pair(_prompt(_text(rec, "prompt"), "", ("prompt", "")),
                      _answer(completion, "completion"))]
    fields = ", ".join(sorted(rec)) or "none"
    raise _Bad(f"unrecognised record shape (fields: {fields})")


def conversations_from_record(rec: Any, where: str) -> list[Conversation]:
    """One record (any accepted shape) as conversations; a bad one raises naming `where`."""
    try:
        found = _record_messages(rec)
        tools = _tools(rec) if isinstance(rec, dict) and "messages" in rec else None
    except _Bad as e:
        raise LmforgeError(f"{where}: {e}", hint=SHAPES_HINT) from None
    if len(found) == 1:
        return [Conversation(found[0], where, tools)]
    return [Conversation(m, f"{where}#{i + 1}") for i, m in enumerate(found)]


# ---- files, folders, globs, datasets --------------------------------------------------------

def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(JSON_SUFFIXES):
        return "json"
    return None


def _files(arg: str) -> list[Path]:
    path = Path(arg)
    types = ".jsonl (also .gz, .zst) or .json"
    if path.is_file():
        if _kind(path) is None:
            raise LmforgeError(f"{path}: unsupported file type for chat data",
                               hint=f"chat data is {types}")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p)
                       and not any(s.startswith(".") for s in p.relative_to(path).parts))
        empty = f"folder {path} holds no {types} files"
    elif any(c in arg for c in "*?["):
        files = sorted(p for p in map(Path, glob.glob(arg, recursive=True))
                       if p.is_file() and _kind(p))
        empty = f"no {types} files match {arg}"
    else:
        raise LmforgeError(f"{path} does not exist", hint=f"check the path: `ls {path.parent}`")
    if not files:
        raise LmforgeError(empty, hint="check the path, or quote a pattern so the shell does "
                                       "not expand it")
    return files


def _json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, record) for each element of a JSON array file (Alpaca's own alpaca_data.json),
    with the line each element starts on, so errors point into the file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{path}: cannot read ({e})", hint="chat data files are UTF-8") \
            from None
    decoder = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())

    def fail(at: int, msg: str) -> LmforgeError:
        return LmforgeError(f"{path}:{text.count(chr(10), 0, at) + 1}: {msg}",
                            hint="a .json chat file is one array of records; " + SHAPES_HINT)

    if not text.startswith("[", pos):
        if text.startswith("{", pos):  # a single record
            try:
                rec, _ = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise fail(e.pos, f"invalid JSON ({e.msg})") from None
            yield text.count("\n", 0, pos) + 1, rec
            return
        raise fail(pos, "not a JSON array of records")
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if text.startswith("]", pos):
            return
        try:
            rec, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise fail(e.pos, f"invalid JSON ({e.msg})") from None
        yield text.count("\n", 0, pos) + 1, rec
        pos = end
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            raise fail(pos, "expected ',' or ']' between records")


def _file_conversations(path: Path) -> list[Conversation]:
    if _kind(path) == "json":
        records: Iterator[tuple[int, Any]] = _json_array(path)
    else:
        records = json_records(path, make_reporter(path, "", None))
    out: list[Conversation] = []
    try:
        for line, rec in records:
            out.extend(conversations_from_record(rec, f"{path}:{line}"))
    except ReadProblem as p:  # binary or corrupt file
        raise LmforgeError(f"{path}: {p.reason}", hint=p.hint) from None
    except OSError as e:
        raise LmforgeError(f"{path}: cannot read ({e.strerror or e})") from None
    return out


def _hub_conversations(spec: str) -> list[Conversation]:
    out: list[Conversation] = []
    for where, rec in hub_records(spec):
        out.extend(conversations_from_record(rec, where))
    return out


def _resolve(arg: str) -> list[str] | list[Path]:
    if is_hub_spec(arg):
        parse_spec(arg)  # a malformed spec stops the run before anything is read
        return [arg]
    return _files(arg)


def load_conversations(paths: Sequence[str | Path] | str | Path) -> list[Conversation]:
    """Every conversation in files, folders (recursive, sorted), globs and `hf:` datasets, in
    order. The first bad record raises an LmforgeError naming `file:line`; no input with
    conversations raises too."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise LmforgeError("no chat data given", hint="pass --data FILE.jsonl (repeatable)")
    # Resolve every argument first: a typo in the last path stops the run before any reading.
    inputs = [_resolve(str(p)) for p in paths]
    out: list[Conversation] = []
    for item in inputs:
        for entry in item:
            found = (_hub_conversations(entry) if isinstance(entry, str)
                     else _file_conversations(entry))
            if not found:
                raise LmforgeError(f"{entry}: no conversations", hint=SHAPES_HINT)
            out.extend(found)
    return out


def conversation_sources(refs: Sequence[str | Path]) -> list[Conversation]:
    """`load_conversations`, where a name in `BUILTIN_CHAT` that is not a path means the
    built-in set: "pydocs-chat" (questions about the embedded corpus, with the project's
    own greetings, "I don't know" answers and refusals), "pydocs-chat:heldout" its held out
    part."""
    out: list[Conversation] = []
    pending: list[str | Path] = []
    for ref in refs:
        if str(ref) in BUILTIN_CHAT and not Path(ref).exists():
            if pending:
                out += load_conversations(pending)
                pending = []
            from lmforge.data.corpora.pydocs_chat import pydocs_conversations

            out += pydocs_conversations("heldout" if str(ref).endswith(":heldout") else "train")
        else:
            pending.append(ref)
    if pending or not out:
        out += load_conversations(pending)
    return out


# ---- tokens and masks -----------------------------------------------------------------------

def _describe(messages: list[dict]) -> str:
    first = next((m["content"] for m in messages if m.get("role") == "user"), "")
    short = " ".join(str(first).split())[:60]
    return f"the conversation starting {short!r}" if short else "a conversation"


def check_mask(mask: Sequence[bool | int], where: str, max_tokens: int | None = None) -> None:
    """Raise unless some token of the first `max_tokens` is learned: an all-zero mask trains
    nothing, and a run of such conversations would report a loss of nothing."""
    kept = mask[:max_tokens] if max_tokens is not None else mask
    # Position 0 is never a target (its token has nothing before it).
    if not any(kept[1:]):
        cut = f" within its first {max_tokens} tokens" if max_tokens is not None else ""
        raise LmforgeError(f"{where}: no assistant token to learn{cut}",
                           hint="raise --seq-len, or shorten the turns before the first "
                                "assistant reply")


def encode_conversation(tok: Tokenizer, messages: list[dict] | Conversation,
                        max_tokens: int | None = None, where: str | None = None
                        ) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation in the chat layout, and the loss mask: True on assistant
    contents and their <|end|>. Truncated to `max_tokens`; raises when nothing is learned."""
    tools = None
    if isinstance(messages, Conversation):
        where = where or messages.source
        messages, tools = messages.messages, messages.tools
    try:
        ids, mask = tok.render_chat(messages, tools=tools)
    except LmforgeError as e:
        raise LmforgeError(f"{where or _describe(messages)}: {e.message}",
                           hint=e.hint or SHAPES_HINT) from None
    check_mask(mask, where or _describe(messages), max_tokens)
    if max_tokens is not None:
        ids, mask = ids[:max_tokens], mask[:max_tokens]
    return ids, [bool(m) for m in mask]


# ---- train / validation ---------------------------------------------------------------------

def _score(conv: Conversation, seed: int) -> float:
    """A conversation's place in [0, 1), from its content: duplicates land together, and the
    split of a conversation does not move when others are added or reordered."""
    key = json.dumps(conv.messages, ensure_ascii=False, sort_keys=True)
    if conv.tools:
        key += json.dumps(conv.tools, ensure_ascii=False, sort_keys=True)
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_conversations(convs: Sequence[Conversation], val_fraction: float, seed: int = 0
                        ) -> tuple[list[Conversation], list[Conversation]]:
    """(train, validation), each in the input order: a conversation goes to validation when
    the hash of its content and `seed` falls under `val_fraction`. With a fraction above 0
    and two or more distinct conversations, validation holds at least one."""
    if not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise LmforgeError(f"val_fraction must be in [0, 1), got {val_fraction!r}",
                           hint="e.g. 0.05 keeps a twentieth of the conversations for validation")
    scores = [_score(c, seed) for c in convs]
    val_mask = [s < val_fraction for s in scores]
    if val_fraction > 0 and not any(val_mask) and len(set(scores)) > 1:
        # Small data: the lowest-scored content (and its duplicates) goes to validation.
        val_mask = [s == min(scores) for s in scores]
    train = [c for c, v in zip(convs, val_mask) if not v]
    val = [c for c, v in zip(convs, val_mask) if v]
    return train, val
