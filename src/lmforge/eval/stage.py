"""Evaluation as a stage (5: base testing, 7: chat testing): build the tasks of a suite and/or a
task file, evaluate the model, check the gates, and register the report as an `eval-report`
artifact whose parent is the exact model evaluated (its weights' sha256 is in the report).

`lmforge registry promote MODEL approved` looks for such a report with `gates_passed: true`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.eval.gates import check_gates_apply, check_sizes, evaluate_gates, parse_gates
from lmforge.eval.render_report import report_markdown
from lmforge.eval.runner import EvalSettings, evaluate
from lmforge.eval.suites import (
    DEFAULT_LIMIT,
    SUITES,
    Selection,
    parse_task_names,
    select_builtin,
)
from lmforge.eval.tasks import load_tasks_toml
from lmforge.model.io import load_model
from lmforge.registry import Artifact, Workspace, atomic_write_json, atomic_write_text
from lmforge.runtime import resolve_device
from lmforge.stage import Outcome, check_keys

REPORT_KIND = "eval-report"
CHAT_SUITE = "chat"
CHAT_TASKS = ("ifeval", "edge_cases", "pydocs_qa", "pydocs_tools")
ALL_SUITES = (*SUITES, CHAT_SUITE)


def _weights_sha256(art: Artifact | None, model_dir: Path) -> str:
    if art is not None and "model.safetensors" in art.files:
        return art.files["model.safetensors"]["sha256"]
    h = hashlib.sha256()
    with open(model_dir / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


TasksOption = str | Path | Sequence[str]


def task_option(value: TasksOption | None) -> tuple[Path | None, list[str] | None]:
    """`--tasks` (or a recipe step's `tasks`) as (task file, built-in names): a path ending
    in .toml is a task file; anything else is built-in task names, comma-separated as in
    lm-eval's `--tasks hellaswag,arc_easy` (or a list of them)."""
    if value is None:
        return None, None
    if isinstance(value, Path) or (isinstance(value, str)
                                   and value.strip().lower().endswith(".toml")):
        return Path(value), None
    parts = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    chat = [n.strip() for n in parts if n.strip() in CHAT_TASKS]
    if chat:
        raise LmforgeError(f"{', '.join(chat)} cannot be picked alone: the chat tasks run "
                           f"together as a suite", hint="lmforge eval MODEL --suite chat")
    return None, parse_task_names(parts)


def build_tasks(suite: str | None, tasks: TasksOption | None, data_root: str | None,
                limit: int | None) -> Selection:
    """The tasks to run: a suite's, a task file's and/or built-in ones picked by name; the
    selection also names the benchmarks the data root lacks."""
    tasks_file, names = task_option(tasks)
    if suite is None and tasks is None:
        raise LmforgeError("nothing to evaluate", hint=f"pass --suite ({', '.join(ALL_SUITES)})"
                                                       ", --tasks hellaswag,arc_easy or "
                                                       "--tasks FILE.toml")
    if suite is not None and suite not in ALL_SUITES:
        raise LmforgeError(f"unknown suite {suite!r}", hint=f"use one of: {', '.join(ALL_SUITES)}")
    if suite is not None and names is not None:
        raise LmforgeError(f"--tasks {','.join(names)} picks built-in tasks itself; "
                           f"it does not combine with --suite {suite}",
                           hint=f"lmforge eval MODEL --tasks {','.join(names)}")
    limit = limit or DEFAULT_LIMIT  # 0 or None: each built-in task's default cap
    selected = Selection([])
    if suite == "base":
        selected = select_builtin(data_root, limit)
    elif suite in SUITES:
        selected.tasks += SUITES[suite](data_root, limit)
    if names is not None:
        selected = select_builtin(data_root, limit, names)
    if tasks_file is not None:
        selected.tasks += load_tasks_toml(tasks_file)
    return selected


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """`task/metric` -> value: what the registry shows and gates read."""
    return {f"{task}/{name}": m["value"] for task, entry in report["tasks"].items()
            for name, m in entry["metrics"].items()}


@dataclass(frozen=True)
class EvalStageSettings:
    model: str  # a model artifact reference or a model folder
    suite: str | None = None  # base, pydocs or chat
    tasks: TasksOption | None = None  # a task TOML file, or built-in task names
    gates: tuple[str, ...] = ()  # "TASK/METRIC OP NUMBER"
    data_root: str | None = None  # folder of benchmark files
    limit: int | None = None  # items per task
    batch_size: int = 32
    seed: int = 0
    device: str | None = "auto"
    max_new_tokens: int = 64
    min_items: int | None = None  # a gated task measured on fewer items fails its gates

    def __post_init__(self) -> None:
        if self.min_items is not None and (not isinstance(self.min_items, int)
                                           or self.min_items < 1):
            raise LmforgeError(f"min_items must be a whole number of at least 1, got "
                               f"{self.min_items!r}", hint="e.g. min_items = 100")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path
                  ) -> EvalStageSettings:
        """A recipe step: a task file and a data root are relative to the recipe file."""
        check_keys(values, where, required=("model",),
                   optional=("suite", "tasks", "gates", "limit", "batch_size", "seed",
                             "data_root", "max_new_tokens", "device", "min_items"))
        values = dict(values)
        tasks_file, _ = task_option(values.get("tasks"))
        if tasks_file is not None:
            values["tasks"] = str(base_dir / tasks_file)
        if "data_root" in values:
            values["data_root"] = str(base_dir / values["data_root"])
        values["gates"] = tuple(values.get("gates", ()))
        return cls(**values)


