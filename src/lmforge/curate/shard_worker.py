"""The per-document steps of curation, run on one shard in a worker process.

normalize → quality filters (the source's preset) → PII scrubbing → decontamination, then for
each survivor the keys the global steps need: an exact-duplicate key, a MinHash signature, its
size for balancing. A shard's results are written atomically, its stats file last: that file
is the mark that the shard is done, so a killed run redoes only unfinished shards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.curate.config import CurationConfig
from lmforge.curate.decontam import Decontaminator
from lmforge.curate.dedup import exact_key, minhash_signatures
from lmforge.curate.filters import DocFilter, build_filters
from lmforge.curate.funnel import Funnel, excerpt
from lmforge.curate.normalize import normalize_text
from lmforge.curate.pii import scrub_pii
from lmforge.data.documents import Document, load_documents_jsonl, write_documents_jsonl
from lmforge.registry.atomic import atomic_open, atomic_write_json


@dataclass
class WorkerSetup:
    config: CurationConfig
    decontaminator: Decontaminator | None
    tokenizer_file: str | None  # counts tokens for balancing by tokens


_state: dict[str, Any] = {}


def init_worker(setup: WorkerSetup) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker
    cfg = setup.config
    _state["setup"] = setup
    _state["filters"] = {s.name: build_filters(s.preset, s.filters) for s in cfg.sources}
    _state["tokenizer"] = None
    if setup.tokenizer_file:
        from lmforge.tokenizer import Tokenizer

        _state["tokenizer"] = Tokenizer.load(setup.tokenizer_file)


def _example(doc: Document, text: str, **more: Any) -> dict[str, Any]:
    return {"id": doc.id, "excerpt": excerpt(text), **more}


def _run_filters(doc: Document, text: str, filters: list[DocFilter], funnel: Funnel,
                 examples: bool) -> str | None:
    for f in filters:
        new_text, reason = f.apply(text)
        if new_text is None:
            funnel.removed(f.name, doc.source, len(text), reason or f"{f.name}:removed",
                           _example(doc, text) if examples else None)
            return None
        funnel.passed(f.name, doc.source, len(text), len(new_text))
        text = new_text
    return text


def process_shard(input_path: str, out_prefix: str) -> str:
    """Curate one input shard; write `<out_prefix>.jsonl`, `.npz` and `.stats.json`."""
    setup: WorkerSetup = _state["setup"]
    cfg = setup.config
    funnel = Funnel(cfg.examples)
    kept: list[Document] = []
    pii_counts: dict[str, int] = {}
    found: dict[str, list[int]] = {}
    for doc in load_documents_jsonl(input_path):
        text = normalize_text(doc.text, fix_encoding=cfg.fix_encoding)
        if not text.strip():
            funnel.removed("normalize", doc.source, len(doc.text), "normalize:empty",
                           _example(doc, doc.text))
            continue
        funnel.passed("normalize", doc.source, len(doc.text), len(text))
        filtered = _run_filters(doc, text, _state["filters"][doc.source], funnel, True)
        if filtered is None:
            continue
        text = filtered
        if cfg.pii_kinds:
            scrubbed, counts = scrub_pii(text, cfg.pii_kinds)
            for kind, n in counts.items():
                pii_counts[kind] = pii_counts.get(kind, 0) + n
            funnel.passed("pii", doc.source, len(text), len(scrubbed))
            text = scrubbed
        meta = dict(doc.meta)
        if setup.decontaminator is not None:
            matches = setup.decontaminator.matches(text)
            for eval_set, item in matches:
                found.setdefault(eval_set, []).append(item)
            if matches and cfg.decontaminate.action == "drop":
                shown = ", ".join(f"{s}[{i}]" for s, i in matches[:3])
                funnel.removed("decontaminate", doc.source, len(text),
                               "decontaminate:ngram_overlap",
                               _example(doc, text, matches=shown))
                continue
            if matches:
                meta["contamination"] = [f"{s}:{i}" for s, i in matches]
            funnel.passed("decontaminate", doc.source, len(text), len(text))
        kept.append(Document(doc.id, text, doc.source, meta))
    if cfg.pii_kinds:
        funnel.extra["pii"] = {"replaced": {k: pii_counts.get(k, 0) for k in cfg.pii_kinds}}
    if setup.decontaminator is not None:
        funnel.extra["decontaminate"] = {"eval_items_found": found}
    _write_outputs(kept, out_prefix, cfg)
    atomic_write_json(f"{out_prefix}.stats.json", funnel.to_dict())
    return out_prefix


def _write_outputs(kept: list[Document], out_prefix: str, cfg: CurationConfig) -> None:
    texts = [d.text for d in kept]
    if cfg.near_dedup and texts:
        signatures = minhash_signatures(texts, cfg.minhash)
    else:
        signatures = np.zeros((len(texts), cfg.minhash.num_perm), dtype=np.uint32)
    tok = _state["tokenizer"]
    tokens = (np.array([len(ids) for ids in tok.encode_batch(texts)], dtype=np.int64)
              if tok is not None and texts else np.zeros(len(texts), dtype=np.int64))
    keys = np.array([exact_key(t) for t in texts], dtype="S16").reshape(-1)
    write_documents_jsonl(kept, f"{out_prefix}.jsonl")
    with atomic_open(Path(f"{out_prefix}.npz")) as f:
        np.savez(f, signatures=signatures, exact_keys=keys, tokens=tokens,
                 characters=np.array([len(t) for t in texts], dtype=np.int64),
                 ids=np.array([d.id for d in kept], dtype=str),
                 sources=np.array([d.source for d in kept], dtype=str))
