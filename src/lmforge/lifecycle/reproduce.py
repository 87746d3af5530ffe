"""`lmforge reproduce MODEL`: every stage that made MODEL, run again from the record alone, and
how far each rebuilt artifact is from the original.

The lineage is walked back to its sources and replayed parents first in a scratch workspace:
each stage gets its recorded settings and the rebuilt stand-ins of its parents (or, for the
artifacts named by `--from` and everything they came from, the originals, copied in as they
are). A stage that cannot run again (an input file changed, the data a stage read from a hub
or a built-in set is not what the original read, a record too old to hold what the stage
needs) says why, and the original is copied in to feed the stages after it.

Verdicts, per stage: identical (every file has the recorded sha256), equivalent (only timings
in logs and reports, or the ids and workspace paths of rebuilt inputs in text, differ), within
tolerance (weights differ by at most `tolerance`), differs, corrupted (the original's files no
longer match its own manifest), cannot reproduce, and kept (taken as it is, by --from).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from lmforge.errors import LmforgeError
from lmforge.lifecycle.artifact_diff import FileDiff, compare_artifacts, probe_logits_diff
from lmforge.lifecycle.rebuild import READS_FILES, REBUILDERS, CannotRebuild, Job
from lmforge.registry import Artifact, Workspace
from lmforge.registry.lifecycle import INITIAL_STATES
from lmforge.rerun import RERUN_KEY, InputChanged, expecting_read, in_folder, input_changes

PASSING = ("identical", "equivalent", "within tolerance", "kept")


@dataclass
class StageResult:
    stage: str
    kind: str
    original: str
    rebuilt: str | None
    verdict: str
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    files: list[FileDiff] = field(default_factory=list)
    max_abs: float | None = None  # weights: the largest element difference
    logits_max_abs: float | None = None  # on the fixed probe input

    @property
    def passed(self) -> bool:
        return self.verdict in PASSING

    def to_dict(self) -> dict:
        return {"stage": self.stage, "kind": self.kind, "original": self.original,
                "rebuilt": self.rebuilt, "verdict": self.verdict, "passed": self.passed,
                "seconds": round(self.seconds, 2), "notes": self.notes,
                "max_abs": _finite(self.max_abs), "logits_max_abs": _finite(self.logits_max_abs),
                "files": [{"path": f.path, "status": f.status, "detail": f.detail}
                          for f in self.files]}


def _finite(x: float | None) -> float | str | None:
    return x if x is None or math.isfinite(x) else str(x)


def lineage_order(ws: Workspace, ref: str) -> list[Artifact]:
    """The artifact `ref` and everything it was made from, parents before children."""
    order: list[Artifact] = []
    seen: set[str] = set()

    def visit(art_id: str) -> None:
        if art_id in seen:
            return
        seen.add(art_id)
        art = ws.resolve(art_id, verify=False)  # verified file by file when compared
        for refs in art.parents.values():
            for parent in [refs] if isinstance(refs, str) else refs:
                visit(parent)
        order.append(art)

    visit(ws.record(ref).id)
    return order


def ancestry(ws: Workspace, refs: list[str]) -> set[str]:
    """The ids of `refs` and of everything they were made from."""
    out: set[str] = set()
    for ref in refs:
        out |= {a.id for a in lineage_order(ws, ref)}
    return out


class Reproduction:
    """One replay of a lineage into the scratch workspace `scratch`."""

    def __init__(self, ws: Workspace, scratch: Workspace, tolerance: float | None = None):
        self.ws, self.scratch, self.tolerance = ws, scratch, tolerance
        self.ids: dict[str, str] = {}  # original id -> its stand-in in the scratch workspace
        self.copied: dict[str, str] = {}  # original id -> the original copied into scratch

    def copy_original(self, art: Artifact) -> str:
        """Register the original (and, first, the originals it came from) in the scratch
        workspace as it is; its id there (the same, unless its files changed on disk)."""
        if art.id in self.copied:
            return self.copied[art.id]
        parents: dict[str, str | list[str]] = {}
        for role, refs in art.parents.items():
            ids = [self.copy_original(self.ws.resolve(r, verify=False))
                   for r in ([refs] if isinstance(refs, str) else refs)]
            parents[role] = ids[0] if isinstance(refs, str) else ids
        history = self.ws.history(art.id) if art.kind == "model" else []
        first = history[0].to_state if history else None
        with self.scratch.staging() as folder:
            for rel in art.files:  # not manifest.json: registering writes its own
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(art.path / rel, folder / rel)
            copied = self.scratch.register(folder, kind=art.kind, stage=art.stage,
                                           parents=parents, settings=art.settings,
                                           metrics=art.metrics, name=art.name,
                                           state=first if first in INITIAL_STATES else None)
        self.copied[art.id] = copied.id
        return copied.id

    def keep(self, art: Artifact) -> StageResult:
        self.ids[art.id] = self.copy_original(art)
        return StageResult(art.stage, art.kind, art.id, None, "kept")  # by --from

    def rebuild(self, art: Artifact) -> StageResult:
        start = time.perf_counter()
        result = self._rebuild(art)
        result.seconds = time.perf_counter() - start
        if result.verdict == "cannot reproduce":  # later stages read the original instead
            self.ids[art.id] = self.copy_original(art)
            result.notes.append("the original is used as the input of later stages")
        return result

    def _rebuild(self, art: Artifact) -> StageResult:
        def cannot(*why: str) -> StageResult:
            return StageResult(art.stage, art.kind, art.id, None, "cannot reproduce",
                               notes=list(why))

        rerun = art.metrics.get(RERUN_KEY) or {}
        changed = input_changes(rerun)
        if changed:
            return cannot(*changed)
        rebuilder = REBUILDERS.get(art.stage)
        if rebuilder is None:
            return cannot(f"reproduce does not rebuild {art.stage!r} stages yet (it rebuilds "
                          f"{', '.join(REBUILDERS)})")
        job = Job(self.scratch, art, self.ids, self.ws.root)
        try:
            with in_folder(rerun.get("cwd")), expecting_read(rerun.get("read_sha256")):
                rebuilt = rebuilder(job)
        except CannotRebuild as e:
            return cannot(str(e), *job.notes)
        except InputChanged as e:  # the stage read its data and found it changed
            return cannot(e.message, *job.notes)
        except LmforgeError as e:
            return cannot(f"the stage failed: {e.message}", *job.notes)
        self.ids[art.id] = rebuilt.id
        if "input_files" not in rerun and art.stage in READS_FILES:
            job.notes.append("the record holds no hashes of local input files (made before "
                             "lmforge kept them): a change there shows only as a difference")
        return self.judge(art, rebuilt, job.notes)

    def judge(self, art: Artifact, rebuilt: Artifact, notes: list[str]) -> StageResult:
        stand_ins = {new: old for old, new in self.ids.items() if new != old}
        # A stage that names a file of its input by path (a feedback fine-tune's card names
        # its snapshot's sft.jsonl) names it in the scratch workspace.
        stand_ins[str(self.scratch.root)] = str(self.ws.root)
        files = compare_artifacts(art, rebuilt, stand_ins)
        result = StageResult(art.stage, art.kind, art.id, rebuilt.id, "identical",
                             notes=notes, files=files)
        weights = [f.max_abs for f in files if f.max_abs is not None]
        result.max_abs = max(weights, key=lambda x: math.inf if math.isnan(x) else x,
                             default=None)
        statuses = {f.status for f in files}
        if any(f.max_abs is not None for f in files) and "config.json" in art.files:
            try:
                result.logits_max_abs = probe_logits_diff(art.path, rebuilt.path)
            except Exception as e:  # a corrupted original may not load at all
                notes.append(f"the probe input could not be run on both: {e}")
        if "corrupted" in statuses:
            result.verdict = "corrupted"
        elif statuses <= {"identical"}:
            result.verdict = "identical"
        elif statuses <= {"identical", "equivalent"}:
            result.verdict = "equivalent"
        elif self._tolerated(files):
            result.verdict = "within tolerance"
        else:
            result.verdict = "differs"
        return result

    def _tolerated(self, files: list[FileDiff]) -> bool:
        """With a tolerance: every weight file within it. The logs and cards of a run whose
        weights differ differ too (their losses), so those do not count against it; any other
        file (a tokenizer, token shards) must still be identical."""
        if self.tolerance is None:
            return False
        for f in files:
            if f.status in ("identical", "equivalent"):
                continue
            if f.max_abs is not None:
                if not f.max_abs <= self.tolerance:  # NaN is never within
                    return False
            elif not (f.status == "differs" and f.path.endswith((".jsonl", ".md", ".json"))
                      and f.path != "tokenizer.json"):
                return False
        return any(f.max_abs is not None for f in files)


def reproduce(ws: Workspace, ref: str, scratch: Workspace, from_refs: list[str] | None = None,
              tolerance: float | None = None,
              on_stage: Callable[[StageResult], None] | None = None) -> list[StageResult]:
    """Rebuild every stage that made `ref` in `scratch`, parents first; one result each."""
    order = lineage_order(ws, ref)
    kept = ancestry(ws, list(from_refs or []))
    outside = kept - {a.id for a in order}
    if outside:
        raise LmforgeError(f"--from {', '.join(sorted(outside))}: not in the lineage of "
                           f"{order[-1].id}", "see it with `lmforge registry lineage "
                                              f"{order[-1].id}`")
    run = Reproduction(ws, scratch, tolerance)
    results = []
    for art in order:
        result = run.keep(art) if art.id in kept else run.rebuild(art)
        results.append(result)
        if on_stage is not None:
            on_stage(result)
    return results


def verdict_text(r: StageResult) -> str:
    text = r.verdict
    if r.verdict == "cannot reproduce" and r.notes:
        text += f": {r.notes[0]}"
    if r.max_abs is not None and r.verdict not in ("identical", "equivalent"):
        text += f", max |Δw| {r.max_abs:.3g}"
        if r.logits_max_abs is not None:
            text += f", max |Δlogit| {r.logits_max_abs:.3g}"
    return text


def results_table(results: list[StageResult], title: str) -> Table:
    table = Table(title=title)
    for column in ("stage", "original", "rebuilt", "result", "time"):
        table.add_column(column, no_wrap=column in ("original", "rebuilt"))
    colors = {True: "green", False: "red"}
    for r in results:
        rebuilt = "(same id)" if r.rebuilt == r.original else (r.rebuilt or "-")
        table.add_row(r.stage, r.original, rebuilt,
                      f"[{colors[r.passed]}]{verdict_text(r)}[/]",
                      "-" if r.verdict == "kept" else f"{r.seconds:.1f} s")
    return table


def details(results: list[StageResult]) -> list[str]:
    """One line per note and per file that is not identical, under its stage."""
    lines = []
    for r in results:
        items = list(r.notes) + [f"{f.path}: {f.status}" + (f" ({f.detail})" if f.detail else "")
                                 for f in r.files if f.status != "identical"]
        if items:
            lines.append(f"{r.stage} {r.original}:")
            lines += [f"  {item}" for item in items]
    return lines


def scratch_note(path: Path, kept: bool) -> str:
    return (f"rebuilt artifacts are in the workspace {path}" if kept else
            "rebuilt in a temporary workspace, removed now (keep it with --workdir DIR)")
