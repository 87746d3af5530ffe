"""`lmforge finetune MODEL --method dpo`: preference pairs in, a tuned model out.

Pairs are read and checked (data/preferences.py), split into training and validation by
prompt, laid out as units (train/dpo.py), scored ONCE by the reference (the starting model, or
`--reference` of the same architecture and tokenizer), and trained through the one loop with
the DPO objective. The result is a model in state `tuned` whose parent is the starting model,
with validation rewards/margins and accuracies before and after in its metrics.
"""

from __future__ import annotations

import gc
import hashlib
import sys
import time
from typing import Any

import numpy as np
import torch

from lmforge.data.preferences import PairReport, load_pairs, pairs_digest, split_pairs
from lmforge.data.training_sets import resolve_training_sets
from lmforge.errors import LmforgeError
from lmforge.model.io import load_model_dir, model_card, save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.registry import Workspace, atomic_write_json
from lmforge.rerun import check_read, input_record, rerun_metrics, training_record
from lmforge.runtime import resolve_device
from lmforge.stage import Outcome
from lmforge.tokenizer import Tokenizer
from lmforge.train.dpo import (
    DPO,
    PairBatches,
    check_dpo_options,
    describe,
    fill_reference_logps,
    make_units,
    units_digest,
)
from lmforge.train.loop import Interrupted, autocast_dtype, evaluate, train

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected", "nll/chosen")


def _pairs(s, refs: list[str], seed: int, notes: list[str]):
    """(training pairs, validation pairs, the digest of what was read)."""
    report = PairReport()
    pairs = load_pairs(refs, report)
    val_given = load_pairs(list(s.val_data), report) if s.val_data else []
    read = pairs_digest(pairs, val_given)
    check_read(read, "preference pairs")
    if s.val_data:
        train_pairs, val_pairs = pairs, val_given
    else:
        train_pairs, val_pairs = split_pairs(pairs, s.val_fraction, seed)
    notes += report.notes()
    if not train_pairs or not val_pairs:
        raise LmforgeError(f"preference data {', '.join(s.data)}: {len(train_pairs)} training "
                           f"and {len(val_pairs)} validation pairs",
                           hint="give more pairs, a larger --val-fraction, or --val-data")
    return train_pairs, val_pairs, read


def _check_reference(policy: Transformer, policy_tok: Tokenizer, reference: Transformer,
                     ref_tok: Tokenizer, policy_id: str, ref_id: str) -> None:
    """A reference of another tokenizer or architecture is refused before anything trains:
    its log-probs would be of other text, or of a model the policy never was."""
    from lmforge.train.compat import design_difference, tokenizer_difference

    hint = (f"leave --reference out (the reference is then {policy_id} itself), or name a "
            f"model tuned from the same base")
    diff = tokenizer_difference(ref_tok, policy_tok)  # the reference's figure first
    if diff is not None:
        raise LmforgeError(f"the reference model {ref_id} uses another tokenizer than "
                           f"{policy_id} ({diff}): its log-probs would be of other text",
                           hint=hint)
    diff = design_difference(policy.design, reference.design)
    if diff is not None:
        raise LmforgeError(f"the reference model {ref_id} is another architecture than "
                           f"{policy_id} ({diff})", hint=hint)


