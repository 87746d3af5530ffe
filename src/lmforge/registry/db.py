"""The registry database: schema, versioned migrations, and write transactions.

The record lives in SQLite (registry.db in the workspace, the default) or, for a team, in
PostgreSQL (registry/postgres.py: a postgresql:// URL). `open_record` picks one; the rest of
the registry calls `execute` and `write_transaction` on what it returns and never asks which.

In SQLite `PRAGMA user_version` holds the schema version and `PRAGMA application_id` marks
the file as ours. A newer lmforge appends to MIGRATIONS; opening an older workspace applies
the missing ones in one transaction, so a crash mid-upgrade leaves the old schema intact.
MIGRATIONS are written in SQLite's dialect; registry/postgres.py translates them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from lmforge.errors import LmforgeError

APPLICATION_ID = 0x6C6D6667  # "lmfg"
BUSY_TIMEOUT_S = 30.0

# MIGRATIONS[i] takes the schema from version i to version i + 1. Never edit a released one.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE artifacts (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            stage TEXT NOT NULL,
            name TEXT,
            path TEXT NOT NULL,            -- relative to the workspace root, posix
            created TEXT NOT NULL,         -- ISO-8601 UTC
            state TEXT,                    -- lifecycle state; NULL for non-models
            settings_json TEXT NOT NULL,
            metrics_json TEXT NOT NULL,
            manifest_sha256 TEXT NOT NULL, -- guards manifest.json itself against edits
            lmforge_version TEXT NOT NULL
        )""",
        "CREATE INDEX artifacts_kind_created ON artifacts (kind, created)",
        """CREATE TABLE parents (
            child_id TEXT NOT NULL REFERENCES artifacts (id),
            parent_id TEXT NOT NULL REFERENCES artifacts (id),
            role TEXT NOT NULL,
            position INTEGER NOT NULL,     -- order within a role's list
            PRIMARY KEY (child_id, role, parent_id)
        )""",
        "CREATE INDEX parents_parent ON parents (parent_id)",
        """CREATE TABLE aliases (
            alias TEXT PRIMARY KEY,
            artifact_id TEXT NOT NULL REFERENCES artifacts (id),
            updated TEXT NOT NULL
        )""",
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            artifact_id TEXT NOT NULL REFERENCES artifacts (id),
            from_state TEXT,
            to_state TEXT NOT NULL,
            reason TEXT NOT NULL,
            forced INTEGER NOT NULL DEFAULT 0,
            time TEXT NOT NULL
        )""",
        "CREATE INDEX events_artifact ON events (artifact_id, seq)",
    ),
    (
        # What a move rested on (the passing reports of an approval) or what a forced move
        # overrode, so the record explains itself.
        "ALTER TABLE events ADD COLUMN note TEXT NOT NULL DEFAULT ''",
    ),
    (
        # Who moved it (user@host) and from which command line; a deprecation's announced
        # sunset date and successor, which the server sends as headers (serve/model_state.py).
        "ALTER TABLE events ADD COLUMN actor TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE events ADD COLUMN command TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE events ADD COLUMN sunset TEXT",
        "ALTER TABLE events ADD COLUMN successor TEXT REFERENCES artifacts (id)",
        # Where an archived model's files went (registry/archive.py); a row per model.
        """CREATE TABLE archives (
            artifact_id TEXT PRIMARY KEY REFERENCES artifacts (id),
            bundle TEXT NOT NULL,          -- absolute path of the bundle
            bundle_sha256 TEXT NOT NULL,
            index_path TEXT NOT NULL,      -- its checksum list beside it
            time TEXT NOT NULL
        )""",
    ),
    (
        # An approval's decision: every gate it weighed (threshold, value, interval, n,
        # verdict, report), as JSON (registry/approval.py); NULL for other moves.
        "ALTER TABLE events ADD COLUMN decision TEXT",
        # Every alias move (set, moved, removed: artifact_id NULL), written in the alias
        # change's transaction, so `production`'s past is in the record.
        """CREATE TABLE alias_moves (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            alias TEXT NOT NULL,
            artifact_id TEXT REFERENCES artifacts (id),  -- NULL: the alias was removed
            previous_id TEXT REFERENCES artifacts (id),  -- NULL: the alias was new
            time TEXT NOT NULL,
            actor TEXT NOT NULL,
            reason TEXT NOT NULL,
            command TEXT NOT NULL
        )""",
        "CREATE INDEX alias_moves_alias ON alias_moves (alias, seq)",
        # Aliases set before their history was kept start it, dated by their last update.
        "INSERT INTO alias_moves (alias, artifact_id, previous_id, time, actor, reason, "
        "command) SELECT alias, artifact_id, NULL, updated, '', 'set before alias history "
        "was kept', '' FROM aliases",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)


class Row(Protocol):
    """A result row: sqlite3.Row, or postgres.Row, read by position or by column name."""

    def __getitem__(self, key: int | str, /) -> Any: ...
    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    """What a query hands back, in either database: rows read by position or by column
    name (sqlite3.Row, postgres.Row), and how many rows a write changed."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The record as the registry uses it: a sqlite3.Connection, or a PostgresRecord. SQL is
    written in SQLite's dialect, with `?` or `:name` parameters."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...
    def close(self) -> None: ...


