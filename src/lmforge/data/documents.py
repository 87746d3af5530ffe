"""Documents: the unit every data stage reads and writes, and the entry point for reading them.

A document is `{"id", "text", "source", "meta"}`. `read_documents` turns text, Markdown, JSONL
and Parquet files (text and JSONL plain, gzipped or zstd-compressed), folders, glob patterns
and Hugging Face datasets (`hf:NAME[:SPLIT]`) into documents, strictly (the first problem
raises) or tolerantly (problems are counted in a `ReadErrors` and skipped). The formats live in
`readers.py` and `hub.py`; the JSONL writer and loader here keep the document shape exactly,
so curated data round-trips without loss.
"""

from __future__ import annotations

import glob
import gzip
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from lmforge.data.readers import (
    EOT_MARKER,
    SPLITS,
    ReadErrors,
    ReadProblem,
    decoded_lines,
    garbage_reason,
    json_records,
    parquet_records,
    text_pieces,
)
from lmforge.errors import LmforgeError
from lmforge.registry.atomic import atomic_open

__all__ = ["EOT_MARKER", "Document", "ReadErrors", "load_documents_jsonl", "read_documents",
           "record_document", "write_documents_jsonl"]

_PACKED = (".gz", ".zst")
TEXT_SUFFIXES = tuple(s + z for s in (".txt", ".md") for z in ("", *_PACKED))
JSONL_SUFFIXES = tuple(".jsonl" + z for z in ("", *_PACKED))
PARQUET_SUFFIXES = (".parquet",)
HF_PREFIX = "hf:"
_TYPES = ".txt, .md, .jsonl (each also .gz or .zst) or .parquet"
_FIELDS = ("id", "text", "source", "meta")
_SCALARS = (str, int, float, bool)


@dataclass
class Document:
    id: str
    text: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


# One input to read: (kind, file or hf: spec, name used in ids, default source).
_Input = tuple[str, Any, str, str]


def _expand(arg: str | Path, errors: ReadErrors | None) -> list[_Input]:
    """One argument -> its inputs, files sorted. A missing path or an unsupported file always
    raises (a typo should stop the run); a folder or glob with nothing to read is an empty
    source, recorded when collecting errors."""
    if str(arg).startswith(HF_PREFIX):
        from lmforge.data.hub import default_source, parse_spec  # hub imports this module

        return [("hf", str(arg), "", default_source(parse_spec(str(arg))[0]))]
    path = Path(arg)
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and _kind(p)
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        base = path
        empty = f"folder {path} holds no {_TYPES} files"
    elif path.is_file():
        if _kind(path) is None:
            raise LmforgeError(f"{path}: unsupported file type", hint=f"lmforge reads {_TYPES}")
        return [(_kind(path), path, path.name, path.name.split(".")[0])]  # type: ignore[list-item]
    elif _has_magic(str(arg)):
        files = sorted(Path(p) for p in glob.glob(str(arg), recursive=True))
        files = [p for p in files if p.is_file() and _kind(p)]
        # Name files from the pattern's fixed folder, as if that folder had been given.
        base = Path(*itertools.takewhile(lambda part: not _has_magic(part), path.parts))
        empty = f"no {_TYPES} files match {arg}"
    else:
        raise LmforgeError(f"{path} does not exist", hint="check the path to your data")
    if not files:
        if errors is None:
            raise LmforgeError(empty, hint="check the path or pattern; quote a pattern so the "
                               "shell does not expand it")
        errors.add(arg, None, f"no documents ({empty})", kind="no_documents",
                   source=base.resolve().name)
    source = base.resolve().name
    return [(_kind(p), p, p.relative_to(base).as_posix(), source)  # type: ignore[misc]
            for p in files]


Report = Callable[..., None]


