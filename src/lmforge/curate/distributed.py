"""Curation beyond one machine: the per-shard phase as a datatrove pipeline step.

lmforge's pipeline has three phases (curate/pipeline.py). Reading and the global phase
(dedup clustering over keys and signatures, balancing, writing) are light; the per-document
phase is where the CPU time goes, and its shards are independent. This step runs that phase
under any datatrove executor: task `rank` of `world_size` curates shards rank, rank +
world_size, ... and skips shards an earlier attempt finished, so a failed task is simply
run again.

    executor = "datatrove"  (in a curation recipe, or --executor datatrove): datatrove's
    LocalPipelineExecutor runs `workers` tasks on this machine.

On a Slurm cluster the same step runs under datatrove's SlurmPipelineExecutor, with the run
folder on storage every node mounts (the run folder is the only state):

    from datatrove.executor import SlurmPipelineExecutor
    step = CurateShardsStep(setup, run_dir, parts)      # as build_step() makes it
    SlurmPipelineExecutor(pipeline=[step], tasks=64, time="2:00:00", partition="cpu",
                          logging_dir=f"{run_dir}/datatrove-logs").run()

after which `lmforge curate` with the same recipe finds every shard done and finishes the
global phase on one machine (reading is skipped too: its results are in the run folder).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.curate.shard_worker import WorkerSetup, init_worker, process_shard
from lmforge.errors import LmforgeError

try:  # optional: only `executor = "datatrove"` needs it
    from datatrove.pipeline.base import PipelineStep
except ImportError:  # pragma: no cover - exercised where datatrove is absent
    PipelineStep = None


if PipelineStep is not None:
    class CurateShardsStep(PipelineStep):
        """Task `rank` of `world_size` curates every world_size-th unfinished shard."""

        name = "lmforge curate shards"
        type = "Curation"

        def __init__(self, setup: WorkerSetup, run_dir: str, parts: list[str]) -> None:
            super().__init__()
            self.setup, self.run_dir, self.parts = setup, run_dir, list(parts)

        def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
            init_worker(self.setup)
            stage1 = Path(self.run_dir) / "stage1"
            stage1.mkdir(parents=True, exist_ok=True)
            for i, part in enumerate(self.parts):
                if i % world_size != rank or (stage1 / f"{part}.stats.json").is_file():
                    continue
                with self.track_time(unit="shard"):
                    process_shard(str(Path(self.run_dir) / "input" / f"{part}.jsonl"),
                                  str(stage1 / part))
                self.stat_update("shards")
            yield from data or ()


def build_step(setup: WorkerSetup, run_dir: Path, parts: list[str]) -> Any:
    """A datatrove PipelineStep that curates this run's unfinished shards."""
    if PipelineStep is None:
        raise LmforgeError("executor 'datatrove' needs the datatrove package",
                           hint="pip install datatrove, or use the default executor "
                                "(worker processes)")
    return CurateShardsStep(setup, str(run_dir), parts)


def run_with_datatrove(setup: WorkerSetup, run_dir: Path, parts: list[str], tasks: int) -> None:
    """Curate the shards with datatrove's LocalPipelineExecutor: `tasks` tasks in parallel."""
    from datatrove.executor import LocalPipelineExecutor

    step = build_step(setup, run_dir, parts)
    executor = LocalPipelineExecutor(pipeline=[step], tasks=tasks, workers=tasks,
                                     logging_dir=str(run_dir / "datatrove-logs"),
                                     skip_completed=False)
    executor.run()
    missing = [p for p in parts if not (run_dir / "stage1" / f"{p}.stats.json").is_file()]
    if missing:
        raise LmforgeError(f"datatrove finished, but {len(missing)} shard(s) are not done "
                           f"(first: {missing[0]})",
                           hint=f"see the task logs in {run_dir / 'datatrove-logs'}; run "
                                "again to redo only those shards")
