"""The browser pages and the review API, at the HTTP level (the pages themselves run in
headless Chromium in test_serve_pages_browser.py, `pytest -m browser`).

`/` and `/review` load without a key, from package data, under a strict CSP; their scripts
never write model text as markup. GET /v1/review/next samples two answers (two seeds of the
served model) in random order and records the pair; POST /v1/review stores one verdict;
`preference_rows` reads decided pairs as prompt/chosen/rejected. Keys, ownership and bad
input behave as for the other /v1 routes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lmforge.design.spec import ModelDesign
from lmforge.engine.streams import RequestStream, TokenEvent
from lmforge.errors import LmforgeError
from lmforge.model.init import initialize
from lmforge.model.io import save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.serve import review_routes
from lmforge.serve.app import create_app
from lmforge.serve.pages import STATIC
from lmforge.serve.preferences import preference_rows
from lmforge.tokenizer import train_tokenizer
from serve_helpers import TEXT, make_state, tiny_model

KEY_ONE, KEY_TWO = "sk-one-0123456789", "sk-two-0123456789"
ONE = {"Authorization": f"Bearer {KEY_ONE}"}
TWO = {"Authorization": f"Bearer {KEY_TWO}"}
STATIC_DIR = Path(str(resources.files("lmforge.serve").joinpath("static")))


class ScriptedEngine:
    """Follows the engine's contract without a model: each request's reply is
    `script(request)`, sent in pieces of 4 characters, ending with finish_reason "stop"."""

    def __init__(self, script):
        self.script = script
        self.requests: list = []

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def stats(self) -> dict:
        return {"running": 0, "waiting": 0}

    def submit(self, req) -> RequestStream:
        self.requests.append(req)
        stream = RequestStream(f"req-{len(self.requests)}")
        reply = self.script(req)
        pieces = [reply[i:i + 4] for i in range(0, len(reply), 4)]
        for k, piece in enumerate(pieces):
            stream._put(TokenEvent(stream.request_id, 7, piece, None, len(req.prompt), k + 1))
        stream._put(TokenEvent(stream.request_id, None, "", "stop", len(req.prompt),
                               len(pieces)))
        return stream


def wide_model(out: Path) -> Path:
    """A random model whose context holds the tools block (the tiny one's 96 does not)."""
    tok = train_tokenizer(TEXT, 400, show_progress=False)
    design = ModelDesign(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1,
                         vocab_size=tok.vocab_size, context_length=2048)
    save_model_dir(initialize(Transformer(design), "scaled", seed=0).eval(), out, tok,
                   "# wide\n\nA random model with room for tools.\n")
    return out


class FixedRng:
    """Stands in for review_routes._rng: a fixed seed, and a fixed coin for the A/B order
    (below 0.5 swaps)."""

    def __init__(self, seed: int, coin: float):
        self.seed, self.coin = seed, coin

    def randrange(self, n: int) -> int:
        return self.seed

    def random(self) -> float:
        return self.coin


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-pages")
    tiny_model(root / "tiny")
    return root / "tiny"


@pytest.fixture
def keys(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text(f"{KEY_ONE}\n{KEY_TWO}\n")
    return str(path)


def chat(c, messages, headers=None, **body):
    r = c.post("/v1/chat/completions", json={"model": "tiny", "messages": messages,
                                             "max_tokens": 4, **body}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


# ---- pages ---------------------------------------------------------------------------------

def test_pages_load_without_a_key_from_package_data_under_a_strict_csp(folder, tmp_path, keys):
    state = make_state(folder, tmp_path / "ws", api_key_file=keys)
    with TestClient(create_app(state)) as c:
        for path, script in (("/", "/static/chat.js"), ("/review", "/static/review.js")):
            page = c.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith(
                "text/html")
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "default-src 'none'" in csp
            assert page.headers["x-content-type-options"] == "nosniff"
            # Every script and style the page names is served by the app itself.
            refs = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
            assert script in refs and "/static/pages.css" in refs
            for ref in refs:
                r = c.get(ref)
                assert r.status_code == 200, ref
                assert r.headers["content-type"].split(";")[0] in ("text/javascript",
                                                                   "text/css")
        # Modules the scripts import are served too.
        for name in ("chat.js", "review.js"):
            for imported in re.findall(r'from "\./([^"]+)"', (STATIC_DIR / name).read_text()):
                assert c.get(f"/static/{imported}").status_code == 200
        for bad in ("/static/secret.txt", "/static/..%2Fpages.py", "/static/chat.jsx"):
            r = c.get(bad)
            assert r.status_code == 404 and "error" in r.json(), bad
        # The API behind the pages still wants the key; the tool list the chat offers doesn't.
        assert c.get("/v1/models").status_code == 401
        tools = c.get("/pages/tools").json()
        assert [t["function"]["name"] for t in tools] == ["docstring"]
        schema_paths = c.get("/openapi.json").json()["paths"]
        assert "/v1/review/next" in schema_paths and "/v1/review" in schema_paths
        assert "/" not in schema_paths and "/review" not in schema_paths


def test_every_static_file_is_served_and_none_writes_markup():
    # A file added to static/ but not to pages.STATIC would 404 in the browser.
    assert sorted(p.name for p in STATIC_DIR.iterdir()) == sorted(STATIC)
    for name in STATIC:
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        if name.endswith(".js"):
            # Model text goes in with textContent only: no markup sinks anywhere.
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                         "eval(", "new Function"):
                assert sink not in text, (name, sink)
            assert "http://" not in text and "https://" not in text  # nothing from elsewhere
        if name.endswith(".html"):
            # No inline scripts or styles (the CSP would refuse them); no CDN.
            assert re.findall(r"<script(?![^>]*\bsrc=)", text) == []
            assert "style=" not in text and "http" not in text.replace('"http-equiv', "")


def test_package_data_ships_the_static_files():
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"serve/static/*"' in pyproject


# ---- the review API ------------------------------------------------------------------------

@pytest.mark.parametrize("coin", [0.2, 0.8])
def test_a_typed_prompt_gets_two_seeded_samples_and_a_verdict_makes_a_preference_row(
        folder, tmp_path, monkeypatch, coin):
    monkeypatch.setattr(review_routes, "_rng", FixedRng(1234, coin))
    state = make_state(folder, tmp_path / "ws")
    with TestClient(create_app(state)) as c:
        r = c.get("/v1/review/next", params={"prompt": "What is a cat?", "system": "Be brief.",
                                             "max_tokens": 8, "temperature": 1.0})
        assert r.status_code == 200, r.text
        pair = r.json()
        messages = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "What is a cat?"}]
        assert pair["object"] == "review.pair" and pair["id"].startswith("review-")
        assert pair["messages"] == messages and pair["source"] == "typed"
        assert [a["label"] for a in pair["answers"]] == ["A", "B"]
        # Each answer is the served model's sample for one of the two seeds: the same request
        # through /v1/chat/completions with that seed gives the same text (as n=1 with seed+1
        # equals choice 1 of n=2 in test_serve_api).
        by_seed = {seed: chat(c, messages, max_tokens=8, temperature=1.0, seed=seed)
                   ["choices"][0]["message"]["content"] for seed in (1234, 1235)}
        shown = [a["content"] for a in pair["answers"]]
        assert shown == ([by_seed[1235], by_seed[1234]] if coin < 0.5
                         else [by_seed[1234], by_seed[1235]])
        r = c.post("/v1/review", json={"id": pair["id"], "choice": "B", "comment": "clearer"})
        assert r.status_code == 200, r.text
        assert r.json()["object"] == "review" and r.json()["choice"] == "B"
        assert r.json()["created"].endswith("Z")
        again = c.post("/v1/review", json={"id": pair["id"], "choice": "A"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "already_reviewed"
    rows = preference_rows(state.feedback.path)
    assert rows == [{"prompt": messages, "chosen": shown[1], "rejected": shown[0],
                     "id": pair["id"], "model": str(folder.resolve()),
                     "judged": r.json()["created"]}]
    assert preference_rows(state.feedback) == rows  # the store itself is accepted too


def test_ties_and_neither_are_kept_but_not_exported(folder, tmp_path):
    state = make_state(folder, tmp_path / "ws")
    verdicts = ["A", "tie", "neither", "B"]
    pairs = []
    with TestClient(create_app(state)) as c:
        for verdict in verdicts:
            pair = c.get("/v1/review/next", params={"prompt": f"Say {verdict}",
                                                    "max_tokens": 4}).json()
            assert c.post("/v1/review", json={"id": pair["id"], "choice": verdict}
                          ).status_code == 200
            pairs.append(pair)
        unjudged = c.get("/v1/review/next", params={"prompt": "later", "max_tokens": 4})
        assert unjudged.status_code == 200
    rows = preference_rows(tmp_path / "ws" / "feedback" / state.feedback.path.name)
    assert [r["id"] for r in rows] == [pairs[0]["id"], pairs[3]["id"]]
    a, b = (p["answers"] for p in (pairs[0], pairs[3]))
    assert (rows[0]["chosen"], rows[0]["rejected"]) == (a[0]["content"], a[1]["content"])
    assert (rows[1]["chosen"], rows[1]["rejected"]) == (b[1]["content"], b[0]["content"])
    assert all(r["prompt"][-1]["role"] == "user" for r in rows)
    with contextlib.closing(sqlite3.connect(state.feedback.path)) as db:
        stored = db.execute("SELECT verdict FROM preferences ORDER BY created, rowid").fetchall()
    assert [v for (v,) in stored] == [*verdicts, None]


def test_stored_prompts_are_reviewed_newest_first_once_each_and_only_by_their_key(
        folder, tmp_path, keys):
    state = make_state(folder, tmp_path / "ws", api_key_file=keys)
    older = [{"role": "user", "content": "What is a dog?"}]
    newer = [{"role": "system", "content": "Be kind."},
             {"role": "user", "content": [{"type": "text", "text": "Hello! "},
                                          {"type": "text", "text": "How are you?"}]}]
    with TestClient(create_app(state)) as c:
        chat(c, older, headers=ONE)
        first = chat(c, newer, headers=ONE)
        chat(c, [{"role": "user", "content": "What is a cat?"}], headers=TWO)
        got = []
        for _ in range(2):
            r = c.get("/v1/review/next", params={"max_tokens": 4}, headers=ONE)
            assert r.status_code == 200, r.text
            assert r.json()["source"] == "stored"
            got.append(r.json()["messages"])
        # Text parts are joined: the prompt as the model read it.
        assert got == [[newer[0], {"role": "user", "content": "Hello! How are you?"}], older]
        # Each stored prompt makes one pair; key two's prompt is not key one's to see.
        r = c.get("/v1/review/next", headers=ONE)
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_prompt_to_review"
        r = c.get("/v1/review/next", params={"max_tokens": 4}, headers=TWO)
        assert r.json()["messages"] == [{"role": "user", "content": "What is a cat?"}]
    with contextlib.closing(sqlite3.connect(state.feedback.path)) as db:
        sources = [s for (s,) in db.execute("SELECT source FROM preferences ORDER BY rowid")]
    assert sources[0] == first["id"] and len(set(sources)) == 3


def test_requests_with_tools_are_not_offered_for_review(tmp_path):
    folder = wide_model(tmp_path / "wide")
    engine = ScriptedEngine(lambda req: "An answer.")
    state = make_state(folder, tmp_path / "ws", engine=engine, max_tokens=64)
    tools = [{"type": "function", "function": {"name": "docstring", "parameters": {
        "type": "object", "properties": {"name": {"type": "string"}}}}}]
    with TestClient(create_app(state)) as c:
        r = c.post("/v1/chat/completions", json={
            "model": "wide", "messages": [{"role": "user", "content": "What does len do?"}],
            "tools": tools})
        assert r.status_code == 200, r.text
        r = c.get("/v1/review/next")
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_prompt_to_review"


def test_twin_answers_are_sampled_again_before_a_reviewer_sees_them(tmp_path):
    folder = wide_model(tmp_path / "wide")
    twins = ScriptedEngine(lambda req: "Always this.")
    state = make_state(folder, tmp_path / "ws", engine=twins, max_tokens=64)
    with TestClient(create_app(state)) as c:
        pair = c.get("/v1/review/next", params={"prompt": "Hi"}).json()
    # Three tries of two seeds each, all alike: shown anyway (the reviewer can call a tie).
    assert len(twins.requests) == 2 * review_routes.ATTEMPTS
    assert [a["content"] for a in pair["answers"]] == ["Always this.", "Always this."]
    seeds = [r.params.seed for r in twins.requests]
    assert all(b == a + 1 for a, b in zip(seeds[::2], seeds[1::2]))

    # Samples that differ on the first try are shown at once.
    differ = ScriptedEngine(lambda req: f"Seed {req.params.seed}.")
    state = make_state(folder, tmp_path / "ws2", engine=differ, max_tokens=64)
    with TestClient(create_app(state)) as c:
        pair = c.get("/v1/review/next", params={"prompt": "Hi", "temperature": 0.5}).json()
    assert len(differ.requests) == 2
    assert all(r.params.temperature == 0.5 for r in differ.requests)
    assert sorted(a["content"] for a in pair["answers"]) == sorted(
        f"Seed {r.params.seed}." for r in differ.requests)


def test_keys_guard_the_review_api_and_pairs_belong_to_their_key(folder, tmp_path, keys):
    state = make_state(folder, tmp_path / "ws", api_key_file=keys)
    with TestClient(create_app(state)) as c:
        assert c.get("/v1/review/next", params={"prompt": "Hi"}).status_code == 401
        r = c.get("/v1/review/next", params={"prompt": "Hi", "max_tokens": 4}, headers=ONE)
        assert r.status_code == 200, r.text
        verdict = {"id": r.json()["id"], "choice": "A"}
        assert c.post("/v1/review", json=verdict).status_code == 401
        other = c.post("/v1/review", json=verdict, headers=TWO)
        assert other.status_code == 404 and other.json()["error"]["code"] == "review_not_found"
        assert c.post("/v1/review", json=verdict, headers=ONE).status_code == 200


@pytest.mark.parametrize("method, params, body, status, param", [
    ("POST", None, {}, 400, "id"),
    ("POST", None, {"id": "PAIR"}, 400, "choice"),
    ("POST", None, {"id": "PAIR", "choice": "C"}, 400, "choice"),
    ("POST", None, {"id": "PAIR", "choice": "a"}, 400, "choice"),
    ("POST", None, {"id": "PAIR", "choice": "A", "mood": "sure"}, 400, "mood"),
    ("POST", None, {"id": "PAIR", "choice": "A", "comment": "\ud800"}, 400, "comment"),
    ("POST", None, {"id": "review-never", "choice": "A"}, 404, "id"),
    ("POST", None, {"id": "", "choice": "A"}, 400, "id"),
    ("POST", None, ["PAIR", "A"], 400, None),
    ("GET", {"prompt": "Hi", "temperature": 0}, None, 400, "temperature"),
    ("GET", {"prompt": "Hi", "temperature": "hot"}, None, 400, "temperature"),
    ("GET", {"prompt": "Hi", "temperature": 3}, None, 400, "temperature"),
    ("GET", {"prompt": "Hi", "max_tokens": 0}, None, 400, "max_tokens"),
    ("GET", {"prompt": "Hi", "max_tokens": 10_000}, None, 400, "max_tokens"),
    ("GET", {"prompt": "cat " * 200}, None, 413, "prompt"),
    ("GET", {"prompt": "x" * 20_001}, None, 400, "prompt"),
])
def test_bad_review_requests_get_openai_shaped_errors(folder, tmp_path, method, params, body,
                                                      status, param):
    state = make_state(folder, tmp_path / "ws")
    with TestClient(create_app(state)) as c:
        pair = c.get("/v1/review/next", params={"prompt": "Hi", "max_tokens": 4}).json()
        if method == "POST":
            if isinstance(body, dict) and body.get("id") == "PAIR":
                body = {**body, "id": pair["id"]}
            # Encoded here: json.dumps escapes a lone surrogate as JSON allows ("\\ud800").
            r = c.post("/v1/review", content=json.dumps(body),
                       headers={"Content-Type": "application/json"})
        else:
            r = c.get("/v1/review/next", params=params)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param and error["type"] == "invalid_request_error"
        # The pair is still open after every refusal.
        assert c.post("/v1/review", json={"id": pair["id"], "choice": "tie"}).status_code == 200


def test_invalid_json_is_a_400(folder, tmp_path):
    state = make_state(folder, tmp_path / "ws")
    with TestClient(create_app(state)) as c:
        r = c.post("/v1/review", content=b"{not json", headers={"Content-Type":
                                                                "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_review_is_off_without_stored_responses(folder, tmp_path):
    state = make_state(folder, tmp_path / "ws", store_responses=False)
    with TestClient(create_app(state)) as c:
        for r in (c.get("/v1/review/next", params={"prompt": "Hi"}),
                  c.post("/v1/review", json={"id": "review-x", "choice": "A"})):
            assert r.status_code == 404 and r.json()["error"]["code"] == "review_disabled"
    assert not (tmp_path / "ws" / "feedback").exists()


def test_preference_rows_of_a_missing_store_is_one_clear_error(tmp_path):
    with pytest.raises(LmforgeError, match="no feedback store") as e:
        preference_rows(tmp_path / "nowhere.sqlite")
    assert "lmforge serve" in (e.value.hint or "")


def test_the_browser_test_skips_without_chromium_and_fails_so_under_ci(tmp_path):
    """`pytest -m browser` on a machine without chromium: a skip that says what to install;
    with CI=true the same run fails (tests/conftest.py), so CI cannot pass it unrun."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "LMFORGE_CHROMIUM": str(tmp_path / "no-chromium")}
    env.pop("CI", None)
    command = [sys.executable, "-m", "pytest", "tests/test_serve_pages_browser.py",
               "-m", "browser", "-rs", "-q", "-p", "no:cacheprovider",
               f"--basetemp={tmp_path / 'run'}"]
    clone = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                           timeout=600)
    assert clone.returncode == 0, clone.stdout + clone.stderr
    assert "2 skipped" in clone.stdout
    assert "system package absent: chromium (Debian: apt-get install -y chromium " \
           "chromium-driver)" in clone.stdout
    ci = subprocess.run(command, cwd=root, env={**env, "CI": "true"}, capture_output=True,
                        text=True, timeout=600)
    assert ci.returncode != 0 and "2 error" in ci.stdout, ci.stdout + ci.stderr
    assert "CI=true: this test would skip, and CI must run it" in ci.stdout