def make_reporter(where: str | Path, source: str, errors: ReadErrors | None) -> Report:
    """problem(line, kind, reason, hint=None, excerpt=None): raise, or record and go on."""

    def problem(line: int | None, kind: str, reason: str, hint: str | None = None,
                excerpt: str | None = None) -> None:
        if errors is None:
            at = f"{where}:{line}" if line is not None else str(where)
            raise LmforgeError(f"{at}: {reason}", hint=hint)
        errors.add(where, line, reason, kind=kind, source=source, excerpt=excerpt)

    return problem


def record_document(rec: Any, text_field: str, name: str, position: int, source: str | None,
                    default_source: str, *, scalar_meta: bool = False) -> Document | None:
    """A JSONL/Parquet/datasets record as a document; None when its text is blank.

    Id: the record's own "id", else `{source}:{name}:{position}`. Source: `source`, else the
    record's "source", else `default_source`. Meta: the record's "meta" plus its other fields
    (only str/int/float/bool ones when `scalar_meta`). Raises `ReadProblem` for a bad record.
    """
    if not isinstance(rec, dict):
        raise ReadProblem("not_object", f"expected a JSON object, got {type(rec).__name__}",
                          hint="each line of a .jsonl file must be one JSON object")
    if text_field not in rec:
        fields = ", ".join(sorted(rec)) or "none"
        raise ReadProblem("missing_field", f"no field {text_field!r} (fields: {fields})",
                          hint="name the text field with --text-field")
    text = rec[text_field]
    if not isinstance(text, str):
        raise ReadProblem("not_string",
                          f"field {text_field!r} is {type(text).__name__}, not a string")
    if not text or text.isspace():  # isspace stops at the first letter; strip would copy
        return None
    if why := garbage_reason(text):
        raise ReadProblem("binary", f"field {text_field!r}: {why}")
    src = source or (rec["source"] if isinstance(rec.get("source"), str) else default_source)
    meta = dict(rec["meta"]) if isinstance(rec.get("meta"), dict) else {}
    # Keep the record's other fields (title, url, ...) so curation can use them.
    meta.update({k: v for k, v in rec.items() if k not in (text_field, *_FIELDS)})
    if scalar_meta:
        meta = {k: v for k, v in meta.items() if v is None or isinstance(v, _SCALARS)}
    rid = rec.get("id")
    doc_id = (str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool)
              else f"{src}:{name}:{position}")
    return Document(doc_id, text, src, meta)


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


def _records(path: Path, kind: str, text_field: str, problem: Report
             ) -> Iterator[tuple[int, Any]]:
    if kind == "parquet":
        return parquet_records(path, text_field)
    return json_records(path, problem)


def _read_records(path: Path, kind: str, name: str, source: str | None, default_source: str,
                  text_field: str, problem: Report) -> Iterator[Document]:
    for line, rec in _records(path, kind, text_field, problem):
        try:
            doc = record_document(rec, text_field, name, line, source, default_source,
                                  scalar_meta=kind == "parquet")
        except ReadProblem as p:
            problem(line, p.kind, p.reason, hint=p.hint)
            continue
        if doc is not None:
            yield doc


