"""Turn what a user types into one artifact id.

Tried in order: a full id, an alias (`production`), `<kind>:latest`, a path to an artifact
folder inside the workspace, then a unique id prefix (with or without the `<kind>-`).
"""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.registry.db import Connection
from lmforge.registry.manifest import MANIFEST_NAME

_LS_HINT = "see what exists with `lmforge registry ls`"


def _latest(conn: Connection, kind: str) -> str:
    row = conn.execute("SELECT id FROM artifacts WHERE kind = ? "
                       "ORDER BY created DESC, rowid DESC LIMIT 1", (kind,)).fetchone()
    if row is None:
        raise LmforgeError(f"there is no {kind} artifact in this workspace yet", _LS_HINT)
    return row["id"]


def _from_path(conn: Connection, root: Path, ref: str) -> str | None:
    folder = Path(ref).expanduser()
    if not (folder / MANIFEST_NAME).is_file():
        return None
    folder = folder.resolve()
    artifacts = (root / "artifacts").resolve()
    if not folder.is_relative_to(artifacts):
        raise LmforgeError(f"{folder} is not inside the workspace {root}",
                           "register it here with a stage command, or open the workspace "
                           "that holds it (--workspace)")
    row = conn.execute("SELECT id FROM artifacts WHERE id = ?", (folder.name,)).fetchone()
    if row is None:
        raise LmforgeError(f"{folder} is not in the registry of {root}", _LS_HINT)
    return row["id"]


def _by_prefix(conn: Connection, ref: str, kind: str | None) -> str | None:
    rows = conn.execute(
        "SELECT id, kind FROM artifacts WHERE substr(id, 1, length(:ref)) = :ref "
        "OR substr(id, length(kind) + 2, length(:ref)) = :ref ORDER BY id",
        {"ref": ref}).fetchall()
    if len(rows) > 1 and kind is not None:  # the expected kind breaks ties
        rows = [r for r in rows if r["kind"] == kind] or rows
    if len(rows) > 1:
        shown = ", ".join(r["id"] for r in rows[:10]) + (" ..." if len(rows) > 10 else "")
        raise LmforgeError(f"{ref!r} matches {len(rows)} artifacts: {shown}",
                           "type more characters of the id")
    return rows[0]["id"] if rows else None


def find_id(conn: Connection, root: Path, ref: str, kind: str | None = None) -> str:
    """The full id `ref` names, or LmforgeError saying why it names none."""
    if isinstance(ref, Path):
        ref = str(ref)
    if not isinstance(ref, str):
        raise LmforgeError(f"an artifact reference must be a string, not a "
                           f"{type(ref).__name__}", "pass the artifact's id (e.g. art.id)")
    ref = ref.strip()
    if not ref:
        raise LmforgeError("an empty artifact reference was given", _LS_HINT)
    row = conn.execute("SELECT id FROM artifacts WHERE id = ?", (ref,)).fetchone()
    if row is None:
        row = conn.execute("SELECT artifact_id AS id FROM aliases WHERE alias = ?",
                           (ref,)).fetchone()
    if row is not None:
        return row["id"]
    if ref.endswith(":latest"):
        return _latest(conn, ref[: -len(":latest")])
    if ref == "latest" and kind is not None:
        return _latest(conn, kind)
    found = _from_path(conn, root, ref) or _by_prefix(conn, ref, kind)
    if found is None:
        what = f"{kind} " if kind else ""
        raise LmforgeError(f"no {what}artifact, alias or artifact folder matches {ref!r}",
                           _LS_HINT)
    return found
