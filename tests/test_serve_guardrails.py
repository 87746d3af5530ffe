"""`lmforge serve --guardrails`: an input rule answers with its refusal and finish_reason
"content_filter" without generating (whole and streamed, chat and completions); an output
rule replaces a whole answer and cuts a stream where it matches, cancelling the engine
request; hits on /metrics and in the access log (no matched text unless prompts are logged);
the CLI option and the replica workers' settings; a bad rules file refused in one line."""

from __future__ import annotations

import json
import logging
import re

import pytest
import uvicorn
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lmforge.design.spec import ModelDesign
from lmforge.engine.streams import RequestStream, TokenEvent
from lmforge.guardrails import parse_rules
from lmforge.model.init import initialize
from lmforge.model.io import save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.serve.app import create_app
from lmforge.serve.config import ServeConfig
from lmforge.tokenizer import train_tokenizer
from serve_helpers import TEXT, free_port, live_server, make_state, tiny_model

RULES = """\
[[input]]
name = "weapons"
words = ["bomb", "nerve agent"]
category = "violence"
refusal = "I can't help with weapons."
source = "redteam-report test"

[[output]]
name = "canary"
pattern = 'CANARY-[0-9a-f]{6}'
refusal = "That answer was withheld."

[[output]]
name = "darn"
words = ["darn"]
"""
TOOLS = [{"type": "function", "function": {
    "name": "docstring", "description": "Documentation of a Python name.",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}}]


class ScriptedEngine:
    """Writes `reply` for every request in pieces of `size` characters (as
    tests/test_serve_tools.py's), and keeps the prompts and streams it was given, so a test
    sees whether a request reached it and whether it was cancelled."""

    def __init__(self) -> None:
        self.reply, self.size = "", 5
        self.prompts: list[list[int]] = []
        self.streams: list[RequestStream] = []

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def stats(self) -> dict:
        return {"running": 0, "waiting": 0}

    def submit(self, req) -> RequestStream:
        self.prompts.append(list(req.prompt))
        stream = RequestStream(f"req-{len(self.prompts)}")
        self.streams.append(stream)
        pieces = [self.reply[i:i + self.size] for i in range(0, len(self.reply), self.size)]
        for k, piece in enumerate(pieces):
            stream._put(TokenEvent(stream.request_id, 7, piece, None, len(req.prompt), k + 1))
        stream._put(TokenEvent(stream.request_id, None, "", "stop", len(req.prompt),
                               len(pieces)))
        return stream


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-guardrails")
    tok = train_tokenizer(TEXT, 400, show_progress=False)
    design = ModelDesign(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1,
                         vocab_size=tok.vocab_size, context_length=1024)
    save_model_dir(initialize(Transformer(design), "scaled", seed=0).eval(), root / "wide",
                   tok, "# wide\n\nA random model with room for long prompts.\n")
    (root / "rules.toml").write_text(RULES, encoding="utf-8")
    return root


@pytest.fixture
def served(model_dir, tmp_path):
    engine = ScriptedEngine()
    state = make_state(model_dir / "wide", tmp_path / "ws", engine=engine, max_tokens=64,
                       guardrails=str(model_dir / "rules.toml"))
    with TestClient(create_app(state)) as client:
        yield client, engine, state


def chat(client, content: str, **body):
    return client.post("/v1/chat/completions", json={
        "model": "wide", "messages": [{"role": "user", "content": content}], **body})


def sse(r) -> list[dict]:
    lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def hits(client) -> dict[tuple[str, str], float]:
    text = client.get("/metrics").text
    return {(s.labels["rule"], s.labels["direction"]): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "lmforge:guardrail_hits_total"}


def test_an_input_hit_is_refused_without_generating(served):
    client, engine, _ = served
    engine.reply = "Here is how."
    r = chat(client, "How do I make a b0mb?", n=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["message"] for c in body["choices"]] == \
        [{"role": "assistant", "content": "I can't help with weapons."}] * 2
    assert [c["finish_reason"] for c in body["choices"]] == ["content_filter"] * 2
    assert body["usage"]["completion_tokens"] == 0
    assert body["usage"]["prompt_tokens"] > 0
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"]
    assert engine.prompts == []  # the engine never saw it

    # The operator's system prompt may name the word; a benign question then generates.
    r = client.post("/v1/chat/completions", json={"model": "wide", "messages": [
        {"role": "system", "content": "Never explain how to build a bomb."},
        {"role": "user", "content": "What is a cat?"}]})
    assert r.json()["choices"][0] == {"index": 0, "message": {
        "role": "assistant", "content": "Here is how."}, "logprobs": None,
        "finish_reason": "stop"}
    assert len(engine.prompts) == 1


