"""The served artifact: loaded by id, name or alias with its checksums verified, never
written; a deprecated model answers with Deprecation/Sunset/Link headers (RFC 9745, 8594),
a retired one with 410 naming its successor, as the registry says while the server runs."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from lmforge.errors import LmforgeError
from lmforge.model.hf import import_hf
from lmforge.registry import Workspace
from lmforge.serve.app import create_app
from lmforge.serve.model_state import lifecycle_from
from serve_helpers import make_state, tiny_model

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


@pytest.fixture
def registered(tmp_path):
    tiny_model(tmp_path / "tiny")
    ws = Workspace.open(tmp_path / "ws")
    art = import_hf(ws, tmp_path / "tiny", name="tiny-chat")
    ws.set_alias("production", art.id)
    return ws, art


def snapshot(folder):
    """Every file's bytes hash and modification time, and the folder's own mtime."""
    files = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
             for p in sorted(folder.iterdir())}
    return files, folder.stat().st_mtime_ns


def test_a_registered_model_is_served_by_its_names_and_never_written(registered):
    ws, art = registered
    before = snapshot(art.path)
    state = make_state("production", ws.root)
    assert state.served.id == art.id and state.served.registered
    with TestClient(create_app(state)) as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["production"]
        for name in ("production", art.id, "tiny-chat"):
            r = c.post("/v1/chat/completions", json={"model": name, **CHAT})
            assert r.status_code == 200, r.text
            assert "deprecation" not in r.headers
        c.post("/v1/feedback", json={"response_id": r.json()["id"], "rating": 1})
    assert snapshot(art.path) == before
    assert (ws.root / "feedback").is_dir()  # the record lives beside, not inside


def test_a_tampered_artifact_is_refused(registered):
    ws, art = registered
    weights = art.path / "model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(LmforgeError, match="sha256|checksum|changed|modified"):
        make_state(art.id, ws.root)


def test_deprecation_and_retirement_reach_a_running_server(registered):
    ws, art = registered
    state = make_state(art.id, ws.root, state_refresh_s=0)  # re-read on every request
    with TestClient(create_app(state)) as c:
        assert "deprecation" not in c.get("/v1/models").headers
        ws.set_state(art.id, "deprecated", "a better model exists", force=True)
        moved = datetime.fromisoformat(ws.history(art.id)[-1].time.replace("Z", "+00:00"))
        r = c.post("/v1/chat/completions", json={"model": art.id, **CHAT})
        assert r.status_code == 200
        assert r.headers["deprecation"] == f"@{int(moved.timestamp())}"
        assert "sunset" not in r.headers  # the registry holds no sunset date yet
        assert c.get("/ready").status_code == 200
        ws.set_state(art.id, "retired", "sunset reached")
        r = c.post("/v1/chat/completions", json={"model": art.id, **CHAT})
        assert r.status_code == 410 and r.json()["error"]["code"] == "model_retired"
        assert r.headers["deprecation"].startswith("@")
        assert c.post("/v1/completions", json={"model": art.id, "prompt": "x"}
                      ).status_code == 410
        models = c.get("/v1/models")  # still listed, still explained
        assert models.status_code == 200 and "deprecation" in models.headers
        assert c.get("/ready").status_code == 503


def test_manifest_metadata_gives_sunset_and_successor(registered):
    ws, art = registered
    state = make_state(art.id, ws.root, state_refresh_s=0)
    state.served.manifest = {**state.served.manifest, "deprecated": "2026-01-15",
                             "sunset": "2027-03-01", "successor": "tiny-chat-v2"}
    with TestClient(create_app(state)) as c:
        r = c.post("/v1/chat/completions", json={"model": art.id, **CHAT})
        assert r.status_code == 200
        assert r.headers["deprecation"] == "@" + str(int(datetime(
            2026, 1, 15, tzinfo=timezone.utc).timestamp()))
        assert r.headers["sunset"] == "Mon, 01 Mar 2027 00:00:00 GMT"
        assert r.headers["link"] == '</v1/models/tiny-chat-v2>; rel="successor-version"'
        state.served.manifest["retired"] = True
        r = c.post("/v1/chat/completions", json={"model": art.id, **CHAT})
        assert r.status_code == 410 and "Use tiny-chat-v2 instead" in \
            r.json()["error"]["message"]


def test_lifecycle_from_the_record():
    assert lifecycle_from(None, [], {}).headers() == {}
    assert lifecycle_from("deployed", [], {}).headers() == {}
    event = SimpleNamespace(to_state="deprecated", time="2026-05-01T00:00:00.000000Z",
                            sunset="2026-09-01", successor="v2")  # as issue 15 may record
    life = lifecycle_from("deprecated", [event], {})
    assert life.deprecated and not life.retired
    assert life.headers() == {"Deprecation": "@1777593600",
                              "Sunset": "Tue, 01 Sep 2026 00:00:00 GMT",
                              "Link": '</v1/models/v2>; rel="successor-version"'}
    retired = lifecycle_from("archived", [event], {})
    assert retired.retired and retired.refusal("m").status == 410
    assert lifecycle_from("approved", [], {}).refusal("m") is None
    # unparseable dates are left out rather than guessed
    odd = lifecycle_from(None, [], {"deprecated": True, "sunset": "soon"})
    assert odd.headers() == {"Deprecation": "@0"}
