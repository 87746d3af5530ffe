"""Archive a retired model's files into one compressed, checksummed bundle, and restore them.

    DIR/<id>.tar.zst        the artifact folder (manifest.json and every file) under <id>/,
                            and record/: the model's registry entry and event history, and
                            its retirement report (lifecycle/retirement.py) when it has one
    DIR/<id>.archive.json   the index: sha256 and size of every member and of the bundle

zstd where `zstandard` is installed, gzip otherwise. The order makes every crash safe:
the bundle is written (temporary file, fsync, rename), read back and checked member by
member; only then does the model move to `archived` (with the bundle's place, in the same
transaction); only then is its folder removed. A restore checks the bundle's sha256, then
every file's, then the manifest's against the registry, in a staging folder, before it
renames the folder into place and moves the model back to `retired`. Killed at any point,
either step leaves the previous state, or a state that running the same command again
finishes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lmforge.errors import LmforgeError
from lmforge.registry.artifact import Artifact, Event
from lmforge.registry.atomic import atomic_open, atomic_write_json, fsync_dir
from lmforge.registry.db import Connection
from lmforge.registry.manifest import MANIFEST_NAME, read_manifest, sha256_file, verify_files
from lmforge.registry.origin import actor
from lmforge.registry.store import READ_ONLY, remove_tree, utc_now
from lmforge.registry.workspace import Workspace

ARCHIVE_FORMAT = "lmforge-archive/1"
INDEX_SUFFIX = ".archive.json"
RECORD_DIR = "record"
RETIREMENT_KIND = "retirement-report"  # lifecycle/retirement.py registers these
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archived:
    event: Event | None  # None: the model was archived already and this run finished it
    bundle: Path
    index: Path
    bundle_bytes: int
    files: int


def compression() -> str:
    """'zst' where zstandard is installed (smaller and faster), else 'gz'."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return "gz"
    return "zst"


@contextmanager
def _compressing(raw: IO[bytes], kind: str) -> Iterator[IO[bytes]]:
    if kind == "zst":
        import zstandard

        with zstandard.ZstdCompressor(level=10).stream_writer(raw, closefd=False) as z:
            yield z  # type: ignore[misc]
    else:  # mtime=0: the same files give the same bytes
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as z:
            yield z


@contextmanager
def _decompressing(raw: IO[bytes], kind: str) -> Iterator[IO[bytes]]:
    if kind == "zst":
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(raw, closefd=False) as z:
            yield z  # type: ignore[misc]
    elif kind == "gz":
        with gzip.GzipFile(fileobj=raw, mode="rb") as z:
            yield z
    else:
        raise LmforgeError(f"unknown bundle compression {kind!r}",
                           "this bundle was written by a newer lmforge; upgrade lmforge")


