"""`lmforge serve` itself: refusals in one line before anything loads, and real servers in
subprocesses, one process and two replicas on one port whose /metrics sum both workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_helpers import free_port, tiny_model, wait_ready

KEY = "sk-cli-test-0123456789"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-cli")
    tiny_model(root / "tiny")
    return root / "tiny"


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("error:") and "Traceback" not in err, err
    return lines[0]


def test_refusals_come_before_loading(cli, folder, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = cli("serve", folder, "--port", port)
    assert code == 2 and "cannot listen on 127.0.0.1" in one_error_line(err)
    code, _, err = cli("serve", folder, "--rate-limit", "lots")
    assert code == 2 and "not a rate" in one_error_line(err)
    code, _, err = cli("serve", folder, "--api-key-file", tmp_path / "none.txt")
    assert code == 2 and "no such file" in one_error_line(err)
    code, _, err = cli("serve", folder, "--max-batch", "0")
    assert code == 2 and "max-batch" in one_error_line(err)
    code, _, err = cli("serve", folder, "--engine", "gpu")
    assert code == 2 and "--engine must be auto, process or thread" in one_error_line(err)
    code, _, err = cli("serve", "no-such-model", "--port", free_port())
    assert code == 2 and "no-such-model" in one_error_line(err)


def start(args: list[str], home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "LMFORGE_HOME": str(home), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from lmforge.cli import main; main()", "serve", *args,
         "--port", str(port), "--device", "cpu"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, lambda: proc.communicate()[1])
    return proc, url


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode in (0, -signal.SIGINT), err
    return err


def test_one_process_with_keys_and_a_name(folder, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(KEY + "\n")
    proc, url = start([str(folder), "--api-key-file", str(keys), "--name", "pet-model",
                       "--max-tokens", "8"], tmp_path / "ws")
    try:
        auth = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{url}/v1/models").status_code == 401
        models = httpx.get(f"{url}/v1/models", headers=auth).json()
        assert [m["id"] for m in models["data"]] == ["pet-model"]
        r = httpx.post(f"{url}/v1/chat/completions", headers=auth, json={
            "model": "pet-model", "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert httpx.post(f"{url}/v1/completions", headers=auth, json={
            "model": "pet-model", "prompt": "Hi", "max_tokens": 9}).status_code == 400
    finally:
        err = stop(proc)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [entry["status"] for entry in lines if entry["path"] == "/v1/chat/completions"] \
        == [200]
    assert "serving model folder" in err and "pet-model" in err


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_engine_process_serves_and_goes_with_the_server(folder, tmp_path):
    proc, url = start([str(folder), "--engine", "process"], tmp_path / "ws")
    try:
        r = httpx.post(f"{url}/v1/completions", json={
            "model": "tiny", "prompt": "The cat", "max_tokens": 6, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 6
        engines = _children(proc.pid)
        assert engines and all(_running(p) for p in engines)
    finally:
        stop(proc)
    assert not any(_running(p) for p in engines)  # ^C ends the engine's process too


def success_total(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "lmforge:request_success_total")


def test_two_replicas_share_a_port_and_their_metrics(folder, tmp_path):
    proc, url = start([str(folder), "--replicas", "2"], tmp_path / "ws")
    try:
        sent = 12
        for _ in range(sent):  # a new connection each: the kernel spreads them over workers
            with httpx.Client() as c:
                r = c.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "Hi",
                                                          "max_tokens": 2})
                assert r.status_code == 200, r.text
        # every scrape, whichever worker answers it, sums both workers' counts
        assert [success_total(url) for _ in range(4)] == [sent] * 4
    finally:
        err = stop(proc)
    pids = {json.loads(line)["pid"] for line in err.splitlines() if line.startswith("{")
            and '"/v1/completions"' in line}
    assert 1 <= len(pids) <= 2
    assert "with 2 replicas" in err
