"""The end of a model's life in the record: every move an event (who, when, why, command),
deprecation with a sunset and successor that a server announces, retirement with its report,
archive and restore bit-identical, `registry verify`, and a record that survives concurrent
writers and crashes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lmforge.errors import LmforgeError
from lmforge.lifecycle import retirement
from lmforge.registry import Artifact, Workspace
from lmforge.registry import archive as archive_mod
from lmforge.registry.archive import archive, read_index, restore
from lmforge.registry.retire import deprecate, parse_sunset
from lmforge.registry.verify import verify
from lmforge.serve.feedback import FeedbackStore, store_path

FUTURE = (datetime.now(timezone.utc).date() + timedelta(days=90)).isoformat()


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    with Workspace.open(tmp_path / "ws") as w:
        yield w


def add(ws: Workspace, kind: str, files: dict[str, bytes], **kw) -> Artifact:
    with ws.staging() as d:
        for rel, data in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)
        return ws.register(d, kind=kind, stage=kw.pop("stage", kind), **kw)


def model(ws: Workspace, data: bytes = b"weights", **kw) -> Artifact:
    return add(ws, "model", {"model.safetensors": data, "config.json": b"{}",
                             "sub/tokenizer.json": data[::-1]},
               state=kw.pop("state", "pretrained"), **kw)


def approved(ws: Workspace, data: bytes, deployed: bool = False) -> Artifact:
    m = model(ws, data, name=data.decode(errors="replace")[:8])
    for kind in ("eval-report", "redteam-report"):
        add(ws, kind, {"report.json": m.id.encode()}, parents={"model": m.id},
            metrics={"gates_passed": True, "score": 0.5})
    ws.set_state(m.id, "approved", "gates passed")
    if deployed:
        ws.set_state(m.id, "deployed", "in production")
    return m


def retired_pair(ws: Workspace) -> tuple[Artifact, Artifact]:
    old, new = approved(ws, b"old-weights", deployed=True), approved(ws, b"new-weights")
    deprecate(ws, old.id, sunset=FUTURE, successor=new.id, reason="superseded by new")
    retirement.retire(ws, old.id)
    return old, new


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def flip_byte(path: Path, at: int = 0) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


# --- part 1: every move is an event --------------------------------------------------------

def test_every_move_records_who_when_why_and_the_command(ws, monkeypatch):
    monkeypatch.setenv("LMFORGE_ACTOR", "ci-bot@build-7")
    monkeypatch.setattr(sys, "argv", ["lmforge", "registry", "promote", "m", "--to", "x"])
    m = model(ws)
    event = ws.set_state(m.id, "approved", "release review", force=True)
    history = ws.history(m.id)
    assert [e.to_state for e in history] == ["pretrained", "approved"]
    for e in history:
        assert e.actor == "ci-bot@build-7" and e.time.endswith("Z")
        assert e.command == "lmforge registry promote m --to x"
    assert history[-1] == event and event.reason == "release review" and event.forced
    assert event.note.startswith(f"forced past: {m.id} has no eval-report")


def test_without_override_the_actor_is_user_at_host(ws):
    import socket

    m = model(ws)
    assert ws.history(m.id)[0].actor.endswith("@" + socket.gethostname())


def test_illegal_moves_name_the_rule_and_leave_no_event(ws):
    m = model(ws)
    with pytest.raises(LmforgeError, match=r"cannot move from pretrained to retired \(from "
                                           r"pretrained it can move to: tuned, approved\)"):
        ws.set_state(m.id, "retired", "done with it")
    assert ws.state_of(m.id) == "pretrained" and len(ws.history(m.id)) == 1


def test_cli_promote_to_and_force_visible_in_show(cli):
    from lmforge.registry import Workspace as W

    with W.open(cli.workspace) as w:
        m = model(w)
    code, _, err = cli("registry", "promote", m.id, "--to", "deployed", "--reason", "demo")
    assert code == 2 and "cannot move from pretrained to deployed" in err
    assert "--force" in err
    code, out, err = cli("registry", "promote", m.id, "--to", "deployed", "--reason", "demo",
                         "--force")
    assert code == 0, err
    assert "(forced)" in out
    code, out, _ = cli("registry", "show", m.id)
    assert code == 0 and "FORCED" in out and "forced past" in out
    assert f"lmforge registry promote {m.id} --to deployed --reason demo --force" in out
    code, _, err = cli("registry", "promote", m.id, "approved", "--to", "deployed",
                       "--reason", "x")
    assert code == 2 and "two states given" in err


# --- part 4: deprecation, retirement, archive ----------------------------------------------

@pytest.mark.parametrize("sunset, message", [
    ("2027/03/01", "not an ISO date"), ("next spring", "not an ISO date"),
    ("2027-02-30", "not a date"), ("2001-01-01", "not in the future")])
def test_sunset_must_be_a_future_iso_date(sunset, message):
    with pytest.raises(LmforgeError, match=message) as e:
        parse_sunset(sunset)
    assert "YYYY-MM-DD" in e.value.hint or "later date" in e.value.hint


def test_deprecation_checks_successor_and_reason(ws):
    old, new = approved(ws, b"old", deployed=True), approved(ws, b"new")
    tok = add(ws, "tokenizer", {"tokenizer.json": b"{}"})
    with pytest.raises(LmforgeError, match="needs a reason"):
        deprecate(ws, old.id, sunset=FUTURE, successor=new.id, reason=" ")
    with pytest.raises(LmforgeError, match="successor must be a model in the registry: "
                                           "no model artifact"):
        deprecate(ws, old.id, sunset=FUTURE, successor="model-nothere", reason="r")
    with pytest.raises(LmforgeError, match="is a tokenizer, not a model"):
        deprecate(ws, old.id, sunset=FUTURE, successor=tok.id, reason="r")
    with pytest.raises(LmforgeError, match="cannot succeed itself"):
        deprecate(ws, old.id, sunset=FUTURE, successor=old.id, reason="r")
    assert ws.state_of(old.id) == "deployed"
    event = deprecate(ws, old.id, sunset=FUTURE, successor=new.id, reason="superseded")
    assert (event.sunset, event.successor, event.to_state) == (FUTURE, new.id, "deprecated")
    assert ws.history(old.id)[-1] == event
    third = approved(ws, b"third")
    with pytest.raises(LmforgeError, match="is deprecated itself"):
        deprecate(ws, third.id, sunset=FUTURE, successor=old.id, reason="r")


def test_ls_and_show_mark_the_deprecation(cli):
    with Workspace.open(cli.workspace) as w:
        old, new = approved(w, b"old", deployed=True), approved(w, b"new")
    code, out, err = cli("registry", "deprecate", old.id, "--sunset", FUTURE, "--successor",
                         new.id[:12], "--reason", "a tuned successor")
    assert code == 0, err
    code, out, _ = cli("registry", "ls", "--kind", "model")
    row = next(line for line in out.splitlines() if old.id in line)
    assert "deprecated" in row and f"sunset {FUTURE} -> {new.id}" in row
    assert "sunset" not in next(line for line in out.splitlines()
                                if line.strip().startswith(new.id))
    code, out, _ = cli("registry", "ls", "--json")
    rows = {json.loads(line)["id"]: json.loads(line) for line in out.splitlines()}
    assert rows[old.id]["sunset"] == FUTURE and rows[old.id]["successor"] == new.id
    assert "sunset" not in rows[new.id]
    code, out, _ = cli("registry", "show", old.id)
    assert f"sunset {FUTURE} -> {new.id}" in out and "a tuned successor" in out
    code, _, err = cli("registry", "deprecate", new.id, "--sunset", "2001-01-01",
                       "--successor", old.id, "--reason", "x")
    assert code == 2 and "not in the future" in err and "Traceback" not in err


def test_a_server_loading_a_deprecated_model_sends_the_headers(tmp_path):
    from fastapi.testclient import TestClient

    from lmforge.model.hf import import_hf
    from lmforge.serve.app import create_app
    from serve_helpers import make_state, tiny_model

    tiny_model(tmp_path / "tiny")
    ws = Workspace.open(tmp_path / "ws")
    old = import_hf(ws, tmp_path / "tiny", name="tiny-chat")
    new = approved(ws, b"successor")
    ws.set_state(old.id, "approved", "demo", force=True)
    deprecate(ws, old.id, sunset=FUTURE, successor=new.id, reason="superseded")
    moved = datetime.fromisoformat(ws.history(old.id)[-1].time.replace("Z", "+00:00"))
    state = make_state(old.id, ws.root, state_refresh_s=0)  # loaded after deprecation
    chat = {"model": old.id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with TestClient(create_app(state)) as c:
        r = c.post("/v1/chat/completions", json=chat)
        assert r.status_code == 200, r.text
        assert r.headers["deprecation"] == f"@{int(moved.timestamp())}"
        sunset = datetime.fromisoformat(FUTURE).replace(tzinfo=timezone.utc)
        assert r.headers["sunset"] == sunset.strftime("%a, %d %b %Y 00:00:00 GMT")
        assert r.headers["link"] == f'</v1/models/{new.id}>; rel="successor-version"'
        retirement.retire(ws, old.id)
        r = c.post("/v1/chat/completions", json=chat)
        assert r.status_code == 410 and f"Use {new.id} instead" in r.json()["error"]["message"]
    assert ws.resolve(old.id).id == old.id  # the files stay, still verified


def test_retire_needs_a_deprecation_or_a_reason(ws):
    m = approved(ws, b"m", deployed=True)
    with pytest.raises(LmforgeError, match="never deprecated") as e:
        retirement.retire(ws, m.id)
    assert "deprecate it first" in e.value.hint
    with pytest.raises(LmforgeError, match="cannot move from deployed to retired"):
        retirement.retire(ws, m.id, reason="incident")
    event, report = retirement.retire(ws, m.id, reason="incident", force=True)
    assert event is not None and event.forced and report is not None


# --- part 9: the retirement report ---------------------------------------------------------

def serve_some(ws: Workspace, model_id: str) -> None:
    """What a server would have stored for the model: 3 answers, 4 feedback rows, 3 pairs."""
    store = FeedbackStore(store_path(ws.root, model_id), model_id)
    usage = [(10, 5), (20, 7), (3, 1)]
    for i, (p, c) in enumerate(usage):
        store.add_response(f"chatcmpl-{i}", "chat.completions" if i < 2 else "completions",
                           f"key{i % 2}", {"messages": []}, [{"index": 0, "text": "a"}],
                           {"prompt_tokens": p, "completion_tokens": c,
                            "total_tokens": p + c})
    store.add_feedback("chatcmpl-0", 0, 1, None, "great", None)
    store.add_feedback("chatcmpl-1", 0, -1, "a better answer", None, None)
    store.add_feedback("chatcmpl-1", 0, -1, None, "  ", None)
    store.add_feedback("chatcmpl-2", 0, None, None, "why so short?", None)
    with store.connection() as conn:
        for i, verdict in enumerate(("A", "B", None)):
            conn.execute("INSERT INTO preferences (id, model, created, messages_json, "
                         "answers_json, settings_json, verdict) VALUES (?,?,?,?,?,?,?)",
                         (f"review-{i}", model_id, "2026-01-01T00:00:00Z", "[]", "[]", "{}",
                          verdict))
    store.close()


def test_retirement_report_tells_the_service_life(ws):
    old, new = approved(ws, b"old", deployed=True), approved(ws, b"new")
    serve_some(ws, old.id)
    later = add(ws, "eval-report", {"report.json": b"later"}, parents={"model": old.id},
                metrics={"gates_passed": False, "score": 0.25})
    deprecate(ws, old.id, sunset=FUTURE, successor=new.id, reason="users preferred new")
    store = store_path(ws.root, old.id)
    before = store.read_bytes()
    event, art = retirement.retire(ws, old.id)
    assert event is not None and art is not None and art.kind == "retirement-report"
    assert art.parents == {"model": old.id}
    assert store.read_bytes() == before  # opened read-only
    report = retirement.load_report(art)
    svc = report["service"]
    assert (svc["requests"], svc["prompt_tokens"], svc["completion_tokens"]) == (3, 33, 13)
    assert svc["by_endpoint"] == {"chat.completions": 2, "completions": 1}
    assert svc["api_keys"] == 2
    assert svc["feedback"] == {"entries": 4, "answers_rated": 3, "thumbs_up": 1,
                               "thumbs_down": 2, "preferred_answers": 1, "comments": 2}
    assert svc["review_pairs"] == {"shown": 3, "A": 1, "B": 1, "unjudged": 1}
    ret = report["retirement"]
    assert ret["successor"]["id"] == new.id and ret["deprecation"]["sunset"] == FUTURE
    assert ret["deprecation"]["reason"] == "users preferred new"
    assert "users preferred new" in ret["reason"] and ret["actor"]
    kinds = [(r["kind"], r["gates_passed"]) for r in report["reports"]]
    assert kinds == [("eval-report", True), ("redteam-report", True), ("eval-report", False)]
    assert report["reports"][-1]["id"] == later.id
    assert [h["to"] for h in report["history"]] == ["pretrained", "approved", "deployed",
                                                    "deprecated", "retired"]
    md = art.file("report.md").read_text()
    assert "Requests: 3" in md and "1 thumbs up, 2 thumbs down" in md and new.id in md
    assert "FAILED" in md and "users preferred new" in md
    assert retirement.report_of(ws, old.id).id == art.id
    assert art.metrics == {"requests": 3, "prompt_tokens": 33, "completion_tokens": 13,
                           "feedback": 4}


def test_a_model_never_served_says_so_and_a_crash_before_the_report_is_finished(ws,
                                                                              monkeypatch):
    old, new = approved(ws, b"old", deployed=True), approved(ws, b"new")
    deprecate(ws, old.id, sunset=FUTURE, successor=new.id, reason="r")

    def crash(*_a, **_k):
        raise RuntimeError("killed")

    monkeypatch.setattr(retirement, "write_report", crash)
    with pytest.raises(RuntimeError):
        retirement.retire(ws, old.id)
    monkeypatch.undo()
    assert ws.state_of(old.id) == "retired" and retirement.report_of(ws, old.id) is None
    event, art = retirement.retire(ws, old.id)  # run again: only the report is written
    assert event is None and art is not None
    assert "never served" in retirement.load_report(art)["service"]["note"]
    assert retirement.retire(ws, old.id) == (None, None)


def test_show_points_at_the_retirement_report(cli):
    with Workspace.open(cli.workspace) as w:
        old, _ = retired_pair(w)
        report = retirement.report_of(w, old.id)
    code, out, _ = cli("registry", "show", old.id)
    assert code == 0 and f"retirement report  {report.id}" in out


# --- archive and restore -------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["zst", "gz"])
def test_archive_restore_round_trip_is_bit_identical(ws, tmp_path, monkeypatch, compression):
    monkeypatch.setattr(archive_mod, "compression", lambda: compression)
    old, _ = retired_pair(ws)
    before = digests(old.path)
    done = archive(ws, old.id, tmp_path / "cold")
    assert done.bundle.name == f"{old.id}.tar.{compression}" and done.event is not None
    assert ws.state_of(old.id) == "archived" and not old.path.exists()
    assert not list(ws.staging_dir.iterdir())
    index = read_index(done.bundle)
    assert index["bundle_sha256"] == hashlib.sha256(done.bundle.read_bytes()).hexdigest()
    report = retirement.report_of(ws, old.id)
    assert set(index["files"]) == {f"{old.id}/{rel}" for rel in before} | {
        "record/record.json", "record/retirement-report/report.json",
        "record/retirement-report/report.md"}
    with pytest.raises(LmforgeError, match="is archived: its files are in") as e:
        ws.resolve(old.id)
    assert "lmforge registry restore" in e.value.hint
    assert ws.archive_of(old.id)["bundle"] == str(done.bundle)
    assert verify(ws).ok
    back = restore(ws, done.bundle)
    assert back.event.from_state == "archived" and ws.state_of(old.id) == "retired"
    assert digests(old.path) == before
    assert ws.resolve(old.id).id == old.id and ws.archive_of(old.id) is None
    assert report.path.is_dir() and verify(ws).ok


def test_a_corrupted_bundle_is_refused_and_the_workspace_unchanged(ws, tmp_path):
    old, _ = retired_pair(ws)
    done = archive(ws, old.id, tmp_path / "cold")
    db_before = (ws.state_of(old.id), len(ws.history(old.id)))
    flip_byte(done.bundle, at=done.bundle.stat().st_size // 2)
    with pytest.raises(LmforgeError, match="is corrupted: sha256") as e:
        restore(ws, done.bundle)
    assert "workspace was not changed" in e.value.hint
    assert (ws.state_of(old.id), len(ws.history(old.id))) == db_before
    assert not old.path.exists() and not list(ws.staging_dir.iterdir())
    audit = verify(ws, [old.id])
    assert [d.problem for d in audit.drift] == ["bundle"]


def test_a_bundle_whose_index_was_rewritten_is_still_refused(ws, tmp_path):
    """A member changed and the bundle's sha256 recomputed: the per-file sums catch it."""
    old, _ = retired_pair(ws)
    done = archive(ws, old.id, tmp_path / "cold")
    index = json.loads(done.index.read_text())
    forged = tmp_path / "forged.tar"
    with tarfile.open(forged, "w") as tar:
        for name in index["files"]:
            data = b"tampered" if name.endswith("model.safetensors") else b"x"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = gzip.compress(forged.read_bytes())
    os.chmod(done.bundle, 0o644)
    done.bundle.write_bytes(raw)
    index["bundle_sha256"] = hashlib.sha256(raw).hexdigest()
    index["compression"] = "gz"
    os.chmod(done.index, 0o644)
    done.index.write_text(json.dumps(index))
    with pytest.raises(LmforgeError, match="does not match its checksum"):
        restore(ws, done.bundle)
    assert ws.state_of(old.id) == "archived" and not old.path.exists()
    assert not list(ws.staging_dir.iterdir())


