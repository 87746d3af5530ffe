"""The retirement report: a model's service life, written from the record when it retires.

What it served (requests, tokens, clients, from the server's feedback store, opened
read-only), what people said (ratings, preferred answers, comments, review-page verdicts),
the evaluation and red-team reports made on it over time, every state it went through and
who moved it, why it was retired and what replaced it. It is registered as a
`retirement-report` artifact whose parent is the model (report.md and report.json), so it
is as immutable and traceable as the model, and archive bundles carry a copy.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.registry import Artifact, Event, Workspace, atomic_write_json, atomic_write_text
from lmforge.registry.artifact import ArtifactRecord
from lmforge.registry.retire import last_deprecation, retire_move
from lmforge.registry.store import utc_now
from lmforge.serve.feedback import store_path

REPORT_KIND = "retirement-report"
REPORT_FORMAT = "lmforge-retirement-report/1"
REPORTS_OVER_TIME = ("eval-report", "redteam-report")


def _when(iso: str | None) -> datetime | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None


def _event(e: Event) -> dict[str, Any]:
    return {"time": e.time, "from": e.from_state, "to": e.to_state, "reason": e.reason,
            "forced": e.forced, "note": e.note, "actor": e.actor, "command": e.command,
            **({"sunset": e.sunset} if e.sunset else {}),
            **({"successor": e.successor} if e.successor else {})}


def _open_read_only(path: Path) -> sqlite3.Connection:
    # mode=ro: the report must never create or change a store a server may be writing.
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
    conn.row_factory = sqlite3.Row
    return conn


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def feedback_summary(workspace_root: Path, model_id: str) -> dict[str, Any]:
    """Requests, tokens and feedback a server stored for `model_id`, read-only. A model that
    was never served has no store: the summary says so instead of reporting zeros as fact."""
    path = store_path(workspace_root, model_id)
    if not path.is_file():
        return {"store": None, "note": "no feedback store: this model was never served with "
                                       "lmforge serve in this workspace"}
    out: dict[str, Any] = {"store": str(path)}
    try:
        conn = _open_read_only(path)
        try:
            tables = _tables(conn)
            if "responses" in tables:
                row = conn.execute(
                    "SELECT count(*) AS n, count(DISTINCT key_id) AS clients, min(created) AS "
                    "first, max(created) AS last, "
                    "coalesce(sum(json_extract(usage_json, '$.prompt_tokens')), 0) AS prompt, "
                    "coalesce(sum(json_extract(usage_json, '$.completion_tokens')), 0) AS "
                    "completion FROM responses").fetchone()
                out.update(requests=row["n"], api_keys=row["clients"],
                           first_request=row["first"], last_request=row["last"],
                           prompt_tokens=int(row["prompt"]),
                           completion_tokens=int(row["completion"]))
                out["by_endpoint"] = {r[0]: r[1] for r in conn.execute(
                    "SELECT endpoint, count(*) FROM responses GROUP BY endpoint ORDER BY 1")}
            if "feedback" in tables:
                row = conn.execute(
                    "SELECT count(*) AS n, count(DISTINCT response_id) AS answers, "
                    "coalesce(sum(rating = 1), 0) AS up, coalesce(sum(rating = -1), 0) AS down, "
                    "count(preferred) AS preferred, "
                    "coalesce(sum(comment IS NOT NULL AND trim(comment) != ''), 0) AS comments "
                    "FROM feedback").fetchone()
                out["feedback"] = {"entries": row["n"], "answers_rated": row["answers"],
                                   "thumbs_up": row["up"], "thumbs_down": row["down"],
                                   "preferred_answers": row["preferred"],
                                   "comments": row["comments"]}
            if "preferences" in tables:
                verdicts = {r[0] or "unjudged": r[1] for r in conn.execute(
                    "SELECT verdict, count(*) FROM preferences GROUP BY verdict")}
                out["review_pairs"] = {"shown": sum(verdicts.values()), **dict(sorted(
                    verdicts.items()))}
        finally:
            conn.close()
    except sqlite3.Error as e:  # a damaged store must not block retiring the model
        out["note"] = f"the feedback store could not be read: {e}"
    return out


def _report_entry(rec: ArtifactRecord) -> dict[str, Any]:
    numbers = {k: v for k, v in rec.metrics.items()
               if isinstance(v, (int, float, bool)) or v is None}
    return {"id": rec.id, "kind": rec.kind, "created": rec.created, "name": rec.name,
            "gates_passed": rec.metrics.get("gates_passed"), "metrics": numbers}


def _model_brief(ws: Workspace, model_id: str | None) -> dict[str, Any] | None:
    if not model_id:
        return None
    rec = ws.record(model_id)
    return {"id": rec.id, "name": rec.name, "state": rec.state, "stage": rec.stage}


def _retirements(history: list[Event]) -> list[Event]:
    """Moves into retirement; a restore (archived -> retired) brings files back, it does
    not retire the model again."""
    return [e for e in history if e.to_state == "retired" and e.from_state != "archived"]


def _parents(ws: Workspace, model_id: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for node in ws.lineage(model_id)["children"]:  # from the registry: works when archived
        out.setdefault(node["role"], []).append(node["id"])
    return out


def service_life(ws: Workspace, ref: str) -> dict[str, Any]:
    """The report's content, from the record alone; `ref` must be retired (or past it)."""
    rec = ws.record(ref)
    history = ws.history(rec.id)
    retirements = _retirements(history)
    if rec.state not in ("retired", "archived") or not retirements:
        raise LmforgeError(f"{rec.id} is {rec.state}, not retired",
                           f"retire it first: `lmforge registry retire {rec.id}`")
    retired, dep = retirements[-1], last_deprecation(ws, rec.id)
    deployed = [e for e in history if e.to_state == "deployed"]
    start, end = _when(deployed[0].time if deployed else None), _when(retired.time)
    children = ws.children(rec.id)
    reports = [_report_entry(c) for c in reversed(children) if c.kind in REPORTS_OVER_TIME]
    made_from = [_model_brief(ws, c.id) for c in reversed(children) if c.kind == "model"]
    return {
        "format": REPORT_FORMAT,
        "generated": utc_now(),
        "model": {"id": rec.id, "name": rec.name, "stage": rec.stage, "created": rec.created,
                  "parents": _parents(ws, rec.id)},
        "retirement": {**_event(retired), "event": retired.seq,
                       "successor": _model_brief(ws, dep.successor if dep else None),
                       "deprecation": _event(dep) if dep else None},
        "service": {"deployed": deployed[0].time if deployed else None,
                    "retired": retired.time,
                    "days_deployed": round((end - start).total_seconds() / 86400, 2)
                    if start and end else None,
                    **feedback_summary(ws.root, rec.id)},
        "reports": reports,
        "models_made_from_it": made_from,
        "history": [_event(e) for e in history],
    }


