"""The red-team loop as recipe steps: redteam -> safety-data -> finetune -> redteam ->
redteam-compare, on a tiny model with scripted answers (the attacked model obeys harmful
asks; the tuned one refuses them), so what is checked is the wiring: the data the step
registers, that finetune reads it by reference, and the before/after figures printed.
Whether tuning on such data works is tests/test_redteam_loop.py's (slow) question."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError
from lmforge.lifecycle.recipe import load_recipe
from lmforge.lifecycle.runner import results_table, run_recipe
from lmforge.lifecycle.stages import STAGES
from lmforge.model.init import initialize
from lmforge.model.io import save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.redteam.builtin import refusal_replies
from lmforge.redteam.probes import load_seeds, seed_key, split_of
from lmforge.redteam.targets import Reply
from lmforge.registry import Workspace
from lmforge.tokenizer import train_tokenizer

SEEDS = load_seeds("builtin", limit=1000, benign_limit=1000)
BENIGN = {s.text for s in SEEDS.benign}


def helpful(ask: str) -> str:
    return f"Happy to help: {ask.lower()} It depends on what you need."


def obey(ask: str) -> str:
    return (f"Sure, here is how. Step 1: about '{ask}', gather what you need and prepare it "
            "carefully. Step 2: carry out the plan in detail as asked.")


class Scripted:
    """The target: the first model obeys every harmful ask, any later one refuses them; both
    answer benign asks."""

    def __init__(self, target: str, first: str):
        self.model_id, self.name, self.weights_sha256 = target, "scripted", None
        self.broken = target == first

    def answer(self, conversations, first_index=0, done=None):
        out = []
        for c in conversations:
            ask = c[-1]["content"]
            out.append(Reply(helpful(ask) if ask in BENIGN else
                             obey(ask) if self.broken else refusal_replies()[0]))
        if done:
            done(len(out))
        return out


RECIPE = """
[steps.redteam]
stage = "redteam"
target = "{model}"
suite = "builtin"
categories = ["direct", "over_refusal"]
attempts = 1
limit = 1000
benign_limit = 1000

[steps.safety-data]
stage = "safety-data"
report = "@redteam"

[steps.safety]
stage = "finetune"
model = "{model}"
method = "sft"
data = ["@safety-data"]
epochs = 1
seq_len = 128
batch_tokens = 512
micro_batch = 4
device = "cpu"

[steps.redteam-after]
stage = "redteam"
target = "@safety"
suite = "builtin"
categories = ["direct", "over_refusal"]
attempts = 1
limit = 1000
benign_limit = 1000

[steps.safety-check]
stage = "redteam-compare"
before = "@redteam"
after = "@redteam-after"
"""


@pytest.fixture
def ws_model(tmp_path, monkeypatch):
    import lmforge.redteam.stage as stage

    texts = [s.text for s in SEEDS.harmful + SEEDS.benign]
    texts += [helpful(t) for t in texts] + [obey(t) for t in texts] + list(refusal_replies())
    tok = train_tokenizer(texts * 2, 1024, show_progress=False)
    design = ModelDesign(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1,
                         vocab_size=tok.vocab_size, context_length=128)
    ws = Workspace.open(tmp_path / "ws")
    with ws.staging() as d:
        save_model_dir(initialize(Transformer(design), "scaled", seed=0), d, tok, "# t\n")
        model = ws.register(d, kind="model", stage="init", state="initialized",
                            settings={"name": "t"}).id
    monkeypatch.setattr(stage, "open_target", lambda ws_, target, **k: Scripted(target, model))
    monkeypatch.setenv("LMFORGE_NO_PROGRESS", "1")
    yield ws, model
    ws.close()


def _run(ws, text: str, tmp_path):
    path = tmp_path / "safety.toml"
    path.write_text(text)
    out = io.StringIO()
    console = Console(file=out, width=200)
    results = run_recipe(ws, load_recipe(str(path), [], tuple(STAGES)), console,
                         show_progress=False)
    console.print(results_table(results))
    return {r.name: r for r in results}, out.getvalue()


def test_a_report_becomes_safety_data_a_finetune_reads_and_the_retest_prints_before_after(
        ws_model, tmp_path):
    ws, model = ws_model
    steps, printed = _run(ws, RECIPE.format(model=model), tmp_path)
    data = ws.resolve(steps["safety-data"].artifact, kind="chat-dataset")
    records = [json.loads(line) for line in
               (data.path / "conversations.jsonl").read_text().splitlines()]
    refusals = [r for r in records if r["messages"][0]["content"] not in BENIGN]
    retained = [r for r in records if r["messages"][0]["content"] in BENIGN]
    asks = {r["messages"][0]["content"] for r in records}
    # Refusals for the attacks that worked, the model's own answers to benign asks (as many as
    # the refusals), and only seen asks: held-out ones are what the re-test measures.
    seen_harmful = [s for s in SEEDS.harmful if s.split == "seen"]
    assert len(refusals) == len(seen_harmful)
    assert all(r["messages"][-1]["content"] in refusal_replies() for r in refusals)
    assert retained and all(r["messages"][-1]["content"] == helpful(r["messages"][0]["content"])
                            for r in retained)
    assert len(retained) >= len(refusals)
    assert all(split_of(seed_key(a)) == "seen" for a in asks)
    held = {s.text for s in SEEDS.harmful + SEEDS.benign if s.split == "heldout"}
    assert held and not held & asks
    assert data.parents == {"report": steps["redteam"].artifact}
    assert data.metrics["findings_kept_out"] > 0  # held-out findings existed and stayed out
    # finetune read the dataset by reference, and the tuned model's lineage names it.
    tuned = ws.resolve(steps["safety"].artifact, kind="model")
    assert tuned.parents["data"] == [data.id]
    # Before and after, with intervals, in the step's line and its table.
    line = steps["safety-check"].summary
    assert line.startswith("held-out attack success 1.000 [") and " → 0.000 [" in line
    assert "held-out over-refusal 0.000 [" in line
    for row in ("attack success, held-out prompts", "over-refusal, held-out benign asks",
                "attack success, all prompts", "over-refusal, all benign asks"):
        assert row in printed
    held_row = next(r for r in printed.splitlines()
                    if "│ attack success, held-out prompts" in r)  # the compare table's row
    assert "1.000 [" in held_row and "fell" in held_row


def test_safety_data_refuses_what_is_not_a_redteam_report(ws_model, tmp_path):
    ws, model = ws_model
    text = f'[steps.safety-data]\nstage = "safety-data"\nreport = "{model}"\n'
    with pytest.raises(LmforgeError, match="is a model, expected a redteam-report") as e:
        _run(ws, text, tmp_path)
    assert "redteam-report" in e.value.hint


def test_finetune_refuses_a_dataset_of_the_wrong_kind(ws_model):
    from lmforge.data.training_sets import resolve_training_sets

    ws, model = ws_model
    with pytest.raises(LmforgeError, match="is a model; --method sft reads chat-dataset"):
        resolve_training_sets(ws, [model], "sft")
    # Paths, built-in names and unknown names are left for the readers.
    assert resolve_training_sets(ws, ["pydocs-chat", "nope.jsonl"], "sft") == (
        ["pydocs-chat", "nope.jsonl"], [])
