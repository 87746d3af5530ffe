"""Preference pairs for reward models and DPO: one prompt, a chosen and a rejected answer.

`load_pairs` reads JSON Lines (also .gz, .zst), JSON arrays, folders, globs, `hf:` datasets
and the built-in sets, and converts the common shapes on load, record by record:

- plain:         {"prompt": "text" | [messages], "chosen": "...", "rejected": "..."}
                 (what `lmforge serve`'s review page exports, and TRL's standard format)
- conversational: chosen/rejected as message lists ([{"role": "assistant", ...}]), with a
                 prompt, or without one (TRL's implicit prompt: the shared leading messages)
- Anthropic HH:  {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}: two
                 whole transcripts; the shared part up to the last shared "Assistant:" is the
                 prompt (split into turns), the rest of each is the answer

A pair marked as a tie (`"tie": true`, or equal `score_chosen`/`score_rejected`) or whose
answers are the same text teaches nothing: it is skipped and counted in a `PairReport`, as are
HH transcripts whose shared part does not end with a person's turn. Anything else that is
wrong (a missing field, an empty answer, a prompt not ending with a user turn) stops the load
with one `LmforgeError` naming `file:line`, before anything trains.

Built-in sets: "pydocs-prefs" and "pydocs-prefs:heldout" (data/corpora/pydocs_prefs.py).
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.chat_format import validate_messages
from lmforge.data.chat import JSON_SUFFIXES, JSONL_SUFFIXES, _json_array
from lmforge.data.documents import make_reporter
from lmforge.data.hub import hub_records, is_hub_spec, parse_spec
from lmforge.data.readers import ReadProblem, json_records
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

__all__ = ["BUILTIN_PREFS", "PAIR_SHAPES_HINT", "PairReport", "PreferencePair", "encode_pair",
           "load_pairs", "pair_from_record", "pair_prompt", "split_pairs"]

BUILTIN_PREFS = ("pydocs-prefs", "pydocs-prefs:heldout")
PAIR_SHAPES_HINT = (
    'a preference record is {"prompt": "..." or [messages ending with a user turn], '
    '"chosen": "...", "rejected": "..."}, chosen/rejected may be [{"role": "assistant", '
    '"content": "..."}]; or Anthropic HH {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", '
    '"rejected": "..."}'
)
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_ASSISTANT_MARK = "\n\nAssistant:"


@dataclass
class PreferencePair:
    prompt: list[dict]  # OpenAI messages, ending with a user turn
    chosen: str
    rejected: str
    source: str  # "file:line", "hf:NAME:SPLIT[row]", "pydocs-prefs:KEY"


@dataclass
class PairReport:
    """Pairs read, and pairs skipped by reason ("tie", "identical", "hh-unaligned",
    "hh-empty-answer")."""
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first source

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, where)

    def notes(self) -> list[str]:
        """One line per reason, e.g. '34 pairs skipped: identical answers (first: f:12)'."""
        words = {"tie": "marked as ties", "identical": "identical answers",
                 "hh-unaligned": "HH transcripts that part before their last answer",
                 "hh-empty-answer": "HH transcripts with an empty final answer"}
        return [f"{n} pair{'s' if n != 1 else ''} skipped: {words.get(r, r)} (first: "
                f"{self.examples[r]})" for r, n in sorted(self.skipped.items())]


class _Bad(Exception):
    """What is wrong with one record; the caller adds file:line."""


class _Skip(Exception):
    """A record that is readable but teaches nothing; args[0] is the reason."""


# ---- one record -> one pair ------------------------------------------------------------------

def _messages(value: Any, what: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _Bad(f"{what} must be text or a non-empty list of {{role, content}} messages")
    try:
        validate_messages(value)
    except LmforgeError as e:
        raise _Bad(f"{what}: {e.message}") from None
    # Roles and text: the layout renders nothing else of a prompt turn (tool calls stay).
    return [{k: m[k] for k in ("role", "content", "tool_calls") if k in m} for m in value]


def _prompt(value: Any) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise _Bad("field 'prompt' is empty")
        return [{"role": "user", "content": value}]
    messages = _messages(value, "field 'prompt'")
    if messages[-1]["role"] != "user":
        raise _Bad(f"field 'prompt' ends with a {messages[-1]['role']} turn, not a user turn")
    return messages


def _answer(value: Any, key: str) -> str:
    """An answer: text, or a message list whose last turn is the assistant's reply."""
    if isinstance(value, list):
        messages = _messages(value, f"field {key!r}")
        if messages[-1]["role"] != "assistant":
            raise _Bad(f"field {key!r} ends with a {messages[-1]['role']} turn, not the "
                       f"assistant's answer")
        value = messages[-1].get("content") or ""
    if not isinstance(value, str):
        raise _Bad(f"field {key!r} is {type(value).__name__}, not text or messages")
    if not value.strip():
        raise _Bad(f"field {key!r} is empty (an empty answer)")
    return value.strip()


