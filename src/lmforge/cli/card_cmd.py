"""`lmforge card`: the model card, generated from the record."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import typer

from lmforge.cli.app import app, console, workspace
from lmforge.errors import LmforgeError
from lmforge.lifecycle.card import gather
from lmforge.lifecycle.card_render import to_markdown, write_html, write_markdown


@app.command(rich_help_panel="The record",
             help="The model card of MODEL, generated from the record alone: design, data "
                  "(sources, curation stats, tokenizer), training runs (steps, tokens, losses, "
                  "loss curves), evaluations and red-team results with their gates, lineage, "
                  "state history (forced moves shown first), deprecation, intended use and "
                  "limits. Markdown with Hugging Face front matter on stdout, or --out "
                  "card.md (loss curves written beside it), or --html DIR (index.html with the "
                  "plots, and README.md). Regenerate it whenever the record changes; "
                  "`lmforge export --format hf` puts it in the export as README.md.")
def card(
    model: str = typer.Argument(..., help="Model artifact id, id prefix or alias."),
    out: Path = typer.Option(None, "--out", "-o",
                             help="Write the Markdown here (loss-curve PNGs and their CSVs "
                                  "beside it) instead of printing it."),
    html_dir: Path = typer.Option(None, "--html",
                                  help="Also write DIR/index.html with the loss curves beside "
                                       "it (PNG with matplotlib, else SVG) and DIR/README.md."),
    license: str = typer.Option("unknown", "--license",
                                help="The license for the front matter (a Hugging Face "
                                     "license id, e.g. apache-2.0); the record holds none."),
    as_json: bool = typer.Option(False, "--json",
                                 help="Print everything gathered from the record as JSON."),
) -> None:
    data = gather(workspace(), model)
    if as_json:
        print(json.dumps(dataclasses.asdict(data), indent=2, ensure_ascii=False))
        return
    if out is None and html_dir is None:
        sys.stdout.write(to_markdown(data, license=license))
        return
    if out is not None:
        if out.is_dir():
            raise LmforgeError(f"{out} is a folder", "pass a file name, e.g. --out card.md, "
                                                     "or use --html DIR for a folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        plots = write_markdown(data, out, license)
        extra = f" and {len(plots.files)} loss curve(s) beside it" if plots and plots.files \
            else ""
        console.print(f"wrote {out}{extra}", highlight=False)
    if html_dir is not None:
        plots = write_html(data, html_dir, license)
        kinds = sorted({Path(f).suffix[1:].upper() for f in plots.files.values()})
        curves = f" with {len(plots.files)} loss curve(s) ({', '.join(kinds)})" \
            if plots.files else ""
        console.print(f"wrote {html_dir / 'index.html'}{curves}", highlight=False)
        if plots.note:
            console.print(plots.note, highlight=False)