def write_transaction(conn: Connection) -> AbstractContextManager[Connection]:
    """A transaction that holds the record's write lock from its start, so concurrent
    writers (other processes, other machines) queue instead of interleaving."""
    if isinstance(conn, sqlite3.Connection):
        return _sqlite_write_transaction(conn)
    return conn.write_transaction()  # type: ignore[attr-defined]  # a PostgresRecord


@contextmanager
def _sqlite_write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue
    (up to the busy timeout) instead of failing when a read upgrades to a write."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _not_ours(path: Path, why: str) -> LmforgeError:
    return LmforgeError(f"{path} is not an lmforge registry ({why})",
                        "point --workspace (or LMFORGE_HOME) at an lmforge workspace, "
                        "or restore registry.db from a backup")


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION, refusing foreign and newer databases."""
    with _sqlite_write_transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if version == 0:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise _not_ours(path, "it already holds other tables")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        elif app_id != APPLICATION_ID:
            raise _not_ours(path, f"application id {app_id:#x}")
        if version > SCHEMA_VERSION:
            raise LmforgeError(
                f"the workspace at {path.parent} was written by a newer lmforge "
                f"(schema {version}; this lmforge knows up to {SCHEMA_VERSION})",
                "upgrade lmforge: pip install -U lmforge")
        for step in MIGRATIONS[version:]:
            for statement in step:
                conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the registry at `path`."""
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see write_transaction).
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
    except sqlite3.Error as e:
        raise LmforgeError(f"cannot open the registry {path}: {e}",
                           "check the workspace folder exists and is writable") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn, path)
    except LmforgeError:
        conn.close()
        raise
    except sqlite3.OperationalError as e:
        conn.close()
        if "locked" in str(e) or "busy" in str(e):
            raise LmforgeError(f"the registry {path} stayed locked for {BUSY_TIMEOUT_S:.0f} s",
                               "another lmforge process holds it; retry when it finishes"
                               ) from None
        raise LmforgeError(f"cannot use the registry {path}: {e}",
                           "check the workspace folder is writable and not on a network "
                           "share without file locking") from None
    except sqlite3.DatabaseError as e:
        conn.close()
        raise _not_ours(path, str(e)) from None
    return conn


def open_record(path: Path, url: str | None = None) -> Connection:
    """The record at `url` (postgresql://...: a team registry) or else the SQLite file
    `path`, opened and migrated."""
    if not url:
        return connect(path)
    from lmforge.registry import postgres

    if not postgres.is_url(url):
        raise LmforgeError(f"the registry URL {postgres.shown(url)!r} is not a PostgreSQL URL",
                           f"give one like {postgres.URL_EXAMPLE}, or unset "
                           "LMFORGE_REGISTRY_URL to keep the record in the workspace (SQLite)")
    return postgres.connect(url, APPLICATION_ID, MIGRATIONS)
