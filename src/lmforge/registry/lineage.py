"""Lineage: the tree of what made an artifact, back to its sources.

Each node is a plain dict {id, kind, stage, name, state, role, children}; a node's
`children` are its parents (what it was made from), so the tree reads root-first from the
artifact asked about. Ids are content hashes and parents exist before children, so the
graph has no cycles; an ancestor reached by two paths appears under both.
"""

from __future__ import annotations

from typing import Any

from lmforge.registry.db import Connection, Row


def parent_rows(conn: Connection, child_id: str) -> list[Row]:
    return conn.execute("SELECT parent_id, role FROM parents WHERE child_id = ? "
                        "ORDER BY role, position", (child_id,)).fetchall()


def lineage_tree(conn: Connection, art_id: str, role: str | None = None
                 ) -> dict[str, Any]:
    row = conn.execute("SELECT id, kind, stage, name, state FROM artifacts WHERE id = ?",
                       (art_id,)).fetchone()
    return {
        "id": row["id"], "kind": row["kind"], "stage": row["stage"], "name": row["name"],
        "state": row["state"], "role": role,
        "children": [lineage_tree(conn, p["parent_id"], p["role"])
                     for p in parent_rows(conn, art_id)],
    }
