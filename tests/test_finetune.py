"""`lmforge finetune --method domain`: continued pretraining through the one loop, with replay
and bits per byte before and after; its refusals."""

import json

import pytest
import torch
from safetensors.torch import load_file

from lmforge.registry import Workspace
from test_cli import artifact_id, corpus_file, design_file, one_clean_error  # noqa: F401
from test_pretrain_cli import ARGS, setup  # noqa: F401

SFT_TUNE = ("--batch-tokens", "512", "--micro-batch", "4", "--seq-len", "64", "--eval-every",
            "10", "--device", "cpu")
TUNE = ("--batch-tokens", "256", "--micro-batch", "4", "--seq-len", "32", "--eval-every", "10",
        "--device", "cpu")


@pytest.fixture
def pretrained(cli, setup):  # noqa: F811
    code, out, err = cli("pretrain", "--model", setup["model"], "--data", setup["tokens"], *ARGS)
    assert code == 0, err
    return {**setup, "base": artifact_id(out, "model")}


@pytest.fixture
def domain(tmp_path):
    """A small corpus unlike the pretraining text: the model must learn it."""
    folder = tmp_path / "domain"
    folder.mkdir()
    for i in range(12):
        clauses = [f"Clause {j}: the party of part {i} shall pay {j * 7 % 13} florins"
                   for j in range(10)]
        (folder / f"contract{i}.txt").write_text(". ".join(clauses) + ".")
    return folder


def test_domain_tuning_lowers_domain_bpb_and_records_forgetting(cli, pretrained, domain):
    code, out, err = cli("finetune", pretrained["base"], "--method", "domain", "--data", domain,
                         "--replay", "0.2", "--steps", "20", "--lr", "3e-3",
                         "--val-fraction", "0.25", *TUNE)
    assert code == 0, err
    tuned = artifact_id(out, "model")
    assert "domain bpb" in out and "general bpb" in out
    ws = Workspace.open(cli.workspace)
    try:
        art = ws.resolve(tuned)
    finally:
        ws.close()
    m = art.metrics
    assert m["domain_bpb_after"] < 0.8 * m["domain_bpb_before"]  # it learned the domain
    assert {"general_bpb_before", "general_bpb_after"} <= set(m)  # forgetting is measured
    assert art.parents["base"] == pretrained["base"]
    assert art.parents["replay"] == pretrained["tokens"]
    _, states, _ = cli("registry", "ls", "--state", "tuned", "--json")
    assert json.loads(states.splitlines()[0])["id"] == tuned


def test_the_same_command_is_the_same_artifact(cli, pretrained, domain):
    args = ("finetune", pretrained["base"], "--method", "domain", "--data", domain,
            "--steps", "3", *TUNE)
    first = artifact_id(cli(*args)[1], "model")
    again = artifact_id(cli(*args)[1], "model")  # resumes the finished run: nothing retrained
    assert first == again
    # The same command on edited files is a new run, not a resume of the old one: the run
    # is keyed by the tokens trained on, not by the folder's name.
    runs = set((cli.workspace / "runs").iterdir())
    (domain / "contract0.txt").write_text("Clause 0: the buyer shall bring apples. " * 10)
    edited = artifact_id(cli(*args)[1], "model")
    assert edited != first and len(set((cli.workspace / "runs").iterdir()) - runs) == 1


def test_bad_fine_tuning_requests_are_refused(cli, setup, pretrained, domain):  # noqa: F811
    code, _, err = cli("finetune", pretrained["base"], "--method", "ppo", "--data", domain)
    one_clean_error(code, err, "unknown fine-tuning method", "domain, sft")
    code, _, err = cli("finetune", setup["model"], "--method", "domain", "--data", domain,
                       "--replay", "0.1", "--steps", "2", *TUNE)
    one_clean_error(code, err, "--replay needs the base's pretraining data")
    code, _, err = cli("finetune", pretrained["base"], "--method", "domain", "--data", domain,
                       "--replay", "1.5")
    one_clean_error(code, err, "replay must be in [0, 1)")
    code, _, err = cli("finetune", pretrained["base"], "--method", "domain", "--data",
                       domain / "nothing-here.txt", "--steps", "2", *TUNE)
    assert code == 2 and "Traceback" not in err


def test_lora_trains_adapters_only_and_merges_into_a_plain_model(cli, pretrained, domain):
    code, out, err = cli("finetune", pretrained["base"], "--method", "domain", "--data", domain,
                         "--lora", "r=4,alpha=8,targets=q_proj+v_proj", "--steps", "6",
                         "--lr", "3e-3", *TUNE)
    assert code == 0, err
    adapter = artifact_id(out, "lora-adapter")
    code, out, err = cli("merge-lora", adapter)
    assert code == 0, err
    merged = artifact_id(out, "model")
    ws = Workspace.open(cli.workspace)
    try:
        art = ws.resolve(adapter)
        assert art.metrics["trainable_fraction"] < 0.1
        assert art.parents["base"] == pretrained["base"]
        base = load_file(str(ws.resolve(pretrained["base"]).file("model.safetensors")))
        tuned = load_file(str(ws.resolve(merged).file("model.safetensors")))
    finally:
        ws.close()
    assert set(base) == set(tuned)  # a plain model: no adapter tensors left
    changed = {n for n in base if not torch.equal(base[n], tuned[n])}
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)


