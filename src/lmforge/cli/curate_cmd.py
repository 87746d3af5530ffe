"""`lmforge curate`: stage 2, data curation, and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from lmforge.cli.app import app, console, workspace
from lmforge.curate.filters import PRESETS
from lmforge.data.readers import SPLITS
from lmforge.errors import LmforgeError

_HELP = """Stage 2: curate data. Normalize, filter for quality, scrub PII, remove exact and \
near duplicates, decontaminate against evaluation sets and balance sources. Registers a \
dataset with stats.json, report.md and funnel.png. A killed run resumes where it stopped.

\b
  lmforge curate --source docs=pydocs                       # the embedded corpus
  lmforge curate --source web='crawl/*.jsonl.gz' --source books=books/ --workers 2
  lmforge curate --recipe curation.toml                     # sources, filters, dedup, balance
  lmforge curate --report DATASET                           # what each step removed, and why
  lmforge curate --presets                                  # the filters of each preset
"""


def _cli_sources(specs: list[str], preset: str | None, text_field: str, split: str
                 ) -> dict[str, Any]:
    sources: dict[str, Any] = {}
    for spec in specs:
        name, sep, paths = spec.partition("=")
        if not sep or not name.strip() or not paths.strip():
            raise LmforgeError(f"--source {spec!r}: expected NAME=PATH[,PATH...]",
                               hint="e.g. --source web='data/*.jsonl' (quote globs)")
        entry: dict[str, Any] = {"paths": [p.strip() for p in paths.split(",") if p.strip()],
                                 "text_field": text_field, "split": split}
        if preset:
            entry["preset"] = preset
        sources[name.strip()] = entry
    return sources


@app.command(rich_help_panel="Lifecycle stages", help=_HELP)
def curate(
    source: list[str] = typer.Option(
        [], "--source", "-s", help="Repeatable. NAME=PATH[,PATH...]: files, folders, globs, "
        "hf:NAME[:SPLIT], dataset ids, or 'pydocs'."),
    recipe: Path = typer.Option(None, "--recipe", "-r",
                                help="Curation TOML with tables \\[sources.NAME], "
                                     "\\[filters], \\[pii], \\[dedup], \\[decontaminate], "
                                     "\\[balance] (see the README)."),
    preset: str = typer.Option(None, help="Filter preset for --source sources: "
                                          f"{', '.join(PRESETS)} (default: web; docs for "
                                          "pydocs)."),
    workers: int = typer.Option(None, "--workers", "-j", help="Worker processes (or tasks)."),
    executor: str = typer.Option(None, help="processes (default) or datatrove: runs every "
                                           "phase as datatrove tasks (same output)."),
    text_field: str = typer.Option("text", help="JSONL/Parquet field holding the text."),
    split: str = typer.Option("auto", help=f"Text files: {', '.join(SPLITS)}."),
    decontaminate: list[str] = typer.Option(
        [], "--decontaminate", help="Repeatable. A built-in eval set to remove 13-gram "
        "overlaps with (hellaswag, arc_easy, ...)."),
    report: str = typer.Option(None, "--report", help="Show the report of a curated dataset "
                                                      "instead of curating."),
    examples: int = typer.Option(3, help="Examples shown per removal reason (--report)."),
    png: Path = typer.Option(None, help="With --report: also write the funnel chart here."),
    presets: bool = typer.Option(False, "--presets", help="List the presets and exit."),
    keep_run: bool = typer.Option(False, help="Keep the run folder (shards) after success."),
) -> None:
    if presets:
        _show_presets()
        return
    ws = workspace()
    if report:
        _show_report(ws, report, examples, png)
        return
    from lmforge.curate.config import load_config_file
    from lmforge.curate.stage import CurateSettings
    from lmforge.curate.stage import run as run_curate

    raw: dict[str, Any] = load_config_file(recipe) if recipe else {}
    if source:
        raw.setdefault("sources", {}).update(_cli_sources(source, preset, text_field, split))
    if workers is not None:
        raw["workers"] = workers
    if executor is not None:
        raw["executor"] = executor
    if decontaminate:
        dec = raw.setdefault("decontaminate", {})
        dec["builtin"] = list(dict.fromkeys([*dec.get("builtin", []), *decontaminate]))
    if not raw.get("sources"):
        raise LmforgeError("nothing to curate", hint="pass --source NAME=PATH or --recipe FILE "
                                                     "(see lmforge curate --help)")
    where = str(recipe) if recipe else "command line"
    out = run_curate(ws, CurateSettings(raw, where, keep_run))
    console.print(f"dataset [bold]{out.artifact.id}[/]: {out.summary}", highlight=False)
    console.print(f"report: lmforge curate --report {out.artifact.id}")


def _show_report(ws, ref: str, examples: int, png: Path | None) -> None:
    from lmforge.curate.report import render_report, save_funnel_png
    from lmforge.curate.stage import load_stats

    art, stats = load_stats(ws, ref)
    console.print(f"[bold]curation report[/] of dataset {art.id}")
    render_report(stats, console, examples=examples)
    if png:
        console.print(f"funnel chart: {save_funnel_png(stats, png)}")


def _show_presets() -> None:
    from rich.table import Table

    from lmforge.curate.filters import PRESETS, describe_preset

    for name in PRESETS:
        table = Table(title=f"preset {name}", show_lines=False)
        table.add_column("filter", no_wrap=True)
        table.add_column("settings")
        for filter_name, fields in describe_preset(name):
            table.add_row(filter_name, ", ".join(f"{k}={v}" for k, v in fields.items()))
        console.print(table)
