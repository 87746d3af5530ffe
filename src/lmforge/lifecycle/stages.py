"""The stages a recipe can name: each adapts one stage function to (workspace, settings).

A stage returns the artifact it made (or None for a report-only step) and a one-line summary.
"@step" references arrive here already replaced by artifact ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from lmforge.curate.config import resolve_path
from lmforge.curate.stage import curate_stage
from lmforge.data.stage import (
    clean_stage,
    register_files,
    register_pydocs,
    tokenize_stage,
    train_tokenizer_stage,
)
from lmforge.design.stage import DesignSettings
from lmforge.design.stage import run as run_design
from lmforge.errors import LmforgeError
from lmforge.eval.stage import EvalStageSettings
from lmforge.eval.stage import run as run_eval
from lmforge.lifecycle.compare import CompareSettings
from lmforge.lifecycle.compare import run as run_compare
from lmforge.model.stage import InitSettings
from lmforge.model.stage import run as run_init
from lmforge.registry import Workspace
from lmforge.stage import Outcome, check_keys
from lmforge.train.stage import PretrainSettings
from lmforge.train.stage import run as run_pretrain


@dataclass
class Context:
    ws: Workspace
    base_dir: Path  # relative paths in a recipe are relative to the recipe file
    console: Console
    show_progress: bool = True


@dataclass
class StepOutput:
    artifact: str | None
    summary: str


def corpus(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    check_keys(p, f"step '{step}'", optional=("source",))
    if p.get("source", "pydocs") != "pydocs":
        raise LmforgeError(f"step '{step}': the only embedded corpus is 'pydocs'",
                           hint="use stage = \"files\" for your own data")
    art = register_pydocs(ctx.ws)
    return StepOutput(art.id, f"{art.metrics['documents']:,} documents, "
                              f"{art.metrics['characters']:,} characters")


def files(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    check_keys(p, f"step '{step}'", required=("paths",), optional=("text_field", "name", "split"))
    paths = [str(ctx.base_dir / x) for x in
             (p["paths"] if isinstance(p["paths"], list) else [p["paths"]])]
    art = register_files(ctx.ws, paths, p.get("text_field", "text"), p.get("name", step),
                         split=p.get("split", "auto"))
    return StepOutput(art.id, f"{art.metrics['documents']:,} documents, "
                              f"{art.metrics['characters']:,} characters")


def clean(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    check_keys(p, f"step '{step}'", required=("data",), optional=("min_chars", "max_chars"))
    art = clean_stage(ctx.ws, p["data"], **{k: v for k, v in p.items() if k != "data"})
    stats = art.metrics
    return StepOutput(art.id, f"kept {stats['kept']:,} of {stats['input']:,} documents "
                              f"({', '.join(f'{v} {k}' for k, v in stats['removed'].items())})")


def curate(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    """A curation step: the keys of a curation TOML (sources, filters, dedup, ...) inline."""
    raw = {k: v for k, v in p.items()}
    sources = raw.get("sources")
    if isinstance(sources, dict):  # paths relative to the recipe file
        for name, src in sources.items():
            entry = dict(src) if isinstance(src, dict) else {"paths": src}
            paths = entry.get("paths", [])
            entry["paths"] = [resolve_path(x, ctx.base_dir) for x in
                              (paths if isinstance(paths, list) else [paths])]
            sources[name] = entry
    art = curate_stage(ctx.ws, raw, where=f"step '{step}'", show_progress=ctx.show_progress)
    m = art.metrics
    kept = ", ".join(f"{n} {s['documents_out']:,}/{s['documents_in']:,}"
                     for n, s in m["sources"].items())
    return StepOutput(art.id, f"{m['documents']:,} documents kept ({kept})")


def tokenizer(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    check_keys(p, f"step '{step}'", required=("data", "vocab_size"), optional=("min_frequency",))
    art = train_tokenizer_stage(ctx.ws, [p["data"]], p["vocab_size"],
                                p.get("min_frequency", 2), show_progress=False)
    return StepOutput(art.id, f"byte-level BPE, {art.metrics['vocab_size']} tokens")


def tokenize(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    check_keys(p, f"step '{step}'", required=("data", "tokenizer"),
               optional=("val_fraction", "seed", "val_data"))
    art = tokenize_stage(ctx.ws, p["data"], p["tokenizer"], p.get("val_fraction"),
                         p.get("seed", 0), show_progress=ctx.show_progress,
                         val_data=p.get("val_data"))
    m = art.metrics
    return StepOutput(art.id, f"{m['train_tokens']:,} train / {m['val_tokens']:,} val tokens")


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
    "corpus": corpus, "files": files, "clean": clean, "curate": curate, "tokenizer": tokenizer,
    "design": seam(DesignSettings, run_design), "init": seam(InitSettings, run_init),
    "tokenize": tokenize, "pretrain": seam(PretrainSettings, run_pretrain),
    "eval": seam(EvalStageSettings, run_eval), "compare": seam(CompareSettings, run_compare),
}
