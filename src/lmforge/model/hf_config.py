"""Translate between a ModelDesign and a Hugging Face LlamaConfig dict (config.json)."""

from __future__ import annotations

from typing import Any

from lmforge import __version__
from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError


def design_to_hf_config(d: ModelDesign, bos_id: int, eos_id: int, pad_id: int,
                        dtype: str = "float32") -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": d.vocab_size,
        "hidden_size": d.d_model,
        "intermediate_size": d.ffn_hidden,
        "num_hidden_layers": d.n_layers,
        "num_attention_heads": d.n_heads,
        "num_key_value_heads": d.n_kv_heads,
        "head_dim": d.head_dim,
        "max_position_embeddings": d.context_length,
        "rms_norm_eps": d.norm_eps,
        "rope_theta": d.rope_theta,
        "tie_word_embeddings": d.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": dtype,
        "use_cache": True,
        "lmforge": {"version": __version__, "design_name": d.name},
    }


def hf_config_to_design(cfg: dict[str, Any], where: str) -> ModelDesign:
    """Accept Llama-architecture configs lmforge can run exactly; refuse the rest clearly."""
    arch = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" and "LlamaForCausalLM" not in arch:
        raise LmforgeError(f"{where}: model_type {cfg.get('model_type')!r} is not a Llama model",
                           hint="lmforge imports LlamaForCausalLM checkpoints")
    if cfg.get("rope_scaling"):
        raise LmforgeError(f"{where}: rope_scaling {cfg['rope_scaling']} is not supported yet",
                           hint="import a checkpoint without RoPE scaling")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise LmforgeError(f"{where}: {flag}=true is not supported (lmforge has no biases)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise LmforgeError(f"{where}: hidden_act {cfg['hidden_act']!r} is not silu (SwiGLU)")
    try:
        d_model, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or d_model // heads)
        if head_dim * heads != d_model:
            raise LmforgeError(f"{where}: head_dim {head_dim} x {heads} heads != hidden_size "
                               f"{d_model}; lmforge needs head_dim = hidden_size / heads")
        rope = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")
        return ModelDesign(
            n_layers=int(cfg["num_hidden_layers"]), d_model=d_model, n_heads=heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            vocab_size=int(cfg["vocab_size"]),
            context_length=int(cfg.get("max_position_embeddings", 2048)),
            ffn_hidden=int(cfg["intermediate_size"]),
            rope_theta=float(rope or 10000.0), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            name=(cfg.get("lmforge") or {}).get("design_name", "imported"))
    except KeyError as e:
        raise LmforgeError(f"{where}: config.json lacks the field {e}",
                           hint="is this a complete Hugging Face Llama config?") from None
