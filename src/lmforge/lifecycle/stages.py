"""The stages a recipe can name. Every stage exports a settings type and one run function
(lmforge/stage.py); a recipe step builds the settings from its table and calls the run
function, exactly as the stage's CLI verb does from its flags.

A step returns the artifact it made (or None for a report-only step) and a one-line summary.
"@step" references arrive here already replaced by artifact ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from lmforge.curate.stage import CurateSettings
from lmforge.curate.stage import run as run_curate
from lmforge.data.stage import (
    CorpusSettings,
    FilesSettings,
    TokenizerSettings,
    TokenizeSettings,
    run_corpus,
    run_files,
    run_tokenize,
    run_tokenizer,
)
from lmforge.design.stage import DesignSettings
from lmforge.design.stage import run as run_design
from lmforge.eval.judge_stage import JudgeSettings
from lmforge.eval.judge_stage import run as run_judge
from lmforge.eval.stage import EvalStageSettings
from lmforge.eval.stage import run as run_eval
from lmforge.lifecycle.compare import CompareSettings
from lmforge.lifecycle.compare import run as run_compare
from lmforge.lifecycle.feedback_sim import SimulateFeedbackSettings
from lmforge.lifecycle.feedback_sim import run as run_simulate_feedback
from lmforge.lifecycle.feedback_tune import FeedbackTuneSettings
from lmforge.lifecycle.feedback_tune import run as run_feedback_tune
from lmforge.lifecycle.registry_stage import (
    DeprecateSettings,
    PromoteSettings,
    RetireSettings,
    promote,
    run_deprecate,
    run_retire,
)
from lmforge.lifecycle.serve_stage import ServeSmokeSettings
from lmforge.lifecycle.serve_stage import run as run_serve_smoke
from lmforge.lifecycle.summary import CardSettings, run_card, run_summary
from lmforge.model.stage import InitSettings
from lmforge.model.stage import run as run_init
from lmforge.redteam.compare_stage import RedteamCompareSettings
from lmforge.redteam.compare_stage import run as run_redteam_compare
from lmforge.redteam.safety_data import SafetyDataSettings
from lmforge.redteam.safety_data import run as run_safety_data
from lmforge.redteam.stage import RedteamSettings
from lmforge.redteam.stage import run as run_redteam
from lmforge.registry import Workspace
from lmforge.stage import Outcome
from lmforge.train.finetune import FinetuneSettings
from lmforge.train.finetune import run as run_finetune
from lmforge.train.stage import PretrainSettings
from lmforge.train.stage import run as run_pretrain


@dataclass
class Context:
    ws: Workspace
    base_dir: Path  # relative paths in a recipe are relative to the recipe file
    console: Console
    show_progress: bool = True
    history: list[Any] = field(default_factory=list)  # the run's StepResults so far (summary)


@dataclass
class StepOutput:
    artifact: str | None
    summary: str


def seam(settings_type: Any, run: Callable[..., Outcome]
         ) -> Callable[[Context, str, dict[str, Any]], StepOutput]:
    """A recipe step of a stage that exports settings (from_dict) and a run function."""

    def step(ctx: Context, name: str, params: dict[str, Any]) -> StepOutput:
        settings = settings_type.from_dict(params, f"step '{name}'", ctx.base_dir)
        out = run(ctx.ws, settings, show_progress=ctx.show_progress)
        if out.show is not None:
            ctx.console.print(out.show)
        return StepOutput(out.artifact.id if out.artifact else None, out.summary)

    return step


STAGES: dict[str, Callable[[Context, str, dict[str, Any]], StepOutput]] = {
    "corpus": seam(CorpusSettings, run_corpus),
    "files": seam(FilesSettings, run_files),
    "curate": seam(CurateSettings, run_curate),
    "tokenizer": seam(TokenizerSettings, run_tokenizer),
    "design": seam(DesignSettings, run_design),
    "init": seam(InitSettings, run_init),
    "tokenize": seam(TokenizeSettings, run_tokenize),
    "pretrain": seam(PretrainSettings, run_pretrain),
    "finetune": seam(FinetuneSettings, run_finetune),
    "feedback-finetune": seam(FeedbackTuneSettings, run_feedback_tune),
    "eval": seam(EvalStageSettings, run_eval),
    "compare": seam(CompareSettings, run_compare),
    "judge": seam(JudgeSettings, run_judge),
    "redteam": seam(RedteamSettings, run_redteam),
    "safety-data": seam(SafetyDataSettings, run_safety_data),
    "redteam-compare": seam(RedteamCompareSettings, run_redteam_compare),
    "promote": seam(PromoteSettings, promote),
    "deprecate": seam(DeprecateSettings, run_deprecate),
    "retire": seam(RetireSettings, run_retire),
    "serve-smoke": seam(ServeSmokeSettings, run_serve_smoke),
    "simulate-feedback": seam(SimulateFeedbackSettings, run_simulate_feedback),
    "card": seam(CardSettings, run_card),
    "summary": run_summary,  # last: it reads ctx.history
}

