"""The phases of curation as datatrove pipeline steps, and the run-folder state they share.

Each step is the whole pipeline of one stage of curate/distributed.py. Task `rank` of
`world_size` takes its share of that stage's items (read units, input shards, output parts),
skips every item an earlier attempt finished, and writes each item atomically with its done
mark last. The run folder is the only state, so a task can run on any machine that mounts it,
as often as needed:

    read-plan.json                         the read units and notes (written by build_stages)
    input/unit-00003-00000.jsonl …         stage read: each unit's input shards
    input/unit-00003.json                  … and its counts (the unit's done mark)
    input/done.json                        all units merged (written by the first task to see
                                           them all done; any task writes the same bytes)
    stage1/<shard>.{jsonl,npz,stats.json}  stage curate (the same files as the processes path)
    global/plan.npz, global/stats.json     stage plan: copies per document; stats.json last
    output/documents-00000.jsonl …         stage write
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.curate.config import CurationConfig
from lmforge.curate.global_phase import OutputPlan, plan_output, write_output
from lmforge.curate.reading import (
    ReadUnit,
    ResolveDataset,
    ShardWriter,
    merge_reads,
    read_unit,
)
from lmforge.curate.shard_worker import WorkerSetup, init_worker, process_shard
from lmforge.data.parts import part_name
from lmforge.errors import LmforgeError
from lmforge.registry.atomic import atomic_write_json

try:  # optional: only the datatrove executor needs it
    from datatrove.pipeline.base import PipelineStep
except ImportError:  # pragma: no cover - exercised where datatrove is absent
    PipelineStep = None

READ_PLAN = "read-plan.json"


def save_read_plan(run_dir: Path, units: list[ReadUnit], notes: list[str]) -> None:
    atomic_write_json(run_dir / READ_PLAN, {"units": [u.to_dict() for u in units],
                                            "notes": list(notes)}, sort_keys=False)


def load_read_plan(run_dir: Path) -> tuple[list[ReadUnit], list[str]] | None:
    path = run_dir / READ_PLAN
    if not path.is_file():
        return None
    plan = json.loads(path.read_text())
    return [ReadUnit.from_dict(u) for u in plan["units"]], plan["notes"]


def unit_file(run_dir: Path, unit: int) -> Path:
    return run_dir / "input" / f"unit-{unit:05d}.json"


def read_state(cfg: CurationConfig, run_dir: Path) -> dict[str, Any] | None:
    """The read phase's state (input/done.json); None while some unit is unread."""
    done = run_dir / "input" / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    plan = load_read_plan(run_dir)
    if plan is None:
        return None
    units, notes = plan
    results = []
    for u in range(len(units)):
        if not unit_file(run_dir, u).is_file():
            return None
        results.append(json.loads(unit_file(run_dir, u).read_text()))
    state = merge_reads(cfg, units, results, [p for r in results for p in r["parts"]], notes)
    atomic_write_json(done, state, sort_keys=False)  # as the processes path writes it
    return state


def _finished_reading(cfg: CurationConfig, run_dir: Path) -> dict[str, Any]:
    state = read_state(cfg, run_dir)
    if state is None:
        raise LmforgeError(f"the read stage of {run_dir} has not finished",
                           hint="run the stages in order (datatrove's depends=)")
    return state


def unfinished_shards(run_dir: Path, state: dict[str, Any]) -> list[str]:
    return [p for p in state["parts"] if not (run_dir / "stage1" / f"{p}.stats.json").is_file()]


def output_parts(cfg: CurationConfig, plan: OutputPlan) -> list[str]:
    return [part_name(k, cfg.output_format) for k in range(plan.parts(cfg.shard_documents))]


