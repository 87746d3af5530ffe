"""Progress where no one watches a terminal (a log file, CI, nohup): plain lines that say how
far training is, at an interval, at the end, and where it stops."""

import io
import re

import numpy as np
import pytest

from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer
from lmforge.train.batches import TokenWindows
from lmforge.train.loop import train
from lmforge.train.objectives import NextToken
from lmforge.train.progress import PlainProgress, TrainProgress, clock_time, progress_interval
from lmforge.train.settings import TrainSettings

LINE = re.compile(
    r"^train step (?P<step>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\) loss (?P<loss>[\d.]+)"
    r"(?: val loss (?P<val>[\d.]+))? (?P<speed>[\d,]+) (?P<unit>tok|pairs)/s MFU (?P<mfu>[\d.]+)% "
    r"elapsed (?P<elapsed>[\d:]+) ETA (?P<eta>[\d:]+|\?)$")


def parse(text: str) -> list[dict[str, str]]:
    lines = text.splitlines()
    found = [LINE.match(line) for line in lines]
    assert all(found), [line for line, m in zip(lines, found, strict=True) if not m]
    return [m.groupdict() for m in found if m]


class FakeClock:
    """Wall time the test sets, so intervals and ETAs are exact (no timing in the test)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(step: int, **extra) -> dict:
    """What the loop logs: this step's speed, and 1000 tokens per 0.5 s of training so far."""
    return {"step": step, "loss": 5.0 - step / 100, "tokens_per_s": 12345.6, "mfu": 0.314,
            "tokens": step * 1000, "elapsed_s": step * 0.5, **extra}


def test_lines_come_at_the_first_step_every_interval_and_the_last_step():
    out, clock = io.StringIO(), FakeClock()
    plain = PlainProgress(total=100, start=0, stream=out, interval=30, clock=clock)
    for step in range(1, 101):
        clock.now += 1.0  # one step a second
        plain.update(record(step, **({"val_loss": 4.25} if step == 50 else {})))
    plain.close()  # the last step was printed already: nothing more
    lines = parse(out.getvalue())
    assert [int(x["step"]) for x in lines] == [1, 31, 61, 91, 100]
    assert {x["total"] for x in lines} == {"100"}
    first, after_eval, last = lines[0], lines[2], lines[-1]
    assert first["val"] is None and after_eval["val"] == last["val"] == "4.2500"
    assert (first["loss"], first["speed"], first["mfu"]) == ("4.9900", "12,346", "31.4")
    assert (first["elapsed"], first["eta"]) == ("0:01", "1:39")  # 99 steps left at 1 step/s
    assert (last["pct"], last["elapsed"], last["eta"]) == ("100", "1:40", "0:00")
    # Later lines average since the previous one: 2000 tok/s, MFU scaled alike (31.4% at 12,346).
    assert {(x["speed"], x["mfu"]) for x in lines[1:]} == {("2,000", "5.1")}
    assert lines[-2]["pct"] == "91"


def test_a_run_that_stops_early_still_logs_where_it_stood():
    out, clock = io.StringIO(), FakeClock()
    plain = PlainProgress(total=1000, start=400, stream=out, interval=30, clock=clock)
    for step in (401, 402, 403):
        clock.now += 2.0
        plain.update(record(step))
    plain.close()
    lines = parse(out.getvalue())
    assert [x["step"] for x in lines] == ["401", "403"]
    # ETA counts only the steps this process ran: 3 steps in 6 s, 597 to go.
    assert lines[-1]["eta"] == clock_time(597 * 2.0) == "19:54"


def test_progress_goes_to_a_stream_that_is_not_a_terminal(monkeypatch):
    monkeypatch.delenv("LMFORGE_NO_PROGRESS", raising=False)
    out = io.StringIO()
    with TrainProgress(total=3, start=0, stream=out, interval=0) as progress:
        for step in (1, 2, 3):
            progress.update(record(step))
    assert [x["step"] for x in parse(out.getvalue())] == ["1", "2", "3"]
    quiet = io.StringIO()
    with TrainProgress(total=3, start=0, enabled=False, stream=quiet, interval=0) as progress:
        progress.update(record(1))
    assert quiet.getvalue() == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_bar_not_lines(monkeypatch):
    monkeypatch.delenv("LMFORGE_NO_PROGRESS", raising=False)
    out = Terminal()
    with TrainProgress(total=2, start=0, stream=out, interval=0) as progress:
        progress.update(record(1))
    assert progress.plain is None and out.getvalue() == ""


@pytest.mark.parametrize("value, seconds", [(None, 30.0), ("", 30.0), ("5", 5.0),
                                            ("0.5", 0.5), ("0", 0.0)])
