"""A model directory: model.safetensors + config.json (HF names) + tokenizer + generation config.

The directory is at once lmforge's format and a Hugging Face LlamaForCausalLM checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmforge.design.estimate import count_params
from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError
from lmforge.model.hf_config import design_to_hf_config, hf_config_to_design
from lmforge.model.transformer import Transformer
from lmforge.registry import Artifact, Workspace, atomic_write_json, atomic_write_text
from lmforge.tokenizer import Tokenizer, hf_tokenizer_files

WEIGHTS = "model.safetensors"


def save_model_dir(model: Transformer, out: Path, tokenizer: Tokenizer, card: str,
                   generation: dict[str, Any] | None = None) -> None:
    d = model.design
    check_vocab(tokenizer, d, where=str(out))
    out.mkdir(parents=True, exist_ok=True)
    state = savable_state(model)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    tmp = out / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS)
    atomic_write_json(out / "config.json", design_to_hf_config(
        d, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, dtype))
    gen = {"bos_token_id": tokenizer.bos_id, "eos_token_id": [tokenizer.eos_id, tokenizer.end_id],
           "pad_token_id": tokenizer.pad_id, "do_sample": True, "temperature": 0.8,
           "top_p": 0.95, "max_new_tokens": 256}
    atomic_write_json(out / "generation_config.json", {**gen, **(generation or {})})
    tokenizer.save(out / "tokenizer.json")
    for name, content in hf_tokenizer_files(tokenizer).items():
        atomic_write_json(out / name, content)
    atomic_write_text(out / "MODEL_CARD.md", card)


def savable_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The state dict as safetensors takes it: on the CPU, contiguous, a tied head left out
    (safetensors refuses shared storage; HF also omits the tied lm_head)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if model.design.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def check_vocab(tokenizer: Tokenizer, d: ModelDesign, where: str) -> None:
    if tokenizer.vocab_size > d.vocab_size:
        raise LmforgeError(
            f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the design's "
            f"vocab_size is {d.vocab_size}; ids past {d.vocab_size - 1} would index nothing",
            hint="train the tokenizer with --vocab-size <= the design's vocab_size, "
                 "or raise vocab_size in the design")


def read_config(model_dir: Path) -> ModelDesign:
    path = model_dir / "config.json"
    if not path.is_file():
        raise LmforgeError(f"{model_dir}: no config.json", hint="is this a model directory?")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{path}: invalid JSON: {e}") from None
    return hf_config_to_design(cfg, where=str(path))


def load_state(model_dir: Path) -> dict[str, torch.Tensor]:
    """Weights from model.safetensors or an HF sharded set (model.safetensors.index.json)."""
    single = model_dir / WEIGHTS
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / s for s in shards]
    else:
        raise LmforgeError(f"{model_dir}: no {WEIGHTS} (or sharded index)",
                           hint="lmforge reads safetensors weights only, never pickles")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError) as e:
            raise LmforgeError(f"{f}: unreadable safetensors file: {e}") from None
    return state


def load_model_dir(model_dir: Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> tuple[Transformer, Tokenizer]:
    model_dir = Path(model_dir)
    design = read_config(model_dir)
    tokenizer = Tokenizer.load(model_dir / "tokenizer.json")
    check_vocab(tokenizer, design, where=str(model_dir))
    state = load_state(model_dir)
    if design.tie_embeddings:
        state.pop("lm_head.weight", None)
    model = Transformer(design)
    shapes = {k: v.shape for k, v in model.state_dict().items()
              if not (design.tie_embeddings and k == "lm_head.weight")}
    expected = set(shapes)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise LmforgeError(f"{model_dir}: weights do not match config.json "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})",
                           hint="the checkpoint and its config disagree; re-export it")
    for key, tensor in state.items():
        if shapes[key] != tensor.shape:
            raise LmforgeError(f"{model_dir}: {key} has shape {tuple(tensor.shape)}, config.json "
                               f"implies {tuple(shapes[key])}")
    model.load_state_dict(state, strict=False)
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def copy_model_dir(src: Path, out: Path) -> list[str]:
    """Copy a model directory's files (not the registry manifest) to a new folder."""
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name != "manifest.json":
            shutil.copyfile(f, out / f.name)
            copied.append(f.name)
    return copied


def model_card(design: ModelDesign, title: str, body: str) -> str:
    """MODEL_CARD.md of a model directory: what it is, how it was made, its shape."""
    p = count_params(design)
    return (f"# {title}\n\n{body}\n\n"
            f"- architecture: Llama-style decoder (RMSNorm, RoPE, SwiGLU, GQA), "
            f"{design.n_layers} layers, d_model {design.d_model}, {design.n_heads} heads "
            f"({design.n_kv_heads} kv), FFN {design.ffn_hidden}\n"
            f"- parameters: {p.total:,}\n- vocab {design.vocab_size}, context "
            f"{design.context_length}\n- loads in transformers as LlamaForCausalLM\n")


def load_model(ws: Workspace, ref: str, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32
               ) -> tuple[Transformer, Tokenizer, Artifact | None]:
    """A model artifact (checksums verified) or a plain model directory (no artifact)."""
    if Path(ref).is_dir() and not (Path(ref) / "manifest.json").exists():
        model, tok = load_model_dir(Path(ref), device, dtype)
        return model, tok, None
    art = ws.resolve(ref, kind="model")
    model, tok = load_model_dir(art.path, device, dtype)
    return model, tok, art
