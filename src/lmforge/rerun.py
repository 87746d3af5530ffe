"""What a stage records, beside its settings, so that `lmforge reproduce` can run it again.

Settings say what was asked; they do not say what a local path held on the day, which folder a
relative path was relative to, or how many threads summed the floats (a different thread count
splits float sums differently, so weights differ in the last bits). A stage that reads local
files or trains keeps those facts under the metrics key `rerun`. Metrics are not part of an
artifact's id, so recording them changed no id.

    metrics["rerun"] = {"cwd": "/home/me/project",
                        "input_files": {"docs/": {"docs/a.txt": "<sha256>", ...}},
                        "torch_threads": 2, "device": "cpu", "read_sha256": "<sha256>"}

File hashes cover local paths only. Data read from elsewhere (a `hf:` dataset, a built-in set
that a newer lmforge may have changed) is covered by `read_sha256`, a digest of the records the
stage read: while `lmforge reproduce` runs a stage again it sets the digest it expects
(`expecting_read`), and the stage, having read its data and before training on it, calls
`check_read`, which stops the rebuild when the data is not what the original read.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

from lmforge.data.files import file_kind, has_magic
from lmforge.errors import LmforgeError
from lmforge.registry.manifest import sha256_file

RERUN_KEY = "rerun"
_MAX_LISTED = 5  # changed files named per input; the rest are counted
# The read digest a reproduction expects of the stage it is running (None: not reproducing).
_EXPECTED_READ: ContextVar[str | None] = ContextVar("expected_read", default=None)


class InputChanged(LmforgeError):
    """A stage run again by `lmforge reproduce` read other data than the original did."""


def local_files(ref: str) -> list[Path] | None:
    """The files a local reference names (a file; a folder's data files, as the readers take
    them; a glob's matching files), or None when `ref` is not local (an artifact id, a
    built-in name such as `pydocs`, an `hf:` spec)."""
    if ref.startswith("hf:"):
        return None
    path = Path(ref)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(f for f in path.rglob("*") if f.is_file() and file_kind(f) is not None)
    if has_magic(ref):
        return sorted(Path(m) for m in glob.glob(ref, recursive=True) if Path(m).is_file())
    return None


def input_record(refs: Iterable[str]) -> dict[str, Any]:
    """{"cwd", "input_files": {ref: {file: sha256}}} for the refs that name local files
    (an empty "input_files" says that none did)."""
    files: dict[str, dict[str, str]] = {}
    for ref in refs:
        found = local_files(str(ref))
        if found is not None:
            files[str(ref)] = {str(f): sha256_file(f) for f in found}
    return {"cwd": os.getcwd(), "input_files": files}


def training_record(device: str) -> dict[str, Any]:
    """The facts besides settings and seed that decide a training run's last bits."""
    return {"torch_threads": torch.get_num_threads(), "device": device}


def rerun_metrics(*parts: dict[str, Any]) -> dict[str, Any]:
    """`{"rerun": merged parts}` to spread into a stage's metrics, or {} when all are empty."""
    merged = {k: v for part in parts for k, v in part.items()}
    return {RERUN_KEY: merged} if merged else {}


@contextmanager
def in_folder(folder: str | Path | None) -> Iterator[None]:
    """Run the block with `folder` as the working directory (so recorded relative paths mean
    what they meant), then go back. None or a missing folder: stay where we are."""
    before = os.getcwd()
    if folder is not None and Path(folder).is_dir():
        os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def input_changes(record: dict[str, Any]) -> list[str]:
    """What differs now from the input files `record` lists: one line per changed, missing or
    added file (relative paths read from the recorded folder). Empty: all as recorded."""
    inputs = record.get("input_files") or {}
    cwd = record.get("cwd")
    problems: list[str] = []
    if cwd and not Path(cwd).is_dir() and any(not Path(r).is_absolute() for r in inputs):
        problems.append(f"the folder the stage ran in ({cwd}) no longer exists, and its "
                        f"input paths are relative to it")
        return problems
    with in_folder(cwd):
        for ref, recorded in inputs.items():
            now = {str(f) for f in local_files(ref) or []}
            lines = []
            for path, digest in sorted(recorded.items()):
                if path not in now and not Path(path).is_file():
                    lines.append(f"input file {path} no longer exists")
                    continue
                current = sha256_file(path)
                if current != digest:
                    lines.append(f"input file {path} changed (sha256 {digest[:12]}… "
                                 f"recorded, {current[:12]}… now)")
            lines += [f"input {ref} now also holds {p}, which it did not"
                      for p in sorted(now - set(recorded))]
            problems += lines[:_MAX_LISTED]
            if len(lines) > _MAX_LISTED:
                problems.append(f"… and {len(lines) - _MAX_LISTED} more in {ref}")
    return problems


def records_digest(*parts: Iterable[Any]) -> str:
    """sha256 of JSON-able records, part by part and in order (a record's key order does not
    count): what a stage read, independent of where it read it from."""
    h = hashlib.sha256()
    for part in parts:
        h.update(b"part\n")
        for record in part:
            h.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


@contextmanager
def expecting_read(digest: str | None) -> Iterator[None]:
    """Run a stage that must read data with this digest (None: no expectation)."""
    token = _EXPECTED_READ.set(digest)
    try:
        yield
    finally:
        _EXPECTED_READ.reset(token)


def check_read(digest: str, what: str, cause: str | None = None) -> None:
    """Stop a reproduction whose stage read other data than the original (`what` names it in
    the message, `cause` leads it when the stage knows what changed); does nothing outside a
    reproduction."""
    expected = _EXPECTED_READ.get()
    if expected is not None and expected != digest:
        differ = (f"the {what} read now differ from what the original read (sha256 "
                  f"{expected[:12]}… recorded, {digest[:12]}… now)")
        raise InputChanged(f"{cause}: {differ}" if cause else
                           f"{differ}: a data set it read changed",
                           hint="rebuild from the data as it was, or compare with --from to "
                                "keep this stage")
