"""Source balancing: decide how many copies of each document go into the final mixture.

Every source gets a target share of the mixture (given weights, or its natural share
flattened by a temperature); the mixture is then made as large as the sources allow without
repeating any source more than `max_repeat` times, and each source is down-sampled (a seeded
random subset) or up-sampled (whole copies, then a seeded subset for the fraction) to its
share. The plan is a repeat count per document; the pipeline writes the copies.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.stage import check_keys

BY = ("tokens", "documents", "characters")


@dataclass(frozen=True)
class MixtureSettings:
    # What a share measures. The pipeline passes each document's size in these units
    # ("documents" counts every document as 1 whatever size is passed).
    by: str = "tokens"
    # Target share of the final mixture per source (normalized); None = natural proportions.
    weights: dict[str, float] | None = None
    # Most a source may contribute (in `by` units) after balancing; a capped source then
    # holds less than its share, and the report shows the share it got.
    caps: dict[str, int] | None = None
    # Most a source is repeated on average (copies per document: at most ceil(max_repeat)).
    # Muennighoff et al. 2023 ("Scaling Data-Constrained Language Models", NeurIPS): up to
    # ~4 epochs of repeated data are almost as good as unique data, beyond that value drops.
    max_repeat: float = 4.0
    # With weights None, shares are proportional to size^(1/T): T > 1 flattens toward small
    # sources, as in multilingual sampling (Conneau et al. 2020, XLM-R: alpha = 1/T = 0.3;
    # Xue et al. 2021, mT5: alpha = 0.3).
    temperature: float = 1.0
    # Target mixture size; None = as large as the shares allow without exceeding
    # max_repeat, and never larger than the input (repeating everything adds nothing).
    total: int | None = None
    seed: int = 0


_KEYS = ("by", "weights", "caps", "max_repeat", "temperature", "total", "seed")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _source_table(v: Any, key: str, where: str, sources: Sequence[str], integer: bool
                  ) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise LmforgeError(f"{where}: {key} must be a table of source = number",
                           hint=f"e.g. {key} = {{ {sources[0] if sources else 'web'} = 1 }}")
    _known_sources(v, key, where, sources)
    for name, x in v.items():
        ok = (isinstance(x, int) and not isinstance(x, bool)) if integer else _number(x)
        if not ok or x < 0:
            kind = "a non-negative integer" if integer else "a non-negative number"
            raise LmforgeError(f"{where}: {key}.{name} must be {kind}, not {x!r}")
    return dict(v)


def _known_sources(table: dict[str, Any], key: str, where: str, sources: Sequence[str]) -> None:
    unknown = [s for s in table if s not in sources]
    if unknown:
        raise LmforgeError(f"{where}: {key} names unknown source(s) {', '.join(unknown)}",
                           hint=f"the sources are: {', '.join(sources) or '(none)'}")


def _check_weights(weights: dict[str, float], where: str, sources: Sequence[str]) -> None:
    missing = [s for s in sources if s not in weights]
    if missing:
        raise LmforgeError(f"{where}: weights leave out source(s) {', '.join(missing)}",
                           hint="give every source a weight (0 leaves a source out)")
    if sum(weights.values()) <= 0:
        raise LmforgeError(f"{where}: the weights add up to 0",
                           hint="give at least one source a positive weight")


def check_mixture_settings(d: dict[str, Any], where: str, sources: Sequence[str]
                           ) -> MixtureSettings:
    """Mixture settings from a recipe's [balance] table, checked against the source names."""
    check_keys(d, where, optional=_KEYS)
    by = d.get("by", "tokens")
    if by not in BY:
        raise LmforgeError(f"{where}: by must be one of {', '.join(BY)}, not {by!r}")
    weights = caps = None
    if "weights" in d:
        weights = _source_table(d["weights"], "weights", where, sources, integer=False)
        _check_weights(weights, where, sources)
    if "caps" in d:
        caps = _source_table(d["caps"], "caps", where, sources, integer=True)
    max_repeat = d.get("max_repeat", 4.0)
    if not _number(max_repeat) or max_repeat < 1:
        raise LmforgeError(f"{where}: max_repeat must be a number of at least 1, not "
                           f"{max_repeat!r}", hint="1 = never repeat; 4 is a safe maximum")
    temperature = d.get("temperature", 1.0)
    if not _number(temperature) or temperature <= 0:
        raise LmforgeError(f"{where}: temperature must be a positive number, not "
                           f"{temperature!r}", hint="1 = natural proportions, 2-3 flattens")
    if weights is not None and temperature != 1.0:
        raise LmforgeError(f"{where}: temperature only shapes natural proportions",
                           hint="with weights, leave temperature out")
    total = d.get("total")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int)
                              or total < 1):
        raise LmforgeError(f"{where}: total must be a positive integer, not {total!r}")
    seed = d.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise LmforgeError(f"{where}: seed must be a non-negative integer, not {seed!r}")
    return MixtureSettings(by, weights, caps, float(max_repeat), float(temperature), total, seed)


@dataclass
class MixturePlan:
    repeats: dict[str, np.ndarray]  # per source, per document in input order: copies (0 = drop)
    report: dict[str, Any]


