"""What the registry hands back: an Artifact (folder + manifest), a listing row, an event."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.registry.db import Row


@dataclass(frozen=True)
class Artifact:
    """An immutable artifact on disk: `path` is its folder, `manifest` its manifest.json."""

    id: str
    kind: str
    path: Path
    manifest: dict[str, Any]

    @property
    def settings(self) -> dict[str, Any]:
        return self.manifest["settings"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics", {})

    @property
    def parents(self) -> dict[str, str | list[str]]:
        """role -> parent id (or list of ids, as registered)."""
        return self.manifest["parents"]

    @property
    def stage(self) -> str:
        return self.manifest.get("stage", "")

    @property
    def name(self) -> str | None:
        return self.manifest.get("name")

    @property
    def created(self) -> str:
        return self.manifest.get("created", "")

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """relative path -> {"sha256", "bytes"}."""
        return self.manifest["files"]

    def file(self, rel: str) -> Path:
        """Absolute path of one of this artifact's files."""
        if rel not in self.files:
            have = ", ".join(sorted(self.files)) or "no files"
            raise LmforgeError(f"artifact {self.id} has no file {rel!r} (it has: {have})",
                               f"check the artifact kind; this one is a {self.kind}")
        return self.path / rel


@dataclass(frozen=True)
class ArtifactRecord:
    """One registry row, read without touching the artifact folder (for listings)."""

    id: str
    kind: str
    stage: str
    name: str | None
    path: Path
    created: str
    state: str | None
    settings: dict[str, Any]
    metrics: dict[str, Any]
    lmforge_version: str

    @classmethod
    def from_row(cls, row: Row, root: Path) -> ArtifactRecord:
        return cls(id=row["id"], kind=row["kind"], stage=row["stage"], name=row["name"],
                   path=root / row["path"], created=row["created"], state=row["state"],
                   settings=json.loads(row["settings_json"]),
                   metrics=json.loads(row["metrics_json"]),
                   lmforge_version=row["lmforge_version"])


@dataclass(frozen=True)
class Event:
    """One lifecycle move. `forced` is True when a check was overridden; `note` says what
    the move rested on, or what a forced move overrode. `actor` is user@host and `command`
    the command line that moved it; a deprecation also carries the announced `sunset`
    (ISO date) and `successor` (a model id), which a server sends to clients."""

    seq: int
    artifact_id: str
    from_state: str | None
    to_state: str
    reason: str
    forced: bool
    time: str
    note: str = ""
    actor: str = ""
    command: str = ""
    sunset: str | None = None
    successor: str | None = None
    decision: dict[str, Any] | None = None  # an approval's gates (registry/approval.py)

    @classmethod
    def from_row(cls, row: Row) -> Event:
        decision = row["decision"] if "decision" in row.keys() else None
        return cls(seq=row["seq"], artifact_id=row["artifact_id"], from_state=row["from_state"],
                   to_state=row["to_state"], reason=row["reason"], forced=bool(row["forced"]),
                   time=row["time"], note=row["note"], actor=row["actor"],
                   command=row["command"], sunset=row["sunset"], successor=row["successor"],
                   decision=json.loads(decision) if decision else None)


@dataclass(frozen=True)
class AliasMove:
    """One change of an alias: set (`previous_id` None), moved, or removed (`artifact_id`
    None), with who (user@host), when, why and the command line."""

    seq: int
    alias: str
    artifact_id: str | None
    previous_id: str | None
    time: str
    actor: str
    reason: str
    command: str

    @classmethod
    def from_row(cls, row: Row) -> AliasMove:
        return cls(seq=row["seq"], alias=row["alias"], artifact_id=row["artifact_id"],
                   previous_id=row["previous_id"], time=row["time"], actor=row["actor"],
                   reason=row["reason"], command=row["command"])
