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
from lmforge.design.spec import from_preset, load_toml
from lmforge.design.stage import apply_overrides, register_design
from lmforge.errors import LmforgeError
from lmforge.eval.stage import eval_stage
from lmforge.lifecycle.compare import compare_samples
from lmforge.model.stage import init_stage
from lmforge.registry import Workspace
from lmforge.train.settings import TrainSettings
from lmforge.train.stage import pretrain_stage


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


def _take(params: dict[str, Any], step: str, required: tuple[str, ...] = (),
          optional: tuple[str, ...] = ()) -> dict[str, Any]:
    unknown = sorted(set(params) - set(required) - set(optional))
    if unknown:
        raise LmforgeError(f"step '{step}': unknown setting(s) {', '.join(unknown)}",
                           hint=f"valid: {', '.join(required + optional)}")
    missing = [k for k in required if k not in params]
    if missing:
        raise LmforgeError(f"step '{step}': missing setting(s) {', '.join(missing)}")
    return params


def corpus(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    _take(p, step, optional=("source",))
    if p.get("source", "pydocs") != "pydocs":
        raise LmforgeError(f"step '{step}': the only embedded corpus is 'pydocs'",
                           hint="use stage = \"files\" for your own data")
    art = register_pydocs(ctx.ws)
    return StepOutput(art.id, f"{art.metrics['documents']:,} documents, "
                              f"{art.metrics['characters']:,} characters")


def files(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    _take(p, step, required=("paths",), optional=("text_field", "name", "split"))
    paths = [str(ctx.base_dir / x) for x in
             (p["paths"] if isinstance(p["paths"], list) else [p["paths"]])]
    art = register_files(ctx.ws, paths, p.get("text_field", "text"), p.get("name", step),
                         split=p.get("split", "auto"))
    return StepOutput(art.id, f"{art.metrics['documents']:,} documents, "
                              f"{art.metrics['characters']:,} characters")


def clean(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    _take(p, step, required=("data",), optional=("min_chars", "max_chars"))
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
    _take(p, step, required=("data", "vocab_size"), optional=("min_frequency",))
    art = train_tokenizer_stage(ctx.ws, [p["data"]], p["vocab_size"],
                                p.get("min_frequency", 2), show_progress=False)
    return StepOutput(art.id, f"byte-level BPE, {art.metrics['vocab_size']} tokens")


def design(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    p = dict(p)
    preset, file = p.pop("preset", None), p.pop("file", None)
    if (preset is None) == (file is None):
        raise LmforgeError(f"step '{step}': give exactly one of preset or file")
    base = from_preset(preset) if preset else load_toml(ctx.base_dir / file)
    art, report = register_design(ctx.ws, apply_overrides(base, **p))
    return StepOutput(art.id, f"{art.name}: {report['params']['total']:,} parameters")


def init(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    _take(p, step, required=("design", "tokenizer"), optional=("scheme", "seed"))
    art = init_stage(ctx.ws, p["design"], p["tokenizer"], p.get("scheme", "gpt2"),
                     p.get("seed", 0))
    return StepOutput(art.id, f"model v0, {art.metrics['params']:,} parameters")


def tokenize(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    _take(p, step, required=("data", "tokenizer"), optional=("val_fraction", "seed", "val_data"))
    art = tokenize_stage(ctx.ws, p["data"], p["tokenizer"], p.get("val_fraction"),
                         p.get("seed", 0), show_progress=ctx.show_progress,
                         val_data=p.get("val_data"))
    m = art.metrics
    return StepOutput(art.id, f"{m['train_tokens']:,} train / {m['val_tokens']:,} val tokens")


def pretrain(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    p = dict(p)
    model, data = p.pop("model", None), p.pop("data", None)
    if model is None or data is None:
        raise LmforgeError(f"step '{step}': pretrain needs model and data")
    settings = TrainSettings.from_dict(p, where=f"step '{step}'")
    art, result = pretrain_stage(ctx.ws, model, data, settings, show_progress=ctx.show_progress)
    bpb = f", val bpb {art.metrics['val_bpb']:.3f}" if "val_bpb" in art.metrics else ""
    return StepOutput(art.id, f"{result.steps} steps, {result.tokens:,} tokens in "
                              f"{result.seconds:.0f} s; val loss {result.val_loss:.3f}{bpb}")


def _headline(metrics: dict[str, Any]) -> tuple[str, Any]:
    """The one metric a summary line shows for a task."""
    for name in ("acc_norm", "bpb", "prompt_level_acc", "acc"):
        if name in metrics:
            return name, metrics[name]
    return next(iter(metrics.items()))


def evaluation(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    _take(p, step, required=("model",),
          optional=("suite", "tasks", "gates", "limit", "batch_size", "seed", "data_root",
                    "max_new_tokens"))
    settings = {k: v for k, v in p.items() if k not in ("model", "tasks", "data_root")}
    # A task file is relative to the recipe; anything else is built-in task names.
    tasks = str(ctx.base_dir / p["tasks"]) if str(p.get("tasks", "")).endswith(".toml") \
        else p.get("tasks")
    data_root = str(ctx.base_dir / p["data_root"]) if "data_root" in p else None
    art, report = eval_stage(ctx.ws, p["model"], tasks=tasks, data_root=data_root,
                             show_progress=ctx.show_progress, **settings)
    shown = ", ".join(f"{task}/{name} {m['value']:.3f}±{m['stderr']:.3f}"
                      for task, entry in report["tasks"].items()
                      for name, m in [_headline(entry["metrics"])])
    passed = report["gates"]["passed"]
    verdict = "" if passed is None else ("; gates passed" if passed else "; gates FAILED")
    return StepOutput(art.id, shown + verdict)


def compare(ctx: Context, step: str, p: dict[str, Any]) -> StepOutput:
    _take(p, step, required=("models",), optional=("prompt", "max_tokens", "seed"))
    compare_samples(ctx.ws, p["models"], p.get("prompt", "What does os.path.join do?"),
                    p.get("max_tokens", 48), p.get("seed", 0), ctx.console)
    return StepOutput(None, "samples side by side")


STAGES: dict[str, Callable[[Context, str, dict[str, Any]], StepOutput]] = {
    "corpus": corpus, "files": files, "clean": clean, "curate": curate, "tokenizer": tokenizer,
    "design": design, "init": init, "tokenize": tokenize, "pretrain": pretrain,
    "eval": evaluation, "compare": compare,
}
