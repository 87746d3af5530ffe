"""Where evaluation data lives: the real benchmark files that evaluation and decontamination
read (HellaSwag, ARC, ...). `--data-root` wins, then $LMFORGE_EVAL_DATA, then the `shared/data`
folder that sits beside a development checkout. Callers check that the folder exists, so
their errors can say what they were looking for."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "LMFORGE_EVAL_DATA"
# src/lmforge/data/eval_root.py -> the checkout's parent folder holds shared/data
CHECKOUT_SHARED_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"


def eval_data_root(data_root: str | Path | None = None) -> Path:
    if data_root is not None:
        return Path(data_root).expanduser()
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    return CHECKOUT_SHARED_DATA
