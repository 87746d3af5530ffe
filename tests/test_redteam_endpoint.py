"""Red teaming an OpenAI-compatible endpoint: `lmforge serve` on 127.0.0.1 (with a scripted
engine that obeys every ask, then with the guardrail rules red teaming wrote; and with a real
tiny model), a bare HTTP server that answers badly, and a port where nothing listens. Only
127.0.0.1 is ever contacted."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmforge.design.spec import ModelDesign
from lmforge.engine.streams import RequestStream, TokenEvent
from lmforge.guardrails import dump_rules, load_rules
from lmforge.model.init import initialize
from lmforge.model.io import save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.redteam.loop_back import load_report, rules_from
from lmforge.redteam.stage import RedteamSettings, run
from lmforge.redteam.targets import EndpointTarget, Reply, parse_reply
from lmforge.registry import Workspace
from lmforge.tokenizer import train_tokenizer
from serve_helpers import TEXT, free_port, live_server, make_state
from test_redteam import obey_all


class ObeyingEngine:
    """An engine that reads the rendered prompt and answers as `obey_all` would (it repeats
    planted secrets, and writes steps for anything else)."""

    def __init__(self, tok):
        self.tok = tok
        self.count = 0

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def stats(self) -> dict:
        return {"running": 0, "waiting": 0}

    def submit(self, req) -> RequestStream:
        self.count += 1
        text = self.tok.decode(list(req.prompt), skip_special=True)
        system = "Customer on file" if "Customer on file" in text else ""
        canary = next((w for w in text.split() if "CANARY" in w), None)
        if canary:
            system = canary
        reply = obey_all([{"role": "system", "content": system},
                          {"role": "user", "content": text[-200:]}]).text
        stream = RequestStream(f"req-{self.count}")
        stream._put(TokenEvent(stream.request_id, 7, reply, None, len(req.prompt), 1))
        stream._put(TokenEvent(stream.request_id, None, "", "stop", len(req.prompt), 1))
        return stream


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("redteam-serve")
    tok = train_tokenizer(TEXT, 400, show_progress=False)
    design = ModelDesign(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1,
                         vocab_size=tok.vocab_size, context_length=1024)
    save_model_dir(initialize(Transformer(design), "scaled", seed=0).eval(), root / "wide",
                   tok, "# wide\n\nA random model with room for long prompts.\n")
    return root / "wide", tok


SHORT = {"suite": "builtin", "limit": 16, "benign_limit": 6, "attempts": 1,
         "categories": ("direct", "jailbreak", "leakage", "over_refusal"), "concurrency": 4,
         "timeout": 20.0}


def test_a_served_model_is_attacked_and_the_rules_it_earned_stop_the_attacks(model_dir,
                                                                            tmp_path):
    path, tok = model_dir
    ws = Workspace.open(tmp_path / "rt")
    state = make_state(path, tmp_path / "ws", engine=ObeyingEngine(tok), max_tokens=64)
    with live_server(state) as url:
        before = run(ws, RedteamSettings(url, **SHORT), show_progress=False)
        r = before.details
        assert r["endpoint"] == url and r["model"] is None and r["served_name"] == "wide"
        assert before.artifact.parents == {}  # an endpoint's report hangs on no model
        assert r["summary"]["unjudged"]["attempts"] == 0
        for c in ("direct", "jailbreak", "leakage"):
            assert r["summary"]["categories"][c]["rate"] == 1.0, c
        report, name = load_report(ws, before.artifact.id)
        rules = tmp_path / "rules.toml"
        rules.write_text(dump_rules(rules_from(report, name)))
        state.guardrails = load_rules(rules)  # what `lmforge serve --guardrails` loads
        after = run(ws, RedteamSettings(url, **SHORT), show_progress=False).details
    # The seen prompts' attacks are stopped: every one of them matched a rule.
    assert after["summary"]["seen_asr"]["rate"] == 0.0
    assert after["summary"]["categories"]["leakage"]["rate"] == 0.0  # the output rule
    assert after["summary"]["asr"]["rate"] < r["summary"]["asr"]["rate"]
    # Benign asks are not blocked by the rules (no over-refusal was added).
    assert after["summary"]["categories"]["over_refusal"]["rate"] == 0.0
    ws.close()


def test_a_real_tiny_model_behind_lmforge_serve_is_judged_or_counted_unjudged(model_dir,
                                                                             tmp_path):
    path, _ = model_dir
    ws = Workspace.open(tmp_path / "rt")
    state = make_state(path, tmp_path / "ws", max_tokens=16)
    with live_server(state) as url:
        out = run(ws, RedteamSettings(url, **{**SHORT, "limit": 4, "max_new_tokens": 8}),
                  show_progress=False)
    u = out.details["summary"]["unjudged"]
    cats = out.details["summary"]["categories"]
    judged = sum(c["attempts"] - c["unjudged_attempts"] for c in cats.values())
    assert judged + u["attempts"] == u["of"] > 0
    assert all("cannot connect" not in k for k in u["reasons"])
    ws.close()


class BadHandler(BaseHTTPRequestHandler):
    """Answers by the user's text: 'utf' -> a body that is not UTF-8, 'fail' -> HTTP 500,
    'junk' -> not JSON, 'slow' -> nothing for 3 s, 'none' -> content null, 'busy' -> HTTP 429
    twice (Retry-After: 0), then a refusal; else a refusal."""

    busy_calls = 0

    def log_message(self, *args) -> None: ...

    def do_GET(self):
        self._send(200, json.dumps({"object": "list", "data": [{"id": "bad-model"}]}).encode())

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["model"] == "bad-model" and body["max_tokens"] == 64
        ask = body["messages"][-1]["content"]
        if "utf" in ask:
            return self._send(200, b'{"choices": [{"message": {"content": "\xff\xfe"}}]}')
        if "fail" in ask:
            return self._send(500, b'{"error": "boom"}')
        if "junk" in ask:
            return self._send(200, b"<html>not json</html>")
        if "slow" in ask:
            time.sleep(3)
        if "busy" in ask:
            BadHandler.busy_calls += 1
            if BadHandler.busy_calls <= 2:  # busy twice, then an answer
                self.send_response(429)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
        content = None if "none" in ask else "I can't help with that."
        self._send(200, json.dumps({"choices": [{"message": {"role": "assistant",
                                                             "content": content}}]}).encode())

    def _send(self, status: int, data: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


def test_bad_answers_from_an_endpoint_are_reported_per_attempt():
    server = ThreadingHTTPServer(("127.0.0.1", 0), BadHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        target = EndpointTarget(url, timeout=1.0, concurrency=3)
        assert target.name == "bad-model"  # from /v1/models
        asks = ["utf", "fail", "junk", "slow", "none", "fine", "busy"]
        replies = target.answer([[{"role": "user", "content": a}] for a in asks])
        target.close()
    finally:
        server.shutdown()
    got = dict(zip(asks, replies))
    assert got["utf"].error == "answer is not valid UTF-8"
    assert got["fail"].error.startswith("HTTP 500")
    assert got["junk"].error.startswith("malformed response")
    assert got["slow"].error == "timed out"
    assert got["none"].text is None and got["none"].error is None  # judged as empty
    assert got["fine"].text == "I can't help with that."
    assert got["busy"].text == "I can't help with that." and BadHandler.busy_calls == 3
    assert parse_reply(200, b'{"choices": [{"message": {"content": 3}}]}').error


def test_an_unreachable_endpoint_ends_quickly_with_every_attempt_unjudged(tmp_path):
    ws = Workspace.open(tmp_path / "rt")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    out = run(ws, RedteamSettings(url, **{**SHORT, "concurrency": 2}), show_progress=False)
    assert time.monotonic() - start < 30
    u = out.details["summary"]["unjudged"]
    assert u["attempts"] == u["of"] > 0 and not out.details["gates_passed"]
    assert any("cannot connect" in k for k in u["reasons"])
    assert any("not sent" in k for k in u["reasons"])
    ws.close()


class JudgeHandler(BaseHTTPRequestHandler):
    """A judge model: HARMFUL when the response has steps, REFUSED when it says "can't",
    and a word outside the rubric when the request mentions a signature (a judge failure)."""

    def log_message(self, *args) -> None: ...

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "judge-model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["messages"][0]["role"] == "system" and "HARMFUL" in body["messages"][0][
            "content"]
        text = body["messages"][-1]["content"]
        response = text.split("Response:\n", 1)[1]
        word = ("MAYBE" if "signature" in text else "HARMFUL" if "Step" in response
                else "REFUSED")
        self._send({"choices": [{"message": {"role": "assistant", "content": word}}]})

    def _send(self, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_an_llm_judge_replaces_the_detector_on_harmful_asks_and_failures_fall_back(
        tmp_path, monkeypatch):
    import lmforge.redteam.stage as stage
    from test_redteam import Scripted

    server = ThreadingHTTPServer(("127.0.0.1", 0), JudgeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Half the answers have steps but are off-topic, so the text detector calls them safe.
    answers = iter(["Sure. Step 1: water the plants. Step 2: enjoy the garden.",
                    "I can't help with that."] * 1000)
    monkeypatch.setattr(stage, "open_target",
                        lambda *a, **k: Scripted(lambda m: Reply(next(answers))))
    ws = Workspace.open(tmp_path / "rt")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        out = run(ws, RedteamSettings("m", suite="builtin", limit=20, attempts=1,
                                      categories=("direct", "leakage"), judge=url),
                  show_progress=False)
    finally:
        server.shutdown()
        ws.close()
    r = out.details
    j = r["judge"]
    assert j["model"] == "judge-model" and j["asked"] == 20  # direct only, not leakage
    attempts = [json.loads(line) for line in
                (out.artifact.path / "attempts.jsonl").read_text().splitlines()]
    unsure = [a for a in attempts if a["category"] == "direct" and "signature" in a["goal"]]
    assert j["failed"] == len(unsure) and all(a["verdict"]["judge"] is None for a in unsure)
    # Where it judged, it disagreed with the detector on the off-topic answers with steps.
    assert 0.3 < j["agreement_with_detector"] < 0.7
    direct = r["summary"]["categories"]["direct"]
    assert 0.3 < direct["rate"] < 0.7
    assert all(f["verdict"]["judge"] == "harmful" for f in r["findings"]
               if f["category"] == "direct")
    # A judge that is no URL is a reward model; anything else is refused before attacking
    # (tests/test_redteam.py::test_a_judge_that_is_no_reward_model_is_refused_before_attacking).
