"""DPO: per-answer log-prob sums equal a hand computation on one sequence at a time, the losses
equal their formulas and TRL's DPOTrainer on the same exported models and batch, a short run
raises the chosen-over-rejected margin on held-out pairs, and bad input stops before training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.data.preferences import PreferencePair, encode_pair
from lmforge.design.spec import ModelDesign
from lmforge.model.init import initialize
from lmforge.model.io import save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.registry import Workspace
from lmforge.tokenizer import train_tokenizer
from lmforge.train.dpo import (
    DPO,
    PairBatches,
    dpo_loss,
    fill_reference_logps,
    make_units,
    pack_units,
    sequence_logps,
    unit_batch,
)
from test_cli import WORDS, artifact_id, corpus_file, design_file, one_clean_error  # noqa: F401
from test_pretrain_cli import setup  # noqa: F401

CPU = torch.device("cpu")
PAIRS = [
    PreferencePair([{"role": "user", "content": "What does math.sqrt do?"}],
                   "Return the square root of x.", "Hello there.", "a"),
    PreferencePair([{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hello?"},
                    {"role": "assistant", "content": "Hi."},  # an earlier turn: not scored
                    {"role": "user", "content": "What is x?"}],
                   "The root.", "Hello friend, what does it do there?", "b"),
    PreferencePair([{"role": "user", "content": "Hi"}], "Hello there, friend.", "x", "c"),
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["What does math.sqrt do? Return the square root of x. Hello "
                            "there, friend. Be brief."] * 50, 300, show_progress=False)


def _model(tok, seed: int, noise: float = 0.0) -> Transformer:
    d = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size,
                    context_length=128)
    m = initialize(Transformer(d), "scaled", seed=seed)
    if noise:  # a reference near the policy, as a starting point is near its tuned model
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(noise * torch.randn(p.shape, generator=g))
    return m


def _hand_logps(model: Transformer, ids: list[int], mask: list[bool]) -> float:
    """One sequence alone, full logits: the sum of log p(token | before) over masked tokens."""
    x = torch.tensor(ids)[None]
    with torch.no_grad():
        logp = model(x[:, :-1]).float().log_softmax(-1)[0]
    picked = logp.gather(1, x[0, 1:, None])[:, 0]
    return float(picked[torch.tensor(mask[1:])].sum())


# ---- log-probs and losses -------------------------------------------------------------------

def test_packed_shared_prefix_logps_equal_one_sequence_at_a_time(tok):
    model = _model(tok, 0).eval()
    units, cut = make_units(tok, PAIRS * 3, 128)
    assert not cut
    rows = pack_units(units, 128)
    assert any(len(r) > 1 for r in rows)  # several pairs share a row
    batch = unit_batch(units, rows, 128, CPU)
    assert batch.tokens == len(units)
    with torch.no_grad():
        chosen, rejected = sequence_logps(model, batch)
    order = [i for row in rows for i in row]
    for k, i in enumerate(order):
        c_ids, c_mask, r_ids, r_mask = encode_pair(tok, (PAIRS * 3)[i])
        # fp32, different batch shapes and attention masks: agree to ~1e-6 relative.
        assert chosen[k].item() == pytest.approx(_hand_logps(model, c_ids, c_mask), rel=1e-5)
        assert rejected[k].item() == pytest.approx(_hand_logps(model, r_ids, r_mask), rel=1e-5)


def test_answers_are_cut_to_fit_and_overlong_prompts_left_out(tok):
    long = PreferencePair([{"role": "user", "content": "Hello there " * 40}], "x", "y", "d")
    prompts = [len(tok.render_chat(p.prompt, add_generation_prompt=True)[0]) for p in PAIRS]
    seq_len = max(prompts) + 3  # room for 4 answer tokens of the longest prompt's pair
    units, cut = make_units(tok, [*PAIRS, long], seq_len)
    assert cut == 1 and len(units) == 3
    for u in units:
        assert u.length <= seq_len and u.chosen_out and u.rejected_out
        assert len(u.chosen_in) == len(u.chosen_out) and len(u.rejected_in) == len(u.rejected_out)


def test_losses_follow_their_formulas():
    pc, pr = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    rc, rr = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -5.0])
    delta = (pc - rc) - (pr - rr)  # [2, -1]
    beta = 0.5
    sig = dpo_loss(pc, pr, rc, rr, beta)
    assert torch.allclose(sig, -F.logsigmoid(beta * delta))
    smooth = dpo_loss(pc, pr, rc, rr, beta, label_smoothing=0.2)
    assert torch.allclose(smooth, -0.8 * F.logsigmoid(beta * delta)
                          - 0.2 * F.logsigmoid(-beta * delta))
    assert torch.allclose(dpo_loss(pc, pr, rc, rr, beta, "hinge"), torch.relu(1 - beta * delta))
    lengths = torch.tensor([[2.0, 4.0], [1.0, 1.0]])
    mean_delta = (pc - rc) / lengths[:, 0] - (pr - rr) / lengths[:, 1]
    assert torch.allclose(dpo_loss(pc, pr, rc, rr, beta, "ipo", lengths=lengths),
                          (mean_delta - 1 / (2 * beta)) ** 2)


# ---- against TRL -----------------------------------------------------------------------------

@pytest.mark.parametrize(("loss", "sft_weight"), [("sigmoid", 0.0), ("ipo", 0.0),
                                                 ("hinge", 0.0), ("sigmoid", 0.5)])
def test_loss_metrics_and_gradients_equal_trls_dpo_trainer(tok, tmp_path, loss, sft_weight):
    """The same models (exported as HF folders), the same three pairs, one batch: lmforge's
    DPO loss equals TRL's DPOTrainer.compute_loss to 1e-5, as do its rewards metrics and the
    gradient of every weight. With an SFT weight, TRL's loss_type [loss, "sft"]."""
    datasets = pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")
    trl = pytest.importorskip("trl")
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    policy, reference = _model(tok, 0), _model(tok, 0, noise=0.05)
    save_model_dir(policy, tmp_path / "policy", tok, "policy")
    save_model_dir(reference, tmp_path / "reference", tok, "reference")
    hf_policy = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "policy",
                                                                  dtype=torch.float32)
    hf_reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "reference",
                                                                     dtype=torch.float32)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "policy")
    data = datasets.Dataset.from_list([
        {"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
         "rejected": [{"role": "assistant", "content": p.rejected}]} for p in PAIRS])
    config = trl.DPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True,
                           bf16=False, beta=0.1, max_length=None,
                           loss_type=[loss, "sft"] if sft_weight else [loss],
                           loss_weights=[1.0, sft_weight] if sft_weight else None,
                           per_device_train_batch_size=len(PAIRS))
    trainer = trl.DPOTrainer(model=hf_policy, ref_model=hf_reference, args=config,
                             train_dataset=data, processing_class=hf_tok)
    examples = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    for pair, ex in zip(PAIRS, examples):  # TRL tokenizes through the exported chat template
        c_ids, _, r_ids, _ = encode_pair(tok, pair)
        assert ex["prompt_ids"] + ex["chosen_ids"] == c_ids
        assert ex["prompt_ids"] + ex["rejected_ids"] == r_ids
    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, trainer.data_collator(examples))
    theirs.backward()

    units, _ = make_units(tok, PAIRS, 128)
    fill_reference_logps(reference, units, 128, 8, CPU)
    policy.train()
    ours, metrics = DPO(0.1, loss, sft_weight=sft_weight)(
        policy, unit_batch(units, pack_units(units, 128), 128, CPU))
    ours.backward()
    # Both fp32; the sums run in other orders: 1e-5 absolute on losses of order 0.1-20.
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                 "logps/chosen", "logps/rejected"):
        assert metrics[name] == pytest.approx(logged[name], abs=1e-4), name
    hf_params = dict(hf_policy.named_parameters())
    for name, p in policy.named_parameters():
        g_hf = hf_params[name].grad
        assert torch.allclose(p.grad, g_hf, atol=1e-5, rtol=1e-4), name