def _md_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def report_markdown(r: dict[str, Any]) -> str:
    """The report for people: one page, the numbers first."""
    m, ret, svc = r["model"], r["retirement"], r["service"]
    title = f"{m['id']}" + (f" ({m['name']})" if m.get("name") else "")
    lines = [f"# Retirement report: {title}", "",
             f"Written {r['generated']} from the lmforge record.", "", "## Why it was retired",
             "", f"- Retired {ret['time']} by {ret['actor'] or 'unknown'}: {ret['reason']}"
             + (" (forced)" if ret["forced"] else "")]
    if ret["command"]:
        lines.append(f"- Command: `{ret['command']}`")
    if ret["note"]:
        lines.append(f"- On the record: {ret['note']}")
    dep, succ = ret.get("deprecation"), ret.get("successor")
    if dep:
        lines.append(f"- Deprecated {dep['time']} by {dep['actor'] or 'unknown'}: "
                     f"{dep['reason']}; sunset announced for {dep.get('sunset') or 'no date'}")
    lines.append(f"- Replaced by: {succ['id']} ({succ['state']})" if succ
                 else "- Replaced by: no successor was named")
    lines += ["", "## Service", ""]
    lines.append(f"- Deployed {svc['deployed'] or 'never'}; retired {svc['retired']}"
                 + (f" ({svc['days_deployed']} days deployed)"
                    if svc.get("days_deployed") is not None else ""))
    if svc.get("requests") is not None:
        lines.append(f"- Requests: {svc['requests']} ("
                     + ", ".join(f"{k}: {v}" for k, v in svc.get("by_endpoint", {}).items())
                     + f"), from {svc['api_keys']} API keys; first {svc['first_request']}, "
                     f"last {svc['last_request']}")
        lines.append(f"- Tokens: {svc['prompt_tokens']} prompt, {svc['completion_tokens']} "
                     "completion")
    fb = svc.get("feedback")
    if fb:
        lines.append(f"- Feedback: {fb['entries']} entries on {fb['answers_rated']} answers: "
                     f"{fb['thumbs_up']} thumbs up, {fb['thumbs_down']} thumbs down, "
                     f"{fb['preferred_answers']} preferred answers, {fb['comments']} comments")
    pairs = svc.get("review_pairs")
    if pairs:
        lines.append("- Review pairs: " + ", ".join(f"{k} {v}" for k, v in pairs.items()))
    if svc.get("note"):
        lines.append(f"- {svc['note']}")
    lines += ["", "## Evaluations and red-team reports over time", ""]
    if r["reports"]:
        lines += ["| created | report | gates | metrics |", "|---|---|---|---|"]
        for rep in r["reports"]:
            shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in rep["metrics"].items() if k not in ("gates_passed", "seconds")]
            more = f" (+{len(shown) - 6} more in report.json)" if len(shown) > 6 else ""
            gate = {True: "passed", False: "FAILED", None: "none"}[rep["gates_passed"]]
            lines.append(f"| {rep['created'][:19]} | {rep['id']} | {gate} | "
                         f"{_md_cell(', '.join(shown[:6]) + more)} |")
    else:
        lines.append("None were made on this model.")
    if r["models_made_from_it"]:
        lines += ["", "## Models made from it", ""]
        lines += [f"- {c['id']} ({c['state']})" for c in r["models_made_from_it"]]
    lines += ["", "## State history", "", "| time | from | to | by | reason | command |",
              "|---|---|---|---|---|---|"]
    for e in r["history"]:
        forced = " **forced**" if e["forced"] else ""
        lines.append(f"| {e['time'][:19]} | {e['from'] or '-'} | {e['to']}{forced} | "
                     f"{_md_cell(e['actor'])} | {_md_cell(e['reason'])} | "
                     f"{_md_cell(e['command'] and '`' + e['command'] + '`')} |")
    return "\n".join(lines) + "\n"


