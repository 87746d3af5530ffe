"""`read_documents`: every kind of input to documents, the one place that tells them apart.

Local files, folders and globs are read by `files.py`; `hf:` datasets by `hub.py`. Both build
on `documents.py` (the document shape) and `readers.py` (byte formats), and neither imports
the other or this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from lmforge.data.documents import Document, make_reporter
from lmforge.data.files import FileInput, expand_path, read_file
from lmforge.data.hub import default_source, is_hub_spec, parse_spec, read_hub_spec
from lmforge.data.readers import SPLITS, ReadErrors, ReadProblem
from lmforge.errors import LmforgeError

__all__ = ["expand_inputs", "read_documents", "read_input"]


def _inputs(arg: str | Path, errors: ReadErrors | None) -> list[FileInput | str]:
    """One argument -> what to read: an `hf:` spec as it is (checked now), or its files."""
    if is_hub_spec(arg):
        parse_spec(str(arg))  # a malformed spec stops the run before anything is read
        return [str(arg)]
    return list(expand_path(arg, errors))


def read_documents(paths: Sequence[str | Path] | str | Path, text_field: str = "text",
                   source: str | None = None, *, split: str = "auto",
                   errors: ReadErrors | None = None) -> Iterator[Document]:
    """Yield documents from files, folders (recursive, sorted), globs and datasets, in order.

    .txt/.md (also .gz, .zst): documents by `split`: "file" (the whole file), "blank_line"
    (blocks separated by blank lines), "line" (documents joined by a single newline,
    paragraphs inside them by a blank line), "eot" (the pieces between `<|endoftext|>`
    markers), or "auto" (eot; a file without markers is one document). Meta: {"path", "line"}.
    .jsonl (also .gz, .zst): one document per line, text from `text_field`; other fields go to
    meta. .parquet: one document per row, text from the `text_field` column, other scalar
    columns to meta; read a batch of rows at a time.
    `hf:NAME[:SPLIT]` or `hf:NAME:CONFIG:SPLIT`, optionally ending in `[START:STOP]` (split
    default "train"): a Hugging Face dataset by hub name (streamed) or local folder, e.g.
    `hf:roneneldan/TinyStories:train[:1000]`, `hf:/data/my_set:validation` (see `hub.py`).

    `source` names the source of every document (default: a JSONL record's "source", else the
    file's name before its first dot, or the folder's name for a folder or glob; a dataset's
    last name part). Ids are deterministic: the record's own "id", else source, file name and
    line (or row, or position in the file).

    Without `errors`, the first problem raises an LmforgeError naming the file and line, and
    reading nothing at all raises too. With a `ReadErrors`, unreadable or corrupt files, binary
    files, bad lines and records, and files with no documents are recorded with file and line
    and skipped; the documents that can be read still come through. A path that does not
    exist raises either way (a typo should stop the run).
    """
    if split not in SPLITS:
        raise LmforgeError(f"unknown split {split!r}", hint=f"use one of: {', '.join(SPLITS)}")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise LmforgeError("no input paths given", hint="pass at least one file or folder")
    inputs = expand_inputs(paths, errors)  # fail fast on bad paths
    count = 0
    for item in inputs:
        for doc in read_input(item, text_field, source, split, errors):
            count += 1
            yield doc
    if count == 0 and errors is None:
        shown = ", ".join(str(p) for p in paths)
        raise LmforgeError(f"no documents with text in {shown}",
                           hint="the input files are empty or hold only whitespace")


def expand_inputs(paths: Sequence[str | Path], errors: ReadErrors | None
                  ) -> list[FileInput | str]:
    """Every argument's files (and `hf:` specs), in order. A missing path raises; a folder or
    glob with nothing to read is recorded in `errors` (or raises without it)."""
    return [item for arg in paths for item in _inputs(arg, errors)]


def read_input(item: FileInput | str, text_field: str = "text", source: str | None = None,
               split: str = "auto", errors: ReadErrors | None = None) -> Iterator[Document]:
    """The documents of one item of `expand_inputs` (see `read_documents`). Reading items one
    by one lets a caller split a source's files between tasks and still count every problem
    the way one `read_documents` call would."""
    if isinstance(item, str):
        where: str | Path = item
        src = source or default_source(parse_spec(item).name)
        docs = read_hub_spec(item, text_field, source, errors)
    else:
        where, src = item.path, source or item.default_source
        docs = read_file(item, source, split, text_field, make_reporter(where, src, errors))
    before = errors.count if errors is not None else 0
    found = 0
    try:
        for doc in docs:
            found += 1
            yield doc
    except ReadProblem as p:  # the rest of this file cannot be read
        make_reporter(where, src, errors)(p.line, p.kind, p.reason, hint=p.hint,
                                          excerpt=p.excerpt)
    except OSError as e:
        make_reporter(where, src, errors)(
            None, "unreadable", f"cannot read ({e.strerror or e})",
            hint="check that the file exists and is readable")
    if errors is not None and not found and errors.count == before:
        errors.add(where, None, "no documents", kind="no_documents", source=src)