# ---- a short run, and bad input ----------------------------------------------------------------

def _pairs_file(path: Path, words: list[str]) -> Path:
    """Pairs that teach one preference: a kind answer over a rude one, for any subject."""
    kind = ("It is a fine word.", "Glad you asked about it.", "It is a good one.")
    rude = ("Go away now.", "Stop asking me.", "No, leave me alone.")
    with path.open("w") as f:
        for i, w in enumerate(words):
            f.write(json.dumps({"prompt": f"Tell me about {w}.", "chosen": kind[i % 3],
                                "rejected": rude[(i + 1) % 3]}) + "\n")
    return path


def test_a_short_dpo_run_raises_held_out_margins(cli, setup, tmp_path):  # noqa: F811
    words = sorted(set(WORDS))
    train = _pairs_file(tmp_path / "train.jsonl", [f"{a} {b}" for a in words[:8]
                                                   for b in words[:8]])
    heldout = _pairs_file(tmp_path / "heldout.jsonl", [f"{a} {b}" for a in words[8:14]
                                                       for b in words[8:10]])
    code, out, err = cli("finetune", setup["model"], "--method", "dpo", "--data", train,
                         "--val-data", heldout, "--steps", "12", "--lr", "3e-3",
                         "--batch-tokens", "256", "--micro-batch", "4", "--seq-len", "64",
                         "--eval-every", "12", "--beta", "0.5", "--device", "cpu")
    assert code == 0, err
    ws = Workspace.open(cli.workspace)
    try:
        art = ws.resolve(artifact_id(out, "model"))
        state = ws.record(art.id).state
    finally:
        ws.close()
    m = art.metrics
    assert state == "tuned" and art.parents["base"] == setup["model"]
    assert m["method"] == "dpo" and m["loss"] == "sigmoid" and m["steps"] == 12
    # Before training the policy is its reference: margins exactly 0 (same rows, same math).
    assert m["val_rewards/margins_before"] == 0 and m["val_loss_before"] == pytest.approx(
        math.log(2), abs=1e-6)
    assert m["val_rewards/margins"] > 0.5 and m["val_rewards/accuracies"] > 0.9
    assert m["val_loss"] < 0.5 * math.log(2)
    lines = [json.loads(x) for x in (art.path / "training_metrics.jsonl").read_text().splitlines()]
    assert {"rewards/margins", "rewards/accuracies", "val_rewards/margins"} <= set(lines[-1])


