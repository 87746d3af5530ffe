"""Run a recipe's steps in order; skip every step whose stage, settings and inputs are
unchanged since it last produced an artifact that still exists.

The cache maps a step's key (a digest of stage + settings with "@step" references replaced by
the input artifact ids) to its output id, one small file per key under `<workspace>/cache/`,
written atomically. Training stages also resume from their own checkpoints, so re-running a
recipe after a kill picks up mid-training.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from lmforge import __version__
from lmforge.errors import LmforgeError
from lmforge.lifecycle.recipe import Recipe
from lmforge.lifecycle.stages import STAGES, Context, StepOutput
from lmforge.registry import Workspace, atomic_write_json


@dataclass
class StepResult:
    name: str
    stage: str
    artifact: str | None
    summary: str
    skipped: bool
    seconds: float


def resolve_references(params: dict[str, Any], outputs: dict[str, str | None], step: str
                       ) -> dict[str, Any]:
    def one(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("@"):
            produced = outputs[value[1:]]
            if produced is None:
                raise LmforgeError(f"step '{step}' refers to {value}, which makes no artifact")
            return produced
        return value

    def walk(value: Any) -> Any:  # tables nest (e.g. a curation step's [sources.NAME])
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return one(value)

    return walk(params)


def step_key(stage: str, params: dict[str, Any]) -> str:
    text = json.dumps({"stage": stage, "params": params, "lmforge": __version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cached_output(ws: Workspace, key: str) -> StepOutput | None:
    path = ws.root / "cache" / f"{key}.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if saved["artifact"] is not None:
            ws.record(saved["artifact"])  # still registered?
        return StepOutput(saved["artifact"], saved["summary"])
    except (json.JSONDecodeError, KeyError, LmforgeError):
        return None


def run_recipe(ws: Workspace, recipe: Recipe, console: Console, force: bool = False,
               show_progress: bool = True) -> list[StepResult]:
    ctx = Context(ws, recipe.path.parent, console, show_progress)
    outputs: dict[str, str | None] = {}
    results: list[StepResult] = []
    for step in recipe.steps:
        params = resolve_references(step.params, outputs, step.name)
        key = step_key(step.stage, params)
        start = time.perf_counter()
        # Report-only steps (no artifact) are cheap and always run.
        cached = None if force else cached_output(ws, key)
        if cached is not None and cached.artifact is not None:
            out, skipped = cached, True
        else:
            console.print(f"[bold cyan]→ {step.name}[/] ({step.stage})")
            out, skipped = STAGES[step.stage](ctx, step.name, params), False
            if out.artifact is not None:
                atomic_write_json(ws.root / "cache" / f"{key}.json",
                                  {"artifact": out.artifact, "summary": out.summary,
                                   "step": step.name, "recipe": recipe.name})
        outputs[step.name] = out.artifact
        result = StepResult(step.name, step.stage, out.artifact, out.summary, skipped,
                            time.perf_counter() - start)
        results.append(result)
        ctx.history.append(result)
        status = "[dim]unchanged, skipped[/]" if skipped else f"{result.seconds:.1f} s"
        console.print(f"[green]✓ {step.name:<10}[/] {out.artifact or '':<24} {out.summary} "
                      f"({status})", highlight=False)
    return results


def results_table(results: list[StepResult]) -> Table:
    table = Table(title="recipe steps")
    for column in ("step", "stage", "artifact", "result", "time"):
        table.add_column(column, no_wrap=column in ("step", "artifact"))
    for r in results:
        table.add_row(r.name, r.stage, r.artifact or "-", r.summary,
                      "skipped" if r.skipped else f"{r.seconds:.1f} s")
    return table
