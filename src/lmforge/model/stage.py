"""Stage 3 as a recipe step: model v0 from a design, a tokenizer and an init scheme."""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.design.estimate import count_params
from lmforge.design.spec import ModelDesign
from lmforge.design.stage import register_design, resolve_design
from lmforge.model.init import initialize
from lmforge.model.io import check_vocab, load_model_dir, save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.registry import Artifact, Workspace
from lmforge.tokenizer import Tokenizer


def model_card(design: ModelDesign, title: str, body: str) -> str:
    p = count_params(design)
    return (f"# {title}\n\n{body}\n\n"
            f"- architecture: Llama-style decoder (RMSNorm, RoPE, SwiGLU, GQA), "
            f"{design.n_layers} layers, d_model {design.d_model}, {design.n_heads} heads "
            f"({design.n_kv_heads} kv), FFN {design.ffn_hidden}\n"
            f"- parameters: {p.total:,}\n- vocab {design.vocab_size}, context "
            f"{design.context_length}\n- loads in transformers as LlamaForCausalLM\n")


def init_stage(ws: Workspace, design_ref: str, tokenizer_ref: str, scheme: str = "gpt2",
               seed: int = 0, vocab_size: int | None = None) -> Artifact:
    design, design_id = resolve_design(ws, design_ref, vocab_size=vocab_size)
    tok_art = ws.resolve(tokenizer_ref, kind="tokenizer")
    tokenizer = Tokenizer.load(tok_art.file("tokenizer.json"))
    check_vocab(tokenizer, design, where=f"tokenizer {tok_art.id} with design '{design.name}'")
    if design_id is None:  # record the exact design this model was built from
        design_id = register_design(ws, design)[0].id
    torch.manual_seed(seed)
    model = initialize(Transformer(design), scheme=scheme, seed=seed)
    card = model_card(design, f"{design.name} v0 (initialized, {scheme})",
                      "Random weights: it can produce output, but the output is random.")
    with ws.staging() as d:
        save_model_dir(model, d, tokenizer, card)
        return ws.register(d, kind="model", stage="init",
                           parents={"design": design_id, "tokenizer": tok_art.id},
                           settings={"scheme": scheme, "seed": seed},
                           metrics={"params": model.num_params()},
                           state="initialized", name=f"{design.name}-v0")


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
