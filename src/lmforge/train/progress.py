"""What a training run shows and keeps: a progress bar on a terminal, plain progress lines
where stdout is not one (a log file, CI, nohup), and a JSONL metrics log (plus TensorBoard
event files where the tensorboard package is installed)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lmforge.errors import LmforgeError
from lmforge.registry import atomic_write_text

INTERVAL_ENV = "LMFORGE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tensorboard = _tensorboard_writer(path.parent / "tensorboard")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tensorboard.add_scalar(key, value, record["step"])

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        return records

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: after a resume they would be written again."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder))


def progress_interval() -> float:
    """Seconds between plain progress lines: $LMFORGE_PROGRESS_INTERVAL, else 30."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise LmforgeError(f"{INTERVAL_ENV}={text!r} is not a number of seconds",
                           hint=f"set seconds between progress lines, e.g. {INTERVAL_ENV}=30 "
                                "(0: every step)")
    return seconds


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False


def clock_time(seconds: float) -> str:
    """1:02:03 or 4:05, like the bar's elapsed and ETA columns."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class PlainProgress:
    """Progress as plain lines for logs: the first step, then one line per `interval` seconds
    of wall time, the last step, and wherever the run stops. Each line reads
    `train step 120/1000 (12%) loss 3.4120 val loss 3.5010 45,120 tok/s MFU 31.0% elapsed 1:02
    ETA 8:44` (one line; `val loss`, the latest, once there is one). Tokens/s and MFU are
    averages since the previous line: one step's speed swings too much to stand for 30 s."""

    def __init__(self, total: int, start: int, stream: TextIO, interval: float,
                 clock: Callable[[], float] = time.monotonic, unit: str = "tok"):
        self.total, self.start, self.stream, self.interval = total, start, stream, interval
        self.unit = unit  # what a step's count counts: tokens, or pairs (reward, DPO)
        self.clock = clock
        self.began = clock()
        self.printed_at: float | None = None
        self.last: dict[str, Any] | None = None
        self.last_printed = False
        self.val_loss: float | None = None
        self.mark: tuple[float, float] | None = None  # (tokens, train seconds) at the last line

    def update(self, r: dict[str, Any]) -> None:
        self.last, self.last_printed = r, False
        if "val_loss" in r:
            self.val_loss = r["val_loss"]
        now = self.clock()
        if (self.printed_at is None or now - self.printed_at >= self.interval
                or r["step"] >= self.total):
            self._print(r, now)

    def close(self) -> None:
        """Where a run stops before its last step (early stop, Ctrl-C, an error), the log
        still ends with where it stood."""
        if self.last is not None and not self.last_printed:
            self._print(self.last, self.clock())

    def line(self, r: dict[str, Any], now: float) -> str:
        step = r["step"]
        elapsed = now - self.began
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0  # steps per second here
        eta = clock_time((self.total - step) / rate) if rate > 0 else "?"
        val = f" val loss {self.val_loss:.4f}" if self.val_loss is not None else ""
        speed, mfu = r["tokens_per_s"], r["mfu"]
        if self.mark is not None and "tokens" in r and "elapsed_s" in r:
            seconds = r["elapsed_s"] - self.mark[1]
            if seconds > 0 and speed > 0:
                average = (r["tokens"] - self.mark[0]) / seconds
                speed, mfu = average, mfu * average / speed  # MFU is proportional to speed
        return (f"train step {step}/{self.total} ({100 * step // max(1, self.total)}%) "
                f"loss {r['loss']:.4f}{val} {speed:,.0f} {self.unit}/s "
                f"MFU {mfu:.1%} elapsed {clock_time(elapsed)} ETA {eta}")

    def _print(self, r: dict[str, Any], now: float) -> None:
        self.stream.write(self.line(r, now) + "\n")
        self.stream.flush()  # a log tailed while the run goes on shows it now
        self.printed_at, self.last_printed = now, True
        if "tokens" in r and "elapsed_s" in r:
            self.mark = (r["tokens"], r["elapsed_s"])


class TrainProgress:
    """A rich progress bar with loss, tokens/s, MFU and ETA on a terminal (stderr); eval lines
    printed above it. Where stdout is not a terminal, plain lines go to it every
    $LMFORGE_PROGRESS_INTERVAL seconds (30 by default) as well. LMFORGE_NO_PROGRESS, or
    `enabled=False`, silences both."""

    def __init__(self, total: int, start: int, enabled: bool = True,
                 stream: TextIO | None = None, interval: float | None = None,
                 unit: str = "tok"):
        self.console = Console(stderr=True)
        self.enabled = enabled and not os.environ.get("LMFORGE_NO_PROGRESS")
        out = sys.stdout if stream is None else stream
        self.plain = None
        if self.enabled and not is_terminal(out):
            self.plain = PlainProgress(total, start, out,
                                       progress_interval() if interval is None else interval,
                                       unit=unit)
        # Off a terminal the bar only prints its last state at the end; the lines say more.
        show_bar = self.enabled and (self.plain is None or self.console.is_terminal)
        self.bar = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"), TextColumn(f"{{task.fields[speed]}} {unit}/s"),
            TextColumn("MFU {task.fields[mfu]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.console, disable=not show_bar)
        self.task = self.bar.add_task("train", total=total, completed=start, loss="-",
                                      speed="-", mfu="-")

    def __enter__(self) -> TrainProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)
        if self.plain is not None:
            self.plain.close()

    def update(self, r: dict[str, Any]) -> None:
        self.bar.update(self.task, completed=r["step"], loss=f"{r['loss']:.3f}",
                        speed=f"{r['tokens_per_s']:,.0f}", mfu=f"{r['mfu']:.0%}")
        if self.plain is not None:
            self.plain.update(r)

    def note(self, r: dict[str, Any]) -> None:
        if self.enabled:
            bpb = f", val bpb {r['val_bpb']:.3f}" if "val_bpb" in r else ""
            self.console.print(f"step {r['step']}: train loss {r['loss']:.3f}, val loss "
                               f"{r['val_loss']:.3f}{bpb}")

    def samples(self, texts: list[str]) -> None:
        if self.enabled:
            for t in texts:
                self.console.print(f"  sample: {t!r}", highlight=False)

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)
