"""The Workspace: one folder, one registry, every artifact lmforge made.

    ws = Workspace.open()                       # --workspace, LMFORGE_HOME, ./lmforge-workspace
    ws = Workspace.open(registry_url="postgresql://lmforge@db/registry")  # a team's record
    with ws.staging() as d:
        (d / "model.safetensors").write_bytes(data)
        art = ws.register(d, kind="model", stage="init", parents={"design": design_id},
                          settings={...}, state="initialized")
    model = ws.resolve("production", kind="model")   # verified against its sha256s
"""

from __future__ import annotations

import builtins
import functools
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, final

from lmforge.errors import LmforgeError
from lmforge.registry import db
from lmforge.registry.approval import ApprovalPolicy
from lmforge.registry.artifact import AliasMove, Artifact, ArtifactRecord, Event
from lmforge.registry.index import Parents, insert_artifact, parent_ids
from lmforge.registry.lifecycle import (
    INITIAL_STATES,
    AlsoInMove,
    apply_move,
    check_state_name,
)
from lmforge.registry.lineage import lineage_tree
from lmforge.registry.manifest import (
    MANIFEST_NAME,
    check_jsonable,
    read_manifest,
    sha256_file,
    verify_files,
)
from lmforge.registry.origin import actor, command_line
from lmforge.registry.resolve import find_id
from lmforge.registry.store import check_slug, remove_tree, seal_and_place, utc_now

DEFAULT_ROOT = "lmforge-workspace"


