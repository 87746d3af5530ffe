"""Hugging Face `datasets` as a document source: a hub name (streamed, so nothing is downloaded
in full before the first document) or a local folder (data files, or a `save_to_disk` copy).

On the command line and in recipes a dataset is `hf:NAME[:SPLIT]` or `hf:NAME:CONFIG:SPLIT`,
e.g. `hf:roneneldan/TinyStories:train`, `hf:wikitext:wikitext-2-raw-v1:validation`,
`hf:/data/my_set` (split "train"), optionally with a range of rows, `[START:STOP]` as in
Python: `hf:roneneldan/TinyStories:train[:1096]` streams the first 1,096 stories and stops.
`datasets` is an optional dependency: without it, reading a dataset says what to install.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from lmforge.data.documents import Document, make_reporter, record_document
from lmforge.data.readers import ReadErrors, ReadProblem, require
from lmforge.errors import LmforgeError

HF_PREFIX = "hf:"
_SYNTAX = ("hf:NAME[:SPLIT] or hf:NAME:CONFIG:SPLIT, optionally ending in [START:STOP], "
           "e.g. hf:roneneldan/TinyStories:train[:1000]")
_ROWS = re.compile(r"\[(\d*):(\d*)\]$")


class HubSpec(NamedTuple):
    name: str
    config: str | None
    split: str
    start: int = 0  # rows [start, stop) of the split, as in a Python slice
    stop: int | None = None


def is_hub_spec(arg: object) -> bool:
    return isinstance(arg, str) and arg.startswith(HF_PREFIX)


def parse_spec(spec: str) -> HubSpec:
    """`hf:NAME[:SPLIT]` or `hf:NAME:CONFIG:SPLIT`, optionally + `[START:STOP]`."""
    body = spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec
    start, stop = 0, None
    if body.endswith("]"):
        rows = _ROWS.search(body)
        if rows is None:
            raise LmforgeError(f"{spec!r}: rows must be [START:STOP] with whole numbers",
                               hint=f"write {_SYNTAX}")
        start, stop = int(rows[1] or 0), int(rows[2]) if rows[2] else None
        body = body[:rows.start()]
    parts = body.split(":")
    # A Windows path keeps its drive colon: hf:C:\\data\\set:train.
    if len(parts) > 1 and len(parts[0]) == 1 and parts[1][:1] in ("\\", "/"):
        parts = [f"{parts[0]}:{parts[1]}", *parts[2:]]
    if not parts[0] or len(parts) > 3 or not all(parts):
        raise LmforgeError(f"{spec!r} is not a dataset reference", hint=f"write {_SYNTAX}")
    if len(parts) == 3:
        return HubSpec(parts[0], parts[1], parts[2], start, stop)
    return HubSpec(parts[0], None, parts[1] if len(parts) == 2 else "train", start, stop)


def default_source(name: str) -> str:
    """The source name of a dataset: its last name part (`TinyStories`, a folder's name)."""
    return Path(name.rstrip("/\\")).name or name


def _saved_split(datasets: Any, folder: Path, split: str) -> Any:
    """A `save_to_disk` copy: one Dataset, or a DatasetDict to pick the split from."""
    ds = datasets.load_from_disk(str(folder))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise LmforgeError(f"hf:{folder}: no split {split!r} (splits: {', '.join(ds)})",
                               hint=f"write {_SYNTAX}")
        return ds[split]
    return ds


def _load(name: str, split: str, config: str | None, streaming: bool) -> Any:
    datasets = require("datasets", "datasets", f"reading hf:{name}")
    folder = Path(name)
    saved = folder.is_dir() and ((folder / "dataset_dict.json").is_file()
                                 or (folder / "state.json").is_file())
    try:
        if saved:
            return _saved_split(datasets, folder, split)
        return datasets.load_dataset(name, config, split=split, streaming=streaming)
    except LmforgeError:
        raise
    except Exception as e:  # the loader's many failure types all mean "cannot load this"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise LmforgeError(
            f"hf:{name}: cannot load split {split!r} ({type(e).__name__}: {first})",
            hint="check the name, config and split; offline, only cached datasets and local "
                 "folders can be read") from None


def hub_records(spec: str) -> Iterator[tuple[str, Any]]:
    """(where, record) for the rows [start, stop) of an `hf:` spec, streamed, `where` naming
    the row. A dataset has one set of columns, so a field a row lacks is None there: it is
    dropped, and records look like JSONL ones. A stream that breaks off (or a corrupt data
    file) raises one LmforgeError; errors of the caller's own handling pass through as they are.
    """
    hub = parse_spec(spec)
    rows = itertools.islice(enumerate(_load(hub.name, hub.split, hub.config, streaming=True)),
                            hub.start, hub.stop)
    while True:
        try:
            row, rec = next(rows)
        except StopIteration:
            return
        except (OSError, ValueError) as e:
            raise LmforgeError(f"{spec}: reading failed ({type(e).__name__}: {e})") from None
        if isinstance(rec, dict):
            rec = {k: v for k, v in rec.items() if v is not None}
        yield f"hf:{hub.name}:{hub.split}[{row}]", rec


def read_hub_dataset(name: str, split: str = "train", text_field: str = "text",
                     config: str | None = None, source: str | None = None,
                     streaming: bool = True, errors: ReadErrors | None = None,
                     start: int = 0, stop: int | None = None) -> Iterator[Document]:
    """Yield a dataset split's rows [start, stop) as documents, in order (a stream stops
    reading at `stop`).

    `name`: a hub name, or a local folder of data files (JSONL, Parquet, ...) or saved with
    `Dataset.save_to_disk`. Text from `text_field`; other scalar columns go to meta. Id: the
    row's "id", else `{source}:{split}:{row index}`. Source: `source`, else the row's
    "source", else the name's last part. A dataset that cannot be loaded always raises; bad
    rows raise without `errors` and are recorded (line = row index) with it.
    """
    ds = _load(name, split, config, streaming)
    where = f"hf:{name}:{split}"
    src = default_source(name)
    problem = make_reporter(where, source or src, errors)
    columns = getattr(ds, "column_names", None)  # None when a stream does not know them yet
    if columns is not None and text_field not in columns:
        problem(None, "missing_field", f"no column {text_field!r} (columns: "
                f"{', '.join(columns) or 'none'})", hint="name the text column with --text-field")
        return
    try:
        for index, row in itertools.islice(enumerate(ds), start, stop):
            try:
                doc = record_document(row, text_field, split, index, source, src,
                                      scalar_meta=True)
            except ReadProblem as p:
                problem(index, p.kind, p.reason, hint=p.hint)
                continue
            if doc is not None:
                yield doc
    except (OSError, ValueError) as e:  # a stream that breaks off, a corrupt data file
        problem(None, "unreadable", f"reading failed ({type(e).__name__}: {e})")


def read_hub_spec(spec: str, text_field: str = "text", source: str | None = None,
                  errors: ReadErrors | None = None) -> Iterator[Document]:
    """`read_hub_dataset` for an `hf:...` argument of `read_documents`."""
    hub = parse_spec(spec)
    return read_hub_dataset(hub.name, hub.split, text_field, hub.config, source, errors=errors,
                            start=hub.start, stop=hub.stop)
