"""`lmforge reproduce`: rebuild a model from the record alone and say, stage by stage, whether
the rebuilt artifacts are bit-identical to the originals."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from lmforge.cli.app import app, console, workspace
from lmforge.errors import LmforgeError
from lmforge.lifecycle.reproduce import (
    StageResult,
    details,
    reproduce,
    results_table,
    scratch_note,
    verdict_text,
)
from lmforge.registry import Workspace


@app.command("reproduce", rich_help_panel="The record",
             help="Run again, from the record alone, every stage that made MODEL (its recorded "
                  "settings, seeds, thread count, and input files checked by sha256) in a "
                  "scratch workspace, and compare each rebuilt artifact with the original file "
                  "by file. Prints a table (stage, original id, rebuilt id, result, time): "
                  "identical (every sha256 as recorded), equivalent (only timings in logs, or "
                  "the ids of rebuilt inputs in text, differ), differs (weights: the largest "
                  "difference of any tensor element and of the logits on a fixed input), "
                  "corrupted (the original's files no longer match its manifest), or cannot "
                  "reproduce (why, e.g. an input file changed; later stages then read the "
                  "original). On a CPU with the recorded thread count, training is "
                  "bit-identical; on a GPU use --tolerance. Exit code 0 only if every stage "
                  "passes.")
def reproduce_cmd(
    model: str = typer.Argument(..., metavar="MODEL",
                                help="The artifact to rebuild (id, id prefix or alias); "
                                     "usually a model."),
    from_refs: list[str] = typer.Option(
        None, "--from",
        help="Take this artifact of the lineage, and everything it was made from, as it is "
             "instead of rebuilding it (repeatable): check only the later stages."),
    workdir: Path = typer.Option(
        None, "--workdir",
        help="Rebuild into this workspace folder and keep it (default: a temporary folder, "
             "removed at the end)."),
    tolerance: float = typer.Option(
        None, "--tolerance", min=0.0,
        help="Pass a stage whose weights differ by at most this much in any element (GPU "
             "kernels are not bit-reproducible); without it, only bit-identical passes."),
    as_json: bool = typer.Option(False, "--json",
                                 help="Print one JSON object per stage instead of the table."),
) -> None:
    ws = workspace()
    ws.record(model)  # an unknown reference is refused before any work

    def progress(r: StageResult) -> None:
        if as_json:
            print(json.dumps(r.to_dict()), flush=True)
        else:
            console.print(f"{r.stage:<10} {r.original:<24} {verdict_text(r)}", highlight=False)

    if workdir is not None and workdir.resolve() == ws.root:
        raise LmforgeError("--workdir is the workspace being reproduced",
                           "pass another folder: the rebuilt artifacts must stay apart")
    with tempfile.TemporaryDirectory(prefix="lmforge-reproduce-") as tmp:
        scratch_root = workdir if workdir is not None else Path(tmp)
        with Workspace.open(scratch_root) as scratch:
            results = reproduce(ws, model, scratch, from_refs or [], tolerance, progress)
    if not as_json:
        target = results[-1].original
        console.print(results_table(results, f"reproduce {target}"))
        for line in details(results):
            console.print(line, highlight=False, markup=False)
        failed = [r for r in results if not r.passed]
        console.print(scratch_note(scratch_root, workdir is not None), highlight=False)
        console.print("[green]every stage reproduced[/]" if not failed else
                      f"[red]{len(failed)} of {len(results)} stages did not reproduce[/]",
                      highlight=False)
    if any(not r.passed for r in results):
        raise typer.Exit(1)