def run_dpo(ws: Workspace, s, show_progress: bool = True, on_step=None,
            before_register=None) -> Outcome:
    """DPO from `s.model` on `s.data` (a FinetuneSettings with method "dpo");
    `before_register` as in finetune.run."""
    from lmforge.train.finetune import _sampler, data_refs

    check_dpo_options(s.beta, s.dpo_loss, s.label_smoothing, s.sft_weight)
    base = ws.resolve(s.model, kind="model")
    reference_art = ws.resolve(s.reference, kind="model") if s.reference else None
    model, tok = load_model_dir(base.path)
    t = s.train
    if t.seq_len > model.design.context_length:
        raise LmforgeError(f"seq_len {t.seq_len} exceeds the model's context length "
                           f"{model.design.context_length}",
                           hint=f"use --seq-len {model.design.context_length} or less")
    reference = model
    if reference_art is not None:
        reference, ref_tok = load_model_dir(reference_art.path)
        _check_reference(model, tok, reference, ref_tok, base.id, reference_art.id)
    refs, fallback_note = data_refs(s)
    refs, set_ids = resolve_training_sets(ws, refs, "dpo")  # preference-dataset artifacts
    notes = [fallback_note] if fallback_note else []
    train_pairs, val_pairs, read = _pairs(s, refs, t.seed, notes)
    train_units, cut_train = make_units(tok, train_pairs, t.seq_len)
    val_units, cut_val = make_units(tok, val_pairs, t.seq_len)
    if cut_train or cut_val:
        notes.append(f"{cut_train} training and {cut_val} validation pairs left out: their "
                     f"prompt leaves no room for the answers within seq_len {t.seq_len}")
    if not train_units or not val_units:
        raise LmforgeError(f"no {'training' if not train_units else 'validation'} pair fits "
                           f"seq_len {t.seq_len}", hint="raise --seq-len, or shorten prompts")
    # Shuffle before packing (seeded), as SFT does: rows mix prompts.
    order = np.random.default_rng([t.seed, 11]).permutation(len(train_units))
    train_units = [train_units[i] for i in order]

    device = resolve_device(t.device)
    amp = autocast_dtype(t, device)
    reference.to(device)
    if show_progress:
        print(f"reference log-probs of {len(train_units):,} training and {len(val_units):,} "
              f"validation pairs (once, before training) ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    # Validation apart, in the rows and batches validation reads: before training, the
    # policy's validation log-probs are then the reference's to the last bit (margins 0).
    fill_reference_logps(reference, train_units, t.seq_len, t.micro_batch, device, amp)
    fill_reference_logps(reference, val_units, t.seq_len, t.micro_batch, device, amp)
    reference_seconds = time.perf_counter() - started
    if show_progress:
        print(f"reference log-probs done in {reference_seconds:.0f} s", file=sys.stderr,
              flush=True)
    if reference is not model:  # scored once: the reference is not kept
        reference.to("cpu")
        del reference
        gc.collect()
    source = PairBatches(train_units, val_units, t.seq_len, t.micro_batch, t.accumulation,
                         t.eval_batches)
    key = hashlib.sha256(f"{base.id}|{s!r}|{units_digest(train_units, val_units)}".encode()
                         ).hexdigest()[:12]
    run_dir = ws.runs_dir / f"finetune-{key}"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "run.json", {"stage": "finetune", "model": base.id,
                                             "method": "dpo", "data": list(s.data),
                                             "settings": t.to_dict()})
    if s.lora:
        from lmforge.model.lora import apply_lora

        torch.manual_seed(t.seed)
        apply_lora(model, **dict(s.lora))
    model.to(device)
    objective = DPO(s.beta, s.dpo_loss, s.label_smoothing, s.sft_weight)
    before = evaluate(model, objective, source, device, amp)
    prompts = [p.prompt for p in val_pairs[:4]]
    torch.manual_seed(t.seed)
    try:
        result = train(model, objective, source, t, run_dir, sample=_sampler(tok, prompts),
                       on_step=on_step, show_progress=show_progress)
    except Interrupted as e:
        raise Interrupted(f"run {run_dir.name}: {e}") from None
    after = evaluate(model, objective, source, device, amp)
    model.to("cpu").float()
    metrics: dict[str, Any] = {
        "method": "dpo", "loss": s.dpo_loss, "beta": s.beta,
        "label_smoothing": s.label_smoothing, "sft_weight": s.sft_weight,
        "steps": result.steps, "pairs": result.tokens,
        "train_pairs": len(train_units), "val_pairs": len(val_units),
        "train_loss": result.train_loss, "val_loss_before": before["loss"],
        "val_loss": after["loss"], "train_seconds": round(result.seconds, 1),
        "pairs_per_s": result.tokens / max(result.seconds, 1e-9),
        "reference_seconds": round(reference_seconds, 1),
        **rerun_metrics(input_record([*refs, *s.val_data]), training_record(device.type),
                        {"read_sha256": read})}
    for name in METRICS:
        metrics[f"val_{name}_before"] = before[name]
        metrics[f"val_{name}"] = after[name]
    if notes:
        metrics["warnings"] = notes
    parents: dict[str, Any] = {"base": base.id}
    if "tokenizer" in base.parents:
        parents["tokenizer"] = base.parents["tokenizer"]
    if set_ids:
        parents["data"] = set_ids
    if reference_art is not None:
        parents["reference"] = reference_art.id
    settings = {"method": "dpo", "data": refs, "val_data": list(s.val_data),
                "val_fraction": s.val_fraction, "loss": s.dpo_loss, "beta": s.beta,
                "label_smoothing": s.label_smoothing, "sft_weight": s.sft_weight,
                "reference": s.reference,
                **t.to_dict()}
    line = summary(metrics)
    samples = _sampler(tok, prompts, tokens=64)(model)
    if s.lora:
        from lmforge.model.lora import save_adapter, trainable_fraction

        metrics["trainable_fraction"] = trainable_fraction(model)
        parents.pop("base")
        art = save_adapter(ws, model, base, settings, metrics, parents,
                           name=f"{model.design.name}-dpo-lora")
        return Outcome(art, line + f"; LoRA adapter, {metrics['trainable_fraction']:.2%} "
                                   f"trained", result)
    body = (f"Tuned with DPO ({s.dpo_loss}, beta {s.beta:g}) from {base.id} on "
            f"{', '.join(s.data)}: {result.steps} steps over {result.tokens:,} pairs; "
            f"validation {describe(after)}.")
    with ws.staging() as d:
        save_model_dir(model, d, tok, model_card(model.design, f"{model.design.name} (dpo)",
                                                 body))
        (d / "training_metrics.jsonl").write_bytes((run_dir / "metrics.jsonl").read_bytes())
        atomic_write_json(d / "samples.json", samples)
        if before_register is not None:
            before_register(d, metrics, parents)
        art = ws.register(d, kind="model", stage="finetune", parents=parents,
                          settings=settings, metrics=metrics, state="tuned",
                          name=f"{model.design.name}-dpo")
    return Outcome(art, line, result)


def summary(m: dict[str, Any]) -> str:
    line = (f"dpo ({m['loss']}, beta {m['beta']:g}): {m['steps']} steps over {m['pairs']:,} "
            f"pairs in {m['train_seconds']:.0f} s; val loss {m['val_loss_before']:.3f} → "
            f"{m['val_loss']:.3f}, margin {m['val_rewards/margins_before']:.3f} → "
            f"{m['val_rewards/margins']:.3f}, accuracy "
            f"{m['val_rewards/accuracies_before']:.2f} → {m['val_rewards/accuracies']:.2f}")
    return line + "".join(f"; warning: {w}" for w in m.get("warnings", []))