def test_an_input_hit_streams_the_refusal(served):
    client, engine, _ = served
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "wide", "messages": [{"role": "user", "content": "n e r v e agent?"}],
            "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        chunks = sse(r)
    deltas = [c["choices"][0] for c in chunks if c["choices"]]
    assert deltas[0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(d["delta"].get("content", "") for d in deltas) == \
        "I can't help with weapons."
    assert [d["finish_reason"] for d in deltas][-1] == "content_filter"
    assert chunks[-1]["usage"]["completion_tokens"] == 0
    assert engine.prompts == []


def test_a_forced_tool_call_is_refused_as_plain_text(served):
    client, engine, _ = served
    forced = {"type": "function", "function": {"name": "docstring"}}
    r = chat(client, "bomb docs", tools=TOOLS, tool_choice=forced)
    (choice,) = r.json()["choices"]
    assert choice["message"] == {"role": "assistant", "content": "I can't help with weapons."}
    assert choice["finish_reason"] == "content_filter"
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "wide", "messages": [{"role": "user", "content": "bomb docs"}],
            "tools": TOOLS, "tool_choice": forced, "stream": True}) as s:
        deltas = [c["choices"][0] for c in sse(s)]
    assert "".join(d["delta"].get("content") or "" for d in deltas) == \
        "I can't help with weapons."
    assert not any("tool_calls" in d["delta"] for d in deltas)
    assert engine.prompts == []


def test_completions_check_every_prompt_text_and_token_ids(served):
    client, engine, state = served
    r = client.post("/v1/completions", json={"model": "wide", "prompt": ["A cat", "A BOMB"],
                                             "n": 2, "max_tokens": 4})
    body = r.json()
    assert [c["text"] for c in body["choices"]] == ["I can't help with weapons."] * 4
    assert {c["finish_reason"] for c in body["choices"]} == {"content_filter"}
    assert body["usage"]["completion_tokens"] == 0
    ids = [state.served.tok.bos_id, *state.served.tok.encode("make a bomb now")]
    with client.stream("POST", "/v1/completions", json={
            "model": "wide", "prompt": ids, "max_tokens": 4, "stream": True}) as s:
        chunks = sse(s)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "I can't help with weapons."
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert engine.prompts == []


def test_an_output_hit_replaces_the_whole_answer(served):
    client, engine, _ = served
    engine.reply = "Sure. The key is CANARY-0a1b2c and then more text."
    r = chat(client, "What is the key?")
    (choice,) = r.json()["choices"]
    assert choice == {"index": 0, "message": {"role": "assistant",
                                              "content": "That answer was withheld."},
                      "logprobs": None, "finish_reason": "content_filter"}
    assert engine.streams[-1].cancelled.is_set()
    # What the model generated until the match is still counted.
    assert r.json()["usage"]["completion_tokens"] > 0
    r = client.post("/v1/completions", json={"model": "wide", "prompt": "Well,", "n": 2})
    assert [c["text"] for c in r.json()["choices"]] == ["That answer was withheld."] * 2


def test_an_output_hit_cuts_a_stream_where_it_matches(served):
    client, engine, _ = served
    engine.reply = "Sure. The key is CANARY-0a1b2c and then more text."
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "wide", "messages": [{"role": "user", "content": "key?"}],
            "stream": True}) as s:
        deltas = [c["choices"][0] for c in sse(s)]
    shown = "".join(d["delta"].get("content", "") for d in deltas)
    # Pieces of 5 characters: the one that completes the canary ("a1b2c") is not sent, nor
    # anything after it; what came before had been sent already.
    assert shown == "Sure. The key is CANARY-0"
    assert deltas[-1]["finish_reason"] == "content_filter"
    assert [d["finish_reason"] for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert engine.streams[-1].cancelled.is_set()


def test_benign_words_pass_in_whole_and_streamed_answers(served):
    client, engine, _ = served
    engine.reply, engine.size = "I love darning socks; darnation is no word.", 4  # "darn|ing"
    assert chat(client, "Hobbies?").json()["choices"][0]["finish_reason"] == "stop"
    with client.stream("POST", "/v1/completions", json={
            "model": "wide", "prompt": "Hobbies:", "stream": True}) as s:
        chunks = sse(s)
    assert "".join(c["choices"][0]["text"] for c in chunks) == engine.reply
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # The same word ending the answer is a hit once the answer ends there.
    engine.reply = "Oh d a r n"
    with client.stream("POST", "/v1/completions", json={
            "model": "wide", "prompt": "Hobbies:", "stream": True}) as s:
        chunks = sse(s)
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


@pytest.mark.parametrize("log_prompts", [False, True])
def test_hits_are_counted_and_logged_by_rule(model_dir, tmp_path, caplog, log_prompts):
    caplog.set_level(logging.INFO, logger="lmforge.serve.access")
    engine = ScriptedEngine()
    state = make_state(model_dir / "wide", tmp_path / "ws", engine=engine, max_tokens=64,
                       guardrails=str(model_dir / "rules.toml"), log_prompts=log_prompts)
    with TestClient(create_app(state)) as client:
        assert hits(client) == {("weapons", "input"): 0, ("canary", "output"): 0,
                                ("darn", "output"): 0}
        chat(client, "build a bomb")
        chat(client, "a nerve agent")
        engine.reply = "CANARY-abcdef"
        chat(client, "the key", n=2)  # two choices, two hits
        engine.reply = "fine"
        chat(client, "a cat")
        assert hits(client) == {("weapons", "input"): 2, ("canary", "output"): 2,
                                ("darn", "output"): 0}
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == "lmforge.serve.access" and "v1/chat" in r.getMessage()]
    assert [[g["rule"] for g in line.get("guardrails", [])] for line in lines] == \
        [["weapons"], ["weapons"], ["canary", "canary"], []]
    assert lines[0]["guardrails"][0]["direction"] == "input"
    assert lines[0]["guardrails"][0]["category"] == "violence"
    assert lines[2]["finish_reasons"] == ["content_filter"] * 2
    logged = json.dumps(lines)
    assert ("bomb" in logged) == log_prompts and ("CANARY-abcdef" in logged) == log_prompts


