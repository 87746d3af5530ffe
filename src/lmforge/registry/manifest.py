"""Manifests: what an artifact folder holds, the sha256 of each file, and the id they imply.

The id is a hash of the content that defines an artifact (kind, file hashes, parents,
settings) and nothing incidental (creation time, metrics), so the same inputs give the
same id on any machine, and registering twice is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


def sha256_file(path: str | Path, fsync: bool = False) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks. `fsync` also flushes it to disk first."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if fsync:
            try:
                os.fsync(f.fileno())
            except OSError:  # some platforms refuse fsync on a read-only handle
                pass
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """One spelling per value: sorted keys, no spaces, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def check_jsonable(obj: Any, where: str) -> None:
    """Raise LmforgeError naming the first value in `obj` that JSON cannot hold."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise LmforgeError(f"{where} is {obj}, which JSON cannot store",
                               "replace it with a finite number or null")
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise LmforgeError(f"{where} has a non-string key {key!r}",
                                   "use string keys in settings and metrics")
            check_jsonable(value, f"{where}.{key}")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_jsonable(value, f"{where}[{i}]")
        return
    raise LmforgeError(f"{where} is of type {type(obj).__name__}, which JSON cannot store",
                       "convert it to a string, number, list or dict before registering")


def list_files(root: Path) -> list[str]:
    """Relative posix paths of every file under `root` except the top manifest, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                raise LmforgeError(f"{full} is a symbolic link; artifacts hold only real files",
                                   "copy the file into the artifact folder instead of linking it")
            if rel != MANIFEST_NAME:
                found.append(rel)
    return sorted(found)


def hash_files(root: Path, fsync: bool = False) -> dict[str, dict[str, Any]]:
    """{relative path: {"sha256", "bytes"}} for every file under `root`."""
    return {rel: {"sha256": sha256_file(root / rel, fsync=fsync),
                  "bytes": (root / rel).stat().st_size}
            for rel in list_files(root)}


def content_id(kind: str, files: dict[str, dict[str, Any]], parents: dict[str, Any],
               settings: dict[str, Any]) -> str:
    """The artifact id: `<kind>-<first 12 hex digits of the content hash>`."""
    body = {"kind": kind, "files": {p: f["sha256"] for p, f in files.items()},
            "parents": parents, "settings": settings}
    return f"{kind}-{hashlib.sha256(canonical_json(body).encode()).hexdigest()[:12]}"


def read_manifest(folder: Path) -> dict[str, Any]:
    """Load `folder/manifest.json`, or raise LmforgeError saying it is missing or damaged."""
    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmforgeError(f"{path} is missing", "restore the artifact folder from a backup, "
                           "or re-run the stage that made it") from None
    except (OSError, ValueError) as e:
        raise LmforgeError(f"{path} cannot be read: {e}", "restore it from a backup, "
                           "or re-run the stage that made it") from None
    required = {"id": str, "kind": str, "files": dict, "parents": dict, "settings": dict}
    if not isinstance(manifest, dict) or any(
            not isinstance(manifest.get(k), t) for k, t in required.items()):
        raise LmforgeError(f"{path} is not an lmforge manifest",
                           "restore it from a backup, or re-run the stage that made it")
    return manifest


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Check the folder holds exactly the manifest's files with the manifest's hashes."""
    art = manifest.get("id", folder.name)
    fix = "restore it from a backup, or re-run the stage that made it"
    expected = manifest["files"]
    try:
        present = set(list_files(folder))
    except OSError as e:
        raise LmforgeError(f"artifact {art}: cannot read {folder}: {e}", fix) from None
    for rel in sorted(set(expected) - present):
        raise LmforgeError(f"artifact {art}: {rel} is missing from {folder}", fix)
    for rel in sorted(present - set(expected)):
        raise LmforgeError(f"artifact {art}: {rel} is not in its manifest (artifacts are "
                           f"immutable)", f"remove {folder / rel}; make a new artifact instead")
    for rel in sorted(expected):
        if sha256_file(folder / rel) != expected[rel]["sha256"]:
            raise LmforgeError(f"artifact {art}: {rel} is corrupted (sha256 mismatch)",
                               f"restore {folder / rel}, or re-run the stage that made it")
    if content_id(manifest["kind"], expected, manifest["parents"], manifest["settings"]) != art:
        raise LmforgeError(f"artifact {art}: manifest.json was edited (its content no longer "
                           f"matches the id)", fix)
