"""Curation across machines: the whole pipeline of curate/pipeline.py as datatrove stages.

Why datatrove: it is the engine open LLM data pipelines of the field run on (FineWeb was
built with it), one pipeline runs unchanged under its local, Slurm and Ray
executors, and its model is the one resumable curation needs: tasks that pick their share of
the work by rank, a completion mark per task, a rerun that skips finished tasks, and `depends=`
between stages. Ray alone or Spark would add a cluster runtime (and for Spark a JVM and a
driver holding state) for work that is files on shared storage.

The stages, in order (rank r of W tasks; curate/datatrove_steps.py has the run-folder layout):

    1 read    min(W, units) tasks  the sources' read units (curate/reading.py) into input shards
    2 curate  W tasks              the per-document steps on input shards r, r + W, ...
    3 plan    1 task               dedup clustering over every key and signature, the mixture
                                   plan, stats.json: the one genuinely global step, and a light
                                   one (1M documents cluster in ~500 MiB)
    4 write   W tasks              output parts, a contiguous range per task

The run folder is the only state. Every item (unit, shard, output part) is written atomically
and skipped when present, and datatrove skips tasks it marked complete (the marks live in
`datatrove-logs/<n>-<stage>-<W>tasks`, so a rerun with another W starts fresh marks and still
skips every finished item). After any failure, run the same thing again. The output is byte
for byte the one the default `processes` executor makes (tests/test_curate_distributed.py).

On one machine: `executor = "datatrove"` in a curation recipe, or `lmforge curate --executor
datatrove --workers W`: datatrove's LocalPipelineExecutor runs the four stages with W tasks.

On a Slurm cluster, with the workspace on storage every node mounts:

    from pathlib import Path
    from datatrove.executor import SlurmPipelineExecutor
    from lmforge.curate.config import load_config_file
    from lmforge.curate.distributed import run_stages, workspace_stages
    from lmforge.registry import Workspace

    ws = Workspace.open("/shared/lmforge-ws")
    stages = workspace_stages(ws, load_config_file(Path("curate.toml")), tasks=64)
    run_stages(stages, lambda stage, depends: SlurmPipelineExecutor(
        pipeline=stage.pipeline, tasks=stage.tasks, depends=depends,
        logging_dir=stage.logging_dir, job_name=f"curate-{stage.name}", time="4:00:00",
        partition="cpu", mem_per_cpu_gb=4, venv_path="/shared/lmforge/.venv/bin/activate"))

`run_stages` submits the four jobs, each depending on the one before. When they are done,
`lmforge curate --recipe curate.toml --executor datatrove` (same workspace) finds every item
finished, links the output parts into a dataset artifact and registers it. On a Ray cluster
the same call takes datatrove's RayPipelineExecutor (installed with `pip install ray`):

    run_stages(stages, lambda stage, depends: RayPipelineExecutor(
        pipeline=stage.pipeline, tasks=stage.tasks, depends=depends,
        logging_dir=stage.logging_dir, cpus_per_task=1, mem_per_cpu_gb=4))
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.curate.config import CurationConfig
from lmforge.curate.datatrove_steps import (
    PipelineStep,
    load_read_plan,
    output_parts,
    read_state,
    save_read_plan,
    unfinished_shards,
)
from lmforge.curate.global_phase import OutputPlan
from lmforge.curate.pipeline import Progress
from lmforge.curate.reading import UNIT_BYTES, ResolveDataset, plan_units, require_documents
from lmforge.curate.shard_worker import WorkerSetup
from lmforge.curate.sources import build_decontaminator
from lmforge.errors import LmforgeError
from lmforge.registry.atomic import atomic_write_json


@dataclass
class Stage:
    """One datatrove stage: hand `pipeline` and `tasks` to an executor, with `logging_dir`."""

    name: str
    pipeline: list[Any]
    tasks: int
    logging_dir: str


def _require_datatrove() -> None:
    if PipelineStep is None:
        raise LmforgeError("executor 'datatrove' needs the datatrove package",
                           hint="pip install datatrove, or use the default executor "
                                "(worker processes)")


def build_stages(cfg: CurationConfig, run_dir: Path, resolve_dataset: ResolveDataset,
                 tokenizer_file: str | None = None, notes: list[str] | None = None,
                 tasks: int = 1, unit_bytes: int = UNIT_BYTES) -> list[Stage]:
    """The four stages of curating `cfg` in `run_dir`, for any datatrove executor.

    Expands the sources now (a missing path stops here, before any job starts) and saves the
    read units in the run folder; a run folder that has them keeps them, so a rerun reads
    exactly the units its first attempt started on. `resolve_dataset` travels to the tasks,
    so it must pickle (curate/stage.py's DatasetResolver does).
    """
    _require_datatrove()
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise LmforgeError(f"tasks must be a positive integer, not {tasks!r}")
    from lmforge.curate.datatrove_steps import (
        CurateShardsStep,
        PlanOutputStep,
        ReadUnitsStep,
        WriteOutputStep,
    )

    run_dir = Path(run_dir).resolve()  # tasks may start in another working directory
    run_dir.mkdir(parents=True, exist_ok=True)
    units = 1  # already read: the read stage has nothing to do
    if not (run_dir / "input" / "done.json").is_file():
        plan = load_read_plan(run_dir)
        if plan is None:
            plan = plan_units(cfg, unit_bytes), list(notes or [])
            save_read_plan(run_dir, *plan)
        units = len(plan[0])
    setup = WorkerSetup(cfg, build_decontaminator(cfg.decontaminate), tokenizer_file)
    logs = run_dir / "datatrove-logs"

    def stage(i: int, name: str, step: Any, n: int) -> Stage:
        return Stage(name, [step], n, str(logs / f"{i}-{name}-{n}tasks"))

    where = str(run_dir)
    return [stage(1, "read", ReadUnitsStep(cfg, where, resolve_dataset),
                  max(1, min(tasks, units))),
            stage(2, "curate", CurateShardsStep(setup, where), tasks),
            stage(3, "plan", PlanOutputStep(cfg, where), 1),
            stage(4, "write", WriteOutputStep(cfg, where), tasks)]


def run_stages(stages: list[Stage], make_executor: Callable[[Stage, Any], Any]) -> Any:
    """Chain the stages with `depends=` and run them: `make_executor(stage, depends)` makes
    one datatrove executor per stage (depends is the previous stage's executor, or None)."""
    executor = None
    for stage in stages:
        executor = make_executor(stage, executor)
    try:
        return executor.run()
    except (LmforgeError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - a task's failure, reported with where to look
        logs = Path(stages[0].logging_dir).parent
        raise LmforgeError(f"a datatrove task failed: {type(e).__name__}: {e}",
                           hint=f"the task logs are in {logs}; run again to redo only the "
                                "unfinished work") from e


def local_executor(workers: int) -> Callable[[Stage, Any], Any]:
    """Stages as datatrove LocalPipelineExecutors running up to `workers` tasks at once
    (1: in this process, one task after another)."""
    from datatrove.executor import LocalPipelineExecutor

    def make(stage: Stage, depends: Any) -> Any:
        return LocalPipelineExecutor(pipeline=stage.pipeline, tasks=stage.tasks,
                                     workers=min(workers, stage.tasks),
                                     logging_dir=stage.logging_dir, depends=depends)

    return make


def finish(cfg: CurationConfig, run_dir: Path, out_dir: Path) -> tuple[dict[str, Any],
                                                                     list[str]]:
    """Check that every stage finished, then put the output parts and stats.json in
    `out_dir` (hard links where the file system allows: parts can be large). Returns the
    stats and the part names."""
    run_dir = Path(run_dir).resolve()
    logs = run_dir / "datatrove-logs"
    again = (f"run the stages again to finish them (task logs: {logs}); a task marked done "
             f"whose files were removed since needs its mark in {logs}/*/completions removed")
    state = read_state(cfg, run_dir)
    if state is None:
        raise LmforgeError(f"the read stage of {run_dir} has not finished", hint=again)
    require_documents(state)
    missing = unfinished_shards(run_dir, state)
    if missing:
        raise LmforgeError(f"{len(missing)} shard(s) are not curated (first: {missing[0]})",
                           hint=again)
    plan = OutputPlan.load(run_dir / "global")
    if plan is None:
        raise LmforgeError("the plan stage has not finished", hint=again)
    names = output_parts(cfg, plan)
    absent = [n for n in names if not (run_dir / "output" / n).is_file()]
    if absent:
        raise LmforgeError(f"{len(absent)} output part(s) are not written (first: "
                           f"{absent[0]})", hint=again)
    for name in names:
        _link_or_copy(run_dir / "output" / name, Path(out_dir) / name)
    atomic_write_json(Path(out_dir) / "stats.json", plan.stats)
    return plan.stats, names


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)


def run_with_datatrove(cfg: CurationConfig, run_dir: Path, out_dir: Path,
                       resolve_dataset: ResolveDataset, tokenizer_file: str | None,
                       notes: list[str], progress: Progress) -> tuple[dict[str, Any],
                                                                      list[str]]:
    """The whole pipeline on this machine under LocalPipelineExecutors, `cfg.workers`
    tasks per stage; the stats and the output part names in `out_dir`."""
    stages = build_stages(cfg, run_dir, resolve_dataset, tokenizer_file, notes,
                          tasks=cfg.workers)
    run_stages(stages, local_executor(cfg.workers))
    stats, names = finish(cfg, run_dir, out_dir)
    read = next(s for s in stats["steps"] if s["name"] == "read")["by_source"]
    documents = sum(c["documents_out"] for c in read.values())
    progress("read", documents, documents)
    return stats, names


def workspace_stages(ws: Any, raw: dict[str, Any], tasks: int,
                     where: str = "curation recipe", unit_bytes: int = UNIT_BYTES
                     ) -> list[Stage]:
    """The stages of curating the recipe table `raw` in workspace `ws`, in the run folder
    `lmforge curate` uses for it, so that `lmforge curate --executor datatrove` with the
    same recipe finishes the run and registers the dataset."""
    from lmforge.curate.stage import prepare_run

    prep = prepare_run(ws, raw, where)
    return build_stages(prep.config, prep.run_dir, prep.resolve_dataset, prep.tokenizer_file,
                        prep.notes, tasks, unit_bytes)
