"""The data stages: the embedded corpus or your files as a dataset artifact, tokenizer
training, and tokenization into shards. Each exports a settings type and a run function (the
seam in lmforge/stage.py); the functions they call are usable on their own."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.corpora.pydocs import build_pydocs_corpus, corpus_stats
from lmforge.data.documents import (
    Document,
    write_documents_jsonl,
)
from lmforge.data.parts import dataset_documents
from lmforge.data.read import read_documents
from lmforge.data.shards import tokenize_to_shards
from lmforge.errors import LmforgeError
from lmforge.registry import Artifact, Workspace, atomic_write_json
from lmforge.rerun import input_record, rerun_metrics
from lmforge.stage import Outcome, check_keys
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


def register_files(ws: Workspace, paths: Sequence[str], text_field: str = "text",
                   name: str = "files", split: str = "auto") -> Artifact:
    """Documents read from text/JSONL files, folders or globs, as a dataset artifact
    (`split`: how text files divide into documents, see `read_documents`).

    The id follows the documents, not where they lie: the same files moved elsewhere give the
    same artifact; the paths read are kept in the metrics for the record.
    """
    docs = list(read_documents(list(paths), text_field=text_field, split=split))
    with ws.staging() as d:
        write_documents_jsonl(docs, d / DOCUMENTS_FILE)
        return ws.register(d, kind="dataset", stage="files", parents=None,
                           settings={"text_field": text_field, "split": split},
                           metrics={**corpus_stats(docs), "paths": [str(p) for p in paths],
                                    **rerun_metrics(input_record(paths))},
                           name=name)


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
            yield from dataset_documents(art.path)
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
                           metrics={"vocab_size": tok.vocab_size, **counts,
                                    **rerun_metrics(input_record(inputs))},
                           name=f"bpe-{tok.vocab_size}")


def _single_input(ws: Workspace, ref: str) -> tuple[Iterator[Document], dict, dict]:
    """One input (dataset ref, file, folder, glob or `pydocs`) -> documents, the parent
    entry naming it, and settings recording it when it is a path (which has no id)."""
    docs, parent_ids = resolve_inputs(ws, [ref])
    if parent_ids:
        return docs, {"data": parent_ids[0]}, {}
    return docs, {}, {"inputs": [str(ref)]}


def tokenize_stage(ws: Workspace, dataset_ref: str, tokenizer_ref: str,
                   val_fraction: float | None = None, seed: int = 0, workers: int = 0,
                   show_progress: bool = True, val_data: str | None = None) -> Artifact:
    """Tokenize a dataset into train/val token shards (kind "tokens") with `index.json`.

    Validation is `val_fraction` of the documents (default 0.05), or all of `val_data`, a
    second dataset (a corpus's own validation split), with every document of the first
    trained on (`val_fraction` then defaults to 0).
    """
    tokenizer = ws.resolve(tokenizer_ref, kind="tokenizer")
    docs, parents, settings = _single_input(ws, dataset_ref)
    val_docs = None
    if val_fraction is None:
        val_fraction = 0.0 if val_data is not None else 0.05
    if val_data is not None:
        val_docs, val_parents, val_settings = _single_input(ws, val_data)
        parents = {**parents, **{f"val_{k}": v for k, v in val_parents.items()}}
        settings = {**settings, **{f"val_{k}": v for k, v in val_settings.items()}}
    with ws.staging() as d:
        index = tokenize_to_shards(docs, tokenizer.file("tokenizer.json"), d,
                                   val_fraction=val_fraction, seed=seed, workers=workers,
                                   show_progress=show_progress, val_docs=val_docs)
        train, val = index["splits"]["train"], index["splits"]["val"]
        # `workers` is left out of the settings: it does not change a byte of the output.
        return ws.register(d, kind="tokens", stage="tokenize",
                           parents={**parents, "tokenizer": tokenizer.id},
                           settings={"val_fraction": val_fraction, "seed": seed, **settings},
                           metrics={"train_tokens": train["tokens"], "val_tokens": val["tokens"],
                                    "train_documents": train["documents"],
                                    "val_documents": val["documents"],
                                    "val_bytes": val["bytes"], "dtype": index["dtype"],
                                    **rerun_metrics(input_record(
                                        [dataset_ref, *([val_data] if val_data else [])]))})


def _dataset_summary(art: Artifact) -> str:
    return f"{art.metrics['documents']:,} documents, {art.metrics['characters']:,} characters"


def _listed(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


@dataclass(frozen=True)
class CorpusSettings:
    source: str = EMBEDDED  # the only embedded corpus

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path) -> CorpusSettings:
        check_keys(values, where, optional=("source",))
        if values.get("source", EMBEDDED) != EMBEDDED:
            raise LmforgeError(f"{where}: the only embedded corpus is '{EMBEDDED}'",
                               hint='use stage = "files" for your own data')
        return cls()


def run_corpus(ws: Workspace, s: CorpusSettings, show_progress: bool = True) -> Outcome:
    art = register_pydocs(ws)
    return Outcome(art, _dataset_summary(art))


@dataclass(frozen=True)
class FilesSettings:
    paths: tuple[str, ...]
    text_field: str = "text"
    name: str = "files"
    split: str = "auto"

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path) -> FilesSettings:
        check_keys(values, where, required=("paths",), optional=("text_field", "name", "split"))
        paths = tuple(str(base_dir / p) for p in _listed(values["paths"]))
        return cls(paths, **{k: v for k, v in values.items() if k != "paths"})


def run_files(ws: Workspace, s: FilesSettings, show_progress: bool = True) -> Outcome:
    art = register_files(ws, list(s.paths), s.text_field, s.name, split=s.split)
    return Outcome(art, _dataset_summary(art))


@dataclass(frozen=True)
class TokenizerSettings:
    inputs: tuple[str, ...] = (EMBEDDED,)  # files, folders, globs, dataset refs or pydocs
    vocab_size: int = 4096
    min_frequency: int = 2
    text_field: str = "text"

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path
                  ) -> TokenizerSettings:
        check_keys(values, where, required=("data", "vocab_size"),
                   optional=("min_frequency", "text_field"))
        values = dict(values)
        return cls(tuple(_listed(values.pop("data"))), **values)


def run_tokenizer(ws: Workspace, s: TokenizerSettings, show_progress: bool = True) -> Outcome:
    art = train_tokenizer_stage(ws, list(s.inputs), s.vocab_size, s.min_frequency,
                                s.text_field, show_progress=show_progress)
    m = art.metrics
    return Outcome(art, f"byte-level BPE, {m['vocab_size']} tokens, trained on "
                        f"{m['documents']:,} documents ({m['characters']:,} characters)")


@dataclass(frozen=True)
class TokenizeSettings:
    data: str
    tokenizer: str
    val_fraction: float | None = None  # default 0.05, or 0 with val_data
    seed: int = 0
    workers: int = 0  # processes (0 = one per core); changes no byte of the output
    val_data: str | None = None  # a separate validation dataset

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path) -> TokenizeSettings:
        check_keys(values, where, required=("data", "tokenizer"),
                   optional=("val_fraction", "seed", "val_data", "workers"))
        return cls(**values)


def run_tokenize(ws: Workspace, s: TokenizeSettings, show_progress: bool = True) -> Outcome:
    art = tokenize_stage(ws, s.data, s.tokenizer, s.val_fraction, s.seed, s.workers,
                         show_progress=show_progress, val_data=s.val_data)
    m = art.metrics
    return Outcome(art, f"{m['train_tokens']:,} train / {m['val_tokens']:,} val tokens")
