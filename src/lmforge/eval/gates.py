"""Gates: thresholds a recipe (or `--gate`) sets on evaluation metrics, deciding whether a model
may be promoted. A gate is `TASK/METRIC OP NUMBER`, e.g. `docstrings_mc/acc_norm >= 0.3` or
`wikitext/bpb <= 2.5`; OP is one of >=, <=, >, <. An eval report records each gate's value and
verdict, and `gates_passed` (all passed) is what `lmforge registry promote` checks."""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmforge.errors import LmforgeError

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_GATE = re.compile(r"^\s*([\w.\-]+)\s*/\s*([\w.\-]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Gate:
    task: str
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.task}/{self.metric} {self.op} {self.threshold:g}"


def parse_gate(text: str, where: str = "gate") -> Gate:
    m = _GATE.match(text) if isinstance(text, str) else None
    if m is None:
        raise LmforgeError(f"{where}: cannot read gate {text!r}",
                           hint="write TASK/METRIC OP NUMBER, e.g. 'wikitext/bpb <= 2.5' "
                                "(OP: >=, <=, >, <)")
    try:
        threshold = float(m.group(4))
    except ValueError:
        raise LmforgeError(f"{where}: {m.group(4)!r} in gate {text!r} is not a number") from None
    return Gate(m.group(1), m.group(2), m.group(3), threshold)


def parse_gates(texts: Sequence[str] | None, where: str = "gates") -> list[Gate]:
    if texts is None:
        return []
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise LmforgeError(f"{where}: gates must be a list of strings",
                           hint='e.g. gates = ["wikitext/bpb <= 2.5"]')
    return [parse_gate(t, where) for t in texts]


def check_gates_apply(gates: Sequence[Gate], tasks: dict[str, Any]) -> None:
    """Before any evaluation runs: every gate names a task being evaluated."""
    for g in gates:
        if g.task not in tasks:
            raise LmforgeError(f"gate '{g}' names task {g.task!r}, which this evaluation does "
                               "not run", hint=f"tasks: {', '.join(tasks) or 'none'}")


def evaluate_gates(gates: Sequence[Gate], report: dict[str, Any]) -> dict[str, Any]:
    """The report's `gates` section: each gate's value and verdict, and whether all passed."""
    results = []
    for g in gates:
        task = report["tasks"].get(g.task)
        if task is None:
            raise LmforgeError(f"gate '{g}': the report has no task {g.task!r}",
                               hint=f"tasks: {', '.join(report['tasks'])}")
        metric = task["metrics"].get(g.metric)
        if metric is None and not task["metrics"] and task.get("skipped", {}).get("n"):
            # Every item was skipped (too long for the model): nothing passed the gate.
            results.append({"metric": f"{g.task}/{g.metric}", "op": g.op,
                            "threshold": g.threshold, "value": None, "passed": False,
                            "note": "every item was skipped"})
            continue
        if metric is None:
            raise LmforgeError(f"gate '{g}': task {g.task!r} has no metric {g.metric!r}",
                               hint=f"metrics: {', '.join(task['metrics'])}")
        value = float(metric["value"])
        results.append({"metric": f"{g.task}/{g.metric}", "op": g.op, "threshold": g.threshold,
                        "value": value, "passed": bool(_OPS[g.op](value, g.threshold))})
    return {"results": results, "passed": all(r["passed"] for r in results) if results
            else None}


def check_sizes(gates: Sequence[Gate], report: dict[str, Any], min_items: int | None
                ) -> None:
    """With `min_items`, a gated task measured on fewer items fails the report's gates
    whatever its metric says (a gate on 5 items says nothing). Recorded in the `gates`
    section (`min_items`, `sizes`), where approval reads it again (registry/approval.py)."""
    if not min_items:
        return
    section = report["gates"]
    sizes = []
    for task in dict.fromkeys(g.task for g in gates):
        n = report["tasks"].get(task, {}).get("n", 0)
        sizes.append({"task": task, "n": n, "min_items": min_items, "passed": n >= min_items})
    section["min_items"], section["sizes"] = min_items, sizes
    if section["passed"] is not None and not all(x["passed"] for x in sizes):
        section["passed"] = False
