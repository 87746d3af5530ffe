"""LoRA (Hu et al. 2021): train a low-rank update beside frozen weights, y = W x + (alpha/r) B A x.

    model = apply_lora(model, r=16, alpha=32)        # only the adapters require grad
    ... train ...
    art = save_adapter(ws, model, base_art, settings) # a small "lora-adapter" artifact
    model, tok, adapter = load_adapter(ws, art.id)    # on the base whose weights it names
    plain = merge_lora(model)                         # B A folded into W: a plain Transformer

A wrapped projection keeps its frozen weight under the same name (`...q_proj.weight`) and adds
`...q_proj.lora_A` (r x in) and `...q_proj.lora_B` (out x r). A starts random and B at zero,
so a freshly wrapped model computes exactly what the base did. Because the base names do not
move, a LoRA model's state dict is the base's plus the adapters: training checkpoints save
and resume both through the loop's ordinary `savable_state` / `load_state_dict`.

An adapter is only meaningful on the exact weights it was trained on, so its config records
the sha256 of the base's model.safetensors, and loading it on other weights is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.model.io import WEIGHTS, load_model_dir, model_card, save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.registry import Artifact, Workspace, atomic_write_json, atomic_write_text
from lmforge.tokenizer import Tokenizer

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TARGETS = ATTENTION + MLP
KIND = "lora-adapter"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class LoraLinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update, scaled by alpha / r.

    The base weight is the same Parameter the wrapped nn.Linear held (not a copy), frozen.
    Dropout applies to the adapter's input only, as in the paper: the frozen path is exact.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.dropout_p = r, float(alpha), float(dropout)
        self.scaling = self.alpha / r
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self.register_parameter("bias", base.bias)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **like))
        # A as nn.Linear initialises its weight (what peft does too); B = 0 makes the update
        # start at exactly zero, so step 0 of fine-tuning is the base model.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + update * self.scaling

    def delta(self) -> torch.Tensor:
        """The weight update B A * alpha/r, in fp32 (what merging adds to W)."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, "
                f"alpha={self.alpha:g}, dropout={self.dropout_p:g}")


@dataclass(frozen=True)
class LoraConfig:
    r: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "targets": list(self.targets)}


def check_lora_args(r: int, alpha: float, dropout: float, targets: tuple[str, ...]) -> None:
    """Refuse a bad rank, alpha, dropout or target name (before any model is touched)."""
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise LmforgeError(f"unknown LoRA target(s) {bad or '(none given)'}",
                           hint=f"choose among: {', '.join(TARGETS)}")
    if len(set(targets)) != len(targets):
        raise LmforgeError(f"LoRA targets list a layer twice: {list(targets)}",
                           hint="name each target once")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise LmforgeError(f"LoRA rank r={r!r} is not valid", hint="give an integer r >= 1, "
                           "e.g. --lora r=16")
    if not alpha > 0:
        raise LmforgeError(f"LoRA alpha={alpha!r} is not valid",
                           hint="give alpha > 0 (commonly 2 x r)")
    if not 0 <= dropout < 1:
        raise LmforgeError(f"LoRA dropout={dropout!r} is not valid",
                           hint="give a dropout in [0, 1)")


