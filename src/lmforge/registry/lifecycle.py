"""Model lifecycle states and the moves allowed between them.

A state belongs to one artifact: tuning makes a new model artifact (starting at `tuned`),
it does not move the old one. The rules are pure functions; `apply_move` checks them
against the registry and records the move.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.registry.artifact import Event
from lmforge.registry.db import write_transaction
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

# Approval needs one passing report of each kind made from this exact model.
APPROVAL_REPORTS: dict[str, str] = {
    "eval-report": "lmforge eval --model {id}",
    "redteam-report": "lmforge redteam --model {id}",
}


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


def approval_problems(art_id: str, reports: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """What is missing for approval. `reports` lists (id, kind, metrics) of the artifacts
    that name `art_id` among their parents."""
    problems = []
    for kind, command in APPROVAL_REPORTS.items():
        mine = [(rid, m) for rid, k, m in reports if k == kind]
        if any(m.get("gates_passed") is True for _, m in mine):
            continue
        if mine:
            ids = ", ".join(rid for rid, _ in mine)
            problems.append(f"no {kind} of {art_id} passed its gates (found {ids})")
        else:
            problems.append(f"no {kind} of {art_id} (run `{command.format(id=art_id)}`)")
    return problems


def _reports(conn: sqlite3.Connection, art_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, kind, metrics) of every approval report naming `art_id` as a parent."""
    kinds = list(APPROVAL_REPORTS)
    rows = conn.execute(
        "SELECT DISTINCT a.id, a.kind, a.metrics_json FROM parents p JOIN artifacts a "
        f"ON a.id = p.child_id WHERE p.parent_id = ? AND a.kind IN "
        f"({','.join('?' * len(kinds))})", (art_id, *kinds)).fetchall()
    return [(r["id"], r["kind"], json.loads(r["metrics_json"])) for r in rows]


def apply_move(conn: sqlite3.Connection, root: Path, ref: str, to_state: str, reason: str,
               force: bool) -> Event:
    """Check and record one move in a single transaction, so concurrent moves serialize."""
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
        problems = [p for p in [move_problem(art_id, current, to_state)] if p]
        if to_state == "approved":
            problems += approval_problems(art_id, _reports(c, art_id))
        if problems and not force:
            raise LmforgeError("; ".join(problems), "fix the above, or force the move "
                               "(--force; the record will say it was forced)")
        now = utc_now()
        c.execute("UPDATE artifacts SET state = ? WHERE id = ?", (to_state, art_id))
        cur = c.execute("INSERT INTO events (artifact_id, from_state, to_state, reason, forced, "
                        "time) VALUES (?,?,?,?,?,?)",
                        (art_id, current, to_state, reason, int(bool(problems)), now))
        return Event(cur.lastrowid, art_id, current, to_state, reason, bool(problems), now)