def test_bad_lora_settings_are_refused(cli, pretrained, domain):
    for spec, words in (("r=0", "r"), ("rank=4", "unknown setting"),
                        ("targets=attn", "attn")):
        code, _, err = cli("finetune", pretrained["base"], "--method", "domain", "--data",
                           domain, "--lora", spec, "--steps", "2", *TUNE)
        one_clean_error(code, err, words)


def _chats(path, n=60):
    """Question/answer conversations of a fixed shape (some with a system prompt), as JSONL."""
    import random

    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        messages = [{"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "Answer briefly."})
        rows.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_sft_learns_assistant_turns_only(cli, pretrained, tmp_path):
    data = _chats(tmp_path / "chats.jsonl")
    code, out, err = cli("finetune", pretrained["base"], "--method", "sft", "--data", data,
                         "--steps", "150", "--lr", "3e-3", "--val-fraction", "0.2", *SFT_TUNE)
    assert code == 0, err
    tuned = artifact_id(out, "model")
    ws = Workspace.open(cli.workspace)
    try:
        art = ws.resolve(tuned)
        samples = json.loads(art.file("samples.json").read_text())
    finally:
        ws.close()
    assert art.metrics["method"] == "sft"
    assert art.metrics["val_loss"] < 0.5 * art.metrics["val_loss_before"]
    # Held-out questions are answered in the trained shape.
    assert samples and all(" plus " in s.split("→")[1] for s in samples)


def test_bad_chat_data_is_refused_before_training(cli, pretrained, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                            {"role": "wizard", "content": "boo"}]}) + "\n")
    code, _, err = cli("finetune", pretrained["base"], "--method", "sft", "--data", bad,
                       "--steps", "2", *SFT_TUNE)
    one_clean_error(code, err, "bad.jsonl:1", "wizard")
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"question": "hi", "reply": "there"}) + "\n")
    code, _, err = cli("finetune", pretrained["base"], "--method", "sft", "--data", odd,
                       "--steps", "2", *SFT_TUNE)
    one_clean_error(code, err, "odd.jsonl:1")


def test_recipe_data_falls_back_to_its_public_source_only_when_absent(tmp_path):
    from lmforge.train.finetune import FinetuneSettings, data_refs, training_settings

    here = tmp_path / "chats.jsonl"
    here.write_text("{}\n")
    t = training_settings({}, "test")
    local = FinetuneSettings("m", "sft", (str(here),), t, fallback=("hf:tatsu-lab/alpaca",))
    assert data_refs(local) == ([str(here)], None)
    gone = FinetuneSettings("m", "sft", (str(tmp_path / "gone.jsonl"),), t,
                            fallback=("hf:tatsu-lab/alpaca",))
    refs, note = data_refs(gone)
    assert refs == ["hf:tatsu-lab/alpaca"] and "absent; read its fallback" in note
    builtin = FinetuneSettings("m", "sft", ("pydocs-chat",), t, fallback=("hf:x",))
    assert data_refs(builtin)[0] == ["pydocs-chat"]  # a built-in name is not a missing file


def test_chat_recipe_loads_and_points_at_the_shared_instructions(shared_data):
    from pathlib import Path

    from lmforge.lifecycle.recipe import load_recipe
    from lmforge.lifecycle.stages import STAGES
    from lmforge.train.finetune import FinetuneSettings, data_refs

    path = Path(__file__).parents[1] / "recipes" / "chat.toml"
    recipe = load_recipe(str(path), [], tuple(STAGES))
    step = next(s for s in recipe.steps if s.name == "sft")
    params = {k: v for k, v in step.params.items() if k != "model"}
    s = FinetuneSettings.from_dict({"model": "m", **params}, "sft", path.parent)
    assert s.fallback == ("hf:tatsu-lab/alpaca:train[:1000]",)  # not made a local path
    refs, note = data_refs(s)
    assert note is None and len(refs) == 4
    assert all(Path(r).is_file() for r in refs)
    # The project's own definitions never ask what the samples step asks ("What is a cat?").
    from lmforge.data.chat import load_conversations

    own = [r for r in refs if r.endswith("simple_questions.jsonl")]
    asked = [m["content"] for c in load_conversations(own) for m in c.messages
             if m["role"] == "user"]
    assert len(asked) > 100 and not any("cat" in a.split("?")[0].split() for a in asked)
