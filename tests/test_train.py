"""The training loop: it learns, it resumes exactly after a kill, it stops cleanly."""

import math
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer
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


def fresh_model() -> Transformer:
    return initialize(Transformer(DESIGN), "gpt2", seed=0)


DATA = ArraySource(periodic_tokens(20_000))
VAL = ArraySource(periodic_tokens(2_000))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_loss_falls_well_below_chance(tmp_path, optimizer):
    model = fresh_model()
    result = train(model, NextToken(), DATA, VAL, settings(steps=60, optimizer=optimizer,
                                                          eval_every=60),
                   tmp_path / "run", show_progress=False)
    assert result.val_loss < 0.5 * math.log(DESIGN.vocab_size)
    history = result.history
    assert [r["step"] for r in history] == list(range(1, 61))
    assert {"loss", "tokens_per_s", "mfu", "grad_norm", "lr_mult"} <= set(history[0])


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_train import DATA, VAL, fresh_model, settings
    from lmforge.train.loop import train
    from lmforge.train.objectives import NextToken

    def die(step):
        if step == 13:  # after the checkpoint at step 10, before the end at 20
            os.kill(os.getpid(), signal.SIGKILL)

    train(fresh_model(), NextToken(), DATA, VAL, settings(), {run!r}, on_step=die,
          show_progress=False)
""")


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    uninterrupted = fresh_model()
    train(uninterrupted, NextToken(), DATA, VAL, settings(), tmp_path / "a", show_progress=False)

    run = tmp_path / "b"
    script = KILL_SCRIPT.format(tests=str(__import__("pathlib").Path(__file__).parent),
                                run=str(run))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (run / "checkpoints" / "latest").read_text() == "step_0000010"

    resumed = fresh_model()  # a new process would start from v0 too; the checkpoint wins
    result = train(resumed, NextToken(), DATA, VAL, settings(), run, show_progress=False)
    assert result.steps == 20
    for (name, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    steps = [r["step"] for r in result.history]
    assert steps == list(range(1, 21))  # the lost steps 11-13 were logged once, not twice


def test_sigterm_checkpoints_the_current_step_and_stops(tmp_path):
    def term(step):
        if step == 4:
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(Interrupted, match="step 4"):
        train(fresh_model(), NextToken(), DATA, VAL, settings(checkpoint_every=100),
              tmp_path / "run", on_step=term, show_progress=False)
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_0000004"


def test_early_stopping_keeps_the_best_step(tmp_path):
    # A learning rate far too high: validation loss turns up, and the loop stops.
    result = train(fresh_model(), NextToken(), DATA, VAL,
                   settings(steps=200, lr=0.3, warmup_steps=0, eval_every=5,
                            early_stop_patience=2, grad_clip=100.0),
                   tmp_path / "run", show_progress=False)
    assert result.stopped_early and result.steps < 200
    assert (tmp_path / "run" / "best.safetensors").is_file()
    vals = [r["val_loss"] for r in result.history if "val_loss" in r]
    assert result.val_loss == min(vals)


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
    with pytest.raises(LmforgeError, match="unknown training setting"):
        TrainSettings.from_dict({"learning_rate": 1}, "recipe")
    with pytest.raises(LmforgeError, match="say how long"):
        TrainSettings().total_steps(1000)
