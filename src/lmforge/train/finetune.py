"""Stage 6: fine-tuning a pretrained model through the one training loop.

- `domain`: continued next-token training on a focused corpus (files, folders, globs or a
  dataset artifact), documents packed with document masks, with optional replay of the base
  model's own pretraining tokens to limit forgetting. Domain and general bits per byte are
  measured before and after, so forgetting is visible in the record.
- `sft`: conversations (see data/chat.py), loss on assistant tokens only, packed several to a
  row without attention crossing between them; validation loss, and answers to held-out
  prompts at intervals.

Both are `NextToken` over `PackedSequences`: the method decides only the sequences and masks.
`reward` (a reward model from preference pairs) and `rlhf` (a policy tuned against one) live
in train/reward.py and train/rlhf.py; `run` hands them their settings.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.curate.config import resolve_path
from lmforge.data.shards import TokenShards
from lmforge.data.stage import resolve_inputs
from lmforge.data.training_sets import resolve_training_sets
from lmforge.errors import LmforgeError
from lmforge.model.io import load_model_dir, model_card, save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.registry import Artifact, Workspace, atomic_write_json
from lmforge.rerun import input_record, rerun_metrics, training_record
from lmforge.runtime import resolve_device
from lmforge.stage import Outcome, check_keys
from lmforge.tokenizer import Tokenizer
from lmforge.train.batches import PackedSequences, TokenWindows
from lmforge.train.loop import Interrupted, autocast_dtype, evaluate, train
from lmforge.train.objectives import NextToken
from lmforge.train.settings import TrainSettings

METHODS = ("domain", "sft", "reward", "rlhf", "dpo")

# Fine-tuning starts from a trained model: a tenth of pretraining's rate, short warmup.
FINETUNE_DEFAULTS = {"lr": 3e-4, "muon_lr": 0.005, "warmup_steps": 10, "epochs": 1.0,
                     "batch_tokens": 4096, "micro_batch": 8, "seq_len": 256, "eval_every": 50,
                     "checkpoint_every": 50}

Sequence_ = tuple[list[int], list[bool] | None]
# (the saved model's folder, its metrics, its parents) just before registering: stage 10
# (lifecycle/feedback_tune.py) evaluates the successor there and adds its decision.
BeforeRegister = Callable[[Path, dict[str, Any], dict[str, Any]], None]


@dataclass(frozen=True)
class FinetuneSettings:
    model: str  # the model to tune (artifact reference)
    method: str  # domain or sft
    data: tuple[str, ...]  # files, folders, globs, dataset refs (domain) or chat files (sft)
    train: TrainSettings
    val_data: tuple[str, ...] = ()  # a separate validation set; else val_fraction of data
    val_fraction: float = 0.05
    replay: float = 0.0  # domain: share of training sequences replayed from pretraining
    text_field: str = "text"
    prompts: tuple[str, ...] = field(default=())  # shown at intervals and at the end
    lora: tuple[tuple[str, Any], ...] = ()  # r, alpha, dropout, targets: train adapters only
    fallback: tuple[str, ...] = ()  # read instead of `data` when none of its paths exists
    reward: str | None = None  # rlhf: the reward model (train/reward.py)
    reference: str | None = None  # rlhf, dpo: the frozen reference (default: the model itself)
    algo: str = "ppo"  # rlhf: ppo, grpo or rloo
    rl: tuple[tuple[str, Any], ...] = ()  # rlhf: RLSettings fields (train/rlhf.py)
    beta: float = 0.1  # dpo: how far from the reference (higher: closer)
    dpo_loss: str = "sigmoid"  # dpo: sigmoid, ipo or hinge (train/dpo.py)
    label_smoothing: float = 0.0  # dpo: cDPO's share of possibly flipped labels
    sft_weight: float = 0.0  # dpo: weight of the chosen answers' NLL added to the loss (RPO)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LmforgeError(f"unknown fine-tuning method {self.method!r}",
                               hint=f"choose one of: {', '.join(METHODS)}")
        if not self.data and self.method != "rlhf":  # rlhf defaults to built-in prompts
            raise LmforgeError("fine-tuning needs data", hint="pass --data PATH (repeatable)")
        if not 0 <= self.replay < 1:
            raise LmforgeError(f"replay must be in [0, 1), got {self.replay}",
                               hint="e.g. --replay 0.1: a tenth of the sequences are replayed")
        if self.replay and self.method != "domain":
            raise LmforgeError("--replay is for --method domain",
                               hint="SFT keeps its base's knowledge through its low rate")
        if not 0 <= self.val_fraction < 1:
            raise LmforgeError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path) -> FinetuneSettings:
        own = ("model", "method", "data", "val_data", "val_fraction", "replay", "text_field",
               "prompts", "lora", "fallback", "reward", "reference", "algo", "rl", "beta",
               "dpo_loss", "label_smoothing", "sft_weight")
        values = dict(values)
        mine = {k: values.pop(k) for k in own if k in values}
        needed = ("model", "method") if mine.get("method") == "rlhf" else ("model", "method",
                                                                             "data")
        check_keys(mine, where, required=needed, optional=own)
        mine.setdefault("data", ())  # rlhf: the built-in prompts
        for key in ("data", "val_data", "fallback"):
            if key in mine:
                mine[key] = tuple(resolve_path(p, base_dir) for p in _listed(mine[key]))
        if "prompts" in mine:
            mine["prompts"] = tuple(_listed(mine["prompts"]))
        if "lora" in mine:
            mine["lora"] = lora_options(mine["lora"], where)
        if "rl" in mine:
            from lmforge.train.rlhf import rl_options

            mine["rl"] = rl_options(mine["rl"], where)
        return cls(train=training_settings(values, where, mine.get("method")), **mine)


def lora_options(spec: str | dict[str, Any] | bool, where: str) -> tuple[tuple[str, Any], ...]:
    """LoRA settings from `r=16,alpha=32,dropout=0.05,targets=q_proj+v_proj` (the CLI) or a
    table (a recipe); `true` takes the defaults. Targets default to the attention projections
    (1.4% of the tiny model's parameters at r=8)."""
    from lmforge.model.lora import ATTENTION, check_lora_args

    if spec is True or spec == "":
        spec = {}
    if isinstance(spec, str):
        table: dict[str, Any] = {}
        for part in spec.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise LmforgeError(f"{where}: cannot read LoRA setting {part!r}",
                                   hint="write --lora r=16,alpha=32,targets=q_proj+v_proj")
            table[key.strip()] = value.strip()
        spec = table
    if not isinstance(spec, dict):
        raise LmforgeError(f"{where}: lora must be a table or r=...,alpha=... text")
    check_keys(spec, f"{where} (lora)", optional=("r", "alpha", "dropout", "targets"))
    try:
        r = int(spec.get("r", 16))
        alpha = float(spec.get("alpha", 2 * r))
        dropout = float(spec.get("dropout", 0.0))
    except ValueError as e:
        raise LmforgeError(f"{where}: LoRA setting is not a number ({e})",
                           hint="e.g. r=16,alpha=32,dropout=0.05") from None
    targets = spec.get("targets", ATTENTION)
    if isinstance(targets, str):
        targets = [t for t in targets.replace("+", " ").replace(";", " ").split() if t]
    targets = tuple(str(t) for t in targets)
    check_lora_args(r, alpha, dropout, targets)
    return (("r", r), ("alpha", alpha), ("dropout", dropout), ("targets", targets))


# RLHF samples its own data: a fixed number of steps (an epoch of the built-in prompts would
# be 1,366 of them) at a third of the rate (3e-4 broke the quickstart policy within 20 steps).
# DPO at a fifteenth of SFT's rate: at 1e-4 the quickstart's tiny SFT model answered in
# repeated fragments within 35 steps of pydocs-prefs; at 2e-5 its answers stayed whole while
# held-out pair accuracy went from 0 to 0.84.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {"rlhf": {"lr": 1e-4, "steps": 200},
                                              "dpo": {"lr": 2e-5}}


