"""The curation report: the schema of `stats.json`, its check, and three renderings of it —
rich tables for the terminal, Markdown saved beside stats.json, and a PNG funnel chart.

All three are built from one list of sections (title, columns, rows, notes), so they always
show the same content.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from lmforge.errors import LmforgeError
from lmforge.registry.atomic import atomic_open

# --- the schema of stats.json -----------------------------------------------------------------


class Counts(TypedDict):
    documents_in: int
    characters_in: int
    documents_out: int
    characters_out: int


class Example(TypedDict, total=False):
    id: str
    excerpt: str  # the start of the text, one line
    where: str  # "file:line", for read problems


class Reason(TypedDict):
    count: int  # exact
    examples: list[Example]  # the first few


class _StepCountsExtra(TypedDict, total=False):
    reasons: dict[str, Reason]  # e.g. "gopher_quality:too_few_words"


class StepCounts(Counts, _StepCountsExtra):
    """One source through one step: documents and characters in and out, and why removed."""


class MixtureSource(TypedDict):
    """One source's row of the balance step's plan (curate/balance.py writes it)."""
    size_before: float  # documents, characters or tokens (see Mixture.by) before balancing
    size_after: float
    share_before: float  # fraction of the whole mixture, 0..1
    share_after: float
    effective_repeat: float  # times the source is seen (<1 sampled down, >1 repeated)


class Mixture(TypedDict):
    by: str  # "documents" | "characters" | "tokens"
    sources: dict[str, MixtureSource]


class _StepExtra(TypedDict, total=False):
    replaced: dict[str, int]  # pii: spans replaced per kind
    eval_items_found: dict[str, list[int]]  # decontaminate: indices of eval items found
    mixture: Mixture  # balance


class Step(_StepExtra):
    name: str
    by_source: dict[str, StepCounts]


class ReadErrorsStats(TypedDict):
    count: int
    examples: list[dict[str, Any]]  # {"file", "line" (None: the whole file), "reason", ...}


class _StatsExtra(TypedDict, total=False):
    read_errors: ReadErrorsStats
    warnings: list[str]
    settings: dict[str, Any]
    seconds: float
    workers: int


class Stats(_StatsExtra):
    sources: dict[str, Counts]  # each source from input to final output
    steps: list[Step]  # in pipeline order


_COUNTS = ("documents_in", "characters_in", "documents_out", "characters_out")
_MIXTURE = ("size_before", "size_after", "share_before", "share_after", "effective_repeat")
_HINT = "the file is not an lmforge curation stats.json, or it is damaged; re-run the curation"


def _fail(where: str, what: str) -> LmforgeError:
    return LmforgeError(f"{where}: {what}", hint=_HINT)


def _need(d: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict):
        raise _fail(where, f"expected an object, got {type(d).__name__}")
    if key not in d:
        raise _fail(where, f"missing key {key!r}")
    return _typed(d[key], kind, f"{where}.{key}")


def _typed(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    numeric = kind in (int, float, (int, float))
    if not isinstance(value, kind) or (numeric and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(where, f"expected {names}, got {type(value).__name__}")
    return value


def _check_counts(c: Any, where: str) -> None:
    for key in _COUNTS:
        if _need(c, key, int, where) < 0:
            raise _fail(f"{where}.{key}", "is negative")


def validate_stats(d: dict, where: str) -> None:
    """Raise an LmforgeError naming the first missing or mistyped key; `where` names the file."""
    _typed(d, dict, where)
    for name, c in _need(d, "sources", dict, where).items():
        _check_counts(c, f"{where}: sources[{name!r}]")
    for i, step in enumerate(_need(d, "steps", list, where)):
        here = f"{where}: steps[{i}]"
        here = f"{here} ({_need(step, 'name', str, here)!r})"
        for src, c in _need(step, "by_source", dict, here).items():
            at = f"{here}.by_source[{src!r}]"
            _check_counts(c, at)
            for reason, r in _typed(c.get("reasons", {}), dict, f"{at}.reasons").items():
                _need(r, "count", int, f"{at}.reasons[{reason!r}]")
                for ex in _need(r, "examples", list, f"{at}.reasons[{reason!r}]"):
                    _typed(ex, dict, f"{at}.reasons[{reason!r}].examples[]")
        for kind, n in _typed(step.get("replaced", {}), dict, f"{here}.replaced").items():
            _typed(n, int, f"{here}.replaced[{kind!r}]")
        for name, items in _typed(step.get("eval_items_found", {}), dict,
                                  f"{here}.eval_items_found").items():
            _typed(items, list, f"{here}.eval_items_found[{name!r}]")
        if "mixture" in step:
            _need(step["mixture"], "by", str, f"{here}.mixture")
            for src, m in _need(step["mixture"], "sources", dict, f"{here}.mixture").items():
                for key in _MIXTURE:
                    _need(m, key, (int, float), f"{here}.mixture.sources[{src!r}]")
    if "read_errors" in d:
        _need(d["read_errors"], "count", int, f"{where}: read_errors")
        _need(d["read_errors"], "examples", list, f"{where}: read_errors")
    for i, w in enumerate(_typed(d.get("warnings", []), list, f"{where}: warnings")):
        _typed(w, str, f"{where}: warnings[{i}]")
    for key, kind in (("seconds", (int, float)), ("workers", int), ("settings", dict)):
        if key in d:
            _typed(d[key], kind, f"{where}: {key}")


def load_stats(path: str | Path) -> dict[str, Any]:
    """Read and check a stats.json."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmforgeError(f"{path}: no such file", hint="point at a curation's stats.json") \
            from None
    except (OSError, ValueError) as e:
        raise LmforgeError(f"{path}: not readable JSON ({e})", hint=_HINT) from None
    validate_stats(d, str(path))
    return d


