"""Deprecation and retirement as moves in the record.

A deprecation announces, like the published deprecation entries of hosted model APIs, a
sunset date, a reason and a successor. They are kept on the deprecation event, the fields a
server reads (serve/model_state.py: `Deprecation`, `Sunset` and `Link: rel=successor-version`
headers; after retirement, 410 naming the successor). Retirement moves the model out of
service; its files stay, read-only, for research until they are archived. The retirement
report is written by lifecycle/retirement.py, which calls `retire_move` first.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone

from lmforge.errors import LmforgeError
from lmforge.registry.artifact import Event
from lmforge.registry.workspace import Workspace

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
OUT_OF_SERVICE = ("retired", "archived")


def parse_sunset(value: str, today: date | None = None) -> str:
    """`value` as an ISO date (YYYY-MM-DD) after today (UTC), or LmforgeError."""
    today = today or datetime.now(timezone.utc).date()
    text = value.strip() if isinstance(value, str) else ""
    example = date(today.year + 1, 3, 1).isoformat()
    if not _ISO_DATE.fullmatch(text):
        raise LmforgeError(f"sunset {value!r} is not an ISO date",
                           f"write it as YYYY-MM-DD, e.g. --sunset {example}")
    try:
        when = date.fromisoformat(text)
    except ValueError as e:
        raise LmforgeError(f"sunset {value!r} is not a date: {e}",
                           f"write it as YYYY-MM-DD, e.g. --sunset {example}") from None
    if when <= today:
        raise LmforgeError(f"sunset {text} is not in the future (today is {today.isoformat()} "
                           "UTC): clients need time to move to the successor",
                           f"announce a later date, e.g. --sunset {example}; to take the "
                           "model out of service now, deprecate it with a later sunset and "
                           "`lmforge registry retire` it")
    return text


def deprecate(ws: Workspace, ref: str, *, sunset: str, successor: str, reason: str,
              force: bool = False) -> Event:
    """Move `ref` to `deprecated`, announcing `sunset` and `successor` on the event."""
    if not isinstance(reason, str) or not reason.strip():
        raise LmforgeError("a deprecation needs a reason",
                           "say why clients should move, e.g. --reason 'superseded by a model "
                           "tuned on user feedback'")
    when = parse_sunset(sunset)
    old = ws.record(ref)
    try:
        new = ws.record(successor, kind="model")
    except LmforgeError as e:
        raise LmforgeError(f"the successor must be a model in the registry: {e.message}",
                           "register the new model first (train, tune or `lmforge import` "
                           "it), then name it by id or alias") from None
    if new.kind != "model":
        raise LmforgeError(f"the successor {new.id} is a {new.kind}, not a model",
                           "name a model (see `lmforge registry ls --kind model`)")
    if new.id == old.id:
        raise LmforgeError(f"{old.id} cannot succeed itself",
                           "name the model that replaces it")
    if new.state in (*OUT_OF_SERVICE, "deprecated"):
        raise LmforgeError(f"the successor {new.id} is {new.state} itself, so clients sent to "
                           "it would be turned away in turn",
                           "name a model that stays in service (approved or deployed)")
    return ws.set_state(old.id, "deprecated", reason.strip(), force=force, sunset=when,
                        successor=new.id)


def last_deprecation(ws: Workspace, ref: str) -> Event | None:
    """The latest move of `ref` to `deprecated`, with its sunset and successor."""
    moves = [e for e in ws.history(ref) if e.to_state == "deprecated"]
    return moves[-1] if moves else None


def retire_move(ws: Workspace, ref: str, reason: str | None = None,
                force: bool = False) -> Event:
    """Move `ref` to `retired`: a server then answers 410 naming the deprecation's successor.
    Without `reason`, the deprecation's announcement is the reason."""
    dep = last_deprecation(ws, ref)
    if reason is None or not reason.strip():
        if dep is None:
            raise LmforgeError(f"{ws.record(ref).id} was never deprecated, so there is no "
                               "announced reason to retire it for",
                               "deprecate it first (`lmforge registry deprecate MODEL --sunset "
                               "YYYY-MM-DD --successor NEW --reason ...`), or give --reason")
        reason = f"retired after its deprecation ({dep.reason})"
    note = ""
    if dep is not None and dep.sunset and dep.sunset > datetime.now(timezone.utc).date() \
            .isoformat():
        note = f"retired before the sunset announced to clients ({dep.sunset})"
    return ws.set_state(ref, "retired", reason.strip(), force=force, note=note)