def _headline(metrics: dict[str, Any]) -> tuple[str, Any] | None:
    """The one metric a summary line shows for a task (None when all its items were
    skipped and it has none)."""
    for name in ("acc_norm", "bpb", "prompt_level_acc", "acc"):
        if name in metrics:
            return name, metrics[name]
    return next(iter(metrics.items()), None)


def summary(report: dict[str, Any]) -> str:
    parts = []
    for task, entry in report["tasks"].items():
        headline = _headline(entry["metrics"])
        if headline is None:
            parts.append(f"{task} (every item skipped)")
        else:
            name, m = headline
            parts.append(f"{task}/{name} {m['value']:.3f}±{m['stderr']:.3f}")
    passed = report["gates"]["passed"]
    verdict = "" if passed is None else ("; gates passed" if passed else "; gates FAILED")
    return ", ".join(parts) + verdict


def run(ws: Workspace, s: EvalStageSettings, show_progress: bool = True) -> Outcome:
    """Evaluate a model (artifact ref or model folder) and register the report; the
    outcome's details are the report."""
    report, art, seconds = make_report(ws, s, show_progress)
    return Outcome(register_report(ws, report, art, seconds), summary(report), report)


def make_report(ws: Workspace, s: EvalStageSettings, show_progress: bool = True
                ) -> tuple[dict[str, Any], Artifact | None, float | None]:
    """(the report with its gates checked, the model's artifact or None for a folder, the
    seconds it took), registering nothing: stage 10 evaluates a successor before it is
    registered, and registers the report on it afterwards."""
    parsed_gates = parse_gates(list(s.gates), "gates")
    device = str(resolve_device(s.device))
    tasks_file, names = task_option(s.tasks)
    selected = build_tasks(s.suite, s.tasks, s.data_root, s.limit)
    model, tok, art = load_model(ws, s.model, device)
    if art is None:
        label = str(s.model)
    else:
        label = f"{art.id} ({art.name})" if art.name else art.id
    task_names = {t.name: t for t in selected.tasks}
    if s.suite == CHAT_SUITE:
        from lmforge.eval.chat_suite import require_chat_template

        require_chat_template(tok, f"model {label}")
        task_names.update(dict.fromkeys(CHAT_TASKS))
    check_gates_apply(parsed_gates, task_names)  # a gate typo fails before minutes of work
    settings = EvalSettings(batch_size=s.batch_size, seed=s.seed, limit=s.limit, device=device,
                            max_new_tokens=s.max_new_tokens,
                            style="chat" if s.suite == CHAT_SUITE else "plain")
    report = evaluate(model, tok, selected.tasks, settings, progress=show_progress,
                      suite=s.suite or "custom")
    if s.suite == CHAT_SUITE:
        from lmforge.eval.chat_suite import run_chat_suite

        report["tasks"].update(run_chat_suite(model, tok, settings, s.limit, show_progress))
    seconds = report.pop("seconds", None)
    model_dir = art.path if art is not None else Path(s.model)
    report["model"] = label
    report["model_id"] = art.id if art else None
    report["weights_sha256"] = _weights_sha256(art, model_dir)
    if tasks_file is not None:
        report["settings"]["tasks_file"] = str(tasks_file)
    if names is not None:
        report["settings"]["tasks"] = ",".join(names)
    if selected.absent:
        report["absent_tasks"] = selected.absent
    report["gates"] = evaluate_gates(parsed_gates, report)
    check_sizes(parsed_gates, report, s.min_items)
    return report, art, seconds


def register_report(ws: Workspace, report: dict[str, Any], model_art: Artifact | None,
                    seconds: float | None = None, extra_parents: dict[str, str] | None = None
                    ) -> Artifact:
    """Store report.json + report.md as an eval-report artifact of the evaluated model."""
    parents: dict[str, str] = dict(extra_parents or {})
    if model_art is not None:
        parents["model"] = model_art.id
    metrics: dict[str, Any] = {**flat_metrics(report),
                               "gates_passed": report.get("gates", {}).get("passed")}
    if seconds is not None:
        metrics["seconds"] = seconds  # in metrics, not the files: ids follow results only
    with ws.staging() as d:
        atomic_write_json(d / "report.json", report)
        atomic_write_text(d / "report.md", report_markdown(report))
        return ws.register(d, kind=REPORT_KIND, stage="eval", parents=parents or None,
                           settings={"suite": report.get("suite"), **report["settings"],
                                     "gates": [f"{r['metric']} {r['op']} {r['threshold']:g}"
                                               for r in report["gates"]["results"]]},
                           metrics=metrics,
                           name=f"eval-{report.get('suite')}")


def load_report(ws: Workspace, ref: str, suite: str | None = None) -> tuple[Artifact, dict]:
    """An eval report by its ref, or the newest report of a model (of `suite` if given)."""
    rec = ws.record(ref)
    if rec.kind == "model":
        reports = [r for r in ws.children(rec.id, kind=REPORT_KIND)
                   if suite is None or r.settings.get("suite") == suite]
        if not reports:
            which = f" of suite {suite!r}" if suite else ""
            raise LmforgeError(f"model {rec.id} has no eval report{which}",
                               hint=f"run `lmforge eval {rec.id} --suite pydocs` first")
        rec = reports[0]  # newest first
    elif rec.kind != REPORT_KIND:
        raise LmforgeError(f"{ref} is a {rec.kind}, not a model or an eval report")
    art = ws.resolve(rec.id, kind=REPORT_KIND)
    return art, json.loads(art.file("report.json").read_text())
