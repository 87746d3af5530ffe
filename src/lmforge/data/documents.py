"""Documents: the unit every data stage reads and writes, and the readers for files on disk.

A document is `{"id", "text", "source", "meta"}`. `read_documents` turns text, Markdown and
JSONL files (plain or gzipped), folders and glob patterns into documents; the JSONL writer and
loader keep that exact shape so curated data round-trips without loss.
"""

from __future__ import annotations

import glob
import gzip
import io
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from lmforge.errors import LmforgeError
from lmforge.registry.atomic import atomic_open

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
# TinyStories and GPT-2 style dumps concatenate many documents with this marker.
EOT_MARKER = "<|endoftext|>"
_FIELDS = ("id", "text", "source", "meta")


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
    return None


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _expand(arg: str | Path) -> list[tuple[Path, str, str]]:
    """One argument -> sorted (file, name used in ids, default source) triples."""
    path = Path(arg)
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and _kind(p)
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise LmforgeError(
                f"folder {path} holds no .txt, .md, .jsonl or .jsonl.gz files",
                hint="point at a folder of documents, or at the files themselves",
            )
        return [(p, p.relative_to(path).as_posix(), path.resolve().name) for p in files]
    if path.is_file():
        if _kind(path) is None:
            raise LmforgeError(
                f"{path}: unsupported file type",
                hint="lmforge reads .txt, .md, .jsonl and .jsonl.gz files",
            )
        return [(path, path.name, path.name.split(".")[0])]
    if _has_magic(str(arg)):
        files = sorted(Path(p) for p in glob.glob(str(arg), recursive=True))
        files = [p for p in files if p.is_file() and _kind(p)]
        if not files:
            raise LmforgeError(f"no .txt, .md or .jsonl files match {arg}",
                               hint="check the pattern; quote it so the shell does not expand it")
        # Name files from the pattern's fixed folder, as if that folder had been given.
        base = Path(*itertools.takewhile(lambda part: not _has_magic(part), path.parts))
        return [(p, p.relative_to(base).as_posix(), base.resolve().name) for p in files]
    raise LmforgeError(f"{path} does not exist", hint="check the path to your data")


def _open_text(path: Path) -> IO[str]:
    """Open plain or gzipped UTF-8 text; the caller closes it with `with`."""
    gz = path.name.lower().endswith(".gz")
    raw: IO[bytes] = gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def _text_pieces(path: Path) -> Iterator[str]:
    """A whole file, or the pieces between end-of-text markers, read line by line."""
    buf: list[str] = []
    with _open_text(path) as f:
        for line in f:
            while EOT_MARKER in line:
                before, line = line.split(EOT_MARKER, 1)
                buf.append(before)
                yield "".join(buf)
                buf = []
            buf.append(line)
    yield "".join(buf)


def _read_text(path: Path, name: str, source: str) -> Iterator[Document]:
    index = 0
    for piece in _text_pieces(path):
        text = piece.strip()
        if text:
            yield Document(f"{source}:{name}:{index}", text, source, {"path": name})
            index += 1


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise LmforgeError(
                    f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})",
                    hint="each line of a .jsonl file must be one JSON object",
                ) from None


def _read_jsonl(path: Path, name: str, source: str | None, default_source: str,
                text_field: str) -> Iterator[Document]:
    for lineno, rec in _json_lines(path):
        where = f"{path}:{lineno}"
        if not isinstance(rec, dict):
            raise LmforgeError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        if text_field not in rec:
            fields = ", ".join(sorted(rec)) or "none"
            raise LmforgeError(f"{where}: no field {text_field!r} (fields: {fields})",
                               hint="name the text field with --text-field")
        text = rec[text_field]
        if not isinstance(text, str):
            raise LmforgeError(f"{where}: field {text_field!r} is {type(text).__name__}, "
                               "not a string")
        if not text.strip():
            continue
        src = source or (rec["source"] if isinstance(rec.get("source"), str) else default_source)
        meta = dict(rec["meta"]) if isinstance(rec.get("meta"), dict) else {}
        # Keep the record's other fields (title, url, ...) so curation can use them.
        meta.update({k: v for k, v in rec.items() if k not in (text_field, *_FIELDS)})
        rid = rec.get("id")
        doc_id = str(rid) if isinstance(rid, (str, int)) else f"{src}:{name}:{lineno}"
        yield Document(doc_id, text, src, meta)


def read_documents(paths: Sequence[str | Path] | str | Path, text_field: str = "text",
                   source: str | None = None) -> Iterator[Document]:
    """Yield documents from files, folders (recursive, sorted) and glob patterns, in order.

    .txt/.md: one document per file, split on `<|endoftext|>` markers when present.
    .jsonl/.jsonl.gz: one document per line, text from `text_field`. `source` overrides the
    source name (default: the record's "source", else the file or folder name).
    Ids are deterministic: the record's own "id", else source, file name and position.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise LmforgeError("no input paths given", hint="pass at least one file or folder")
    files = [triple for arg in paths for triple in _expand(arg)]  # fail fast on bad paths
    count = 0
    for path, name, default_source in files:
        try:
            if _kind(path) == "jsonl":
                docs = _read_jsonl(path, name, source, default_source, text_field)
            else:
                docs = _read_text(path, name, source or default_source)
            for doc in docs:
                count += 1
                yield doc
        except UnicodeDecodeError as e:
            raise LmforgeError(f"{path}: not UTF-8 text (byte {e.start} of a read block)",
                               hint="convert the file to UTF-8") from None
        except (OSError, EOFError) as e:  # unreadable file, truncated or corrupt gzip
            raise LmforgeError(f"{path}: cannot read ({e})") from None
    if count == 0:
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
    try:
        for lineno, rec in _json_lines(path):
            ok = (isinstance(rec, dict) and isinstance(rec.get("id"), str)
                  and isinstance(rec.get("text"), str) and isinstance(rec.get("source"), str)
                  and isinstance(rec.get("meta"), dict))
            if not ok:
                raise LmforgeError(
                    f"{path}:{lineno}: not a document record",
                    hint='expected {"id": str, "text": str, "source": str, "meta": {...}}',
                )
            yield Document(rec["id"], rec["text"], rec["source"], rec["meta"])
    except UnicodeDecodeError:
        raise LmforgeError(f"{path}: not UTF-8 text") from None
    except (OSError, EOFError) as e:
        raise LmforgeError(f"{path}: cannot read ({e})") from None