def _hh_turns(text: str) -> list[dict]:
    """An HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as messages; consecutive
    turns of one speaker (HH has a few) are joined."""
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise _Bad("an HH transcript must start with '\\n\\nHuman:'")
    out: list[dict] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = _HH_ROLES[speaker]
        if out and out[-1]["role"] == role:
            out[-1]["content"] += "\n\n" + content.strip()
        else:
            out.append({"role": role, "content": content.strip()})
    return out


def _hh_pair(chosen: str, rejected: str) -> tuple[list[dict], str, str]:
    """Prompt messages and the two answers of an HH record: the prompt runs to the first
    "Assistant:" after the last "Human:" both transcripts share, and the rest of each is its
    answer (a few HH answers hold several "Assistant:" parts, a few pairs share the start of
    their answer: both stay in the answers)."""
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    human = chosen.rfind("\n\nHuman:", 0, n)
    cut = chosen.find(_ASSISTANT_MARK, human, n) if human >= 0 else -1
    if cut < 0:
        raise _Skip("hh-unaligned")  # they part inside a person's turn
    prompt = _hh_turns(chosen[:cut])
    if not prompt or prompt[-1]["role"] != "user" or not prompt[-1]["content"]:
        raise _Skip("hh-unaligned")
    start = cut + len(_ASSISTANT_MARK)
    return prompt, chosen[start:].strip(), rejected[start:].strip()


def _implicit_prompt(chosen: list, rejected: list) -> tuple[list[dict], Any, Any]:
    """TRL's implicit prompt: the messages both lists share, then each one's answer."""
    c, r = _messages(chosen, "field 'chosen'"), _messages(rejected, "field 'rejected'")
    shared = 0
    while shared < min(len(c), len(r)) - 1 and c[shared] == r[shared]:
        shared += 1
    if not shared:
        raise _Bad("no field 'prompt', and 'chosen' and 'rejected' share no leading messages")
    return _prompt(c[:shared]), c[shared:], r[shared:]


def _is_tie(rec: dict) -> bool:
    if rec.get("tie") is True:
        return True
    a, b = rec.get("score_chosen"), rec.get("score_rejected")
    return isinstance(a, int | float) and isinstance(b, int | float) and a == b


def _record_pair(rec: Any) -> tuple[list[dict], str, str]:
    if not isinstance(rec, dict):
        raise _Bad(f"a JSON {type(rec).__name__}, not an object")
    missing = [k for k in ("chosen", "rejected") if rec.get(k) is None]
    if missing:
        fields = ", ".join(sorted(rec)) or "none"
        raise _Bad(f"missing field {' and '.join(repr(k) for k in missing)} (fields: {fields})")
    chosen, rejected = rec["chosen"], rec["rejected"]
    if rec.get("prompt") is not None:
        return _prompt(rec["prompt"]), _answer(chosen, "chosen"), _answer(rejected, "rejected")
    if isinstance(chosen, list) and isinstance(rejected, list):
        prompt, chosen, rejected = _implicit_prompt(chosen, rejected)
        return prompt, _answer(chosen, "chosen"), _answer(rejected, "rejected")
    if isinstance(chosen, str) and isinstance(rejected, str) \
            and chosen.lstrip("\n").startswith("Human:"):
        prompt, c, r = _hh_pair(chosen, rejected)
        if not c or not r:  # HH holds a few empty replies: a data quirk, not a user's error
            raise _Skip("hh-empty-answer")
        return prompt, c, r
    raise _Bad("missing field 'prompt' (and 'chosen' is not an HH transcript)")