# --- the numbers --------------------------------------------------------------------------------

def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def _row(step: str, source: str | None, c: dict[str, Any], top: int) -> dict[str, Any]:
    reasons = sorted(((r, v["count"]) for r, v in c.get("reasons", {}).items()),
                     key=lambda rc: (-rc[1], rc[0]))
    d_in, d_out, c_in, c_out = (c[k] for k in _COUNTS[::2] + _COUNTS[1::2])
    return {"step": step, "source": source,
            "documents_in": d_in, "documents_out": d_out, "documents_removed": d_in - d_out,
            "documents_removed_pct": _pct(d_in - d_out, d_in),
            "characters_in": c_in, "characters_out": c_out, "characters_removed": c_in - c_out,
            "characters_removed_pct": _pct(c_in - c_out, c_in),
            "top_reasons": reasons[:top]}


def funnel_rows(stats: dict, top: int = 3) -> list[dict]:
    """Per step: a row for all sources (`source` None), then one per source, in source order.

    Each row: documents and characters in, out, removed (negative when a step adds, as balancing
    by repetition does) and % removed, and the `top` reasons as (reason, count), most first.
    """
    order = list(stats["sources"])
    rows: list[dict[str, Any]] = []
    for step in stats["steps"]:
        by_source = step["by_source"]
        names = [s for s in order if s in by_source] + sorted(set(by_source) - set(order))
        total: dict[str, Any] = {k: sum(by_source[s][k] for s in names) for k in _COUNTS}
        merged: dict[str, dict[str, int]] = {}
        for s in names:
            for reason, r in by_source[s].get("reasons", {}).items():
                merged.setdefault(reason, {"count": 0})["count"] += r["count"]
        rows.append(_row(step["name"], None, {**total, "reasons": merged}, top))
        rows.extend(_row(step["name"], s, by_source[s], top) for s in names)
    return rows


# --- sections shared by the terminal and Markdown ---------------------------------------------

@dataclass
class _Section:
    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _one_line(text: str, limit: int = 100) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _arrow(a: int, b: int) -> str:
    return f"{a:,} → {b:,}"


def _reasons_cell(reasons: list[tuple[str, int]]) -> str:
    return ", ".join(f"{r} ({n:,})" for r, n in reasons)


def _only(stats: dict, source: str | None) -> dict:
    """The stats restricted to one source (or all of them)."""
    if source is None:
        return stats
    if source not in stats["sources"]:
        raise LmforgeError(f"no source {source!r} in these statistics",
                           hint=f"sources: {', '.join(stats['sources']) or 'none'}")
    steps = [{**s, "by_source": {k: v for k, v in s["by_source"].items() if k == source}}
             for s in stats["steps"]]
    errs = stats.get("read_errors")
    if errs:
        errs = {**errs, "examples": [e for e in errs["examples"]
                                     if e.get("source") in (None, source)]}
    return {**stats, "sources": {source: stats["sources"][source]}, "steps": steps,
            "read_errors": errs}


