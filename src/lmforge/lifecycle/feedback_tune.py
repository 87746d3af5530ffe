"""Stage 10: a successor of a served model, tuned on what its users said, and kept only if it
does not forget what its predecessor could do.

    lmforge finetune production --from-feedback --since 2026-11-01

1. The predecessor's evaluations are read first (eval-report artifacts on it: their suites,
   task files, limits, seeds and gates). A predecessor without one is refused before anything
   trains: nothing could tell whether the successor forgot.
2. Its feedback is frozen into a `feedback-snapshot` (lifecycle/feedback_data.py), with
   counts of what each rule dropped. Too little left to train on is refused with the counts.
3. The predecessor is fine-tuned on the snapshot (SFT on liked answers, or DPO on pairs)
   through `lmforge finetune`'s own stage.
4. Before the successor is registered, it is evaluated on every suite of the predecessor, with
   the same settings and gates. Each checked metric (the gated ones; a report without gates:
   each task's headline metric) may get worse by at most `max_regression` (absolute), and the
   successor must pass the predecessor's gates. The decision, with the table behind it, is in
   the successor's metrics (`no_regression`, `promote`); its reports are registered on it.
5. The successor's parents are the predecessor (`base`) and the snapshot (`feedback`).

Default method: DPO with at least MIN_DPO_PAIRS pairs, else SFT. DPO uses both halves of the
signal (what users liked and what they did not), but a handful of pairs gives a validation
split of one or two and overfits; the liked answers alone are the safer use of little data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rich.table import Table

from lmforge.errors import LmforgeError
from lmforge.eval.stage import (
    ALL_SUITES,
    REPORT_KIND,
    EvalStageSettings,
    make_report,
    register_report,
)
from lmforge.eval.stage import summary as eval_summary
from lmforge.lifecycle.feedback_data import (
    DPO_FILE,
    SFT_FILE,
    FeedbackData,
    FeedbackRules,
    parse_since,
    snapshot,
)
from lmforge.registry import Artifact, Workspace
from lmforge.stage import Outcome, check_keys

MIN_DPO_PAIRS = 16
MIN_EXAMPLES = 2  # a training and a validation example, at the least
METHODS = ("sft", "dpo")
DPO_KEYS = ("beta", "dpo_loss", "label_smoothing", "sft_weight")
# Lower is better for these metric names; higher for every other headline (acc, acc_norm,
# prompt_level_acc ...). Only used for reports without gates, whose ops say the direction.
LOWER_IS_BETTER = ("bpb", "ppl", "perplexity", "word_perplexity", "byte_perplexity", "loss")


@dataclass(frozen=True)
class FeedbackTuneSettings:
    model: str  # the served model (id, prefix or alias such as `production`)
    method: str | None = None  # sft | dpo | None: dpo with >= MIN_DPO_PAIRS pairs, else sft
    rules: FeedbackRules = field(default_factory=FeedbackRules)
    also: tuple[str, ...] = ()  # other models whose feedback is read too
    stores: tuple[str, ...] = ()  # more store files (copied from other machines' replicas)
    max_regression: float = 0.02  # absolute, on each checked metric
    alias: str | None = None  # pointed at the successor when it passes
    train: tuple[tuple[str, Any], ...] = ()  # training settings (finetune's names)
    dpo: tuple[tuple[str, Any], ...] = ()  # beta, dpo_loss, label_smoothing, sft_weight
    val_fraction: float = 0.05
    device: str | None = None  # of training and evaluation

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in METHODS:
            raise LmforgeError(f"--from-feedback tunes with sft or dpo, not {self.method!r}",
                               hint="leave --method out (dpo with enough pairs, else sft), "
                                    "or pass --method sft or --method dpo")
        if not 0 <= self.max_regression < 1:
            raise LmforgeError(f"max_regression must be in [0, 1), got {self.max_regression}",
                               hint="e.g. --max-regression 0.02: each checked metric may "
                                    "lose at most 0.02")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path
                  ) -> FeedbackTuneSettings:
        """A recipe step: the fields above, the rules' fields (since, max_answer_chars ...),
        the DPO options, and training settings (steps, lr ...) by finetune's names."""
        values = dict(values)
        own = ("model", "method", "also", "stores", "max_regression", "alias",
               "val_fraction", "device")
        rule_keys = tuple(f.name for f in fields(FeedbackRules))
        mine = {k: values.pop(k) for k in own if k in values}
        rules = {k: values.pop(k) for k in rule_keys if k in values}
        dpo = {k: values.pop(k) for k in DPO_KEYS if k in values}
        check_keys(mine, where, required=("model",), optional=own)
        if "since" in rules:
            rules["since"] = parse_since(str(rules["since"]))
        for key in ("also", "stores"):
            if key in mine:
                listed = mine[key]
                mine[key] = (listed,) if isinstance(listed, str) else tuple(listed)
        if "stores" in mine:
            mine["stores"] = tuple(str(base_dir / p) for p in mine["stores"])
        from lmforge.train.finetune import training_settings

        training_settings(values, where, mine.get("method"))  # refuse unknown keys here
        return cls(rules=FeedbackRules(**rules), train=tuple(sorted(values.items())),
                   dpo=tuple(sorted(dpo.items())), **mine)


