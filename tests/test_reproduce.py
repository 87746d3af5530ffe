"""`lmforge reproduce`: a record built through the CLI is rebuilt stage by stage from the record
alone; a changed input file or a flipped byte of weights is reported at its stage."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lmforge.lifecycle.reproduce import Reproduction, lineage_order
from lmforge.registry import Workspace
from test_cli import artifact_id, corpus_file, design_file, one_clean_error  # noqa: F401
from test_curate_pipeline import _stories
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


# ---- reward model, DPO and RLHF, and curation --------------------------------------------

TINY_TUNE = ("--steps", "2", "--batch-tokens", "256", "--micro-batch", "4", "--seq-len", "32",
             "--eval-every", "10", "--val-fraction", "0.25", "--device", "cpu")
TINY_RL = ("--steps", "2", "--lr", "1e-3", "--device", "cpu", "--seq-len", "32",
           "--batch-tokens", "256", "--micro-batch", "8", "--rl",
           "prompts_per_step=2,max_new_tokens=6,eval_prompts=2,minibatches=1,epochs=1")


def _prefs(path: Path) -> Path:
    kind, rude = ("It is a fine one.", "Glad you asked."), ("Go away.", "Stop asking.")
    path.write_text("".join(json.dumps({"prompt": f"Tell me about {a} {b}.",
                                        "chosen": kind[i % 2], "rejected": rude[i % 2]}) + "\n"
                            for i, (a, b) in enumerate(zip("abcdefghijkl", "mnopqrstuvwx"))))
    return path


@pytest.fixture
def aligned(cli, record, tmp_path):
    """On the SFT model of `record`: a reward model, a DPO model (with the pretrained model as
    its reference), and an RLHF policy tuned from the DPO model against the reward model."""
    prefs = _prefs(tmp_path / "prefs.jsonl")
    code, out, err = cli("finetune", record["tuned"], "--method", "reward", "--data", prefs,
                         *TINY_TUNE)
    assert code == 0, err
    rm = artifact_id(out, "reward-model")
    code, out, err = cli("finetune", record["tuned"], "--method", "dpo", "--data", prefs,
                         "--reference", record["base"], *TINY_TUNE)
    assert code == 0, err
    dpo = artifact_id(out, "model")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": f"What is {w}?"}) + "\n"
                               for w in ("a cat", "a dog", "the sun", "a tree", "rain", "a boat")))
    code, out, err = cli("finetune", dpo, "--method", "rlhf", "--reward", rm, "--prompts",
                         prompts, *TINY_RL)
    assert code == 0, err
    return {**record, "prefs": prefs, "prompts": prompts, "reward": rm, "dpo": dpo,
            "rlhf": artifact_id(out, "model")}


def _by_id(out: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["original"]: r for r in rows}


def test_reward_dpo_and_rlhf_are_rebuilt_bit_identical(cli, aligned):
    code, out, err = cli("reproduce", aligned["rlhf"], "--json")
    assert code == 0, out + err
    rows = _by_id(out)
    assert {aligned[k] for k in ("base", "tuned", "reward", "dpo", "rlhf")} <= set(rows)
    assert all(r["passed"] for r in rows.values()), [r for r in rows.values() if not r["passed"]]
    for key in ("reward", "dpo", "rlhf"):
        files = {f["path"]: f["status"] for f in rows[aligned[key]]["files"]}
        assert files["model.safetensors"] == "identical", (key, files)
        assert rows[aligned[key]]["verdict"] in ("identical", "equivalent")
    files = {f["path"]: f["status"] for f in rows[aligned["reward"]]["files"]}
    assert files["reward_head.safetensors"] == "identical"


def test_changed_pairs_and_changed_prompts_are_reported_not_rebuilt(cli, aligned, monkeypatch):
    with open(aligned["prefs"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"prompt": "New?", "chosen": "Yes.", "rejected": "No."}) + "\n")
    # Prompts that read differently now, as a changed hub data set would: no file changed.
    import lmforge.data.prompts as prompts_module

    load = prompts_module.load_prompts
    monkeypatch.setattr(prompts_module, "load_prompts",
                        lambda refs: [[{"role": "user", "content": "Changed?"}]] + load(refs))
    code, out, err = cli("reproduce", aligned["rlhf"], "--from", aligned["tuned"], "--json")
    assert code == 1, err
    rows = _by_id(out)
    for key in ("reward", "dpo"):
        assert rows[aligned[key]]["verdict"] == "cannot reproduce"
        assert "prefs.jsonl changed (sha256" in rows[aligned[key]]["notes"][0]
    rlhf = rows[aligned["rlhf"]]
    assert rlhf["verdict"] == "cannot reproduce" and rlhf["rebuilt"] is None
    assert rlhf["notes"][0].startswith("the prompts read now differ from what the original read")


def test_an_rlhf_record_without_its_held_out_settings_cannot_be_reproduced(cli, aligned):
    ws = Workspace.open(cli.workspace)
    try:
        original = ws.resolve(aligned["rlhf"])
        rerun = dict(original.metrics["rerun"])
        del rerun["val_data"], rerun["val_fraction"]  # as lmforge recorded it before
        manifest = {**original.manifest, "metrics": {**original.metrics, "rerun": rerun}}
        old = dataclasses.replace(original, manifest=manifest)
        with Workspace.open(cli.workspace.parent / "scratch") as scratch:
            run = Reproduction(ws, scratch)
            for art in lineage_order(ws, aligned["rlhf"])[:-1]:
                run.keep(art)
            result = run.rebuild(old)
    finally:
        ws.close()
    assert result.verdict == "cannot reproduce"
    assert result.notes[0].startswith("the record does not hold val_data and val_fraction")


def test_a_curated_dataset_and_one_curated_from_it_are_rebuilt_identical(cli, tmp_path):
    docs = _stories(tmp_path)
    code, out, err = cli("curate", "--source", f"web={docs}")
    assert code == 0, err
    first = artifact_id(out, "dataset")
    code, out, err = cli("curate", "--source", f"again={first}", "--preset", "docs")
    assert code == 0, err
    second = artifact_id(out, "dataset")
    code, out, err = cli("reproduce", second, "--json")
    assert code == 0, out + err
    rows = _by_id(out)
    assert [rows[a]["verdict"] in ("identical", "equivalent") for a in (first, second)] == \
        [True, True]
    documents = [f for f in rows[second]["files"] if f["path"].endswith(".jsonl")]
    assert documents and all(f["status"] == "identical" for f in documents)
    with open(docs, "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "a document added after curation " * 20}) + "\n")
    code, out, err = cli("reproduce", second, "--json")
    assert code == 1, err
    rows = _by_id(out)
    assert rows[first]["verdict"] == "cannot reproduce"
    assert "web.jsonl changed (sha256" in rows[first]["notes"][0]
    assert rows[second]["passed"]  # curated again from the original, copied in


def test_an_html_report_naming_a_rebuilt_model_reads_as_equivalent(tmp_path):
    """A red-team report.html names the model it attacked; rebuilt, that model has a new id,
    and the page is the same otherwise (seen on the quickstart's lineage)."""
    from lmforge.lifecycle.artifact_diff import _equivalent

    original, rebuilt = tmp_path / "a.html", tmp_path / "b.html"
    original.write_text("<h1>model-402c04eb5789</h1><td>0.062</td>", encoding="utf-8")
    rebuilt.write_text("<h1>model-d09520ee3fad</h1><td>0.062</td>", encoding="utf-8")
    ids = {"model-d09520ee3fad": "model-402c04eb5789"}
    assert _equivalent(original, rebuilt, ids)
    rebuilt.write_text("<h1>model-d09520ee3fad</h1><td>0.125</td>", encoding="utf-8")
    assert not _equivalent(original, rebuilt, ids)