def _sections(stats: dict, examples: int, source: str | None) -> list[_Section]:
    validate_stats(stats, "stats")
    stats = _only(stats, source)
    sources = stats["sources"]
    d_in = sum(c["documents_in"] for c in sources.values())
    d_out = sum(c["documents_out"] for c in sources.values())
    c_in = sum(c["characters_in"] for c in sources.values())
    c_out = sum(c["characters_out"] for c in sources.values())
    summary = _Section("Summary", notes=[
        f"{len(sources)} source(s); documents {_arrow(d_in, d_out)} "
        f"({_pct(d_out, d_in):.1f}% kept); characters {_arrow(c_in, c_out)} "
        f"({_pct(c_out, c_in):.1f}% kept)"])
    if "seconds" in stats:
        summary.notes.append(f"{stats['seconds']:.1f} s with {stats.get('workers', 1)} "
                             "worker(s)")
    out = [summary]

    rows = funnel_rows(stats)
    head = ["Step", "Documents in → out", "Removed", "% removed", "Characters in → out",
            "% chars removed", "Top reasons"]

    def funnel_line(r: dict[str, Any]) -> list[str]:
        return [r["step"], _arrow(r["documents_in"], r["documents_out"]),
                f"{r['documents_removed']:,}", f"{r['documents_removed_pct']:.1f}%",
                _arrow(r["characters_in"], r["characters_out"]),
                f"{r['characters_removed_pct']:.1f}%", _reasons_cell(r["top_reasons"])]

    out.append(_Section("Funnel" + (f": {source}" if source else ""), head,
                        [funnel_line(r) for r in rows if r["source"] is None]))
    if source is None:
        out.append(_Section("Sources", ["Source", "Documents in → out", "% kept",
                                        "Characters in → out", "% chars kept"],
                            [[s, _arrow(c["documents_in"], c["documents_out"]),
                              f"{_pct(c['documents_out'], c['documents_in']):.1f}%",
                              _arrow(c["characters_in"], c["characters_out"]),
                              f"{_pct(c['characters_out'], c['characters_in']):.1f}%"]
                             for s, c in sources.items()]))
        if len(sources) > 1:
            for s in sources:
                out.append(_Section(f"Funnel: {s}", head, [funnel_line(r) for r in rows
                                                          if r["source"] == s]))
    for step in stats["steps"]:
        reason_rows = []
        for src, c in step["by_source"].items():
            for reason, r in sorted(c.get("reasons", {}).items(),
                                    key=lambda kv: (-kv[1]["count"], kv[0])):
                shown = [f"{ex.get('id') or ex.get('where', '?')}: "
                         f"{_one_line(ex.get('excerpt', ''))}"
                         for ex in r["examples"][:examples]]
                reason_rows.append([reason, src, f"{r['count']:,}", "\n".join(shown)])
        if reason_rows:
            out.append(_Section(f"Removed by {step['name']}",
                                ["Reason", "Source", "Documents", "Examples"], reason_rows))
        if step.get("replaced"):
            out.append(_Section(f"PII replaced ({step['name']})", ["Kind", "Replaced"],
                                [[k, f"{n:,}"] for k, n in step["replaced"].items()]))
        if "eval_items_found" in step:
            found = step["eval_items_found"]
            sec = _Section("Evaluation items found in the training data",
                           ["Evaluation set", "Items found", "Item indices"],
                           [[k, f"{len(v):,}", _one_line(", ".join(map(str, v)), 80)]
                            for k, v in found.items()])
            if not found:
                sec.notes.append("none")
            out.append(sec)
        if "mixture" in step:
            mix = step["mixture"]
            out.append(_Section(f"Mixture (by {mix['by']})",
                                ["Source", "Before", "After", "Share before", "Share after",
                                 "Repeat"],
                                [[s, f"{m['size_before']:,.0f}", f"{m['size_after']:,.0f}",
                                  f"{m['share_before']:.1%}", f"{m['share_after']:.1%}",
                                  f"{m['effective_repeat']:.2f}×"]
                                 for s, m in mix["sources"].items()]))
    errs = stats.get("read_errors")
    if errs and errs["count"]:
        shown = errs["examples"][:max(examples, 10)]
        sec = _Section(f"Read errors ({errs['count']:,})", ["File", "Line", "Reason"],
                       [[str(e.get("file", "?")), "" if e.get("line") is None else str(e["line"]),
                         _one_line(e.get("reason", ""), 120)] for e in shown])
        if errs["count"] > len(shown):
            sec.notes.append(f"… and {errs['count'] - len(shown):,} more (see stats.json)")
        out.append(sec)
    if stats.get("warnings"):
        out.append(_Section("Warnings", notes=list(stats["warnings"])))
    return out


