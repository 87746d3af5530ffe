"""Training settings: one typed, validated record that also keys the run folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from lmforge.errors import LmforgeError
from lmforge.stage import check_keys
from lmforge.train.optim import OPTIMIZERS
from lmforge.train.schedule import SCHEDULES


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 0  # optimizer steps; 0 = derived from `tokens` or `epochs`
    tokens: int = 0  # training tokens to see
    epochs: float = 0.0  # passes over the training split
    batch_tokens: int = 16384  # tokens per optimizer step (accumulated over micro-batches)
    micro_batch: int = 16  # sequences per forward/backward
    seq_len: int = 256
    optimizer: str = "adamw"
    lr: float = 3e-3  # AdamW peak rate (for embeddings/gains under muon)
    muon_lr: float = 0.02
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    schedule: str = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batches: int = 16
    sample_every: int = 0  # 0 = only at the end
    checkpoint_every: int = 50
    early_stop_patience: int = 0  # evaluations without improvement before stopping; 0 = off
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # auto = bf16 autocast where fast (CUDA), else fp32
    compile: bool = False
    fsdp: bool = False  # under torchrun: FSDP2 sharding instead of DDP replicas
    activation_checkpointing: bool = False  # recompute each block in backward: less memory

    # How a run is computed, not what it computes: left out of the run's key, so a run
    # started on N processes (or sharded) resumes under any other layout.
    LAYOUT: ClassVar[tuple[str, ...]] = ("fsdp", "activation_checkpointing")

    def __post_init__(self) -> None:
        positive = ("batch_tokens", "micro_batch", "seq_len", "eval_every", "eval_batches",
                    "checkpoint_every")
        for key in positive:
            if getattr(self, key) < 1:
                raise LmforgeError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.steps < 0 or self.tokens < 0 or self.epochs < 0:
            raise LmforgeError("steps, tokens and epochs must not be negative")
        if self.optimizer not in OPTIMIZERS:
            raise LmforgeError(f"unknown optimizer '{self.optimizer}'",
                               hint=f"choose one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise LmforgeError(f"unknown schedule '{self.schedule}'",
                               hint=f"choose one of: {', '.join(SCHEDULES)}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise LmforgeError(f"unknown dtype '{self.dtype}'", hint="auto, float32 or bfloat16")
        if self.batch_tokens % (self.micro_batch * self.seq_len):
            raise LmforgeError(
                f"batch_tokens {self.batch_tokens} is not a multiple of micro_batch x seq_len "
                f"({self.micro_batch} x {self.seq_len})",
                hint="gradient accumulation needs a whole number of micro-batches per step")

    @property
    def accumulation(self) -> int:
        return self.batch_tokens // (self.micro_batch * self.seq_len)

    def total_steps(self, train_tokens: int) -> int:
        if self.steps:
            return self.steps
        tokens = self.tokens or int(self.epochs * train_tokens)
        if tokens <= 0:
            raise LmforgeError("say how long to train", hint="set steps, tokens or epochs")
        return max(1, tokens // self.batch_tokens)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> TrainSettings:
        check_keys(values, f"{where} (training)", optional=(f.name for f in
                                                           dataclasses.fields(cls)))
        try:
            return cls(**values)
        except TypeError as e:
            raise LmforgeError(f"{where}: {e}") from None

    def key(self) -> str:
        """A digest of what changes the result (device, dtype and compile may not; keep them:
        bf16 runs differ from fp32 runs); the process layout is left out."""
        values = {k: v for k, v in self.to_dict().items() if k not in self.LAYOUT}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
