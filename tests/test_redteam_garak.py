"""garak, NVIDIA's LLM vulnerability scanner, runs against `lmforge serve` through its
OpenAI-compatible generator.

`lmforge serve` (a real process on a free 127.0.0.1 port) serves a small random chat model;
garak, from its own virtual environment (docs/deploy/garak_env.sh makes it: garak 0.17 pins
transformers<5.20 and openai 2.x, which lmforge's venv must not be held to), runs two cheap
probes (7 prompts) with one generation each against it. The test asserts that garak
completes, that it writes its JSONL report with an attempt for every prompt it sent, each
answered by the server, and an evaluation of each probe. Whether the random model "resists"
the probes is not the point: garak's own verdicts on it are noise.

Run with `pytest -m garak` (about a minute, most of it garak's imports). It skips, saying
why, where garak's venv is absent; the marker keeps it out of the default run and CI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.design.spec import ModelDesign
from lmforge.model.init import initialize
from lmforge.model.io import save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import train_tokenizer
from serve_helpers import TEXT, free_port, wait_ready

pytestmark = pytest.mark.garak

REPO = Path(__file__).resolve().parents[1]
GARAK_PYTHON = Path(os.environ.get("LMFORGE_GARAK_PYTHON")
                    or REPO.parent / "garak-venv" / "bin" / "python")
NAME = "lmforge-tiny"
PROBES = "lmrc.Anthropomorphisation,lmrc.QuackMedicine"  # 6 prompts, string detectors


def generator_options(base: str) -> dict:
    """garak's --generator_option_file for its OpenAI-compatible REST generator pointed at
    lmforge serve (docs/redteam.md shows the same file). lmforge takes every parameter garak
    sends; "stop" is left out only because garak's default stop strings ("#", ";") would cut
    answers short."""
    return {"openai": {"OpenAICompatible": {
        "uri": f"{base}/v1", "api_key": "unused", "max_tokens": 32,
        "suppressed_params": ["stop"]}}}


def serve(tmp: Path) -> tuple[subprocess.Popen, str]:
    """`lmforge serve` of a random 2-layer chat model (context 1024, so garak's longest
    prompts fit) on a free loopback port."""
    tok = train_tokenizer(TEXT, 400, show_progress=False)
    design = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                         vocab_size=tok.vocab_size, context_length=1024)
    save_model_dir(initialize(Transformer(design), "scaled", seed=0).eval(), tmp / "model",
                   tok, "# tiny\n\nA random model for the garak test.\n")
    port = free_port()
    env = {**os.environ, "LMFORGE_HOME": str(tmp / "ws"), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from lmforge.cli import main; main()", "serve",
         str(tmp / "model"), "--name", NAME, "--host", "127.0.0.1", "--port", str(port),
         "--device", "cpu", "--max-tokens", "32"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "serve.log", "w"),
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_ready(proc, base, lambda: (tmp / "serve.log").read_text())
    return proc, base


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_garak_probes_lmforge_serve_and_writes_its_report(tmp_path):
    if not GARAK_PYTHON.is_file():
        pytest.skip(f"garak is not installed: no {GARAK_PYTHON} (make its venv with "
                    "`bash docs/deploy/garak_env.sh`, or point LMFORGE_GARAK_PYTHON at its "
                    "python)")
    proc, base = serve(tmp_path)
    try:
        options = tmp_path / "lmforge.json"
        options.write_text(json.dumps(generator_options(base)))
        # garak writes its runs under XDG_DATA_HOME; no hub look-ups, no telemetry.
        env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
               "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
               "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OPENAI_API_KEY": "unused"}
        cmd = [str(GARAK_PYTHON), "-m", "garak", "--target_type", "openai.OpenAICompatible",
               "--target_name", NAME, "--generator_option_file", str(options),
               "--probes", PROBES, "--generations", "1", "--parallel_attempts", "1",
               "--report_prefix", "lmforge", "--seed", "0"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900,
                              cwd=tmp_path)
        log = done.stdout[-4000:] + done.stderr[-4000:]
        assert done.returncode == 0, log
    finally:
        stop(proc)
    (report,) = (tmp_path / "xdg-data").rglob("lmforge.report.jsonl")
    records = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    kinds = [r.get("entry_type") for r in records]
    assert kinds[0] == "start_run setup" and "completion" in kinds, kinds[:5]
    attempts = [r for r in records if r.get("entry_type") == "attempt" and r.get("status") == 2]
    assert {a["probe_classname"] for a in attempts} == set(PROBES.split(","))
    # every prompt reached the server and came back with an answer
    assert all(a["outputs"] and a["outputs"][0] is not None for a in attempts), attempts[0]
    evals = [r for r in records if r.get("entry_type") == "eval"]
    assert {e["probe"] for e in evals} == set(PROBES.split(","))
    assert sum(e["total_evaluated"] for e in evals) == len(attempts) == 7
