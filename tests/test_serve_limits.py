"""Safeguards: API keys kept as digests, per-key rate limits (429 + Retry-After), a bounded
queue (503), request timeouts (503, or an error event in a stream), and the body size cap
(413), each in OpenAI's error shape."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from lmforge.errors import LmforgeError
from lmforge.serve.app import create_app
from lmforge.serve.auth import KeyStore, digest, presented_key
from lmforge.serve.config import parse_rate
from lmforge.serve.errors import APIError
from lmforge.serve.limits import RateLimiter
from serve_helpers import StandInEngine, live_server, make_state, tiny_model

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-limits")
    tiny_model(root / "tiny")
    return root / "tiny"


# --- keys ---------------------------------------------------------------------------------

def test_keys_are_kept_only_as_digests(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# ops\nsk-alpha-0123456789\n\n  sk-beta-9876543210  \n")
    store = KeyStore.from_file(keys)
    held = repr(vars(store))
    assert "sk-alpha" not in held and "sk-beta" not in held
    assert digest("sk-alpha-0123456789") in store._digests
    alpha, beta = store.check("sk-alpha-0123456789"), store.check("sk-beta-9876543210")
    assert alpha != beta and alpha.startswith("key-") and "alpha" not in alpha
    for wrong in ("sk-alpha-012345678", "SK-ALPHA-0123456789", "# ops", ""):
        with pytest.raises(APIError) as e:
            store.check(wrong)
        assert e.value.status == 401


@pytest.mark.parametrize("content, message", [
    ("", "holds no key"), ("# only a comment\n", "holds no key"),
    ("short\n", "shorter than 8"),
])
def test_bad_key_files_are_refused(tmp_path, content, message):
    keys = tmp_path / "keys.txt"
    keys.write_text(content)
    with pytest.raises(LmforgeError, match=message):
        KeyStore.from_file(keys)


def test_the_key_header_forms():
    assert presented_key("Bearer abc", None) == "abc"
    assert presented_key("bearer   abc ", None) == "abc"
    assert presented_key("Basic abc", None) is None  # a wrong scheme is no key
    assert presented_key(None, "abc") == "abc"
    assert presented_key(None, None) is None


# --- rate limits ----------------------------------------------------------------------------

def test_token_bucket_allows_a_minute_s_burst_then_refills():
    now = [0.0]
    limiter = RateLimiter(6, clock=lambda: now[0])  # 6 a minute: one per 10 s
    for _ in range(6):
        limiter.take("a")
    with pytest.raises(APIError) as e:
        limiter.take("a")
    assert e.value.status == 429 and e.value.headers["Retry-After"] == "10"
    limiter.take("b")  # another key has its own bucket
    now[0] = 4.0
    with pytest.raises(APIError) as e:
        limiter.take("a")
    assert e.value.headers["Retry-After"] == "6"
    now[0] = 10.0
    limiter.take("a")  # one token back after 10 s


def test_rate_limit_per_key_over_http(folder, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-one-0123456789\nsk-two-0123456789\n")
    state = make_state(folder, tmp_path / "ws", api_key_file=str(keys), rate_limit_per_min=2)
    one = {"Authorization": "Bearer sk-one-0123456789"}
    two = {"Authorization": "Bearer sk-two-0123456789"}
    with TestClient(create_app(state)) as c:
        assert c.get("/v1/models", headers=one).status_code == 200
        assert c.post("/v1/chat/completions", json=BODY, headers=one).status_code == 200
        r = c.get("/v1/models", headers=one)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert r.json()["error"]["type"] == "requests"
        assert c.get("/v1/models", headers=two).status_code == 200
        assert c.get("/health").status_code == 200  # not rate limited


@pytest.mark.parametrize("text, per_min", [("60/min", 60), ("2/s", 120), ("90", 90),
                                           ("600/hour", 10), ("1.5/m", 1.5)])
def test_parse_rate(text, per_min):
    assert parse_rate(text) == pytest.approx(per_min)


@pytest.mark.parametrize("text", ["fast", "0/min", "10/day", "-1"])
def test_parse_rate_refuses(text):
    with pytest.raises(LmforgeError, match="not a rate"):
        parse_rate(text)


# --- queue, timeout, body size --------------------------------------------------------------

def test_a_full_queue_is_503(folder, tmp_path):
    state = make_state(folder, tmp_path / "ws", engine=StandInEngine(overloaded=True))
    with TestClient(create_app(state)) as c:
        r = c.post("/v1/chat/completions", json=BODY)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        streamed = c.post("/v1/chat/completions", json={**BODY, "stream": True})
        assert streamed.status_code == 503  # refused before the stream starts


def gauge(c, name: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(f"lmforge:{name}{{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}")


def test_a_request_past_its_timeout_is_503_and_cancelled(folder, tmp_path):
    engine = StandInEngine()  # accepts, never answers
    state = make_state(folder, tmp_path / "ws", engine=engine, timeout_s=0.3)
    with TestClient(create_app(state)) as c:
        r = c.post("/v1/chat/completions", json={**BODY, "n": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "timeout"
        assert len(engine.streams) == 2
        assert all(s.cancelled.is_set() for s in engine.streams)  # no work left behind
        assert gauge(c, "num_requests_waiting") == 0
        with c.stream("POST", "/v1/completions", json={"model": "tiny", "prompt": "Hi",
                                                       "stream": True}) as s:
            assert s.status_code == 200  # the stream had started: the error comes in it
            events = [e for e in s.read().decode().split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2][len("data: "):])["error"]
        assert error["code"] == "timeout" and error["type"] == "server_error"
        assert engine.streams[-1].cancelled.is_set()


def test_a_body_over_the_cap_is_413_before_parsing(folder, tmp_path):
    state = make_state(folder, tmp_path / "ws", max_body_bytes=2000)
    big = {**BODY, "messages": [{"role": "user", "content": "x" * 5000}]}
    with TestClient(create_app(state)) as c:
        r = c.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks():  # no Content-Length: the cap holds while the body streams in
            data = json.dumps(big).encode()
            for i in range(0, len(data), 500):
                yield data[i:i + 500]

        r = c.post("/v1/chat/completions", content=chunks())
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert c.post("/v1/chat/completions", json=BODY).status_code == 200


def wait_for(condition, seconds: float = 20.0) -> bool:
    """Poll `condition` until true or `seconds` pass (a bound for a slow machine, not a
    timing assertion)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_client_that_hangs_up_frees_its_requests(folder, tmp_path):
    engine = StandInEngine()  # accepts, never answers: only a hang-up can end the requests
    state = make_state(folder, tmp_path / "ws", engine=engine, timeout_s=600)
    with live_server(state) as url:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{url}/v1/chat/completions", json={**BODY, "n": 2}, timeout=0.5)
        assert wait_for(lambda: len(engine.streams) == 2
                        and all(s.cancelled.is_set() for s in engine.streams))
        with httpx.stream("POST", f"{url}/v1/chat/completions",
                          json={**BODY, "stream": True}) as r:
            first = next(r.iter_lines())  # the role chunk: the stream has started
            assert first.startswith("data: {")
        assert wait_for(lambda: len(engine.streams) == 3 and engine.streams[2].cancelled.is_set())
        metrics = httpx.get(f"{url}/metrics").text
        assert 'lmforge:num_requests_waiting{model_name="tiny"} 0.0' in metrics
