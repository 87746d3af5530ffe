"""The file formats behind `read_documents`: byte streams (plain, gzip, zstd), text splitting,
JSON lines, Parquet row batches, binary-garbage checks, and the collector of read problems.

Everything here streams: files are read in 1 MiB blocks and Parquet in row batches, so memory
stays flat however large the input. Readers yield raw pieces and records with their line (or
row) number; `documents.py` turns them into `Document`s. A problem with one line is reported
through a `problem` callback (which raises in strict mode); a problem with a whole file is raised
as `ReadProblem`, which the caller raises or records.
"""

from __future__ import annotations

import gzip
import importlib
import json
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from lmforge.errors import LmforgeError

# TinyStories and GPT-2 style dumps concatenate many documents with this marker.
EOT_MARKER = "<|endoftext|>"
SPLITS = ("auto", "file", "blank_line", "line", "eot")
_BLOCK = 1 << 20
_ZSTD_BLOCK = 1 << 16  # compressed input per step: a highly compressible block inflates a lot
# git's binary test (xdiff-interface.c, buffer_is_binary) looks for a NUL in the first 8000 bytes.
SNIFF_BYTES = 8000
# Perl's -B file test: "if more than a third of the characters are strange, it's a -B file".
STRANGE_SHARE = 1 / 3
HEAD_CHARS = 512  # Perl's -T/-B tests (pp_fttext in pp_sys.c) examine the first 512 bytes
# C0/C1 control characters except tab, newline, carriage return and form feed, plus U+FFFD (what
# an earlier tool left where it could not decode): none of these belong in prose.
_STRANGE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd]")

Problem = Callable[..., None]  # problem(line, kind, reason, hint=None, excerpt=None)


class ReadProblem(Exception):
    """A file (or one of its lines) that cannot be read; `kind` is a short code for counting."""

    def __init__(self, kind: str, reason: str, line: int | None = None,
                 hint: str | None = None, excerpt: str | None = None):
        super().__init__(reason)
        self.kind, self.reason, self.line, self.hint, self.excerpt = (
            kind, reason, line, hint, excerpt)


class ReadErrors:
    """Collects read problems instead of raising them: an exact count, the first examples.

    Each record is `{"file", "line", "reason", "kind", "source"}` (+ `"excerpt"` of a bad
    line); `line` is None for a problem with a whole file. `by_source[source][kind]` counts
    every problem, including those past the stored examples.
    """

    def __init__(self, max_examples: int = 1000):
        self.max_examples = max_examples
        self.records: list[dict[str, Any]] = []
        self.count = 0
        self.by_source: dict[str, Counter[str]] = {}

    def add(self, file: str | Path, line: int | None, reason: str, *, kind: str = "error",
            source: str | None = None, excerpt: str | None = None) -> None:
        self.count += 1
        self.by_source.setdefault(source or "", Counter())[kind] += 1
        if len(self.records) < self.max_examples:
            rec: dict[str, Any] = {"file": str(file), "line": line, "reason": reason,
                                   "kind": kind, "source": source}
            if excerpt is not None:
                rec["excerpt"] = excerpt
            self.records.append(rec)

    def to_dict(self, examples: int | None = None) -> dict[str, Any]:
        """The `read_errors` entry of stats.json."""
        return {"count": self.count, "examples": self.records[:examples]}


def excerpt(raw: bytes | str, limit: int = 200) -> str:
    """The start of a bad line, on one line, for the error record."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    flat = " ".join(text[: limit * 2].split())
    return flat[:limit] + ("…" if len(flat) > limit else "")


def require(module: str, package: str, what: str) -> ModuleType:
    """Import an optional dependency, or say which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LmforgeError(f"{what} needs the optional package {package!r}, which is not "
                           "installed", hint=f"pip install {package}") from None


def garbage_reason(text: str) -> str | None:
    """Why `text` looks like binary data rather than prose, or None when it looks fine.

    Any NUL anywhere (a fast scan), or more than a third strange characters in the first
    `HEAD_CHARS`: like git and Perl, judge by the head, so long documents cost no more.
    """
    if "\x00" in text:
        return "binary garbage (NUL characters)"
    head = text[:HEAD_CHARS]
    if _STRANGE.search(head) is None:  # the common case costs one regex scan
        return None
    share = len(_STRANGE.findall(head)) / len(head)
    if share > STRANGE_SHARE:
        return f"binary garbage ({share:.0%} control or replacement characters)"
    return None


# --- byte streams ---------------------------------------------------------------------------

def _plain_blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            yield block


def _gzip_blocks(path: Path) -> Iterator[bytes]:
    with gzip.open(path, "rb") as f:
        try:
            while block := f.read(_BLOCK):
                yield block
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise ReadProblem("corrupt", f"corrupt or truncated gzip data ({e})",
                              hint="re-create or re-download the file") from None


def _zstd_blocks(path: Path) -> Iterator[bytes]:
    zstd = require("zstandard", "zstandard", f"reading {path.name}")
    dctx = zstd.ZstdDecompressor()
    obj, fed = dctx.decompressobj(), False
    with open(path, "rb") as f:
        try:
            while data := f.read(_ZSTD_BLOCK):
                while data:  # a file may hold several frames back to back
                    fed = True
                    if out := obj.decompress(data):
                        yield out
                    if not obj.eof:
                        break
                    data, obj, fed = obj.unused_data, dctx.decompressobj(), False
        except zstd.ZstdError as e:
            raise ReadProblem("corrupt", f"corrupt zstd data ({e})",
                              hint="re-create or re-download the file") from None
    # zstandard's stream reader ends quietly at a cut-off frame; a half frame is an error here.
    if fed and not obj.eof:
        raise ReadProblem("corrupt", "truncated zstd data (the last frame is incomplete)",
                          hint="re-create or re-download the file")