# ---- the predecessor's evaluations -----------------------------------------------------


@dataclass
class Baseline:
    """One evaluation of the predecessor, to be repeated on the successor."""

    report_id: str
    report: dict[str, Any]
    settings: EvalStageSettings  # model left to fill in


def baselines(ws: Workspace, model: Artifact, device: str | None) -> list[Baseline]:
    """The newest report of each distinct evaluation (suite and tasks) of `model`."""
    out: list[Baseline] = []
    seen: set[str] = set()
    for rec in ws.children(model.id, kind=REPORT_KIND):  # newest first
        art = ws.resolve(rec.id, kind=REPORT_KIND)
        report = json.loads(art.file("report.json").read_text())
        s = report.get("settings", {})
        suite = report.get("suite")
        tasks = s.get("tasks_file") or s.get("tasks")
        what = json.dumps([suite, tasks, s.get("limit")])
        if what in seen:
            continue
        seen.add(what)
        if tasks is None and suite not in ALL_SUITES:
            continue  # neither a suite nor tasks lmforge can run again
        if s.get("tasks_file") and not Path(s["tasks_file"]).is_file():
            raise LmforgeError(f"eval report {rec.id} of {model.id} read the task file "
                               f"{s['tasks_file']}, which is gone",
                               hint="put the file back, or evaluate the predecessor again "
                                    "with a task file that exists")
        gates = tuple(f"{g['metric']} {g['op']} {g['threshold']!r}"
                      for g in report.get("gates", {}).get("results", []))
        settings = EvalStageSettings(
            model="", suite=suite if suite in ALL_SUITES else None, tasks=tasks, gates=gates,
            limit=s.get("limit"), batch_size=s.get("batch_size", 32), seed=s.get("seed", 0),
            device=device or "auto", max_new_tokens=s.get("max_new_tokens", 64))
        out.append(Baseline(rec.id, report, settings))
    if not out:
        raise LmforgeError(f"model {model.id} has no evaluation to compare a successor with",
                           hint=f"evaluate it first with the gates it must keep, e.g. "
                                f"`lmforge eval {model.id} --suite pydocs --gate "
                                f"'docstrings_bpb/bpb <= 2.0'`")
    return out


# ---- no regression ---------------------------------------------------------------------


def _value(report: dict[str, Any], metric: str) -> float | None:
    task, _, name = metric.partition("/")
    m = report.get("tasks", {}).get(task, {}).get("metrics", {}).get(name)
    return None if m is None else float(m["value"])


def _checked(report: dict[str, Any]) -> list[tuple[str, bool]]:
    """(task/metric, higher is better) of the metrics a successor must not lose."""
    gates = report.get("gates", {}).get("results", [])
    if gates:
        return [(g["metric"], g["op"] in (">=", ">")) for g in gates]
    out = []
    for task, entry in report.get("tasks", {}).items():
        names = list(entry.get("metrics", {}))
        headline = next((n for n in ("acc_norm", "bpb", "prompt_level_acc", "acc")
                         if n in names), names[0] if names else None)
        if headline is not None:
            out.append((f"{task}/{headline}", headline not in LOWER_IS_BETTER))
    return out


def compare(before: dict[str, Any], after: dict[str, Any], tolerance: float
            ) -> list[dict[str, Any]]:
    """One row per checked metric: values, change, and whether it regressed beyond
    `tolerance` (a metric the successor lacks has regressed)."""
    rows = []
    gate_results = {g["metric"]: g["passed"] for g in after.get("gates", {}).get("results", [])}
    for metric, higher in _checked(before):
        old, new = _value(before, metric), _value(after, metric)
        if old is None:
            continue  # every item skipped on the predecessor: nothing to keep
        loss = None if new is None else (old - new if higher else new - old)
        rows.append({"suite": before.get("suite"), "metric": metric,
                     "better": "higher" if higher else "lower", "before": old, "after": new,
                     "change": None if new is None else new - old,
                     "regressed": loss is None or loss > tolerance + 1e-12,
                     "gate_passed": gate_results.get(metric)})
    return rows


def decision(rows: list[dict[str, Any]], reports: list[dict[str, Any]], tolerance: float
             ) -> dict[str, Any]:
    regressed = [r["metric"] for r in rows if r["regressed"]]
    failed = [r["metric"] for r in rows if r["gate_passed"] is False]
    gates_ok = all(rep.get("gates", {}).get("passed") is not False for rep in reports)
    promote = not regressed and gates_ok and bool(rows)
    if promote:
        why = f"no checked metric lost more than {tolerance:g}, and every gate passed"
    elif not rows:
        why = "no metric could be compared"
    else:
        why = "; ".join(p for p in (
            f"regressed beyond {tolerance:g}: {', '.join(regressed)}" if regressed else "",
            f"gates failed: {', '.join(failed)}" if failed or not gates_ok else "") if p)
    return {"passed": promote, "max_regression": tolerance, "reason": why, "checks": rows}


