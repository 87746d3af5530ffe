"""The whole curation pipeline under datatrove's executors (local mode): the same bytes as the
default processes executor, a failed task's rerun redoes only unfinished work, bad input stops
with one clear error, and a run staged like a cluster job is finished by `lmforge curate`."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

pytest.importorskip("datatrove", reason="the datatrove executor needs datatrove (extra dev)")

from lmforge.curate import datatrove_steps  # noqa: E402
from lmforge.curate.config import parse_config  # noqa: E402
from lmforge.curate.distributed import (  # noqa: E402
    build_stages,
    finish,
    local_executor,
    run_stages,
    workspace_stages,
)
from lmforge.curate.pipeline import run_pipeline  # noqa: E402
from lmforge.curate.stage import curate_stage  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.registry import Workspace  # noqa: E402

WORDS = {"adj": "little red happy old tall quiet bright small brave kind green sleepy".split(),
         "noun": "girl dog ball tree river house bird cat boat garden friend cake hill".split(),
         "verb": "walked jumped looked ran talked played sang waited smiled danced".split()}


def _story(rng: random.Random) -> str:
    """Eight simple random sentences: English enough for every web filter, distinct enough
    that two stories share almost no word 5-grams."""
    def w(kind: str) -> str:
        return rng.choice(WORDS[kind])

    return " ".join(f"The {w('adj')} {w('noun')} {w('verb')} to the {w('noun')} and they "
                    f"{w('verb')} with the {w('adj')} {w('noun')}." for _ in range(8))


def _corpus(root: Path) -> dict:
    """Two sources over several files: duplicates across files, PII, junk, unreadable files,
    an empty folder and a glob that matches nothing; balanced, so some documents repeat."""
    rng = random.Random(0)
    docs = [{"id": f"s{i}", "text": _story(rng)} for i in range(40)]
    docs += [{"id": "copy", "text": docs[0]["text"]},
             {"id": "near", "text": docs[1]["text"].replace("The", "A", 1) + " Subscribe!"},
             {"id": "junk", "text": "buy now " * 3},
             {"id": "pii", "text": _story(rng) + " Mail kid@example.com today."}]
    web = root / "web"
    (web / "sub").mkdir(parents=True)
    for k in range(4):  # a duplicate and its original land in different files
        (web / f"part{k}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[k::4]))
    (web / "sub" / "more.txt").write_text("\n\n".join(_story(rng) for _ in range(6)))
    bad = root / "bad"
    bad.mkdir()
    (bad / "broken.jsonl").write_text('{"text": "fine but short"}\n{not json\n')
    (bad / "garbage.txt").write_bytes(bytes(range(256)) * 4)
    with gzip.open(bad / "cut.jsonl.gz", "wb") as f:
        f.write(b'{"text": "a"}\n' * 100)
    (bad / "cut.jsonl.gz").write_bytes((bad / "cut.jsonl.gz").read_bytes()[:30])
    (root / "empty").mkdir()
    books = root / "books.jsonl"
    books.write_text("".join(json.dumps({"text": _story(rng)}) + "\n" for _ in range(15)))
    return {"sources": {"web": {"paths": [str(web)]},
                        "books": {"paths": [str(books), str(bad), str(root / "empty"),
                                            str(root / "none-*.jsonl")]}},
            "shard_documents": 6,
            "balance": {"by": "characters", "weights": {"web": 0.4, "books": 0.6},
                        "max_repeat": 3}}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _processes(tmp_path: Path, raw: dict) -> dict[str, bytes]:
    out = tmp_path / "processes-out"
    out.mkdir()
    run_pipeline(parse_config(raw, "test"), tmp_path / "processes-run", out, lambda r: iter(()))
    return _files(out)


def _staged(tmp_path: Path, raw: dict, name: str, tasks: int = 3):
    """The four stages in `name`'s run folder, every file its own read unit."""
    cfg = parse_config(raw, "test")
    run_dir = tmp_path / f"{name}-run"
    return cfg, run_dir, build_stages(cfg, run_dir, lambda r: iter(()), tasks=tasks,
                                      unit_bytes=1)


def _finish(cfg, run_dir: Path, tmp_path: Path, name: str) -> dict[str, bytes]:
    out = tmp_path / f"{name}-out"
    out.mkdir()
    finish(cfg, run_dir, out)
    return _files(out)


def test_whole_pipeline_on_two_local_workers_gives_the_processes_bytes(tmp_path):
    raw = _corpus(tmp_path)
    expected = _processes(tmp_path, raw)
    out = tmp_path / "dt-out"
    out.mkdir()
    cfg = parse_config({**raw, "executor": "datatrove", "workers": 2}, "test")
    result = run_pipeline(cfg, tmp_path / "dt-run", out, lambda r: iter(()))
    assert _files(out) == expected  # every part and stats.json, byte for byte
    assert len(expected) > 3 and result.parts == sorted(expected)[:-1]
    stats = json.loads(expected["stats.json"])
    assert stats["read_errors"]["count"] >= 4  # the unreadable files were counted, not fatal
    assert any(s["name"] == "balance" for s in stats["steps"])
    logs = sorted(p.name for p in (tmp_path / "dt-run" / "datatrove-logs").iterdir())
    assert logs == ["1-read-2tasks", "2-curate-2tasks", "3-plan-1tasks", "4-write-2tasks"]


