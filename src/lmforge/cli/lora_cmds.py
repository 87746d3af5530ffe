"""`lmforge merge-lora`: fold a LoRA adapter into its base, giving a plain model again."""

from __future__ import annotations

import typer

from lmforge.cli.app import app, console, workspace
from lmforge.model.lora import merge_adapter_stage


@app.command("merge-lora", rich_help_panel="Use and move models",
             help="Fold a LoRA adapter into its base model: a plain model again (state tuned).")
def merge_lora(
    adapter: str = typer.Argument(..., help="A lora-adapter artifact id, prefix or alias."),
) -> None:
    art = merge_adapter_stage(workspace(), adapter)
    console.print(f"[bold]{art.id}[/]: {art.parents['adapter']} merged into {art.parents['base']} "
                  f"({art.metrics['params']:,} parameters, state tuned)")
