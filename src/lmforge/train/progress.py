"""What a training run shows and keeps: a progress bar and a JSONL metrics log
(plus TensorBoard event files where the tensorboard package is installed)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lmforge.registry import atomic_write_text


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


class TrainProgress:
    """A rich progress bar with loss, tokens/s, MFU and ETA; eval lines printed above it."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        self.console = Console(stderr=True)
        self.enabled = enabled and not os.environ.get("LMFORGE_NO_PROGRESS")
        self.bar = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
            TextColumn("MFU {task.fields[mfu]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.console, disable=not self.enabled)
        self.task = self.bar.add_task("train", total=total, completed=start, loss="-",
                                      speed="-", mfu="-")

    def __enter__(self) -> TrainProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def update(self, r: dict[str, Any]) -> None:
        self.bar.update(self.task, completed=r["step"], loss=f"{r['loss']:.3f}",
                        speed=f"{r['tokens_per_s']:,.0f}", mfu=f"{r['mfu']:.0%}")

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
