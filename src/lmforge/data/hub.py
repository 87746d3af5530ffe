"""Hugging Face `datasets` as a document source: a hub name (streamed, so nothing is downloaded
in full before the first document) or a local folder (data files, or a `save_to_disk` copy).

On the command line and in recipes a dataset is `hf:NAME[:SPLIT]` or `hf:NAME:CONFIG:SPLIT`,
e.g. `hf:roneneldan/TinyStories:train`, `hf:wikitext:wikitext-2-raw-v1:validation`,
`hf:/data/my_set` (split "train"). `datasets` is an optional dependency: without it, reading
a dataset says what to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.data.documents import Document, ReadErrors, make_reporter, record_document
from lmforge.data.readers import ReadProblem, require
from lmforge.errors import LmforgeError

HF_PREFIX = "hf:"
_SYNTAX = "hf:NAME[:SPLIT] or hf:NAME:CONFIG:SPLIT, e.g. hf:roneneldan/TinyStories:train"


def parse_spec(spec: str) -> tuple[str, str | None, str]:
    """`hf:NAME[:SPLIT]` or `hf:NAME:CONFIG:SPLIT` -> (name, config, split)."""
    parts = spec[len(HF_PREFIX):].split(":") if spec.startswith(HF_PREFIX) else [spec]
    # A Windows path keeps its drive colon: hf:C:\\data\\set:train.
    if len(parts) > 1 and len(parts[0]) == 1 and parts[1][:1] in ("\\", "/"):
        parts = [f"{parts[0]}:{parts[1]}", *parts[2:]]
    if not parts[0] or len(parts) > 3 or not all(parts):
        raise LmforgeError(f"{spec!r} is not a dataset reference", hint=f"write {_SYNTAX}")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return parts[0], None, parts[1] if len(parts) == 2 else "train"


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


def read_hub_dataset(name: str, split: str = "train", text_field: str = "text",
                     config: str | None = None, source: str | None = None,
                     streaming: bool = True, errors: ReadErrors | None = None
                     ) -> Iterator[Document]:
    """Yield a dataset split's rows as documents, in order.

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
        for index, row in enumerate(ds):
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
    """`read_hub_dataset` for an `hf:NAME[:SPLIT]` argument of `read_documents`."""
    name, config, split = parse_spec(spec)
    return read_hub_dataset(name, split, text_field, config, source, errors=errors)
