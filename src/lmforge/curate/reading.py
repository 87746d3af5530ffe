"""Reading curation sources in units: pieces of a source that can be read apart (by one process
in order, or by many tasks at once) and still add up to the same counts.

A source's refs become units in reading order: the embedded corpus and each dataset artifact
one unit each, then its files (folders and globs expanded once, here, so a missing path stops
the run before any work) grouped into units of about `unit_bytes`, and each `hf:` spec alone.
Problems found while expanding (an empty folder) form a unit of their own, in the place a
single reader would have met them. `merge_reads` adds the units' results up in unit order, so
removal examples, the 1,000 read-error examples per source and the warnings come out exactly
as one sequential reader of all sources makes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.curate.config import CurationConfig, SourceConfig
from lmforge.curate.funnel import Funnel
from lmforge.curate.sources import EMBEDDED, is_path
from lmforge.data.documents import Document, write_documents_jsonl
from lmforge.data.files import FileInput
from lmforge.data.read import expand_inputs, read_input
from lmforge.data.readers import ReadErrors
from lmforge.errors import LmforgeError

UNIT_BYTES = 256 << 20  # a few seconds of reading: big enough that small files share a unit
MAX_RECORDS = 1000  # read problems kept as examples per source (ReadErrors' default)

ResolveDataset = Callable[[str], Iterator[Document]]


@dataclass
class ReadUnit:
    source: str  # the source's name
    kind: str  # "embedded", "dataset" (ref), "inputs" (files or one hf: spec), "noted"
    ref: str = ""
    inputs: list[FileInput | str] = field(default_factory=list)
    count: int = 0  # "noted": problems met while expanding the source's paths
    records: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        inputs = [i if isinstance(i, str) else
                  {"kind": i.kind, "path": str(i.path), "name": i.name,
                   "default_source": i.default_source} for i in self.inputs]
        return {"source": self.source, "kind": self.kind, "ref": self.ref, "inputs": inputs,
                "count": self.count, "records": self.records}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReadUnit:
        inputs = [i if isinstance(i, str) else
                  FileInput(i["kind"], Path(i["path"]), i["name"], i["default_source"])
                  for i in d["inputs"]]
        return cls(d["source"], d["kind"], d["ref"], inputs, d["count"], d["records"])


def plan_units(cfg: CurationConfig, unit_bytes: int = UNIT_BYTES) -> list[ReadUnit]:
    """Every source's refs as read units, sources in recipe order."""
    if isinstance(unit_bytes, bool) or not isinstance(unit_bytes, int) or unit_bytes < 1:
        raise LmforgeError(f"unit_bytes must be a positive integer, not {unit_bytes!r}")
    units: list[ReadUnit] = []
    for source in cfg.sources:
        # A single reader takes the embedded corpus and datasets first, then the files.
        for ref in source.paths:
            if ref == EMBEDDED:
                units.append(ReadUnit(source.name, "embedded"))
            elif not is_path(ref):
                units.append(ReadUnit(source.name, "dataset", ref))
        paths = [p for p in source.paths if is_path(p)]
        if not paths:
            continue
        errors = ReadErrors(MAX_RECORDS)
        inputs = expand_inputs(paths, errors)
        if errors.count:
            units.append(ReadUnit(source.name, "noted", count=errors.count,
                                  records=errors.records))
        units.extend(_group(source.name, inputs, unit_bytes))
    return units


def _group(source: str, inputs: list[FileInput | str], unit_bytes: int) -> list[ReadUnit]:
    units: list[ReadUnit] = []
    group: list[FileInput | str] = []
    size = 0
    for item in inputs:
        if isinstance(item, str):  # an hf: dataset: its size is unknown, so a unit alone
            if group:
                units.append(ReadUnit(source, "inputs", inputs=group))
            units.append(ReadUnit(source, "inputs", inputs=[item]))
            group, size = [], 0
            continue
        group.append(item)
        try:
            size += item.path.stat().st_size
        except OSError:
            pass  # the reader records why it cannot read the file
        if size >= unit_bytes:
            units.append(ReadUnit(source, "inputs", inputs=group))
            group, size = [], 0
    if group:
        units.append(ReadUnit(source, "inputs", inputs=group))
    return units


def _relabel(docs: Iterator[Document], name: str) -> Iterator[Document]:
    for doc in docs:
        meta = doc.meta if doc.source == name else {**doc.meta, "origin": doc.source}
        yield Document(doc.id, doc.text, name, meta)