def training_settings(values: dict[str, Any], where: str, method: str | None = None
                      ) -> TrainSettings:
    """TrainSettings with fine-tuning's (and the method's) defaults under what was given."""
    given = dict(values)
    defaults = {**FINETUNE_DEFAULTS, **METHOD_DEFAULTS.get(method or "", {})}
    if any(k in given for k in ("steps", "tokens", "epochs")):
        defaults.pop("steps", None)  # the length given wins over a method's default
    if any(k in given for k in ("steps", "tokens")):
        given.setdefault("epochs", 0.0)
    return TrainSettings.from_dict({**defaults, **given}, where=where)


def data_refs(s: FinetuneSettings) -> tuple[list[str], str | None]:
    """The data to read, and a note when it is the fallback: a recipe names local files
    (../shared/data on our machines) and the same data's public source for a user's clone."""
    from lmforge.data.files import with_fallback

    return with_fallback(list(s.data), list(s.fallback))


def _listed(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


# ---- sequences ---------------------------------------------------------------------------


def _split(key: str, val_fraction: float, seed: int) -> bool:
    """True when an item goes to validation: a hash of its content, so the split does not
    move when items are added or reordered."""
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def _document_sequences(tok: Tokenizer, texts: Sequence[str], seq_len: int) -> list[Sequence_]:
    """BOS + tokens per document (as pretraining saw them), cut into pieces of at most
    seq_len + 1 tokens so nothing is lost to truncation."""
    out: list[Sequence_] = []
    for ids in tok.encode_batch(list(texts)):
        ids = [tok.bos_id, *ids]
        for start in range(0, max(1, len(ids) - 1), seq_len):
            piece = ids[start:start + seq_len + 1]
            if len(piece) > 1:
                out.append((piece, None))
    return out


def _domain_data(ws: Workspace, s: FinetuneSettings, refs: list[str], tok: Tokenizer
                 ) -> tuple[list[Sequence_], list[Sequence_], int, list[str]]:
    """Training and validation sequences, validation UTF-8 bytes, and dataset parent ids."""
    docs, parents = resolve_inputs(ws, refs, s.text_field)
    texts = [d.text for d in docs if d.text.strip()]
    if s.val_data:
        val_docs, val_parents = resolve_inputs(ws, list(s.val_data), s.text_field)
        val_texts = [d.text for d in val_docs if d.text.strip()]
        parents += val_parents
    else:
        held = [_split(t, s.val_fraction, s.train.seed) for t in texts]
        val_texts = [t for t, h in zip(texts, held) if h]
        texts = [t for t, h in zip(texts, held) if not h]
    if not texts or not val_texts:
        raise LmforgeError(f"domain data {', '.join(s.data)}: {len(texts)} training and "
                           f"{len(val_texts)} validation documents",
                           hint="give more documents, a larger --val-fraction, or --val-data")
    seq_len = s.train.seq_len
    val_bytes = sum(len(t.encode("utf-8")) for t in val_texts)
    return (_document_sequences(tok, texts, seq_len), _document_sequences(tok, val_texts, seq_len),
            val_bytes, parents)


def _replayed(shards: TokenShards, count: int, seq_len: int, seed: int) -> list[Sequence_]:
    """`count` random windows of the base's pretraining tokens, seeded."""
    rng = np.random.default_rng([seed, 7])
    starts = rng.integers(0, shards.tokens - seq_len - 1, size=count, endpoint=True)
    return [(shards.get(int(i), seq_len + 1).astype(np.int64).tolist(), None) for i in starts]


def _sft_data(ws: Workspace, s: FinetuneSettings, refs: list[str], tok: Tokenizer,
              notes: list[str]
              ) -> tuple[list[Sequence_], list[Sequence_], list[list[dict]]]:
    """Training and validation conversations as (ids, assistant mask), and held-out prompts
    (the validation conversations up to their first assistant turn)."""
    from lmforge.data.chat import conversation_sources, encode_conversation, split_conversations

    train_convs = conversation_sources(refs)
    if s.val_data:
        val_convs = conversation_sources(list(s.val_data))
    else:
        train_convs, val_convs = split_conversations(train_convs, s.val_fraction, s.train.seed)
    if not train_convs or not val_convs:
        raise LmforgeError(f"chat data {', '.join(s.data)}: {len(train_convs)} training and "
                           f"{len(val_convs)} validation conversations",
                           hint="give more conversations, a larger --val-fraction, or "
                                "--val-data")

    def encode(convs) -> list[Sequence_]:
        """Encoded conversations; one whose first answer starts beyond seq_len teaches nothing
        in a row and is left out (counted), unless that leaves none."""
        out, skipped = [], []
        for c in convs:
            try:
                out.append(encode_conversation(tok, c, max_tokens=s.train.seq_len + 1))
            except LmforgeError as e:
                if "no assistant token to learn" not in e.message:
                    raise
                skipped.append(e)
        if skipped and not out:
            raise skipped[0]
        too_long.append(len(skipped))
        return out

    too_long: list[int] = []

    prompts = []
    for c in val_convs[:4]:
        first = next(i for i, m in enumerate(c.messages) if m["role"] == "assistant")
        prompts.append(c.messages[:first])
    train, val = encode(train_convs), encode(val_convs)
    if sum(too_long):
        notes.append(f"{too_long[0]} training and {too_long[1]} validation conversations left "
                     f"out: their first answer starts beyond seq_len {s.train.seq_len}")
    return train, val, prompts


# ---- measuring ---------------------------------------------------------------------------


def _bits_per_byte(model: Transformer, source, device: torch.device, amp, scale: float
                   ) -> float:
    return evaluate(model, NextToken(), source, device, amp)["loss"] * scale


@dataclass
class _Probe:
    """A validation set measured in bits per byte before and after tuning."""
    name: str
    source: Any
    scale: float  # tokens / (ln 2 * bytes)


def _probes(ws: Workspace, base: Artifact, s: FinetuneSettings, val: list[Sequence_],
            val_bytes: int) -> list[_Probe]:
    t = s.train
    domain = PackedSequences(val, val, t.seq_len, t.micro_batch, 1, t.eval_batches)
    tokens = sum(len(ids) - 1 for ids, _ in val)
    probes = [_Probe("domain", domain, tokens / (math.log(2) * val_bytes))]
    general = _pretraining_tokens(ws, base)
    if general is not None:
        val_split = TokenShards(general.path, "val")
        val_b = val_split.index.get("val_bytes") or 0
        if val_b and val_split.tokens > t.seq_len + 1:
            windows = TokenWindows(val_split, val_split, t.seq_len, t.micro_batch, 1,
                                   t.eval_batches)
            probes.append(_Probe("general", windows, val_split.tokens / (math.log(2) * val_b)))
    return probes


def _pretraining_tokens(ws: Workspace, model: Artifact) -> Artifact | None:
    """The tokens artifact the model (or its nearest ancestor) was pretrained on."""
    seen = 0
    art: Artifact | None = model
    while art is not None and seen < 16:
        data = art.parents.get("data")
        if isinstance(data, str) and ws.record(data).kind == "tokens":
            return ws.resolve(data, kind="tokens")
        base = art.parents.get("base")
        art = ws.resolve(base, kind="model") if isinstance(base, str) else None
        seen += 1
    return None


# ---- the stage ---------------------------------------------------------------------------


def run(ws: Workspace, s: FinetuneSettings, show_progress: bool = True, on_step=None,
        before_register: BeforeRegister | None = None) -> Outcome:
    """Tune the model and register the result (state `tuned`); details are the TrainResult.
    `before_register(folder, metrics, parents)` sees the saved model just before it is
    registered and may add metrics and parents (sft and dpo, not LoRA adapters)."""
    if s.method == "reward":
        from lmforge.train.reward import run_reward

        return run_reward(ws, s, show_progress, on_step)
    if s.method == "rlhf":
        from lmforge.train.distributed import launched_world
        from lmforge.train.rlhf import run_rlhf

        if launched_world().distributed:
            raise LmforgeError("rlhf trains on one process: its rollouts and updates are not "
                               "distributed yet", hint="run it without torchrun (one GPU)")

        return run_rlhf(ws, s, show_progress, on_step)
    if s.method == "dpo":
        from lmforge.train.dpo_stage import run_dpo

        return run_dpo(ws, s, show_progress, on_step, before_register)
    base = ws.resolve(s.model, kind="model")
    model, tok = load_model_dir(base.path)
    t = s.train
    if t.seq_len > model.design.context_length:
        raise LmforgeError(f"seq_len {t.seq_len} exceeds the model's context length "
                           f"{model.design.context_length}",
                           hint=f"use --seq-len {model.design.context_length} or less")
    parents: dict[str, Any] = {"base": base.id}
    if "tokenizer" in base.parents:
        parents["tokenizer"] = base.parents["tokenizer"]
    prompts: list[list[dict]] | tuple[str, ...] = s.prompts
    val_bytes = 0
    refs, fallback_note = data_refs(s)
    notes = [fallback_note] if fallback_note else []
    if s.method == "domain":
        train_seqs, val_seqs, val_bytes, data_ids = _domain_data(ws, s, refs, tok)
        if data_ids:
            parents["data"] = data_ids
        if s.replay:
            tokens = _pretraining_tokens(ws, base)
            if tokens is None:
                raise LmforgeError(f"--replay needs the base's pretraining data, and model "
                                   f"{base.id} records none",
                                   hint="fine-tune a model pretrained by lmforge, or drop "
                                        "--replay")
            count = round(len(train_seqs) * s.replay / (1 - s.replay))
            train_seqs = train_seqs + _replayed(TokenShards(tokens.path, "train"), count,
                                                t.seq_len, t.seed)
            parents["replay"] = tokens.id
    else:
        # A `chat-dataset` artifact (a recipe's `data = ["@safety-data"]`) is read as its file.
        refs, set_ids = resolve_training_sets(ws, refs, s.method)
        if set_ids:
            parents["data"] = set_ids
        train_seqs, val_seqs, held_out = _sft_data(ws, s, refs, tok, notes)
        prompts = prompts or held_out
    # Shuffle before packing (seeded): rows mix documents, and replayed windows spread out.
    order = np.random.default_rng([t.seed, 11]).permutation(len(train_seqs))
    train_seqs = [train_seqs[i] for i in order]
    source = PackedSequences(train_seqs, val_seqs, t.seq_len, t.micro_batch, t.accumulation,
                             t.eval_batches)
    # The run folder (and the checkpoint a rerun resumes from) is keyed by what is trained
    # on, not only by its name: edited files or a newer built-in set start a new run.
    key = hashlib.sha256(f"{base.id}|{s!r}|{_data_digest(train_seqs, val_seqs)}".encode()
                         ).hexdigest()[:12]
    run_dir = ws.runs_dir / f"finetune-{key}"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "run.json", {"stage": "finetune", "model": base.id,
                                             "method": s.method, "data": list(s.data),
                                             "settings": t.to_dict()})
    device = resolve_device(t.device)
    amp = autocast_dtype(t, device)
    if s.lora:
        from lmforge.model.lora import apply_lora

        torch.manual_seed(t.seed)  # the adapters' A matrices: the same run, the same adapter
        apply_lora(model, **dict(s.lora))
    model.to(device)
    probes = _probes(ws, base, s, val_seqs, val_bytes) if s.method == "domain" else []
    before = {p.name: _bits_per_byte(model, p.source, device, amp, p.scale) for p in probes}
    val_before = evaluate(model, NextToken(), source, device, amp)["loss"]
    torch.manual_seed(t.seed)
    try:
        result = train(model, NextToken(), source, t, run_dir, sample=_sampler(tok, prompts),
                       on_step=on_step, show_progress=show_progress)
    except Interrupted as e:
        raise Interrupted(f"run {run_dir.name}: {e}") from None
    after = {p.name: _bits_per_byte(model, p.source, device, amp, p.scale) for p in probes}
    model.to("cpu").float()
    metrics: dict[str, Any] = {"method": s.method, "steps": result.steps,
                               "tokens": result.tokens, "train_loss": result.train_loss,
                               "val_loss_before": val_before, "val_loss": result.val_loss,
                               "train_seconds": round(result.seconds, 1),
                               "train_sequences": len(train_seqs),
                               **rerun_metrics(input_record([*refs, *s.val_data]),
                                               training_record(device.type),
                                               {"text_field": s.text_field,
                                                "prompts": list(s.prompts)})}
    if notes:
        metrics["warnings"] = notes
    for name in before:
        metrics[f"{name}_bpb_before"] = before[name]
        metrics[f"{name}_bpb_after"] = after[name]
    samples = _sampler(tok, prompts, tokens=64)(model) if prompts else []
    body = (f"Fine-tuned ({s.method}) from {base.id} on {', '.join(s.data)} for "
            f"{result.steps} steps ({result.tokens:,} learned tokens); validation loss "
            f"{result.val_loss:.3f}.")
    settings = {"method": s.method, "data": refs, "val_data": list(s.val_data),
                "val_fraction": s.val_fraction, "replay": s.replay, **t.to_dict()}
    if s.lora:
        from lmforge.model.lora import save_adapter, trainable_fraction

        metrics["trainable_fraction"] = trainable_fraction(model)
        parents.pop("base")
        art = save_adapter(ws, model, base, settings, metrics, parents,
                           name=f"{model.design.name}-{s.method}-lora")
        return Outcome(art, summary(metrics) + f"; LoRA adapter, "
                                                f"{metrics['trainable_fraction']:.2%} trained",
                       result)
    with ws.staging() as d:
        save_model_dir(model, d, tok, model_card(model.design,
                                                 f"{model.design.name} ({s.method})", body))
        (d / "training_metrics.jsonl").write_bytes((run_dir / "metrics.jsonl").read_bytes())
        if samples:
            atomic_write_json(d / "samples.json", samples)
        if before_register is not None:
            before_register(d, metrics, parents)
        art = ws.register(d, kind="model", stage="finetune", parents=parents,
                          settings=settings, metrics=metrics, state="tuned",
                          name=f"{model.design.name}-{s.method}")
    return Outcome(art, summary(metrics), result)


