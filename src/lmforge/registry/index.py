"""The database half of registering: resolve parent references, insert the rows once.

Rows are written after the folder is in place, in one transaction, with INSERT OR IGNORE:
a crash in between leaves a folder that the next identical registration indexes, and two
processes registering the same content both succeed with one row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.registry.db import Connection, write_transaction
from lmforge.registry.manifest import MANIFEST_NAME, canonical_json, sha256_file
from lmforge.registry.origin import actor, command_line
from lmforge.registry.resolve import find_id

Parents = dict[str, str | list[str]]


def parent_ids(conn: Connection, root: Path, parents: Parents) -> Parents:
    """Resolve every parent reference to a full id, keeping each role's one-or-list shape."""
    if not isinstance(parents, dict):
        raise LmforgeError("parents must map a role to an artifact id or a list of ids",
                           "e.g. parents={'tokenizer': tok.id, 'data': [a.id, b.id]}")
    full: Parents = {}
    for role, refs in parents.items():
        if not isinstance(role, str) or not role:
            raise LmforgeError(f"parent role {role!r} is not a name",
                               "use a word such as 'tokenizer' or 'data'")
        many = isinstance(refs, (list, tuple))
        ids = [find_id(conn, root, r) for r in (refs if many else [refs])]
        if len(set(ids)) != len(ids):
            raise LmforgeError(f"parent role {role!r} lists an artifact twice: {ids}",
                               "list each parent once")
        full[role] = ids if many else ids[0]
    return full


def insert_artifact(conn: Connection, root: Path, manifest: dict[str, Any],
                    folder: Path, state: str | None, placed: bool) -> None:
    """Index a placed artifact: its row, its parent links, and its first lifecycle event.
    `placed`: this registration wrote the folder, so a row already there (its folder was
    deleted and is now rebuilt from the same inputs) takes the new manifest's details."""
    m = manifest
    cols = {"id": m["id"], "kind": m["kind"], "stage": m["stage"], "name": m.get("name"),
            "path": folder.relative_to(root).as_posix(), "created": m["created"],
            "state": state, "settings_json": canonical_json(m["settings"]),
            "metrics_json": canonical_json(m.get("metrics", {})),
            "manifest_sha256": sha256_file(folder / MANIFEST_NAME),
            "lmforge_version": m["lmforge_version"]}
    with write_transaction(conn) as c:
        cur = c.execute(f"INSERT OR IGNORE INTO artifacts ({', '.join(cols)}) "
                        f"VALUES ({', '.join(':' + k for k in cols)})", cols)
        if cur.rowcount == 0:  # indexed already, by an earlier or a concurrent registration
            if placed:
                c.execute("UPDATE artifacts SET stage = :stage, name = :name, "
                          "created = :created, metrics_json = :metrics_json, "
                          "manifest_sha256 = :manifest_sha256, "
                          "lmforge_version = :lmforge_version WHERE id = :id", cols)
            return
        for role, refs in m["parents"].items():
            for pos, pid in enumerate(refs if isinstance(refs, list) else [refs]):
                c.execute("INSERT INTO parents (child_id, parent_id, role, position) "
                          "VALUES (?,?,?,?)", (m["id"], pid, role, pos))
        if state is not None:
            c.execute("INSERT INTO events (artifact_id, from_state, to_state, reason, forced, "
                      "time, actor, command) VALUES (?, NULL, ?, 'registered', 0, ?, ?, ?)",
                      (m["id"], state, m["created"], actor(), command_line()))
