"""`lmforge reproduce`: a record built through the CLI is rebuilt stage by stage from the record
alone; a changed input file or a flipped byte of weights is reported at its stage."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lmforge.lifecycle.reproduce import Reproduction
from lmforge.registry import Workspace
from test_cli import artifact_id, corpus_file, design_file, one_clean_error  # noqa: F401
from test_finetune import SFT_TUNE, _chats
from test_pretrain_cli import ARGS


@pytest.fixture
def record(cli, corpus_file, design_file, tmp_path):  # noqa: F811
    """tokenizer train -> init -> tokenize -> a 3-step pretrain -> a 2-step SFT."""
    _, out, _ = cli("tokenizer", "train", "--input", corpus_file, "--vocab-size", 400)
    tok = artifact_id(out, "tokenizer")
    _, out, _ = cli("init", "--design", design_file, "--tokenizer", tok)
    v0 = artifact_id(out, "model")
    docs = tmp_path / "docs"
    docs.mkdir()
    lines = corpus_file.read_text().splitlines()
    for i in range(5):
        (docs / f"part{i}.txt").write_text("\n".join(lines[i * 80:(i + 1) * 80]))
    _, out, _ = cli("tokenize", "--data", docs, "--tokenizer", tok, "--val-fraction", "0.2",
                    "--workers", "1")
    tokens = artifact_id(out, "tokens")
    code, out, err = cli("pretrain", "--model", v0, "--data", tokens, *ARGS)
    assert code == 0, err
    base = artifact_id(out, "model")
    chats = _chats(tmp_path / "chats.jsonl", n=20)
    code, out, err = cli("finetune", base, "--method", "sft", "--data", chats, "--steps", "2",
                         "--val-fraction", "0.2", *SFT_TUNE)
    assert code == 0, err
    return {"tokenizer": tok, "v0": v0, "tokens": tokens, "base": base,
            "tuned": artifact_id(out, "model"), "corpus": corpus_file, "chats": chats}


def _stages(out: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["stage"]: r for r in rows}


def _flip_a_byte(path: Path) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x40  # inside the last tensor's data, past the header
    path.write_bytes(bytes(data))


def test_every_stage_of_a_fresh_record_is_rebuilt_bit_identical(cli, record):
    code, out, err = cli("reproduce", record["tuned"], "--json")
    assert code == 0, out + err
    stages = _stages(out)
    assert list(stages) == ["design", "tokenizer", "init", "tokenize", "pretrain", "finetune"]
    assert all(r["passed"] for r in stages.values())
    for name in ("design", "tokenizer", "init", "tokenize"):  # the same bytes, the same id
        assert stages[name]["verdict"] == "identical"
        assert stages[name]["rebuilt"] == stages[name]["original"]
    for name in ("pretrain", "finetune"):  # weights bit-identical; the logs' timings are not
        files = {f["path"]: f["status"] for f in stages[name]["files"]}
        assert files["model.safetensors"] == "identical"
        assert files["training_metrics.jsonl"] == "equivalent"
        assert stages[name]["verdict"] == "equivalent"
    assert stages["finetune"]["original"] == record["tuned"]


def test_a_changed_input_and_flipped_weights_are_reported_at_their_stages(cli, record):
    with open(record["corpus"], "a", encoding="utf-8") as f:
        f.write("\na line added after the tokenizer was trained.")
    ws = Workspace.open(cli.workspace)
    try:
        weights = ws.resolve(record["base"]).file("model.safetensors")
    finally:
        ws.close()
    _flip_a_byte(weights)
    code, out, err = cli("reproduce", record["tuned"])
    assert code == 1, err
    assert "cannot reproduce: input file" in out and "changed (sha256" in out
    assert "the original is used as the input of later stages" in out
    assert "model.safetensors: corrupted" in out and "the rebuilt one matches the record" in out
    code, out, _ = cli("reproduce", record["tuned"], "--json")
    stages = _stages(out)
    assert code == 1
    assert stages["tokenizer"]["verdict"] == "cannot reproduce"
    assert str(record["corpus"].name) in stages["tokenizer"]["notes"][0]
    assert stages["init"]["verdict"] == "identical"  # built from the original tokenizer
    assert stages["pretrain"]["verdict"] == "corrupted"
    assert stages["pretrain"]["max_abs"] > 0 and stages["pretrain"]["logits_max_abs"] > 0
    assert stages["finetune"]["passed"]  # tuned from the rebuilt, intact base


def test_from_keeps_an_artifact_and_what_it_came_from(cli, record):
    code, out, err = cli("reproduce", record["base"], "--from", record["tokens"], "--json")
    assert code == 0, err
    stages = _stages(out)
    assert stages["tokenize"]["verdict"] == "kept" and stages["tokenizer"]["verdict"] == "kept"
    assert stages["init"]["verdict"] == "identical"
    assert stages["pretrain"]["verdict"] == "equivalent"
    code, _, err = cli("reproduce", record["v0"], "--from", record["tuned"])
    one_clean_error(code, err, "not in the lineage")


def test_an_unknown_model_is_one_clear_error(cli):
    code, _, err = cli("reproduce", "model-000000000000")
    one_clean_error(code, err, "model-000000000000")


def _weights_artifact(ws: Workspace, tensors: dict[str, torch.Tensor], log: str):
    with ws.staging() as d:
        save_file(tensors, str(d / "model.safetensors"))
        (d / "training_metrics.jsonl").write_text(log)
        return ws.register(d, kind="weights", stage="test")


def test_weights_that_differ_are_measured_and_pass_only_within_tolerance(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    try:
        w = torch.linspace(-1, 1, 64).reshape(8, 8)
        log = '{"step": 1, "loss": 2.5, "tokens_per_s": 100.0}\n'
        original = _weights_artifact(ws, {"w": w, "b": torch.ones(4)}, log)
        nudged = w.clone()
        nudged[3, 3] += 1e-4
        rebuilt = _weights_artifact(ws, {"w": nudged, "b": torch.ones(4)},
                                    log.replace("100.0", "250.0").replace("2.5", "2.5001"))
        strict = Reproduction(ws, ws).judge(original, rebuilt, [])
        assert strict.verdict == "differs" and not strict.passed
        assert strict.max_abs == pytest.approx(1e-4, rel=1e-3)
        files = {f.path: f for f in strict.files}
        assert "w 0.0001" in files["model.safetensors"].detail
        assert files["training_metrics.jsonl"].status == "differs"  # the loss moved too
        assert Reproduction(ws, ws, tolerance=1e-3).judge(original, rebuilt, []).passed
        assert not Reproduction(ws, ws, tolerance=1e-5).judge(original, rebuilt, []).passed
        timing_only = _weights_artifact(ws, {"w": w, "b": torch.ones(4)},
                                        log.replace("100.0", "250.0"))
        same = Reproduction(ws, ws).judge(original, timing_only, [])
        assert same.verdict == "equivalent" and same.max_abs is None
    finally:
        ws.close()
