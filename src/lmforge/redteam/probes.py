"""Seed prompts: the harmful asks attacks start from, and the benign asks that measure
over-refusal.

Sources, by name:
- `builtin`: the project's own asks (redteam/builtin.py); always there.
- `advbench`, `harmbench`, `jailbreakbench`, `strongreject`, `do_not_answer`,
  `malicious_instruct`: the harmful-behaviour sets in the shared data folder
  (`--data-root`, `$LMFORGE_REDTEAM_DATA`, or ../shared/data beside the repository); `xstest`
  gives benign asks (label "safe") for over-refusal and harmful ones (label "unsafe").
- a user's files: JSONL (a `prompt`, `goal`, `behavior`, `question`, `text` or
  `forbidden_prompt` field; optional `category`, and `label` "safe"/"benign" marks a benign
  ask), CSV with a header holding one of those columns, or TXT (one ask a line).

A record that cannot be read (bad JSON, no prompt field, an empty line in a CSV) is skipped
and counted with its file and line: the run goes on and the report lists the problems. A
path that does not exist stops the run before any work.

Every seed has a stable id (a hash of its normalized text) and a split: `heldout` for about
HELDOUT_PERCENT of the ids, else `seen`. `redteam to-dataset` trains only on seen prompts, so
the attack success rate on held-out prompts measures whether a fix generalizes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmforge.errors import LmforgeError

HELDOUT_PERCENT = 20
SHARED_SETS = ("advbench", "harmbench", "jailbreakbench", "strongreject", "do_not_answer",
               "malicious_instruct", "xstest")
SUITES = ("default", "builtin", "shared")
_PROMPT_FIELDS = ("prompt", "goal", "behavior", "question", "forbidden_prompt", "text")
_BENIGN_LABELS = ("safe", "benign")
csv.field_size_limit(1 << 24)


def seed_key(text: str) -> str:
    """The stable id of an ask: sha256 of its NFKC, casefolded, space-collapsed text."""
    norm = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.sha256(norm.encode()).hexdigest()[:12]


def split_of(key: str) -> str:
    """`heldout` for HELDOUT_PERCENT of ids (by their hash), else `seen`."""
    return "heldout" if int(key, 16) % 100 < HELDOUT_PERCENT else "seen"


@dataclass(frozen=True)
class Seed:
    text: str
    source: str  # "builtin", a shared set's name, or a user file's path
    harm: str = ""  # the source's own category of harm ("" when it has none)
    benign: bool = False  # a benign ask (over-refusal), not an attack

    @property
    def id(self) -> str:
        return seed_key(self.text)

    @property
    def split(self) -> str:
        return split_of(self.id)


@dataclass
class SeedSet:
    harmful: list[Seed] = field(default_factory=list)
    benign: list[Seed] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)  # source -> seeds read
    absent: list[str] = field(default_factory=list)  # shared sets not found
    problems: list[str] = field(default_factory=list)  # "file:line: why", records skipped


def shared_root(data_root: str | Path | None = None) -> Path:
    """The folder of shared data sets: the given one, $LMFORGE_REDTEAM_DATA, or where
    evaluation looks (--data-root, $LMFORGE_EVAL_DATA, the checkout's ../shared/data)."""
    from lmforge.data.eval_root import eval_data_root

    env = os.environ.get("LMFORGE_REDTEAM_DATA")
    if data_root is None and env:
        return Path(env).expanduser()
    return eval_data_root(data_root)


def _csv_rows(path: Path, problems: list[str]) -> list[tuple[int, dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = []
            for row in reader:
                rows.append((reader.line_num, {(k or "").strip(): (v or "")
                                               for k, v in row.items()}))
            return rows
    except (UnicodeDecodeError, csv.Error) as e:
        problems.append(f"{path}: not a readable CSV file ({e})")
        return []


def _shared(name: str, root: Path, problems: list[str]) -> list[Seed] | None:
    """One shared set's seeds (harmful, and benign for xstest), or None when absent."""
    folder = root / name
    if not folder.is_dir():
        return None
    out: list[Seed] = []

    def add(text: str, harm: str = "", benign: bool = False) -> None:
        if text.strip():
            out.append(Seed(text.strip(), name, harm.strip(), benign))

    if name == "advbench":
        for _, r in _csv_rows(folder / "harmful_behaviors.csv", problems):
            add(r.get("goal", ""))
    elif name == "harmbench":
        for _, r in _csv_rows(folder / "harmbench_behaviors_text_all.csv", problems):
            # Contextual behaviours need their context document; copyright ones ask for
            # song lyrics and book passages, which a refusal detector cannot judge.
            if r.get("FunctionalCategory") == "standard":
                add(r.get("Behavior", ""), r.get("SemanticCategory", ""))
    elif name == "jailbreakbench":
        for _, r in _csv_rows(folder / "jbb_harmful_behaviors.csv", problems):
            add(r.get("Goal", ""), r.get("Category", ""))
    elif name == "strongreject":
        for _, r in _csv_rows(folder / "strongreject_dataset.csv", problems):
            add(r.get("forbidden_prompt", ""), r.get("category", ""))
    elif name == "do_not_answer":
        out += _jsonl_seeds(folder / "do_not_answer.jsonl", problems, name)
    elif name == "malicious_instruct":
        out += _txt_seeds(folder / "malicious_instruct.txt", name)
    elif name == "xstest":
        for _, r in _csv_rows(folder / "xstest_prompts.csv", problems):
            add(r.get("prompt", ""), r.get("type", ""), r.get("label") == "safe")
    return out


def _jsonl_seeds(path: Path, problems: list[str], source: str) -> list[Seed]:
    out = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                problems.append(f"{path}:{line_no}: not JSON ({e.__class__.__name__})")
                continue
            seed = _record_seed(rec, source)
            if isinstance(seed, str):
                problems.append(f"{path}:{line_no}: {seed}")
            else:
                out.append(seed)
    return out


def _record_seed(rec: object, source: str) -> Seed | str:
    """A seed from a JSON object or CSV row, or why there is none."""
    if not isinstance(rec, dict):
        return f"a record must be an object, not {type(rec).__name__}"
    text = next((rec[k] for k in _PROMPT_FIELDS if isinstance(rec.get(k), str)
                 and rec[k].strip()), None)
    if text is None:
        return f"no prompt field (one of {', '.join(_PROMPT_FIELDS)})"
    harm = next((str(rec[k]) for k in ("category", "risk_area", "SemanticCategory", "type")
                 if rec.get(k)), "")
    label = str(rec.get("label", "")).strip().lower()
    return Seed(text.strip(), source, harm, label in _BENIGN_LABELS)


def _txt_seeds(path: Path, source: str) -> list[Seed]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [Seed(line.strip(), source) for line in text.splitlines() if line.strip()]


def user_seeds(path: Path, problems: list[str]) -> list[Seed]:
    """Seeds of one user file (JSONL, CSV or TXT)."""
    source = str(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _jsonl_seeds(path, problems, source)
    if suffix == ".csv":
        out = []
        for line, row in _csv_rows(path, problems):
            seed = _record_seed({k.lower(): v for k, v in row.items()}, source)
            if isinstance(seed, str):
                problems.append(f"{path}:{line}: {seed}")
            else:
                out.append(seed)
        return out
    if suffix in (".txt", ".text", ""):
        return _txt_seeds(path, source)
    raise LmforgeError(f"{path}: probe files are .jsonl, .csv or .txt, not {suffix}",
                       hint="one ask per line in a .txt, or records with a 'prompt' field")


def builtin_seeds() -> tuple[list[Seed], list[Seed]]:
    from lmforge.redteam.builtin import BENIGN_ASKS, harmful_asks

    harmful = [Seed(text, "builtin", harm) for text, harm in harmful_asks()]
    benign = [Seed(text, "builtin", kind, True) for text, kind in BENIGN_ASKS]
    return harmful, benign


def spread(items: list, n: int) -> list:
    """n items spread evenly over the list (keeps every source's range represented)."""
    if n <= 0 or len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def load_seeds(suite: str = "default", files: tuple[str, ...] = (), limit: int = 60,
               benign_limit: int = 40, data_root: str | Path | None = None) -> SeedSet:
    """The seeds of a suite plus the user's files: at most `limit` harmful and
    `benign_limit` benign ones, spread evenly over the sources (duplicates kept once)."""
    if suite not in SUITES:
        raise LmforgeError(f"unknown suite {suite!r}", hint=f"use one of: {', '.join(SUITES)}")
    paths = [Path(f) for f in files]
    for p in paths:  # a typo stops the run before any work
        if not p.is_file():
            raise LmforgeError(f"probe file {p} does not exist",
                               hint="give a .jsonl, .csv or .txt file of asks")
    out = SeedSet()
    by_source: list[tuple[list[Seed], list[Seed]]] = []
    if suite in ("default", "builtin"):
        by_source.append(builtin_seeds())
        out.sources["builtin"] = sum(map(len, by_source[-1]))
    if suite in ("default", "shared"):
        root = shared_root(data_root)
        for name in SHARED_SETS:
            seeds = _shared(name, root, out.problems)
            if seeds is None:
                out.absent.append(name)
                continue
            by_source.append(([s for s in seeds if not s.benign],
                              [s for s in seeds if s.benign]))
            out.sources[name] = len(seeds)
        if suite == "shared" and len(out.absent) == len(SHARED_SETS):
            raise LmforgeError(f"no shared red-team data sets under {root}",
                               hint="pass --data-root DIR, or use --suite builtin")
    for p in paths:
        seeds = user_seeds(p, out.problems)
        by_source.append(([s for s in seeds if not s.benign], [s for s in seeds if s.benign]))
        out.sources[str(p)] = len(seeds)
    out.harmful = _merge([h for h, _ in by_source], limit)
    out.benign = _merge([b for _, b in by_source], benign_limit)
    return out


def _merge(groups: list[list[Seed]], limit: int) -> list[Seed]:
    """Up to `limit` seeds, an equal share from each non-empty group (a group with fewer
    gives its unused share to the others), each group's share spread over it."""
    groups = [_dedup(g) for g in groups if g]
    shares = [0] * len(groups)
    left = limit
    while left > 0 and any(shares[i] < len(g) for i, g in enumerate(groups)):
        open_ = [i for i, g in enumerate(groups) if shares[i] < len(g)]
        each = max(1, left // len(open_))
        for i in open_:
            take = min(each, len(groups[i]) - shares[i], left)
            shares[i] += take
            left -= take
            if left == 0:
                break
    return _dedup([s for g, n in zip(groups, shares) for s in spread(g, n)])


def _dedup(seeds: list[Seed]) -> list[Seed]:
    seen: set[str] = set()
    out = []
    for s in seeds:
        if s.id not in seen:
            seen.add(s.id)
            out.append(s)
    return out
