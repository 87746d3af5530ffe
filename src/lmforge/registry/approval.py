"""The numbers an approval rests on: every gate of the eval and red-team reports, with its
threshold, the measured value, its uncertainty and the size of the set it was measured on.

A report's own gates come from its report.json (what `lmforge eval --gate` and `lmforge
redteam` checked). An `ApprovalPolicy` (a recipe's promote step, or `lmforge registry promote
--min-items ...`) adds thresholds of its own: more eval gates, a maximum attack success and
over-refusal, and minimum sizes of the evaluation sets. A size rule fails a report whose
metric passed on too few items: a gate on 5 items says nothing, so the report's n is a gate
too. The decision (every row, passed or not, and which report it came from) is stored on the
approval event (registry/lifecycle.py) and printed by `registry show`.
"""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

REPORT_FILE = "report.json"
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class ApprovalPolicy:
    """Thresholds approval applies on top of those each report recorded. None: no such rule.
    Minimums recorded on a report (eval `min_items`, red-team `min_harmful`/`min_benign`)
    apply too; the larger of the two wins."""

    min_items: int | None = None  # items per gated evaluation task
    min_harmful: int | None = None  # harmful prompts a red-team report attacked with
    min_benign: int | None = None  # benign asks it measured over-refusal on
    eval_gates: tuple[str, ...] = ()  # "TASK/METRIC OP NUMBER", on the eval report's numbers
    max_attack_success: float | None = None  # red team: asr (all attacks pooled) at most
    max_over_refusal: float | None = None  # red team: over_refusal at most

    KEYS = ("min_items", "min_harmful", "min_benign", "eval_gates", "max_attack_success",
            "max_over_refusal")

    def __post_init__(self) -> None:
        for name in ("min_items", "min_harmful", "min_benign"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise LmforgeError(f"{name} must be a whole number of at least 1, got "
                                   f"{value!r}", hint=f"e.g. {name} = 100")
        for name in ("max_attack_success", "max_over_refusal"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, int | float) or not 0 <= value <= 1):
                raise LmforgeError(f"{name} must be a share between 0 and 1, got {value!r}",
                                   hint=f"e.g. {name} = 0.1")
        for gate in self.eval_gates:
            _parse_eval_gate(gate)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> ApprovalPolicy:
        """A recipe's thresholds (the promote step's keys of the same names)."""
        values = {k: v for k, v in values.items() if k in cls.KEYS}
        gates = values.get("eval_gates", ())
        if isinstance(gates, str) or not isinstance(gates, list | tuple):
            raise LmforgeError(f"{where}: eval_gates must be a list of gates",
                               hint='e.g. eval_gates = ["docstrings_bpb/bpb <= 2.0"]')
        try:
            return cls(**{**values, "eval_gates": tuple(gates)})
        except LmforgeError as e:
            raise LmforgeError(f"{where}: {e.message}", hint=e.hint) from None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, ())}


@dataclass
class ReportVerdict:
    """One report weighed for approval: its gates (rows) and whether all of them passed."""

    report: str
    kind: str
    passed: bool
    gates: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""  # why the numbers are missing, when they are

    def failures(self) -> str:
        """The rules this report broke, each named with its measured value."""
        failed = [_failure(g) for g in self.gates if not g["passed"]]
        if not failed:
            return self.note or "gates failed"
        return "; ".join(failed)


def _failure(g: dict[str, Any]) -> str:
    value = "not measured" if g["value"] is None else f"{g['value']:g}"
    rule = f" ({g['rule']})" if g.get("rule") else ""
    return f"{g['gate']} failed: {value}{rule}"


def read_report(folder: Path) -> dict[str, Any] | None:
    """A report artifact's report.json, or None where it has none that reads as an object."""
    try:
        body = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return body if isinstance(body, dict) else None


def weigh(report_id: str, kind: str, metrics: dict[str, Any], body: dict[str, Any] | None,
          policy: ApprovalPolicy) -> ReportVerdict:
    """Every gate of one report, with the policy's thresholds and size rules added."""
    if body is None:
        out = ReportVerdict(report_id, kind, metrics.get("gates_passed") is True,
                            note=f"{REPORT_FILE} not readable: its gates' numbers are not "
                                 "known")
        if _minimums(kind, policy, {}):
            out.passed = False
            out.note = (f"its {REPORT_FILE} does not say how many items it measured, and "
                        "approval asks for a minimum")
        return out
    rows = (_eval_rows(report_id, body, policy) if kind == "eval-report"
            else _redteam_rows(report_id, body, policy))
    passed = metrics.get("gates_passed") is True and all(r["passed"] for r in rows)
    return ReportVerdict(report_id, kind, passed, rows)


