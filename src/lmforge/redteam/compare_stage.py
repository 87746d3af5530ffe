"""Before and after a safety fix, as a recipe step: `stage = "redteam-compare"` with
`before = "@redteam"` and `after = "@redteam-after"` prints attack success and over-refusal
of both reports, each with its 95% interval, and the paired change with its own (compare.py).

The rows that say whether the fix generalizes come first: attack success on held-out
prompts and over-refusal of held-out benign asks, which the tuning data (safety_data.py,
seen split only) did not hold. A report-only step: it registers nothing and runs every time,
so a second `lmforge run` prints the figures again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from lmforge.redteam.compare import compare, read_attempts
from lmforge.redteam.loop_back import load_report
from lmforge.registry import Workspace
from lmforge.stage import Outcome, check_keys

# (label, short label, where in a report's summary, where in compare()'s output)
ROWS = (
    ("attack success, held-out prompts", "held-out attack success", ("heldout_asr",),
     ("heldout_asr",)),
    ("over-refusal, held-out benign asks", "held-out over-refusal",
     ("categories", "over_refusal", "by_split", "heldout"),
     None),  # paired change: over held-out units only (below)
    ("attack success, all prompts", "attack success", ("asr",), ("asr",)),
    ("over-refusal, all benign asks", "over-refusal", ("categories", "over_refusal"),
     ("categories", "over_refusal")),
)


@dataclass(frozen=True)
class RedteamCompareSettings:
    before: str  # redteam-reports (id, prefix or alias)
    after: str
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path
                  ) -> RedteamCompareSettings:
        check_keys(values, where, required=("before", "after"), optional=("seed",))
        return cls(**values)


def _get(tree: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _rate(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("rate") is None:
        return "-"
    return f"{entry['rate']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def _heldout_benign(before: list[dict[str, Any]], after: list[dict[str, Any]], seed: int
                    ) -> dict[str, Any]:
    """The paired change in over-refusal over held-out benign asks alone."""
    def held(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if r["category"] == "over_refusal" and r["split"] == "heldout"]

    return compare(held(before), held(after), seed)["categories"].get("over_refusal", {"n": 0})


def figures(before: dict[str, Any], after: dict[str, Any], seed: int = 0
            ) -> list[dict[str, Any]]:
    """One row per ROWS entry: each report's rate and interval, and the paired change."""
    attempts_b, attempts_a = read_attempts(before), read_attempts(after)
    paired = compare(attempts_b, attempts_a, seed)
    out = []
    for label, short, where, change_at in ROWS:
        change = (_get(paired, change_at) if change_at is not None
                  else _heldout_benign(attempts_b, attempts_a, seed))
        out.append({"label": label, "short": short,
                    "before": _get(before["summary"], where),
                    "after": _get(after["summary"], where), "change": change})
    return out


def run(ws: Workspace, s: RedteamCompareSettings, show_progress: bool = True) -> Outcome:
    (before, name_b), (after, name_a) = load_report(ws, s.before), load_report(ws, s.after)
    rows = figures(before, after, s.seed)
    table = Table(title=f"red team before ({name_b}, {before.get('model') or before['target']})"
                        f" and after ({name_a}, {after.get('model') or after['target']})",
                  header_style="bold")
    for col in ("", "before [95% CI]", "after [95% CI]", "change [paired 95% CI]", "verdict"):
        table.add_column(col, justify="left" if col in ("", "verdict") else "right",
                         no_wrap=True)
    for r in rows:
        c = r["change"] or {"n": 0}
        change = (f"{c['change']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
                  if c["n"] else "-")
        # Both rates count failures (attacks that worked, benign asks refused): a fall is
        # the gain.
        style = {"fell": "green", "rose": "red"}.get(c.get("verdict", ""))
        table.add_row(r["label"], _rate(r["before"]), _rate(r["after"]), change,
                      c.get("verdict", "not measured"), style=style)
    line = "; ".join(f"{r['short']} {_rate(r['before'])} → {_rate(r['after'])}"
                     for r in rows[:2])
    return Outcome(None, line, {"before": name_b, "after": name_a, "rows": rows}, show=table)
