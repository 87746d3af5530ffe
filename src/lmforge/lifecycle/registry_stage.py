"""Registry moves as recipe steps: `promote` (up to approved or deployed, an alias moved with
it), `deprecate` (a sunset a number of days ahead, and the successor) and `retire` (with its
retirement report). Each is the same move `lmforge registry ...` makes, recorded with its
reason, so a recipe's lifecycle is in the record exactly as a person's would be.

A step that finds its model already where it should be records nothing and says so: a recipe
run again (or resumed after a failure further on) does not try to move a model twice.
A promote step returns the model it moved, so a later step can name it as `@step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.registry import ALLOWED_MOVES, Workspace
from lmforge.registry.approval import ApprovalPolicy
from lmforge.registry.retire import deprecate, parse_sunset
from lmforge.stage import Outcome, check_keys

# The ladder a promotion climbs; each rung is its own move with its own checks.
LADDER = ("approved", "deployed")
# States at or past a target: reaching them again is not a move to make.
PAST = {"approved": ("approved", "deployed", "deprecated", "retired", "archived"),
        "deployed": ("deployed", "deprecated", "retired", "archived")}


@dataclass(frozen=True)
class PromoteSettings:
    model: str
    to: str = "deployed"  # approved | deployed (through approved when not approved yet)
    alias: str | None = None  # pointed at the model once it is there (e.g. production)
    reason: str = "passed the recipe's gates"
    # The recipe's approval thresholds (min_items, min_harmful, min_benign, eval_gates,
    # max_attack_success, max_over_refusal), on top of those the reports recorded.
    policy: ApprovalPolicy = ApprovalPolicy()

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path) -> PromoteSettings:
        check_keys(values, where, required=("model",),
                   optional=("to", "alias", "reason", *ApprovalPolicy.KEYS))
        policy = ApprovalPolicy.from_dict(values, where)
        s = cls(**{k: v for k, v in values.items() if k not in ApprovalPolicy.KEYS},
                policy=policy)
        if s.to not in LADDER:
            raise LmforgeError(f"{where}: to = {s.to!r} is not a promotion",
                               hint="to = \"approved\" or to = \"deployed\"; deprecation and "
                                    "retirement are the `deprecate` and `retire` stages")
        return s


def _held_back(ws: Workspace, model_id: str) -> str | None:
    """Why a successor tuned on feedback must not be promoted: its own no-regression
    decision said HOLD (lifecycle/feedback_tune.py). None when it did not, or has none."""
    decision = ws.record(model_id).metrics.get("no_regression")
    if isinstance(decision, dict) and decision.get("passed") is False:
        return str(decision.get("reason", "it regressed on its predecessor's evaluations"))
    return None


def promote(ws: Workspace, s: PromoteSettings, show_progress: bool = True) -> Outcome:
    rec = ws.record(s.model, kind="model")
    held = _held_back(ws, rec.id)
    if held and rec.state not in PAST[s.to]:
        raise LmforgeError(f"{rec.id} was tuned on feedback and held back: {held}",
                           hint=f"see its comparison with `lmforge registry show {rec.id}`; "
                                "tune again with other settings (fewer steps, a lower lr), "
                                "or promote it by hand with `lmforge registry promote`")
    moves = []
    for rung in LADDER[:LADDER.index(s.to) + 1]:
        state = ws.state_of(rec.id)
        if state in PAST[rung]:
            continue
        ws.set_state(rec.id, rung, s.reason, policy=s.policy)
        moves.append(f"{state} -> {rung}")
    state = ws.state_of(rec.id)
    if state not in PAST[s.to]:  # pragma: no cover - set_state raises first
        raise LmforgeError(f"{rec.id} is {state}, not {s.to}")
    line = ", ".join(moves) if moves else f"already {state}"
    if s.alias:
        before = ws.aliases().get(s.alias)
        ws.set_alias(s.alias, rec.id, f"promoted to {s.to}: {s.reason}")
        if before != rec.id:
            line += f"; alias {s.alias} -> {rec.id}" + (f" (was {before})" if before else "")
    return Outcome(ws.resolve(rec.id, verify=False), line)


@dataclass(frozen=True)
class DeprecateSettings:
    model: str
    successor: str | None = None
    sunset_days: int = 90  # the sunset announced: today (UTC) + this many days
    sunset: str | None = None  # or a fixed ISO date instead
    reason: str = "superseded by its successor"

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path
                  ) -> DeprecateSettings:
        check_keys(values, where, required=("model",),
                   optional=("successor", "sunset_days", "sunset", "reason"))
        s = cls(**values)
        if not s.successor:
            raise LmforgeError(f"{where}: a deprecation needs the model that replaces it",
                               hint="add successor = \"@STEP\" (the step that made or "
                                    "promoted the new model) or a model id or alias: clients "
                                    "are told where to move")
        if s.sunset_days < 1:
            raise LmforgeError(f"{where}: sunset_days must be at least 1, got "
                               f"{s.sunset_days}", hint="clients need time to move; e.g. 90")
        return s

    def sunset_date(self) -> str:
        if self.sunset:
            return parse_sunset(self.sunset)
        day = datetime.now(timezone.utc).date() + timedelta(days=self.sunset_days)
        return day.isoformat()


def run_deprecate(ws: Workspace, s: DeprecateSettings, show_progress: bool = True) -> Outcome:
    rec = ws.record(s.model, kind="model")
    successor = ws.record(str(s.successor), kind="model").id
    if rec.state in ("deprecated", "retired", "archived"):
        line = f"already {rec.state}"
    else:
        if "deprecated" not in ALLOWED_MOVES.get(rec.state or "", ()):
            raise LmforgeError(f"{rec.id} is {rec.state}: only an approved or deployed model "
                               "is deprecated", hint="promote it first, or leave it out")
        event = deprecate(ws, rec.id, sunset=s.sunset_date(), successor=successor,
                          reason=s.reason)
        line = f"{event.from_state} -> deprecated, sunset {event.sunset}, successor {successor}"
    return Outcome(ws.resolve(rec.id, verify=False), line)


@dataclass(frozen=True)
class RetireSettings:
    model: str
    reason: str | None = None  # default: the deprecation's reason

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path) -> RetireSettings:
        check_keys(values, where, required=("model",), optional=("reason",))
        return cls(**values)


def run_retire(ws: Workspace, s: RetireSettings, show_progress: bool = True) -> Outcome:
    from lmforge.lifecycle.retirement import report_of, retire

    rec = ws.record(s.model, kind="model")
    event, report = retire(ws, rec.id, s.reason)
    if report is None:
        found = report_of(ws, rec.id)
        if found is None:  # pragma: no cover - retire() writes one when missing
            raise LmforgeError(f"{rec.id} is retired without a retirement report")
        report = ws.resolve(found.id, verify=False)
    moved = f"{event.from_state} -> retired" if event else f"already {rec.state}"
    served = report.metrics.get("requests")
    return Outcome(report, f"{rec.id} {moved}; retirement report {report.id}"
                   + (f" ({served} requests served)" if served is not None else ""))