def test_the_interval_comes_from_the_environment(monkeypatch, value, seconds):
    if value is None:
        monkeypatch.delenv("LMFORGE_PROGRESS_INTERVAL", raising=False)
    else:
        monkeypatch.setenv("LMFORGE_PROGRESS_INTERVAL", value)
    assert progress_interval() == seconds


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_a_bad_interval_is_one_clear_error(monkeypatch, value):
    monkeypatch.setenv("LMFORGE_PROGRESS_INTERVAL", value)
    with pytest.raises(LmforgeError, match="LMFORGE_PROGRESS_INTERVAL") as e:
        progress_interval()
    assert "LMFORGE_PROGRESS_INTERVAL=30" in e.value.hint


class ArraySource:
    def __init__(self, tokens: np.ndarray):
        self.array, self.tokens = tokens, len(tokens)

    def get(self, start: int, length: int) -> np.ndarray:
        return self.array[start:start + length]


def test_a_training_run_with_stdout_in_a_file_prints_parsable_progress(
        tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LMFORGE_NO_PROGRESS", raising=False)
    monkeypatch.setenv("LMFORGE_PROGRESS_INTERVAL", "0")  # a line every step
    design = ModelDesign(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, vocab_size=64,
                         context_length=32, name="unit")
    model = initialize(Transformer(design), "gpt2", seed=0)
    tokens = np.resize(np.arange(29, dtype=np.uint16), 8_000)
    s = TrainSettings(steps=6, batch_tokens=128, micro_batch=4, seq_len=32, lr=3e-3,
                      warmup_steps=1, eval_every=3, eval_batches=1, checkpoint_every=6,
                      device="cpu")
    source = TokenWindows(ArraySource(tokens), ArraySource(tokens[:2_000]), s.seq_len,
                          s.micro_batch, s.accumulation, s.eval_batches)
    result = train(model, NextToken(), source, s, tmp_path / "run", show_progress=True)
    # capsys's stdout is not a terminal, as a log file is not.
    lines = parse(capsys.readouterr().out)
    assert [int(x["step"]) for x in lines] == [1, 2, 3, 4, 5, 6]
    assert [x["val"] is not None for x in lines] == [False, False, True, True, True, True]
    history = {r["step"]: r for r in result.history}
    for x in lines:  # the numbers are the run's own (printed to 4 decimals)
        step = int(x["step"])
        assert float(x["loss"]) == pytest.approx(history[step]["loss"], abs=5e-5)
        assert int(x["speed"].replace(",", "")) > 0 and float(x["mfu"]) >= 0
    assert float(lines[-1]["val"]) == pytest.approx(history[6]["val_loss"], abs=5e-5)
    assert lines[-1]["eta"] == "0:00"
    assert {x["unit"] for x in lines} == {"tok"}


def test_a_source_that_counts_pairs_shows_pairs_per_second(tmp_path, capsys, monkeypatch):
    """Reward and DPO batches count pairs, not tokens: their speed must not read as tok/s."""
    from lmforge.train.dpo import PairBatches as DPOPairs
    from lmforge.train.dpo import PairUnit
    from lmforge.train.reward import PairBatches as RewardPairs

    monkeypatch.delenv("LMFORGE_NO_PROGRESS", raising=False)
    monkeypatch.setenv("LMFORGE_PROGRESS_INTERVAL", "0")
    design = ModelDesign(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, vocab_size=64,
                         context_length=32, name="unit")
    model = initialize(Transformer(design), "gpt2", seed=0)
    tokens = np.resize(np.arange(29, dtype=np.uint16), 8_000)
    s = TrainSettings(steps=2, batch_tokens=128, micro_batch=4, seq_len=32, lr=3e-3,
                      warmup_steps=1, eval_every=2, eval_batches=1, checkpoint_every=2,
                      device="cpu")
    source = TokenWindows(ArraySource(tokens), ArraySource(tokens[:2_000]), s.seq_len,
                          s.micro_batch, s.accumulation, s.eval_batches)
    source.unit = "pairs"
    train(model, NextToken(), source, s, tmp_path / "run", show_progress=True)
    assert {x["unit"] for x in parse(capsys.readouterr().out)} == {"pairs"}
    # The real pair sources say so.
    unit = PairUnit([1, 2], [3, 4], [4, 5], [3, 6], [6, 7], ref_chosen=-1.0, ref_rejected=-2.0)
    assert DPOPairs([unit], [], seq_len=16, micro_batch=1, accumulation=1,
                    eval_batches=1).unit == "pairs"
    assert RewardPairs([([1, 2, 3], [1, 2, 4])], [], seq_len=16, micro_batch=1,
                       accumulation=1, eval_batches=1).unit == "pairs"
