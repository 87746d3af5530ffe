"""The OpenAI-shaped API in process (FastAPI's TestClient over the real engine and a tiny
random model): shapes, usage, finish reasons, n and seeds, stop strings, streaming, greedy
answers equal to the engine's own generation, and every client mistake as OpenAI's error
shape, never a 500."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient

from lmforge.engine.chat import ChatSession
from lmforge.engine.generate import generate_tokens
from lmforge.engine.sampling import SamplingParams
from lmforge.serve.app import create_app
from serve_helpers import CONTEXT, make_state, tiny_model


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-api")
    model, tok = tiny_model(root / "tiny")
    return root, model, tok


@pytest.fixture(scope="module")
def client(built):
    root, _, _ = built
    with TestClient(create_app(make_state(root / "tiny", root / "ws", max_tokens=64))) as c:
        yield c


def chat(client, **body):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "What is a cat?"}],
            **body}
    return client.post("/v1/chat/completions", json=body)


def assert_error(r, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


def test_models_lists_the_served_model(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["tiny"]
    assert body["data"][0]["object"] == "model" and body["data"][0]["max_model_len"] == CONTEXT
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    assert_error(client.get("/v1/models/other"), 404, "model", "model_not_found")


def test_greedy_chat_answer_is_the_engine_s_own(client, built):
    _, model, tok = built
    r = chat(client, temperature=0, max_tokens=12)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    # lmforge chat, the same prompt and greedy settings: the same reply text.
    session = ChatSession(model, tok, SamplingParams(temperature=0, max_new_tokens=12))
    expected = "".join(session.send("What is a cat?"))
    assert choice["message"]["content"] == expected
    assert choice["finish_reason"] == ("length" if session.last.finish == "length" else "stop")
    prompt = tok.render_chat([{"role": "user", "content": "What is a cat?"}],
                             add_generation_prompt=True)[0]
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(prompt)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 12


def test_greedy_completion_is_the_engine_s_own(client, built):
    _, model, tok = built
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "The cat sat",
                                             "max_tokens": 10, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    ids = [tok.bos_id, *tok.encode("The cat sat")]
    tokens = list(generate_tokens(model, ids, SamplingParams(temperature=0, max_new_tokens=10),
                                  stop_ids=(tok.bos_id, tok.eos_id)))
    decoder = tok.stream_decoder(skip_special=True)
    expected = "".join(decoder.add(t) for t in tokens) + decoder.flush()
    assert body["choices"][0]["text"] == expected
    assert body["usage"]["prompt_tokens"] == len(ids)
    assert body["usage"]["completion_tokens"] == len(tokens)


def test_completion_prompts_as_texts_and_token_ids(client, built):
    _, _, tok = built
    ids = [tok.bos_id, *tok.encode("Hello!")]
    by_text = client.post("/v1/completions", json={
        "model": "tiny", "prompt": "Hello!", "max_tokens": 5, "temperature": 0}).json()
    by_ids = client.post("/v1/completions", json={
        "model": "tiny", "prompt": ids, "max_tokens": 5, "temperature": 0}).json()
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    many = client.post("/v1/completions", json={
        "model": "tiny", "prompt": ["Hello!", "The dog"], "n": 2, "max_tokens": 5,
        "temperature": 0}).json()
    # prompt i, sample j is choice i * n + j; greedy samples of one prompt agree
    assert [c["index"] for c in many["choices"]] == [0, 1, 2, 3]
    texts = [c["text"] for c in many["choices"]]
    assert texts[0] == texts[1] == by_text["choices"][0]["text"] and texts[2] == texts[3]
    lists = client.post("/v1/completions", json={
        "model": "tiny", "prompt": [ids, ids], "max_tokens": 5, "temperature": 0}).json()
    assert {c["text"] for c in lists["choices"]} == {by_text["choices"][0]["text"]}


def test_n_choices_and_seeds_repeat(client):
    first = chat(client, n=3, seed=7, temperature=1.0, max_tokens=8).json()
    again = chat(client, n=3, seed=7, temperature=1.0, max_tokens=8).json()
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in first["choices"]]
    assert texts == [c["message"]["content"] for c in again["choices"]]
    # choice j samples with seed + j: choice 0 of seed 8 is choice 1 of seed 7
    shifted = chat(client, n=1, seed=8, temperature=1.0, max_tokens=8).json()
    assert shifted["choices"][0]["message"]["content"] == texts[1]
    assert first["usage"]["completion_tokens"] <= 3 * 8


def test_stop_string_ends_the_text_before_it(client):
    full = client.post("/v1/completions", json={"model": "tiny", "prompt": "The cat",
                                                "max_tokens": 20, "temperature": 0}).json()
    text = full["choices"][0]["text"]
    cut = next((i for i in range(2, len(text)) if text[i].strip() and text[i] != "\ufffd"),
               None)
    if cut is None:
        pytest.skip("the random model wrote no usable stop character")
    stop = text[cut]
    stopped = client.post("/v1/completions", json={
        "model": "tiny", "prompt": "The cat", "max_tokens": 20, "temperature": 0,
        "stop": [stop]}).json()
    choice = stopped["choices"][0]
    assert choice["text"] == text[:text.index(stop)]
    assert choice["finish_reason"] == "stop"


def sse_events(text: str) -> list:
    """The data of each server-sent event; every event is one `data:` line."""
    events = [e for e in text.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e[len("data: "):] for e in events]


def test_streamed_chat_is_the_same_answer_in_chunks(client):
    whole = chat(client, temperature=0, max_tokens=12).json()
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "What is a cat?"}],
            "temperature": 0, "max_tokens": 12, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        data = sse_events(r.read().decode())
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    *body, last = chunks
    assert last["choices"] == [] and last["usage"] == whole["usage"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in body)
    assert text == whole["choices"][0]["message"]["content"]
    reasons = [c["choices"][0]["finish_reason"] for c in body]
    assert reasons[-1] == whole["choices"][0]["finish_reason"]
    assert all(r is None for r in reasons[:-1])


def test_streamed_completion_with_two_choices(client):
    with client.stream("POST", "/v1/completions", json={
            "model": "tiny", "prompt": "The dog", "n": 2, "max_tokens": 6, "temperature": 0,
            "stream": True}) as r:
        data = sse_events(r.read().decode())
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    texts = {0: "", 1: ""}
    finished = set()
    for c in chunks:
        (choice,) = c["choices"]
        assert c["object"] == "text_completion"
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"]:
            finished.add(choice["index"])
    assert finished == {0, 1} and texts[0] == texts[1]  # greedy: both alike


def test_a_base_model_serves_completions_but_refuses_chat(built, tmp_path):
    root, _, _ = built
    bare = tmp_path / "base"
    shutil.copytree(root / "tiny", bare)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with TestClient(create_app(make_state(bare, tmp_path / "ws"))) as c:
        r = c.post("/v1/completions", json={"model": "base", "prompt": "Hi", "max_tokens": 3})
        assert r.status_code == 200
        err = assert_error(chat(c, model="base"), 400, "model", "model_not_chat")
        assert "no chat template" in err["message"] and "/v1/completions" in err["message"]


@pytest.mark.parametrize("body, status, param", [
    ({"model": "nope"}, 404, "model"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages"),
    ({"messages": [{"role": "user"}]}, 400, "messages.0.content"),
    ({"messages": [{"role": "user", "content": None}]}, 400, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "messages.0.content"),
    ({"messages": "hello"}, 400, "messages"),
    ({"temperature": -1}, 400, "temperature"),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"top_p": 1.5}, 400, "top_p"),
    ({"n": 0}, 400, "n"),
    ({"n": 10_000}, 400, "n"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 65}, 400, "max_tokens"),  # the server allows 64
    ({"max_completion_tokens": 90}, 400, "max_completion_tokens"),  # past the context
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"stop": [""]}, 400, "stop"),
    ({"logprobs": True}, 400, "logprobs"),
    ({"presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"response_format": {"type": "json_object"}}, 400, "response_format"),
    ({"surprise": 1}, 400, "surprise"),
    ({"seed": 2**70}, 400, "seed"),
    ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, 400, "tools"),
])
def test_chat_client_mistakes_get_openai_errors(client, body, status, param):
    assert_error(chat(client, **body), status, param)


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": ""}, 200, None),  # BOS alone is a prompt
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": [[]]}, 400, "prompt"),
    ({"prompt": [10**9]}, 400, "prompt"),
    ({"prompt": [-1]}, 400, "prompt"),
    ({"prompt": {"text": "hi"}}, 400, "prompt"),
    ({"prompt": "word " * 200}, 413, "prompt"),
    ({"prompt": ["x"] * 40, "n": 2}, 400, "n"),
    ({"echo": True}, 400, "echo"),
    ({"suffix": "end"}, 400, "suffix"),
    ({"best_of": 3}, 400, "best_of"),
])
def test_completion_client_mistakes_get_openai_errors(client, body, status, param):
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hi",
                                             "max_tokens": 2, **body})
    if status == 200:
        assert r.status_code == 200, r.text
    else:
        assert_error(r, status, param)


def test_bodies_that_are_not_requests(client):
    for raw in (b"{not json", b"[1, 2]", b"null", b"\xff\xfe", b""):
        assert_error(client.post("/v1/chat/completions", content=raw), 400)
    # curl -d sends form-encoded JSON; it is read as the JSON it is
    r = client.post("/v1/completions", content=json.dumps(
        {"model": "tiny", "prompt": "Hi", "max_tokens": 2}),
        headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert_error(client.get("/v1/nowhere"), 404)
    assert_error(client.get("/v1/chat/completions"), 405)


def test_a_prompt_over_the_server_limit_is_413(built, tmp_path):
    root, _, _ = built
    state = make_state(root / "tiny", tmp_path / "ws", max_prompt_tokens=10)
    with TestClient(create_app(state)) as c:
        err = assert_error(chat(c, messages=[{"role": "user", "content": "word " * 20}]),
                           413, "prompt", "prompt_too_long")
        assert "at most 10" in err["message"]
        assert chat(c, messages=[{"role": "user", "content": "Hi"}],
                    max_tokens=2).status_code == 200


def test_a_bug_is_a_logged_openai_shaped_500(built, tmp_path, monkeypatch, caplog):
    root, _, _ = built
    import lmforge.serve.openai_routes as routes

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(routes, "prompt_for", broken)
    with TestClient(create_app(make_state(root / "tiny", tmp_path / "ws")),
                    raise_server_exceptions=False) as c:
        r = chat(c)
        assert_error(r, 500, None, "internal_error")
        assert "a bug" not in r.text  # internals stay in the log
        assert chat(c, stream=True).status_code == 500
        assert c.get("/health").json() == {"status": "ok"}  # and the server stays up
    assert "a bug" in caplog.text


def test_health_ready_and_openapi(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    schema = client.get("/openapi.json").json()
    for path in ("/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/feedback",
                 "/health", "/ready", "/metrics"):
        assert path in schema["paths"], path
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert "ChatCompletionRequest" in json.dumps(body)
    assert "HTTPBearer" in json.dumps(schema["components"]["securitySchemes"])


def test_ready_is_503_before_the_engine_starts(built, tmp_path):
    root, _, _ = built
    app = create_app(make_state(root / "tiny", tmp_path / "ws"))
    c = TestClient(app)  # not entered: no lifespan, the engine never started
    assert_error(c.get("/ready"), 503, None, "not_ready")
