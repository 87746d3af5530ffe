"""Learning-rate schedules as a multiplier of the peak rate, a pure function of the step."""

from __future__ import annotations

import math

from lmforge.errors import LmforgeError

SCHEDULES = ("cosine", "wsd", "constant")


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str,
                  min_ratio: float = 0.1, decay_fraction: float = 0.2) -> float:
    """Linear warmup, then:
    - cosine: half-cosine from 1 to min_ratio over the remaining steps;
    - wsd (warmup-stable-decay, Hu et al. 2024 "MiniCPM"): flat at 1, then a linear decay to
      min_ratio over the last `decay_fraction` of training;
    - constant: flat at 1.
    """
    if schedule not in SCHEDULES:
        raise LmforgeError(f"unknown schedule '{schedule}'",
                           hint=f"choose one of: {', '.join(SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_start = int(total_steps * (1 - decay_fraction))
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
    return 1.0 - (1.0 - min_ratio) * progress