def blocks(path: Path) -> Iterator[bytes]:
    """The decompressed bytes of a plain, .gz or .zst file, in blocks."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return _gzip_blocks(path)
    if name.endswith(".zst"):
        return _zstd_blocks(path)
    return _plain_blocks(path)


def _sniff(head: bytes) -> None:
    """Refuse a file whose first bytes are binary (NUL, or mostly not text)."""
    if b"\x00" in head:
        raise ReadProblem("binary", f"binary file (NUL byte in the first {SNIFF_BYTES} bytes)",
                          hint="only text, JSONL and Parquet files can be read")
    text = head.decode("utf-8", "replace")
    if text and len(_STRANGE.findall(text)) / len(text) > STRANGE_SHARE:
        raise ReadProblem("binary", "binary file (mostly control bytes or invalid UTF-8)",
                          hint="only text, JSONL and Parquet files can be read")


def byte_lines(path: Path) -> Iterator[bytes]:
    """The lines of a (possibly compressed) file, without their "\\n", sniffed for binary."""
    pending: list[bytes] = []  # the start of a line that continues in the next block
    first = True
    for block in blocks(path):
        if first:
            _sniff(block[:SNIFF_BYTES])
            first = False
        lines = block.split(b"\n")
        if len(lines) == 1:
            pending.append(block)
            continue
        if pending:
            pending.append(lines[0])
            lines[0] = b"".join(pending)
        pending = [lines.pop()]
        yield from lines
    tail = b"".join(pending)
    if tail:
        yield tail


def decoded_lines(path: Path, problem: Problem) -> Iterator[tuple[int, str | None]]:
    """(line number, text) per line; None for a line that is not UTF-8 (already reported)."""
    for lineno, raw in enumerate(byte_lines(path), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problem(lineno, "not_utf8", f"not UTF-8 text (byte {e.start} of the line)",
                    hint="convert the file to UTF-8", excerpt=excerpt(raw))
            yield lineno, None
            continue
        if lineno == 1 and line.startswith("\ufeff"):  # a byte-order mark is not text
            line = line[1:]
        yield lineno, line


# --- text files -------------------------------------------------------------------------------

def text_pieces(lines: Iterable[tuple[int, str | None]], split: str
                ) -> Iterator[tuple[int, str | None]]:
    """(first line, text) per document of a text file; text None when a line was unreadable.

    file: the whole file. blank_line: blocks separated by blank lines. line: a document ends
    where a line of text is followed directly by another (a single line break); blank lines
    keep paragraphs together, the layout of files that join documents with one newline and
    paragraphs with a blank line (TinyStories' train text). eot and auto: the pieces between
    `<|endoftext|>` markers (the whole file when it has none).
    """
    buf: list[str] = []
    start, bad, after_text = 1, False, False

    def flush() -> tuple[int, str | None]:
        while buf and not buf[-1].strip():  # blank lines between paragraphs, not after
            buf.pop()
        return start, None if bad else "\n".join(buf)

    for lineno, line in lines:
        if split == "line" and after_text and (line is None or line.strip()):
            yield flush()  # text right after text: a new document
            buf, bad = [], False
        if not buf and not bad:
            start = lineno  # a document starts at its first line with text (or a bad line)
        after_text = line is None or bool(line.strip())
        if line is None:
            bad = True
            continue
        if split == "blank_line" and not line.strip():
            if buf or bad:
                yield flush()
            buf, bad = [], False
            continue
        if split in ("eot", "auto") and EOT_MARKER in line:
            *pieces, line = line.split(EOT_MARKER)  # one split: a huge line stays linear
            for before in pieces:
                if buf or bad or before.strip():
                    buf.append(before)
                    yield flush()
                buf, bad, start = [], False, lineno
        if buf or line.strip():
            buf.append(line)
    if buf or bad:
        yield flush()


# --- JSON lines -------------------------------------------------------------------------------

def json_records(path: Path, problem: Problem) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) per non-blank line; bad lines go to `problem`."""
    for lineno, line in decoded_lines(path, problem):
        if line is None or not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            problem(lineno, "invalid_json", f"invalid JSON ({e.msg} at column {e.colno})",
                    hint="each line of a .jsonl file must be one JSON object",
                    excerpt=excerpt(line))


# --- Parquet ----------------------------------------------------------------------------------

def parquet_records(path: Path, text_field: str, batch_rows: int = 1024
                    ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, {column: value}) per row, read one batch of rows at a time.

    Reads the text column and the other scalar columns (lists, structs and binary blobs are not
    document metadata).
    """
    pa = require("pyarrow", "pyarrow", f"reading {path.name}")
    pq = require("pyarrow.parquet", "pyarrow", f"reading {path.name}")
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
        if text_field not in schema.names:
            raise ReadProblem("missing_field", f"no column {text_field!r} (columns: "
                              f"{', '.join(schema.names) or 'none'})",
                              hint="name the text column with --text-field")
        kind = schema.field(text_field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise ReadProblem("not_string", f"column {text_field!r} holds {kind}, not text",
                              hint="name the text column with --text-field")
        scalar = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer,
                  pa.types.is_floating, pa.types.is_boolean)
        columns = [f.name for f in schema
                   if f.name == text_field or any(test(f.type) for test in scalar)]
        row = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            for rec in batch.to_pylist():
                row += 1
                yield row, rec
    except (pa.ArrowException, OSError) as e:
        raise ReadProblem("corrupt", f"not a readable Parquet file ({e})",
                          hint="re-create or re-download the file") from None