def _data_digest(*parts: Sequence[tuple[Any, Any]]) -> str:
    """A digest of the token ids and loss masks of every sequence, in order."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        for ids, mask in part:
            h.update(np.asarray(ids, dtype=np.int64).tobytes())
            h.update(np.asarray(mask, dtype=np.bool_).tobytes())
    return h.hexdigest()


def summary(m: dict[str, Any]) -> str:
    line = (f"{m['method']}: {m['steps']} steps, {m['tokens']:,} learned tokens in "
            f"{m['train_seconds']:.0f} s; val loss {m['val_loss_before']:.3f} → "
            f"{m['val_loss']:.3f}")
    for name in ("domain", "general"):
        if f"{name}_bpb_before" in m:
            line += (f"; {name} bpb {m[f'{name}_bpb_before']:.3f} → "
                     f"{m[f'{name}_bpb_after']:.3f}")
    return line + "".join(f"; warning: {w}" for w in m.get("warnings", []))


def _sampler(tok: Tokenizer, prompts, tokens: int = 48):
    """Answers to held-out prompts: chat prompts (lists of messages) end at <|end|>; plain
    text prompts are completed as a base model would."""
    from lmforge.engine.generate import complete, generate_tokens
    from lmforge.engine.sampling import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=tokens)

    def sample(model: Transformer) -> list[str]:
        was_training = model.training
        model.eval()
        out = []
        for p in prompts:
            if isinstance(p, str):
                out.append(p + complete(model, tok, p, params))
            else:
                ids, _ = tok.render_chat(p, add_generation_prompt=True)
                reply = generate_tokens(model, ids, params, stop_ids=(tok.end_id, tok.eos_id))
                out.append(f"{p[-1]['content']} → {tok.decode(list(reply), skip_special=True)}")
        model.train(was_training)
        return out

    return sample
