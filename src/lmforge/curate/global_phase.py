"""The global phase of curation: what needs every shard at once, and the writing it decides.

`plan_output` reads the shards' keys, signatures and sizes (stage1/*.npz), clusters exact and
near duplicates over all of them (a duplicate may sit in any shard; the first document in
input order wins every tie), plans the mixture, counts those steps in the funnel and builds
stats.json. It reads document text only for the few removals kept as examples.
`write_output` then writes any range of the output parts (`shard_documents` documents each),
so one process can write them all in a single pass, or many tasks a range each: a part's
bytes depend only on the plan, never on who wrote it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.curate.balance import plan_mixture
from lmforge.curate.config import CurationConfig
from lmforge.curate.dedup import near_duplicate_clusters
from lmforge.curate.funnel import Funnel, excerpt
from lmforge.curate.run_stats import build_stats
from lmforge.data.documents import Document, load_documents_jsonl
from lmforge.data.parts import write_part
from lmforge.registry.atomic import atomic_open, atomic_write_json


@dataclass
class OutputPlan:
    repeats: np.ndarray  # per stage-1 document, in input order: copies to write (0: removed)
    starts: np.ndarray  # index of each stage-1 shard's first document, then the total
    stats: dict[str, Any]  # stats.json

    @property
    def documents(self) -> int:
        return int(self.repeats.sum())

    def parts(self, part_documents: int) -> int:
        return -(-self.documents // part_documents)

    def save(self, folder: Path) -> None:
        """Write the plan; stats.json last, so its presence means the plan is whole."""
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_open(folder / "plan.npz") as f:
            np.savez(f, repeats=self.repeats, starts=self.starts)
        # In its dicts' order: sources in recipe order, as report.md lists them.
        atomic_write_json(folder / "stats.json", self.stats, sort_keys=False)

    @classmethod
    def load(cls, folder: Path) -> OutputPlan | None:
        """The plan saved in `folder`, or None when it was never finished."""
        if not (folder / "stats.json").is_file():
            return None
        with np.load(folder / "plan.npz") as z:
            repeats, starts = z["repeats"], z["starts"]
        return cls(repeats, starts, json.loads((folder / "stats.json").read_text()))


_ARRAYS = ("signatures", "exact_keys", "tokens", "characters", "ids", "sources")


def _load_arrays(stage1: Path, parts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every shard's arrays, concatenated in input order, and where each shard starts."""
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in _ARRAYS}
    sizes = []
    for p in parts:
        with np.load(stage1 / f"{p}.npz") as z:
            for key in _ARRAYS:
                arrays[key].append(z[key])
            sizes.append(len(z["characters"]))
    starts = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in arrays.items()}, starts


