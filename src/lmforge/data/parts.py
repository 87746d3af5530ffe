"""A dataset artifact's documents as numbered parts: `documents-00000.jsonl` (or `.parquet`),
so a large curated corpus is written and read piece by piece. Older and small datasets hold
one `documents.jsonl`; `dataset_documents` reads either layout, in order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from lmforge.data.documents import Document, load_documents_jsonl, write_documents_jsonl
from lmforge.errors import LmforgeError
from lmforge.registry.atomic import atomic_open

SINGLE_FILE = "documents.jsonl"
PART_GLOBS = ("documents-*.jsonl", "documents-*.parquet")


class DocumentPartWriter:
    """Collects documents and writes a part every `part_documents` of them, atomically."""

    def __init__(self, out_dir: Path, fmt: str = "jsonl", part_documents: int = 10_000):
        if fmt not in ("jsonl", "parquet"):
            raise LmforgeError(f"unknown output format {fmt!r}", hint="use jsonl or parquet")
        self.out_dir, self.fmt, self.part_documents = Path(out_dir), fmt, part_documents
        self.parts: list[str] = []
        self._buffer: list[Document] = []

    def add(self, doc: Document) -> None:
        self._buffer.append(doc)
        if len(self._buffer) >= self.part_documents:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        self.parts.append(write_part(self._buffer, self.out_dir, len(self.parts), self.fmt))
        self._buffer = []

    def close(self) -> list[str]:
        self._flush()
        return self.parts


def part_name(index: int, fmt: str) -> str:
    """The file name of a dataset's part `index` (0-based)."""
    return f"documents-{index:05d}.{fmt}"


def write_part(docs: list[Document], out_dir: Path, index: int, fmt: str) -> str:
    """Write part `index` of a dataset atomically; return its file name. Parts can be written
    in any order, by any process: a part's name and bytes depend only on its documents."""
    name = part_name(index, fmt)
    if fmt == "jsonl":
        write_documents_jsonl(docs, Path(out_dir) / name)
    else:
        _write_parquet(docs, Path(out_dir) / name)
    return name


def _write_parquet(docs: list[Document], path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise LmforgeError("writing Parquet needs pyarrow",
                           hint="pip install pyarrow, or use output_format = \"jsonl\"") from None
    table = pa.table({"id": [d.id for d in docs], "text": [d.text for d in docs],
                      "source": [d.source for d in docs],
                      "meta": [json.dumps(d.meta, sort_keys=True) for d in docs]})
    with atomic_open(path) as f:
        pq.write_table(table, f)


def _read_parquet(path: Path) -> Iterator[Document]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(columns=["id", "text", "source", "meta"]):
        cols = batch.to_pydict()
        for i, text, source, meta in zip(cols["id"], cols["text"], cols["source"],
                                         cols["meta"]):
            yield Document(i, text, source, json.loads(meta))


def document_files(folder: Path) -> list[Path]:
    """The document files of a dataset folder, in reading order."""
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    files = sorted(p for pattern in PART_GLOBS for p in folder.glob(pattern))
    if not files:
        raise LmforgeError(f"{folder} holds no documents ({SINGLE_FILE} or documents-*.jsonl)",
                           hint="is this a dataset artifact?")
    return files


def dataset_documents(folder: Path) -> Iterator[Document]:
    """Every document of a dataset folder (an artifact's path), in order."""
    for path in document_files(folder):
        if path.suffix == ".parquet":
            yield from _read_parquet(path)
        else:
            yield from load_documents_jsonl(path)
