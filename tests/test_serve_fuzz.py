"""Hostile and malformed requests (random JSON, valid requests with one field replaced by
anything, lone surrogates, NaN, huge numbers, streaming on) never get a 500 and never take
the server down: every refusal is OpenAI's error shape, every stream ends with [DONE]."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.serve.app import create_app
from serve_helpers import make_state, tiny_model

# Any code point, lone surrogates included (JSON can spell them as \ud800).
TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None,
                             exclude_categories=()), max_size=40)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
COMPLETION = {"model": "tiny", "prompt": "Hi", "max_tokens": 3}
FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
          "top_p", "top_k", "n", "stop", "seed", "stream", "stream_options", "user", "tools",
          "tool_choice", "logprobs", "logit_bias", "presence_penalty", "response_format",
          "echo", "best_of", "suffix", "response_id", "rating", "preferred", "comment",
          "choice", "unknown"]
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(
    ["user", "system", "assistant", "developer", "tool", "x"]), "content": JSON})


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-fuzz")
    tiny_model(root / "tiny")
    state = make_state(root / "tiny", root / "ws", max_tokens=8, timeout_s=30)
    with TestClient(create_app(state), raise_server_exceptions=False) as c:
        yield c


def check(client, path: str, raw: bytes) -> None:
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code < 500, (raw[:300], r.text[:300])
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
    elif r.headers["content-type"].startswith("text/event-stream"):
        events = [e for e in r.text.split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        assert '"server_error"' not in r.text, r.text[-300:]


SLOW = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@SLOW
@given(body=JSON, path=st.sampled_from(["/v1/chat/completions", "/v1/completions",
                                        "/v1/feedback"]))
def test_any_json_body(client, body, path):
    check(client, path, json.dumps(body).encode())


@SLOW
@given(field=st.sampled_from(FIELDS), value=JSON, stream=st.booleans(),
       chat=st.booleans())
def test_a_valid_request_with_one_field_replaced(client, field, value, stream, chat):
    body = {**(CHAT if chat else COMPLETION), "stream": stream, field: value}
    check(client, "/v1/chat/completions" if chat else "/v1/completions",
          json.dumps(body).encode())


@SLOW
@given(messages=st.lists(MESSAGE, min_size=1, max_size=4), stream=st.booleans(),
       temperature=st.one_of(st.none(), st.floats(0, 2)), top_p=st.floats(0, 1),
       stop=st.lists(TEXT, max_size=5))
def test_odd_conversations_and_sampling(client, messages, stream, temperature, top_p, stop):
    body = {**CHAT, "messages": messages, "stream": stream, "temperature": temperature,
            "top_p": top_p, "stop": stop}
    check(client, "/v1/chat/completions", json.dumps(body).encode())


def test_raw_bytes_and_the_server_stays_up(client):
    for raw in (b"", b"\x00\xff", b"{" * 10_000, b"[" * 5000 + b"]" * 5000, b'"x"',
                b'{"model": "tiny", "prompt": "\\ud800"}', b"1e999999", b"NaN"):
        check(client, "/v1/completions", raw)
    assert client.get("/health").status_code == 200
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
