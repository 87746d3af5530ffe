"""/metrics in Prometheus' text format with vLLM-style `lmforge:` names whose counts agree
with the usage the API reported, and JSON access logs that leave prompts out unless asked."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lmforge.serve.app import create_app
from serve_helpers import make_state, tiny_model

SECRET = "my secret question about cats"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-metrics")
    tiny_model(root / "tiny")
    return root / "tiny"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "model_name"))
            out[(s.name, labels)] = s.value
    return out


def test_metrics_count_what_the_api_answered(folder, tmp_path):
    state = make_state(folder, tmp_path / "ws", max_tokens=16)
    with TestClient(create_app(state)) as c:
        usages, finishes = [], []
        for body in ({"max_tokens": 3}, {"max_tokens": 16, "temperature": 0},
                     {"max_tokens": 4, "n": 2, "seed": 1}):
            r = c.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": "Hi"}], **body})
            usages.append(r.json()["usage"])
            finishes += [ch["finish_reason"] for ch in r.json()["choices"]]
        with c.stream("POST", "/v1/completions", json={"model": "tiny", "prompt": "The cat",
                                                       "max_tokens": 5, "stream": True,
                                                       "stream_options": {
                                                           "include_usage": True}}) as s:
            chunks = [json.loads(line[len("data: "):]) for line in s.iter_lines()
                      if line.startswith("data: {")]
        usages.append(chunks[-1]["usage"])
        finishes += [ch["choices"][0]["finish_reason"] for ch in chunks[:-1]
                     if ch["choices"][0]["finish_reason"]]
        assert c.post("/v1/chat/completions", json={"model": "nope", "messages": []}
                      ).status_code in (400, 404)
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)
    requests = 5  # engine requests: one per choice
    # prompt tokens are counted per engine request, usage counts a prompt once per request
    prompt_per_choice = [usages[0]["prompt_tokens"], usages[1]["prompt_tokens"],
                         usages[2]["prompt_tokens"], usages[2]["prompt_tokens"],
                         usages[3]["prompt_tokens"]]
    assert got[("lmforge:prompt_tokens_total", ())] == sum(prompt_per_choice)
    assert got[("lmforge:generation_tokens_total", ())] == sum(u["completion_tokens"]
                                                               for u in usages)
    by_reason = {labels[0][1]: v for (name, labels), v in got.items()
                 if name == "lmforge:request_success_total"}
    assert by_reason == {r: finishes.count(r) for r in set(finishes)}
    for hist in ("time_to_first_token_seconds", "e2e_request_latency_seconds"):
        assert got[(f"lmforge:{hist}_count", ())] == requests
    assert got[("lmforge:time_per_output_token_seconds_count", ())] <= requests
    assert got[("lmforge:num_requests_running", ())] == 0
    assert got[("lmforge:num_requests_waiting", ())] == 0
    errors = {labels: v for (name, labels), v in got.items()
              if name == "lmforge:request_errors_total"}
    assert sum(errors.values()) == 1
    assert not any(name.endswith("_created") for name, _ in got)


def access_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records
            if r.name == "lmforge.serve.access"]


@pytest.mark.parametrize("log_prompts", [False, True])
def test_access_logs_are_json_and_keep_prompts_out(folder, tmp_path, caplog, log_prompts):
    caplog.set_level(logging.INFO, logger="lmforge.serve.access")
    state = make_state(folder, tmp_path / "ws", log_prompts=log_prompts)
    with TestClient(create_app(state)) as c:
        r = c.post("/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": SECRET}],
            "max_tokens": 3}, headers={"X-Request-Id": "trace-42"})
        assert r.headers["x-request-id"] == "trace-42"
        bad = c.post("/v1/chat/completions", json={"model": "nope", "messages": [
            {"role": "user", "content": SECRET}]}, headers={"X-Request-Id": "bad id!"})
        assert bad.headers["x-request-id"].startswith("req-")  # an odd id is replaced
    ok, refused = access_lines(caplog)[-2:]
    assert ok["request_id"] == "trace-42" and ok["status"] == 200
    assert ok["path"] == "/v1/chat/completions" and ok["duration_ms"] >= 0
    assert ok["response_id"] == r.json()["id"]
    assert ok["prompt_tokens"] == r.json()["usage"]["prompt_tokens"]
    assert refused["status"] == 404 and refused["error"] == "model_not_found"
    logged = json.dumps(access_lines(caplog))
    if log_prompts:
        assert SECRET in logged and ok["output"] == [r.json()["choices"][0]["message"]["content"]]
    else:
        assert SECRET not in logged and "output" not in ok and "messages" not in ok