def pair_prompt(rec: dict) -> list[dict] | None:
    """The prompt of a preference record (an HH transcript pair included), for prompt lists
    (a tie's prompt is a prompt like any other); None where the record has no usable prompt
    (HH transcripts that part inside a person's turn, or end in an empty reply). A bad record
    raises ValueError saying what is wrong."""
    try:
        return _record_pair(rec)[0]
    except _Skip:
        return None
    except _Bad as e:
        raise ValueError(str(e)) from None


def pair_from_record(rec: Any, where: str, report: PairReport | None = None
                     ) -> PreferencePair | None:
    """One record as a pair; None when it is a tie or identical (counted in `report`). A bad
    record raises an LmforgeError naming `where`."""
    try:
        if isinstance(rec, dict) and _is_tie(rec):
            raise _Skip("tie")
        prompt, chosen, rejected = _record_pair(rec)
        if chosen == rejected:
            raise _Skip("identical")
    except _Skip as s:
        if report is not None:
            report.skip(s.args[0], where)
        return None
    except _Bad as e:
        raise LmforgeError(f"{where}: {e}", hint=PAIR_SHAPES_HINT) from None
    if report is not None:
        report.kept += 1
    return PreferencePair(prompt, chosen, rejected, where)


# ---- files, folders, globs, datasets ---------------------------------------------------------

def _readable(path: Path) -> bool:
    return path.name.lower().endswith(JSONL_SUFFIXES + JSON_SUFFIXES)


def _files(arg: str) -> list[Path]:
    path = Path(arg)
    types = ".jsonl (also .gz, .zst) or .json"
    if path.is_file():
        if not _readable(path):
            raise LmforgeError(f"{path}: unsupported file type for preference pairs",
                               hint=f"preference pairs are {types}")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _readable(p)
                       and not any(s.startswith(".") for s in p.relative_to(path).parts))
        empty = f"folder {path} holds no {types} files"
    elif any(c in arg for c in "*?["):
        files = sorted(p for p in map(Path, glob.glob(arg, recursive=True))
                       if p.is_file() and _readable(p))
        empty = f"no {types} files match {arg}"
    else:
        hint = (f"check the path: `ls {path.parent}`; built-in pairs are "
                f"{' and '.join(BUILTIN_PREFS)}")
        raise LmforgeError(f"{path} does not exist", hint=hint)
    if not files:
        raise LmforgeError(empty, hint="check the path, or quote a pattern so the shell does "
                                       "not expand it")
    return files


def _file_pairs(path: Path, report: PairReport) -> list[PreferencePair]:
    if path.name.lower().endswith(JSON_SUFFIXES):
        records: Iterator[tuple[int, Any]] = _json_array(path)
    else:
        records = json_records(path, make_reporter(path, "", None))
    out = []
    try:
        for line, rec in records:
            pair = pair_from_record(rec, f"{path}:{line}", report)
            if pair is not None:
                out.append(pair)
    except ReadProblem as p:
        raise LmforgeError(f"{path}: {p.reason}", hint=p.hint) from None
    except OSError as e:
        raise LmforgeError(f"{path}: cannot read ({e.strerror or e})") from None
    return out


def _hub_pairs(spec: str, report: PairReport) -> list[PreferencePair]:
    out = []
    for where, rec in hub_records(spec):
        pair = pair_from_record(rec, where, report)
        if pair is not None:
            out.append(pair)
    return out


def pairs_digest(*parts: Sequence[PreferencePair]) -> str:
    """The digest of preference pairs as read (prompt, chosen, rejected; not where each came
    from, which names a workspace's folder), for `lmforge reproduce` (lmforge/rerun.py)."""
    from lmforge.rerun import records_digest

    return records_digest(*([[p.prompt, p.chosen, p.rejected] for p in part]
                            for part in parts))


