"""stats.json of a curation run: every step's funnel in pipeline order, what each source gave
and kept, read errors and warnings. No timings or worker counts: the same inputs and settings
give the same bytes (and so the same artifact id) however, and however fast, they ran."""

from __future__ import annotations

from typing import Any

from lmforge.curate.config import CurationConfig
from lmforge.curate.filters import build_filters
from lmforge.curate.funnel import Funnel

STEP_ORDER_HEAD = ["read", "normalize"]
STEP_ORDER_TAIL = ["pii", "decontaminate", "exact_dedup", "near_dedup", "balance"]


def build_stats(cfg: CurationConfig, funnel: Funnel, read_state: dict[str, Any]
                ) -> dict[str, Any]:
    """The run's stats from the funnel of every step and the read phase's state."""
    steps = funnel.step_list(STEP_ORDER_HEAD + filter_order(cfg) + STEP_ORDER_TAIL)
    totals, warnings = source_totals(cfg, steps), list(read_state["warnings"])
    for name, t in totals.items():
        if t["documents_in"] and not t["documents_out"]:
            warnings.append(f"source '{name}': no documents survived ({_removers(steps, name)})")
    return {"sources": totals, "steps": steps, "read_errors": read_state["read_errors"],
            "warnings": warnings, "settings": cfg.settings()}


def filter_order(cfg: CurationConfig) -> list[str]:
    """The quality filters in the order they run (sources' presets merged, first seen first)."""
    order: list[str] = []
    for s in cfg.sources:
        for f in build_filters(s.preset, s.filters):
            if f.name not in order:
                order.append(f.name)
    return order


def source_totals(cfg: CurationConfig, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per source: what was read, and what came out of the last step."""
    totals = {}
    for s in cfg.sources:
        first = steps[0]["by_source"].get(s.name, {})
        last = first
        for step in steps:
            if s.name in step["by_source"] and step["by_source"][s.name]["documents_in"]:
                last = step["by_source"][s.name]
        if not last or not last.get("documents_in"):
            last = {"documents_out": 0, "characters_out": 0}
        totals[s.name] = {"documents_in": first.get("documents_in", 0),
                          "characters_in": first.get("characters_in", 0),
                          "documents_out": last["documents_out"],
                          "characters_out": last["characters_out"]}
    return totals


def _removers(steps: list[dict[str, Any]], source: str) -> str:
    removed = []
    for step in steps:
        c = step["by_source"].get(source)
        if c and c["documents_in"] > c["documents_out"]:
            removed.append((c["documents_in"] - c["documents_out"], step["name"]))
    removed.sort(reverse=True)
    return "removed by " + ", ".join(f"{name} ({n:,})" for n, name in removed) if removed \
        else "nothing was read"
