"""Local files as documents: which files an argument names (a file, a folder, a glob), and the
documents of one file (text, JSONL or Parquet, plain or compressed).

The byte-level formats live in `readers.py`; `read.py` dispatches every input, local or
`hf:`, to here or to `hub.py`.
"""

from __future__ import annotations

import glob
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.documents import Document, Report, record_document
from lmforge.data.readers import (
    ReadErrors,
    ReadProblem,
    decoded_lines,
    garbage_reason,
    json_records,
    parquet_records,
    text_pieces,
)
from lmforge.errors import LmforgeError

_PACKED = (".gz", ".zst")

TEXT_SUFFIXES = tuple(s + z for s in (".txt", ".md") for z in ("", *_PACKED))
JSONL_SUFFIXES = tuple(".jsonl" + z for z in ("", *_PACKED))
PARQUET_SUFFIXES = (".parquet",)
DATA_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
TYPES = ".txt, .md, .jsonl (each also .gz or .zst) or .parquet"


def absent_local(ref: str) -> bool:
    """True for a reference that names local files (a path, a file name, a glob) none of which
    exists: a recipe's cue to read its `fallback` (the same data's public source) instead."""
    looks_local = "/" in ref or Path(ref).suffix in (".jsonl", ".json", ".txt", ".gz")
    return looks_local and not ref.startswith("hf:") and not Path(ref).exists() \
        and not glob.glob(ref)


def with_fallback(refs: list[str], fallback: list[str]) -> tuple[list[str], str | None]:
    """`refs`, with those that are absent_local replaced by `fallback` (once), and a note
    saying so: a recipe may name files of its own, always there, beside files of a shared
    data folder that a user's clone lacks."""
    missing = [r for r in refs if absent_local(r)]
    if not fallback or not missing:
        return list(refs), None
    kept = [r for r in refs if r not in missing]
    return kept + list(fallback), \
        f"{', '.join(missing)} absent; read its fallback {', '.join(fallback)}"


@dataclass(frozen=True)
class FileInput:
    kind: str  # "text", "jsonl" or "parquet"
    path: Path
    name: str  # the file's name in ids: relative to the folder or glob it came from
    default_source: str


def file_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def expand_path(arg: str | Path, errors: ReadErrors | None) -> list[FileInput]:
    """One argument -> its files, sorted. A missing path or an unsupported file always raises
    (a typo should stop the run); a folder or glob with nothing to read is an empty source,
    recorded when collecting errors."""
    path = Path(arg)
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and file_kind(p)
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        base = path
        empty = f"folder {path} holds no {TYPES} files"
    elif path.is_file():
        kind = file_kind(path)
        if kind is None:
            raise LmforgeError(f"{path}: unsupported file type", hint=f"lmforge reads {TYPES}")
        return [FileInput(kind, path, path.name, path.name.split(".")[0])]
    elif has_magic(str(arg)):
        files = sorted(Path(p) for p in glob.glob(str(arg), recursive=True))
        files = [p for p in files if p.is_file() and file_kind(p)]
        # Name files from the pattern's fixed folder, as if that folder had been given.
        base = Path(*itertools.takewhile(lambda part: not has_magic(part), path.parts))
        empty = f"no {TYPES} files match {arg}"
    else:
        raise LmforgeError(f"{path} does not exist", hint=f"check the path: `ls {path.parent}`")
    if not files:
        if errors is None:
            raise LmforgeError(empty, hint="check the path or pattern; quote a pattern so the "
                               "shell does not expand it")
        errors.add(arg, None, f"no documents ({empty})", kind="no_documents",
                   source=base.resolve().name)
    source = base.resolve().name
    return [FileInput(file_kind(p), p, p.relative_to(base).as_posix(), source)  # type: ignore[arg-type]
            for p in files]


def read_file(item: FileInput, source: str | None, split: str, text_field: str,
              problem: Report) -> Iterator[Document]:
    """The documents of one file (see `read_documents` for ids, sources and meta)."""
    if item.kind == "text":
        return _read_text(item.path, item.name, source or item.default_source, split, problem)
    return _read_records(item, source, text_field, problem)


def _read_text(path: Path, name: str, source: str, split: str,
               problem: Report) -> Iterator[Document]:
    index = 0
    for line, piece in text_pieces(decoded_lines(path, problem), split):
        if piece is not None:
            piece = piece.strip()
            if not piece:
                continue
            if why := garbage_reason(piece):
                problem(line, "binary", why, hint="only text files can be read as text")
                piece = None
        if piece is not None:
            yield Document(f"{source}:{name}:{index}", piece, source,
                           {"path": name, "line": line})
        index += 1  # a dropped document keeps its number: the others' ids stay the same


def _records(item: FileInput, text_field: str, problem: Report) -> Iterator[tuple[int, Any]]:
    if item.kind == "parquet":
        return parquet_records(item.path, text_field)
    return json_records(item.path, problem)


def _read_records(item: FileInput, source: str | None, text_field: str,
                  problem: Report) -> Iterator[Document]:
    for line, rec in _records(item, text_field, problem):
        try:
            doc = record_document(rec, text_field, item.name, line, source,
                                  item.default_source, scalar_meta=item.kind == "parquet")
        except ReadProblem as p:
            problem(line, p.kind, p.reason, hint=p.hint)
            continue
        if doc is not None:
            yield doc
