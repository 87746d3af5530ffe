"""Training on several processes (torchrun, gloo on CPU): DDP and FSDP2 compute the same steps
as one process with the same global batch, checkpoints move between world sizes, and the
commands work under torchrun.

Tolerance: two ranks sum the same micro-batch gradients in another order (an all-reduce
instead of one accumulation), so results agree to float32 rounding, not bit for bit. Over 8
AdamW steps of the tiny model we measured differences up to 4e-7 in per-step losses and
2e-7 in weights; the tests allow 1e-5 (losses) and 1e-4 (weights), far below what one
learning step changes (~1e-2 in loss, ~1e-3 in weights).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_cli import artifact_id, corpus_file, design_file  # noqa: F401
from test_pretrain_cli import setup  # noqa: F401

WORKER = Path(__file__).with_name("dist_worker.py")
LOSS_TOL, WEIGHT_TOL = 1e-5, 1e-4

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo's torchrun on Linux/macOS")


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def torchrun(*args: str, procs: int = 2, cwd: Path | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={procs}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=cwd, timeout=300)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def alone(*args: str) -> None:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def worker_args(tmp: Path, name: str, objective: str, *extra: str) -> list[str]:
    return [str(WORKER), "--objective", objective, "--run-dir", str(tmp / f"run-{name}"),
            "--out", str(tmp / f"out-{name}"), *extra]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Each objective's run on one process, computed once for the module."""
    tmp = tmp_path_factory.mktemp("single")
    done: dict[str, Path] = {}

    def get(objective: str) -> Path:
        if objective not in done:
            alone(*worker_args(tmp, objective, objective))
            done[objective] = tmp / f"out-{objective}"
        return done[objective]

    return get


def assert_same_run(a: Path, b: Path, skip: tuple[str, ...] = ()) -> None:
    ra, rb = (json.loads((p / "result.json").read_text()) for p in (a, b))
    assert ra["steps"] == rb["steps"] and ra["tokens"] == rb["tokens"]
    assert len(ra["losses"]) == len(rb["losses"]) == ra["steps"]
    for step, (x, y) in enumerate(zip(ra["losses"], rb["losses"]), 1):
        assert abs(x - y) <= LOSS_TOL, f"step {step}: loss {x} alone, {y} distributed"
    assert abs(ra["val_loss"] - rb["val_loss"]) <= LOSS_TOL
    wa, wb = (load_file(str(p / "model.safetensors")) for p in (a, b))
    assert wa.keys() == wb.keys()
    for name in wa:
        if name in skip:
            continue
        diff = (wa[name] - wb[name]).abs().max().item()
        assert diff <= WEIGHT_TOL, f"{name} differs by {diff}"


# The reward head's bias cancels in the Bradley-Terry loss (chosen - rejected): its gradient
# is zero but for rounding, which Adam's normalization turns into steps of +-lr whose sign
# depends on the summation order. Its value is meaningless; every other weight is compared.
NOISE_ONLY = ("objective.head.bias",)


@pytest.mark.parametrize("objective,layout", [
    ("next_token", "ddp"), ("next_token", "fsdp"), ("sft", "fsdp"), ("reward", "ddp"),
    ("reward", "fsdp"), ("dpo", "ddp"),
])
def test_two_ranks_compute_the_steps_one_process_computes(tmp_path, single, objective, layout):
    extra = ("--fsdp",) if layout == "fsdp" else ()
    torchrun(*worker_args(tmp_path, "two", objective, *extra))
    result = json.loads((tmp_path / "out-two" / "result.json").read_text())
    assert result["world"] == 2
    assert_same_run(single(objective), tmp_path / "out-two", skip=NOISE_ONLY)


@pytest.mark.parametrize("layout", ["ddp", "fsdp"])
def test_a_checkpoint_saved_by_two_ranks_resumes_on_one(tmp_path, single, layout):
    """Rank 0 alone gets SIGTERM after step 4: both ranks stop there with one checkpoint;
    one process then finishes the run and lands where an uninterrupted run lands."""
    extra = ("--fsdp",) if layout == "fsdp" else ()
    stopped = torchrun(*worker_args(tmp_path, "x", "next_token", "--stop-at", "4", *extra))
    assert stopped.stdout.count("stopped at step 4; checkpoint saved") == 2
    run_dir = tmp_path / "run-x"
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_0000004"
    alone(*worker_args(tmp_path, "x", "next_token"))
    assert_same_run(single("next_token"), tmp_path / "out-x")


def test_a_checkpoint_saved_by_one_process_resumes_sharded(tmp_path, single):
    alone(*worker_args(tmp_path, "y", "next_token", "--stop-at", "4"))
    torchrun(*worker_args(tmp_path, "y", "next_token", "--fsdp"))
    assert_same_run(single("next_token"), tmp_path / "out-y")


def test_activation_checkpointing_changes_memory_not_results(tmp_path, single):
    alone(*worker_args(tmp_path, "ac", "next_token", "--activation-checkpointing"))
    assert_same_run(single("next_token"), tmp_path / "out-ac")


def test_pretrain_under_torchrun_registers_one_model(setup, tmp_path):  # noqa: F811
    """The command itself on two ranks: one model registered, one summary line, and a
    global batch the ranks cannot share refused with the rule (no traceback)."""
    env_home = os.environ["LMFORGE_HOME"]  # the cli fixture's workspace, which setup filled
    args = ["-m", "lmforge", "pretrain", "--model", setup["model"], "--data", setup["tokens"],
            "--steps", "3", "--micro-batch", "4", "--seq-len", "32", "--eval-every", "3",
            "--device", "cpu"]
    bad = torchrun(*args, "--batch-tokens", "384", check=False)  # 3 micro-batches for 2
    assert bad.returncode != 0
    said = bad.stderr + bad.stdout
    assert said.count("share each step's 3 micro-batches unevenly") == 1  # rank 0 says it
    # torchrun prints its own launcher's traceback when a rank fails; no frame is lmforge's.
    assert re.search(r'File "[^"]*/lmforge/', said) is None
    done = torchrun(*args, "--batch-tokens", "256", "--fsdp")
    registered = [line for line in done.stdout.splitlines() if "(pretrained)" in line]
    assert len(registered) == 1, done.stdout
    model = artifact_id(registered[0], "model")
    listing = subprocess.run([sys.executable, "-m", "lmforge", "registry", "ls", "--json"],
                             capture_output=True, text=True, timeout=120,
                             env={**_env(), "LMFORGE_HOME": env_home})
    rows = [json.loads(line) for line in listing.stdout.splitlines() if line.startswith("{")]
    assert sum(r["id"] == model for r in rows) == 1
    assert sum(r.get("state") == "pretrained" for r in rows) == 1


def test_what_does_not_run_under_torchrun_says_so(cli, monkeypatch):
    """A recipe and RLHF refuse a torchrun launch before any work, each with what to do."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, _, err = cli("run")
    assert code == 2 and "lmforge run does not run under torchrun" in err
    assert "lmforge pretrain / finetune" in err
    code, _, err = cli("finetune", "nothing", "--method", "rlhf", "--reward", "nothing")
    assert code == 2 and "rlhf trains on one process" in err, err
