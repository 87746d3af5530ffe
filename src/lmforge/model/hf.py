"""Export to and import from the Hugging Face format, so one checkpoint serves every tool.

An lmforge model directory already is an HF LlamaForCausalLM checkpoint; export copies it out
of the workspace (optionally cast to another dtype), import validates an HF Llama folder and
registers it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmforge.errors import LmforgeError
from lmforge.model.io import WEIGHTS, copy_model_dir, load_model_dir, save_model_dir
from lmforge.registry import Artifact, Workspace, atomic_write_json

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export_hf(art: Artifact, out: Path, dtype: str = "float32") -> list[str]:
    if dtype not in DTYPES:
        raise LmforgeError(f"unknown dtype '{dtype}'", hint=f"choose one of: {', '.join(DTYPES)}")
    if out.exists() and any(out.iterdir()):
        raise LmforgeError(f"{out} exists and is not empty", hint="choose a new --out folder")
    files = copy_model_dir(art.path, out)
    if dtype != "float32":
        model, _ = load_model_dir(art.path)
        state = {k: v.to(DTYPES[dtype]).contiguous() for k, v in model.state_dict().items()}
        if model.design.tie_embeddings:
            state.pop("lm_head.weight")
        (out / WEIGHTS).chmod(0o644)
        save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
        config = json.loads((out / "config.json").read_text())
        (out / "config.json").chmod(0o644)
        atomic_write_json(out / "config.json", {**config, "torch_dtype": dtype})
    for f in out.iterdir():  # copies of read-only artifact files are the user's to edit
        f.chmod(0o644)
    return files


def import_hf(ws: Workspace, folder: Path, name: str | None = None,
              state: str = "pretrained") -> Artifact:
    if not folder.is_dir():
        raise LmforgeError(f"{folder} is not a folder", hint="give a Hugging Face model folder")
    if not (folder / "tokenizer.json").is_file():
        raise LmforgeError(f"{folder}: no tokenizer.json",
                           hint="lmforge needs the fast-tokenizer file beside the weights")
    model, tokenizer = load_model_dir(folder)  # validates config, weights and vocab
    readme = folder / "MODEL_CARD.md"
    card = readme.read_text(encoding="utf-8") if readme.is_file() else (
        f"# {name or folder.name}\n\nImported from a Hugging Face checkpoint at {folder}.\n")
    with ws.staging() as d:
        save_model_dir(model, d, tokenizer, card)
        return ws.register(d, kind="model", stage="import", parents=None,
                           settings={"source": folder.name},
                           metrics={"params": model.num_params()},
                           state=state, name=name or folder.name)
