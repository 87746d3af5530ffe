"""Schemathesis against the server's own OpenAPI schema, plus a fuzz of the SSE path.

Every operation in /openapi.json gets requests generated from its schema, valid ones and
ones that break it on purpose (schemathesis's positive and negative modes): no answer may be
a 5xx, every status and body must be one the schema declares, and a request that breaks the
schema must be refused. The SSE
fuzz sends streamed requests that pass validation but push at the edges (many choices,
unicode and overlapping stop strings, max_tokens at its bounds); each stream must end with
`data: [DONE]` after well-formed chunks, or be refused with an OpenAI error object.

tests/test_serve_fuzz.py throws arbitrary JSON at the same endpoints; this file covers what
that one cannot know: the shapes the schema promises.
"""

from __future__ import annotations

import json
import zlib

import hypothesis
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from lmforge.serve.app import create_app
from lmforge.serve.config import MAX_N
from serve_helpers import make_state, tiny_model

schemathesis = pytest.importorskip("schemathesis", reason="pip install -e '.[dev]'")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.python.asgi import ASGIClient  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

MAX_TOKENS = 12  # the server's cap (default 4): generation stays quick whatever is asked
KEY = "schemathesis-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app with its engine running (TestClient runs the lifespan once for the module)."""
    root = tmp_path_factory.mktemp("serve-schemathesis")
    tiny_model(root / "tiny")
    keys = root / "keys.txt"
    keys.write_text(KEY + "\n")
    state = make_state(root / "tiny", root / "ws", max_tokens=MAX_TOKENS,
                       default_max_tokens=4, timeout_s=30, api_key_file=str(keys))
    app = create_app(state)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield app, client, state


@pytest.fixture(scope="module")
def api_schema(served):
    app, client, _ = served
    raw = client.get("/openapi.json")
    assert raw.status_code == 200
    schema = schemathesis.openapi.from_dict(raw.json())
    schema.app = app
    # Every case carries the valid key (a random bearer is only ever a 401, which
    # test_serve_limits checks); the cases vary what the key lets through.
    schema.config.generation.update(with_security_parameters=False)
    return schema


# not_a_server_error: no 5xx; status_code_conformance: only statuses the schema declares;
# response_schema_conformance / content_type_conformance: a declared status comes with the
# declared body; negative_data_rejection: a case that breaks the schema is refused with a 4xx.
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance,
          content_type_conformance, negative_data_rejection]
EXAMPLES = 30  # per operation and mode: the whole file stays near a minute on 2 cores
GENERATING = ("/v1/completions", "/v1/chat/completions")


def operations(api_schema) -> list:
    ops = [result.ok() for result in api_schema.get_all_operations()]
    assert len(ops) >= 8, [op.label for op in ops]  # the schema lost its endpoints
    return ops


def aim_at_the_model(case) -> None:
    """Most random cases are refused before anything is generated: a random `model` is a 404
    and a random max_tokens is over the server's cap. Three in four valid cases (chosen by a
    digest of the case, so a replay chooses alike) name the served model and keep within the
    cap, so they reach sampling, the engine and the SSE writer."""
    body = case.body
    if not isinstance(body, dict) or zlib.crc32(repr(body).encode()) % 4 == 0:
        return
    body["model"] = "tiny"
    for field in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(field), int) and body[field] > MAX_TOKENS:
            body[field] = 1 + body[field] % MAX_TOKENS