def _wrapped(model: nn.Module) -> dict[str, LoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def apply_lora(model: Transformer, r: int = 16, alpha: float = 32, dropout: float = 0.0,
               targets: tuple[str, ...] | list[str] = TARGETS) -> Transformer:
    """Wrap the `targets` projections of every block in place and freeze every other parameter:
    only the adapters train. A draws from torch's global RNG (seed it for repeatable runs)."""
    targets = tuple(targets)
    check_lora_args(r, alpha, dropout, targets)
    if _wrapped(model):
        raise LmforgeError("this model already carries LoRA adapters",
                           hint="merge them first (`lmforge merge-lora ADAPTER`)")
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.model.layers:
        for parent in (block.self_attn, block.mlp):
            for name in targets:
                layer = getattr(parent, name, None)
                if isinstance(layer, nn.Linear):
                    setattr(parent, name, LoraLinear(layer, r, alpha, dropout))
    return model


def lora_config(model: nn.Module) -> LoraConfig:
    """The r, alpha, dropout and targets of the adapters a model carries."""
    layers = _wrapped(model)
    if not layers:
        raise LmforgeError("this model carries no LoRA adapters",
                           hint="add them with `lmforge finetune MODEL --lora r=16`")
    first = next(iter(layers.values()))
    names = {n.rsplit(".", 1)[-1] for n in layers}
    return LoraConfig(first.r, first.alpha, first.dropout_p,
                      tuple(t for t in TARGETS if t in names))


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights only, under the model's names (`...q_proj.lora_A`), detached."""
    return {n: p.detach() for n, p in model.named_parameters() if ".lora_" in n}


def load_lora_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy adapter weights into a LoRA model; the names and shapes must match exactly."""
    mine = dict(model.named_parameters())
    expected = {n for n in mine if ".lora_" in n}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise LmforgeError(f"{where}: adapter weights do not fit this model (missing "
                           f"{missing[:2]}, unexpected {unexpected[:2]})",
                           hint="the adapter_config.json and adapter.safetensors disagree")
    with torch.no_grad():
        for name, tensor in state.items():
            if mine[name].shape != tensor.shape:
                raise LmforgeError(f"{where}: {name} has shape {tuple(tensor.shape)}, the "
                                   f"model expects {tuple(mine[name].shape)}")
            mine[name].copy_(tensor)


@torch.no_grad()
def merge_lora(model: Transformer) -> Transformer:
    """Fold every adapter into its base weight (W += alpha/r B A, summed in fp32) and put
    plain nn.Linear layers back: a plain Transformer again, every parameter trainable as a
    loaded model's are."""
    for name, layer in _wrapped(model).items():
        parent_name, attr = name.rsplit(".", 1)
        weight = layer.weight
        weight.copy_((weight.float() + layer.delta()).to(weight.dtype))
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device="meta")  # meta: no throwaway weights are allocated
        plain.weight = weight
        plain.bias = layer.bias
        setattr(model.get_submodule(parent_name), attr, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_fraction(model: nn.Module) -> float:
    """Trainable parameters / all parameters (adapters included; a tied weight counts once)."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    return sum(p.numel() for p in params if p.requires_grad) / max(1, total)


# -- adapters as artifacts ---------------------------------------------------------------------

def base_weights_sha(base: Artifact) -> str:
    """sha256 of a model artifact's weights, as its (verified) manifest records it."""
    if WEIGHTS not in base.files:
        raise LmforgeError(f"{base.id} has no {WEIGHTS}",
                           hint="LoRA adapters attach to lmforge model artifacts")
    return base.files[WEIGHTS]["sha256"]


def save_adapter(ws: Workspace, model: Transformer, base: Artifact,
                 settings: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                 parents: dict[str, str | list[str]] | None = None,
                 name: str | None = None) -> Artifact:
    """Register the adapters of `model` (trained on `base`) as a "lora-adapter" artifact:
    adapter.safetensors, adapter_config.json (LoRA shape, base id, base weights' sha256) and
    README.md. Parents: `parents` plus {"base": base.id}."""
    cfg = lora_config(model)
    state = {k: v.to("cpu").contiguous() for k, v in lora_state(model).items()}
    n_params = sum(v.numel() for v in state.values())
    config = {"format": "lmforge-lora", **cfg.to_dict(), "base_model": base.id,
              "base_model_sha256": base_weights_sha(base)}
    readme = (f"# LoRA adapter for {base.name or base.id}\n\n"
              f"Low-rank adapters (r={cfg.r}, alpha={cfg.alpha:g}, dropout={cfg.dropout:g}) on "
              f"{', '.join(cfg.targets)}: {n_params:,} parameters.\n\n"
              f"Trained on base model {base.id} (weights sha256 "
              f"{config['base_model_sha256'][:16]}...); it loads on those weights only.\n"
              f"Make a plain model of base + adapter with `lmforge merge-lora ADAPTER`.\n")
    with ws.staging() as d:
        save_file(state, str(d / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        atomic_write_json(d / ADAPTER_CONFIG, config)
        atomic_write_text(d / "README.md", readme)
        return ws.register(d, kind=KIND, stage="finetune",
                           parents={**(parents or {}), "base": base.id},
                           settings={**(settings or {}), "lora": cfg.to_dict()},
                           metrics={**(metrics or {}), "adapter_params": n_params},
                           name=name or f"{base.name or base.id}-lora")


def read_adapter_config(adapter: Artifact) -> tuple[LoraConfig, dict[str, Any]]:
    """The adapter's LoRA shape, and its whole adapter_config.json (base id and sha256)."""
    try:
        raw = json.loads(adapter.file(ADAPTER_CONFIG).read_text(encoding="utf-8"))
        cfg = LoraConfig(int(raw["r"]), float(raw["alpha"]), float(raw["dropout"]),
                         tuple(raw["targets"]))
        if not isinstance(raw["base_model"], str) or not isinstance(raw["base_model_sha256"],
                                                                     str):
            raise TypeError("base_model and base_model_sha256 must be strings")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise LmforgeError(f"{adapter.id}: {ADAPTER_CONFIG} is not a LoRA config ({e})",
                           hint="re-run the fine-tune that made it") from None
    check_lora_args(cfg.r, cfg.alpha, cfg.dropout, cfg.targets)
    return cfg, raw


def load_adapter(ws: Workspace, adapter_ref: str, base: str | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
                 ) -> tuple[Transformer, Tokenizer, Artifact]:
    """The base model named in the adapter's config (or `base`) with the adapter applied.

    Refused, before any weights are read, when the base's weights are not the ones the adapter
    was trained on (their sha256 differs)."""
    adapter = ws.resolve(adapter_ref, kind=KIND)
    cfg, recorded = read_adapter_config(adapter)
    base_art = ws.resolve(base or recorded["base_model"], kind="model")
    have = base_weights_sha(base_art)
    if have != recorded["base_model_sha256"]:
        raise LmforgeError(
            f"adapter {adapter.id} was trained on base sha {recorded['base_model_sha256'][:16]} "
            f"({recorded['base_model']}), this base is {have[:16]} ({base_art.id})",
            hint=f"use the base it names, {recorded['base_model']} (`lmforge registry show "
                 f"{recorded['base_model']}`)")
    model, tok = load_model_dir(base_art.path, "cpu", torch.float32)
    apply_lora(model, cfg.r, cfg.alpha, cfg.dropout, cfg.targets)
    try:
        state = load_file(str(adapter.file(ADAPTER_WEIGHTS)))
    except (SafetensorError, OSError) as e:
        raise LmforgeError(f"{adapter.id}: unreadable {ADAPTER_WEIGHTS}: {e}") from None
    load_lora_state(model, state, where=adapter.id)
    return model.to(device=device, dtype=dtype).eval(), tok, adapter


def merge_adapter_stage(ws: Workspace, adapter_ref: str) -> Artifact:
    """Merge an adapter into its base and register the result: a plain model (state tuned)
    whose parents are the base and the adapter."""
    model, tok, adapter = load_adapter(ws, adapter_ref)
    base = ws.resolve(read_adapter_config(adapter)[1]["base_model"], kind="model",
                      verify=False)  # load_adapter verified it
    cfg = lora_config(model)
    merge_lora(model)
    title = f"{model.design.name} (base + LoRA adapter, merged)"
    card = model_card(model.design, title,
                      f"Base model {base.id} with LoRA adapter {adapter.id} (r={cfg.r}, "
                      f"alpha={cfg.alpha:g}, on {', '.join(cfg.targets)}) folded into its "
                      f"weights.")
    tokenizer_parent = {"tokenizer": base.parents["tokenizer"]} \
        if "tokenizer" in base.parents else {}
    with ws.staging() as d:
        save_model_dir(model, d, tok, card)
        return ws.register(d, kind="model", stage="merge-lora",
                           parents={"base": base.id, "adapter": adapter.id, **tokenizer_parent},
                           settings={"lora": cfg.to_dict()},
                           metrics={"params": model.num_params()}, state="tuned",
                           name=f"{adapter.name or adapter.id}-merged")