def _sizes(sizes: dict[str, np.ndarray], by: str) -> dict[str, np.ndarray]:
    out = {}
    for name, arr in sizes.items():
        a = np.asarray(arr, dtype=np.float64)
        if a.ndim != 1:
            raise LmforgeError(f"sizes of source '{name}' must be one number per document")
        if not np.all(np.isfinite(a)) or (a < 0).any():
            raise LmforgeError(f"sizes of source '{name}' must be finite and not negative")
        out[name] = np.ones(len(a)) if by == "documents" else a
    return out


def _target_shares(sizes: dict[str, np.ndarray], s: MixtureSettings) -> dict[str, float]:
    names = list(sizes)
    natural = {n: float(sizes[n].sum()) for n in names}
    if s.weights is not None:
        _known_sources(s.weights, "weights", "mixture", names)
        _check_weights(s.weights, "mixture", names)
        raw = {n: float(s.weights[n]) for n in names}
        for n, w in raw.items():
            if w > 0 and natural[n] <= 0:
                what = "no documents" if not len(sizes[n]) else "documents of total size 0"
                raise LmforgeError(f"source '{n}' has weight {w:g} but {what}",
                                   hint="nothing of it survived curation; give it weight 0")
    else:
        raw = {n: v ** (1.0 / s.temperature) if v > 0 else 0.0 for n, v in natural.items()}
    total = sum(raw.values())
    return {n: (w / total if total > 0 else 0.0) for n, w in raw.items()}


def _mixture_total(natural: dict[str, float], shares: dict[str, float],
                   s: MixtureSettings) -> float:
    # The most a source can give is max_repeat x its size; the shares then fix the total.
    most = min((s.max_repeat * natural[n] / w for n, w in shares.items() if w > 0),
               default=0.0)
    if s.total is None:
        return min(most, sum(natural.values()))
    if s.total > most * (1 + 1e-9):
        tight = min((n for n, w in shares.items() if w > 0),
                    key=lambda n: s.max_repeat * natural[n] / shares[n])
        raise LmforgeError(
            f"a mixture of {s.total} {s.by} would repeat source '{tight}' more than "
            f"{s.max_repeat:g} times",
            hint=f"the largest total these weights allow is {int(most)}; lower total, "
                 f"raise max_repeat or shift weight away from '{tight}'")
    return float(s.total)


def _choose(sizes: np.ndarray, target: float, rng: np.random.Generator, exact_max: bool
            ) -> np.ndarray:
    """Copies per document summing to about `target`: whole copies of everything, then a
    random subset for the remainder (the prefix of a seeded permutation whose size is closest
    to it; with `exact_max` the largest that does not exceed it)."""
    total = float(sizes.sum())
    copies = np.zeros(len(sizes), dtype=np.int64)
    if total <= 0 or target <= 0:
        return copies
    whole = int(math.floor(target / total + 1e-9))
    copies[:] = whole
    rest = target - whole * total
    order = rng.permutation(len(sizes))
    reach = np.concatenate(([0.0], np.cumsum(sizes[order])))
    if exact_max:
        take = int(np.searchsorted(reach, rest + 1e-9, side="right")) - 1
    else:
        take = int(np.argmin(np.abs(reach - rest)))
    copies[order[:take]] += 1
    return copies


def plan_mixture(sizes: dict[str, np.ndarray], settings: MixtureSettings) -> MixturePlan:
    """Copies of every document (per source, in input order) for the mixture `settings` ask
    for, and a report of sizes and shares before and after."""
    s = settings
    if s.caps is not None:
        _known_sources(s.caps, "caps", "mixture", list(sizes))
    units = _sizes(sizes, s.by)
    natural = {n: float(a.sum()) for n, a in units.items()}
    shares = _target_shares(units, s)
    total = _mixture_total(natural, shares, s)
    repeats: dict[str, np.ndarray] = {}
    rows: dict[str, dict[str, Any]] = {}
    for name, a in units.items():
        target = shares[name] * total
        cap = (s.caps or {}).get(name)
        capped = cap is not None and target > cap
        if capped:
            target = float(cap)
        # Seeded per source (crc32 is stable across processes, unlike hash()), so one
        # source's plan does not change when another source is added.
        rng = np.random.default_rng([s.seed, zlib.crc32(name.encode("utf-8"))])
        repeats[name] = _choose(a, target, rng, exact_max=capped)
        rows[name] = {
            "documents_before": len(a),
            "documents_after": int(repeats[name].sum()),
            "unique_documents_after": int((repeats[name] > 0).sum()),
            "size_before": _num(natural[name]),
            "size_after": _num(float((a * repeats[name]).sum())),
            "target_share": shares[name],
            "capped": capped,
        }
    before = sum(natural.values())
    after = sum(r["size_after"] for r in rows.values())
    for r in rows.values():
        r["share_before"] = r["size_before"] / before if before else 0.0
        r["share_after"] = r["size_after"] / after if after else 0.0
        r["effective_repeat"] = r["size_after"] / r["size_before"] if r["size_before"] else 0.0
    report = {
        "by": s.by,
        "target_weights": shares,
        "max_repeat": s.max_repeat,
        "temperature": s.temperature,
        "size_before": _num(before),
        "size_after": _num(after),
        "documents_before": sum(r["documents_before"] for r in rows.values()),
        "documents_after": sum(r["documents_after"] for r in rows.values()),
        "sources": rows,
    }
    return MixturePlan(repeats, report)


def _num(x: float) -> int | float:
    """Sizes are whole numbers in every unit the pipeline passes; keep them ints in JSON."""
    return int(x) if float(x).is_integer() else x
