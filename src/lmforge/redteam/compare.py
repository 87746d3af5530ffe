"""Two red-team reports side by side: did a fix work? `lmforge redteam compare BEFORE AFTER`.

Probes are paired by (category, probe id): the same seed or scenario attacked before and
after. For each category, and for the attack categories pooled over all, seen and held-out
probes, the change in rate (after - before) has a 95% interval from a paired bootstrap over
the probes both reports judged (resampling probes, not attempts). A change is called a fall
or a rise only when its whole interval is below or above zero. Probes only one report has,
or that one of them could not judge, are counted and left out.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.redteam.mutators import ATTACKS, CATEGORIES


def unit_outcomes(records: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[bool | None, str]]:
    """(category, probe) -> (broken, or None when no attempt was judged; split)."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by[(r["category"], r["unit"])].append(r)
    out = {}
    for key, attempts in by.items():
        statuses = [a["verdict"]["status"] for a in attempts]
        broken = True if "success" in statuses else (
            None if all(s == "unjudged" for s in statuses) else False)
        out[key] = (broken, attempts[0]["split"])
    return out


def read_attempts(report: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(report.get("_folder", "")) / "attempts.jsonl"
    if not path.is_file():
        raise LmforgeError(f"{path} is missing: comparing needs the report's attempts",
                           hint="pass redteam-report artifacts")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def paired_change(before: list[bool], after: list[bool], rng: np.random.Generator,
                  iters: int = 2000) -> dict[str, Any]:
    b, a = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    n = len(b)
    if n == 0:
        return {"n": 0, "before": None, "after": None, "change": None, "ci_low": None,
                "ci_high": None, "verdict": "not measured"}
    diff = a - b
    pick = rng.integers(0, n, size=(iters, n))
    lo, hi = (float(v) for v in np.quantile(diff[pick].mean(axis=1), [0.025, 0.975]))
    verdict = "fell" if hi < 0 else "rose" if lo > 0 else "no clear change"
    return {"n": n, "before": float(b.mean()), "after": float(a.mean()),
            "change": float(diff.mean()), "ci_low": lo, "ci_high": hi, "verdict": verdict}


def compare(before: list[dict[str, Any]], after: list[dict[str, Any]], seed: int = 0,
            iters: int = 2000) -> dict[str, Any]:
    """Per-category and pooled changes between two reports' attempts."""
    rng = np.random.default_rng(seed)
    ub, ua = unit_outcomes(before), unit_outcomes(after)
    both = [k for k in ub if k in ua and ub[k][0] is not None and ua[k][0] is not None]
    out: dict[str, Any] = {"paired_probes": len(both),
                           "only_one_report": len(set(ub) ^ set(ua)),
                           "unjudged_in_one": sum(1 for k in ub if k in ua) - len(both),
                           "categories": {}}
    for c in CATEGORIES:
        keys = [k for k in both if k[0] == c]
        if keys:
            out["categories"][c] = paired_change([bool(ub[k][0]) for k in keys],
                                                 [bool(ua[k][0]) for k in keys], rng, iters)
    for name, split in (("asr", None), ("seen_asr", "seen"), ("heldout_asr", "heldout")):
        keys = [k for k in both if k[0] in ATTACKS and (split is None or ub[k][1] == split)]
        out[name] = paired_change([bool(ub[k][0]) for k in keys],
                                  [bool(ua[k][0]) for k in keys], rng, iters)
    return out