def test_archive_refuses_models_in_service_and_drifted_files(ws, tmp_path):
    m = approved(ws, b"live", deployed=True)
    with pytest.raises(LmforgeError, match="only retired models are archived") as e:
        archive(ws, m.id, tmp_path / "cold")
    assert "retire it first" in e.value.hint
    old, _ = retired_pair(ws)
    flip_byte(old.path / "config.json")
    with pytest.raises(LmforgeError, match="config.json is corrupted"):
        archive(ws, old.id, tmp_path / "cold")
    assert ws.state_of(old.id) == "retired" and old.path.is_dir()
    with pytest.raises(LmforgeError, match="inside the workspace"):
        archive(ws, old.id, ws.artifacts_dir / "cold")


def test_cli_archive_show_restore(cli, tmp_path):
    with Workspace.open(cli.workspace) as w:
        old, _ = retired_pair(w)
    cold = tmp_path / "cold"
    code, out, err = cli("registry", "archive", old.id, "--to", cold)
    assert code == 0, err
    assert f"{old.id}.tar.zst" in out and "lmforge registry restore" in out
    code, out, err = cli("registry", "show", old.id)
    assert code == 0, err
    assert "archived in" in out and "model.safetensors" in out and "retirement report" in out
    code, out, err = cli("registry", "restore", cold / f"{old.id}.archive.json")
    assert code == 0, err
    assert "archived -> retired" in out
    code, _, err = cli("registry", "restore", cold / f"{old.id}.tar.zst")
    assert code == 2 and "is retired, not archived" in err


