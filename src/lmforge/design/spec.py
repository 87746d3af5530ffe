"""The architecture spec: a typed, validated description of a Llama-style decoder."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge._toml import load_toml_file
from lmforge.errors import LmforgeError


def swiglu_hidden(d_model: int, multiple_of: int = 64) -> int:
    """FFN width for SwiGLU: 2/3 of 4*d (same parameters as a 4*d GELU MLP), rounded up.

    The 8/3 ratio is the one the Llama papers use.
    """
    hidden = int(8 * d_model / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


@dataclass(frozen=True)
class ModelDesign:
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    context_length: int
    ffn_hidden: int = 0  # 0 = derived from d_model by swiglu_hidden()
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.ffn_hidden == 0 and self.d_model > 0:
            object.__setattr__(self, "ffn_hidden", swiglu_hidden(self.d_model))
        validate(self)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ModelDesign:
        return dataclasses.replace(self, **changes)


def validate(d: ModelDesign) -> None:
    """Raise one clear LmforgeError for the first thing wrong with a design."""
    where = f"design '{d.name}'"
    positive = ["n_layers", "d_model", "n_heads", "n_kv_heads", "vocab_size", "context_length",
                "ffn_hidden"]
    for key in positive:
        value = getattr(d, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LmforgeError(f"{where}: {key} must be a positive integer, got {value!r}",
                               hint=f"set {key} to 1 or more")
    if d.d_model % d.n_heads:
        raise LmforgeError(
            f"{where}: d_model {d.d_model} is not divisible by n_heads {d.n_heads}",
            hint="choose n_heads so that d_model / n_heads is a whole head size (e.g. 64)")
    if d.n_heads % d.n_kv_heads:
        raise LmforgeError(
            f"{where}: n_kv_heads {d.n_kv_heads} does not divide n_heads {d.n_heads}",
            hint="grouped-query attention shares each kv head among n_heads / n_kv_heads "
                 "query heads; pick a divisor of n_heads")
    if d.head_dim % 2:
        raise LmforgeError(f"{where}: head size {d.head_dim} is odd; rotary embeddings need "
                           "it even",
                           hint="change d_model or n_heads")
    if not d.rope_theta > 0:
        raise LmforgeError(f"{where}: rope_theta must be > 0, got {d.rope_theta}")
    if not 0 < d.norm_eps < 1:
        raise LmforgeError(f"{where}: norm_eps must be in (0, 1), got {d.norm_eps}")


# Presets. The small ones fit a laptop CPU; the *-class ones are the shapes GPU users know
# (GPT-2 124M/350M widths and depths; Llama 3.2 1B: 16 layers, 2048 wide, 32/8 heads, 8192 FFN).
# llama-1b's shape is the config.json of meta-llama/Llama-3.2-1B on the Hugging Face hub
# (1,235,814,400 parameters, tied embeddings, rope_theta 500000); its context is a pretraining
# length, 2048, not the config's 131072 (reached by long-context training after pretraining).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layers=4, d_model=256, n_heads=4, n_kv_heads=2, vocab_size=4096,
                 context_length=256, tie_embeddings=True),
    "small": dict(n_layers=8, d_model=512, n_heads=8, n_kv_heads=4, vocab_size=8192,
                  context_length=512, tie_embeddings=True),
    "base": dict(n_layers=12, d_model=768, n_heads=12, n_kv_heads=4, vocab_size=32768,
                 context_length=1024),
    "gpt2-124m": dict(n_layers=12, d_model=768, n_heads=12, n_kv_heads=12, vocab_size=50304,
                      context_length=1024, ffn_hidden=2048, tie_embeddings=True),
    "gpt2-350m": dict(n_layers=24, d_model=1024, n_heads=16, n_kv_heads=16, vocab_size=50304,
                      context_length=1024, ffn_hidden=2752, tie_embeddings=True),
    "llama-1b": dict(n_layers=16, d_model=2048, n_heads=32, n_kv_heads=8, vocab_size=128256,
                     context_length=2048, ffn_hidden=8192, rope_theta=500000.0,
                     tie_embeddings=True),
}

# Short names for presets: `--preset 1b` is llama-1b.
PRESET_ALIASES: dict[str, str] = {"1b": "llama-1b"}

FIELDS = {f.name for f in dataclasses.fields(ModelDesign)}


def is_preset(name: str) -> bool:
    return name in PRESETS or name in PRESET_ALIASES


def preset_names() -> str:
    """The presets for help texts and hints, aliases beside their preset."""
    aliases = {v: k for k, v in PRESET_ALIASES.items()}
    return ", ".join(f"{p} ({aliases[p]})" if p in aliases else p for p in PRESETS)


def from_dict(values: dict[str, Any], where: str) -> ModelDesign:
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise LmforgeError(f"{where}: unknown design field(s) {', '.join(unknown)}",
                           hint=f"valid fields: {', '.join(sorted(FIELDS - {'name'}))}")
    missing = sorted(k for k in ("n_layers", "d_model", "n_heads", "vocab_size", "context_length")
                     if k not in values)
    if missing:
        raise LmforgeError(f"{where}: missing design field(s) {', '.join(missing)}")
    values = dict(values)
    values.setdefault("n_kv_heads", values["n_heads"])
    values.setdefault("name", where)
    try:
        return ModelDesign(**values)
    except TypeError as e:  # e.g. a string where a number belongs
        raise LmforgeError(f"{where}: {e}") from None


def from_preset(name: str) -> ModelDesign:
    if not is_preset(name):
        raise LmforgeError(f"unknown design preset '{name}'",
                           hint=f"choose one of: {preset_names()}")
    name = PRESET_ALIASES.get(name, name)
    return ModelDesign(name=name, **PRESETS[name])


def load_toml(path: str | Path) -> ModelDesign:
    """A design file: either top-level fields or a [model] table; `preset = "tiny"` as a base."""
    path = Path(path)
    data = load_toml_file(path, "design file")
    data = data.get("model", data)
    base: dict[str, Any] = {}
    if "preset" in data:
        preset = data.pop("preset")
        base = from_preset(str(preset)).to_dict()
    base.update(data)
    base["name"] = data.get("name", path.stem)
    return from_dict(base, where=str(path))


def to_toml(d: ModelDesign) -> str:
    lines = ["[model]"]
    for key, value in d.to_dict().items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value!r}")
    return "\n".join(lines) + "\n"