def test_read_curate_and_write_are_split_between_tasks(tmp_path):
    raw = _corpus(tmp_path)
    expected = _processes(tmp_path, raw)
    cfg, run_dir, stages = _staged(tmp_path, raw, "split")
    assert [(s.name, s.tasks) for s in stages] == [("read", 3), ("curate", 3), ("plan", 1),
                                                   ("write", 3)]
    run_stages(stages, local_executor(1))
    assert _finish(cfg, run_dir, tmp_path, "split") == expected
    units = json.loads((run_dir / "read-plan.json").read_text())["units"]
    assert len(units) >= 8  # one per file, plus the expansion problems of the books source
    assert len({p.name.split("-")[1] for p in (run_dir / "input").glob("unit-*-*.jsonl")}) > 3
    for stage in stages:  # every task of every stage ran and marked itself done
        marks = sorted(p.name for p in (Path(stage.logging_dir) / "completions").iterdir())
        assert marks == [f"{r:05d}" for r in range(stage.tasks)]


def test_a_failed_task_reruns_only_the_unfinished_work(tmp_path, monkeypatch):
    raw = _corpus(tmp_path)
    expected = _processes(tmp_path, raw)
    cfg, run_dir, stages = _staged(tmp_path, raw, "resume")
    real = datatrove_steps.process_shard
    done: list[str] = []

    def rank(name: str) -> int:  # shard i belongs to task i % 3
        return json.loads((run_dir / "input" / "done.json").read_text())["parts"].index(name) % 3

    def dies_in_task_1(inp: str, prefix: str) -> str:
        if rank(Path(prefix).name) == 1 and any(rank(d) == 1 for d in done):
            raise RuntimeError("node lost")  # task 1 dies after its first shard
        done.append(Path(prefix).name)
        return real(inp, prefix)

    monkeypatch.setattr(datatrove_steps, "process_shard", dies_in_task_1)
    with pytest.raises(LmforgeError, match="datatrove task failed.*node lost"):
        run_stages(stages, local_executor(1))
    with pytest.raises(LmforgeError, match="shard.*not curated"):
        finish(cfg, run_dir, tmp_path)
    curate_marks = Path(stages[1].logging_dir) / "completions"
    assert (curate_marks / "00000").is_file() and not (curate_marks / "00001").exists()

    redone: list[str] = []
    monkeypatch.setattr(datatrove_steps, "process_shard",
                        lambda i, p: (redone.append(Path(p).name), real(i, p))[1])
    _, _, stages = _staged(tmp_path, raw, "resume")  # the same call, as a rerun makes it
    run_stages(stages, local_executor(1))
    shards = json.loads((run_dir / "input" / "done.json").read_text())["parts"]
    assert not set(redone) & set(done) and sorted(done + redone) == sorted(shards)
    assert _finish(cfg, run_dir, tmp_path, "resume") == expected

    # A write task whose part vanished after it was marked done: drop its mark, rerun.
    part = run_dir / "output" / "documents-00001.jsonl"
    part.unlink()
    (Path(stages[3].logging_dir) / "completions" / "00000").unlink()
    redone.clear()
    run_stages(stages, local_executor(1))
    assert redone == [] and part.is_file()
    out = tmp_path / "again-out"
    out.mkdir()
    finish(cfg, run_dir, out)
    assert _files(out) == expected


def test_bad_input_stops_with_one_clear_error(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "garbage.txt").write_bytes(bytes(range(256)) * 4)
    cfg, run_dir, stages = _staged(tmp_path, {"sources": {"x": {"paths": [str(bad)]}}}, "bad")
    with pytest.raises(LmforgeError, match="the read stage .* has not finished"):
        finish(cfg, run_dir, tmp_path)  # nothing ran yet
    run_stages(stages, local_executor(1))
    with pytest.raises(LmforgeError, match=r"no documents in any source \(source 'x': .*"
                                           r"garbage.txt"):
        finish(cfg, run_dir, tmp_path)
    # A missing path stops while the stages are made, before any task runs.
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(LmforgeError, match="source 'y': .*nope.jsonl does not exist"):
        workspace_stages(ws, {"sources": {"y": {"paths": [str(tmp_path / "nope.jsonl")]}}}, 2)
    assert not list(ws.runs_dir.glob("curate-*"))
    with pytest.raises(LmforgeError, match="tasks must be a positive integer"):
        build_stages(cfg, run_dir, lambda r: iter(()), tasks=0)
    plan_step = stages[2].pipeline[0]
    with pytest.raises(LmforgeError, match="the plan stage is one task"):
        list(plan_step.run(None, rank=0, world_size=2))


def test_stages_run_like_a_cluster_job_then_lmforge_curate_registers(tmp_path):
    raw = _corpus(tmp_path)
    del raw["balance"]  # report.md cannot show a mixture yet (its keys differ from balance's)
    ws = Workspace.open(tmp_path / "ws")
    stages = workspace_stages(ws, raw, tasks=2, unit_bytes=1)
    run_stages(stages, local_executor(1))  # a cluster would run these as four array jobs
    run_dir = Path(stages[0].logging_dir).parents[1]
    assert run_dir.parent == ws.runs_dir and (run_dir / "global" / "stats.json").is_file()
    art = curate_stage(ws, {**raw, "executor": "datatrove"}, show_progress=False)
    assert not run_dir.exists()  # finished: the artifact holds everything
    again = curate_stage(ws, raw, show_progress=False)  # from scratch, worker processes
    assert again.id == art.id  # the same files, so the same content-derived id