# --- renderings ---------------------------------------------------------------------------------

def render_report(stats: dict, console: Any, examples: int = 3,
                  source: str | None = None) -> None:
    """Print the report as rich tables on `console` (a `rich.console.Console`)."""
    from rich.table import Table
    from rich.text import Text

    for sec in _sections(stats, examples, source):
        if sec.columns:
            table = Table(title=sec.title, title_justify="left", show_lines=False)
            for i, col in enumerate(sec.columns):
                numeric = all(_NUMBER.match(row[i]) for row in sec.rows)
                table.add_column(col, justify="right" if numeric else "left",
                                 overflow="fold")
            for row in sec.rows:
                table.add_row(*(Text(cell) for cell in row))  # Text: data is never markup
            console.print(table)
        else:
            console.print(Text(sec.title, style="bold"))
        for note in sec.notes:
            console.print(Text(("  " if sec.columns else "  • ") + note))
        console.print()


_NUMBER = re.compile(r"^[\d,.\s→%×+\-−]*$")  # counts, "a → b", "12.5%": right-aligned


def _md_cell(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", "<br>")


def report_markdown(stats: dict, examples: int = 3) -> str:
    """The report as Markdown (saved beside stats.json)."""
    lines = ["# Curation report", ""]
    for sec in _sections(stats, examples, None):
        lines += [f"## {sec.title}", ""]
        if sec.columns:
            lines.append("| " + " | ".join(_md_cell(c) for c in sec.columns) + " |")
            lines.append("|" + "|".join(["---"] * len(sec.columns)) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in sec.rows]
            lines.append("")
        lines += [f"- {note}" for note in sec.notes]
        if sec.notes:
            lines.append("")
    return "\n".join(lines)


def _remaining(stats: dict) -> tuple[list[str], list[str], dict[str, list[int]]]:
    """Bar labels (input, then each step) and documents left per source after each."""
    sources = list(stats["sources"])
    steps = stats["steps"]
    labels = ["input", *(s["name"] for s in steps)]
    left: dict[str, list[int]] = {}
    for src in sources:
        first = next((s["by_source"][src]["documents_in"] for s in steps
                      if src in s["by_source"]), stats["sources"][src]["documents_in"])
        counts = [first]
        for step in steps:  # a step that never saw the source leaves its count unchanged
            c = step["by_source"].get(src)
            counts.append(c["documents_out"] if c else counts[-1])
        left[src] = counts
    return labels, sources, left


def save_funnel_png(stats: dict, path: Path, title: str = "") -> Path:
    """A funnel chart: one bar per step, the documents left after it stacked per source, and
    what the step removed (count and %). The same stats always give the same bytes."""
    try:
        import matplotlib.style
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise LmforgeError("the funnel chart needs matplotlib, which is not installed",
                           hint="pip install matplotlib") from None
    validate_stats(stats, "stats")
    labels, sources, left = _remaining(stats)
    totals = [sum(left[s][i] for s in sources) for i in range(len(labels))]
    path = Path(path)
    # The default style, not the user's matplotlibrc: the same picture on every machine.
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(9, 1.2 + 0.45 * len(labels)), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        y = list(range(len(labels)))
        start = [0] * len(labels)
        colors = matplotlib.colormaps["tab10"]
        for k, src in enumerate(sources):
            ax.barh(y, left[src], left=start, color=colors(k % 10), label=src, height=0.7)
            start = [a + b for a, b in zip(start, left[src])]
        peak = max(totals) or 1
        for i, total in enumerate(totals):
            if i == 0:
                note = f"{total:,} documents"
            else:
                gone = totals[i - 1] - total
                note = (f"−{gone:,} ({_pct(gone, totals[i - 1]):.1f}%) → {total:,}" if gone > 0
                        else f"+{-gone:,} → {total:,}" if gone < 0 else "nothing removed")
            ax.text(total + peak * 0.01, i, note, va="center", fontsize=8)
        ax.set_yticks(y, labels)
        ax.invert_yaxis()  # the first step on top, like a funnel
        ax.set_xlim(0, peak * 1.45)
        ax.set_xlabel("documents remaining")
        ax.set_title(title or "Curation funnel")
        if len(sources) > 1:
            ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        with atomic_open(path) as f:
            # No Software tag and no dates: PNG bytes depend on the numbers only.
            fig.savefig(f, format="png", metadata={"Software": None})
    return path