def comparison_table(rows: list[dict[str, Any]], tolerance: float) -> Table:
    t = Table(title=f"successor vs predecessor (max regression {tolerance:g})")
    for col in ("suite", "metric", "better", "before", "after", "change", "verdict"):
        t.add_column(col, justify="right" if col in ("before", "after", "change") else "left")
    for r in rows:
        after = "missing" if r["after"] is None else f"{r['after']:.4f}"
        change = "" if r["change"] is None else f"{r['change']:+.4f}"
        verdict = "REGRESSED" if r["regressed"] else "ok"
        if r["gate_passed"] is False:
            verdict += ", gate FAILED"
        t.add_row(str(r["suite"]), r["metric"], r["better"], f"{r['before']:.4f}", after,
                  change, verdict)
    return t


# ---- the stage -------------------------------------------------------------------------


def choose_method(requested: str | None, data: FeedbackData) -> str:
    if requested is not None:
        return requested
    return "dpo" if len(data.pairs) >= MIN_DPO_PAIRS else "sft"


def _check_enough(method: str, data: FeedbackData, snap: Artifact) -> None:
    have = len(data.pairs) if method == "dpo" else len(data.sft)
    what = "DPO pairs" if method == "dpo" else "SFT examples"
    prompts = {json.dumps(p["prompt"]) for p in data.pairs} if method == "dpo" else \
        {json.dumps(c["messages"]) for c in data.sft}
    if have < MIN_EXAMPLES or len(prompts) < MIN_EXAMPLES:
        other = "--method sft" if method == "dpo" else "--method dpo"
        raise LmforgeError(f"too little feedback to tune with {method}: {have} {what} "
                           f"({data.describe()}); snapshot {snap.id}",
                           hint=f"collect more ratings or reviews, widen --since, or try "
                                f"{other}; `lmforge registry show {snap.id}` lists the counts")


def run(ws: Workspace, s: FeedbackTuneSettings, show_progress: bool = True) -> Outcome:
    from lmforge.train.finetune import FinetuneSettings, training_settings
    from lmforge.train.finetune import run as run_finetune

    predecessor = ws.resolve(s.model, kind="model")
    plans = baselines(ws, predecessor, s.device)  # before any work: refused without one
    also = [ws.resolve(ref, kind="model") for ref in s.also]
    snap, data = snapshot(ws, predecessor, s.rules, also, [Path(p) for p in s.stores])
    method = choose_method(s.method, data)
    _check_enough(method, data, snap)
    train_values = dict(s.train)
    if s.device is not None:
        train_values["device"] = s.device
    settings = FinetuneSettings(
        predecessor.id, method, (str(snap.file(DPO_FILE if method == "dpo" else SFT_FILE)),),
        training_settings(train_values, "finetune settings", method),
        val_fraction=s.val_fraction, **(dict(s.dpo) if method == "dpo" else {}))
    judged: dict[str, Any] = {}

    def judge(folder: Path, metrics: dict[str, Any], parents: dict[str, Any]) -> None:
        """Evaluate the saved successor as its predecessor was, and decide."""
        parents["feedback"] = snap.id
        rows, reports = [], []
        for plan in plans:
            report, _, seconds = make_report(ws, replace(plan.settings, model=str(folder)),
                                             show_progress)
            reports.append((plan, report, seconds))
            rows += compare(plan.report, report, s.max_regression)
        verdict = decision(rows, [r for _, r, _ in reports], s.max_regression)
        metrics.update(predecessor=predecessor.id, feedback_snapshot=snap.id,
                       feedback=data.counts(), no_regression=verdict,
                       promote=verdict["passed"])
        judged.update(reports=reports, verdict=verdict)

    out = run_finetune(ws, settings, show_progress, before_register=judge)
    successor = out.artifact
    verdict = judged.get("verdict") or successor.metrics["no_regression"]
    report_ids = []
    for plan, report, seconds in judged.get("reports", []):
        report["model"] = f"{successor.id} ({successor.name})" if successor.name \
            else successor.id
        report["model_id"] = successor.id
        rep = register_report(ws, report, successor, seconds,
                              extra_parents={"baseline": plan.report_id})
        report_ids.append(f"{rep.id}: {eval_summary(report)}")
    if verdict["passed"] and s.alias:
        ws.set_alias(s.alias, successor.id)
    line = (f"{method} on feedback snapshot {snap.id} ({data.describe()}); {out.summary}; "
            f"{'PROMOTE' if verdict['passed'] else 'HOLD'}: {verdict['reason']}")
    if verdict["passed"] and s.alias:
        line += f"; alias {s.alias} -> {successor.id}"
    return Outcome(successor, line, {"snapshot": snap.id, "method": method,
                                     "decision": verdict, "reports": report_ids},
                   comparison_table(verdict["checks"], s.max_regression))