def _add(tar: tarfile.TarFile, name: str, data: IO[bytes], size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0  # fixed metadata: bytes follow content
    tar.addfile(info, data)


def _record_json(ws: Workspace, model_id: str) -> bytes:
    rec = ws.record(model_id)
    record = {"id": rec.id, "kind": rec.kind, "stage": rec.stage, "name": rec.name,
              "created": rec.created, "state": rec.state, "settings": rec.settings,
              "metrics": rec.metrics, "manifest_sha256": ws.manifest_digest(rec.id),
              "lineage": ws.lineage(rec.id), "aliases": ws.aliases_of(rec.id),
              "events": [e.__dict__ for e in ws.history(rec.id)]}
    return (json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _members(ws: Workspace, model_id: str) -> list[tuple[str, Path | bytes]]:
    """(name in the bundle, file or bytes): the artifact folder, then the record."""
    art = ws.resolve(model_id)  # verified: drifted files are never archived as if whole
    out: list[tuple[str, Path | bytes]] = [(f"{art.id}/{MANIFEST_NAME}", art.path / MANIFEST_NAME)]
    out += [(f"{art.id}/{rel}", art.path / rel) for rel in sorted(art.files)]
    out.append((f"{RECORD_DIR}/record.json", _record_json(ws, art.id)))
    reports = ws.children(art.id, kind=RETIREMENT_KIND)
    if reports:
        report = ws.resolve(reports[0].id)
        out += [(f"{RECORD_DIR}/{RETIREMENT_KIND}/{rel}", report.path / rel)
                for rel in sorted(report.files)]
    return out


class _Hashing(io.RawIOBase):
    """A file read through once by tarfile, hashed on the way: weights are never held in
    memory whole, and the checksum is of the very bytes that went into the bundle."""

    def __init__(self, f: IO[bytes]):
        self.f, self.h = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


def _write_bundle(path: Path, kind: str, members: list[tuple[str, Path | bytes]]
                  ) -> dict[str, dict[str, Any]]:
    """Write the bundle atomically; return {member: {sha256, bytes}} as written."""
    files: dict[str, dict[str, Any]] = {}
    with atomic_open(path) as raw, _compressing(raw, kind) as z, \
            tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, source in members:
            if isinstance(source, bytes):
                size, reader = len(source), _Hashing(io.BytesIO(source))
                _add(tar, name, reader, size)  # type: ignore[arg-type]
            else:
                with open(source, "rb") as f:
                    size, reader = os.fstat(f.fileno()).st_size, _Hashing(f)
                    _add(tar, name, reader, size)  # type: ignore[arg-type]
            files[name] = {"sha256": reader.h.hexdigest(), "bytes": size}
    return files


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..")
                                                           for p in parts)


def _read_members(bundle: Path, kind: str, expected: dict[str, dict[str, Any]],
                  extract_prefix: str | None = None, into: Path | None = None) -> None:
    """Read the bundle through, checking every member against `expected`; with `into`,
    write the members under `extract_prefix` there. LmforgeError names the first problem."""
    fix = "the workspace was not changed; use another copy of the bundle"
    seen: set[str] = set()
    try:
        with open(bundle, "rb") as raw, _decompressing(raw, kind) as z, \
                tarfile.open(fileobj=z, mode="r|") as tar:
            for info in tar:
                name = info.name
                if not info.isfile() or not _safe_name(name) or name in seen:
                    raise LmforgeError(f"bundle {bundle} holds an unexpected entry {name!r}",
                                       fix)
                if name not in expected:
                    raise LmforgeError(f"bundle {bundle} holds {name}, which its index does "
                                       "not list", fix)
                seen.add(name)
                src = tar.extractfile(info)
                assert src is not None  # a regular file always has data
                target = None
                if into is not None and extract_prefix and name.startswith(extract_prefix):
                    target = into / name[len(extract_prefix):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256()
                with open(target, "wb") if target else open(os.devnull, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                    if target:
                        out.flush()
                        os.fsync(out.fileno())
                if h.hexdigest() != expected[name]["sha256"]:
                    raise LmforgeError(f"bundle {bundle}: {name} does not match its checksum",
                                       fix)
    except LmforgeError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise LmforgeError(f"bundle {bundle} cannot be read: {e}", fix) from None
    except Exception as e:  # zstandard.ZstdError is not an OSError
        if type(e).__module__.startswith("zstd"):
            raise LmforgeError(f"bundle {bundle} cannot be decompressed: {e}", fix) from None
        raise
    missing = sorted(set(expected) - seen)
    if missing:
        raise LmforgeError(f"bundle {bundle} lacks {', '.join(missing[:5])}", fix)


def index_path_of(bundle: Path) -> Path:
    name = bundle.name
    for suffix in (".tar.zst", ".tar.gz"):
        if name.endswith(suffix):
            return bundle.with_name(name[: -len(suffix)] + INDEX_SUFFIX)
    return bundle.with_name(name + INDEX_SUFFIX)


def read_index(path: Path) -> dict[str, Any]:
    """An archive index, given the bundle or the index itself; LmforgeError if unusable."""
    index_path = path if path.name.endswith(INDEX_SUFFIX) else index_path_of(path)
    hint = f"the index {index_path.name} must sit beside its bundle, as archive wrote them"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmforgeError(f"{index_path} is missing", hint) from None
    except (OSError, ValueError) as e:
        raise LmforgeError(f"{index_path} cannot be read: {e}", hint) from None
    needed = {"format": str, "artifact": str, "kind": str, "bundle": str,
              "bundle_sha256": str, "compression": str, "files": dict}
    if not isinstance(index, dict) or any(not isinstance(index.get(k), t)
                                          for k, t in needed.items()):
        raise LmforgeError(f"{index_path} is not an lmforge archive index", hint)
    if index["format"] != ARCHIVE_FORMAT:
        raise LmforgeError(f"{index_path} is of format {index['format']!r}",
                           f"this lmforge reads {ARCHIVE_FORMAT}; upgrade lmforge")
    index["_path"] = str(index_path)
    index["_bundle"] = str(index_path.with_name(index["bundle"]))
    return index


def check_digest(index: dict[str, Any]) -> Path:
    """The bundle is where its index says and has the sha256 it lists; return its path."""
    bundle = Path(index["_bundle"])
    if not bundle.is_file():
        raise LmforgeError(f"the bundle {bundle} is missing",
                           "put the bundle back beside its index")
    got = sha256_file(bundle)
    if got != index["bundle_sha256"]:
        raise LmforgeError(f"bundle {bundle} is corrupted: sha256 {got[:16]}... where its "
                           f"index says {index['bundle_sha256'][:16]}...",
                           "the workspace was not changed; use another copy of the bundle")
    return bundle


def check_bundle(index: dict[str, Any]) -> None:
    """The bundle's bytes against its index: sha256 first, then each member."""
    _read_members(check_digest(index), index["compression"], index["files"])


def _retire_folder(ws: Workspace, folder: Path) -> None:
    """Remove an artifact folder with one rename first, so no half-deleted folder is ever
    seen under artifacts/."""
    if not folder.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix="archived-", dir=ws.staging_dir))
    os.rename(folder, trash / folder.name)
    fsync_dir(folder.parent)
    remove_tree(trash)


def archive(ws: Workspace, ref: str, to_dir: str | Path) -> Archived:
    """Archive retired model `ref` into `to_dir`; see the module docstring."""
    rec = ws.record(ref)
    if rec.state == "archived":
        return _finish_archive(ws, rec.id)
    if rec.state != "retired":
        raise LmforgeError(f"{rec.id} is {rec.state or 'not a model'}; only retired models "
                           "are archived", f"retire it first: `lmforge registry retire "
                           f"{rec.id}`")
    out = Path(to_dir).expanduser().resolve()
    if out.is_relative_to(ws.artifacts_dir.resolve()):
        raise LmforgeError(f"{out} is inside the workspace's artifacts",
                           "archive to a folder outside the workspace (cold storage)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LmforgeError(f"cannot create {out}: {e.strerror}",
                           "pick a folder you can write to") from None
    kind = compression()
    bundle = out / f"{rec.id}.tar.{kind}"
    files = _write_bundle(bundle, kind, _members(ws, rec.id))
    digest = sha256_file(bundle, fsync=True)
    index = {"format": ARCHIVE_FORMAT, "artifact": rec.id, "kind": rec.kind,
             "name": rec.name, "bundle": bundle.name, "bundle_sha256": digest,
             "bundle_bytes": bundle.stat().st_size, "compression": kind, "files": files,
             "created": utc_now(), "actor": actor()}
    index_path = atomic_write_json(index_path_of(bundle), index)
    for written in (bundle, index_path):  # an archive never changes; others may read it
        os.chmod(written, READ_ONLY)
    check_bundle(read_index(index_path))  # read back from disk before anything is removed

    def place(conn: Connection, event: Event) -> None:
        conn.execute("INSERT INTO archives (artifact_id, bundle, bundle_sha256, index_path, "
                     "time) VALUES (?,?,?,?,?) ON CONFLICT (artifact_id) DO UPDATE SET "
                     "bundle = excluded.bundle, bundle_sha256 = excluded.bundle_sha256, "
                     "index_path = excluded.index_path, time = excluded.time",
                     (rec.id, str(bundle), digest, str(index_path), event.time))

    event = ws.set_state(rec.id, "archived", f"files moved to {bundle}", also=place,
                         note=f"bundle sha256 {digest}")
    _retire_folder(ws, rec.path)
    return Archived(event, bundle, index_path, index["bundle_bytes"], len(files))


def _finish_archive(ws: Workspace, model_id: str) -> Archived:
    """An archived model whose folder is still here (a stop between the move and the
    removal): check the bundle again, then remove the folder."""
    where = ws.archive_of(model_id)
    rec = ws.record(model_id)
    if where is None:
        raise LmforgeError(f"{model_id} is archived but the registry has no bundle for it",
                           "restore its folder from a backup; then move it with `lmforge "
                           "registry promote ID retired --force --reason ...`")
    if not rec.path.exists():
        raise LmforgeError(f"{model_id} is archived already, in {where['bundle']}",
                           f"bring it back with `lmforge registry restore {where['bundle']}`")
    index = read_index(Path(where["index_path"]))
    check_bundle(index)
    _retire_folder(ws, rec.path)
    return Archived(None, Path(where["bundle"]), Path(where["index_path"]),
                    Path(where["bundle"]).stat().st_size, len(index["files"]))


@dataclass(frozen=True)
class Restored:
    event: Event
    artifact_id: str
    folder: Path
    files: int


def restore(ws: Workspace, bundle_or_index: str | Path) -> Restored:
    """Bring an archived model's files back bit-identical and move it to `retired`."""
    index = read_index(Path(bundle_or_index).expanduser().resolve())
    model_id = index["artifact"]
    try:
        rec = ws.record(model_id)
    except LmforgeError:
        raise LmforgeError(f"{model_id} is not in the registry of {ws.root}",
                           "restore into the workspace it was archived from (--workspace)"
                           ) from None
    if rec.state != "archived":
        raise LmforgeError(f"{model_id} is {rec.state}, not archived: nothing to restore",
                           f"see it with `lmforge registry show {model_id}`")
    if not rec.path.exists():
        bundle = check_digest(index)
        with ws.staging() as tmp:
            staged = tmp / model_id
            staged.mkdir()
            _read_members(bundle, index["compression"], index["files"],
                          extract_prefix=f"{model_id}/", into=staged)
            _check_restored(ws, model_id, staged)
            for p in staged.rglob("*"):
                if p.is_file():
                    os.chmod(p, READ_ONLY)
            os.chmod(staged, 0o755)
            rec.path.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staged, rec.path)
            fsync_dir(rec.path.parent)
    else:  # placed by a restore that stopped before its move: check it, then move
        ws.resolve(model_id)

    def forget(conn: Connection, event: Event) -> None:
        conn.execute("DELETE FROM archives WHERE artifact_id = ?", (model_id,))

    event = ws.set_state(model_id, "retired", f"restored from {index['_bundle']}",
                         also=forget)
    return Restored(event, model_id, rec.path,
                    sum(name.startswith(f"{model_id}/") for name in index["files"]))