def read_documents(paths: Sequence[str | Path] | str | Path, text_field: str = "text",
                   source: str | None = None, *, split: str = "auto",
                   errors: ReadErrors | None = None) -> Iterator[Document]:
    """Yield documents from files, folders (recursive, sorted), globs and datasets, in order.

    .txt/.md (also .gz, .zst): documents by `split`: "file" (the whole file), "blank_line"
    (blocks separated by blank lines), "line" (documents joined by a single newline,
    paragraphs inside them by a blank line), "eot" (the pieces between `<|endoftext|>` markers), or
    "auto" (eot; a file without markers is one document). Meta: {"path", "line"}.
    .jsonl (also .gz, .zst): one document per line, text from `text_field`; other fields go to
    meta. .parquet: one document per row, text from the `text_field` column, other scalar
    columns to meta; read a batch of rows at a time.
    `hf:NAME[:SPLIT]` or `hf:NAME:CONFIG:SPLIT` (split default "train"): a Hugging Face
    dataset by hub name (streamed) or local folder, e.g. `hf:roneneldan/TinyStories:train`,
    `hf:/data/my_set:validation` (see `lmforge.data.hub`).

    `source` names the source of every document (default: a JSONL record's "source", else the
    file's name before its first dot, or the folder's name for a folder or glob; a dataset's
    last name part). Ids are deterministic: the record's own "id", else source, file name and
    line (or row, or position in the file).

    Without `errors`, the first problem raises an LmforgeError naming the file and line, and
    reading nothing at all raises too. With a `ReadErrors`, unreadable or corrupt files, binary
    files, bad lines and records, and files with no documents are recorded with file and line
    and skipped; the documents that can be read still come through.
    """
    if split not in SPLITS:
        raise LmforgeError(f"unknown split {split!r}", hint=f"use one of: {', '.join(SPLITS)}")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise LmforgeError("no input paths given", hint="pass at least one file or folder")
    inputs = [item for arg in paths for item in _expand(arg, errors)]  # fail fast on bad paths
    count = 0
    for kind, path, name, default_source in inputs:
        src = source or default_source
        problem = make_reporter(path, src, errors)
        before = errors.count if errors is not None else 0
        found = 0
        try:
            if kind == "hf":
                from lmforge.data.hub import read_hub_spec  # imports `datasets`: only when used

                docs = read_hub_spec(path, text_field, source, errors)
            elif kind == "text":
                docs = _read_text(path, name, src, split, problem)
            else:
                docs = _read_records(path, kind, name, source, default_source, text_field,
                                     problem)
            for doc in docs:
                found += 1
                yield doc
        except ReadProblem as p:  # the rest of this file cannot be read
            problem(p.line, p.kind, p.reason, hint=p.hint, excerpt=p.excerpt)
        except OSError as e:
            problem(None, "unreadable", f"cannot read ({e.strerror or e})",
                    hint="check that the file exists and is readable")
        count += found
        if errors is not None and not found and errors.count == before:
            errors.add(path, None, "no documents", kind="no_documents", source=src)
    if count == 0 and errors is None:
        shown = ", ".join(str(p) for p in paths)
        raise LmforgeError(f"no documents with text in {shown}",
                           hint="the input files are empty or hold only whitespace")


def write_documents_jsonl(docs: Iterable[Document], path: str | Path) -> int:
    """Write documents as JSONL (gzipped if the name ends in .gz) atomically; return the count."""
    count = 0
    with atomic_open(path) as raw:
        # mtime=0 and no file name: the same documents always give the same bytes.
        sink: IO[bytes] = (gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0)
                           if str(path).endswith(".gz") else raw)
        for doc in docs:
            line = json.dumps(doc.to_dict(), ensure_ascii=False, sort_keys=True)
            sink.write(line.encode("utf-8") + b"\n")
            count += 1
        if sink is not raw:
            sink.close()
    return count


def load_documents_jsonl(path: str | Path) -> Iterator[Document]:
    """Read back a file written by `write_documents_jsonl`, checking every record's shape."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{path}: no such file", hint="check the path to the documents file")
    problem = make_reporter(path, "", None)
    try:
        for lineno, rec in json_records(path, problem):
            ok = (isinstance(rec, dict) and isinstance(rec.get("id"), str)
                  and isinstance(rec.get("text"), str) and isinstance(rec.get("source"), str)
                  and isinstance(rec.get("meta"), dict))
            if not ok:
                raise LmforgeError(
                    f"{path}:{lineno}: not a document record",
                    hint='expected {"id": str, "text": str, "source": str, "meta": {...}}',
                )
            yield Document(rec["id"], rec["text"], rec["source"], rec["meta"])
    except ReadProblem as p:
        raise LmforgeError(f"{path}: {p.reason}", hint=p.hint) from None
    except OSError as e:
        raise LmforgeError(f"{path}: cannot read ({e.strerror or e})") from None