if PipelineStep is not None:
    class _CurationStep(PipelineStep):
        type = "lmforge curation"

        def __init__(self, config: CurationConfig, run_dir: str) -> None:
            super().__init__()
            self.config, self.run_dir = config, run_dir

        def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
            self.work(Path(self.run_dir), rank, world_size)
            yield from data or ()

        @abstractmethod  # PipelineStep is an ABC: each step below says what its rank does
        def work(self, run_dir: Path, rank: int, world_size: int) -> None: ...

    class ReadUnitsStep(_CurationStep):
        """Read units rank, rank + world_size, ... into input shards."""

        name = "read sources"

        def __init__(self, config: CurationConfig, run_dir: str,
                     resolve_dataset: ResolveDataset) -> None:
            super().__init__(config, run_dir)
            self.resolve_dataset = resolve_dataset

        def work(self, run_dir: Path, rank: int, world_size: int) -> None:
            if (run_dir / "input" / "done.json").is_file():
                return  # read earlier (perhaps by the processes executor)
            plan = load_read_plan(run_dir)
            if plan is None:
                raise LmforgeError(f"{run_dir} holds no {READ_PLAN}",
                                   hint="make the stages with build_stages, which writes it")
            units = plan[0]
            sources = {s.name: s for s in self.config.sources}
            for u in range(rank, len(units), world_size):
                if unit_file(run_dir, u).is_file():
                    continue
                writer = ShardWriter(run_dir / "input", f"unit-{u:05d}",
                                     self.config.shard_documents)
                with self.track_time(unit="unit"):
                    result = read_unit(units[u], sources[units[u].source],
                                       self.resolve_dataset, writer)
                    result["parts"] = writer.close()
                    atomic_write_json(unit_file(run_dir, u), result, sort_keys=False)
                self.stat_update("units")
                self.stat_update("documents", value=result["documents"])

    class CurateShardsStep(_CurationStep):
        """The per-document steps on input shards rank, rank + world_size, ..."""

        name = "curate shards"

        def __init__(self, setup: WorkerSetup, run_dir: str) -> None:
            super().__init__(setup.config, run_dir)
            self.setup = setup

        def work(self, run_dir: Path, rank: int, world_size: int) -> None:
            state = _finished_reading(self.config, run_dir)
            todo = set(unfinished_shards(run_dir, state))
            mine = [p for i, p in enumerate(state["parts"]) if i % world_size == rank]
            if not todo.intersection(mine):
                return
            init_worker(self.setup)
            (run_dir / "stage1").mkdir(parents=True, exist_ok=True)
            for part in mine:
                if part not in todo:
                    continue
                with self.track_time(unit="shard"):
                    process_shard(str(run_dir / "input" / f"{part}.jsonl"),
                                  str(run_dir / "stage1" / part))
                self.stat_update("shards")

    class PlanOutputStep(_CurationStep):
        """The one global step: dedup clustering, mixture and stats over every shard."""

        name = "plan output"

        def work(self, run_dir: Path, rank: int, world_size: int) -> None:
            if world_size != 1:
                raise LmforgeError(f"the plan stage is one task, not {world_size}",
                                   hint="give its executor tasks=1")
            if OutputPlan.load(run_dir / "global") is not None:
                return
            state = _finished_reading(self.config, run_dir)
            if not state["documents"]:
                return  # nothing was read: finish() says so
            missing = unfinished_shards(run_dir, state)
            if missing:
                raise LmforgeError(f"{len(missing)} shard(s) of {run_dir} are not curated "
                                   f"(first: {missing[0]})",
                                   hint="run the curate stage to the end first")
            with self.track_time(unit="run"):
                plan_output(self.config, run_dir, state).save(run_dir / "global")

    class WriteOutputStep(_CurationStep):
        """Output parts in the rank's contiguous range (one pass over the shards it needs)."""

        name = "write output"

        def work(self, run_dir: Path, rank: int, world_size: int) -> None:
            plan = OutputPlan.load(run_dir / "global")
            state = _finished_reading(self.config, run_dir)
            if plan is None:
                if not state["documents"]:
                    return
                raise LmforgeError(f"the plan stage of {run_dir} has not finished",
                                   hint="run the stages in order (datatrove's depends=)")
            out = run_dir / "output"
            out.mkdir(parents=True, exist_ok=True)
            names = output_parts(self.config, plan)
            k, stop = rank * len(names) // world_size, (rank + 1) * len(names) // world_size
            while k < stop:  # each run of missing parts in one pass
                if (out / names[k]).is_file():
                    k += 1
                    continue
                end = k
                while end < stop and not (out / names[end]).is_file():
                    end += 1
                with self.track_time(unit="parts"):
                    write_output(self.config, run_dir, state["parts"], plan, out, k, end)
                self.stat_update("parts", value=end - k)
                k = end
