"""Stage 4 (and the shape of every training stage): a model + token data + settings -> a run
folder with checkpoints and metrics -> a registered model artifact."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lmforge.data.shards import TokenShards
from lmforge.engine.generate import complete
from lmforge.engine.sampling import SamplingParams
from lmforge.errors import LmforgeError
from lmforge.model.io import load_model_dir, model_card, save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.registry import Workspace, atomic_write_json
from lmforge.rerun import rerun_metrics, training_record
from lmforge.runtime import resolve_device
from lmforge.stage import Outcome
from lmforge.tokenizer import Tokenizer
from lmforge.train.batches import TokenWindows
from lmforge.train.loop import Interrupted, train
from lmforge.train.objectives import NextToken
from lmforge.train.settings import TrainSettings

SAMPLE_PROMPTS = ("What does os.path.join do?", "Once upon a time")


def run_id_for(model_id: str, data_id: str, s: TrainSettings) -> str:
    digest = hashlib.sha256(f"{model_id}|{data_id}|{s.key()}".encode()).hexdigest()
    return f"pretrain-{digest[:12]}"


def sampler(tok: Tokenizer, prompts: tuple[str, ...], tokens: int = 40):
    params = SamplingParams(temperature=0.8, top_k=50, max_new_tokens=tokens, seed=0)

    def sample(model: Transformer) -> list[str]:
        model.eval()
        out = []
        for p in prompts:
            out.append(p + complete(model, tok, p, params))
        model.train()
        return out

    return sample


def check_inputs(model: Transformer, train_src: TokenShards, val_src: TokenShards,
                 s: TrainSettings, data_id: str) -> None:
    """Everything that would make step 1 fail, said before it runs."""
    d = model.design
    train_src.check_vocab(d.vocab_size)
    if s.seq_len > d.context_length:
        raise LmforgeError(f"seq_len {s.seq_len} exceeds the model's context length "
                           f"{d.context_length}", hint=f"use --seq-len {d.context_length} or less")
    for name, src in (("training", train_src), ("validation", val_src)):
        if src.tokens < s.seq_len + 2:
            raise LmforgeError(f"dataset {data_id}: the {name} split has {src.tokens} tokens, "
                               f"fewer than one sequence of {s.seq_len}",
                               hint="give more data or a shorter --seq-len")


@dataclass(frozen=True)
class PretrainSettings:
    model: str  # the model to start from (v0, or a model to continue)
    data: str  # a tokens artifact
    train: TrainSettings

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path) -> PretrainSettings:
        values = dict(values)
        model, data = values.pop("model", None), values.pop("data", None)
        if model is None or data is None:
            raise LmforgeError(f"{where}: pretrain needs model and data",
                               hint='e.g. model = "@init", data = "@tokens"')
        return cls(model, data, TrainSettings.from_dict(values, where=where))


def resume_values(ws: Workspace, run_id: str, model: str | None = None,
                  data: str | None = None) -> dict[str, Any]:
    """The model, data and settings a run was started with (runs/<id>/run.json), refusing a
    model or data that differs from the run's."""
    run_file = ws.runs_dir / run_id / "run.json"
    if not run_file.is_file():
        raise LmforgeError(f"no run '{run_id}' in {ws.runs_dir}",
                           hint=f"see the folders in {ws.runs_dir}")
    saved = json.loads(run_file.read_text())
    for flag, given in (("model", model), ("data", data)):
        if given is not None and ws.record(given).id != saved[flag]:
            raise LmforgeError(
                f"run {run_id} trains {flag} {saved[flag]}, not {ws.record(given).id}",
                hint=f"drop --{flag} to resume, or start a new run without --resume")
    return {"model": saved["model"], "data": saved["data"], **saved["settings"]}


def run(ws: Workspace, settings: PretrainSettings, show_progress: bool = True,
        prompts: tuple[str, ...] = SAMPLE_PROMPTS, on_step=None) -> Outcome:
    """Train (resuming the run's checkpoint if there is one) and register the base model; the
    outcome's details are the TrainResult."""
    s = settings.train
    base = ws.resolve(settings.model, kind="model")
    data = ws.resolve(settings.data, kind="tokens")
    model, tok = load_model_dir(base.path)
    train_src, val_src = TokenShards(data.path, "train"), TokenShards(data.path, "val")
    check_inputs(model, train_src, val_src, s, data.id)
    run_dir = ws.runs_dir / run_id_for(base.id, data.id, s)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "run.json", {"stage": "pretrain", "model": base.id,
                                             "data": data.id, "settings": s.to_dict()})
    torch.manual_seed(s.seed)
    val_bytes = val_src.index.get("val_bytes") or 0
    bpb_scale = val_src.tokens / (math.log(2) * val_bytes) if val_bytes else None
    source = TokenWindows(train_src, val_src, s.seq_len, s.micro_batch, s.accumulation,
                          s.eval_batches)
    try:
        result = train(model, NextToken(bpb_scale), source, s, run_dir,
                       sample=sampler(tok, prompts), on_step=on_step,
                       show_progress=show_progress)
    except Interrupted as e:
        raise Interrupted(f"run {run_dir.name}: {e}") from None
    if s.early_stop_patience and (run_dir / "best.safetensors").is_file():
        model.load_state_dict(load_file(str(run_dir / "best.safetensors")), strict=False)
    model.to("cpu").float()
    metrics = {"steps": result.steps, "tokens": result.tokens, "train_loss": result.train_loss,
               "val_loss": result.val_loss, "best_step": result.best_step,
               "train_seconds": round(result.seconds, 1), "stopped_early": result.stopped_early,
               **rerun_metrics(training_record(resolve_device(s.device).type))}
    if bpb_scale:
        metrics["val_bpb"] = result.val_loss * bpb_scale
    card = model_card(model.design, f"{model.design.name} (pretrained)",
                      f"Pretrained from {base.id} on {data.id} for {result.steps} steps "
                      f"({result.tokens:,} tokens); validation loss {result.val_loss:.3f}.")
    with ws.staging() as d:
        save_model_dir(model, d, tok, card)
        (d / "training_metrics.jsonl").write_bytes((run_dir / "metrics.jsonl").read_bytes())
        art = ws.register(d, kind="model", stage="pretrain",
                          parents={"base": base.id, "data": data.id,
                                   **({"tokenizer": base.parents["tokenizer"]}
                                      if "tokenizer" in base.parents else {})},
                          settings=s.to_dict(), metrics=metrics, state="pretrained",
                          name=f"{model.design.name}-pretrained")
    bpb = f", val bpb {metrics['val_bpb']:.3f}" if "val_bpb" in metrics else ""
    return Outcome(art, f"{result.steps} steps, {result.tokens:,} tokens in "
                        f"{result.seconds:.0f} s; val loss {result.val_loss:.3f}{bpb}", result)
