"""`lmforge serve --engine process`: the API over the engine's child process gives the
in-process engine's answers, streams them, and when the child dies, /ready and every new
request say 503 (a load balancer moves on) instead of hanging."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from fastapi.testclient import TestClient

from lmforge.registry import Workspace
from lmforge.serve.app import build_state, create_app
from lmforge.serve.config import ServeConfig
from serve_helpers import make_state, tiny_model


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-process")
    tiny_model(root / "tiny")
    return root


def _process_state(root):
    cfg = ServeConfig(model=str(root / "tiny"), workspace=str(root / "ws"), engine="process")
    return build_state(cfg, Workspace.open(root / "ws"))


def _complete(client, **body):
    return client.post("/v1/completions", json={"model": "tiny", "prompt": "The cat",
                                                "max_tokens": 12, "temperature": 0, **body})


def test_process_engine_answers_as_the_thread_engine_and_streams(built):
    with TestClient(create_app(make_state(built / "tiny", built / "ws"))) as c:
        expected = _complete(c).json()["choices"][0]["text"]
    state = _process_state(built)
    with TestClient(create_app(state)) as c:
        assert c.get("/ready").status_code == 200
        r = _complete(c)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == expected
        assert r.json()["usage"]["completion_tokens"] == 12
        with c.stream("POST", "/v1/completions", json={
                "model": "tiny", "prompt": "The cat", "max_tokens": 12, "temperature": 0,
                "stream": True}) as s:
            lines = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        assert "".join(ch["choices"][0]["text"] for ch in chunks) == expected
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_a_dead_engine_process_turns_ready_and_requests_into_503(built):
    state = _process_state(built)
    with TestClient(create_app(state)) as c:
        assert _complete(c).status_code == 200
        os.kill(state.engine._process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while state.engine.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        r = _complete(c)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "engine_unavailable"
        assert c.get("/health").status_code == 200  # the process itself still answers
