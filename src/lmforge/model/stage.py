"""Stage 3: model v0, random weights from a design, a tokenizer and an init scheme."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.design.stage import register_design, resolve_design
from lmforge.errors import LmforgeError
from lmforge.model.init import SCHEMES, initialize
from lmforge.model.io import check_vocab, model_card, save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.registry import Workspace
from lmforge.stage import Outcome, check_keys
from lmforge.tokenizer import Tokenizer


@dataclass(frozen=True)
class InitSettings:
    design: str  # a preset, a design TOML file, or a design artifact reference
    tokenizer: str  # a tokenizer artifact reference
    scheme: str = "gpt2"
    seed: int = 0
    vocab_size: int | None = None  # override the design's vocabulary

    def __post_init__(self) -> None:  # refused before any design or tokenizer is read
        if self.scheme not in SCHEMES:
            raise LmforgeError(f"unknown init scheme '{self.scheme}'",
                               hint=f"choose one of: {', '.join(SCHEMES)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path) -> InitSettings:
        check_keys(values, where, required=("design", "tokenizer"),
                   optional=("scheme", "seed", "vocab_size"))
        return cls(**values)


def run(ws: Workspace, s: InitSettings, show_progress: bool = True) -> Outcome:
    design, design_id = resolve_design(ws, s.design, vocab_size=s.vocab_size)
    tok_art = ws.resolve(s.tokenizer, kind="tokenizer")
    tokenizer = Tokenizer.load(tok_art.file("tokenizer.json"))
    check_vocab(tokenizer, design, where=f"tokenizer {tok_art.id} with design '{design.name}'")
    if design_id is None:  # record the exact design this model was built from
        design_id = register_design(ws, design)[0].id
    torch.manual_seed(s.seed)
    model = initialize(Transformer(design), scheme=s.scheme, seed=s.seed)
    card = model_card(design, f"{design.name} v0 (initialized, {s.scheme})",
                      "Random weights: it can produce output, but the output is random.")
    with ws.staging() as d:
        save_model_dir(model, d, tokenizer, card)
        art = ws.register(d, kind="model", stage="init",
                          parents={"design": design_id, "tokenizer": tok_art.id},
                          settings={"scheme": s.scheme, "seed": s.seed},
                          metrics={"params": model.num_params()},
                          state="initialized", name=f"{design.name}-v0")
    return Outcome(art, f"model v0, {art.metrics['params']:,} parameters, state initialized")
