"""The training loop: it learns, it resumes exactly after a kill, it stops cleanly."""

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError
from lmforge.model.init import initialize
from lmforge.model.loss import IGNORE_INDEX
from lmforge.model.transformer import Transformer
from lmforge.train.batches import PackedSequences, TokenWindows
from lmforge.train.loop import Interrupted, train
from lmforge.train.muon import Muon, orthogonalize
from lmforge.train.objectives import NextToken
from lmforge.train.schedule import lr_multiplier
from lmforge.train.settings import TrainSettings

DESIGN = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=64,
                     context_length=64, name="unit")


class ArraySource:
    """Token data in memory, shaped like TokenShards for the loop."""

    def __init__(self, tokens: np.ndarray):
        self.array, self.tokens = tokens, len(tokens)

    def get(self, start: int, length: int) -> np.ndarray:
        return self.array[start:start + length]


def periodic_tokens(n: int, period: int = 29, seed: int = 0) -> np.ndarray:
    pattern = np.random.default_rng(seed).integers(0, DESIGN.vocab_size, period)
    return np.resize(pattern, n).astype(np.uint16)


def settings(**kw) -> TrainSettings:
    base = dict(steps=20, batch_tokens=256, micro_batch=4, seq_len=32, lr=3e-3, warmup_steps=3,
                eval_every=10, eval_batches=2, checkpoint_every=10, device="cpu")
    return TrainSettings(**{**base, **kw})


def windows(s: TrainSettings, train_src=None, val_src=None) -> TokenWindows:
    return TokenWindows(train_src or DATA, val_src or VAL, s.seq_len, s.micro_batch,
                        s.accumulation, s.eval_batches)


def run(model, s: TrainSettings, run_dir, objective=None, source=None, **kw):
    return train(model, objective or NextToken(), source or windows(s), s, run_dir,
                 show_progress=False, **kw)


def fresh_model() -> Transformer:
    return initialize(Transformer(DESIGN), "gpt2", seed=0)


DATA = ArraySource(periodic_tokens(20_000))
VAL = ArraySource(periodic_tokens(2_000))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_loss_falls_well_below_chance(tmp_path, optimizer):
    model = fresh_model()
    result = run(model, settings(steps=60, optimizer=optimizer, eval_every=60), tmp_path / "run")
    assert result.val_loss < 0.5 * math.log(DESIGN.vocab_size)
    history = result.history
    assert [r["step"] for r in history] == list(range(1, 61))
    assert {"loss", "tokens_per_s", "mfu", "grad_norm", "lr_mult"} <= set(history[0])
    assert result.tokens == 60 * 256


class RecordingWindows(TokenWindows):
    """Token windows that append every step they serve to a file (flushed and fsynced), so a
    test can see which steps a process really ran."""

    def __init__(self, s: TrainSettings, log: str):
        super().__init__(DATA, VAL, s.seq_len, s.micro_batch, s.accumulation, s.eval_batches)
        self.log = log

    def step_batches(self, step, seed, device):
        with open(self.log, "a") as f:
            f.write(f"{step + 1}\n")
            f.flush()
            os.fsync(f.fileno())
        return super().step_batches(step, seed, device)


