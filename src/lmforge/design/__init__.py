"""Stage 1: architecture and design."""

from lmforge.design.estimate import count_params, training_flops_per_token, training_memory
from lmforge.design.spec import PRESETS, ModelDesign, from_preset, load_toml

__all__ = [
           "PRESETS",
           "ModelDesign",
           "count_params",
           "from_preset",
           "load_toml",
           "training_flops_per_token",
           "training_memory",
]