def load_pairs(refs: Sequence[str | Path] | str | Path, report: PairReport | None = None
               ) -> list[PreferencePair]:
    """Every pair in files, folders (recursive, sorted), globs, `hf:` datasets and the
    built-in sets, in order. Ties and identical pairs are skipped and counted in `report`;
    the first bad record raises naming `file:line`; no pair at all raises too."""
    if isinstance(refs, (str, Path)):
        refs = [refs]
    if not refs:
        raise LmforgeError("no preference data given", hint="pass --data prefs.jsonl "
                                                            "(repeatable), or pydocs-prefs")
    report = report if report is not None else PairReport()
    # Resolve everything first: a typo in the last path stops the run before any reading.
    inputs: list[tuple[str, Any]] = []
    for ref in map(str, refs):
        if ref in BUILTIN_PREFS and not Path(ref).exists():
            inputs.append(("builtin", ref))
        elif is_hub_spec(ref):
            parse_spec(ref)
            inputs.append(("hub", ref))
        else:
            inputs.extend(("file", p) for p in _files(ref))
    out: list[PreferencePair] = []
    for kind, entry in inputs:
        if kind == "builtin":
            from lmforge.data.corpora.pydocs_prefs import pydocs_pairs

            found = pydocs_pairs("heldout" if entry.endswith(":heldout") else "train")
            report.kept += len(found)
        elif kind == "hub":
            found = _hub_pairs(entry, report)
        else:
            found = _file_pairs(entry, report)
        out.extend(found)
    if not out:
        skipped = "; ".join(report.notes())
        raise LmforgeError(f"{', '.join(map(str, refs))}: no preference pairs"
                           + (f" ({skipped})" if skipped else ""), hint=PAIR_SHAPES_HINT)
    return out


# ---- train / validation ----------------------------------------------------------------------

def _score(pair: PreferencePair, seed: int) -> float:
    """A pair's place in [0, 1), from its prompt: pairs of one prompt land on the same side,
    so validation asks nothing that training answered."""
    key = json.dumps(pair.prompt, ensure_ascii=False, sort_keys=True)
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_pairs(pairs: Sequence[PreferencePair], val_fraction: float, seed: int = 0
                ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, validation) in input order, by a hash of each prompt and `seed`. With a fraction
    above 0 and two or more distinct prompts, validation holds at least one pair."""
    if not isinstance(val_fraction, int | float) or not 0 <= val_fraction < 1:
        raise LmforgeError(f"val_fraction must be in [0, 1), got {val_fraction!r}",
                           hint="e.g. 0.05 keeps a twentieth of the pairs for validation")
    scores = [_score(p, seed) for p in pairs]
    held = [s < val_fraction for s in scores]
    if val_fraction > 0 and not any(held) and len(set(scores)) > 1:
        held = [s == min(scores) for s in scores]  # small data: the lowest-scored prompt
    return ([p for p, h in zip(pairs, held) if not h], [p for p, h in zip(pairs, held) if h])


# ---- tokens and masks ------------------------------------------------------------------------

def encode_pair(tok: Tokenizer, pair: PreferencePair, max_tokens: int | None = None
                ) -> tuple[list[int], list[bool], list[int], list[bool]]:
    """(chosen ids, chosen mask, rejected ids, rejected mask): the prompt and each answer in
    the chat layout; the mask is True on the answer's tokens and its <|end|> only (never on
    earlier assistant turns of the prompt). Cut to `max_tokens`; raises when an answer has
    no token left to score."""
    prompt_ids, _ = tok.render_chat(pair.prompt, add_generation_prompt=True)
    out: list[Any] = []
    for name, answer in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        ids, _ = tok.render_chat([*pair.prompt, {"role": "assistant", "content": answer}])
        if ids[:len(prompt_ids)] != prompt_ids:  # the layout renders a prefix as a prefix
            raise LmforgeError(f"{pair.source}: the chat layout does not render the prompt "
                               f"as a prefix of the {name} conversation")
        mask = [i >= len(prompt_ids) for i in range(len(ids))]
        if max_tokens is not None:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        if not any(mask):
            raise LmforgeError(f"{pair.source}: no {name} answer token within the first "
                               f"{max_tokens} tokens (the prompt takes {len(prompt_ids)})",
                               hint="raise --seq-len, or shorten the prompts")
        out += [ids, mask]
    return out[0], out[1], out[2], out[3]
