"""`lmforge registry verify`: every artifact's files against the checksums it was registered
with, reporting all drift at once (loading stops at the first problem; an audit should not).

Drift is a missing folder or file, a file whose bytes changed, a file the manifest does not
list, a manifest edited after registration, or, for an archived model, a missing or changed
bundle (and a folder an interrupted archive left behind).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.registry.archive import read_index
from lmforge.registry.artifact import ArtifactRecord
from lmforge.registry.manifest import (
    MANIFEST_NAME,
    content_id,
    list_files,
    read_manifest,
    sha256_file,
)
from lmforge.registry.workspace import Workspace


@dataclass(frozen=True)
class Drift:
    artifact_id: str
    problem: str        # missing-folder, missing, changed, extra, manifest, bundle, leftover
    path: str           # the file concerned (relative to the artifact folder), or the folder
    detail: str


@dataclass
class Audit:
    checked: int = 0    # artifacts
    files: int = 0
    bytes: int = 0
    drift: list[Drift] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.drift


def _check_folder(ws: Workspace, rec: ArtifactRecord, audit: Audit) -> None:
    folder = rec.path

    def drift(problem: str, path: str, detail: str) -> None:
        audit.drift.append(Drift(rec.id, problem, path, detail))

    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        drift("missing", MANIFEST_NAME, f"{manifest_path} is missing")
        return
    if sha256_file(manifest_path) != ws.manifest_digest(rec.id):
        drift("manifest", MANIFEST_NAME, "manifest.json changed after registration")
    try:
        manifest = read_manifest(folder)
    except LmforgeError as e:
        drift("manifest", MANIFEST_NAME, e.message)
        return
    expected = manifest["files"]
    present = set(list_files(folder))
    for rel in sorted(set(expected) - present):
        drift("missing", rel, f"{folder / rel} is missing")
    for rel in sorted(present - set(expected)):
        drift("extra", rel, f"{folder / rel} is not in the manifest")
    for rel in sorted(set(expected) & present):
        path = folder / rel
        audit.files += 1
        audit.bytes += path.stat().st_size
        got = sha256_file(path)
        if got != expected[rel]["sha256"]:
            drift("changed", rel, f"{path}: sha256 {got[:16]}... where the manifest says "
                                  f"{expected[rel]['sha256'][:16]}...")
    if manifest.get("id") != rec.id or content_id(
            manifest["kind"], expected, manifest["parents"], manifest["settings"]) != rec.id:
        drift("manifest", MANIFEST_NAME, "its content no longer gives the artifact's id")


def _check_archived(ws: Workspace, rec: ArtifactRecord, audit: Audit) -> None:
    where = ws.archive_of(rec.id)
    if where is None:
        audit.drift.append(Drift(rec.id, "bundle", "-", "archived, but the registry records "
                                                        "no bundle"))
        return
    bundle = Path(where["bundle"])
    if not bundle.is_file():
        audit.drift.append(Drift(rec.id, "bundle", str(bundle), f"the bundle {bundle} is "
                                                                "missing"))
    else:
        audit.files += 1
        audit.bytes += bundle.stat().st_size
        got = sha256_file(bundle)
        if got != where["bundle_sha256"]:
            audit.drift.append(Drift(rec.id, "bundle", str(bundle),
                                     f"{bundle}: sha256 {got[:16]}... where the registry "
                                     f"says {where['bundle_sha256'][:16]}..."))
        else:
            try:  # the index beside it must still describe this bundle
                read_index(Path(where["index_path"]))
            except LmforgeError as e:
                audit.drift.append(Drift(rec.id, "bundle", where["index_path"], e.message))
    if rec.path.exists():
        audit.drift.append(Drift(rec.id, "leftover", str(rec.path),
                                 "archived, but its folder is still in the workspace (an "
                                 "archive stopped before removing it; run archive again)"))


def verify(ws: Workspace, refs: Iterable[str] = ()) -> Audit:
    """Check `refs` (every artifact when empty) and return what drifted."""
    refs = list(refs)
    records = [ws.record(r) for r in refs] if refs else ws.list()
    audit = Audit()
    for rec in sorted(records, key=lambda r: (r.kind, r.id)):
        audit.checked += 1
        if rec.state == "archived":
            _check_archived(ws, rec, audit)
        elif not rec.path.is_dir():
            audit.drift.append(Drift(rec.id, "missing-folder", str(rec.path),
                                     f"its folder {rec.path} is missing"))
        else:
            _check_folder(ws, rec, audit)
    return audit