# --- part 10: verify -----------------------------------------------------------------------

def test_verify_catches_a_single_flipped_byte_in_any_artifact_file(ws):
    arts = [model(ws, b"m" * 300), add(ws, "dataset", {"a.txt": b"alpha", "d/b.bin": b"\0" * 50}),
            add(ws, "tokenizer", {"tokenizer.json": b"{}"})]
    assert verify(ws).ok
    for art in arts:
        for rel in [*art.files, "manifest.json"]:
            path = art.path / rel
            for at in (0, path.stat().st_size - 1):
                original = path.read_bytes()
                flip_byte(path, at)
                audit = verify(ws)
                assert not audit.ok and {d.artifact_id for d in audit.drift} == {art.id}
                assert any(d.path == rel for d in audit.drift), (rel, audit.drift)
                path.write_bytes(original)
                assert verify(ws).ok


def test_verify_reports_every_drift_and_the_cli_exits_1(cli):
    with Workspace.open(cli.workspace) as w:
        a = model(w)
        b = add(w, "dataset", {"a.txt": b"alpha"})
        c = add(w, "dataset", {"c.txt": b"gamma"})
    (a.path / "config.json").unlink()
    (b.path / "stray.txt").write_text("x")
    flip_byte(a.path / "model.safetensors", 3)
    shutil.rmtree(c.path)
    code, out, _ = cli("registry", "verify")
    assert code == 1
    assert f"missing {a.id}" in out and "config.json is missing" in out
    assert f"changed {a.id}" in out and "model.safetensors" in out
    assert f"extra {b.id}" in out and "stray.txt" in out
    assert f"missing-folder {c.id}" in out and "4 problems" in out
    code, out, _ = cli("registry", "verify", b.id, "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and lines[0]["path"] == "stray.txt" and lines[-1]["drift"] == 1
    (b.path / "stray.txt").unlink()
    code, out, _ = cli("registry", "verify", b.id)
    assert code == 0 and "no drift" in out


# --- part 10: concurrent writers and crashes -----------------------------------------------

def _writer(root: str, worker: int, start, out) -> None:
    start.wait()
    with Workspace.open(root) as w:
        made = []
        for i in range(6):
            m = add(w, "model", {"w.bin": f"{worker}-{i}".encode()}, state="initialized")
            w.set_state(m.id, "pretrained", f"worker {worker}")
            shared = add(w, "dataset", {"d.txt": f"shared-{i}".encode()})
            made.append((m.id, shared.id))
    out.put(made)


def four_writers_at_once(root: str) -> None:
    """Four processes register 6 models each, move each one, and register the same 6 shared
    datasets, all at once; the record must hold every model once with its one move, each
    shared dataset once, and nothing left in staging. (tests/test_registry_postgres.py runs
    it on the server too.)"""
    Workspace.open(root).close()
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(root, w, start, out)) for w in range(4)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    models = {m for made in results for m, _ in made}
    with Workspace.open(root) as w:
        assert {r.id for r in w.list(kind="model")} == models and len(models) == 24
        assert len(w.list(kind="dataset")) == 6  # the shared ones once each
        for m in models:
            assert [e.to_state for e in w.history(m)] == ["initialized", "pretrained"]
        assert verify(w).ok and not list(w.staging_dir.iterdir())


