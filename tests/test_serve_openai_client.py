"""`openai`, the official client, against a real uvicorn server on a loopback port: it must
parse every answer and raise its own typed error for every refusal, unchanged."""

from __future__ import annotations

import pytest

from serve_helpers import live_server, make_state, tiny_model

openai = pytest.importorskip("openai")

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-openai")
    tiny_model(root / "tiny")
    keys = root / "keys.txt"
    keys.write_text(f"# test keys\n{KEY}\nsk-another-key-987654321\n")
    state = make_state(root / "tiny", root / "ws", api_key_file=str(keys),
                       max_prompt_tokens=40, max_tokens=32)
    with live_server(state) as url:
        yield url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=30)


MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is a cat?"}]


def test_chat_completion(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8,
                                       temperature=0)
    assert r.object == "chat.completion" and r.model == "tiny"
    (choice,) = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 1 <= r.usage.completion_tokens <= 8


def test_streamed_chat_matches_the_whole_answer(client):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8,
                                           temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completion_and_models(client):
    r = client.completions.create(model="tiny", prompt="The cat sat", max_tokens=5, n=2,
                                  seed=3, temperature=0.9)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1]
    assert r.usage.completion_tokens <= 10
    assert [m.id for m in client.models.list()] == ["tiny"]
    streamed = client.completions.create(model="tiny", prompt="The cat sat", max_tokens=5,
                                         temperature=0, stream=True)
    assert sum(1 for c in streamed if c.choices[0].finish_reason) == 1


def test_refusals_are_the_client_s_typed_errors(server, client):
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=f"{server}/v1", api_key="sk-wrong-key-000000", max_retries=0
                      ).models.list()
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=3)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "oracle",
                                                                "content": "hi"}])
    assert e.value.param == "messages"
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="tiny", messages=[
            {"role": "user", "content": "word " * 60}])
    assert e.value.status_code == 413 and e.value.code == "prompt_too_long"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=33)
    assert e.value.param == "max_tokens"


def test_a_missing_key_is_401_and_open_endpoints_need_none(server):
    import httpx

    r = httpx.post(f"{server}/v1/chat/completions", json={"model": "tiny",
                                                          "messages": MESSAGES})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    # a malformed body without a key is still a 401: the key is checked first
    assert httpx.post(f"{server}/v1/completions", content=b"{").status_code == 401
    # Azure's api-key header works as well as Bearer
    ok = httpx.get(f"{server}/v1/models", headers={"api-key": KEY})
    assert ok.status_code == 200
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{server}{path}").status_code == 200, path
