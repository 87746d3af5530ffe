"""bench/gpu_check.py and bench/gpu_check.sh, as far as a CPU can check them: the benchmark runs
end to end on a CPU (`--device cpu --quick`: the tiny design, a few steps of every phase) and
prints every figure and one line of valid JSON; its datasheet table matches the GPUs' names as
torch reports them; the shell script parses. The GPU run itself is `bash bench/gpu_check.sh`."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cpu_run() -> tuple[str, dict]:
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    return done.stdout, json.loads(lines[-1])  # the last line is the JSON


def test_the_cpu_run_prints_every_figure(cpu_run):
    table, _ = cpu_run
    for figure in ("float32 matmul peak, measured", "dense peak, datasheet",
                   "pretrain tokens/s", "pretrain MFU vs measured peak",
                   "pretrain MFU vs datasheet peak", "pretrain MFU the loop logged",
                   "SFT steps/s", "DPO steps/s", "decode tokens/s, 4 streams, float32",
                   "decode tokens/s, 1 stream, float32", "decode tokens/s, 4 streams, bfloat16",
                   "SDPA kernels, causal", "SDPA kernels, masked", "MFU goal (45%"):
        assert figure in table, figure


def test_the_cpu_run_ends_with_valid_json_of_every_figure(cpu_run):
    _, r = cpu_run
    assert r["device"] == "cpu" and r["design"]["name"] == "tiny"
    assert r["peak"]["measured_flops"] > 0 and r["peak"]["datasheet_flops"] is None
    pre = r["pretrain"]
    assert pre["steps"] == 2 and pre["tokens_per_step"] == 4 * 64
    assert pre["tokens_per_s"] > 0 and pre["mfu_vs_measured"] > 0
    assert pre["mfu_vs_datasheet"] is None  # a CPU has no datasheet row
    assert pre["mfu_vs_measured"] == pytest.approx(
        pre["tokens_per_s"] * pre["flops_per_token"] / r["peak"]["measured_flops"])
    assert r["mfu_goal_met"]["vs_datasheet"] is None
    for phase in ("pretrain", "sft", "dpo"):
        assert r[phase]["steps_per_s"] > 0 and r[phase]["losses_finite"], phase
    assert r["sft"]["learned_tokens_per_s"] < r["sft"]["positions_per_s"]  # prompts not learned
    assert r["dpo"]["pairs_per_s"] > 0 and r["dpo"]["reference_pairs_per_s"] > 0
    assert r["dpo"]["loss_first"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference
    for dtype in ("float32", "bfloat16"):
        d = r["decode"][dtype]
        assert d["batched_tokens_per_s"] > 0 and d["single_tokens_per_s"] > 0
    assert r["attention"]["causal"]["math"] is True


@pytest.mark.parametrize("name, tflops, label", [
    ("NVIDIA H100 80GB HBM3", 989.5, "H100 SXM"),
    ("NVIDIA H100 PCIe", 756.5, "H100 PCIe"),
    ("NVIDIA H100 NVL", 835.5, "H100 NVL"),
    ("NVIDIA H200", 989.5, "H200 SXM"),
    ("NVIDIA H200 NVL", 835.5, "H200 NVL"),
    ("NVIDIA GH200 480GB", 989.5, "GH200"),
    ("NVIDIA A100-SXM4-80GB", 312.0, "A100"),
    ("NVIDIA A100 80GB PCIe", 312.0, "A100"),
    ("NVIDIA L4", 121.0, "L4"),
    ("NVIDIA L40S", 362.05, "L40S"),
    ("NVIDIA A10", 125.0, "A10"),
    ("NVIDIA GeForce RTX 4090", 165.2, "RTX 4090"),
    ("NVIDIA A10G", None, None),  # no public NVIDIA datasheet figure: not guessed
    ("Tesla T4", None, None),  # no bf16 tensor cores
])
def test_datasheet_peaks_match_device_names(name, tflops, label):
    flops, got = load_bench().datasheet_peak(name)
    assert got == label
    assert flops == (None if tflops is None else pytest.approx(tflops * 1e12))


def test_the_shell_script_parses():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    done = subprocess.run([bash, "-n", str(ROOT / "bench" / "gpu_check.sh")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
