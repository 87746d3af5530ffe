"""The record: a workspace of immutable, content-addressed artifacts, their lineage, and each
model's lifecycle state, indexed in SQLite (or, for a team, in PostgreSQL: registry.postgres).
Rendering for the CLI is in `registry.render`."""

from lmforge.registry.artifact import Artifact, ArtifactRecord, Event
from lmforge.registry.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from lmforge.registry.lifecycle import ALLOWED_MOVES, LIFECYCLE_STATES
from lmforge.registry.manifest import sha256_file
from lmforge.registry.workspace import Workspace

__all__ = [
    "ALLOWED_MOVES", "LIFECYCLE_STATES", "Artifact", "ArtifactRecord", "Event", "Workspace",
    "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "sha256_file",
]
