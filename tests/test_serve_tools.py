"""Tool calling through the OpenAI API: tools rendered into the prompt as `lmforge chat`
renders them, calls parsed out of the model's text into `tool_calls` (whole answers and SSE
streams, read by the official `openai` client), tool_choice, and bad tools as 400s."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from lmforge.design.spec import ModelDesign
from lmforge.engine.streams import RequestStream, TokenEvent
from lmforge.model.init import initialize
from lmforge.model.io import save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.serve.app import create_app
from lmforge.tokenizer import train_tokenizer
from serve_helpers import TEXT, live_server, make_state

TOOLS = [{"type": "function", "function": {
    "name": "docstring", "description": "Documentation of a Python standard-library name.",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}},
                   "required": ["name"]}}}]
CALL = '<tool_call>{"name": "docstring", "arguments": {"name": "math.sqrt"}}</tool_call>'


class ScriptedEngine:
    """Writes `reply` for every request, in pieces of 5 characters (so a call's opening is
    split across events), and keeps the prompts it was given."""

    def __init__(self) -> None:
        self.reply = ""
        self.prompts: list[list[int]] = []

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def stats(self) -> dict:
        return {"running": 0, "waiting": 0}

    def submit(self, req) -> RequestStream:
        self.prompts.append(list(req.prompt))
        stream = RequestStream(f"req-{len(self.prompts)}")
        pieces = [self.reply[i:i + 5] for i in range(0, len(self.reply), 5)]
        for k, piece in enumerate(pieces):
            stream._put(TokenEvent(stream.request_id, 7, piece, None, len(req.prompt), k + 1))
        stream._put(TokenEvent(stream.request_id, None, "", "stop", len(req.prompt),
                               len(pieces)))
        return stream


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-tools")
    tok = train_tokenizer(TEXT, 400, show_progress=False)
    design = ModelDesign(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1,
                         vocab_size=tok.vocab_size, context_length=2048)
    save_model_dir(initialize(Transformer(design), "scaled", seed=0).eval(), root / "wide",
                   tok, "# wide\n\nA random model with room for tools.\n")
    engine = ScriptedEngine()
    state = make_state(root / "wide", root / "ws", engine=engine, max_tokens=64)
    with TestClient(create_app(state)) as client:
        yield client, engine, tok, state


def ask(client, **body):
    body = {"model": "wide", "messages": [{"role": "user", "content": "What does math.sqrt do?"}],
            "tools": TOOLS, **body}
    return client.post("/v1/chat/completions", json=body)


def test_a_call_comes_back_as_tool_calls(served):
    client, engine, tok, _ = served
    engine.reply = CALL
    r = ask(client)
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "docstring", "arguments": '{"name": "math.sqrt"}'}
    # The model read the tools as the chat template offers them.
    assert engine.prompts[-1] == tok.render_chat(
        [{"role": "user", "content": "What does math.sqrt do?"}], add_generation_prompt=True,
        tools=TOOLS)[0]


def test_the_client_sends_the_result_back_and_gets_an_answer(served):
    client, engine, tok, _ = served
    engine.reply = "math.sqrt: Return the square root of x."
    history = [{"role": "user", "content": "What does math.sqrt do?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {
                       "name": "docstring", "arguments": '{"name": "math.sqrt"}'}}]},
               {"role": "tool", "tool_call_id": "call_1",
                "content": "Return the square root of x."}]
    r = ask(client, messages=history)
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    assert choice["message"]["content"] == engine.reply
    expected = [{k: v for k, v in m.items() if k != "tool_call_id"} for m in history]
    assert engine.prompts[-1] == tok.render_chat(expected, add_generation_prompt=True,
                                                 tools=TOOLS)[0]


def test_streamed_calls_never_show_as_text(served):
    client, engine, _, _ = served
    engine.reply = "Let me look. " + CALL
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "wide", "messages": [{"role": "user", "content": "math.sqrt?"}],
            "tools": TOOLS, "stream": True}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    text = "".join(d.get("content") or "" for d in deltas)
    assert text == "Let me look. " and "<tool" not in text
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert len(calls) == 1 and calls[0][0]["index"] == 0
    assert calls[0][0]["function"]["arguments"] == '{"name": "math.sqrt"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    engine.reply = "I know <tool_ things."  # looks like a call for a moment: then shown
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "wide", "messages": [{"role": "user", "content": "x"}],
            "tools": TOOLS, "stream": True}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == \
        engine.reply
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_tool_choice(served):
    client, engine, tok, _ = served
    engine.reply = "Hello."
    ask(client, tool_choice="none")  # not offered: the prompt has no tools block
    assert engine.prompts[-1] == tok.render_chat(
        [{"role": "user", "content": "What does math.sqrt do?"}], add_generation_prompt=True)[0]
    # A named function: the reply starts as its call, the model writes the arguments.
    engine.reply = '{"name": "math.sqrt"}}</tool_call>'
    r = ask(client, tool_choice={"type": "function", "function": {"name": "docstring"}})
    (choice,) = r.json()["choices"]
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"name": "math.sqrt"}'
    forced = '<tool_call>{"name": "docstring", "arguments": '
    assert tok.decode(engine.prompts[-1]).endswith("<|assistant|>" + forced)
    err = ask(client, tool_choice={"type": "function", "function": {"name": "weather"}})
    assert err.status_code == 400 and err.json()["error"]["param"] == "tool_choice"


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "docstring", "arguments": "{oops"}}]}]},
     "messages"),
    ({"messages": [{"role": "tool"}]}, "messages.0.content"),
])
def test_bad_tools_are_400s(served, body, param):
    client, _, _, _ = served
    r = ask(client, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_the_openai_client_reads_the_calls(served):
    openai = pytest.importorskip("openai")
    _, engine, _, state = served
    engine.reply = CALL
    with live_server(state) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="k")
        out = c.chat.completions.create(model="wide", messages=[
            {"role": "user", "content": "What does math.sqrt do?"}], tools=TOOLS)
        call = out.choices[0].message.tool_calls[0]
        assert out.choices[0].finish_reason == "tool_calls"
        assert (call.function.name, json.loads(call.function.arguments)) == \
            ("docstring", {"name": "math.sqrt"})
        stream = c.chat.completions.create(model="wide", messages=[
            {"role": "user", "content": "What does math.sqrt do?"}], tools=TOOLS, stream=True)
        parts = [ch.choices[0].delta.tool_calls for ch in stream if ch.choices
                 and ch.choices[0].delta.tool_calls]
        assert parts[0][0].function.name == "docstring"
