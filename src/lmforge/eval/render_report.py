"""Evaluation reports and comparisons for people: rich tables, Markdown, and a PNG plot.

Reads the report dict of `lmforge.eval.runner.evaluate` (plus the optional `gates` and
`human_review` sections) and the comparison dict of `lmforge.eval.compare.compare_reports`.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lmforge.errors import LmforgeError
from lmforge.registry.atomic import atomic_write_bytes


def _num(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if abs(v) < 1e-12:  # float noise around zero (e.g. a centered score at chance)
        return "0.0000"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.3g}"
    return f"{v:.2f}" if abs(v) >= 100 else f"{v:.4f}"


def _value_pm(m: dict) -> str:
    text = _num(m.get("value"))
    return f"{text} ± {_num(m['stderr'])}" if m.get("stderr") is not None else text


def _model(report: dict) -> str:
    return next((str(report[k]) for k in ("model", "model_id", "name") if report.get(k)),
                "(unnamed model)")


def _settings_line(report: dict) -> str:
    s = report.get("settings", {})
    return ", ".join(f"{k}={v}" for k, v in s.items())


def _metric_rows(report: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for task, entry in report.get("tasks", {}).items():
        n = entry.get("n", len(entry.get("items", [])))
        for metric, m in entry.get("metrics", {}).items():
            rows.append((task, metric, _value_pm(m), str(n)))
    return rows


def _skip_notes(report: dict) -> list[str]:
    """One line per task that skipped items (and one for benchmarks absent from the data
    root): what a reader must know before trusting `n`."""
    notes = []
    for task, entry in report.get("tasks", {}).items():
        skipped = entry.get("skipped") or {}
        if skipped.get("n"):
            total = skipped["n"] + entry.get("n", 0)
            why = "; ".join(f"{why}: {len(ix)} (items {', '.join(map(str, ix[:10]))}"
                            f"{', ...' if len(ix) > 10 else ''})"
                            for why, ix in skipped.get("reasons", {}).items())
            notes.append(f"{task}: skipped {skipped['n']} of {total} items ({why})")
    absent = report.get("absent_tasks") or {}
    if absent:
        notes.append("not run, no file in the data root: " + ", ".join(
            f"{name} ({path})" for name, path in absent.items()))
    return notes


def _gate_rows(report: dict) -> list[tuple[str, str, str, str]]:
    return [(g["metric"], f"{g['op']} {_num(g['threshold'])}", _num(g.get("value")),
             "pass" if g.get("passed") else "FAIL")
            for g in report.get("gates", {}).get("results", [])]


def _review_rows(report: dict) -> list[tuple[str, ...]]:
    rows = []
    for model, e in report.get("human_review", {}).get("models", {}).items():
        within = e["within_bounds"]
        rows.append((model, str(e["n_items"]), _value_pm(e["clarity"]),
                     _value_pm(e["relevance"]), _value_pm(e["tone"]),
                     f"{within['value']:.0%} ± {within['stderr']:.0%}"))
    return rows


def _agreement_rows(report: dict) -> list[tuple[str, ...]]:
    agreement = report.get("human_review", {}).get("agreement", {})
    rows = []
    for pair, stats in agreement.get("pairs", {}).items():
        for c, s in stats.items():
            if isinstance(s, dict):
                rows.append((pair, c, str(stats["n_items"]), f"{s['percent_agreement']:.0%}",
                             _num(s["kappa"])))
    for c, a in agreement.get("krippendorff_alpha", {}).items():
        rows.append(("all reviewers", c, str(agreement["n_items_multiply_rated"]), "-",
                     f"alpha {_num(a)}"))
    return rows


def render_report(report: dict, console: Console) -> None:
    """Print a report: metrics per task (value ± stderr, n), gates, human review."""
    console.print(f"[bold]{report.get('suite', 'evaluation')}[/] report for "
                  f"[cyan]{_model(report)}[/]  ({_settings_line(report)})")
    table = Table(show_header=True, header_style="bold")
    for col, justify in (("task", "left"), ("metric", "left"), ("value ± stderr", "right"),
                         ("n", "right")):
        table.add_column(col, justify=justify)
    for row in _metric_rows(report):
        table.add_row(*row)
    console.print(table)
    for note in _skip_notes(report):
        console.print(f"[yellow]{note}[/]", highlight=False)
    gates = _gate_rows(report)
    if gates:
        passed = report["gates"].get("passed")
        gt = Table(title="gates: " + ("[green]passed[/]" if passed else "[red]FAILED[/]"),
                   header_style="bold")
        for col in ("metric", "must be", "value", "result"):
            gt.add_column(col)
        for metric, need, value, result in gates:
            style = "green" if result == "pass" else "red"
            gt.add_row(metric, need, value, f"[{style}]{result}[/]")
        console.print(gt)
    review = _review_rows(report)
    if review:
        rt = Table(title="human review", header_style="bold")
        for col in ("model", "items", "clarity", "relevance", "tone", "within bounds"):
            rt.add_column(col)
        for row in review:
            rt.add_row(*row)
        console.print(rt)
        agree = _agreement_rows(report)
        if agree:
            at = Table(title="reviewer agreement", header_style="bold")
            for col in ("reviewers", "criterion", "items", "agree", "kappa / alpha"):
                at.add_column(col)
            for row in agree:
                at.add_row(*row)
            console.print(at)
    if "seconds" in report:
        console.print(f"[dim]{report['seconds']:.1f} s[/]")


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)]) + "\n"


def report_markdown(report: dict) -> str:
    """The report as Markdown: a heading, the settings, and the same tables as the console."""
    parts = [f"# {report.get('suite', 'evaluation')} report: {_model(report)}\n",
             f"Settings: {_settings_line(report) or '-'}\n",
             _md_table(("task", "metric", "value ± stderr", "n"), _metric_rows(report))]
    notes = _skip_notes(report)
    if notes:
        parts.append("".join(f"- {note}\n" for note in notes))
    gates = _gate_rows(report)
    if gates:
        verdict = "passed" if report["gates"].get("passed") else "FAILED"
        parts += [f"## Gates: {verdict}\n",
                  _md_table(("metric", "must be", "value", "result"), gates)]
    review = _review_rows(report)
    if review:
        parts += ["## Human review\n", _md_table(
            ("model", "items", "clarity", "relevance", "tone", "within bounds"), review)]
        agree = _agreement_rows(report)
        if agree:
            parts += ["### Reviewer agreement\n", _md_table(
                ("reviewers", "criterion", "items", "agree", "kappa / alpha"), agree)]
    if "seconds" in report:
        parts.append(f"_{report['seconds']:.1f} s_\n")
    return "\n".join(parts)


# ---------------------------------------------------------------- comparisons


def _verdict(row: dict) -> str:
    if row["significant"] is None:
        return "n/a"
    if not row["significant"]:
        return "no"
    better = (row["delta"] > 0) == row["higher_is_better"]
    return "yes, better" if better else "yes, worse"


def _cmp_rows(cmp: dict) -> list[tuple[str, ...]]:
    rows = []
    for r in cmp["rows"]:
        ci = (f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]" if r["ci_low"] is not None
              else "-")
        delta = "-" if r["delta"] is None else f"{r['delta']:+.4g}"
        rows.append((r["task"], r["metric"], _num(r["a"]), _num(r["b"]), delta, ci,
                     _num(r["p_value"]), _verdict(r)))
    return rows


_CMP_HEADER = ("task", "metric", "A", "B", "delta (B-A)", "CI", "p", "significant")


def _cmp_notes(cmp: dict) -> list[str]:
    notes = [f"A = {cmp['a']}, B = {cmp['b']}; {cmp['confidence']:.0%} intervals from "
             f"{cmp['iters']} resamples (seed {cmp['seed']})."]
    if cmp.get("forced"):
        notes.append("FORCED despite differing settings: " + "; ".join(
            cmp["setting_differences"]))
    for side in ("a", "b"):
        if cmp.get(f"only_in_{side}"):
            notes.append(f"only in {side.upper()}: " + ", ".join(cmp[f"only_in_{side}"]))
    notes += [f"{r['task']}/{r['metric']}: {r['note']}" for r in cmp["rows"] if r["note"]]
    return notes


def comparison_markdown(cmp: dict) -> str:
    parts = [f"# Comparison: {cmp['a']} (A) vs {cmp['b']} (B)\n",
             _md_table(_CMP_HEADER, _cmp_rows(cmp))]
    parts += [f"- {n}" for n in _cmp_notes(cmp)]
    return "\n".join(parts) + "\n"


def render_comparison(cmp: dict, console: Console) -> None:
    table = Table(title=f"{cmp['a']} (A) vs {cmp['b']} (B)", header_style="bold")
    for col in _CMP_HEADER:
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for cells in _cmp_rows(cmp):
        style = {"yes, better": "green", "yes, worse": "red"}.get(cells[-1], "")
        table.add_row(*cells, style=style or None)
    console.print(table)
    for note in _cmp_notes(cmp):
        console.print(f"[dim]{note}[/]")


def save_comparison_png(cmp: dict, path: Path) -> Path:
    """One panel per task/metric: bars for A and B with 95% error bars (1.96 stderr); the
    delta in the title, starred when significant. The bytes depend only on `cmp`."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LmforgeError("matplotlib is needed for the comparison plot",
                           hint="pip install matplotlib") from None
    rows = [r for r in cmp["rows"] if r["a"] is not None and r["b"] is not None]
    if not rows:
        raise LmforgeError("nothing to plot: no metric has values in both reports")
    ncols = min(4, len(rows))
    nrows = math.ceil(len(rows) / ncols)
    with plt.rc_context({"font.size": 8}):
        fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.4 * nrows),
                                 squeeze=False)
        for ax, r in zip(axes.flat, rows):
            errs = [1.96 * (r[k] or 0.0) for k in ("a_stderr", "b_stderr")]
            ax.bar([0, 1], [r["a"], r["b"]], yerr=errs, capsize=4,
                   color=["#8da0cb", "#fc8d62"], tick_label=["A", "B"])
            star = " *" if r["significant"] else ""
            color = {"yes, better": "#1a9850", "yes, worse": "#d73027"}.get(_verdict(r), "black")
            ax.set_title(f"{r['task']}/{r['metric']}\nΔ {r['delta']:+.3g}{star}", fontsize=8,
                         color=color)
        for ax in list(axes.flat)[len(rows):]:
            ax.axis("off")
        fig.suptitle(f"A = {cmp['a']}   B = {cmp['b']}   (* significant, "
                     f"{cmp['confidence']:.0%} CI excludes 0)", fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        # No "Software" text chunk (it carries the matplotlib version); PNG gets no date.
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, buf.getvalue())
