"""`lmforge run`: the quickstart lifecycle in one command."""

from __future__ import annotations

import time

import typer

from lmforge.cli.app import app, console, workspace
from lmforge.lifecycle.quickstart import QuickstartSettings, run_quickstart


@app.command(rich_help_panel="Start here",
             help="Run the quickstart lifecycle on the embedded corpus (the documentation "
                  "shipped with Python): corpus, tokenizer, design, init, sample. Running it "
                  "again reuses every artifact whose inputs are unchanged.")
def run(
    preset: str = typer.Option("tiny", help="Design preset for the model."),
    vocab_size: int = typer.Option(4096, help="Tokenizer and model vocabulary size."),
    seed: int = typer.Option(0, help="Seed for initialization and sampling."),
) -> None:
    start = time.perf_counter()
    ids = run_quickstart(workspace(), QuickstartSettings(preset, vocab_size, seed=seed), console)
    console.print(f"done in {time.perf_counter() - start:.1f} s; see the lineage with "
                  f"`lmforge registry lineage {ids['model']}`")
