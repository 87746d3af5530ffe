"""POST /v1/feedback: ratings, preferred answers and comments about answers this server gave,
stored durably in <workspace>/feedback/<model>.sqlite (WAL) next to the answers they are
about, and refused (404) for ids the server never gave or gave to another key."""

from __future__ import annotations

import sqlite3

import pytest
from fastapi.testclient import TestClient

from lmforge.serve.app import create_app
from lmforge.serve.feedback import FeedbackStore, store_path
from serve_helpers import make_state, tiny_model

MESSAGES = [{"role": "user", "content": "What is a cat?"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-feedback")
    tiny_model(root / "tiny")
    return root / "tiny"


def ask(c, headers=None, **body):
    r = c.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES,
                                             "max_tokens": 4, **body}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_ratings_and_preferences_are_stored_with_their_answer(folder, tmp_path):
    state = make_state(folder, tmp_path / "ws")
    with TestClient(create_app(state)) as c:
        answer = ask(c, n=2, seed=1)
        r = c.post("/v1/feedback", json={"response_id": answer["id"], "rating": 1})
        assert r.status_code == 200, r.text
        assert r.json()["object"] == "feedback" and r.json()["response_id"] == answer["id"]
        assert c.post("/v1/feedback", json={
            "response_id": answer["id"], "choice": 1, "rating": -1,
            "preferred": "A cat is a small furry animal.", "comment": "too random"}
        ).status_code == 200
        with c.stream("POST", "/v1/chat/completions", json={
                "model": "tiny", "messages": MESSAGES, "max_tokens": 3, "stream": True}) as s:
            # Read to [DONE]: the answer is stored as its stream ends. (Leaving after the first
            # chunk raced the store against the feedback post on a loaded machine.)
            lines = [line for line in s.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        streamed_id = next(line for line in lines if line.startswith("data: {"))
        streamed_id = streamed_id.split('"id": "')[1].split('"')[0]
        assert c.post("/v1/feedback", json={"response_id": streamed_id,
                                            "comment": "ok"}).status_code == 200
    path = store_path(tmp_path / "ws", str(folder.resolve()))
    assert path.parent == tmp_path / "ws" / "feedback" and path.is_file()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = FeedbackStore(path, "x").feedback_rows()
    assert [(r["response_id"], r["choice"], r["rating"]) for r in rows] == [
        (answer["id"], 0, 1), (answer["id"], 1, -1), (streamed_id, 0, None)]
    first, second, third = rows
    assert first["request"]["messages"] == MESSAGES and first["model"] == str(folder.resolve())
    assert [ch["text"] for ch in first["choices"]] == [
        ch["message"]["content"] for ch in answer["choices"]]
    assert second["preferred"] == "A cat is a small furry animal." \
        and second["comment"] == "too random"
    assert third["comment"] == "ok" and third["request"]["stream"] is True
    assert all(r["created"].endswith("Z") for r in rows)


@pytest.mark.parametrize("body, status, param", [
    ({"response_id": "chatcmpl-never", "rating": 1}, 404, "response_id"),
    ({}, 400, "rating"),  # nothing said
    ({"rating": 0}, 400, "rating"),
    ({"rating": 5}, 400, "rating"),
    ({"rating": 1, "choice": 3}, 400, "choice"),
    ({"rating": 1, "mood": "happy"}, 400, "mood"),
])
def test_bad_feedback_is_refused(folder, tmp_path, body, status, param):
    state = make_state(folder, tmp_path / "ws")
    with TestClient(create_app(state)) as c:
        answer = ask(c)
        r = c.post("/v1/feedback", json={"response_id": answer["id"], **body})
        assert r.status_code == status, r.text
        assert r.json()["error"]["param"] == param
        if status == 404:
            assert r.json()["error"]["code"] == "response_not_found"


def test_another_key_s_answers_are_unknown(folder, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-one-0123456789\nsk-two-0123456789\n")
    state = make_state(folder, tmp_path / "ws", api_key_file=str(keys))
    one = {"Authorization": "Bearer sk-one-0123456789"}
    two = {"Authorization": "Bearer sk-two-0123456789"}
    with TestClient(create_app(state)) as c:
        answer = ask(c, headers=one)
        body = {"response_id": answer["id"], "rating": 1}
        assert c.post("/v1/feedback", json=body, headers=two).status_code == 404
        assert c.post("/v1/feedback", json=body).status_code == 401
        assert c.post("/v1/feedback", json=body, headers=one).status_code == 200


def test_without_stored_responses_nothing_is_written_and_feedback_is_off(folder, tmp_path):
    state = make_state(folder, tmp_path / "ws", store_responses=False)
    with TestClient(create_app(state)) as c:
        answer = ask(c)
        r = c.post("/v1/feedback", json={"response_id": answer["id"], "rating": 1})
        assert r.status_code == 404 and r.json()["error"]["code"] == "feedback_disabled"
    assert not (tmp_path / "ws" / "feedback").exists()
