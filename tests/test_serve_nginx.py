"""Two `lmforge serve` replicas behind nginx, configured by docs/deploy/nginx.conf (the
documented file itself, its three ports changed): one replica is killed with SIGKILL while
it generates, and no request fails, because nginx sends what it held to the other one.

Needs nginx (Debian: `apt-get install nginx`); run with `pytest -m nginx`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from serve_helpers import free_port, tiny_model

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
DOCUMENTED = Path(__file__).resolve().parents[1] / "docs" / "deploy" / "nginx.conf"

pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian: apt-get "
                                             "install nginx)"),
]

REQUESTS, THREADS = 40, 4


def nginx_config(tmp: Path, listen: int, replicas: tuple[int, int]) -> Path:
    """The documented http-context file with this test's ports, inside a main config that
    keeps every path nginx writes (pid, logs, temp files) under `tmp`."""
    site = DOCUMENTED.read_text()
    for old, new in (("listen 8000;", f"listen 127.0.0.1:{listen};"),
                     ("server 127.0.0.1:8001 ", f"server 127.0.0.1:{replicas[0]} "),
                     ("server 127.0.0.1:8002 ", f"server 127.0.0.1:{replicas[1]} ")):
        assert site.count(old) == 1, f"docs/deploy/nginx.conf no longer has {old!r} once"
        site = site.replace(old, new)
    (tmp / "lmforge.conf").write_text(site)
    user = "user root root;\n" if os.geteuid() == 0 else ""  # as root: workers may read tmp
    main = f"""{user}daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format upstreams '$status $request_uri upstream=$upstream_addr codes=$upstream_status';
    access_log {tmp}/access.log upstreams;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/lmforge.conf;
}}
"""
    conf = tmp / "nginx.conf"
    conf.write_text(main)
    return conf


def wait_ready(url: str, proc: subprocess.Popen, log: Path, path: str = "/ready") -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} was not ready after 120 s:\n{log.read_text()[-2000:]}")


def running(port: int) -> float:
    """lmforge:num_requests_running of one replica, read from its own /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("lmforge:num_requests_running"))


def test_a_replica_killed_under_load_fails_no_request(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny"
    tiny_model(model_dir)
    env = {**os.environ, "LMFORGE_HOME": str(tmp_path / "workspace")}  # one workspace, shared
    exe = shutil.which("lmforge", path=str(Path(sys.executable).parent)) or "lmforge"
    ports = (free_port(), free_port())
    procs: list[subprocess.Popen] = []
    try:
        for port in ports:
            log = tmp_path / f"replica-{port}.log"
            with open(log, "wb") as out:
                procs.append(subprocess.Popen(
                    [exe, "serve", str(model_dir), "--port", str(port), "--name", "tiny"],
                    stdout=out, stderr=subprocess.STDOUT, env=env))
        for port, proc in zip(ports, procs):
            wait_ready(f"http://127.0.0.1:{port}", proc, tmp_path / f"replica-{port}.log")

        front = free_port()
        conf = nginx_config(tmp_path, front, ports)
        nginx_log = tmp_path / "nginx.out"
        with open(nginx_log, "wb") as out:
            procs.append(subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path),
                                           "-e", str(tmp_path / "error.log")],
                                          stdout=out, stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{front}"
        wait_ready(base, procs[-1], nginx_log)

        done = threading.Semaphore(0)

        def ask(i: int) -> tuple[int, dict]:
            r = httpx.post(f"{base}/v1/completions", timeout=120, json={
                "model": "tiny", "prompt": f"The cat {i} sat on the", "max_tokens": 24,
                "temperature": 0})
            done.release()
            return r.status_code, r.json()

        with ThreadPoolExecutor(THREADS) as pool:
            futures = [pool.submit(ask, i) for i in range(REQUESTS)]
            for _ in range(REQUESTS // 4):  # a quarter answered: the load is well under way
                done.acquire()
            deadline = time.monotonic() + 60
            while running(ports[0]) < 1:  # kill it while it holds a generation
                assert time.monotonic() < deadline, "replica 1 never had a request running"
                time.sleep(0.005)
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait()
            answers = [f.result() for f in futures]

        failed = [(status, body) for status, body in answers if status != 200]
        assert not failed, f"{len(failed)} of {REQUESTS} failed, e.g. {failed[0]}"
        for _, body in answers:
            assert body["choices"][0]["finish_reason"] in ("stop", "length")
            assert body["usage"]["completion_tokens"] >= 1

        # nginx's log shows both replicas served, and at least one request that reached the
        # killed replica was sent on to the other one (two upstream addresses on its line).
        lines = [ln for ln in (tmp_path / "access.log").read_text().splitlines()
                 if "/v1/completions" in ln]
        assert len(lines) == REQUESTS
        served = [ln.split("upstream=")[1].split(" ")[0] for ln in lines]
        assert any(f"127.0.0.1:{ports[0]}" == s for s in served)  # the killed one, before
        assert any(f"127.0.0.1:{ports[1]}" == s for s in served)
        assert any("," in ln.split("upstream=")[1] for ln in lines), "\n".join(lines)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT if proc.args[0] == NGINX else signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