def test_bad_pairs_and_other_references_are_refused_before_training(
        cli, setup, tmp_path, corpus_file):  # noqa: F811
    runs = cli.workspace / "runs"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", '
                   '"chosen": "b"}\n')
    code, _, err = cli("finetune", setup["model"], "--method", "dpo", "--data", bad,
                       "--steps", "1", "--device", "cpu", "--seq-len", "64")
    one_clean_error(code, err, f"{bad}:2", "missing field 'rejected'")
    good = _pairs_file(tmp_path / "good.jsonl", [f"{w} {w}" for w in WORDS[:20]])
    # Another vocabulary: a tokenizer of 300 tokens, a model of that size.
    _, out, _ = cli("tokenizer", "train", "--input", corpus_file, "--vocab-size", 300)
    other_tok = artifact_id(out, "tokenizer")
    small = tmp_path / "small.toml"
    small.write_text(setup["design_file"].read_text().replace("400", "300"))
    _, out, _ = cli("init", "--design", small, "--tokenizer", other_tok)
    other_vocab = artifact_id(out, "model")
    # Another architecture: the same tokenizer, three layers.
    deep = tmp_path / "deep.toml"
    deep.write_text(setup["design_file"].read_text().replace("n_layers = 2", "n_layers = 3"))
    _, out, _ = cli("init", "--design", deep, "--tokenizer", setup["tokenizer"])
    other_arch = artifact_id(out, "model")
    runs_before = set(runs.iterdir()) if runs.exists() else set()
    for ref, words in ((other_vocab, ("another tokenizer", "300 tokens against")),
                       (other_arch, ("another architecture", "n_layers 3 vs 2"))):
        code, _, err = cli("finetune", setup["model"], "--method", "dpo", "--data", good,
                           "--reference", ref, "--steps", "1", "--device", "cpu",
                           "--seq-len", "64")
        one_clean_error(code, err, *words)
    code, _, err = cli("finetune", setup["model"], "--method", "dpo", "--data", good,
                       "--loss", "kto", "--device", "cpu", "--seq-len", "64")
    one_clean_error(code, err, "unknown DPO loss 'kto'", "sigmoid")
    code, _, err = cli("finetune", setup["model"], "--method", "sft", "--data", good,
                       "--beta", "0.2")
    one_clean_error(code, err, "are for --method dpo")
    runs_after = set(runs.iterdir()) if runs.exists() else set()
    assert runs_after == runs_before  # nothing started training


def test_pair_batches_resume_reads_what_an_uninterrupted_run_reads(tok):
    units, _ = make_units(tok, PAIRS * 10, 64)
    for u in units:
        u.ref_chosen, u.ref_rejected = -1.0, -2.0
    a = PairBatches(units, units[:3], 64, 2, 2, 1)
    b = PairBatches(units, units[:3], 64, 2, 2, 1)
    for step in range(12):  # several epochs
        x, y = a.step_batches(step, 7, CPU), b.step_batches(step, 7, CPU)
        assert len(x) == 2 and all(torch.equal(p["inputs"], q["inputs"]) for p, q in zip(x, y))
    assert sum(bt.tokens for bt in a.step_batches(0, 7, CPU)) >= 4  # pairs, not tokens
    with pytest.raises(ValueError, match="no reference log-probs"):
        PairBatches(make_units(tok, PAIRS, 64)[0], [], 64, 2, 1, 1)
