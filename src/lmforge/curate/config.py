"""The curation recipe: which sources, which preset and filters per source, and the settings of
PII scrubbing, deduplication, decontamination and balancing. Read from TOML (a file, the
`[steps.X]` table of a lifecycle recipe, or the command line) and checked before any work.

    workers = 2
    [sources.web]                     # one table per named source
    paths = ["crawl/*.jsonl.gz"]      # files, folders, globs, hf:NAME[:SPLIT], dataset ids, pydocs
    preset = "web"                    # web | docs | prose | chat (see `lmforge curate --presets`)
    [sources.web.filters]             # this source's overrides of its preset
    c4 = false
    [filters]                         # overrides for every source
    gopher_quality = { min_words = 30 }
    [pii]        kinds = ["email", "phone", "ip", "credit_card"]
    [dedup]      exact = true, near = true, ngram = 5, bands = 14, rows = 8
    [decontaminate]  builtin = ["hellaswag"], ngram = 13, action = "drop"
    [balance]    by = "characters", weights = { web = 0.7, docs = 0.3 }, max_repeat = 4
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmforge._toml import load_toml_file
from lmforge.curate.balance import MixtureSettings, check_mixture_settings
from lmforge.curate.decontam import BUILTIN_EVAL_SETS, EvalSetSpec
from lmforge.curate.dedup import MinHashSettings, check_minhash_settings
from lmforge.curate.filters import PRESETS, build_filters
from lmforge.curate.pii import PII_KINDS
from lmforge.data.readers import SPLITS
from lmforge.errors import LmforgeError
from lmforge.stage import check_keys

_TOP_KEYS = ("sources", "filters", "pii", "dedup", "decontaminate", "balance", "workers",
             "executor",
             "shard_documents", "output_format", "fix_encoding", "examples")
_SOURCE_KEYS = ("paths", "preset", "filters", "text_field", "split", "fallback")


@dataclass
class SourceConfig:
    name: str
    paths: list[str]
    preset: str = "web"
    filters: dict[str, Any] = field(default_factory=dict)  # overrides merged over the global ones
    text_field: str = "text"
    split: str = "auto"
    # Read instead when none of the local `paths` exists (a clone without the shared data
    # folder): e.g. "hf:roneneldan/TinyStories:train[:1096]". See sources.resolve_sources.
    fallback: list[str] = field(default_factory=list)


@dataclass
class DecontamConfig:
    ngram: int = 13
    action: str = "drop"  # or "flag": keep the document, mark it in meta["contamination"]
    builtin: list[str] = field(default_factory=list)
    eval_sets: list[EvalSetSpec] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return bool(self.builtin or self.eval_sets)


@dataclass
class CurationConfig:
    sources: list[SourceConfig]
    pii_kinds: list[str] = field(default_factory=lambda: list(PII_KINDS))
    exact_dedup: bool = True
    near_dedup: bool = True
    minhash: MinHashSettings = field(default_factory=MinHashSettings)
    decontaminate: DecontamConfig = field(default_factory=DecontamConfig)
    balance: MixtureSettings | None = None
    balance_tokenizer: str | None = None  # tokenizer ref that counts tokens for by = "tokens"
    workers: int = 1
    executor: str = "processes"  # or "datatrove" (curate/distributed.py); never changes output
    shard_documents: int = 2000
    output_format: str = "jsonl"
    fix_encoding: bool = True
    examples: int = 3  # removal examples kept per reason

    def digest(self) -> str:
        """What decides the output: all but workers and executor (the same bytes either way)."""
        d = asdict(self)
        d.pop("workers")
        d.pop("executor")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()

    def settings(self) -> dict[str, Any]:
        d = json.loads(json.dumps(asdict(self), default=str))
        d.pop("workers")
        d.pop("executor")
        return d

    @classmethod
    def from_settings(cls, d: dict[str, Any]) -> CurationConfig:
        """The config back from `settings()` (a dataset's record), run with one worker;
        KeyError or TypeError when the record is not of that shape."""
        d = dict(d)
        dec = dict(d.pop("decontaminate"))
        dec["eval_sets"] = [EvalSetSpec(**e) for e in dec.get("eval_sets", [])]
        balance = d.pop("balance")
        return cls(sources=[SourceConfig(**s) for s in d.pop("sources")],
                   minhash=MinHashSettings(**d.pop("minhash")),
                   decontaminate=DecontamConfig(**dec),
                   balance=MixtureSettings(**balance) if balance is not None else None, **d)


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise LmforgeError(f"{where} must be a table, not {type(value).__name__}")
    return value


def _int(value: Any, name: str, where: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise LmforgeError(f"{where}: {name} must be an integer ≥ {low}, not {value!r}")
    return value


def _strings(value: Any, name: str, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LmforgeError(f"{where}: {name} must be a string or a list of strings")
    return list(value)


def _source(name: str, raw: Any, where: str) -> SourceConfig:
    here = f"{where} [sources.{name}]"
    if isinstance(raw, (str, list)):  # shorthand: `web = "crawl/*.jsonl"`
        raw = {"paths": raw}
    raw = _table(raw, here)
    check_keys(raw, here, optional=_SOURCE_KEYS)
    if "paths" not in raw:
        raise LmforgeError(f"{here}: no paths", hint='add paths = ["file-or-folder", ...]')
    preset = raw.get("preset", "docs" if raw["paths"] in ("pydocs", ["pydocs"]) else "web")
    if preset not in PRESETS:
        raise LmforgeError(f"{here}: unknown preset {preset!r}",
                           hint=f"use one of: {', '.join(PRESETS)}")
    split = raw.get("split", "auto")
    if split not in SPLITS:
        raise LmforgeError(f"{here}: split must be one of {', '.join(SPLITS)}, not {split!r}")
    return SourceConfig(name, _strings(raw["paths"], "paths", here), preset,
                        dict(_table(raw.get("filters", {}), f"{here} filters")),
                        str(raw.get("text_field", "text")), split,
                        _strings(raw.get("fallback", []), "fallback", here))


def _decontam(raw: dict[str, Any], where: str) -> DecontamConfig:
    here = f"{where} [decontaminate]"
    check_keys(raw, here, optional=("ngram", "action", "builtin", "eval_sets"))
    action = raw.get("action", "drop")
    if action not in ("drop", "flag"):
        raise LmforgeError(f"{here}: action must be 'drop' or 'flag', not {action!r}")
    builtin = _strings(raw.get("builtin", []), "builtin", here)
    unknown = [b for b in builtin if b not in BUILTIN_EVAL_SETS]
    if unknown:
        raise LmforgeError(f"{here}: unknown built-in eval set(s) {', '.join(unknown)}",
                           hint=f"built in: {', '.join(BUILTIN_EVAL_SETS)}")
    specs = []
    for i, item in enumerate(raw.get("eval_sets", [])):
        item = _table(item, f"{here} eval_sets[{i}]")
        check_keys(item, f"{here} eval_sets[{i}]", optional=("name", "path", "fields"))
        if "name" not in item or "path" not in item:
            raise LmforgeError(f"{here} eval_sets[{i}]: needs name and path")
        specs.append(EvalSetSpec(str(item["name"]), str(item["path"]),
                                 _strings(item.get("fields", ["text"]), "fields", here)))
    return DecontamConfig(_int(raw.get("ngram", 13), "ngram", here), action, builtin, specs)


def parse_config(raw: dict[str, Any], where: str = "curation recipe") -> CurationConfig:
    """Check a curation table and build the config; every problem names `where` and the key."""
    raw = _table(raw, where)
    check_keys(raw, where, optional=_TOP_KEYS)
    sources_raw = _table(raw.get("sources", {}), f"{where} [sources]")
    if not sources_raw:
        raise LmforgeError(f"{where}: no sources",
                           hint="add [sources.NAME] paths = [...], or pass --source NAME=PATH")
    sources = [_source(n, v, where) for n, v in sources_raw.items()]
    global_filters = dict(_table(raw.get("filters", {}), f"{where} [filters]"))
    for s in sources:  # build once now so a bad filter setting fails before any work
        s.filters = {**global_filters, **s.filters}
        build_filters(s.preset, s.filters, where=f"{where} [sources.{s.name}]")
    pii = _table(raw.get("pii", {}), f"{where} [pii]")
    check_keys(pii, f"{where} [pii]", optional=("enabled", "kinds"))
    kinds = _strings(pii.get("kinds", list(PII_KINDS)), "kinds", f"{where} [pii]")
    bad = [k for k in kinds if k not in PII_KINDS]
    if bad:
        raise LmforgeError(f"{where} [pii]: unknown kind(s) {', '.join(bad)}",
                           hint=f"known: {', '.join(PII_KINDS)}")
    if pii.get("enabled", True) is False:
        kinds = []
    dedup = dict(_table(raw.get("dedup", {}), f"{where} [dedup]"))
    exact, near = dedup.pop("exact", True), dedup.pop("near", True)
    if not isinstance(exact, bool) or not isinstance(near, bool):
        raise LmforgeError(f"{where} [dedup]: exact and near must be true or false")
    minhash = check_minhash_settings(dedup, f"{where} [dedup]")
    balance, balance_tokenizer = None, None
    if "balance" in raw:
        table = dict(_table(raw["balance"], f"{where} [balance]"))
        balance_tokenizer = table.pop("tokenizer", None)
        balance = check_mixture_settings(table, f"{where} [balance]", [s.name for s in sources])
        if balance.by == "tokens" and not balance_tokenizer:
            raise LmforgeError(f"{where} [balance]: by = \"tokens\" needs a tokenizer",
                               hint='add tokenizer = "TOKENIZER_ID_OR_PATH", or balance by '
                                    '"characters" or "documents"')
    executor = raw.get("executor", "processes")
    if executor not in ("processes", "datatrove"):
        raise LmforgeError(f"{where}: executor must be 'processes' or 'datatrove', not "
                           f"{executor!r}")
    fmt = raw.get("output_format", "jsonl")
    if fmt not in ("jsonl", "parquet"):
        raise LmforgeError(f"{where}: output_format must be 'jsonl' or 'parquet', not {fmt!r}")
    return CurationConfig(
        sources=sources, pii_kinds=kinds, exact_dedup=exact, near_dedup=near, minhash=minhash,
        decontaminate=_decontam(_table(raw.get("decontaminate", {}), where), where),
        balance=balance, balance_tokenizer=balance_tokenizer,
        workers=_int(raw.get("workers", 1), "workers", where), executor=executor,
        shard_documents=_int(raw.get("shard_documents", 2000), "shard_documents", where),
        output_format=fmt, fix_encoding=bool(raw.get("fix_encoding", True)),
        examples=_int(raw.get("examples", 3), "examples", where, low=0))


def load_config_file(path: Path) -> dict[str, Any]:
    """A curation TOML file as a raw table (relative paths resolved against its folder)."""
    return with_paths_relative_to(load_toml_file(path, "curation recipe"),
                                  Path(path).resolve().parent, str(path))


def with_paths_relative_to(raw: dict[str, Any], base: Path, where: str) -> dict[str, Any]:
    """A copy of a curation table whose relative source and eval-set paths are resolved
    against `base` (the folder of the file that holds the table)."""
    raw = dict(raw)
    sources = raw.get("sources")
    if isinstance(sources, dict):
        raw["sources"] = resolved = {}
        for name, src in sources.items():
            entry = dict(src) if isinstance(src, dict) else {"paths": src}
            if "paths" in entry:
                entry["paths"] = [resolve_path(p, base) for p in
                                  _strings(entry["paths"], "paths", f"{where} [sources.{name}]")]
            resolved[name] = entry
    dec = raw.get("decontaminate")
    if isinstance(dec, dict) and isinstance(dec.get("eval_sets"), list):
        raw["decontaminate"] = dec = dict(dec)
        dec["eval_sets"] = [
            {**item, "path": resolve_path(item["path"], base)}
            if isinstance(item, dict) and isinstance(item.get("path"), str) else item
            for item in dec["eval_sets"]]
    return raw


def resolve_path(p: str, base: Path) -> str:
    """Relative file paths are relative to the recipe; ids, `pydocs` and hf: names are not."""
    if p == "pydocs" or p.startswith("hf:") or Path(p).is_absolute():
        return p
    candidate = base / p
    if candidate.exists() or any(c in p for c in "*?[") or "/" in p:
        return str(candidate)
    return p  # an artifact id or alias