def test_four_processes_writing_at_once_leave_a_consistent_record(tmp_path):
    root = str(tmp_path / "ws")
    four_writers_at_once(root)
    with sqlite3.connect(Path(root) / "registry.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM artifacts").fetchone()[0] == 30
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 48


def test_a_crash_inside_the_move_transaction_keeps_the_previous_state(ws):
    m = approved(ws, b"m", deployed=True)
    before = ws.history(m.id)

    def crash(conn, event):
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        ws.set_state(m.id, "deprecated", "r", sunset=FUTURE, also=crash)
    assert ws.state_of(m.id) == "deployed" and ws.history(m.id) == before
    assert ws.deprecations() == {}


@pytest.mark.parametrize("where", ["bundle", "move", "removal"])
def test_a_crash_mid_archive_leaves_a_state_that_archiving_again_finishes(ws, tmp_path,
                                                                        monkeypatch, where):
    old, _ = retired_pair(ws)
    before = digests(old.path)

    def crash(*_a, **_k):
        raise RuntimeError("killed")

    target = {"bundle": "_write_bundle", "removal": "_retire_folder"}.get(where)
    if target:
        monkeypatch.setattr(archive_mod, target, crash)
    else:
        monkeypatch.setattr(ws, "set_state", crash)
    with pytest.raises(RuntimeError):
        archive(ws, old.id, tmp_path / "cold")
    monkeypatch.undo()
    if where == "removal":  # moved, folder still there: verify says so
        assert ws.state_of(old.id) == "archived" and old.path.is_dir()
        assert [d.problem for d in verify(ws).drift] == ["leftover"]
    else:
        assert ws.state_of(old.id) == "retired" and digests(old.path) == before
        assert verify(ws).ok
    done = archive(ws, old.id, tmp_path / "cold")
    assert ws.state_of(old.id) == "archived" and not old.path.exists() and verify(ws).ok
    restore(ws, done.bundle)
    assert digests(old.path) == before


