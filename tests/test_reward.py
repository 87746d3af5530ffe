"""Reward models: the Bradley–Terry loss by hand, learning a separable toy set through the one
loop, ranking held-out pairs as a judge, the `reward-model` artifact from `lmforge finetune
--method reward`, and the checks between models that RLHF relies on."""

import json
import math
from pathlib import Path

import pytest
import torch

from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError
from lmforge.model.init import initialize
from lmforge.model.io import save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.registry import Workspace
from lmforge.tokenizer import train_tokenizer
from lmforge.train.batches import Batch
from lmforge.train.compat import check_reference, tokenizer_difference
from lmforge.train.loop import evaluate, train
from lmforge.train.reward import BradleyTerry, PairBatches, RewardModel, load_reward_model
from lmforge.train.settings import TrainSettings
from test_cli import artifact_id, one_clean_error

NAMES = ["cat", "dog", "bird", "fish", "tree", "lamp", "book", "cup", "door", "road", "sun",
         "moon", "star", "rain", "snow", "wind"]
TEXT = [f"What is a {n}? A {n} is good. A {n} is bad. It helps. It hurts." for n in NAMES] * 10


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXT, 300, show_progress=False)


def tiny(tok, seed=0, **changes) -> Transformer:
    design = ModelDesign(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1,
                         vocab_size=tok.vocab_size, context_length=64).replace(**changes)
    return initialize(Transformer(design), "scaled", seed=seed)


def toy_pairs(names):
    """(prompt, chosen, rejected): the good answer always names a good thing."""
    out = []
    for n in names:
        out.append((f"What is a {n}?", f"A {n} is good.", f"A {n} is bad."))
        out.append((f"Tell me of a {n}.", "It helps.", "It hurts."))
    return out


def encode(tok, prompt, answer):
    return tok.render_chat([{"role": "user", "content": prompt},
                            {"role": "assistant", "content": answer}])[0]


class FixedHidden(torch.nn.Module):
    """A stand-in model whose last hidden state's first feature is a chosen score."""

    def __init__(self, scores):
        super().__init__()
        self.scores = torch.tensor(scores)

    def hidden(self, ids):
        h = torch.zeros(ids.shape[0], ids.shape[1], 4)
        h[:, :, 0] = self.scores[:, None]
        return h


def test_bradley_terry_loss_and_accuracy_by_hand():
    objective = BradleyTerry(4)
    with torch.no_grad():
        objective.head.weight.copy_(torch.tensor([[1.0, 0, 0, 0]]))
    # Chosen scores 2 and 0, rejected 0 and 1: margins 2 and -1.
    batch = Batch({"inputs": torch.zeros(4, 3, dtype=torch.long),
                   "lengths": torch.tensor([3, 2, 3, 1])}, 2)
    loss, metrics = objective(FixedHidden([2.0, 0.0, 0.0, 1.0]), batch)
    want = (math.log1p(math.exp(-2)) + math.log1p(math.exp(1))) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)  # one float32 op chain: 1e-6
    assert metrics["accuracy"] == 0.5
    assert metrics["margin"] == pytest.approx(0.5)


def _settings(**kw) -> TrainSettings:
    base = dict(steps=30, batch_tokens=8 * 32, micro_batch=8, seq_len=32, lr=3e-3,
                warmup_steps=2, eval_every=15, eval_batches=2, checkpoint_every=100,
                device="cpu")
    return TrainSettings(**{**base, **kw})


def test_a_reward_model_learns_a_separable_set_and_ranks_held_out_pairs(tok, tmp_path):
    def encoded(names):
        return [(encode(tok, p, c), encode(tok, p, r)) for p, c, r in toy_pairs(names)]

    s = _settings()
    source = PairBatches(encoded(NAMES[:12]), encoded(NAMES[12:]), 32, 8, s.accumulation, 2)
    model = tiny(tok)
    objective = BradleyTerry(32, seed=0)
    before = evaluate(model, objective, source, torch.device("cpu"), None)
    result = train(model, objective, source, s, tmp_path / "run", show_progress=False)
    after = evaluate(model, objective, source, torch.device("cpu"), None)
    assert after["accuracy"] == 1.0  # names never trained on: it learned the answers' words
    assert after["loss"] < 0.1 < before["loss"]
    assert result.history[-1]["val_accuracy"] == 1.0
    # As a judge: the same ranking from score() on text, and batching does not change a score.
    judge = RewardModel(model, objective.head, tok)
    items = []
    for prompt, chosen, rejected in toy_pairs(NAMES[12:]):
        messages = [{"role": "user", "content": prompt}]
        assert judge.score(messages, chosen) > judge.score(messages, rejected)
        items += [(messages, chosen), (messages, rejected)]
    one_by_one = [judge.score(m, a) for m, a in items]
    together = judge.score_batch(items, batch_size=3)
    assert together == pytest.approx(one_by_one, abs=1e-4)  # padded rows vs alone: 1e-4


