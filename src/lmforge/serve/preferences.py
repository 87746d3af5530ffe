"""Preference data from the review page: pairs of answers to one prompt, and which one a
person picked, in the `preferences` table of the feedback store (serve/feedback.py).

A pair is stored when it is shown (its verdict NULL) and judged once: "A", "B", "tie" or
"neither". `preference_rows` reads the decided pairs in the shape the preference stage
reads (`prompt` as OpenAI messages, `chosen`, `rejected`), straight from the SQLite file.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.serve.feedback import FeedbackStore, utc_now

VERDICTS = ("A", "B", "tie", "neither")
LABELS = ("A", "B")


@dataclass(frozen=True)
class Pair:
    id: str
    key_id: str | None
    messages: list[dict[str, Any]]
    answers: list[dict[str, Any]]  # as shown: A first
    verdict: str | None


def add_pair(store: FeedbackStore, pair_id: str, key_id: str | None, source: str | None,
             messages: list[dict[str, Any]], answers: list[dict[str, Any]],
             settings: dict[str, Any]) -> str:
    """Record a pair as it is shown; its creation time."""
    now = utc_now()
    with store.connection() as db:
        db.execute(
            "INSERT INTO preferences (id, model, created, key_id, source, messages_json, "
            "answers_json, settings_json) VALUES (?,?,?,?,?,?,?,?)",
            (pair_id, store.model_id, now, key_id, source,
             json.dumps(messages, ensure_ascii=False), json.dumps(answers, ensure_ascii=False),
             json.dumps(settings)))
    return now


def get_pair(store: FeedbackStore, pair_id: str) -> Pair | None:
    with store.connection() as db:
        row = db.execute("SELECT id, key_id, messages_json, answers_json, verdict FROM "
                         "preferences WHERE id = ?", (pair_id,)).fetchone()
    if row is None:
        return None
    return Pair(row[0], row[1], json.loads(row[2]), json.loads(row[3]), row[4])


def judge(store: FeedbackStore, pair_id: str, verdict: str, comment: str | None,
          key_id: str | None) -> str | None:
    """Store the verdict of a pair not judged yet; its time, or None when it already had one
    (two reviewers racing on one pair: the first verdict stands)."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r} is not one of {VERDICTS}")
    now = utc_now()
    with store.connection() as db:
        cur = db.execute("UPDATE preferences SET verdict = ?, comment = ?, judged = ?, "
                         "judged_key_id = ? WHERE id = ? AND verdict IS NULL",
                         (verdict, comment, now, key_id, pair_id))
        return now if cur.rowcount == 1 else None


def stored_prompt(store: FeedbackStore, key_id: str | None, scan: int = 200
                  ) -> tuple[str, list[dict[str, Any]]] | None:
    """(response id, messages) of the newest stored chat request that no pair has reused
    yet, asked with this key (another key's prompts are not shown) and without tools (the
    review page offers none); None when there is none."""
    with store.connection() as db:
        rows = db.execute(
            "SELECT r.id, r.request_json FROM responses r WHERE r.endpoint = "
            "'chat.completions' AND r.key_id IS ? AND NOT EXISTS (SELECT 1 FROM preferences "
            "p WHERE p.source = r.id) ORDER BY r.created DESC, r.rowid DESC LIMIT ?",
            (key_id, scan)).fetchall()
    for rid, request_json in rows:
        request = json.loads(request_json)
        messages = request.get("messages")
        if request.get("tools") or not messages or any(
                m.get("tool_calls") or m.get("role") == "tool" for m in messages):
            continue
        # The prompt as the model read it: roles and text (parts joined), no extra fields.
        return rid, [{"role": m["role"], "content": _text(m.get("content"))} for m in messages]
    return None


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return content or ""


def _db_path(db: FeedbackStore | str | Path) -> Path:
    return db.path if isinstance(db, FeedbackStore) else Path(db)


def preference_rows(db: FeedbackStore | str | Path) -> list[dict[str, Any]]:
    """The decided pairs (verdict A or B), oldest verdict first, as
    `{"prompt": [messages], "chosen": str, "rejected": str, "id", "model", "judged"}`.
    Ties and "neither" carry no preference and are left out (they stay in the table)."""
    path = _db_path(db)
    if not path.is_file():
        raise LmforgeError(f"no feedback store at {path}",
                           hint="run `lmforge serve MODEL` and review pairs at "
                                "http://127.0.0.1:8000/review")
    try:
        # Read-only: the export never changes the store a server may be writing.
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            rows = conn.execute(
                "SELECT id, model, messages_json, answers_json, verdict, judged FROM "
                "preferences WHERE verdict IN ('A', 'B') ORDER BY judged, id").fetchall()
    except sqlite3.Error as e:
        raise LmforgeError(f"cannot read preferences from {path}: {e}",
                           hint="give the .sqlite file under <workspace>/feedback/") from None
    out = []
    for pair_id, model, messages_json, answers_json, verdict, judged in rows:
        answers = json.loads(answers_json)
        won = LABELS.index(verdict)
        out.append({"prompt": json.loads(messages_json),
                    "chosen": answers[won]["content"], "rejected": answers[1 - won]["content"],
                    "id": pair_id, "model": model, "judged": judged})
    return out

