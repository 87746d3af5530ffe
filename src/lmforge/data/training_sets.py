"""Training records as artifacts: conversations (`chat-dataset`) and preference pairs
(`preference-dataset`) that a stage wrote, registered so a recipe step can hand them to
`finetune` by reference (`data = ["@safety-data"]`) and the tuned model's lineage names them.

Each holds one JSONL file in the shapes the readers already take: `{"messages": [...]}` a
line (data/chat.py), `{"prompt", "chosen", "rejected"}` a line (data/preferences.py).
`finetune` maps such an artifact's id to that file (`resolve_training_sets`); paths, globs,
built-in names and `hf:` specs pass through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.registry import Artifact, Workspace
from lmforge.registry.atomic import atomic_write_text

CHAT_KIND = "chat-dataset"
PREFERENCE_KIND = "preference-dataset"
RECORD_FILES = {CHAT_KIND: "conversations.jsonl", PREFERENCE_KIND: "pairs.jsonl"}
# Which kind each fine-tuning method reads (domain reads `dataset` artifacts of documents).
METHOD_KINDS = {"sft": (CHAT_KIND,), "dpo": (PREFERENCE_KIND,), "reward": (PREFERENCE_KIND,)}


def register_records(ws: Workspace, kind: str, records: Sequence[dict[str, Any]], *,
                     stage: str, parents: dict[str, Any] | None, settings: dict[str, Any],
                     metrics: dict[str, Any], name: str) -> Artifact:
    """Write `records` as the artifact's JSONL file and register it."""
    if kind not in RECORD_FILES:
        raise ValueError(f"not a training-set kind: {kind}")
    with ws.staging() as d:
        atomic_write_text(d / RECORD_FILES[kind], "".join(
            json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return ws.register(d, kind=kind, stage=stage, parents=parents, settings=settings,
                           metrics=metrics, name=name)


def _passes_through(ref: str) -> bool:
    """A path, glob, `hf:` spec or built-in set name: for the readers, not the registry."""
    from lmforge.data.chat import BUILTIN_CHAT
    from lmforge.data.preferences import BUILTIN_PREFS

    return (Path(ref).exists() or ref.startswith("hf:") or any(c in ref for c in "*?[")
            or ref in BUILTIN_CHAT + BUILTIN_PREFS or "/" in ref)


def resolve_training_sets(ws: Workspace, refs: Sequence[str], method: str
                          ) -> tuple[list[str], list[str]]:
    """`refs` with each training-set artifact (id, prefix or alias) replaced by its record
    file, and the ids of those artifacts (the tuned model's `data` parents). A reference the
    registry does not know is left for the readers, which say the file does not exist."""
    kinds = METHOD_KINDS.get(method)
    if not kinds:
        return list(refs), []
    out, ids = [], []
    for ref in refs:
        if _passes_through(ref):
            out.append(ref)
            continue
        try:
            rec = ws.record(ref)
        except LmforgeError:
            out.append(ref)
            continue
        if rec.kind not in kinds:
            raise LmforgeError(f"data {ref} is a {rec.kind}; --method {method} reads "
                               f"{' or '.join(kinds)} artifacts or files",
                               hint=f"see `lmforge registry ls --kind {kinds[0]}`")
        art = ws.resolve(rec.id, kind=rec.kind)  # verified against its sha256s
        out.append(str(art.path / RECORD_FILES[rec.kind]))
        ids.append(art.id)
    return out, ids