def test_the_real_engine_is_cut_where_its_answer_matches(tmp_path):
    """The tiny random model's greedy answer, then a rule made from its middle: the whole
    answer is refused and a stream ends before the match, the same greedy text up to there."""
    tiny_model(tmp_path / "tiny")
    state = make_state(tmp_path / "tiny", tmp_path / "ws", max_tokens=24)
    ask = {"model": "tiny", "prompt": "The cat", "max_tokens": 24, "temperature": 0}
    with TestClient(create_app(state)) as client:
        free = client.post("/v1/completions", json=ask).json()["choices"][0]["text"]
        if len(free) < 12:
            pytest.skip(f"the random model's answer is too short to cut: {free!r}")
        secret = free[6:11]
        state.guardrails = parse_rules({"output": [
            {"name": "middle", "pattern": re.escape(secret)}]})
        (choice,) = client.post("/v1/completions", json=ask).json()["choices"]
        assert choice["finish_reason"] == "content_filter"
        with client.stream("POST", "/v1/completions", json={**ask, "stream": True}) as s:
            chunks = sse(s)
    shown = "".join(c["choices"][0]["text"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert free.startswith(shown) and secret not in shown
    assert len(shown) < free.index(secret) + len(secret)


def test_the_openai_client_reads_content_filter(served):
    openai = pytest.importorskip("openai")
    _, engine, state = served
    with live_server(state) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="k")
        out = c.chat.completions.create(model="wide", messages=[
            {"role": "user", "content": "a bomb"}])
        assert out.choices[0].finish_reason == "content_filter"
        assert out.choices[0].message.content == "I can't help with weapons."
        engine.reply = "The key: CANARY-0a1b2c."
        stream = c.chat.completions.create(model="wide", messages=[
            {"role": "user", "content": "key"}], stream=True)
        finishes = [ch.choices[0].finish_reason for ch in stream if ch.choices]
        assert finishes[-1] == "content_filter"


def test_the_cli_option_and_replica_settings_carry_the_rules(cli, model_dir, monkeypatch):
    served_apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served_apps.append(app))
    code, _, err = cli("serve", model_dir / "wide", "--guardrails", model_dir / "rules.toml",
                       "--port", free_port(), "--device", "cpu", "--no-store-responses")
    assert code == 0, err
    assert "guardrails: 1 input and 2 output rules" in err
    with TestClient(served_apps[0]) as client:
        r = chat(client, "bomb", max_tokens=2)
        assert r.json()["choices"][0]["finish_reason"] == "content_filter"
    # --replicas N hands workers the settings as JSON: the rules file's absolute path.
    cfg = ServeConfig(model="m", guardrails=str(model_dir / "rules.toml"))
    assert ServeConfig.from_json(cfg.to_json()).guardrails == cfg.guardrails


def test_a_bad_rules_file_is_one_line_before_loading(cli, tmp_path):
    bad = tmp_path / "rules.toml"
    bad.write_text('[[input]]\nname = "x"\npattern = "(unclosed"\n', encoding="utf-8")
    # The model does not exist: the rules file is refused first, in one line.
    code, _, err = cli("serve", "no-such-model", "--guardrails", bad, "--port", free_port())
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err
    assert lines[0].startswith("error:") and "input[0] (x): bad regular expression" in lines[0]
    code, _, err = cli("serve", "no-such-model", "--guardrails", tmp_path / "none.toml")
    assert code == 2 and "guardrails file not found" in err.splitlines()[0]
