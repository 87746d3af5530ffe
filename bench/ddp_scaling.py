"""Data-parallel scaling on CPU: pretraining tokens/s of 2 torchrun processes (DDP, gloo)
against one process, for the d_model 512 design (preset `small`), same global batch.

Contenders, each a fresh process running lmforge's training loop (train/loop.py) on random
token windows for `--steps` steps; the figure is the median tokens/s of the steps after the
first two (warm-up: allocator, first gloo buckets):
  one-1t    one process, one thread              (the baseline: one core's worth of work)
  ddp-2x1t  torchrun --nproc_per_node 2, one thread per rank (one core each)
  one-2t    one process, two threads             (what the same two cores give without DDP)
  fsdp-2x1t torchrun with --fsdp                 (with --fsdp)

    python bench/ddp_scaling.py                   # d512, 8 steps of 4,096 tokens
    python bench/ddp_scaling.py --steps 4 --preset tiny --json

The ratios need idle cores: any other work on the machine lands on one rank and the slower
rank sets the pace of every all-reduce.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def worker(a: argparse.Namespace) -> None:
    """One training run (alone, or as one rank); rank 0 writes its step records."""
    import torch

    from lmforge.design.spec import from_preset
    from lmforge.model.init import initialize
    from lmforge.model.transformer import Transformer
    from lmforge.train.batches import TokenWindows
    from lmforge.train.loop import train
    from lmforge.train.objectives import NextToken
    from lmforge.train.settings import TrainSettings

    torch.set_num_threads(a.threads)
    design = from_preset(a.preset)

    class Random:  # token windows of random ids: the data never limits the step
        def __init__(self, n: int, seed: int):
            rng = np.random.default_rng(seed)
            self.array = rng.integers(0, design.vocab_size, n).astype(np.uint16)
            self.tokens = n

        def get(self, start: int, length: int) -> np.ndarray:
            return self.array[start:start + length]

    s = TrainSettings(steps=a.steps, batch_tokens=a.micro_batch * a.seq_len * a.accumulation,
                      micro_batch=a.micro_batch, seq_len=a.seq_len, eval_every=a.steps,
                      eval_batches=1, checkpoint_every=10**6, device="cpu", dtype="float32",
                      fsdp=a.fsdp, warmup_steps=1)
    source = TokenWindows(Random(2_000_000, 0), Random(50_000, 1), s.seq_len, s.micro_batch,
                          s.accumulation, s.eval_batches)
    model = initialize(Transformer(design), "gpt2", seed=0)
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(model, NextToken(), source, s, Path(run_dir), show_progress=False)
    Path(a.out).write_text(json.dumps(result.history))


def contender(name: str, a: argparse.Namespace, tmp: Path) -> dict:
    out = tmp / f"{name}.json"
    threads = 2 if name == "one-2t" else 1
    args = [str(Path(__file__).resolve()), "--worker", "--out", str(out),
            "--threads", str(threads), "--preset", a.preset, "--steps", str(a.steps),
            "--micro-batch", str(a.micro_batch), "--seq-len", str(a.seq_len),
            "--accumulation", str(a.accumulation)]
    if name.startswith("fsdp"):
        args.append("--fsdp")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    if "2x" in name:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", *args]
    else:
        cmd = [sys.executable, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    history = json.loads(out.read_text())
    timed = [r["tokens_per_s"] for r in history[2:]] or [r["tokens_per_s"] for r in history]
    return {"name": name, "tokens_per_s": statistics.median(timed),
            "loss": history[-1]["loss"], "steps": len(history)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="small", help="design preset (small = d_model 512)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--accumulation", type=int, default=4,
                    help="micro-batches per step (even: two ranks share them)")
    ap.add_argument("--fsdp", action="store_true", help="also time FSDP2 on two ranks")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return
    names = ["one-1t", "ddp-2x1t", "one-2t"] + (["fsdp-2x1t"] if a.fsdp else [])
    with tempfile.TemporaryDirectory() as tmp:
        rows = [contender(n, a, Path(tmp)) for n in names]
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["vs_one_1t"] = r["tokens_per_s"] / base
    if a.json:
        print(json.dumps({"preset": a.preset, "batch_tokens": a.micro_batch * a.seq_len *
                          a.accumulation, "cpus": os.cpu_count(), "rows": rows}))
        return
    print(f"preset {a.preset}, {a.micro_batch * a.seq_len * a.accumulation} tokens per step, "
          f"{a.steps} steps, {os.cpu_count()} CPUs")
    print(f"{'contender':<11} {'tokens/s':>9} {'x one-1t':>9} {'last loss':>10}")
    for r in rows:
        print(f"{r['name']:<11} {r['tokens_per_s']:>9.0f} {r['vs_one_1t']:>8.2f}x "
              f"{r['loss']:>10.4f}")


if __name__ == "__main__":
    main()