KILL_SCRIPT = """
import sys
from lmforge.registry import Workspace
from lmforge.registry.archive import archive
ws = Workspace.open(sys.argv[1])
print("go", flush=True)
archive(ws, sys.argv[2], sys.argv[3])
print("done", flush=True)
"""


def _archive_in_a_process(ws: Workspace, model_id: str, cold: Path,
                          kill_after: float | None) -> float:
    """Run `archive` in a child process, SIGKILLed `kill_after` seconds after it starts;
    return how long it ran."""
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(ws.root), model_id,
                             str(cold)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "go"
    started = time.monotonic()
    if kill_after is None:
        assert proc.stdout.readline().strip() == "done"
    else:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    return time.monotonic() - started


def test_killing_an_archive_at_any_moment_loses_nothing(ws, tmp_path):
    old = approved(ws, os.urandom(8 << 20), deployed=True)  # incompressible: takes a while
    new = approved(ws, b"new")
    deprecate(ws, old.id, sunset=FUTURE, successor=new.id, reason="r")
    retirement.retire(ws, old.id)
    before = digests(old.path)
    cold = tmp_path / "cold"
    whole = _archive_in_a_process(ws, old.id, cold, None)  # how long an archive takes here
    outcomes = []
    for fraction in (0.0, 0.3, 0.6, 0.9, 0.97, 0.99, 1.0):
        if ws.state_of(old.id) == "archived":
            restore(ws, cold / f"{old.id}.tar.zst")
        _archive_in_a_process(ws, old.id, cold, whole * fraction)
        state = ws.state_of(old.id)
        outcomes.append(state)
        if state == "retired":  # the previous state, whole
            assert digests(old.path) == before
        else:  # archived: the bundle is whole, whatever happened to the folder
            assert state == "archived"
            archive_mod.check_bundle(read_index(cold / f"{old.id}.tar.zst"))
        if state == "retired" or old.path.exists():
            archive(ws, old.id, cold)  # the same command finishes the job
        assert ws.state_of(old.id) == "archived" and not old.path.exists()
        assert verify(ws).ok
    restore(ws, cold / f"{old.id}.tar.zst")
    assert digests(old.path) == before
    print(f"archive of 8 MiB: {whole:.2f} s; states after the kills: {outcomes}")
