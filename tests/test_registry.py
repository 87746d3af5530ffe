"""The registry: what a user relies on when lmforge records, finds and guards artifacts."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from lmforge.errors import LmforgeError
from lmforge.registry import (
    LIFECYCLE_STATES,
    Artifact,
    Workspace,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
)
from lmforge.registry.render import artifacts_table, lineage_tree, show


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
    return add(ws, "model", {"model.safetensors": data, "config.json": b"{}"},
               state=kw.pop("state", "initialized"), **kw)


def test_register_and_resolve_round_trip(ws):
    art = model(ws, settings={"lr": 0.1}, metrics={"loss": 2.5}, name="tiny")
    assert art.id.startswith("model-") and len(art.id) == len("model-") + 12
    assert art.path == ws.root / "artifacts" / "model" / art.id
    got = ws.resolve(art.id, kind="model")
    assert got.id == art.id and got.settings == {"lr": 0.1} and got.metrics == {"loss": 2.5}
    assert got.name == "tiny" and got.stage == "model" and got.created.endswith("Z")
    assert got.file("model.safetensors").read_bytes() == b"weights"
    with pytest.raises(LmforgeError, match="has no file 'nope.bin'"):
        got.file("nope.bin")
    assert ws.state_of(art.id) == "initialized"
    assert [r.id for r in ws.list(kind="model")] == [art.id]
    assert not list(ws.staging_dir.iterdir())


def test_atomic_writes_replace_whole_files_and_leave_no_temporaries(tmp_path):
    target = tmp_path / "deep" / "state.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    atomic_write_text(target, json.dumps({"step": 2}))
    assert json.loads(target.read_text()) == {"step": 2}
    assert os.listdir(target.parent) == ["state.json"]
    with pytest.raises(ValueError):  # NaN is not JSON; the old file must survive
        atomic_write_json(target, {"loss": float("nan")})
    assert json.loads(target.read_text()) == {"step": 2}
    assert os.listdir(target.parent) == ["state.json"]


def test_manifest_records_sha256_of_every_file(ws):
    art = add(ws, "dataset", {"a.txt": b"alpha", "sub/b.bin": b"\x00\x01"})
    manifest = json.loads((art.path / "manifest.json").read_text())
    assert manifest["files"] == {
        "a.txt": {"sha256": hashlib.sha256(b"alpha").hexdigest(), "bytes": 5},
        "sub/b.bin": {"sha256": hashlib.sha256(b"\x00\x01").hexdigest(), "bytes": 2},
    }
    assert manifest["kind"] == "dataset" and manifest["id"] == art.id
    assert {"parents", "settings", "metrics", "created", "lmforge_version"} <= set(manifest)
    assert sha256_file(art.path / "a.txt") == hashlib.sha256(b"alpha").hexdigest()


def test_id_is_deterministic_and_registering_again_is_idempotent(ws, tmp_path):
    a = model(ws, settings={"x": 1}, metrics={"loss": 1.0})
    b = model(ws, settings={"x": 1}, metrics={"loss": 9.0})  # metrics do not change the id
    assert a.id == b.id and b.metrics == {"loss": 1.0}  # the first registration wins
    assert model(ws, settings={"x": 2}).id != a.id
    assert model(ws, data=b"other").id != a.id
    with Workspace.open(tmp_path / "elsewhere") as other:  # same content, another machine
        assert model(other, settings={"x": 1}).id == a.id
    assert len(ws.list()) == 3 and not list(ws.staging_dir.iterdir())


def test_register_copies_a_folder_from_outside_and_leaves_it(ws, tmp_path):
    src = tmp_path / "mine"
    src.mkdir()
    (src / "tokenizer.json").write_text("{}")
    art = ws.register(src, kind="tokenizer", stage="tokenizer")
    assert (src / "tokenizer.json").exists() and not (src / "manifest.json").exists()
    assert ws.resolve(art.id).file("tokenizer.json").read_text() == "{}"


def test_artifact_files_are_read_only(ws):
    art = model(ws)
    for name in ("model.safetensors", "config.json", "manifest.json"):
        assert not (art.path / name).stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP)


def test_failure_inside_staging_leaves_nothing(ws):
    with pytest.raises(RuntimeError), ws.staging() as d:
        (d / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("crash while writing")
    assert ws.list() == [] and not list(ws.staging_dir.iterdir())
    assert not (ws.artifacts_dir / "model").exists()


@pytest.mark.parametrize("kw, message", [
    ({"kind": "Model"}, "artifact kind 'Model' is not valid"),
    ({"settings": {"opt": {"lr": object()}}}, r"settings\.opt\.lr is of type object"),
    ({"metrics": {"loss": float("nan")}}, "metrics.loss is nan"),
    ({"parents": {"data": "dataset-000000"}}, "no artifact.*'dataset-000000'"),
    ({"parents": {"data": 3}}, "must be a string, not a int"),
    ({"state": "deployed"}, "cannot start as 'deployed'"),
])
def test_bad_registration_is_a_clear_error(ws, kw, message):
    with ws.staging() as d:
        (d / "f").write_text("x")
        with pytest.raises(LmforgeError, match=message):
            ws.register(d, **{"kind": "model", "stage": "init", **kw})
    assert ws.list() == []


def test_resolve_by_prefix_alias_latest_and_path(ws):
    a, b = model(ws, b"one"), model(ws, b"two")
    assert ws.resolve(a.id[:10]).id == a.id
    assert ws.resolve(a.id.removeprefix("model-")[:6]).id == a.id  # hash part alone
    assert ws.resolve("model:latest").id == b.id
    assert ws.set_alias("production", a.id[:10]) == a.id
    assert ws.resolve("production", kind="model").id == a.id
    ws.set_alias("production", b.id)  # aliases move
    assert ws.resolve("production").id == b.id and ws.aliases_of(b.id) == ["production"]
    ws.remove_alias("production")
    assert ws.aliases() == {}
    assert ws.resolve(str(a.path)).id == a.id


def test_resolve_errors_name_the_problem(ws, tmp_path):
    tok = add(ws, "tokenizer", {"tokenizer.json": b"{}"})
    with pytest.raises(LmforgeError, match="no artifact.*'model-zzz'") as e:
        ws.resolve("model-zzz")
    assert "lmforge registry ls" in e.value.hint
    with pytest.raises(LmforgeError, match=f"{tok.id} is a tokenizer, expected a model"):
        ws.resolve(tok.id, kind="model")
    with pytest.raises(LmforgeError, match="no model artifact in this workspace"):
        ws.resolve("model:latest")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "manifest.json").write_text("{}")
    with pytest.raises(LmforgeError, match="not inside the workspace"):
        ws.resolve(str(outside))


def test_ambiguous_prefix_lists_candidates(ws):
    ids = {model(ws, bytes([i])).id for i in range(17)}  # 17 ids, 16 hex digits: a clash
    clash = next(p for p in ("model-" + c for c in "0123456789abcdef")
                 if sum(i.startswith(p) for i in ids) > 1)
    with pytest.raises(LmforgeError, match="matches .* artifacts") as e:
        ws.resolve(clash)
    assert all(i in str(e.value) for i in ids if i.startswith(clash))


def test_flipped_byte_is_refused_naming_the_file(ws):
    art = model(ws, b"\x00" * 1000)
    target = art.path / "model.safetensors"
    os.chmod(target, 0o644)
    data = bytearray(target.read_bytes())
    data[500] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(LmforgeError, match=f"artifact {art.id}: model.safetensors is corrupted"):
        ws.resolve(art.id)
    assert ws.resolve(art.id, verify=False).id == art.id  # callers may opt out


def test_missing_extra_and_edited_files_are_refused(ws):
    art = model(ws)
    (art.path / "notes.txt").write_text("added later")
    with pytest.raises(LmforgeError, match="notes.txt is not in its manifest"):
        ws.resolve(art.id)
    (art.path / "notes.txt").unlink()
    (art.path / "config.json").unlink()
    with pytest.raises(LmforgeError, match="config.json is missing"):
        ws.resolve(art.id)
    other = model(ws, b"w2", metrics={"loss": 3.0})
    manifest = json.loads((other.path / "manifest.json").read_text())
    manifest["metrics"]["loss"] = 0.1
    os.chmod(other.path / "manifest.json", 0o644)
    atomic_write_json(other.path / "manifest.json", manifest)
    with pytest.raises(LmforgeError, match="manifest.json was edited"):
        ws.resolve(other.id)


def _register_many(root: str, worker: int, start, out) -> None:
    start.wait()
    with Workspace.open(root) as ws:
        ids = []
        for i in range(10):
            ids.append(add(ws, "dataset", {"d.txt": f"w{worker}-{i}".encode()}).id)
            ids.append(add(ws, "dataset", {"d.txt": f"shared-{i}".encode()}).id)
    out.put(ids)


def test_two_processes_register_at_once(tmp_path):
    root = str(tmp_path / "ws")
    Workspace.open(root).close()
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_register_many, args=(root, w, start, out)) for w in (0, 1)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    with Workspace.open(root) as ws:
        assert {r.id for r in ws.list()} == set(results[0]) | set(results[1])
        assert len(ws.list()) == 30
        assert all(ws.resolve(i).id == i for i in results[0] + results[1])
        assert not list(ws.staging_dir.iterdir())


def test_reopening_a_workspace_keeps_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    with Workspace.open() as ws:
        art = model(ws)
    with Workspace.open() as again, Workspace.open(tmp_path / "home") as twice:
        assert again.resolve(art.id).id == art.id == twice.record(art.id).id
    assert (tmp_path / "home" / "runs").is_dir()


def test_workspace_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LmforgeError, match="is a file, not a folder"):
        Workspace.open(tmp_path / "afile")


def test_future_foreign_and_corrupt_databases_are_refused(tmp_path):
    Workspace.open(tmp_path / "new").close()
    with sqlite3.connect(tmp_path / "new" / "registry.db") as conn:
        conn.execute("PRAGMA user_version = 999")
    with pytest.raises(LmforgeError, match="newer lmforge") as e:
        Workspace.open(tmp_path / "new")
    assert "upgrade" in e.value.hint
    (tmp_path / "foreign").mkdir()
    with sqlite3.connect(tmp_path / "foreign" / "registry.db") as conn:
        conn.execute("CREATE TABLE notes (x)")
    with pytest.raises(LmforgeError, match="not an lmforge registry"):
        Workspace.open(tmp_path / "foreign")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "registry.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LmforgeError, match="not an lmforge registry"):
        Workspace.open(tmp_path / "junk")


def test_lineage_of_a_three_level_chain(ws):
    design = add(ws, "design", {"design.json": b"{}"})
    tok = add(ws, "tokenizer", {"tokenizer.json": b"{}"})
    data = [add(ws, "dataset", {"d.txt": t}) for t in (b"a", b"b")]
    base = model(ws, parents={"design": design.id, "tokenizer": tok.id})
    tuned = model(ws, b"tuned", parents={"base": base.id, "data": [d.id for d in data]},
                  state="tuned")
    assert tuned.parents == {"base": base.id, "data": [data[0].id, data[1].id]}
    with pytest.raises(LmforgeError, match="lists an artifact twice"):
        model(ws, b"dup", parents={"data": [data[0].id, data[0].id[:12]]})
    tree = ws.lineage(tuned.id[:12])
    assert tree["id"] == tuned.id and tree["role"] is None
    roles = {(c["role"], c["id"]) for c in tree["children"]}
    assert roles == {("base", base.id), ("data", data[0].id), ("data", data[1].id)}
    base_node = next(c for c in tree["children"] if c["role"] == "base")
    assert {(c["role"], c["kind"]) for c in base_node["children"]} == {
        ("design", "design"), ("tokenizer", "tokenizer")}
    assert [r.id for r in ws.children(base.id)] == [tuned.id]
    console = Console(record=True, width=200)
    console.print(lineage_tree(tree))
    console.print(artifacts_table(ws.list(), ws.aliases()))
    console.print(show(ws.resolve(tuned.id), ws.state_of(tuned.id), ws.history(tuned.id)))
    text = console.export_text()
    assert f"design: {design.id}" in text and "model.safetensors" in text


def report(ws, kind: str, of: str, passed: bool, tag: str = ""):
    return add(ws, kind, {"report.json": f"{of}{passed}{tag}".encode()}, parents={"model": of},
               metrics={"gates_passed": passed})


def test_lifecycle_legal_moves_and_history(ws):
    assert LIFECYCLE_STATES[0] == "initialized"
    m = model(ws)
    ws.set_state(m.id, "pretrained", "pretraining finished")
    report(ws, "eval-report", m.id, True)
    report(ws, "redteam-report", m.id, True)
    for to in ("approved", "deployed", "deprecated", "deployed", "deprecated", "retired",
               "archived", "deprecated"):
        ws.set_state(m.id, to, f"to {to}")
    events = ws.history(m.id)
    assert [e.to_state for e in events][:3] == ["initialized", "pretrained", "approved"]
    assert events[0].reason == "registered" and not any(e.forced for e in events)
    assert ws.state_of(m.id) == "deprecated"
    assert [r.id for r in ws.list(state="deprecated")] == [m.id]


def test_illegal_move_explains_allowed_moves_and_force_is_recorded(ws):
    m = model(ws)
    with pytest.raises(LmforgeError, match="cannot move from initialized to deployed.*"
                                           "can move to: pretrained") as e:
        ws.set_state(m.id, "deployed", "ship it")
    assert "--force" in e.value.hint and ws.state_of(m.id) == "initialized"
    event = ws.set_state(m.id, "deployed", "demo tonight", force=True)
    assert event.forced and ws.history(m.id)[-1].forced and ws.state_of(m.id) == "deployed"
    with pytest.raises(LmforgeError, match="needs a reason"):
        ws.set_state(m.id, "deprecated", "  ")
    with pytest.raises(LmforgeError, match="unknown lifecycle state"):
        ws.set_state(m.id, "shipped", "typo")
    tok = add(ws, "tokenizer", {"tokenizer.json": b"{}"})
    with pytest.raises(LmforgeError, match="is a tokenizer; only models have lifecycle"):
        ws.set_state(tok.id, "approved", "why not")


def test_approval_needs_a_passing_eval_report_of_that_model(ws):
    m = model(ws, state="pretrained")
    other = model(ws, b"other", state="pretrained")
    with pytest.raises(LmforgeError, match="has no eval-report with gates") as e:
        ws.set_state(m.id, "approved", "looks good")
    # The hints are commands that work today: an evaluation and a red-team run.
    assert f"`lmforge eval {m.id} --suite pydocs --gate 'docstrings_bpb/bpb <= 2.0'`" \
        in e.value.hint
    assert f"`lmforge redteam {m.id} --suite builtin`" in e.value.hint
    assert "not needed" not in e.value.hint and "--force" in e.value.hint
    report(ws, "eval-report", other.id, True)  # passing, but for another model
    gateless = report(ws, "eval-report", m.id, None)
    failed = report(ws, "eval-report", m.id, False)
    with pytest.raises(LmforgeError, match=f"no eval-report of {m.id} passed its gates "
                                           f"\\({gateless.id}: no gates, {failed.id}: gates "
                                           "failed\\)"):
        ws.set_state(m.id, "approved", "looks good")
    assert ws.state_of(m.id) == "pretrained" and ws.history(m.id)[-1].to_state == "pretrained"
    passed = report(ws, "eval-report", m.id, True, tag="rerun")
    # A passing evaluation alone is not enough: the red-team report is required too.
    with pytest.raises(LmforgeError, match=f"{m.id} has no redteam-report with gates") as e:
        ws.set_state(m.id, "approved", "gates passed")
    assert "eval-report" not in str(e.value) and "lmforge redteam" in e.value.hint
    red = report(ws, "redteam-report", m.id, True)
    event = ws.set_state(m.id, "approved", "gates passed")
    assert not event.forced and ws.state_of(m.id) == "approved"
    # The record says what the approval rests on.
    assert event.note == f"{passed.id} passed its gates; {red.id} passed its gates"
    assert ws.history(m.id)[-1] == event


def test_a_failing_redteam_report_blocks_approval_and_force_is_recorded(ws):
    m = model(ws, state="pretrained")
    report(ws, "eval-report", m.id, True)
    red = report(ws, "redteam-report", m.id, False)
    with pytest.raises(LmforgeError, match=f"no redteam-report of {m.id} passed its gates "
                                           f"\\({red.id}: gates failed\\)") as e:
        ws.set_state(m.id, "approved", "looks good")
    assert "eval-report" not in str(e.value)
    assert e.value.hint.startswith(f"red-team it against the gates it must meet, e.g. "
                                   f"`lmforge redteam {m.id} --suite builtin`")
    forced = ws.set_state(m.id, "approved", "exec override", force=True)
    assert forced.forced and forced.note.startswith(f"forced past: no redteam-report of {m.id}")
    other = model(ws, b"other", state="pretrained")
    report(ws, "eval-report", other.id, True)
    report(ws, "redteam-report", other.id, True)
    event = ws.set_state(other.id, "approved", "both passed")
    assert not event.forced and "redteam-report" in event.note and "without" not in event.note


def test_a_workspace_of_the_first_schema_is_upgraded_keeping_its_history(tmp_path):
    from lmforge.registry import db

    root = tmp_path / "old"
    root.mkdir()
    with sqlite3.connect(root / "registry.db") as conn:  # what lmforge wrote before notes
        conn.execute(f"PRAGMA application_id = {db.APPLICATION_ID}")
        for statement in db.MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
    with Workspace.open(root) as w:
        m = model(w)
        w.set_state(m.id, "pretrained", "trained")
        assert [(e.to_state, e.note) for e in w.history(m.id)] == [
            ("initialized", ""), ("pretrained", "")]
    with sqlite3.connect(root / "registry.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(db.MIGRATIONS)


def test_a_deleted_artifact_folder_is_rebuilt_by_registering_again(ws):
    art = model(ws, metrics={"loss": 1.0})
    ws.set_state(art.id, "pretrained", "trained")
    shutil.rmtree(art.path)
    with pytest.raises(LmforgeError, match="its folder .* is missing"):
        ws.resolve(art.id)
    again = model(ws, metrics={"loss": 1.5})
    assert again.id == art.id and ws.resolve(art.id).metrics == {"loss": 1.5}
    assert ws.state_of(art.id) == "pretrained"  # the record's history is kept
