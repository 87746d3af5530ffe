"""One training run of a tiny model for tests/test_distributed.py: alone (`python
tests/dist_worker.py ...`) or as one of several ranks (`torchrun --nproc_per_node 2
tests/dist_worker.py ...`). Every objective the loop trains: next-token on token windows,
SFT on packed masked sequences, a Bradley-Terry reward model, DPO. Rank 0 writes the run's
per-step losses, validation loss and final weights to OUT/result.json and OUT/model.safetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from lmforge.errors import Interrupted
from lmforge.model.init import initialize
from lmforge.model.io import savable_state
from lmforge.model.transformer import Transformer
from lmforge.train import dpo, reward
from lmforge.train.batches import PackedSequences, TokenWindows
from lmforge.train.loop import train
from lmforge.train.objectives import NextToken
from lmforge.train.settings import TrainSettings
from test_train import DESIGN, ArraySource, periodic_tokens  # torchrun puts this folder on the path

VOCAB = DESIGN.vocab_size


def sequences(n: int, seed: int):
    """Short 'conversations': a random prompt (not learned) then a patterned answer."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p, a = int(rng.integers(3, 10)), int(rng.integers(3, 12))
        prompt = rng.integers(0, VOCAB, p).tolist()
        answer = [(prompt[0] + 3 * k) % VOCAB for k in range(a)]
        out.append((prompt + answer, [False] * p + [True] * a))
    return out


def preference_ids(n: int, seed: int):
    """(chosen ids, rejected ids) with a shared prompt: chosen answers count up by one."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        prompt = rng.integers(0, VOCAB, int(rng.integers(3, 8))).tolist()
        good = [(prompt[-1] + k) % VOCAB for k in range(1, 6)]
        bad = rng.integers(0, VOCAB, 5).tolist()
        pairs.append((prompt, good, bad))
    return pairs


def dpo_units(pairs) -> list[dpo.PairUnit]:
    return [dpo.PairUnit(p[:-1], [p[-1], *g[:-1]], g, [p[-1], *b[:-1]], b)
            for p, g, b in pairs]


def build(kind: str, s: TrainSettings):
    if kind == "next_token":
        return NextToken(), TokenWindows(ArraySource(periodic_tokens(20_000, seed=0)),
                                         ArraySource(periodic_tokens(2_000, seed=1)), s.seq_len,
                                         s.micro_batch, s.accumulation, s.eval_batches)
    if kind == "sft":
        return NextToken(), PackedSequences(sequences(400, 0), sequences(40, 1), s.seq_len,
                                            s.micro_batch, s.accumulation, s.eval_batches)
    if kind == "reward":
        encode = [(p + g, p + b) for p, g, b in preference_ids(300, 0)]
        val = [(p + g, p + b) for p, g, b in preference_ids(40, 1)]
        return reward.BradleyTerry(DESIGN.d_model, seed=0), reward.PairBatches(
            encode, val, s.seq_len, s.micro_batch, s.accumulation, s.eval_batches)
    if kind == "dpo":
        units, val = dpo_units(preference_ids(300, 0)), dpo_units(preference_ids(40, 1))
        reference = initialize(Transformer(DESIGN), "gpt2", seed=0)
        for part in (units, val):
            dpo.fill_reference_logps(reference, part, s.seq_len, s.micro_batch,
                                     torch.device("cpu"))
        return dpo.DPO(beta=0.1), dpo.PairBatches(units, val, s.seq_len, s.micro_batch,
                                                  s.accumulation, s.eval_batches)
    raise SystemExit(f"unknown objective {kind}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objective", default="next_token")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--fsdp", action="store_true")
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--stop-at", type=int, default=0,
                    help="rank 0 alone gets a SIGTERM after this step (every rank must stop)")
    a = ap.parse_args()
    torch.set_num_threads(1)  # two ranks on two cores: one thread each, and the same sums
    s = TrainSettings(steps=a.steps, batch_tokens=512, micro_batch=4, seq_len=32, lr=3e-3,
                      warmup_steps=2, eval_every=4, eval_batches=2,
                      checkpoint_every=a.checkpoint_every, device="cpu", fsdp=a.fsdp,
                      activation_checkpointing=a.activation_checkpointing)
    objective, source = build(a.objective, s)
    model = initialize(Transformer(DESIGN), "gpt2", seed=0)
    rank = int(os.environ.get("RANK", "0"))

    def stop(step: int) -> None:
        if step == a.stop_at and rank == 0:
            signal.raise_signal(signal.SIGTERM)

    try:
        result = train(model, objective, source, s, Path(a.run_dir), show_progress=False,
                       on_step=stop)
    except Interrupted as e:
        print(f"rank {rank}: {e}", flush=True)
        return
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = savable_state(model)
    if isinstance(objective, torch.nn.Module):
        weights.update({f"objective.{n}": p.detach().contiguous()
                        for n, p in objective.state_dict().items()})
    save_file(weights, str(out / "model.safetensors"))
    (out / "result.json").write_text(json.dumps({
        "losses": [r["loss"] for r in result.history], "val_loss": result.val_loss,
        "steps": result.steps, "tokens": result.tokens,
        "world": int(os.environ.get("WORLD_SIZE", "1"))}))


if __name__ == "__main__":
    main()
