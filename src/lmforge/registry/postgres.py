"""The registry's record in PostgreSQL: a team's machines share one record.

    LMFORGE_REGISTRY_URL=postgresql://lmforge@db.lab:5432/registry lmforge registry ls

Only the record moves; artifact files stay in the workspace folder, which the machines share
(NFS, a cluster file system). Paths in the record are relative to the workspace, so each
machine may mount it where it likes.

The registry writes its SQL once, in SQLite's dialect; `translate` turns a statement into
PostgreSQL's in one place (placeholders, AUTOINCREMENT, INSERT OR IGNORE). `PostgresRecord`
answers the calls the registry makes on a sqlite3.Connection (`execute`, rows read by
position or column name, `rowcount`), so the rest of the registry does not know which
database holds the record. Writers serialize on a transaction-level advisory lock, as
SQLite's writers do on BEGIN IMMEDIATE: a move reads, checks and writes with no other
writer in between, on any machine.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from lmforge.errors import LmforgeError

URL_SCHEMES = ("postgresql", "postgres")
LOCK_TIMEOUT_S = 30  # as long as a SQLite writer waits for the lock (db.BUSY_TIMEOUT_S)
CONNECT_TIMEOUT_S = 10
URL_EXAMPLE = "postgresql://USER@HOST:5432/DBNAME"

# One key for every writer of a database (advisory locks are per database): lmforge's
# application id, "lmfg".
WRITE_LOCK_KEY = 0x6C6D6667

# Statements PostgreSQL runs after migration i, for what SQLite gives without asking:
# the implicit rowid, which orders artifacts registered within the same instant.
AFTER_MIGRATION: dict[int, tuple[str, ...]] = {
    0: ("ALTER TABLE artifacts ADD COLUMN rowid BIGSERIAL",),
}

# The schema version and the mark that the database is ours (SQLite keeps both in PRAGMAs).
_SCHEMA_TABLE = "lmforge_schema"
_OUR_TABLES = ("artifacts", "parents", "aliases", "events", "archives",
               "alias_moves")

# A string literal or a comment (whose quotes and question marks are not SQL), else one
# placeholder: `?`, or `:name` (not a `::` cast), or a `%` that psycopg would read as one.
_TOKEN = re.compile(r"(?P<literal>'(?:[^']|'')*')|(?P<comment>--[^\n]*)"
                    r"|(?P<positional>\?)|(?<!:):(?P<named>[A-Za-z_]\w*)|(?P<percent>%)")
_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)
_AUTOINCREMENT = re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b", re.IGNORECASE)
_SQLITE_ONLY = re.compile(r"^\s*(PRAGMA\b|INSERT\s+OR\s+REPLACE\b)", re.IGNORECASE)


def is_url(value: str) -> bool:
    return urlsplit(value).scheme in URL_SCHEMES


def shown(url: str) -> str:
    """The URL without its password, for messages and listings."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """`sql`, written for SQLite, in PostgreSQL's dialect for psycopg."""
    if _SQLITE_ONLY.match(sql):
        raise ValueError(f"no PostgreSQL form of this SQLite statement: {sql[:60]!r}")

    def token(m: re.Match[str]) -> str:
        if m["literal"] is not None:  # psycopg reads `%` as a placeholder even in a literal
            return m["literal"].replace("%", "%%")
        if m["comment"] is not None:
            return ""
        if m["positional"] is not None:
            return "%s"
        if m["named"] is not None:
            return f"%({m['named']})s"
        return "%%"

    out = _AUTOINCREMENT.sub("BIGSERIAL PRIMARY KEY", _TOKEN.sub(token, sql))
    if _INSERT_OR_IGNORE.match(out):
        out = _INSERT_OR_IGNORE.sub("INSERT INTO", out) + " ON CONFLICT DO NOTHING"
    return out


