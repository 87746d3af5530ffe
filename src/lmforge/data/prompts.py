"""Prompts without answers: what RLHF samples answers to, and what `eval compare --judge` asks.

A prompt is a list of OpenAI messages ending with a user turn. Files are JSON Lines (also .gz,
.zst), one record a line, in any of these shapes:
  {"messages": [...]}              a conversation: its messages before the first assistant turn
  {"prompt": "text" | [messages]}  (a preference file's records work as they are)
  {"text": "..."}                  one user turn
  {"chosen": ..., "rejected": ...} a preference pair without a prompt field (Anthropic HH
                                   transcripts, TRL's implicit prompt): the turns the two
                                   share (a tie's prompt too); a transcript pair with no
                                   usable prompt is left out
`hf:NAME[:SPLIT][START:STOP]` reads the same shapes from a Hugging Face dataset (streamed).
Built-in sets: "pydocs-chat" (the user questions of the built-in SFT conversations, without
tools) and "pydocs-chat:heldout" (the same for the held-out names and conversations).
The first bad record stops the load with one error naming `file:line`; duplicates are kept
once, in first-seen order.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.chat_format import validate_messages
from lmforge.data.documents import make_reporter
from lmforge.data.hub import hub_records, is_hub_spec, parse_spec
from lmforge.data.readers import ReadProblem, json_records
from lmforge.errors import LmforgeError

BUILTIN_PROMPTS = ("pydocs-chat", "pydocs-chat:heldout")
PROMPT_SHAPES_HINT = ('a prompt record is {"messages": [...]}, {"prompt": "text" or '
                      '[messages ending with a user turn]}, {"text": "..."} or a preference '
                      'pair (an Anthropic HH {"chosen", "rejected"} record)')
_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")


def prompt_of(messages: list[dict]) -> list[dict] | None:
    """The messages before the first assistant turn, if they end with a user turn."""
    first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"),
                 len(messages))
    head = messages[:first]
    return head if head and head[-1].get("role") == "user" else None


def _record_prompt(rec: Any) -> list[dict] | None:
    if not isinstance(rec, dict):
        raise ValueError(f"a record must be an object, not {type(rec).__name__}")
    for key in ("messages", "prompt", "text"):
        if key not in rec:
            continue
        value = rec[key]
        if isinstance(value, str):
            if not value.strip():
                raise ValueError(f"'{key}' is empty")
            return [{"role": "user", "content": value}]
        try:
            messages = validate_messages(value)
        except LmforgeError as e:
            raise ValueError(f"'{key}': {e.message}") from None
        prompt = prompt_of(messages)
        if prompt is None:
            raise ValueError(f"'{key}' has no user turn before its first answer")
        return [{k: v for k, v in m.items() if k in ("role", "content")} for m in prompt]
    if "chosen" in rec and "rejected" in rec:
        from lmforge.data.preferences import pair_prompt

        return pair_prompt(rec)
    raise ValueError("no 'messages', 'prompt', 'text' or 'chosen'/'rejected' field")


def _files(ref: str) -> list[Path]:
    path = Path(ref)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.name.endswith(_SUFFIXES))
    elif any(c in ref for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(ref, recursive=True))
    else:
        raise LmforgeError(f"{path} does not exist", hint=f"check the path: `ls {path.parent}`")
    if not files:
        raise LmforgeError(f"{ref}: no prompt files (.jsonl) there", hint=PROMPT_SHAPES_HINT)
    return files


def _file_prompts(path: Path) -> list[list[dict]]:
    out = []
    try:
        for line, rec in json_records(path, make_reporter(path, "", None)):
            try:
                prompt = _record_prompt(rec)
            except ValueError as e:
                raise LmforgeError(f"{path}:{line}: {e}", hint=PROMPT_SHAPES_HINT) from None
            if prompt is not None:
                out.append(prompt)
    except ReadProblem as p:
        raise LmforgeError(f"{path}: {p.reason}", hint=p.hint) from None
    except OSError as e:
        raise LmforgeError(f"{path}: cannot read ({e.strerror or e})") from None
    if not out:
        raise LmforgeError(f"{path}: no prompts", hint=PROMPT_SHAPES_HINT)
    return out


def _hub_prompts(spec: str) -> list[list[dict]]:
    out = []
    for where, rec in hub_records(spec):
        try:
            prompt = _record_prompt(rec)
        except ValueError as e:
            raise LmforgeError(f"{where}: {e}", hint=PROMPT_SHAPES_HINT) from None
        if prompt is not None:
            out.append(prompt)
    if not out:
        raise LmforgeError(f"{spec}: no prompts", hint=PROMPT_SHAPES_HINT)
    return out


def builtin_prompts(name: str) -> list[list[dict]]:
    from lmforge.data.corpora.pydocs_chat import pydocs_conversations

    split = "heldout" if name.endswith(":heldout") else "train"
    out = []
    for conv in pydocs_conversations(split):
        prompt = prompt_of(conv.messages) if conv.tools is None else None
        if prompt is not None:
            out.append(prompt)
    return out


def load_prompts(refs: Sequence[str | Path] | str | Path) -> list[list[dict]]:
    """Every distinct prompt of files, folders, globs, `hf:` datasets and the built-in sets, in
    order."""
    if isinstance(refs, (str, Path)):
        refs = [refs]
    if not refs:
        raise LmforgeError("no prompts given", hint="pass --prompts p.jsonl, or pydocs-chat")
    inputs: list[tuple[str, Any]] = []
    for ref in map(str, refs):  # resolve all first: a typo stops the run before any reading
        if ref in BUILTIN_PROMPTS and not Path(ref).exists():
            inputs.append(("builtin", ref))
        elif is_hub_spec(ref):
            parse_spec(ref)
            inputs.append(("hub", ref))
        else:
            inputs += [("file", p) for p in _files(ref)]
    seen: set[str] = set()
    out: list[list[dict]] = []
    for kind, entry in inputs:
        found = (builtin_prompts(entry) if kind == "builtin" else
                 _hub_prompts(entry) if kind == "hub" else _file_prompts(entry))
        for prompt in found:
            key = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
            if key not in seen:
                seen.add(key)
                out.append(prompt)
    return out
