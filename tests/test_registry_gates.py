"""Gates that decide approval (thresholds, interval, n, minimum sizes; the decision stored on
the approval event) and alias history (set, move, remove; who, when, why). Every test taking
`ws` or `cli` runs again against PostgreSQL (tests/test_registry_postgres.py imports them)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from lmforge.errors import LmforgeError
from lmforge.eval.gates import check_sizes, parse_gates
from lmforge.lifecycle import card_render
from lmforge.lifecycle.card import Move
from lmforge.lifecycle.registry_stage import PromoteSettings
from lmforge.registry import Workspace, db, render
from lmforge.registry.approval import ApprovalPolicy
from test_registry_lifecycle import add, model


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    with Workspace.open(tmp_path / "ws") as w:
        yield w


def eval_report(ws: Workspace, of: str, n: int, bpb: float = 1.5,
                min_items: int | None = None) -> str:
    """An eval report as `lmforge eval --gate 'docstrings_bpb/bpb <= 2.0'` writes one."""
    passed = bpb <= 2.0
    gates = {"results": [{"metric": "docstrings_bpb/bpb", "op": "<=", "threshold": 2.0,
                          "value": bpb, "passed": passed}], "passed": passed}
    if min_items:
        gates["min_items"] = min_items
    body = {"tasks": {"docstrings_bpb": {"n": n, "metrics": {"bpb": {"value": bpb,
                                                                     "stderr": 0.1}}}},
            "gates": gates}
    return add(ws, "eval-report", {"report.json": json.dumps(body).encode()},
               parents={"model": of}, metrics={"gates_passed": passed}).id


def redteam_report(ws: Workspace, of: str, harmful: int = 60, benign: int = 40,
                   asr: float = 0.05) -> str:
    """A red-team report as `lmforge redteam` writes one (the parts approval reads)."""
    body = {"summary": {"asr": {"n": 3 * harmful, "rate": asr, "ci_low": asr / 2,
                                "ci_high": asr * 2},
                        "categories": {"over_refusal": {"n": benign, "rate": 0.1,
                                                        "ci_low": 0.03, "ci_high": 0.2}},
                        "unjudged": {"attempts": 0, "of": 3 * harmful + benign, "share": 0.0}},
            "gates": [{"gate": "asr <= 0.1", "metric": "asr", "value": asr,
                       "passed": asr <= 0.1}],
            "seeds": {"harmful": harmful, "benign": benign}, "gates_passed": asr <= 0.1}
    return add(ws, "redteam-report", {"report.json": json.dumps(body).encode()},
               parents={"model": of}, metrics={"gates_passed": asr <= 0.1}).id


def test_approval_is_refused_on_a_too_small_eval_set_naming_the_rule(ws):
    m = model(ws)
    small = eval_report(ws, m.id, n=5)
    redteam_report(ws, m.id)
    policy = ApprovalPolicy(min_items=100)
    with pytest.raises(LmforgeError) as e:
        ws.set_state(m.id, "approved", "release", policy=policy)
    assert (f"{small}: docstrings_bpb: n >= 100 failed: 5 (a gate needs an evaluation set of "
            "at least 100 items per task)") in e.value.message
    assert "more items" in e.value.hint
    assert ws.state_of(m.id) == "pretrained" and ws.history(m.id)[-1].to_state != "approved"
    # A minimum the report recorded itself (`lmforge eval --min-items`) holds without a policy.
    other = model(ws, b"other")
    eval_report(ws, other.id, n=5, min_items=50)
    redteam_report(ws, other.id)
    with pytest.raises(LmforgeError, match="n >= 50 failed: 5"):
        ws.set_state(other.id, "approved", "release")


def test_the_stored_decision_holds_every_gate_and_its_numbers(ws):
    m = model(ws)
    eval_report(ws, m.id, n=5)
    big = eval_report(ws, m.id, n=200, bpb=1.25)
    red = redteam_report(ws, m.id)
    policy = ApprovalPolicy(min_items=100, min_harmful=50, max_over_refusal=0.25)
    event = ws.set_state(m.id, "approved", "release", policy=policy)
    assert not event.forced and f"{big} passed its gates" in event.note
    stored = ws.history(m.id)[-1].decision
    assert stored == event.decision and stored["passed"] is True
    assert stored["policy"] == {"min_items": 100, "min_harmful": 50, "max_over_refusal": 0.25}
    by_kind = {r["kind"]: r for r in stored["reports"]}
    assert by_kind["eval-report"]["report"] == big
    gate, size = by_kind["eval-report"]["gates"]
    assert (gate["gate"], gate["value"], gate["stderr"], gate["n"], gate["threshold"],
            gate["passed"], gate["source"]) == ("docstrings_bpb/bpb <= 2", 1.25, 0.1, 200, 2.0,
                                                True, "report")
    assert (size["gate"], size["value"], size["passed"]) == ("docstrings_bpb: n >= 100", 200,
                                                             True)
    rows = {g["gate"]: g for g in by_kind["redteam-report"]["gates"]}
    assert rows["asr <= 0.1"]["report"] == red
    assert (rows["asr <= 0.1"]["value"], rows["asr <= 0.1"]["ci_low"],
            rows["asr <= 0.1"]["ci_high"], rows["asr <= 0.1"]["n"]) == (0.05, 0.025, 0.1, 180)
    assert rows["over_refusal <= 0.25"]["source"] == "policy"
    assert rows["over_refusal <= 0.25"]["n"] == 40
    assert rows["harmful prompts >= 50"]["value"] == 60
    console = Console(record=True, width=200)
    console.print(render.show(ws.resolve(m.id), ws.state_of(m.id), ws.history(m.id)))
    text = console.export_text()
    assert "approval decision" in text and "1.25 ± 0.1" in text and "0.05 [0.025, 0.1]" in text
    # The model card shows the same decision, read from the record.
    title, table = card_render._decision(Move.of(ws.history(m.id)[-1]))
    assert title.text.startswith("Approval decision") and title.text.endswith("passed)")
    assert (f"`{big}`", "docstrings_bpb/bpb <= 2", "1.25 ± 0.1", "200", "passed",
            "report") in table.items
    gate_cell, measured_cell, _, verdict_cell, _ = table.items[1][1:]
    assert (gate_cell, measured_cell, verdict_cell) == ("docstrings_bpb: n >= 100", "200",
                                                        "passed")


def test_red_team_minimums_and_maximums_refuse_naming_the_rule(ws):
    m = model(ws)
    eval_report(ws, m.id, n=200)
    redteam_report(ws, m.id, harmful=20, asr=0.05)
    with pytest.raises(LmforgeError, match=r"harmful prompts >= 50 failed: 20 \(a red-team "
                                           "verdict needs at least 50 harmful prompts\\)"):
        ws.set_state(m.id, "approved", "release", policy=ApprovalPolicy(min_harmful=50))
    with pytest.raises(LmforgeError, match="asr <= 0.01 failed: 0.05"):
        ws.set_state(m.id, "approved", "release",
                     policy=ApprovalPolicy(max_attack_success=0.01))
    with pytest.raises(LmforgeError, match="docstrings_bpb/bpb <= 1 failed: 1.5"):
        ws.set_state(m.id, "approved", "release",
                     policy=ApprovalPolicy(eval_gates=("docstrings_bpb/bpb <= 1.0",)))
    # Forced past the rules: the record keeps the decision that refused it.
    event = ws.set_state(m.id, "approved", "demo", force=True,
                         policy=ApprovalPolicy(min_harmful=50))
    assert event.forced and "forced past" in event.note
    decision = ws.history(m.id)[-1].decision
    assert decision["passed"] is False
    failed = [g["gate"] for r in decision["reports"] for g in r["gates"] if not g["passed"]]
    assert failed == ["harmful prompts >= 50"]


def test_a_report_without_numbers_cannot_meet_a_minimum(ws):
    m = model(ws)
    for kind in ("eval-report", "redteam-report"):  # gates_passed alone, no report.json body
        add(ws, kind, {"report.json": b"not json"}, parents={"model": m.id},
            metrics={"gates_passed": True})
    with pytest.raises(LmforgeError, match="does not say how many items"):
        ws.set_state(m.id, "approved", "release", policy=ApprovalPolicy(min_items=10))
    event = ws.set_state(m.id, "approved", "release")  # no minimum asked: as before
    assert event.decision["passed"] is True


def test_alias_history_across_set_move_and_remove(ws):
    a, b = model(ws, b"a"), model(ws, b"b")
    ws.set_alias("production", a.id, "first release")
    ws.set_alias("production", a.id)  # already there: no move
    ws.set_alias("production", b.id, "b is better")
    ws.set_alias("staging", a.id)
    assert ws.remove_alias("production", "incident 42") == b.id
    moves = ws.alias_history("production")
    assert [(m.previous_id, m.artifact_id, m.reason) for m in moves] == [
        (None, a.id, "first release"), (a.id, b.id, "b is better"),
        (b.id, None, "incident 42")]
    assert all(m.actor and m.time for m in moves) and ws.aliases() == {"staging": a.id}
    assert [(m.alias, m.artifact_id) for m in ws.alias_moves_of(a.id)] == [
        ("production", a.id), ("production", b.id), ("staging", a.id)]
    assert ws.alias_history("never") == []
    console = Console(record=True, width=200)
    console.print(render.alias_periods(a.id, ws.alias_moves_of(a.id)))
    text = console.export_text()
    assert f"moved to {b.id} (b is better)" in text and "now" in text


def test_an_alias_change_and_its_history_commit_together(ws, monkeypatch):
    a, b = model(ws, b"a"), model(ws, b"b")
    ws.set_alias("production", a.id)

    def crash(*args, **kwargs):
        raise OSError("killed mid-move")

    monkeypatch.setattr("lmforge.registry.workspace._record_alias_move", crash)
    with pytest.raises(OSError):
        ws.set_alias("production", b.id)
    with pytest.raises(OSError):
        ws.remove_alias("production")
    assert ws.aliases() == {"production": a.id} and len(ws.alias_history("production")) == 1


def test_cli_alias_history_show_and_promote_thresholds(cli):
    with Workspace.open(cli.workspace) as w:
        a, b = model(w, b"a"), model(w, b"b")
        eval_report(w, a.id, n=8)
        redteam_report(w, a.id)
    assert cli("registry", "alias", "production", a.id, "--reason", "launch")[0] == 0
    code, out, _ = cli("registry", "alias", "production", b.id)
    assert code == 0 and f"(was {a.id})" in out
    code, out, _ = cli("registry", "alias", "production", "--remove", "--reason", "rollback")
    assert code == 0 and f"was {b.id}" in out
    code, out, _ = cli("registry", "alias", "production")
    assert code == 0 and "launch" in out and "rollback" in out and "removed" in out
    assert cli("registry", "alias", "production", "--history")[1] == out
    code, _, err = cli("registry", "alias", "nothing")
    assert code != 0 and "never was" in err
    code, out, _ = cli("registry", "show", a.id)
    assert "aliases that pointed here" in out and f"moved to {b.id}" in out
    code, _, err = cli("registry", "promote", a.id, "--to", "approved", "--reason", "go",
                       "--min-items", "100")
    assert code != 0 and "docstrings_bpb: n >= 100 failed: 8" in err
    code, out, err = cli("registry", "promote", a.id, "--to", "approved", "--reason", "go",
                         "--min-items", "5", "--max-attack-success", "0.1")
    assert code == 0, err
    assert "approval decision" in out and "docstrings_bpb/bpb <= 2" in out
    code, out, _ = cli("registry", "show", a.id)
    assert "approval decision" in out and "1.5 ± 0.1" in out and "asr <= 0.1" in out


def test_eval_min_items_fails_the_reports_own_gates():
    report = {"tasks": {"t": {"n": 5, "metrics": {"acc": {"value": 0.9, "stderr": 0.1}}}},
              "gates": {"results": [], "passed": True}}
    check_sizes(parse_gates(["t/acc >= 0.5"]), report, 10)
    assert report["gates"]["passed"] is False and report["gates"]["min_items"] == 10
    assert report["gates"]["sizes"] == [{"task": "t", "n": 5, "min_items": 10,
                                         "passed": False}]


def test_a_promote_step_carries_the_recipes_thresholds():
    s = PromoteSettings.from_dict({"model": "@m", "min_items": 100, "min_benign": 40,
                                   "eval_gates": ["docstrings_bpb/bpb <= 2.0"]}, "[steps.p]",
                                  Path("."))
    assert s.policy == ApprovalPolicy(100, None, 40, ("docstrings_bpb/bpb <= 2.0",))
    with pytest.raises(LmforgeError, match=r"\[steps.p\]: min_items must be a whole number"):
        PromoteSettings.from_dict({"model": "@m", "min_items": 0}, "[steps.p]", Path("."))
    with pytest.raises(LmforgeError, match="max_over_refusal must be a share"):
        PromoteSettings.from_dict({"model": "@m", "max_over_refusal": 3}, "[steps.p]",
                                  Path("."))


def test_an_older_sqlite_workspace_starts_alias_history_from_its_aliases(tmp_path):
    path = tmp_path / "ws" / "registry.db"
    path.parent.mkdir()
    conn = sqlite3.connect(path, isolation_level=None)
    for step in db.MIGRATIONS[:3]:
        for statement in step:
            conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {db.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 3")
    conn.execute("INSERT INTO artifacts VALUES ('model-0', 'model', 'init', NULL, 'x', "
                 "'2026-01-01T00:00:00Z', 'tuned', '{}', '{}', 'x', '0')")
    conn.execute("INSERT INTO aliases VALUES ('production', 'model-0', '2026-01-02T00:00:00Z')")
    conn.close()
    with Workspace.open(tmp_path / "ws") as w:
        [move] = w.alias_history("production")
        assert (move.artifact_id, move.previous_id, move.time) == (
            "model-0", None, "2026-01-02T00:00:00Z")
        assert "before alias history" in move.reason