class Row(tuple):
    """A result row read as sqlite3.Row reads: by position, by column name, and as a
    mapping (`dict(row)`)."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._index[key])
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    index: dict[str, int] = {}
    for i, column in enumerate(cursor.description or ()):
        index.setdefault(column.name, i)  # `a.*, a.rowid` names rowid twice: same value
    return lambda values: Row(values, index)


class PostgresRecord:
    """One connection to a team registry, answering the registry's calls as a
    sqlite3.Connection does. Not shared between processes; threads take turns (the
    Workspace holds a lock around every call)."""

    def __init__(self, conn: Any, url: str):
        self._conn = conn
        self.url = url

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> Any:
        import psycopg

        try:
            # Always with parameters: psycopg then reads `%%` as `%`, as translate() writes it.
            return self._conn.execute(translate(sql), parameters)
        except psycopg.errors.LockNotAvailable:
            raise LmforgeError(f"the team registry {shown(self.url)} stayed locked for "
                               f"{LOCK_TIMEOUT_S} s", "another lmforge process is writing "
                               "to it; retry when it finishes") from None
        except psycopg.OperationalError as e:
            raise self._lost(e) from None

    def _lost(self, error: Exception) -> LmforgeError:
        return LmforgeError(f"lost the connection to the team registry {shown(self.url)}: "
                            f"{_first_line(error)}", "check the PostgreSQL server is up and "
                            "reachable, then run the command again")

    @contextmanager
    def write_transaction(self) -> Iterator[PostgresRecord]:
        """A transaction that holds the registry's write lock until it commits or rolls back
        (an exception in the block rolls back, as with SQLite)."""
        import psycopg

        try:
            with self._conn.transaction():
                self.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))
                yield self
        except psycopg.OperationalError as e:  # BEGIN or COMMIT on a connection that broke
            raise self._lost(e) from None

    def close(self) -> None:
        self._conn.close()


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _not_ours(url: str, why: str) -> LmforgeError:
    return LmforgeError(f"the database {shown(url)} is not an lmforge registry ({why})",
                        "point LMFORGE_REGISTRY_URL (or --registry-url) at an empty database "
                        "or an lmforge registry, e.g. `createdb lmforge_registry`")


def migrate(record: PostgresRecord, application_id: int,
            migrations: Sequence[Sequence[str]]) -> None:
    """Bring the schema to len(migrations), in one transaction under the write lock (two
    machines opening a new database at once: one creates, the other finds it made)."""
    url, target = record.url, len(migrations)
    with record.write_transaction() as c:
        if c.execute(f"SELECT to_regclass('{_SCHEMA_TABLE}')").fetchone()[0] is None:
            found = [t for t in _OUR_TABLES
                     if c.execute(f"SELECT to_regclass('{t}')").fetchone()[0] is not None]
            if found:
                raise _not_ours(url, f"it has tables {', '.join(found)} but no "
                                     f"{_SCHEMA_TABLE}")
            c.execute(f"CREATE TABLE {_SCHEMA_TABLE} (application_id BIGINT NOT NULL, "
                      "version INTEGER NOT NULL)")
            c.execute(f"INSERT INTO {_SCHEMA_TABLE} VALUES (?, 0)", (application_id,))
        rows = c.execute(f"SELECT application_id, version FROM {_SCHEMA_TABLE}").fetchall()
        if len(rows) != 1 or rows[0][0] != application_id:
            raise _not_ours(url, f"{_SCHEMA_TABLE} holds {[tuple(r) for r in rows]}")
        version = rows[0][1]
        if version > target:
            raise LmforgeError(f"the team registry {shown(url)} was written by a newer "
                               f"lmforge (schema {version}; this lmforge knows up to "
                               f"{target})", "upgrade lmforge: pip install -U 'lmforge[team]'")
        for step in range(version, target):
            for statement in (*migrations[step], *AFTER_MIGRATION.get(step, ())):
                c.execute(statement)
        if version < target:
            c.execute(f"UPDATE {_SCHEMA_TABLE} SET version = ?", (target,))


def connect(url: str, application_id: int,
            migrations: Sequence[Sequence[str]]) -> PostgresRecord:
    """Open and migrate the team registry at `url` (postgresql://...)."""
    try:
        import psycopg
    except ImportError:
        raise LmforgeError(f"a registry at {shown(url)} needs psycopg, PostgreSQL's Python "
                           "driver, which is not installed",
                           "pip install 'lmforge[team]'") from None
    try:
        conn = psycopg.connect(url, autocommit=True, row_factory=_row_factory,
                               connect_timeout=CONNECT_TIMEOUT_S)
        # A writer waiting on the lock gives up, as a SQLite one does (set here, not in the
        # URL's options, which stay the user's).
        conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
    except psycopg.Error as e:  # unreachable, refused, no such database or user, bad URL
        raise LmforgeError(f"cannot open the team registry {shown(url)}: {_first_line(e)}",
                           f"check the server is running and the URL ({URL_EXAMPLE}) in "
                           "LMFORGE_REGISTRY_URL or --registry-url") from None
    record = PostgresRecord(conn, url)
    try:
        migrate(record, application_id, migrations)
    except BaseException:
        record.close()
        raise
    return record
