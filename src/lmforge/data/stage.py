"""Data as recipe steps: the embedded corpus as a dataset artifact, and tokenizer training."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from lmforge.data.corpora.pydocs import build_pydocs_corpus, corpus_stats
from lmforge.data.documents import (
    Document,
    load_documents_jsonl,
    read_documents,
    write_documents_jsonl,
)
from lmforge.errors import LmforgeError
from lmforge.registry import Artifact, Workspace, atomic_write_json
from lmforge.tokenizer import train_tokenizer

DOCUMENTS_FILE = "documents.jsonl"
EMBEDDED = "pydocs"  # the name that stands for the embedded default corpus on the command line


def register_pydocs(ws: Workspace) -> Artifact:
    """The documentation shipped with this Python, as a dataset artifact (deterministic id)."""
    docs = build_pydocs_corpus()
    with ws.staging() as d:
        write_documents_jsonl(docs, d / DOCUMENTS_FILE)
        return ws.register(d, kind="dataset", stage="corpus", parents=None,
                           settings={"corpus": EMBEDDED}, metrics=corpus_stats(docs),
                           name="pydocs")


def resolve_inputs(ws: Workspace, inputs: Sequence[str],
                   text_field: str = "text") -> tuple[Iterator[Document], list[str]]:
    """Documents from files, folders, globs, dataset artifacts or `pydocs`; + parent ids."""
    if not inputs:
        raise LmforgeError("no input given", hint=f"pass --input PATH, a dataset id, or {EMBEDDED}")
    paths: list[str] = []
    datasets: list[Artifact] = []
    for ref in inputs:
        if ref == EMBEDDED:
            datasets.append(register_pydocs(ws))
        elif Path(ref).exists() or any(c in ref for c in "*?["):  # a path or a glob
            paths.append(ref)
        else:
            try:
                datasets.append(ws.resolve(ref, kind="dataset"))
            except LmforgeError as e:
                raise LmforgeError(f"input '{ref}' is neither a file, a folder, a glob nor a "
                                   f"dataset artifact", hint=e.message) from None

    def documents() -> Iterator[Document]:
        for art in datasets:
            yield from load_documents_jsonl(art.file(DOCUMENTS_FILE))
        if paths:
            yield from read_documents(paths, text_field=text_field)

    return documents(), [a.id for a in datasets]


def train_tokenizer_stage(ws: Workspace, inputs: Sequence[str], vocab_size: int,
                          min_frequency: int = 2, text_field: str = "text",
                          show_progress: bool = True) -> Artifact:
    docs, parent_ids = resolve_inputs(ws, inputs, text_field)
    counts = {"documents": 0, "characters": 0}

    def texts() -> Iterator[str]:
        for doc in docs:
            counts["documents"] += 1
            counts["characters"] += len(doc.text)
            yield doc.text

    tok = train_tokenizer(texts(), vocab_size, min_frequency=min_frequency,
                          show_progress=show_progress)
    if counts["documents"] == 0:
        raise LmforgeError(f"no documents found in {', '.join(inputs)}",
                           hint="check the paths and --text-field")
    with ws.staging() as d:
        tok.save(d / "tokenizer.json")
        atomic_write_json(d / "training_inputs.json", {"inputs": [str(i) for i in inputs],
                                                       **counts})
        return ws.register(d, kind="tokenizer", stage="tokenizer",
                           parents={"data": parent_ids} if parent_ids else None,
                           settings={"vocab_size": vocab_size, "min_frequency": min_frequency,
                                     "inputs": [str(i) for i in inputs],
                                     "text_field": text_field},
                           metrics={"vocab_size": tok.vocab_size, **counts},
                           name=f"bpe-{tok.vocab_size}")
