"""`lmforge design`: stage 1."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lmforge.cli.app import app, console, workspace
from lmforge.design.estimate import GPU_PEAK_FLOPS
from lmforge.design.report import design_table
from lmforge.design.spec import from_preset, preset_names
from lmforge.design.stage import DesignSettings
from lmforge.design.stage import run as run_design
from lmforge.errors import LmforgeError


@app.command(rich_help_panel="Lifecycle stages",
             help="Stage 1: design an architecture and see what it costs: parameters, "
                  "FLOPs/token, training memory, compute-optimal tokens, time on this machine, "
                  "and with --gpu/--gpus a plan for N GPUs.")
def design(
    preset: str = typer.Option(None, "--preset", "-p",
                               help=f"Start from a preset: {preset_names()}."),
    file: Path = typer.Option(None, "--file", "-f", help="A design TOML (\\[model] table)."),
    vocab_size: int = typer.Option(None, help="Override the vocabulary size."),
    context_length: int = typer.Option(None, help="Override the context length."),
    batch_size: int = typer.Option(8, help="Micro-batch (sequences) for the memory estimate."),
    gpu: str = typer.Option(None,
                            help=f"Also estimate time on a GPU: {', '.join(GPU_PEAK_FLOPS)} "
                                 "(any case)."),
    gpus: int = typer.Option(None, "--gpus", metavar="N",
                             help="Also plan data-parallel training on N GPUs of --gpu: memory "
                                  "per GPU under DDP and FSDP (with and without activation "
                                  "checkpointing), time, and which to use."),
    benchmark: bool = typer.Option(True, "--benchmark/--no-benchmark",
                                   help="Measure this machine's matmul peak for the time "
                                        "estimate."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    register: bool = typer.Option(True, "--register/--no-register",
                                  help="Record the design as an artifact in the workspace."),
) -> None:
    if (preset is None) == (file is None):
        raise LmforgeError("give exactly one of --preset or --file",
                           hint="e.g. lmforge design --preset tiny "
                                f"(presets: {preset_names()})")
    if preset is not None:
        from_preset(preset)  # an unknown name is refused as a preset, not as a reference
    if file is not None and not file.is_file():
        raise LmforgeError(f"design file not found: {file}",
                           hint="give a TOML file with a [model] table, or --preset")
    settings = DesignSettings(preset if preset is not None else str(file),
                              {"vocab_size": vocab_size, "context_length": context_length},
                              batch_size=batch_size, gpu=gpu, benchmark=benchmark,
                              register=register, gpus=gpus)
    report = run_design(workspace(), settings).details
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console.print(design_table(report))
    if "artifact" in report:
        console.print(f"registered design [bold]{report['artifact']}[/]")
