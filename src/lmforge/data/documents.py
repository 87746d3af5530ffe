"""Documents: the unit every data stage reads and writes.

A document is `{"id", "text", "source", "meta"}`. This module holds its shape: a record (a
JSONL line, a Parquet or `datasets` row) as a document, the problem reporter the readers share,
and the JSONL writer and loader that keep the shape exactly, so curated data round-trips without
loss. Reading inputs of every kind is `lmforge.data.read.read_documents` (local files in
`files.py`, Hugging Face datasets in `hub.py`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from lmforge.data.readers import ReadErrors, ReadProblem, garbage_reason, json_records
from lmforge.errors import LmforgeError
from lmforge.registry.atomic import atomic_open

__all__ = ["Document", "Report", "load_documents_jsonl", "make_reporter", "record_document",
           "write_documents_jsonl"]

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
