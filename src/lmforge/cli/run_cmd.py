"""`lmforge run`: a recipe's lifecycle in one command, resumable and incremental."""

from __future__ import annotations

import time

import typer

from lmforge.cli.app import app, console, workspace
from lmforge.errors import LmforgeError
from lmforge.lifecycle.recipe import load_recipe
from lmforge.lifecycle.runner import results_table, run_recipe
from lmforge.lifecycle.stages import STAGES
from lmforge.train.distributed import launched_world


@app.command(rich_help_panel="Start here",
             help="Run a recipe's stages in order (default: the built-in quickstart, all "
                  "eleven stages on the embedded corpus with small budgets: corpus, curate, "
                  "tokenizer, design, init, tokenize, pretrain, eval, sft, samples, tools, "
                  "reward, dpo, rlhf, judge; red teaming, safety tuning and a re-test; then "
                  "eval-chat, deploy, serve-smoke, feedback (simulated users), successor "
                  "(tuned on that feedback), redteam-successor, promote-successor, deprecate "
                  "and retire the first model, card, and a one-screen summary. recipes/full."
                  "toml is the same with full budgets; recipes/ holds more). Run again, it "
                  "skips every step whose inputs and settings are unchanged, and resumes an "
                  "interrupted training step from its checkpoint.")
def run(
    recipe: str = typer.Argument("quickstart",
                                 help="A recipe TOML file, or a built-in recipe name."),
    overrides: list[str] = typer.Option(
        [], "--set", "-s", help="Override a setting: STEP.KEY=VALUE (repeatable), e.g. "
                                "--set pretrain.tokens=500000; a key inside a table: "
                                "--set 'train.sources.stories.paths=[\"my/*.txt\"]'"),
    force: bool = typer.Option(False, help="Run every step even if unchanged."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    start = time.perf_counter()
    if launched_world().distributed:
        # A recipe mixes one-process steps (curation, evaluation, RLHF) with training ones;
        # the ranks other than 0 would leave after the first training step.
        raise LmforgeError("lmforge run does not run under torchrun",
                           hint="run the training commands themselves under torchrun "
                                "(lmforge pretrain / finetune), then the rest with lmforge "
                                "run: it skips the steps whose results are registered")
    plan = load_recipe(recipe, overrides, known_stages=tuple(STAGES))
    console.rule(f"[bold]lmforge run: {plan.name}")
    if plan.description:
        console.print(plan.description)
    results = run_recipe(workspace(), plan, console, force=force, show_progress=progress)
    if not results or results[-1].stage != "summary":  # a summary step printed its own
        console.print(results_table(results))
    last_model = next((r.artifact for r in reversed(results)
                       if r.artifact and r.artifact.startswith("model-")), None)
    console.print(f"done in {time.perf_counter() - start:.1f} s"
                  + (f"; lineage: lmforge registry lineage {last_model}" if last_model else ""))
