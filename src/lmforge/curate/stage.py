"""Curation as a stage: run the pipeline in a resumable run folder and register the curated
documents, stats.json, report.md and funnel.png as one dataset artifact."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lmforge.curate.config import CurationConfig, parse_config, with_paths_relative_to
from lmforge.curate.decontam import BUILTIN_EVAL_SETS
from lmforge.curate.pipeline import run_pipeline
from lmforge.curate.report import report_markdown, save_funnel_png
from lmforge.curate.sources import EMBEDDED, is_path, resolve_sources
from lmforge.data.documents import Document
from lmforge.data.eval_root import eval_data_root
from lmforge.data.hub import is_hub_spec
from lmforge.data.parts import dataset_documents
from lmforge.errors import LmforgeError
from lmforge.registry import Artifact, Workspace, atomic_write_text
from lmforge.registry.store import remove_tree
from lmforge.rerun import check_read, input_record, rerun_metrics
from lmforge.stage import Outcome


def _fingerprint(paths: list[str]) -> list[Any]:
    """Sizes and mtimes of the input files, so edited inputs start a fresh run folder."""
    out: list[Any] = []
    for p in paths:
        path = Path(p)
        files = sorted(path.rglob("*")) if path.is_dir() else [path] if path.is_file() else []
        for f in files:
            if f.is_file():
                st = f.stat()
                out.append([str(f), st.st_size, st.st_mtime_ns])
    return out


def run_key(cfg: CurationConfig) -> str:
    paths = [p for s in cfg.sources for p in s.paths]
    text = json.dumps([cfg.digest(), _fingerprint(paths)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Bars:
    """One rich progress bar per phase (reading counts documents; filtering counts shards)."""

    def __init__(self, show: bool):
        self.progress = Progress(TextColumn("{task.description:<14}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 disable=not show or bool(os.environ.get("LMFORGE_NO_PROGRESS")))
        self.tasks: dict[str, Any] = {}

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if phase not in self.tasks:
            label = {"read": "reading docs", "filter": "curating shards"}.get(phase, phase)
            self.tasks[phase] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[phase], completed=done, total=total)


@dataclass(frozen=True)
class DatasetResolver:
    """Dataset refs -> their documents, from artifact folders resolved up front: a plain
    object, so it travels to worker processes and cluster tasks (a Workspace does not)."""

    folders: dict[str, str]

    def __call__(self, ref: str) -> Iterator[Document]:
        if ref not in self.folders:
            raise LmforgeError(f"dataset {ref!r} was not resolved before the run")
        return dataset_documents(Path(self.folders[ref]))


@dataclass
class PreparedRun:
    """Everything a curation run needs, checked before any work."""

    config: CurationConfig
    notes: list[str]  # e.g. a source read from its fallback
    parents: dict[str, list[str]]
    resolve_dataset: DatasetResolver
    tokenizer_file: str | None
    run_dir: Path
    dataset_ids: dict[str, str] = field(default_factory=dict)  # source ref -> artifact id


def prepare_run(ws: Workspace, raw: dict[str, Any], where: str = "curation recipe"
                ) -> PreparedRun:
    """Check a curation table against the workspace: sources, datasets, tokenizer, run folder."""
    return prepare_config(ws, parse_config(raw, where))


def prepare_config(ws: Workspace, cfg: CurationConfig) -> PreparedRun:
    """`prepare_run` for a config already parsed (`lmforge reproduce` rebuilds one from a
    dataset's record)."""
    # Local paths first (a missing one stops the run, or its source reads its fallback),
    # then dataset refs, once, up front: their ids are parents, a typo fails before any work,
    # and their files are verified once.
    cfg, notes = resolve_sources(cfg)
    datasets = {}
    for s in cfg.sources:
        for p in s.paths:
            if p != EMBEDDED and not is_path(p) and p not in datasets:
                try:
                    datasets[p] = ws.resolve(p, kind="dataset")
                except LmforgeError as e:
                    raise LmforgeError(f"source '{s.name}': {e.message}", hint=e.hint) from None
    parents: dict[str, list[str]] = {}
    if datasets:
        parents["data"] = list(dict.fromkeys(a.id for a in datasets.values()))
    tokenizer_file = None
    if cfg.balance_tokenizer:
        tok_art = ws.resolve(cfg.balance_tokenizer, kind="tokenizer")
        tokenizer_file = str(tok_art.file("tokenizer.json"))
        parents["tokenizer"] = [tok_art.id]
    return PreparedRun(cfg, notes, parents,
                       DatasetResolver({ref: str(a.path) for ref, a in datasets.items()}),
                       tokenizer_file, ws.runs_dir / f"curate-{run_key(cfg)}",
                       {ref: a.id for ref, a in datasets.items()})


def curate_stage(ws: Workspace, raw: dict[str, Any], where: str = "curation recipe",
                 show_progress: bool = True, keep_run: bool = False) -> Artifact:
    """Curate the sources `raw` describes (see curate/config.py) into a dataset artifact."""
    return curate_prepared(ws, prepare_run(ws, raw, where), show_progress, keep_run)


def curate_prepared(ws: Workspace, prep: PreparedRun, show_progress: bool = True,
                    keep_run: bool = False) -> Artifact:
    """Run a prepared curation and register its dataset artifact."""
    cfg, parents, run_dir = prep.config, prep.parents, prep.run_dir
    bars = _Bars(show_progress)
    with ws.staging() as out, bars.progress:
        result = run_pipeline(cfg, run_dir, out, prep.resolve_dataset, prep.tokenizer_file,
                              bars, prep.notes)
        if result.documents == 0:
            raise LmforgeError(
                f"curation removed every document ({'; '.join(result.stats['warnings'])})",
                hint="loosen the filters of the source's preset, or pick another preset; "
                     f"the run's stats are in {run_dir}")
        rerun = rerun_record(prep)
        check_read(rerun["read_sha256"], "documents")
        atomic_write_text(out / "report.md", report_markdown(result.stats))
        _funnel_png(result.stats, out / "funnel.png")
        names = [s.name for s in cfg.sources]
        art = ws.register(
            out, kind="dataset", stage="curate", parents=parents or None,
            settings=cfg.settings(),
            metrics={"documents": result.documents, "characters": result.characters,
                     "sources": result.stats["sources"], "parts": len(result.parts),
                     "warnings": result.stats["warnings"],
                     "read_errors": result.stats["read_errors"]["count"],
                     "seconds": round(result.seconds, 2), "workers": cfg.workers,
                     **rerun_metrics(rerun)},
            name="curated-" + "-".join(names)[:40])
    if not keep_run:
        remove_tree(run_dir)  # the artifact holds everything; the run folder only served resume
    return art


def rerun_record(prep: PreparedRun) -> dict[str, Any]:
    """What `lmforge reproduce` needs beside the settings (lmforge/rerun.py): the sha256 of
    every local file read (sources and evaluation sets), which artifact each dataset ref
    named, where the built-in evaluation sets were read from, and a digest of every document
    read, in order (it covers what no file hash does: `hf:` datasets, the embedded corpus)."""
    cfg = prep.config
    dec = cfg.decontaminate
    refs = [p for s in cfg.sources for p in s.paths if is_path(p) and not is_hub_spec(p)]
    refs += [spec.path for spec in dec.eval_sets]
    record: dict[str, Any] = {}
    if dec.builtin:
        root = eval_data_root()
        refs += [BUILTIN_EVAL_SETS[name](root).path for name in dec.builtin]
        record["eval_data_root"] = str(root.resolve())
    read = json.loads((prep.run_dir / "input" / "done.json").read_text())
    h = hashlib.sha256()
    for part in read["parts"]:
        h.update((prep.run_dir / "input" / f"{part}.jsonl").read_bytes())
    return {**input_record(refs), **record, "datasets": prep.dataset_ids,
            "read_sha256": h.hexdigest()}


def _funnel_png(stats: dict[str, Any], path: Path) -> None:
    try:
        save_funnel_png(stats, path, title="curation funnel")
    except LmforgeError:
        pass  # matplotlib missing: the table and report.md still say everything


def load_stats(ws: Workspace, ref: str) -> tuple[Artifact, dict[str, Any]]:
    art = ws.resolve(ref, kind="dataset")
    if "stats.json" not in art.files:
        raise LmforgeError(f"dataset {art.id} was not made by `lmforge curate` (no stats.json)",
                           hint="pass a curated dataset (see `lmforge registry ls --kind "
                                "dataset`)")
    return art, json.loads(art.file("stats.json").read_text())


def summary(art: Artifact) -> str:
    """Documents kept per source, and any warnings (a fallback read, an empty source)."""
    m = art.metrics
    kept = ", ".join(f"{n} {x['documents_out']:,}/{x['documents_in']:,}"
                     for n, x in m["sources"].items())
    warnings = "".join(f"; warning: {w}" for w in m.get("warnings", []))
    return f"{m['documents']:,} documents kept ({kept}){warnings}"


@dataclass(frozen=True)
class CurateSettings:
    raw: dict[str, Any]  # the keys of a curation TOML (sources, filters, dedup, ...)
    where: str = "curation recipe"  # named in errors
    keep_run: bool = False  # keep the run folder (shards) after success

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path) -> CurateSettings:
        """A recipe step: its table is a curation TOML inline; local paths are relative to
        the recipe file."""
        return cls(with_paths_relative_to(values, base_dir, where), where)


def run(ws: Workspace, s: CurateSettings, show_progress: bool = True) -> Outcome:
    art = curate_stage(ws, s.raw, s.where, show_progress, s.keep_run)
    return Outcome(art, summary(art))
