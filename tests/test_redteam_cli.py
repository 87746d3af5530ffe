"""`lmforge redteam` end to end on a tiny random model: the report artifact and its lineage,
`redteam report` (terminal and --html), `redteam to-dataset` (SFT, pairs, rules), a recipe's
redteam step, and mistakes that get one clean line."""

from __future__ import annotations

import json

import pytest

from lmforge.redteam.metrics import DEFAULT_GATES
from lmforge.tokenizer import train_tokenizer
from test_cli import artifact_id, one_clean_error
from test_reward import TEXT, register_model, tiny

SHORT = ("--suite", "builtin", "--limit", 6, "--benign-limit", 4, "--attempts", 1,
         "--max-new-tokens", 8, "--device", "cpu")


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXT, 300, show_progress=False)


def test_redteam_a_model_then_read_and_use_its_report(cli, tok, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = register_model(cli.workspace, tiny(tok, context_length=512), tok)
    code, out, err = cli("redteam", model, *SHORT)
    assert code == 0, err
    report_id = artifact_id(out, "redteam-report")
    flat = " ".join(out.split())
    assert "detectors on the labelled set" in flat and "gate asr <= 0.1" in flat
    assert f"{report_id}/report.html" in flat
    code, out, _ = cli("registry", "lineage", report_id)
    assert model in out
    code, out, err = cli("redteam", "report", report_id, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["model"] == model and len(report["weights_sha256"]) == 64
    assert [g["gate"] for g in report["gates"]] == list(DEFAULT_GATES)
    assert set(report["detectors"]) >= {"refusal", "compliance"}
    code, out, err = cli("redteam", "report", report_id)
    assert code == 0 and "red team of" in out, err
    code, out, err = cli("redteam", "report", report_id, "--html", "--out", tmp_path / "f.html")
    assert code == 0, err
    page = (tmp_path / "f.html").read_text()
    assert page.startswith("<!doctype html>") and model in page
    code, out, err = cli("redteam", "to-dataset", report_id, "--out", tmp_path / "s.jsonl",
                         "--pairs", tmp_path / "p.jsonl", "--rules", tmp_path / "r.toml",
                         "--split", "all")
    assert code == 0, err
    assert (tmp_path / "s.jsonl").exists() and (tmp_path / "p.jsonl").exists()
    assert "conversations from the all findings" in out
    code, out, err = cli("redteam", "to-dataset", report_id, "--out", tmp_path / "r.jsonl",
                         "--retain")
    assert code == 0 and "and answered benign asks" in out, err
    code, out, err = cli("redteam", "to-dataset", report_id, "--out", tmp_path / "b.jsonl",
                         "--benign-ratio", 1, "--pairs", tmp_path / "bp.jsonl")
    assert code == 0 and "repeated to 1x the refusals" in out, err
    assert "chosen: the answer" in " ".join(out.split())


def test_a_recipe_step_runs_the_stage(cli, tok, tmp_path):
    from rich.console import Console

    from lmforge.lifecycle.stages import STAGES, Context
    from lmforge.registry import Workspace

    model = register_model(cli.workspace, tiny(tok, context_length=512), tok)
    ws = Workspace.open(cli.workspace)
    out = STAGES["redteam"](Context(ws, tmp_path, Console(file=open("/dev/null", "w")), False),
                            "rt", {"target": model, "suite": "builtin", "limit": 3,
                                   "benign_limit": 2, "attempts": 1, "max_new_tokens": 4,
                                   "device": "cpu", "categories": ["direct", "over_refusal"]})
    assert out.artifact.startswith("redteam-report-") and "gates" in out.summary
    assert ws.resolve(out.artifact).parents == {"model": model}
    ws.close()


def test_mistakes_get_one_clean_line(cli, tok, tmp_path):
    model = register_model(cli.workspace, tiny(tok), tok)
    code, _, err = cli("redteam", model, "--categories", "direct,telepathy")
    one_clean_error(code, err, "telepathy", "choose from")
    code, _, err = cli("redteam", model, "--probes", tmp_path / "absent.jsonl")
    one_clean_error(code, err, "does not exist")
    code, _, err = cli("redteam", model, "--gate", "asr < 0.1")
    one_clean_error(code, err, "bad gate")
    code, _, err = cli("redteam", model, "--suite", "all")
    one_clean_error(code, err, "unknown suite")
    code, _, err = cli("redteam", "report", model)
    one_clean_error(code, err, "expected a redteam-report")
    code, _, err = cli("redteam", "to-dataset", "x")
    one_clean_error(code, err, "--out")
    code, _, err = cli("redteam", model, "--html")
    one_clean_error(code, err, "belong to")
    code, _, err = cli("redteam", model, "other")
    one_clean_error(code, err, "one target")
    code, _, err = cli("redteam", "no-such-model", *SHORT)
    one_clean_error(code, err, "no-such-model")


def test_report_lists_findings_whose_text_looks_like_markup(cli, tok, monkeypatch):
    import lmforge.redteam.stage as stage
    from lmforge.redteam.targets import Reply
    from lmforge.registry import Workspace
    from test_redteam import Scripted

    model = register_model(cli.workspace, tiny(tok), tok)
    def answer(messages):
        return Reply(f"[bold]Sure[/]: {messages[-1]['content']} Step 1: get the material "
                     "ready, then carry it out fully.")

    monkeypatch.setattr(stage, "open_target", lambda *a, **k: Scripted(answer, model))
    ws = Workspace.open(cli.workspace)
    art = stage.run(ws, stage.RedteamSettings(model, suite="builtin", limit=4, attempts=1,
                                              categories=("direct",)),
                    show_progress=False).artifact
    ws.close()
    code, out, err = cli("redteam", "report", art.id)
    assert code == 0, err
    assert "'[bold]Sure[/]: " in out and "direct/plain" in out


def test_a_local_model_that_fails_or_lacks_room_is_reported_per_attempt(cli, tok,
                                                                        monkeypatch):
    import lmforge.engine.generate as generate
    from lmforge.redteam.targets import LocalTarget
    from lmforge.registry import Workspace

    model = register_model(cli.workspace, tiny(tok, context_length=64), tok)
    ws = Workspace.open(cli.workspace)
    target = LocalTarget(ws, model, device="cpu", max_new_tokens=8)
    assert target.model_id == model and len(target.weights_sha256) == 64
    short = [{"role": "user", "content": "hi"}]
    long = [{"role": "user", "content": "What is a cat? " * 40}]
    ok, too_long = target.answer([short, long])
    assert ok.error is None and isinstance(ok.text, str)
    assert "leaves no room" in too_long.error and too_long.text is None

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(generate, "generate_batch", broken)
    (failed,) = target.answer([short])
    assert failed.error == "generation failed (RuntimeError: CUDA out of memory)"
    ws.close()


def test_compare_pairs_the_probes_of_two_reports(cli, tok, monkeypatch):
    import lmforge.redteam.stage as stage
    from lmforge.registry import Workspace
    from test_redteam import Scripted, obey_all, refuse_all

    model = register_model(cli.workspace, tiny(tok), tok)
    ids = []
    for fn in (obey_all, refuse_all):
        monkeypatch.setattr(stage, "open_target", lambda *a, fn=fn, **k: Scripted(fn, model))
        ws = Workspace.open(cli.workspace)
        ids.append(stage.run(ws, stage.RedteamSettings(
            model, suite="builtin", limit=30, benign_limit=12, attempts=1,
            categories=("direct", "jailbreak", "leakage", "over_refusal")),
            show_progress=False).artifact.id)
        ws.close()
    code, out, err = cli("redteam", "compare", *ids, "--json")
    assert code == 0, err
    c = json.loads(out)
    assert c["paired_probes"] == 30 + 30 + 8 + 12 and c["only_one_report"] == 0
    for cat in ("direct", "jailbreak", "leakage"):
        e = c["categories"][cat]
        assert (e["before"], e["after"], e["verdict"]) == (1.0, 0.0, "fell"), cat
        assert e["ci_high"] < 0
    assert c["categories"]["over_refusal"]["verdict"] == "rose"
    assert c["heldout_asr"]["n"] + c["seen_asr"]["n"] == c["asr"]["n"] == 68
    code, out, err = cli("redteam", "compare", *ids)
    assert code == 0 and "held-out prompts" in out and "fell" in out, err
    code, _, err = cli("redteam", "compare", ids[0])
    one_clean_error(code, err, "two reports")