def _check_restored(ws: Workspace, model_id: str, folder: Path) -> None:
    """The extracted folder is the registered artifact: its manifest is the one the
    registry recorded, and every file matches the manifest."""
    fix = "the workspace was not changed; use another copy of the bundle"
    if not (folder / MANIFEST_NAME).is_file():
        raise LmforgeError(f"the bundle holds no {model_id}/{MANIFEST_NAME}", fix)
    if sha256_file(folder / MANIFEST_NAME) != ws.manifest_digest(model_id):
        raise LmforgeError(f"the bundle's {MANIFEST_NAME} is not the one registered for "
                           f"{model_id}", fix)
    try:
        verify_files(folder, read_manifest(folder))
    except LmforgeError as e:
        raise LmforgeError(f"the bundle's files are not the registered artifact: {e.message}",
                           fix) from None


def archived_view(ws: Workspace, ref: str) -> Artifact:
    """An archived model as `registry show` presents it: its record, and its files as the
    bundle's index lists them (`path` is the bundle). LmforgeError if not archived."""
    rec = ws.record(ref)
    where = ws.archive_of(rec.id)
    if rec.state != "archived" or where is None:
        raise LmforgeError(f"{rec.id} is not archived", "show it with `lmforge registry show`")
    prefix = f"{rec.id}/"
    try:
        listed = read_index(Path(where["index_path"]))["files"]
    except LmforgeError:
        listed = {}  # the bundle's place is still on the record; verify reports the index
    files = {name[len(prefix):]: info for name, info in listed.items()
             if name.startswith(prefix) and name != prefix + MANIFEST_NAME}
    parents: dict[str, Any] = {}
    for node in ws.lineage(rec.id)["children"]:
        parents.setdefault(node["role"], []).append(node["id"])
    manifest = {"id": rec.id, "kind": rec.kind, "stage": rec.stage, "name": rec.name,
                "created": rec.created, "settings": rec.settings, "metrics": rec.metrics,
                "parents": {k: v[0] if len(v) == 1 else v for k, v in parents.items()},
                "files": files, "lmforge_version": rec.lmforge_version}
    return Artifact(rec.id, rec.kind, Path(where["bundle"]), manifest)
