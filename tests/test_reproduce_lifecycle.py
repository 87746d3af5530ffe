"""`lmforge reproduce` through the lifecycle's later stages: a red-team report, the safety
data made from it and the safety fine-tune; a feedback snapshot read from the server's store
and the successor tuned on it. Each is rebuilt from the record alone, and a store that changed
since is reported, not rebuilt."""

import dataclasses
import json

import pytest

from lmforge.registry import Workspace
from test_cli import artifact_id, corpus_file, model_v0  # noqa: F401
from test_feedback_finetune import TUNE, evaluate, fill

RED_TEAM = ("--suite", "builtin", "--categories", "direct,jailbreak,over_refusal", "--limit",
            "6", "--benign-limit", "12", "--attempts", "1", "--max-new-tokens", "3", "--device",
            "cpu")


@pytest.fixture
def design_file(tmp_path):
    """test_cli's tiny model with room for a jailbreak prompt (model_v0 reads this)."""
    f = tmp_path / "mini.toml"
    f.write_text("[model]\nn_layers = 1\nd_model = 32\nn_heads = 2\nn_kv_heads = 1\n"
                 "vocab_size = 400\ncontext_length = 512\n")
    return f


def _by_id(out: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["original"]: r for r in rows}


def _files(row: dict) -> dict[str, str]:
    return {f["path"]: f["status"] for f in row["files"]}


def _reproduce(cli, ref: str, *args: str) -> tuple[int, dict[str, dict]]:
    code, out, err = cli("reproduce", ref, "--json", *args)
    assert code in (0, 1), err
    return code, _by_id(out)


@pytest.fixture
def safety(cli, model_v0, monkeypatch):  # noqa: F811
    """A red-team report on a tiny model, the safety data made from it, and the model tuned
    on that data."""
    from lmforge.redteam.safety_data import SafetyDataSettings, run

    monkeypatch.setenv("LMFORGE_NO_PROGRESS", "1")
    model, _ = model_v0
    code, out, err = cli("redteam", model, *RED_TEAM)
    assert code == 0, err
    report = artifact_id(out, "redteam-report")
    with Workspace.open(cli.workspace) as ws:
        data = run(ws, SafetyDataSettings(report=report), show_progress=False).artifact
    assert data.metrics["records"] > 0
    code, out, err = cli("finetune", model, "--method", "sft", "--data", data.id, *TUNE)
    assert code == 0, err
    return {"model": model, "report": report, "data": data.id,
            "tuned": artifact_id(out, "model")}


def test_a_red_team_report_its_safety_data_and_the_safety_model_are_rebuilt_identical(
        cli, safety):
    code, rows = _reproduce(cli, safety["tuned"])
    assert code == 0, rows
    assert [rows[safety[k]]["stage"] for k in ("report", "data", "tuned")] == \
        ["redteam", "safety-data", "finetune"]
    for key in ("report", "data"):  # the same answers and verdicts: the same bytes and id
        assert rows[safety[key]]["verdict"] == "identical", rows[safety[key]]
        assert rows[safety[key]]["rebuilt"] == safety[key]
    assert _files(rows[safety["tuned"]])["model.safetensors"] == "identical"
    assert rows[safety["tuned"]]["verdict"] == "equivalent"  # the log's timings


def test_an_old_red_team_record_says_what_it_lacks(cli, safety):
    from lmforge.lifecycle.reproduce import Reproduction, lineage_order

    with Workspace.open(cli.workspace) as ws:
        original = ws.resolve(safety["report"])
        metrics = {k: v for k, v in original.metrics.items() if k != "rerun"}
        old = dataclasses.replace(original, manifest={**original.manifest, "metrics": metrics})
        with Workspace.open(cli.workspace.parent / "scratch") as scratch:
            run = Reproduction(ws, scratch)
            for art in lineage_order(ws, safety["report"])[:-1]:
                run.keep(art)
            result = run.rebuild(old)
    assert result.verdict == "cannot reproduce"
    assert result.notes[0].startswith("the record lacks read_sha256, device, torch_threads")


@pytest.fixture
def successor(cli, model_v0, tmp_path, request):  # noqa: F811
    """A served model with a gated evaluation and feedback in its store, and the successor
    `finetune --from-feedback` tuned on a snapshot of that feedback (DPO on its pairs, or SFT
    on its liked answers)."""
    model, _ = model_v0
    evaluate(cli, model, tmp_path)
    fill(cli.workspace, model)
    method = getattr(request, "param", "dpo")
    code, out, err = cli("finetune", model, "--from-feedback", "--since", "2026-11-01",
                         "--method", method, "--max-regression", "0.5", *TUNE)
    assert code == 0, err
    return {"model": model, "snapshot": artifact_id(out, "feedback-snapshot"),
            "successor": artifact_id(out, "model")}


@pytest.mark.parametrize("successor", ["sft", "dpo"], indirect=True)
def test_a_feedback_snapshot_and_its_successor_are_rebuilt_identical(cli, successor):
    code, rows = _reproduce(cli, successor["successor"])
    assert code == 0, rows
    snap = rows[successor["snapshot"]]
    assert snap["stage"] == "feedback" and snap["verdict"] == "identical", snap
    assert snap["rebuilt"] == successor["snapshot"]  # the same rows, rules and model
    tuned = rows[successor["successor"]]
    files = _files(tuned)
    assert files["model.safetensors"] == "identical", tuned
    # The log's timings; the card names the snapshot's file in the scratch workspace.
    assert {p for p, status in files.items() if status != "identical"} <= \
        {"training_metrics.jsonl", "MODEL_CARD.md"}
    assert tuned["verdict"] == "equivalent"
    assert any("promotion decision are not repeated" in n for n in tuned["notes"])


def test_a_feedback_store_that_changed_is_reported_not_rebuilt(cli, successor):
    from test_feedback_finetune import Feedback, _ask

    more = Feedback(cli.workspace, successor["model"])
    more.count = 1000  # response ids the store has not used
    more.rate(more.answer(_ask(40), "40 plus 40 is 80."), 1, "k1")
    more.close()
    code, rows = _reproduce(cli, successor["successor"])
    assert code == 1
    snap = rows[successor["snapshot"]]
    assert snap["verdict"] == "cannot reproduce" and snap["rebuilt"] is None
    assert snap["notes"][0].startswith("the feedback store changed: the feedback rows read "
                                       "now differ")
    # The successor is tuned again on the original snapshot, copied in.
    assert _files(rows[successor["successor"]])["model.safetensors"] == "identical"