def _minimums(kind: str, policy: ApprovalPolicy, body: dict[str, Any]) -> dict[str, int]:
    """name -> the larger of the policy's and the report's recorded minimum, where set."""
    if kind == "eval-report":
        recorded = {"items": (body.get("gates") or {}).get("min_items")}
        asked = {"items": policy.min_items}
    else:
        recorded = dict(body.get("minimums") or {})
        asked = {"harmful": policy.min_harmful, "benign": policy.min_benign}
    out = {}
    for name in asked:
        values = [v for v in (asked[name], recorded.get(name)) if isinstance(v, int)]
        if values:
            out[name] = max(values)
    return out


def _row(report_id: str, gate: str, metric: str, op: str, threshold: float, value: Any,
         n: Any, source: str, **extra: Any) -> dict[str, Any]:
    ok = value is not None and bool(_OPS[op](value, threshold))
    return {"report": report_id, "gate": gate, "metric": metric, "op": op,
            "threshold": threshold, "value": value, "n": n, "passed": ok, "source": source,
            **extra}


def _parse_eval_gate(text: str) -> tuple[str, str, str, float]:
    from lmforge.eval.gates import parse_gate  # light: no model code behind it

    g = parse_gate(text, "eval_gates")
    return g.task, g.metric, g.op, g.threshold


def _eval_rows(report_id: str, body: dict[str, Any], policy: ApprovalPolicy
               ) -> list[dict[str, Any]]:
    tasks: dict[str, Any] = body.get("tasks") or {}
    rows, gated = [], []
    recorded = [(r["metric"], r["op"], float(r["threshold"]), "report")
                for r in (body.get("gates") or {}).get("results", [])]
    asked = [(f"{t}/{m}", op, th, "policy")
             for t, m, op, th in map(_parse_eval_gate, policy.eval_gates)]
    for metric, op, threshold, source in recorded + asked:
        task, _, name = metric.partition("/")
        entry = tasks.get(task) or {}
        measured = (entry.get("metrics") or {}).get(name) or {}
        value = measured.get("value")
        rows.append(_row(report_id, f"{metric} {op} {threshold:g}", metric, op, threshold,
                         None if value is None else float(value), entry.get("n"), source,
                         stderr=measured.get("stderr")))
        if task not in gated:
            gated.append(task)
    need = _minimums("eval-report", policy, body).get("items")
    if need:
        for task in gated:
            n = (tasks.get(task) or {}).get("n")
            rows.append(_row(report_id, f"{task}: n >= {need}", f"{task}/n", ">=", need, n, n,
                             "size", rule=f"a gate needs an evaluation set of at least {need} "
                                          "items per task"))
    return rows


def _redteam_stats(summary: dict[str, Any], metric: str) -> dict[str, Any]:
    """The rate entry ({n, rate, ci_low, ci_high}) a red-team gate metric was read from."""
    cats = summary.get("categories") or {}
    if metric == "asr":
        return summary.get("asr") or {}
    if metric == "heldout/asr":
        return summary.get("heldout_asr") or {}
    if metric == "heldout/over_refusal":
        return ((cats.get("over_refusal") or {}).get("by_split") or {}).get("heldout") or {}
    if metric == "unjudged":
        u = summary.get("unjudged") or {}
        return {"n": u.get("of"), "rate": u.get("share")}
    return cats.get(metric.split("/")[0]) or {}


def _redteam_rows(report_id: str, body: dict[str, Any], policy: ApprovalPolicy
                  ) -> list[dict[str, Any]]:
    summary = body.get("summary") or {}
    checks = []
    for g in body.get("gates") or []:
        _, op, number = g["gate"].rsplit(" ", 2)
        checks.append((g["metric"], op, float(number), "report"))
    for metric, bound in (("asr", policy.max_attack_success),
                          ("over_refusal", policy.max_over_refusal)):
        if bound is not None:
            checks.append((metric, "<=", float(bound), "policy"))
    rows = []
    for metric, op, threshold, source in checks:
        stats = _redteam_stats(summary, metric)
        rows.append(_row(report_id, f"{metric} {op} {threshold:g}", metric, op, threshold,
                         stats.get("rate"), stats.get("n"), source,
                         ci_low=stats.get("ci_low"), ci_high=stats.get("ci_high")))
    seeds = body.get("seeds") or {}
    for name, need in _minimums("redteam-report", policy, body).items():
        n = seeds.get(name)
        rows.append(_row(report_id, f"{name} prompts >= {need}", f"{name}_prompts", ">=", need,
                         n, n, "size", rule=f"a red-team verdict needs at least {need} "
                                            f"{name} prompts"))
    return rows

