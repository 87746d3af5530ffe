"""The curation pipeline: read → shard → per-document steps in workers → global dedup →
balance → write. Resumable: a killed run, started again with the same settings and inputs,
keeps every finished phase and shard in its run folder and redoes only the rest.

    run folder (runs/curate-<key>/)
      input/part-00000.jsonl …  + input/done.json    phase 1: the sources, read once, sharded
      stage1/part-00000.{jsonl,npz,stats.json} …     phase 2: per shard, in worker processes
    output: documents-00000.jsonl … + stats.json     phase 3: dedup, balance, write (fast)

Exact and near-duplicate removal are global (a duplicate may sit in any shard), so workers only
compute keys and MinHash signatures; the clustering runs once over all of them
(curate/global_phase.py). The first document in input order (sources in recipe order, then
file order) wins every tie. With `executor = "datatrove"` every phase runs as datatrove
tasks instead (curate/distributed.py), with the same output bytes.
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

from lmforge.curate.config import CurationConfig
from lmforge.curate.global_phase import plan_output, write_output
from lmforge.curate.reading import (
    ResolveDataset,
    ShardWriter,
    merge_reads,
    plan_units,
    read_unit,
    require_documents,
)
from lmforge.curate.shard_worker import WorkerSetup, init_worker, process_shard
from lmforge.curate.sources import build_decontaminator
from lmforge.errors import LmforgeError
from lmforge.registry.atomic import atomic_write_json


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


def _read_phase(cfg: CurationConfig, run_dir: Path, resolve_dataset: ResolveDataset,
                progress: Progress, notes: list[str]) -> dict[str, Any]:
    """Read every source once, in order, into input shards of `shard_documents` documents."""
    in_dir = run_dir / "input"
    done_file = in_dir / "done.json"
    if done_file.is_file():
        state = json.loads(done_file.read_text())
        require_documents(state)
        return state
    in_dir.mkdir(parents=True, exist_ok=True)
    for stale in in_dir.glob("part-*.jsonl"):
        stale.unlink()  # a read cut short is redone whole: reading is the cheap phase
    units = plan_units(cfg)
    sources = {s.name: s for s in cfg.sources}
    writer = ShardWriter(in_dir, "part", cfg.shard_documents)
    results = [read_unit(unit, sources[unit.source], resolve_dataset, writer,
                         lambda: progress("read", writer.documents, None)) for unit in units]
    state = merge_reads(cfg, units, results, writer.close(), notes)
    progress("read", writer.documents, writer.documents)
    require_documents(state)
    atomic_write_json(done_file, state, sort_keys=False)  # sources stay in recipe order
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


def run_pipeline(cfg: CurationConfig, run_dir: Path, out_dir: Path,
                 resolve_dataset: ResolveDataset, tokenizer_file: str | None = None,
                 progress: Progress = _no_progress, notes: list[str] | None = None
                 ) -> CurationResult:
    """Curate `cfg`'s sources into `out_dir` (document parts + stats.json), resuming from
    `run_dir`. `resolve_dataset(ref)` turns a dataset artifact reference into documents;
    `notes` (e.g. a source read from its fallback) open the warnings."""
    start = time.perf_counter()
    if cfg.executor == "datatrove":
        from lmforge.curate.distributed import run_with_datatrove

        stats, parts = run_with_datatrove(cfg, run_dir, out_dir, resolve_dataset,
                                          tokenizer_file, notes or [], progress)
        return _result(stats, parts, start)
    read = _read_phase(cfg, run_dir, resolve_dataset, progress, notes or [])
    setup = WorkerSetup(cfg, build_decontaminator(cfg.decontaminate), tokenizer_file)
    _shard_phase(cfg, run_dir, read["parts"], setup, progress)
    plan = plan_output(cfg, run_dir, read)
    parts = write_output(cfg, run_dir, read["parts"], plan, out_dir, 0,
                         plan.parts(cfg.shard_documents))
    atomic_write_json(out_dir / "stats.json", plan.stats)
    return _result(plan.stats, parts, start)


def _result(stats: dict[str, Any], parts: list[str], start: float) -> CurationResult:
    totals = stats["sources"].values()
    return CurationResult(stats, parts, sum(t["documents_out"] for t in totals),
                          sum(t["characters_out"] for t in totals), time.perf_counter() - start)