def _duplicate_of(cfg: CurationConfig, arrays: dict[str, np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """For each survivor of the per-document steps: the index of the document it duplicates
    exactly (-1 if none), and of the one it near-duplicates (-1 if none)."""
    n = len(arrays["characters"])
    exact_of = np.full(n, -1, dtype=np.int64)
    if cfg.exact_dedup and n:
        first: dict[bytes, int] = {}
        for i, key in enumerate(arrays["exact_keys"].tolist()):
            j = first.setdefault(key, i)
            if j != i:
                exact_of[i] = j
    near_of = np.full(n, -1, dtype=np.int64)
    if cfg.near_dedup and n:
        alive = np.flatnonzero(exact_of < 0)
        reps = near_duplicate_clusters(arrays["signatures"][alive], cfg.minhash)
        dup = reps != np.arange(len(alive))
        near_of[alive[dup]] = alive[reps[dup]]
    return exact_of, near_of


def _mixture(cfg: CurationConfig, arrays: dict[str, np.ndarray], keep: np.ndarray
             ) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Copies of each document (0 for the removed), and the mixture report when balancing."""
    repeats = keep.astype(np.int64)
    if cfg.balance is None or not keep.any():
        return repeats, None
    by = cfg.balance.by
    sizes = (np.ones(len(keep), dtype=np.int64) if by == "documents"
             else arrays["tokens"] if by == "tokens" else arrays["characters"])
    by_source = {s.name: np.flatnonzero(keep & (arrays["sources"] == s.name))
                 for s in cfg.sources}
    plan = plan_mixture({s: sizes[idx] for s, idx in by_source.items()}, cfg.balance)
    for s, idx in by_source.items():
        repeats[idx] = plan.repeats[s]
    return repeats, plan.report


class _Shards:
    """Stage-1 documents by their index in input order, a shard loaded at a time."""

    def __init__(self, stage1: Path, parts: list[str], starts: np.ndarray):
        self.stage1, self.parts, self.starts = stage1, parts, starts
        self._loaded, self._docs = -1, []

    def document(self, i: int) -> Document:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        if k != self._loaded:
            self._docs = list(load_documents_jsonl(self.stage1 / f"{self.parts[k]}.jsonl"))
            self._loaded = k
        return self._docs[i - int(self.starts[k])]

    def between(self, first: int, stop: int) -> Iterator[tuple[int, Document]]:
        """(index, document) for indices first <= i < stop, streamed."""
        k = int(np.searchsorted(self.starts, first, side="right")) - 1
        while k < len(self.parts) and self.starts[k] < stop:
            base = int(self.starts[k])
            for j, doc in enumerate(load_documents_jsonl(self.stage1 / f"{self.parts[k]}.jsonl")):
                if base + j >= stop:
                    return
                if base + j >= first:
                    yield base + j, doc
            k += 1


def _count_global_steps(cfg: CurationConfig, funnel: Funnel, arrays: dict[str, np.ndarray],
                        exact_of: np.ndarray, near_of: np.ndarray, repeats: np.ndarray,
                        shards: _Shards) -> None:
    """Exact dedup, near dedup and balancing in the funnel, document by document in input
    order (so the examples kept are the first ones, however the work was split)."""
    steps = [(step, reason, of.tolist()) for step, reason, enabled, of in (
        ("exact_dedup", "exact_dedup:duplicate", cfg.exact_dedup, exact_of),
        ("near_dedup", "near_dedup:near_duplicate", cfg.near_dedup, near_of)) if enabled]
    ids, sources = arrays["ids"], arrays["sources"].tolist()
    characters, copies = arrays["characters"].tolist(), repeats.tolist()
    for i, (source, chars) in enumerate(zip(sources, characters)):
        duplicate = False
        for step, reason, of in steps:
            if of[i] < 0:
                funnel.passed(step, source, chars, chars)
                continue
            example = None
            if funnel.wants_example(step, source, reason):
                doc = shards.document(i)
                example = {"id": doc.id, "excerpt": excerpt(doc.text),
                           "duplicate_of": str(ids[of[i]])}
            funnel.removed(step, source, chars, reason, example)
            duplicate = True
            break
        if duplicate or cfg.balance is None:
            continue
        if copies[i] == 0:
            reason = "balance:downsampled"
            example = None
            if funnel.wants_example("balance", source, reason):
                doc = shards.document(i)
                example = {"id": doc.id, "excerpt": excerpt(doc.text)}
            funnel.removed("balance", source, chars, reason, example)
        else:
            funnel.passed("balance", source, chars, chars * copies[i])
            funnel.steps["balance"][source]["documents_out"] += copies[i] - 1


def plan_output(cfg: CurationConfig, run_dir: Path, read_state: dict[str, Any]) -> OutputPlan:
    """Dedup, mixture and stats of a run whose shards are all curated (stage1/)."""
    stage1, parts = run_dir / "stage1", read_state["parts"]
    funnel = Funnel(cfg.examples)
    funnel.merge(read_state["funnel"])
    for p in parts:  # in shard order: the examples kept are the first in input order
        funnel.merge(json.loads((stage1 / f"{p}.stats.json").read_text()))
    arrays, starts = _load_arrays(stage1, parts)
    exact_of, near_of = _duplicate_of(cfg, arrays)
    repeats, mixture = _mixture(cfg, arrays, (exact_of < 0) & (near_of < 0))
    _count_global_steps(cfg, funnel, arrays, exact_of, near_of, repeats,
                        _Shards(stage1, parts, starts))
    if mixture is not None:
        funnel.extra["balance"] = {"mixture": mixture}
    return OutputPlan(repeats, starts, build_stats(cfg, funnel, read_state))


def write_output(cfg: CurationConfig, run_dir: Path, parts: list[str], plan: OutputPlan,
                 out_dir: Path, first: int, stop: int) -> list[str]:
    """Write output parts first <= k < stop into `out_dir`; their file names."""
    size, fmt = cfg.shard_documents, cfg.output_format
    end = np.cumsum(plan.repeats)
    begin = end - plan.repeats
    lo, hi = first * size, min(stop * size, plan.documents)
    if lo >= hi:
        return []
    # The documents whose copies fall in [lo, hi): from the first ending after lo to the
    # first starting at or after hi.
    i0 = int(np.searchsorted(end, lo, side="right"))
    i1 = int(np.searchsorted(begin, hi, side="left"))
    names: list[str] = []
    buffer: list[Document] = []
    for i, doc in _Shards(run_dir / "stage1", parts, plan.starts).between(i0, i1):
        n = int(plan.repeats[i])
        for r in range(n):
            if not lo <= int(begin[i]) + r < hi:
                continue
            # Copies keep the id: the train/val split is by id, so an upsampled document
            # can never sit in both splits.
            meta = dict(doc.meta, repeat=r) if n > 1 else doc.meta
            buffer.append(Document(doc.id, doc.text, doc.source, meta))
            if len(buffer) == size:
                names.append(write_part(buffer, out_dir, first + len(names), fmt))
                buffer = []
    if buffer:
        names.append(write_part(buffer, out_dir, first + len(names), fmt))
    return names
