"""Initialization schemes (stage 3): model v0, random weights drawn from a named recipe.

Each scheme is a function from (parameter name, shape, design) to a standard deviation; a
seeded generator makes the draw reproducible on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer

# Output projections write into the residual stream; scaling them keeps its variance from
# growing with depth.
RESIDUAL_OUTPUTS = ("o_proj.weight", "down_proj.weight")


def gpt2_std(name: str, d: ModelDesign) -> float:
    """GPT-2 (Radford et al. 2019): N(0, 0.02), residual outputs scaled by 1/sqrt(2 * layers)."""
    if name.endswith(RESIDUAL_OUTPUTS):
        return 0.02 / math.sqrt(2 * d.n_layers)
    return 0.02


def scaled_std(name: str, d: ModelDesign) -> float:
    """Width-aware: "small init" sqrt(2 / (5 d)) (Nguyen & Salazar 2019) for every matrix and
    "wang init" 2 / (layers * sqrt(d)) for residual outputs, as GPT-NeoX and GPT-J use."""
    if name.endswith(RESIDUAL_OUTPUTS):
        return 2.0 / (d.n_layers * math.sqrt(d.d_model))
    return math.sqrt(2.0 / (5.0 * d.d_model))


SCHEMES: dict[str, Callable[[str, ModelDesign], float]] = {
    "gpt2": gpt2_std,
    "scaled": scaled_std,
}


def initialize(model: Transformer, scheme: str = "gpt2", seed: int = 0) -> Transformer:
    """Draw every weight matrix from the scheme's normal; norms start at 1. Deterministic."""
    if scheme not in SCHEMES:
        raise LmforgeError(f"unknown init scheme '{scheme}'",
                           hint=f"choose one of: {', '.join(SCHEMES)}")
    std_of = SCHEMES[scheme]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():  # a tied weight appears once
            if param.ndim == 1:
                param.fill_(1.0)
                continue
            # Draw on the CPU so the same seed gives the same weights on every device.
            values = torch.randn(param.shape, generator=generator) * std_of(name, model.design)
            param.copy_(values.to(param.dtype))
    return model