def write_report(ws: Workspace, ref: str) -> Artifact:
    """Register the retirement report of `ref` (retired) as a child artifact of it."""
    report = service_life(ws, ref)
    model_id = report["model"]["id"]
    svc = report["service"]
    metrics = {k: svc[k] for k in ("requests", "prompt_tokens", "completion_tokens")
               if svc.get(k) is not None}
    if svc.get("feedback"):
        metrics["feedback"] = svc["feedback"]["entries"]
    with ws.staging() as d:
        atomic_write_json(d / "report.json", report)
        atomic_write_text(d / "report.md", report_markdown(report))
        return ws.register(d, kind=REPORT_KIND, stage="retire", parents={"model": model_id},
                           settings={"model": model_id,
                                     "retired_event": report["retirement"]["event"]},
                           metrics=metrics, name="retirement")


def report_of(ws: Workspace, ref: str) -> ArtifactRecord | None:
    """The latest retirement report of `ref`, or None."""
    found = ws.children(ref, kind=REPORT_KIND)
    return found[0] if found else None


def _reported(ws: Workspace, model_id: str, event_seq: int) -> bool:
    return any(r.settings.get("retired_event") == event_seq
               for r in ws.children(model_id, kind=REPORT_KIND))


def retire(ws: Workspace, ref: str, reason: str | None = None, force: bool = False
           ) -> tuple[Event | None, Artifact | None]:
    """Retire `ref` and write its report. Run on a model already retired whose report is
    missing (a crash came between the two), it writes just the report: (None, report).
    (None, None): retired and reported already."""
    rec = ws.record(ref)
    if rec.state == "archived":
        raise LmforgeError(f"{rec.id} is retired and archived already",
                           "see its report with `lmforge registry show " + rec.id + "`")
    event = None
    if rec.state != "retired":
        event = retire_move(ws, rec.id, reason, force)
    retired = _retirements(ws.history(rec.id))[-1]
    if _reported(ws, rec.id, retired.seq):
        return event, None
    return event, write_report(ws, rec.id)


def load_report(art: Artifact) -> dict[str, Any]:
    return json.loads(art.file("report.json").read_text(encoding="utf-8"))