def test_pair_batches_are_a_function_of_seed_and_step(tok):
    pairs = [([1, 2, i], [1, 3, i]) for i in range(4, 14)]
    source = PairBatches(pairs, pairs[:2], 32, 2, 2, 1)
    first = source.step_batches(3, 0, torch.device("cpu"))
    again = source.step_batches(3, 0, torch.device("cpu"))
    assert len(first) == 2 and all(b.tokens == 2 for b in first)
    for a, b in zip(first, again):
        assert torch.equal(a["inputs"], b["inputs"])
    # Chosen rows first, then the rejected rows of the same pairs.
    rows = first[0]["inputs"]
    assert torch.equal(rows[:2, 2], rows[2:, 2]) and (rows[:2, 1] == 2).all()
    assert source.tokens == 10 * 32  # pairs x seq_len: `epochs` counts passes over pairs


# ---- the artifact, through the CLI -----------------------------------------------------------


def register_model(root: Path, model: Transformer, tok, name="tiny") -> str:
    ws = Workspace.open(root)
    try:
        with ws.staging() as d:
            save_model_dir(model, d, tok, f"# {name}\n")
            return ws.register(d, kind="model", stage="init", state="initialized",
                               settings={"name": name}).id
    finally:
        ws.close()


def prefs_file(tmp_path: Path) -> Path:
    f = tmp_path / "prefs.jsonl"
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in toy_pairs(NAMES)]
    rows.append({"prompt": "Same?", "chosen": "It helps.", "rejected": "It helps."})
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


TUNE = ("--steps", "24", "--lr", "3e-3", "--batch-tokens", "256", "--micro-batch", "8",
        "--seq-len", "32", "--eval-every", "12", "--val-fraction", "0.25", "--device", "cpu")


def test_finetune_method_reward_registers_a_reward_model(cli, tok, tmp_path):
    base = register_model(cli.workspace, tiny(tok), tok)
    code, out, err = cli("finetune", base, "--method", "reward", "--data",
                         prefs_file(tmp_path), *TUNE)
    assert code == 0, err
    rm_id = artifact_id(out, "reward-model")
    assert "held-out pair accuracy" in out and "1 pair skipped: identical answers" in out
    ws = Workspace.open(cli.workspace)
    try:
        art = ws.resolve(rm_id)
        assert art.kind == "reward-model" and art.parents["base"] == base
        assert art.metrics["val_accuracy"] >= 0.85 and art.metrics["val_pairs"] >= 2
        assert {"reward_head.safetensors", "reward_config.json", "model.safetensors"} <= \
            set(art.files)
        judge = load_reward_model(ws, rm_id)
        messages = [{"role": "user", "content": "What is a cat?"}]
        assert judge.score(messages, "A cat is good.") > judge.score(messages, "A cat is bad.")
        with pytest.raises(LmforgeError, match="is a model, not a reward model"):
            load_reward_model(ws, base)
    finally:
        ws.close()
    # The same command again is the same artifact (the finished run is resumed, not redone).
    code, again, err = cli("finetune", base, "--method", "reward", "--data",
                           prefs_file(tmp_path), *TUNE)
    assert code == 0, err
    assert artifact_id(again, "reward-model") == rm_id


def test_reward_requests_that_cannot_work_are_refused(cli, tok, tmp_path):
    base = register_model(cli.workspace, tiny(tok), tok)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Hi?", "chosen": "Hello."}\n')
    code, _, err = cli("finetune", base, "--method", "reward", "--data", bad, *TUNE)
    one_clean_error(code, err, "bad.jsonl:1")
    code, _, err = cli("finetune", base, "--method", "reward", "--data", prefs_file(tmp_path),
                       "--reward", "x", *TUNE)
    one_clean_error(code, err, "for --method rlhf")


# ---- checks between models ------------------------------------------------------------------


def test_tokenizers_and_references_are_compared(tok):
    assert tokenizer_difference(tok, tok) is None
    other = train_tokenizer([t.upper() for t in TEXT], 300, show_progress=False)
    assert tokenizer_difference(tok, other) is not None
    smaller = train_tokenizer(TEXT, 280, show_progress=False)
    assert "tokens against" in tokenizer_difference(tok, smaller)
    policy = tiny(tok)
    check_reference((policy.design, tok), (tiny(tok, seed=1).design, tok), "p", "r")  # fine
    with pytest.raises(LmforgeError, match="another architecture.*n_layers 2 vs 1"):
        check_reference((policy.design, tok), (tiny(tok, n_layers=2).design, tok), "p", "r")
    with pytest.raises(LmforgeError, match="another tokenizer"):
        check_reference((policy.design, tok), (policy.design, other), "p", "r")
