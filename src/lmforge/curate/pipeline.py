"""The curation pipeline: read → shard → per-document steps in workers → global dedup →
balance → write. Resumable: a killed run, started again with the same settings and inputs,
keeps every finished phase and shard in its run folder and redoes only the rest.

    run folder (runs/curate-<key>/)
      input/part-00000.jsonl …  + input/done.json    phase 1: the sources, read once, sharded
      stage1/part-00000.{jsonl,npz,stats.json} …     phase 2: per shard, in worker processes
    output: documents-00000.jsonl … + stats.json     phase 3: dedup, balance, write (fast)

Exact and near-duplicate removal are global (a duplicate may sit in any shard), so workers only
compute keys and MinHash signatures; the clustering runs once over all of them. The first
document in input order (sources in recipe order, then file order) wins every tie.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.curate.balance import plan_mixture
from lmforge.curate.config import CurationConfig
from lmforge.curate.dedup import near_duplicate_clusters
from lmforge.curate.filters import build_filters
from lmforge.curate.funnel import Funnel, excerpt
from lmforge.curate.shard_worker import WorkerSetup, init_worker, process_shard
from lmforge.curate.sources import build_decontaminator, read_source
from lmforge.data.documents import Document, load_documents_jsonl, write_documents_jsonl
from lmforge.data.parts import DocumentPartWriter
from lmforge.errors import LmforgeError
from lmforge.registry.atomic import atomic_write_json

STEP_ORDER_HEAD = ["read", "normalize"]
STEP_ORDER_TAIL = ["pii", "decontaminate", "exact_dedup", "near_dedup", "balance"]


@dataclass
class CurationResult:
    stats: dict[str, Any]
    parts: list[str]  # output file names, in order
    documents: int
    characters: int
    seconds: float


Progress = Callable[[str, int, int | None], None]  # (phase, done, total)


def _no_progress(phase: str, done: int, total: int | None) -> None:
    pass


def _read_phase(cfg: CurationConfig, run_dir: Path, resolve_dataset: Callable,
                progress: Progress, notes: list[str]) -> dict[str, Any]:
    """Read every source once into input shards of `shard_documents` documents."""
    in_dir = run_dir / "input"
    done_file = in_dir / "done.json"
    if done_file.is_file():
        return json.loads(done_file.read_text())
    in_dir.mkdir(parents=True, exist_ok=True)
    for stale in in_dir.glob("part-*.jsonl"):
        stale.unlink()  # a read cut short is redone whole: reading is the cheap phase
    funnel = Funnel(cfg.examples)
    parts: list[str] = []
    read_errors: dict[str, Any] = {"count": 0, "examples": []}
    warnings: list[str] = list(notes)
    problems: list[str] = []  # each source's first read problem, for an empty run's error
    batch: list[Document] = []
    seen = 0

    def flush() -> None:
        name = f"part-{len(parts):05d}"
        write_documents_jsonl(batch, in_dir / f"{name}.jsonl")
        parts.append(name)
        batch.clear()

    for source in cfg.sources:
        funnel.touch("read", source.name)
        docs, errors = read_source(source, resolve_dataset)
        for doc in docs:
            funnel.passed("read", source.name, len(doc.text), len(doc.text))
            batch.append(doc)
            seen += 1
            if len(batch) >= cfg.shard_documents:
                flush()
                progress("read", seen, None)
        for rec in errors.records:
            where = f"{rec['file']}:{rec['line']}" if rec.get("line") else str(rec["file"])
            reason = f"read:{rec.get('kind', 'error')}"
            funnel.removed("read", source.name, 0, reason, {"id": where, "excerpt":
                                                            rec["reason"], "where": where})
        read_errors["count"] += errors.count
        room = 1000 - len(read_errors["examples"])
        read_errors["examples"] += [dict(r, source=source.name) for r in errors.records[:room]]
        if funnel.steps["read"][source.name]["documents_out"] == 0:
            warnings.append(f"source '{source.name}': no documents read from "
                            f"{', '.join(source.paths)} ({errors.count} problems)")
            if errors.records:
                first = errors.records[0]
                problems.append(f"source '{source.name}': {first['file']}: {first['reason']}")
    if batch:
        flush()
    progress("read", seen, seen)
    if seen == 0:
        why = f" ({'; '.join(problems[:3])})" if problems else ""
        raise LmforgeError(f"no documents in any source{why}",
                           hint="check the paths (and text_field for JSONL) of each source")
    state = {"parts": parts, "funnel": funnel.to_dict(), "read_errors": read_errors,
             "warnings": warnings, "documents": seen}
    atomic_write_json(done_file, state)
    return state


@contextmanager
def _executor(setup: WorkerSetup, workers: int) -> Iterator[ProcessPoolExecutor | None]:
    if workers <= 1:
        init_worker(setup)  # in-process: no start-up cost for small runs
        yield None
        return
    # spawn: the same on every OS, and no fork of a process holding threads (torch, tokenizers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_worker, initargs=(setup,))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _shard_phase(cfg: CurationConfig, run_dir: Path, parts: list[str], setup: WorkerSetup,
                 progress: Progress) -> None:
    """Run the per-document steps on every shard not finished by an earlier run."""
    out_dir = run_dir / "stage1"
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [p for p in parts if not (out_dir / f"{p}.stats.json").is_file()]
    done = len(parts) - len(todo)
    progress("filter", done, len(parts))
    if not todo:
        return
    if cfg.executor == "datatrove":
        from lmforge.curate.distributed import run_with_datatrove

        run_with_datatrove(setup, run_dir, parts, cfg.workers)
        progress("filter", len(parts), len(parts))
        return
    with _executor(setup, cfg.workers) as pool:
        if pool is None:
            for p in todo:
                process_shard(str(run_dir / "input" / f"{p}.jsonl"), str(out_dir / p))
                done += 1
                progress("filter", done, len(parts))
            return
        try:
            pending = {pool.submit(process_shard, str(run_dir / "input" / f"{p}.jsonl"),
                                   str(out_dir / p)) for p in todo}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()
                    done += 1
                    progress("filter", done, len(parts))
        except BrokenProcessPool:
            raise LmforgeError(
                "a curation worker died before finishing (see its error above)",
                hint="run again to resume; if memory ran out, use fewer workers") from None


def _load_arrays(out_dir: Path, parts: list[str]) -> dict[str, np.ndarray]:
    keys = ("signatures", "exact_keys", "tokens", "characters", "ids", "sources")
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in (*keys, "part")}
    for i, p in enumerate(parts):
        with np.load(out_dir / f"{p}.npz") as z:
            for key in keys:
                arrays[key].append(z[key])
            arrays["part"].append(np.full(len(z["characters"]), i, dtype=np.int32))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in arrays.items()}


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


def _sizes(cfg: CurationConfig, arrays: dict[str, np.ndarray]) -> np.ndarray:
    by = cfg.balance.by if cfg.balance else "characters"
    if by == "documents":
        return np.ones(len(arrays["characters"]), dtype=np.int64)
    return arrays["tokens"] if by == "tokens" else arrays["characters"]


def run_pipeline(cfg: CurationConfig, run_dir: Path, out_dir: Path, resolve_dataset: Callable,
                 tokenizer_file: str | None = None, progress: Progress = _no_progress,
                 notes: list[str] | None = None) -> CurationResult:
    """Curate `cfg`'s sources into `out_dir` (document parts + stats.json), resuming from
    `run_dir`. `resolve_dataset(ref)` turns a dataset artifact reference into documents;
    `notes` (e.g. a source read from its fallback) open the warnings."""
    start = time.perf_counter()
    read = _read_phase(cfg, run_dir, resolve_dataset, progress, notes or [])
    parts = read["parts"]
    setup = WorkerSetup(cfg, build_decontaminator(cfg.decontaminate), tokenizer_file)
    _shard_phase(cfg, run_dir, parts, setup, progress)
    stage1 = run_dir / "stage1"
    funnel = Funnel(cfg.examples)
    funnel.merge(read["funnel"])
    for p in parts:
        funnel.merge(json.loads((stage1 / f"{p}.stats.json").read_text()))
    arrays = _load_arrays(stage1, parts)
    exact_of, near_of = _duplicate_of(cfg, arrays)
    sizes = _sizes(cfg, arrays)

    docs_ids, source_arr = arrays["ids"], arrays["sources"]
    keep = (exact_of < 0) & (near_of < 0)
    repeats = keep.astype(np.int64)
    mixture_report = None
    if cfg.balance is not None and keep.any():
        names = [s.name for s in cfg.sources]
        by_source = {s: np.flatnonzero(keep & (source_arr == s)) for s in names}
        plan = plan_mixture({s: sizes[idx] for s, idx in by_source.items()}, cfg.balance)
        for s, idx in by_source.items():
            repeats[idx] = plan.repeats[s]
        mixture_report = plan.report

    dedup_steps = (("exact_dedup", "exact_dedup:duplicate", cfg.exact_dedup, exact_of),
                   ("near_dedup", "near_dedup:near_duplicate", cfg.near_dedup, near_of))
    writer = DocumentPartWriter(out_dir, cfg.output_format, cfg.shard_documents)
    i = 0
    for p in parts:
        for doc in load_documents_jsonl(stage1 / f"{p}.jsonl"):
            chars = len(doc.text)
            duplicate = False
            for step, reason, enabled, of in dedup_steps:
                if not enabled:
                    continue
                if of[i] >= 0:
                    funnel.removed(step, doc.source, chars, reason,
                                   {"id": doc.id, "excerpt": excerpt(doc.text),
                                    "duplicate_of": str(docs_ids[of[i]])})
                    duplicate = True
                    break
                funnel.passed(step, doc.source, chars, chars)
            if duplicate:
                i += 1
                continue
            if cfg.balance is not None:
                if repeats[i] == 0:
                    funnel.removed("balance", doc.source, chars, "balance:downsampled",
                                   {"id": doc.id, "excerpt": excerpt(doc.text)})
                else:
                    # Copies keep the id: the train/val split is by id, so an upsampled
                    # document can never sit in both splits.
                    funnel.passed("balance", doc.source, chars, chars * int(repeats[i]))
                    c = funnel.steps["balance"][doc.source]
                    c["documents_out"] += int(repeats[i]) - 1
            for r in range(int(repeats[i])):
                meta = dict(doc.meta, repeat=r) if repeats[i] > 1 else doc.meta
                writer.add(Document(doc.id, doc.text, doc.source, meta))
            i += 1
    out_parts = writer.close()
    if mixture_report is not None:
        funnel.extra["balance"] = {"mixture": mixture_report}

    filter_steps = _filter_order(cfg)
    steps = funnel.step_list(STEP_ORDER_HEAD + filter_steps + STEP_ORDER_TAIL)
    source_totals, warnings = _source_totals(cfg, steps), list(read["warnings"])
    for name, t in source_totals.items():
        if t["documents_in"] and not t["documents_out"]:
            warnings.append(f"source '{name}': no documents survived ({_removers(steps, name)})")
    # No timings or worker counts in the file: the same inputs and settings give the same
    # bytes (and so the same artifact id) however and however fast they ran.
    stats = {"sources": source_totals, "steps": steps, "read_errors": read["read_errors"],
             "warnings": warnings, "settings": cfg.settings()}
    atomic_write_json(out_dir / "stats.json", stats)
    total_docs = sum(t["documents_out"] for t in source_totals.values())
    total_chars = sum(t["characters_out"] for t in source_totals.values())
    return CurationResult(stats, out_parts, total_docs, total_chars,
                          time.perf_counter() - start)


def _filter_order(cfg: CurationConfig) -> list[str]:
    """The quality filters in the order they run (sources' presets merged, first seen first)."""
    order: list[str] = []
    for s in cfg.sources:
        for f in build_filters(s.preset, s.filters):
            if f.name not in order:
                order.append(f.name)
    return order


def _source_totals(cfg: CurationConfig, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per source: what was read, and what came out of the last step."""
    totals = {}
    for s in cfg.sources:
        first = steps[0]["by_source"].get(s.name, {})
        last = first
        for step in steps:
            if s.name in step["by_source"] and step["by_source"][s.name]["documents_in"]:
                last = step["by_source"][s.name]
        if not last or not last.get("documents_in"):
            last = {"documents_out": 0, "characters_out": 0}
        totals[s.name] = {"documents_in": first.get("documents_in", 0),
                          "characters_in": first.get("characters_in", 0),
                          "documents_out": last["documents_out"],
                          "characters_out": last["characters_out"]}
    return totals


def _removers(steps: list[dict[str, Any]], source: str) -> str:
    removed = []
    for step in steps:
        c = step["by_source"].get(source)
        if c and c["documents_in"] > c["documents_out"]:
            removed.append((c["documents_in"] - c["documents_out"], step["name"]))
    removed.sort(reverse=True)
    return "removed by " + ", ".join(f"{name} ({n:,})" for n, name in removed) if removed \
        else "nothing was read"
