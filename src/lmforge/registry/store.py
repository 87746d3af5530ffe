"""The filesystem half of registering: hash a staged folder, seal it with a manifest, and
move it into place with one atomic rename.

Whoever renames first wins; a loser (same content, so the same id) discards its copy.
Files are made read-only to signal that nothing rewrites an artifact. Folders stay
writable so that retiring or archiving can still remove one deliberately.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lmforge
from lmforge.errors import LmforgeError
from lmforge.registry.atomic import atomic_write_json, fsync_dir
from lmforge.registry.manifest import MANIFEST_NAME, content_id, hash_files

SLUG = re.compile(r"[a-z][a-z0-9-]*")
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH  # 0o444


def check_slug(value: Any, what: str, example: str = "eval-report") -> str:
    if not isinstance(value, str) or not SLUG.fullmatch(value):
        raise LmforgeError(f"{what} {value!r} is not valid",
                           "use lowercase letters, digits and dashes, starting with a letter "
                           f"(e.g. {example!r})")
    return value


def utc_now() -> str:
    """ISO-8601 UTC with microseconds: sorts as text, and ties within a second are rare."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def remove_tree(path: Path) -> None:
    """Delete a folder even when its files are read-only."""
    if not path.exists():
        return
    if os.name == "nt":  # Windows refuses to delete read-only files; POSIX asks the folder
        for p in path.rglob("*"):
            os.chmod(p, stat.S_IWRITE | stat.S_IREAD)
    shutil.rmtree(path)


def seal_and_place(staged: Path, *, artifacts_dir: Path, kind: str, stage: str,
                   parents: dict[str, Any], settings: dict[str, Any],
                   metrics: dict[str, Any], name: str | None) -> tuple[Path, bool]:
    """Give `staged` a manifest and move it to `artifacts/<kind>/<id>/`. Return that folder
    and whether this call put it there (False: it existed, with the same content).

    `staged` is consumed: renamed into place, or deleted when the artifact already exists.
    """
    try:
        if (staged / MANIFEST_NAME).exists():
            raise LmforgeError(f"{staged / MANIFEST_NAME} exists, but lmforge writes that "
                               f"file itself", "rename or remove it before registering")
        files = hash_files(staged, fsync=True)  # fsync: the rename must not outrun the data
        art_id = content_id(kind, files, parents, settings)
        final = artifacts_dir / kind / art_id
        if (final / MANIFEST_NAME).is_file():
            return final, False  # registered before (or concurrently): same content
        manifest = {
            "id": art_id, "kind": kind, "stage": stage, "name": name, "parents": parents,
            "settings": settings, "metrics": metrics, "files": files, "created": utc_now(),
            "lmforge_version": lmforge.__version__,
        }
        atomic_write_json(staged / MANIFEST_NAME, manifest)
        for rel in [*files, MANIFEST_NAME]:
            os.chmod(staged / rel, READ_ONLY)
        os.chmod(staged, 0o755)  # mkdtemp made it owner-only; replicas may run as others
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staged, final)
        except OSError:
            if not (final / MANIFEST_NAME).is_file():
                raise LmforgeError(f"{final} exists but holds no manifest.json",
                                   "it is debris from an interrupted copy; remove it and "
                                   "register again") from None
            return final, False  # another process won the race with identical content
        fsync_dir(final.parent)
        return final, True
    finally:
        remove_tree(staged)  # gone already after a successful rename