# Valid requests every run makes besides the generated ones: random cases seldom get past
# every refusal with `stream` on, and the SSE answer must be declared in the schema too.
KNOWN_GOOD = {
    "/v1/completions": [
        {"model": "tiny", "prompt": "Hi", "stream": True,
         "stream_options": {"include_usage": True}},
        {"model": "tiny", "prompt": ["Hi", "The cat"], "n": 2, "max_tokens": 3}],
    "/v1/chat/completions": [
        {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": True},
        {"model": "tiny", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Hi"}], "n": 2}],
}


def run_cases(op, mode: GenerationMode, call) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(mode))
    def run(case) -> None:
        if mode is GenerationMode.POSITIVE and op.path in GENERATING:
            aim_at_the_model(case)
        call(case)

    if mode is GenerationMode.POSITIVE:
        for body in KNOWN_GOOD.get(op.path, []):
            run = example(case=op.Case(body=body, media_type="application/json"))(run)

    try:
        run()
    except Unsatisfiable:
        # An operation with nothing to break (no parameters, no body) has no negative case.
        if mode is GenerationMode.POSITIVE:
            raise


def test_every_operation(api_schema, served):
    # Not schemathesis's @schema.parametrize: over a fixture-loaded schema it breaks on
    # pytest 9 (it reads a renamed private attribute). Each operation and mode runs here, and
    # every failure is reported, not only the first.
    app, client, _ = served
    session = ASGIClient(app)  # not entered: the lifespan is the module fixture's, run once

    def call(case) -> None:
        case.call_and_validate(session=session, app=app, headers=AUTH, checks=CHECKS)

    failures = []
    for op in operations(api_schema):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                run_cases(op, mode, call)
            except Exception as e:  # noqa: BLE001 - collected, reported together below
                failures.append(f"{op.label} ({mode.value}): {e}")
    assert not failures, "\n\n".join(failures)
    # ... and the server is still up and answering.
    assert client.get("/health").status_code == 200
    ok = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hi"}, headers=AUTH)
    assert ok.status_code == 200, ok.text


# ---- the SSE path ------------------------------------------------------------------------
# Text that is hard to stream: stop strings the model writes often (single letters and
# spaces, cut mid-word by token boundaries), multi-byte and combining characters, emoji
# sequences that tokens split mid-code-point, control characters, and lone surrogates (400).
UNICODE = st.text(st.characters(min_codepoint=1, max_codepoint=0x10FFFF,
                                exclude_categories=("Cs",)), min_size=1, max_size=6)
STOP = st.one_of(st.sampled_from([" ", "e", "t", "a", "o", "he", "the", ".", "\n", "é",
                                  "e\u0301", "👍🏽", "\u00a0", "\x00", "\ud800",
                                  "\U0010ffff", "ab" * 500]), UNICODE)
PROMPT = st.one_of(st.sampled_from(["The cat", "", "é" * 80, "🐈" * 30, "\x00\x01", " "]),
                   UNICODE)
def mostly(draw, valid, invalid):
    """Nine times in ten a value the server must stream (edges included), else one it must
    refuse, so most examples reach the stream."""
    return draw(invalid) if draw(st.integers(0, 9)) == 0 else draw(valid)


@st.composite
def streamed_bodies(draw) -> tuple[str, dict]:
    chat = draw(st.booleans())
    body: dict = {"model": "tiny", "stream": True,
                  "n": mostly(draw, st.integers(1, MAX_N), st.sampled_from([0, MAX_N + 1])),
                  "stop": draw(st.one_of(st.none(), STOP, st.lists(STOP, max_size=5))),
                  "temperature": draw(st.sampled_from([None, 0, 1e-300, 0.7, 2])),
                  "top_p": draw(st.sampled_from([None, 1e-9, 0.5, 1])),
                  "top_k": draw(st.sampled_from([None, 0, 1, 5, 10**9])),
                  "seed": draw(st.sampled_from([None, 0, -(2**63), 2**63 - 1 - MAX_N])),
                  "stream_options": draw(st.sampled_from([None, {"include_usage": True},
                                                          {"include_usage": False}]))}
    tokens = mostly(draw, st.sampled_from([None, 1, 2, MAX_TOKENS]),
                    st.sampled_from([-1, 0, MAX_TOKENS + 1, 96, 2**63, 10**30]))
    if chat:
        body["max_completion_tokens" if draw(st.booleans()) else "max_tokens"] = tokens
        body["messages"] = [{"role": "user", "content": draw(PROMPT)}]
        if draw(st.booleans()):
            body["messages"].insert(0, {"role": "system", "content": draw(PROMPT)})
        return "/v1/chat/completions", body
    body["max_tokens"] = tokens
    prompts = draw(st.lists(PROMPT, min_size=1, max_size=4))
    body["prompt"] = prompts[0] if len(prompts) == 1 else prompts
    return "/v1/completions", body


def stream_events(text: str) -> list:
    """The stream's events, checked as SSE: `data: <JSON>` each, `data: [DONE]` last."""
    assert text.endswith("\n\n"), text[-200:]
    events = text[:-2].split("\n\n")
    assert events[-1] == "data: [DONE]", text[-300:]
    assert all(e.startswith("data: ") for e in events), text[:300]
    return [json.loads(e[len("data: "):]) for e in events[:-1]]


def check_stream(path: str, body: dict, events: list) -> None:
    chat = path.endswith("chat/completions")
    n_prompts = 1 if chat or isinstance(body["prompt"], str) else len(body["prompt"])
    choices = body["n"] * n_prompts
    texts = [""] * choices
    finished: dict[int, str] = {}
    usage = None
    for i, event in enumerate(events):
        assert "error" not in event, event  # everything here is valid: nothing may fail
        assert event["object"] == ("chat.completion.chunk" if chat else "text_completion")
        if not event["choices"]:  # the usage chunk, last before [DONE]
            assert i == len(events) - 1 and body["stream_options"]["include_usage"]
            usage = event["usage"]
            continue
        (choice,) = event["choices"]
        index = choice["index"]
        assert 0 <= index < choices and index not in finished, (index, event)
        texts[index] += (choice["delta"].get("content") or "") if chat else choice["text"]
        if choice["finish_reason"] is not None:
            assert choice["finish_reason"] in ("stop", "length"), choice
            finished[index] = choice["finish_reason"]
    assert sorted(finished) == list(range(choices)), finished
    stops = [body["stop"]] if isinstance(body["stop"], str) else body["stop"] or []
    for text in texts:  # the text ends before a stop string: none is ever shown
        assert not any(stop in text for stop in stops), (text, stops)
    if (body["stream_options"] or {}).get("include_usage"):
        assert usage is not None and usage["completion_tokens"] <= choices * MAX_TOKENS


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(request=streamed_bodies())
def test_sse_streams_end_in_done_or_an_error(served, request):
    path, body = request
    _, client, _ = served
    # json.dumps escapes lone surrogates (\ud800), as a JSON client may send them.
    r = client.post(path, content=json.dumps(body).encode(),
                    headers={**AUTH, "content-type": "application/json"})
    hypothesis.event(f"status {r.status_code}")  # --hypothesis-show-statistics: how many streamed
    assert r.status_code < 500, (body, r.text[:300])
    if r.status_code != 200:  # refused before the stream starts: OpenAI's error shape
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], err
        return
    assert r.headers["content-type"].startswith("text/event-stream")
    check_stream(path, body, stream_events(r.text))


def test_the_engine_is_left_clean(served):
    """After all of the above: no request left running or waiting, and it still answers."""
    _, client, state = served
    stats = state.engine.stats()
    assert stats["running"] == 0 and stats["waiting"] == 0, stats
    r = client.post("/v1/chat/completions", headers=AUTH, json={
        "model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": True})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