@final  # not built for subclassing; also lets __enter__ say it returns a Workspace
class Workspace:
    """A workspace folder: registry.db, artifacts/<kind>/<id>/, artifacts/.staging/, runs/.
    A team keeps the record (registry.db's tables) in PostgreSQL instead, and shares the
    folder: `registry_url`."""

    def __init__(self, root: Path, conn: db.Connection, registry_url: str | None = None):
        self.root = root
        self.registry_url = registry_url  # None: the record is root/registry.db
        self.artifacts_dir = root / "artifacts"
        self.staging_dir = self.artifacts_dir / ".staging"
        self.runs_dir = root / "runs"
        self._conn = conn
        self._lock = threading.RLock()  # one connection, shared by threads in turn

    @classmethod
    def open(cls, root: str | Path | None = None, registry_url: str | None = None
             ) -> Workspace:
        """Open (creating on first use) the workspace at `root`, $LMFORGE_HOME, or
        ./lmforge-workspace, with its record in the PostgreSQL database at `registry_url` or
        $LMFORGE_REGISTRY_URL where one is given, else in the folder's registry.db."""
        root = Path(root or os.environ.get("LMFORGE_HOME") or DEFAULT_ROOT).expanduser()
        root = root.resolve()
        if root.exists() and not root.is_dir():
            raise LmforgeError(f"the workspace path {root} is a file, not a folder",
                               "pass --workspace (or set LMFORGE_HOME) to a folder")
        try:
            for sub in ("artifacts/.staging", "runs"):
                (root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LmforgeError(f"cannot create the workspace at {root}: {e.strerror}",
                               "pick a folder you can write to (--workspace)") from None
        url = registry_url or os.environ.get("LMFORGE_REGISTRY_URL", "").strip() or None
        return cls(root, db.open_record(root / "registry.db", url), url)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __del__(self) -> None:  # a handle dropped without close() must not leak the DB
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # -- registering ---------------------------------------------------------------

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh empty folder to fill and then `register`; removed if not registered."""
        path = Path(tempfile.mkdtemp(prefix="stage-", dir=self.staging_dir))
        try:
            yield path
        finally:
            remove_tree(path)

    def register(self, src_dir: str | Path, *, kind: str, stage: str,
                 parents: Parents | None = None, settings: dict[str, Any] | None = None,
                 metrics: dict[str, Any] | None = None, state: str | None = None,
                 name: str | None = None) -> Artifact:
        """Make `src_dir`'s files an immutable artifact and index it. Idempotent: the same
        kind, files, parents and settings give the same id, and the first registration wins.
        A folder from `staging()` is moved in; any other folder is copied and left as is."""
        check_slug(kind, "artifact kind")
        if not isinstance(stage, str) or not stage.strip():
            raise LmforgeError(f"stage {stage!r} is not valid", "name the stage that made it")
        settings, metrics = dict(settings or {}), dict(metrics or {})
        check_jsonable(settings, "settings")
        check_jsonable(metrics, "metrics")
        if state is not None:
            check_state_name(state)
            if state not in INITIAL_STATES:
                raise LmforgeError(f"a new artifact cannot start as {state!r}",
                                   f"start it as one of {', '.join(INITIAL_STATES)}, "
                                   f"then move it with set_state")
        src = Path(src_dir).resolve()
        if not src.is_dir():
            raise LmforgeError(f"cannot register {src}: it is not a folder",
                               "pass the folder that holds the artifact's files")
        with self._lock:
            full_parents = parent_ids(self._conn, self.root, parents or {})
        place = functools.partial(seal_and_place, artifacts_dir=self.artifacts_dir, kind=kind,
                                  stage=stage, parents=full_parents, settings=settings,
                                  metrics=metrics, name=name)
        staging = self.staging_dir.resolve()
        if src != staging and src.is_relative_to(staging):
            final, placed = place(src)
        else:  # copy first: the rename that makes it an artifact must stay on one disk
            with self.staging() as tmp:
                shutil.copytree(src, tmp / "a", symlinks=True)
                final, placed = place(tmp / "a")
        manifest = read_manifest(final)
        with self._lock:
            insert_artifact(self._conn, self.root, manifest, final, state, placed)
        return Artifact(manifest["id"], kind, final, manifest)

    # -- finding -------------------------------------------------------------------

    def resolve(self, ref: str, kind: str | None = None, verify: bool = True) -> Artifact:
        """The artifact `ref` names (id, id prefix, alias, `<kind>:latest`, or folder path),
        checked to be of `kind` and, with `verify`, against every file's sha256."""
        rec = self.record(ref, kind)
        if kind is not None and rec.kind != kind:
            raise LmforgeError(f"{rec.id} is a {rec.kind}, expected a {kind}",
                               f"pass a {kind} (see `lmforge registry ls --kind {kind}`)")
        if not rec.path.is_dir():
            if rec.state == "archived" and (where := self.archive_of(rec.id)):
                raise LmforgeError(f"model {rec.id} is archived: its files are in "
                                   f"{where['bundle']}", "bring them back with `lmforge "
                                   f"registry restore {where['bundle']}`")
            raise LmforgeError(f"artifact {rec.id} is registered but its folder {rec.path} "
                               f"is missing", "restore the folder from a backup, or re-run "
                               "the stage that made it")
        manifest = read_manifest(rec.path)
        if manifest["id"] != rec.id:
            raise LmforgeError(f"{rec.path / MANIFEST_NAME} names {manifest['id']}, not "
                               f"{rec.id}", "restore the artifact folder from a backup")
        if verify:
            with self._lock:
                expected = self._conn.execute("SELECT manifest_sha256 FROM artifacts WHERE "
                                              "id = ?", (rec.id,)).fetchone()[0]
            if sha256_file(rec.path / MANIFEST_NAME) != expected:
                raise LmforgeError(f"artifact {rec.id}: manifest.json was edited after "
                                   f"registration", "restore it from a backup")
            verify_files(rec.path, manifest)
        return Artifact(rec.id, rec.kind, rec.path, manifest)

    def record(self, ref: str, kind: str | None = None) -> ArtifactRecord:
        """The registry row for `ref`, without reading the artifact folder."""
        with self._lock:
            art_id = find_id(self._conn, self.root, ref, kind)
            row = self._conn.execute("SELECT * FROM artifacts WHERE id = ?",
                                     (art_id,)).fetchone()
        return ArtifactRecord.from_row(row, self.root)

    def list(self, kind: str | None = None, state: str | None = None
             ) -> builtins.list[ArtifactRecord]:
        """Registered artifacts, newest first, optionally of one kind and/or state."""
        where, args = [], []
        for column, value in (("kind", kind), ("state", state)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM artifacts" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY created DESC, rowid DESC",
                                      args).fetchall()
        return [ArtifactRecord.from_row(r, self.root) for r in rows]

    def children(self, ref: str, kind: str | None = None) -> builtins.list[ArtifactRecord]:
        """Artifacts made from `ref` (that name it as a parent), newest first."""
        art_id = self.record(ref).id
        with self._lock:
            # The kind's test only when given: PostgreSQL cannot type a bare `NULL IS NULL`.
            rows = self._conn.execute(
                "SELECT DISTINCT a.*, a.rowid FROM parents p JOIN artifacts a ON a.id = "
                "p.child_id WHERE p.parent_id = :id"
                + (" AND a.kind = :kind" if kind is not None else "")
                + " ORDER BY a.created DESC, a.rowid DESC", {"id": art_id, "kind": kind}
            ).fetchall()
        return [ArtifactRecord.from_row(r, self.root) for r in rows]

    def lineage(self, ref: str) -> dict[str, Any]:
        """The tree of what made `ref`: {id, kind, stage, name, state, role, children}."""
        art_id = self.record(ref).id
        with self._lock:
            return lineage_tree(self._conn, art_id)

    # -- aliases -------------------------------------------------------------------

    def set_alias(self, alias: str, ref: str, reason: str = "") -> str:
        """Point `alias` (e.g. `production`) at `ref`; return the full id. The move is kept in
        the alias's history (who, when, why, the command) in the same transaction; pointing
        it where it already points changes nothing."""
        check_slug(alias, "alias", example="production")
        art_id = self.record(ref).id
        with self._lock, db.write_transaction(self._conn) as c:
            if c.execute("SELECT 1 FROM artifacts WHERE id = ?", (alias,)).fetchone():
                raise LmforgeError(f"alias {alias!r} is an artifact id", "pick another name")
            row = c.execute("SELECT artifact_id FROM aliases WHERE alias = ?",
                            (alias,)).fetchone()
            previous = row[0] if row is not None else None
            if previous == art_id:
                return art_id
            now = utc_now()
            c.execute("INSERT INTO aliases (alias, artifact_id, updated) VALUES (?,?,?) "
                      "ON CONFLICT (alias) DO UPDATE SET artifact_id = excluded.artifact_id, "
                      "updated = excluded.updated", (alias, art_id, now))
            _record_alias_move(c, alias, art_id, previous, now, reason)
        return art_id

    def remove_alias(self, alias: str, reason: str = "") -> str:
        """Remove `alias`, keeping the removal in its history; return the id it named."""
        with self._lock, db.write_transaction(self._conn) as c:
            row = c.execute("SELECT artifact_id FROM aliases WHERE alias = ?",
                            (alias,)).fetchone()
            if row is None:
                raise LmforgeError(f"there is no alias {alias!r}",
                                   "see aliases with `lmforge registry ls`")
            c.execute("DELETE FROM aliases WHERE alias = ?", (alias,))
            _record_alias_move(c, alias, None, row[0], utc_now(), reason)
            return row[0]

    def alias_history(self, alias: str) -> builtins.list[AliasMove]:
        """Every move of `alias`, oldest first (empty for a name never used)."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM alias_moves WHERE alias = ? ORDER BY seq",
                                      (alias,)).fetchall()
        return [AliasMove.from_row(r) for r in rows]

    def alias_moves_of(self, ref: str) -> builtins.list[AliasMove]:
        """Every alias move that pointed an alias at `ref` or away from it, oldest first."""
        art_id = self.record(ref).id
        with self._lock:
            rows = self._conn.execute("SELECT * FROM alias_moves WHERE artifact_id = ? OR "
                                      "previous_id = ? ORDER BY seq", (art_id, art_id)
                                      ).fetchall()
        return [AliasMove.from_row(r) for r in rows]

    def aliases(self) -> dict[str, str]:
        """alias -> artifact id, for every alias."""
        with self._lock:
            rows = self._conn.execute("SELECT alias, artifact_id FROM aliases ORDER BY alias")
            return {r["alias"]: r["artifact_id"] for r in rows}

    def aliases_of(self, ref: str) -> builtins.list[str]:
        art_id = self.record(ref).id
        return [a for a, i in self.aliases().items() if i == art_id]


    # -- lifecycle -----------------------------------------------------------------

    def state_of(self, ref: str) -> str | None:
        """The lifecycle state, or None for artifacts without one (non-models)."""
        return self.record(ref).state

    def set_state(self, ref: str, to_state: str, reason: str, force: bool = False, *,
                  sunset: str | None = None, successor: str | None = None, note: str = "",
                  also: AlsoInMove | None = None, policy: ApprovalPolicy | None = None
                  ) -> Event:
        """Move a model to `to_state`, checking the move and (for `approved`) that passing
        eval and red-team reports of it exist, meeting their gates and `policy`'s thresholds
        (registry/approval.py); the approval event keeps that decision. `force` overrides; the
        event says so. The other keywords are for the end-of-life commands
        (registry/retire.py, registry/archive.py)."""
        with self._lock:
            return apply_move(self._conn, self.root, ref, to_state, reason, force,
                              sunset=sunset, successor=successor, note=note, also=also,
                              policy=policy)

    def deprecations(self) -> dict[str, Event]:
        """model id -> its latest deprecation event, for models still deprecated or past it
        (retired, archived): what `registry ls` marks and a server announces."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT e.* FROM events e JOIN artifacts a ON a.id = e.artifact_id "
                "WHERE e.to_state = 'deprecated' AND a.state IN ('deprecated', 'retired', "
                "'archived') ORDER BY e.seq").fetchall()
        return {r["artifact_id"]: Event.from_row(r) for r in rows}  # later seq wins

    def manifest_digest(self, ref: str) -> str:
        """The sha256 of manifest.json as registered: what guards the manifest itself."""
        art_id = self.record(ref).id
        with self._lock:
            return self._conn.execute("SELECT manifest_sha256 FROM artifacts WHERE id = ?",
                                      (art_id,)).fetchone()[0]

    def archive_of(self, ref: str) -> dict[str, str] | None:
        """Where an archived model's files are: {bundle, bundle_sha256, index_path, time}."""
        art_id = self.record(ref).id
        with self._lock:
            row = self._conn.execute("SELECT bundle, bundle_sha256, index_path, time FROM "
                                     "archives WHERE artifact_id = ?", (art_id,)).fetchone()
        return dict(row) if row is not None else None

    def history(self, ref: str) -> builtins.list[Event]:
        """Every lifecycle move of `ref`, oldest first."""
        art_id = self.record(ref).id
        with self._lock:
            rows = self._conn.execute("SELECT * FROM events WHERE artifact_id = ? "
                                      "ORDER BY seq", (art_id,)).fetchall()
        return [Event.from_row(r) for r in rows]


def _record_alias_move(c: db.Connection, alias: str, art_id: str | None, previous: str | None,
                       now: str, reason: str) -> None:
    """One row of an alias's history, inside the transaction that changes the alias."""
    c.execute("INSERT INTO alias_moves (alias, artifact_id, previous_id, time, actor, reason, "
              "command) VALUES (?,?,?,?,?,?,?)",
              (alias, art_id, previous, now, actor(), reason.strip(), command_line()))