def served_steps(path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import lmforge.train.checkpoint as checkpoint
    from test_train import RecordingWindows, fresh_model, settings
    from lmforge.train.loop import train
    from lmforge.train.objectives import NextToken

    def die(step):
        if {mode!r} == "after_step" and step == 13:  # after the checkpoint at step 10
            os.kill(os.getpid(), signal.SIGKILL)

    if {mode!r} == "inside_checkpoint":
        # Die half-way through writing the step-20 checkpoint: its model file is written,
        # its optimizer file is not, and nothing has been renamed or pointed at yet.
        real_save = checkpoint.save_file
        def save_file(tensors, path, *a, **kw):
            real_save(tensors, path, *a, **kw)
            if "step_0000020" in path and path.endswith("model.safetensors"):
                os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.save_file = save_file

    s = settings()
    train(fresh_model(), NextToken(), RecordingWindows(s, {log!r}), s, {run!r}, on_step=die,
          show_progress=False)
""")


def _killed_run(tmp_path, mode: str):
    run_dir, log = tmp_path / "b", tmp_path / "first.log"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), run=str(run_dir),
                                log=str(log), mode=mode)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return run_dir, served_steps(log)


def _same_weights(a: Transformer, b: Transformer) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("mode", ["after_step", "inside_checkpoint"])
def test_kill_9_then_resume_runs_only_the_missing_steps(tmp_path, mode):
    """A kill -9 after step 13, or inside the writing of the step-20 checkpoint: the resumed
    run is served only steps 11..20 (it did not start again from step 1), and ends on the
    same weights, bit for bit, as a run that was never stopped. Bitwise is right here: the
    same process kind, thread count and data; only the stop differs."""
    uninterrupted = fresh_model()
    run(uninterrupted, settings(), tmp_path / "a")

    run_dir, first = _killed_run(tmp_path, mode)
    latest = (run_dir / "checkpoints" / "latest").read_text()
    assert latest == "step_0000010"  # a half-written checkpoint is never pointed at
    assert first == list(range(1, 14 if mode == "after_step" else 21))

    s = settings()
    resumed = fresh_model()  # a new process would start from v0 too; the checkpoint wins
    log = tmp_path / "second.log"
    result = run(resumed, s, run_dir, source=RecordingWindows(s, str(log)))
    assert served_steps(log) == list(range(11, 21))
    assert result.steps == 20
    _same_weights(uninterrupted, resumed)
    steps = [r["step"] for r in result.history]
    assert steps == list(range(1, 21))  # the lost steps were logged once, not twice
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # the torn one was cleaned


def test_sigterm_checkpoints_the_current_step_and_stops(tmp_path):
    def term(step):
        if step == 4:
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(Interrupted, match="step 4"):
        run(fresh_model(), settings(checkpoint_every=100), tmp_path / "run", on_step=term)
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_0000004"


def test_early_stopping_keeps_the_best_step(tmp_path):
    # A learning rate far too high: validation loss turns up, and the loop stops.
    result = run(fresh_model(), settings(steps=200, lr=0.3, warmup_steps=0, eval_every=5,
                                         early_stop_patience=2, grad_clip=100.0),
                 tmp_path / "run")
    assert result.stopped_early and result.steps < 200
    assert (tmp_path / "run" / "best.safetensors").is_file()
    vals = [r["val_loss"] for r in result.history if "val_loss" in r]
    assert result.val_loss == min(vals)


class ScaledNextToken(torch.nn.Module):
    """An objective that owns a parameter: a learned temperature on the logits. Stands in for
    a reward or value head: the loop must optimize and checkpoint it with the model."""

    name = "scaled_next_token"

    def __init__(self):
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.tensor(-1.0))

    def forward(self, model, batch):
        hidden = model.hidden(batch["inputs"])
        logits = model.lm_head(hidden).float() * self.log_scale.exp()
        loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())
        return loss, {"scale": self.log_scale.exp().item()}


def test_objective_parameters_are_trained_checkpointed_and_resumed(tmp_path):
    s = settings(steps=20)
    whole = ScaledNextToken()
    run(fresh_model(), s, tmp_path / "a", objective=whole)
    assert abs(whole.log_scale.item() + 1.0) > 0.01  # it moved from -1: the optimizer saw it
    assert (tmp_path / "a" / "checkpoints" / "step_0000020" / "objective.safetensors").is_file()

    def stop(step):
        if step == 10:
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(Interrupted):
        run(fresh_model(), s, tmp_path / "b", objective=ScaledNextToken(), on_step=stop)
    model, part = fresh_model(), ScaledNextToken()
    result = run(model, s, tmp_path / "b", objective=part)
    assert result.steps == 20
    assert torch.equal(part.log_scale, whole.log_scale)
    assert "scale" in result.history[-1] and "val_scale" in result.history[-1]


def test_packed_sequences_train_through_the_same_loop(tmp_path):
    """Documents of many lengths, packed with segment ids and a loss mask that hides each
    document's first half: the loop counts only the learned tokens and the loss falls."""
    rng = np.random.default_rng(0)
    period = periodic_tokens(29)[:29].tolist()

    def doc(n):
        start = int(rng.integers(0, 29))
        ids = [period[(start + i) % 29] for i in range(n)]
        return ids, [i >= n // 2 for i in range(n)]

    train_docs = [doc(int(rng.integers(8, 40))) for _ in range(300)]
    val_docs = [doc(int(rng.integers(8, 40))) for _ in range(20)]
    s = settings(steps=40, eval_every=40)
    source = PackedSequences(train_docs, val_docs, s.seq_len, s.micro_batch, s.accumulation,
                             s.eval_batches)
    batches = source.step_batches(0, 0, torch.device("cpu"))
    for b in batches:
        assert b.tokens == int((b["targets"] != IGNORE_INDEX).sum()) > 0
        assert b.tokens < b["inputs"].numel()  # masked and padded positions are not counted
    assert source.step_batches(7, 0, torch.device("cpu"))[0]["inputs"].tolist() == \
        source.step_batches(7, 0, torch.device("cpu"))[0]["inputs"].tolist()
    result = run(fresh_model(), s, tmp_path / "run", source=source)
    assert result.val_loss < 0.5 * math.log(DESIGN.vocab_size)
    assert result.tokens == sum(b.tokens for step in range(40)
                                for b in source.step_batches(step, 0, torch.device("cpu")))


def test_micro_batches_are_weighted_by_their_real_tokens():
    """Splitting a step's packed rows into more micro-batches leaves its loss unchanged: each
    micro-batch's mean loss counts by its share of the step's learned tokens. Tolerance 1e-5:
    the same sums in another order."""
    docs = [(list(range(1, n + 1)), None) for n in (5, 30, 9, 31, 3, 17, 26, 12)]
    model = fresh_model()
    losses = []
    for micro, acc in ((4, 1), (1, 4), (2, 2)):
        src = PackedSequences(docs, docs, 32, micro, acc, 1)
        with torch.no_grad():
            batches = src.step_batches(0, 0, torch.device("cpu"))
            total = sum(b.tokens for b in batches)
            losses.append(sum(NextToken()(model, b)[0].item() * b.tokens / total
                              for b in batches))
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    assert losses[2] == pytest.approx(losses[0], abs=1e-5)


def test_schedules():
    assert lr_multiplier(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_multiplier(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_multiplier(99, 100, 10, "cosine", min_ratio=0.1) == pytest.approx(0.1, abs=1e-3)
    assert lr_multiplier(50, 100, 10, "wsd") == 1.0
    assert lr_multiplier(90, 100, 10, "wsd", min_ratio=0.0) == pytest.approx(0.5)
    with pytest.raises(LmforgeError):
        lr_multiplier(0, 10, 0, "linear")


def test_muon_orthogonalizes_and_descends():
    g = torch.randn(32, 96, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(orthogonalize(g))
    assert 0.6 < s.min() and s.max() < 1.25  # all directions move at a similar rate
    w = torch.nn.Parameter(torch.randn(16, 16))
    target = torch.randn(16, 16)
    opt = Muon([w], lr=0.1)
    first = None
    for _ in range(100):
        loss = ((w - target) ** 2).mean()
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        w.grad = None
    assert loss.item() < 0.05 * first


def test_settings_are_checked_before_training():
    with pytest.raises(LmforgeError, match="not a multiple"):
        TrainSettings(batch_tokens=1000, micro_batch=4, seq_len=32)
    with pytest.raises(LmforgeError, match=r"\(training\): unknown setting\(s\) learning_rate"):
        TrainSettings.from_dict({"learning_rate": 1}, "recipe")
    with pytest.raises(LmforgeError, match="say how long"):
        TrainSettings().total_steps(1000)
