"""Training checkpoints: model, optimizers, step and RNG, written atomically; nothing pickled.

Layout inside a run folder:
  checkpoints/step_000020/{model.safetensors, optimizer.safetensors, state.json}
      (+ objective.safetensors: the parameters an objective owns, such as a reward head)
  checkpoints/latest          -> the name of the newest complete checkpoint
A checkpoint folder is written under a temporary name and renamed when complete, and `latest`
is replaced atomically after that, so a kill at any moment leaves the previous one usable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmforge.errors import LmforgeError
from lmforge.model.io import savable_state
from lmforge.model.transformer import Transformer
from lmforge.registry import atomic_write_json, atomic_write_text
from lmforge.registry.atomic import fsync_dir


def _flatten_optimizers(state_dicts: list[dict[str, Any]]
                        ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors: dict[str, torch.Tensor] = {}
    groups: list[dict[str, Any]] = []
    for k, sd in enumerate(state_dicts):
        for idx, state in sd["state"].items():
            for name, value in state.items():
                tensors[f"opt{k}.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        groups.append({"param_groups": sd["param_groups"]})
    return tensors, groups


def _unflatten_optimizer(k: int, tensors: dict[str, torch.Tensor], groups: dict[str, Any]
                         ) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    prefix = f"opt{k}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": groups["param_groups"]}


def save_checkpoint(run_dir: Path, step: int, model: Transformer,
                    optimizers: list[torch.optim.Optimizer], extra: dict[str, Any],
                    owned: dict[str, torch.nn.Parameter] | None = None, keep: int = 2,
                    optimizer_states: list[dict[str, Any]] | None = None) -> Path:
    """Write a checkpoint; `optimizer_states` (state dicts gathered from sharded optimizers)
    replace the optimizers' own, which would hold one rank's shards only."""
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = ckpt_root / name
    tmp = ckpt_root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(savable_state(model), str(tmp / "model.safetensors"))
    if owned:
        save_file({n: p.detach().cpu().contiguous() for n, p in owned.items()},
                  str(tmp / "objective.safetensors"))
    tensors, groups = _flatten_optimizers(
        optimizer_states if optimizer_states is not None else
        [opt.state_dict() for opt in optimizers])
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda{i}"] = s
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    atomic_write_json(tmp / "state.json", {"step": step, "optimizers": groups, **extra})
    for f in tmp.iterdir():  # make the data durable before the rename publishes it
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_dir(ckpt_root)
    atomic_write_text(ckpt_root / "latest", name)
    old = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())[:-keep]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_checkpoint(path: Path, model: Transformer, optimizers: list[torch.optim.Optimizer],
                    owned: dict[str, torch.nn.Parameter] | None = None) -> dict[str, Any]:
    """Restore model, optimizers and RNG in place; return state.json."""
    try:
        state = json.loads((path / "state.json").read_text())
        weights = load_file(str(path / "model.safetensors"))
        tensors = load_file(str(path / "optimizer.safetensors"))
        own = load_file(str(path / "objective.safetensors")) if owned else {}
    except (OSError, ValueError) as e:
        raise LmforgeError(f"checkpoint {path} is unreadable: {e}",
                           hint="delete it to fall back to the previous checkpoint") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    allowed = {"lm_head.weight"} if model.design.tie_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise LmforgeError(f"checkpoint {path} does not fit this model (missing "
                           f"{sorted(set(missing) - allowed)[:3]}, unexpected {unexpected[:3]})",
                           hint="resume with the same model the run started from")
    if owned:
        if set(own) != set(owned):
            raise LmforgeError(f"checkpoint {path} holds objective parameters {sorted(own)[:3]}, "
                               f"this objective has {sorted(owned)[:3]}",
                               hint="resume with the same objective the run started with")
        with torch.no_grad():
            for name, p in owned.items():
                p.copy_(own[name])
    for k, opt in enumerate(optimizers):
        opt.load_state_dict(_unflatten_optimizer(k, tensors, state["optimizers"][k]))
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        cuda_states = [tensors[f"rng.cuda{i}"] for i in range(torch.cuda.device_count())
                       if f"rng.cuda{i}" in tensors]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    return state
