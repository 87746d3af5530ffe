"""The feedback store: every answer the server gave and what people said about it, in one
SQLite file in the workspace (never in the model's artifact), for the fine-tuning stage.

`<workspace>/feedback/<model id>.sqlite`, WAL mode so replicas write side by side. Table
`responses` holds each completion (the request as sent, the choices, usage) under the id the
client saw; table `feedback` holds one row per rating, preferred answer or comment, joined
to its response by id; table `preferences` holds the pairs of answers shown on the review
page and which one a person picked (serve/preferences.py). Conversation state is not kept: a
response row is a record, never read back to build a prompt.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS responses (
        id TEXT PRIMARY KEY,             -- the `id` of the completion the client got
        model TEXT NOT NULL,             -- the artifact id (or folder) that answered
        endpoint TEXT NOT NULL,          -- chat.completions | completions
        created TEXT NOT NULL,           -- ISO-8601 UTC
        key_id TEXT,                     -- which API key asked (a digest prefix), if any
        request_json TEXT NOT NULL,      -- messages or prompt, and the sampling settings
        choices_json TEXT NOT NULL,      -- [{index, text, finish_reason}]
        usage_json TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS feedback (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        response_id TEXT NOT NULL REFERENCES responses (id),
        choice INTEGER NOT NULL DEFAULT 0,
        model TEXT NOT NULL,
        rating INTEGER CHECK (rating IN (-1, 1)),
        preferred TEXT,
        comment TEXT,
        key_id TEXT,
        created TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS feedback_response ON feedback (response_id)",
    "CREATE INDEX IF NOT EXISTS feedback_created ON feedback (created)",
    # Added after version 1 shipped; readers of version 1 ignore it, so the version stays.
    """CREATE TABLE IF NOT EXISTS preferences (
        id TEXT PRIMARY KEY,             -- review-<hex>: the pair the review page showed
        model TEXT NOT NULL,             -- the artifact id that wrote both answers
        created TEXT NOT NULL,
        key_id TEXT,                     -- who asked for the pair (a digest prefix), if any
        source TEXT,                     -- the stored response whose prompt it reuses, or NULL
        messages_json TEXT NOT NULL,     -- the prompt: OpenAI messages
        answers_json TEXT NOT NULL,      -- [{content, seed, finish_reason}] as shown: A, B
        settings_json TEXT NOT NULL,     -- temperature, max_tokens
        verdict TEXT CHECK (verdict IN ('A', 'B', 'tie', 'neither')),  -- NULL: not judged
        comment TEXT,
        judged TEXT,                     -- when the verdict came (ISO-8601 UTC)
        judged_key_id TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS preferences_source ON preferences (source)",
)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def store_path(workspace_root: Path, model_id: str) -> Path:
    """Where a model's feedback lives: one file per served model."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-.") or "model"
    return workspace_root / "feedback" / f"{safe}.sqlite"


@dataclass(frozen=True)
class StoredResponse:
    id: str
    model: str
    key_id: str | None
    choices: int


class FeedbackStore:
    """One SQLite connection shared by the server's threads in turn."""

    def __init__(self, path: Path, model_id: str):
        self.path, self.model_id = path, model_id
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 30000")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LmforgeError(f"the feedback store {path} was written by a newer lmforge",
                                   hint="upgrade lmforge: pip install -U lmforge")
            for statement in _SCHEMA:
                self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise LmforgeError(f"cannot open the feedback store {path}: {e}",
                               hint="check that the workspace folder is writable") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """The connection, held by one thread at a time (for serve/preferences.py)."""
        with self._lock:
            yield self._conn

    def add_response(self, response_id: str, endpoint: str, key_id: str | None,
                     request: dict[str, Any], choices: list[dict[str, Any]],
                     usage: dict[str, Any]) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses (id, model, endpoint, created, key_id, "
                "request_json, choices_json, usage_json) VALUES (?,?,?,?,?,?,?,?)",
                (response_id, self.model_id, endpoint, utc_now(), key_id,
                 json.dumps(request, ensure_ascii=False), json.dumps(choices,
                                                                     ensure_ascii=False),
                 json.dumps(usage)))

    def response(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._conn.execute("SELECT id, model, key_id, choices_json FROM responses "
                                     "WHERE id = ?", (response_id,)).fetchone()
        if row is None:
            return None
        return StoredResponse(row[0], row[1], row[2], len(json.loads(row[3])))

    def add_feedback(self, response_id: str, choice: int, rating: int | None,
                     preferred: str | None, comment: str | None, key_id: str | None
                     ) -> tuple[int, str]:
        """Store one piece of feedback; (its sequence number, its time)."""
        now = utc_now()
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO feedback (response_id, choice, model, rating, preferred, comment, "
                "key_id, created) VALUES (?,?,?,?,?,?,?,?)",
                (response_id, choice, self.model_id, rating, preferred, comment, key_id, now))
            return int(cur.lastrowid or 0), now

    def feedback_rows(self) -> list[dict[str, Any]]:
        """Every feedback row joined to its response (for tests and for the tuning stage)."""
        with self._lock:
            cur = self._conn.execute(
                "SELECT f.seq, f.response_id, f.choice, f.model, f.rating, f.preferred, "
                "f.comment, f.created, r.request_json, r.choices_json FROM feedback f JOIN "
                "responses r ON r.id = f.response_id ORDER BY f.seq")
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, row)) for row in cur.fetchall()]
        for row in rows:
            row["request"] = json.loads(row.pop("request_json"))
            row["choices"] = json.loads(row.pop("choices_json"))
        return rows