def unit_documents(unit: ReadUnit, source: SourceConfig, resolve_dataset: ResolveDataset
                   ) -> tuple[Iterator[Document], ReadErrors]:
    """The unit's documents, each labelled with its source's name; problems (bad lines,
    unreadable files) are collected, not raised, so one bad file does not stop a long run.
    Read the collector after the documents are consumed."""
    errors = ReadErrors(MAX_RECORDS)
    if unit.kind == "noted":
        errors.count, errors.records = unit.count, list(unit.records)

    def documents() -> Iterator[Document]:
        if unit.kind == "embedded":
            from lmforge.data.corpora.pydocs import build_pydocs_corpus

            yield from _relabel(build_pydocs_corpus(), source.name)
        elif unit.kind == "dataset":
            try:
                yield from _relabel(resolve_dataset(unit.ref), source.name)
            except Exception as e:  # noqa: BLE001 - reported per source, the run goes on
                errors.add(unit.ref, None, f"not a file, folder, glob or dataset: {e}",
                           kind="unreadable", source=source.name)
        elif unit.kind == "inputs":
            for item in unit.inputs:
                yield from read_input(item, source.text_field, source.name, source.split,
                                      errors)

    return documents(), errors


class ShardWriter:
    """Documents into input shards `<prefix>-00000.jsonl`, ... of `size` documents each."""

    def __init__(self, folder: Path, prefix: str, size: int):
        self.folder, self.prefix, self.size = Path(folder), prefix, size
        self.parts: list[str] = []
        self.documents = 0
        self._batch: list[Document] = []

    def add(self, doc: Document) -> bool:
        """Add a document; True when that filled a shard."""
        self._batch.append(doc)
        self.documents += 1
        if len(self._batch) < self.size:
            return False
        self._flush()
        return True

    def _flush(self) -> None:
        name = f"{self.prefix}-{len(self.parts):05d}"
        write_documents_jsonl(self._batch, self.folder / f"{name}.jsonl")
        self.parts.append(name)
        self._batch = []

    def close(self) -> list[str]:
        if self._batch:
            self._flush()
        return self.parts


def read_unit(unit: ReadUnit, source: SourceConfig, resolve_dataset: ResolveDataset,
              writer: ShardWriter, on_shard: Callable[[], None] | None = None
              ) -> dict[str, Any]:
    """Read `unit` into `writer`; its counts for `merge_reads` (documents, characters, and
    the problems met). `on_shard()` runs whenever a shard fills."""
    docs, errors = unit_documents(unit, source, resolve_dataset)
    documents = characters = 0
    for doc in docs:
        documents += 1
        characters += len(doc.text)
        if writer.add(doc) and on_shard is not None:
            on_shard()
    return {"documents": documents, "characters": characters, "count": errors.count,
            "records": errors.records}


def merge_reads(cfg: CurationConfig, units: list[ReadUnit], results: list[dict[str, Any]],
                parts: list[str], notes: list[str]) -> dict[str, Any]:
    """The read phase's state (input/done.json) from every unit's `read_unit` result, in unit
    order: the shards, the read step's funnel, the read errors and the warnings."""
    funnel = Funnel(cfg.examples)
    read_errors: dict[str, Any] = {"count": 0, "examples": []}
    warnings: list[str] = list(notes)
    problems: list[str] = []  # each empty source's first problem, for the error if all are
    seen = 0
    for source in cfg.sources:
        mine = [r for u, r in zip(units, results) if u.source == source.name]
        documents = sum(r["documents"] for r in mine)
        funnel.touch("read", source.name)
        funnel.passed_many("read", source.name, documents, sum(r["characters"] for r in mine))
        records = [rec for r in mine for rec in r["records"]][:MAX_RECORDS]
        count = sum(r["count"] for r in mine)
        for rec in records:
            where = f"{rec['file']}:{rec['line']}" if rec.get("line") else str(rec["file"])
            funnel.removed("read", source.name, 0, f"read:{rec.get('kind', 'error')}",
                           {"id": where, "excerpt": rec["reason"], "where": where})
        read_errors["count"] += count
        room = MAX_RECORDS - len(read_errors["examples"])
        read_errors["examples"] += [dict(r, source=source.name) for r in records[:room]]
        if documents == 0:
            warnings.append(f"source '{source.name}': no documents read from "
                            f"{', '.join(source.paths)} ({count} problems)")
            if records:
                first = records[0]
                problems.append(f"source '{source.name}': {first['file']}: {first['reason']}")
        seen += documents
    return {"parts": parts, "funnel": funnel.to_dict(), "read_errors": read_errors,
            "warnings": warnings, "documents": seen, "problems": problems}


def require_documents(state: dict[str, Any]) -> None:
    """Stop with the sources' first problems when nothing at all was read."""
    if state["documents"]:
        return
    problems = state.get("problems", [])
    why = f" ({'; '.join(problems[:3])})" if problems else ""
    raise LmforgeError(f"no documents in any source{why}",
                       hint="check the paths (and text_field for JSONL) of each source")
