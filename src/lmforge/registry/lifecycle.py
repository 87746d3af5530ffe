"""Model lifecycle states and the moves allowed between them.

A state belongs to one artifact: tuning makes a new model artifact (starting at `tuned`),
it does not move the old one. The rules are pure functions; `apply_move` checks them
against the registry and records the move.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.registry.approval import ApprovalPolicy, ReportVerdict, read_report, weigh
from lmforge.registry.artifact import Event
from lmforge.registry.db import Connection, write_transaction
from lmforge.registry.origin import actor, command_line
from lmforge.registry.resolve import find_id
from lmforge.registry.store import utc_now

LIFECYCLE_STATES: tuple[str, ...] = (
    "initialized", "pretrained", "tuned", "approved", "deployed",
    "deprecated", "retired", "archived",
)

# from-state -> states it may move to without force.
ALLOWED_MOVES: dict[str, tuple[str, ...]] = {
    "initialized": ("pretrained",),
    "pretrained": ("tuned", "approved"),
    "tuned": ("approved",),
    "approved": ("deployed", "deprecated"),
    "deployed": ("deprecated",),
    "deprecated": ("retired", "deployed"),  # deployed again = rollback
    "retired": ("archived", "deprecated"),  # deprecated again = restore
    "archived": ("retired", "deprecated"),  # restore
}

# A new artifact may start only here: approval and deployment are earned by moves.
INITIAL_STATES: tuple[str, ...] = ("initialized", "pretrained", "tuned")


@dataclass(frozen=True)
class ApprovalReport:
    """A report kind approval asks for. `command` makes one today; None while the stage that
    makes it is not built yet: such a report is then checked when one exists (a failing one
    blocks approval) but not required, and the approval's record says it went without."""

    kind: str
    what: str
    command: str | None


# Approval needs one passing report of each kind made from this exact model (DESIGN: an
# evaluation and a red-team report). A kind whose command is None would be checked when
# present but not required (how the red-team report was treated before `lmforge redteam`).
APPROVAL_REPORTS: tuple[ApprovalReport, ...] = (
    ApprovalReport("eval-report", "an evaluation",
                   "lmforge eval {id} --suite pydocs --gate 'docstrings_bpb/bpb <= 2.0'"),
    ApprovalReport("redteam-report", "a red-team report", "lmforge redteam {id} --suite builtin"),
)


def check_state_name(state: str) -> None:
    if state not in LIFECYCLE_STATES:
        raise LmforgeError(f"unknown lifecycle state {state!r}",
                           f"use one of: {', '.join(LIFECYCLE_STATES)}")


def move_problem(art_id: str, current: str, to: str) -> str | None:
    """Why `current -> to` is not allowed, or None when it is."""
    if to == current:
        return f"{art_id} is already {current}"
    if to not in ALLOWED_MOVES[current]:
        allowed = ", ".join(ALLOWED_MOVES[current]) or "nothing"
        return f"{art_id} cannot move from {current} to {to} (from {current} it can move to: " \
               f"{allowed})"
    return None


@dataclass
class Approval:
    """What approval lacks (`problems`, with `hints` that fix them), what it rests on
    (`basis`), and the decision: every gate weighed, with its numbers (registry/approval.py)."""

    problems: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    basis: list[str] = field(default_factory=list)
    decision: dict[str, Any] | None = None


# (id, kind, metrics, report.json or None) of a report naming the model as a parent.
Report = tuple[str, str, dict[str, Any], dict[str, Any] | None]


def check_approval(art_id: str, reports: list[Report],
                   policy: ApprovalPolicy | None = None) -> Approval:
    """Check approval of `art_id` against `reports` (oldest first) and `policy`'s thresholds.
    A report passes when its own gates passed and every gate and size rule of the policy
    holds on its numbers; the newest passing report of each kind is the one approval rests on,
    and the decision keeps its gates (or, where none passed, the newest report's)."""
    policy = policy or ApprovalPolicy()
    out, excused = Approval(), []
    weighed: list[dict[str, Any]] = []
    for need in APPROVAL_REPORTS:
        mine = [weigh(rid, k, m, body, policy) for rid, k, m, body in reports
                if k == need.kind]
        passed = [v for v in mine if v.passed]
        if mine:
            chosen = passed[-1] if passed else mine[-1]
            weighed.append({"kind": need.kind, "report": chosen.report, "passed": chosen.passed,
                            "gates": chosen.gates, **({"note": chosen.note}
                                                      if chosen.note else {})})
        if passed:
            out.basis.append(f"{passed[-1].report} passed its gates")
            continue
        if not mine and need.command is None:
            out.basis.append(f"without {need.what}: lmforge has no stage that makes one yet")
            excused.append(need.what)
            continue
        if mine:
            found = ", ".join(_why_not(v, m) for v, (_, _, m, _) in
                              zip(mine, [r for r in reports if r[1] == need.kind]))
            out.problems.append(f"no {need.kind} of {art_id} passed its gates ({found})")
        else:
            out.problems.append(f"{art_id} has no {need.kind} with gates, and approval needs "
                                f"{need.what} that passed its gates")
        if need.command:
            verb = "red-team" if need.kind == "redteam-report" else "evaluate"
            out.hints.append(f"{verb} it against the gates it must meet, e.g. "
                             f"`{need.command.format(id=art_id)}`")
    if out.problems and excused:
        # Say why only the evaluation is asked for, though the design asks for red teaming.
        out.hints.append(f"{' or '.join(excused)} is not needed until lmforge has a stage "
                         "that makes one")
    if any(g["source"] == "size" and not g["passed"] for r in weighed for g in r["gates"]):
        out.hints.append("measure on more items (a larger --limit; more seed prompts)")
    out.decision = {"passed": not out.problems, "policy": policy.to_json(), "reports": weighed}
    return out


