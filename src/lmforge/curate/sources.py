"""Inputs of curation: which refs of a source are paths and which are datasets, a source's
fallback when its local files are absent, and the evaluation sets to decontaminate against
(reading the sources is curate/reading.py's job)."""

from __future__ import annotations

import dataclasses
import glob
from pathlib import Path

from lmforge.curate.config import CurationConfig, DecontamConfig
from lmforge.curate.decontam import BUILTIN_EVAL_SETS, Decontaminator, load_eval_set
from lmforge.data.eval_root import eval_data_root
from lmforge.data.files import DATA_SUFFIXES, has_magic
from lmforge.data.hub import is_hub_spec
from lmforge.errors import LmforgeError

EMBEDDED = "pydocs"


def is_path(ref: str) -> bool:
    """A file, folder, glob or hf:NAME (read as files), rather than a dataset artifact ref."""
    return is_hub_spec(ref) or Path(ref).exists() or has_magic(ref)


def looks_like_path(ref: str) -> bool:
    """A file system path, existing or not, rather than a dataset artifact id or alias
    (those have no folder separators and no data file suffix)."""
    return ("/" in ref or "\\" in ref or ref.startswith((".", "~"))
            or ref.lower().endswith(DATA_SUFFIXES))


def _present(ref: str) -> bool:
    if has_magic(ref):
        return next(glob.iglob(ref, recursive=True), None) is not None
    return Path(ref).exists()


def resolve_sources(cfg: CurationConfig) -> tuple[CurationConfig, list[str]]:
    """Check every source's local paths before any work: a source whose paths are all absent
    reads its `fallback` instead (with a note saying so); without one, a path that does not
    exist stops the run with its source named. A glob that matches nothing is left to the
    reader (an empty source, reported with the others)."""
    notes: list[str] = []
    sources = []
    for src in cfg.sources:
        local = [p for p in src.paths
                 if p != EMBEDDED and not is_hub_spec(p) and (has_magic(p) or looks_like_path(p)
                                                               or Path(p).exists())]
        absent = [p for p in local if not _present(p)]
        if absent and src.fallback and len(absent) == len(src.paths):
            notes.append(f"source '{src.name}': {', '.join(absent)} absent; read its "
                         f"fallback {', '.join(src.fallback)}")
            src = dataclasses.replace(src, paths=list(src.fallback))
        elif missing := [p for p in absent if not has_magic(p)]:
            where = Path(missing[0]).expanduser().absolute().parent
            while not where.exists() and where != where.parent:
                where = where.parent  # the nearest folder that exists, to list
            raise LmforgeError(
                f"source '{src.name}': {missing[0]} does not exist",
                hint=f"check the path (`ls {where}`); a dataset of the workspace is named by "
                     "its id or alias (`lmforge registry ls --kind dataset`)")
        sources.append(src)
    return dataclasses.replace(cfg, sources=sources), notes


def build_decontaminator(cfg: DecontamConfig, data_root: str | Path | None = None
                         ) -> Decontaminator | None:
    """Index every named evaluation set's n-grams (None when the recipe names none)."""
    if not cfg.enabled:
        return None
    dec = Decontaminator(cfg.ngram)
    root = eval_data_root(data_root)
    if cfg.builtin and not root.is_dir():
        raise LmforgeError(f"the evaluation data folder {root} does not exist, so the built-in "
                           f"eval sets {', '.join(cfg.builtin)} cannot be read",
                           hint="set LMFORGE_EVAL_DATA to a folder holding hellaswag/, arc/, "
                                "..., or list eval files under [[decontaminate.eval_sets]]")
    for name in cfg.builtin:
        spec = BUILTIN_EVAL_SETS[name](root)
        dec.add_eval_set(name, load_eval_set(spec, root))
    for spec in cfg.eval_sets:
        dec.add_eval_set(spec.name, load_eval_set(spec, Path.cwd()))
    return dec