def _why_not(verdict: ReportVerdict, metrics: dict[str, Any]) -> str:
    """Why one report does not carry approval, naming the rules it broke."""
    failed = [g for g in verdict.gates if not g["passed"]]
    if metrics.get("gates_passed") is None and not verdict.gates:
        return f"{verdict.report}: no gates"
    if metrics.get("gates_passed") is False:
        return f"{verdict.report}: gates failed" + (f" ({verdict.failures()})" if failed
                                                     else "")
    return f"{verdict.report}: {verdict.failures()}"


def _reports(conn: Connection, root: Path, art_id: str) -> list[Report]:
    """Every approval report naming `art_id` as a parent, with its report.json."""
    kinds = [need.kind for need in APPROVAL_REPORTS]
    rows = conn.execute(
        "SELECT DISTINCT a.id, a.kind, a.metrics_json, a.path, a.created FROM parents p JOIN "
        "artifacts a ON a.id = p.child_id WHERE p.parent_id = ? AND a.kind IN "
        f"({','.join('?' * len(kinds))}) ORDER BY a.created, a.id", (art_id, *kinds)).fetchall()
    return [(r["id"], r["kind"], json.loads(r["metrics_json"]), read_report(root / r["path"]))
            for r in rows]


# Runs inside a move's transaction, after its event is written: what the move changes
# besides the state (an archive's location, say) commits with it or not at all.
AlsoInMove = Callable[[Connection, Event], None]


def apply_move(conn: Connection, root: Path, ref: str, to_state: str, reason: str,
               force: bool, *, sunset: str | None = None, successor: str | None = None,
               note: str = "", also: AlsoInMove | None = None,
               policy: ApprovalPolicy | None = None) -> Event:
    """Check and record one move in a single transaction, so concurrent moves serialize.
    The event keeps who moved it and the command line; `sunset` and `successor` are a
    deprecation's announcement, `note` adds what the move rests on, `also` runs inside the
    same transaction (an exception there undoes the whole move). An approval is checked
    against `policy` too, and its decision (every gate and its numbers) is stored."""
    check_state_name(to_state)
    if not isinstance(reason, str) or not reason.strip():
        raise LmforgeError(f"moving {ref} to {to_state} needs a reason",
                           "say why, e.g. --reason 'passed the release gates'")
    with write_transaction(conn) as c:
        art_id = find_id(c, root, ref)
        kind, current = c.execute("SELECT kind, state FROM artifacts WHERE id = ?",
                                  (art_id,)).fetchone()
        if current is None:
            raise LmforgeError(f"{art_id} is a {kind}; only models have lifecycle states",
                               "pass a model id (see `lmforge registry ls --kind model`)")
        if to_state == current:
            raise LmforgeError(f"{art_id} is already {current}", "nothing to do")
        check = Approval()
        if to_state == "approved":
            check = check_approval(art_id, _reports(c, root, art_id), policy)
        problems = [p for p in [move_problem(art_id, current, to_state)] if p] + check.problems
        if problems and not force:
            force_it = "force the move (--force; the record will say it was forced)"
            raise LmforgeError("; ".join(problems), "; ".join(check.hints + [
                f"or {force_it}" if check.hints else force_it]))
        # The record keeps what a move rested on, and what a forced one overrode.
        note = "; ".join([f"forced past: {p}" for p in problems] + check.basis
                         + ([note] if note else []))
        now, who, command = utc_now(), actor(), command_line()
        decision = json.dumps(check.decision) if check.decision is not None else None
        c.execute("UPDATE artifacts SET state = ? WHERE id = ?", (to_state, art_id))
        c.execute("INSERT INTO events (artifact_id, from_state, to_state, reason, forced, "
                  "time, note, actor, command, sunset, successor, decision) "
                  "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                  (art_id, current, to_state, reason, int(bool(problems)), now, note,
                   who, command, sunset, successor, decision))
        # The event just written is this model's newest: no other writer holds the lock.
        # (Read back rather than a cursor's lastrowid, which PostgreSQL's driver lacks.)
        seq = c.execute("SELECT max(seq) FROM events WHERE artifact_id = ?",
                        (art_id,)).fetchone()[0]
        event = Event(seq, art_id, current, to_state, reason, bool(problems),
                      now, note, who, command, sunset, successor, check.decision)
        if also is not None:
            also(c, event)
        return event
