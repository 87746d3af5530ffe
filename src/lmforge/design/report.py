"""The design report: one dict for --json and the registry, one rich table for people."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from lmforge.design.estimate import (
    ASSUMED_MFU,
    GPU_MEMORY_GIB,
    GPU_PEAK_FLOPS,
    NO_BF16,
    USABLE_MEMORY_FRACTION,
    TrainingMemory,
    cluster_training_seconds,
    compute_optimal_tokens,
    count_params,
    data_parallel_efficiency,
    ddp_memory,
    fsdp_memory,
    gpu_class,
    inference_flops_per_token,
    recompute_factor,
    training_flops_per_token,
    training_memory,
    training_seconds,
)
from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError
from lmforge.runtime import MatmulPeak


def check_gpus(gpu: str | None, gpus: int | None) -> str | None:
    """The GPU class's table name; refuses an unknown --gpu, and a --gpus that is not a
    positive count or comes without --gpu (whose memory and peak the plan needs)."""
    if gpus is not None:
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise LmforgeError(f"--gpus must be a whole number of GPUs, 1 or more; got {gpus!r}",
                               hint="e.g. lmforge design --preset 1b --gpu H100 --gpus 64")
        if gpu is None:
            raise LmforgeError("--gpus needs --gpu: the plan depends on each GPU's memory and "
                               "peak", hint=f"add --gpu, one of: {', '.join(GPU_PEAK_FLOPS)}")
    return None if gpu is None else gpu_class(gpu)


def design_report(d: ModelDesign, batch_size: int, peak: MatmulPeak | None,
                  gpu: str | None = None, gpus: int | None = None) -> dict[str, Any]:
    if batch_size < 1:
        raise LmforgeError(f"--batch-size must be at least 1, got {batch_size}")
    gpu = check_gpus(gpu, gpus)
    params = count_params(d)
    memory = training_memory(d, batch_size)
    tokens = compute_optimal_tokens(d)
    report: dict[str, Any] = {
        "design": d.to_dict(),
        "params": {"total": params.total, "embedding": params.embedding,
                   "lm_head": params.lm_head, "non_embedding": params.non_embedding},
        "flops_per_token": {"training": training_flops_per_token(d),
                            "inference": inference_flops_per_token(d)},
        "training_memory_bytes": {"batch_size": batch_size, "seq_len": d.context_length,
                                  "weights": memory.weights, "grads": memory.grads,
                                  "adamw_states": memory.optimizer,
                                  "activations": memory.activations, "total": memory.total},
        "compute_optimal_tokens": tokens,
        "assumed_mfu": ASSUMED_MFU,
        "time_estimates": [],
    }
    if peak is not None:
        report["measured_peak"] = {"device": peak.device, "dtype": peak.dtype,
                                   "flops_per_second": peak.flops_per_second}
        report["time_estimates"].append({
            "hardware": f"this machine ({peak.device}, {peak.dtype}, measured)",
            "peak_flops": peak.flops_per_second,
            "seconds": training_seconds(d, tokens, peak.flops_per_second)})
    if gpu is not None:
        report["time_estimates"].append({
            "hardware": f"1x {gpu} (datasheet bf16 peak)", "peak_flops": GPU_PEAK_FLOPS[gpu],
            "seconds": training_seconds(d, tokens, GPU_PEAK_FLOPS[gpu])})
    if gpu is not None and gpus is not None:
        report["data_parallel"] = data_parallel_plan(d, batch_size, gpu, gpus, tokens)
    return report


def _memory_dict(m: TrainingMemory, usable: float) -> dict[str, Any]:
    return {"weights": m.weights, "grads": m.grads, "adamw_states": m.optimizer,
            "in_flight": m.in_flight, "activations": m.activations, "total": m.total,
            "fits": m.total <= usable}


def data_parallel_plan(d: ModelDesign, batch_size: int, gpu: str, gpus: int,
                       tokens: int) -> dict[str, Any]:
    """Per-GPU memory under DDP and FSDP2 (with and without activation checkpointing) on
    `gpus` GPUs of class `gpu`, the time for `tokens`, and which setup to use."""
    value_bytes = 4 if gpu in NO_BF16 else 2
    capacity = GPU_MEMORY_GIB[gpu] * 2**30
    usable = USABLE_MEMORY_FRACTION * capacity
    ddp = ddp_memory(d, batch_size, gpus, False, value_bytes)
    ddp_ckpt = ddp_memory(d, batch_size, gpus, True, value_bytes)
    fsdp = fsdp_memory(d, batch_size, gpus, False, value_bytes)
    fsdp_ckpt = fsdp_memory(d, batch_size, gpus, True, value_bytes)
    seconds = cluster_training_seconds(d, tokens, GPU_PEAK_FLOPS[gpu], gpus)
    recompute = recompute_factor(d)
    advice, checkpointed, fits = _advice(d, batch_size, gpus, value_bytes, usable)
    return {
        "gpu": gpu, "gpus": gpus, "gpu_memory_bytes": capacity,
        "usable_memory_fraction": USABLE_MEMORY_FRACTION, "usable_memory_bytes": usable,
        "micro_batch": batch_size, "seq_len": d.context_length,
        "compute_dtype": "fp32" if value_bytes == 4 else "bf16",
        "per_gpu_memory_bytes": {"ddp": _memory_dict(ddp, usable),
                                 "ddp_activation_checkpointing": _memory_dict(ddp_ckpt, usable),
                                 "fsdp": _memory_dict(fsdp, usable),
                                 "fsdp_activation_checkpointing":
                                     _memory_dict(fsdp_ckpt, usable)},
        "assumed_mfu": ASSUMED_MFU,
        "scaling_efficiency": data_parallel_efficiency(gpus),
        "seconds": seconds,
        "activation_checkpointing_time_factor": recompute,
        # The recommended setup's time (checkpointing runs each block's forward twice); None
        # when nothing fits.
        "recommended_setup_seconds": (seconds * (recompute if checkpointed else 1.0)
                                      if fits else None),
        # Each rank reads its share of every step's micro-batches, so a step's tokens must
        # split into whole micro-batches for every rank.
        "global_batch_multiple_tokens": gpus * batch_size * d.context_length,
        "recommendation": advice,
    }


def _advice(d: ModelDesign, batch_size: int, gpus: int, value_bytes: int,
            usable: float) -> tuple[str, bool, bool]:
    """(recommendation, whether it checkpoints activations, whether anything fits).

    The cheapest setup that fits, in order: plain DDP, FSDP, FSDP with activation
    checkpointing (more communication, then a third more forward compute). On one GPU FSDP
    shards nothing, so the choice is checkpointing or not. A smaller micro-batch fits where
    activations are what overflows; gradient accumulation keeps the optimizer step's tokens."""
    def fits(m: TrainingMemory) -> bool:
        return m.total <= usable

    if gpus == 1:
        ladder = [("fits on one GPU", False, ddp_memory(d, batch_size, 1, False, value_bytes)),
                  ("needs activation checkpointing (--activation-checkpointing)", True,
                   ddp_memory(d, batch_size, 1, True, value_bytes))]
    else:
        ladder = [("DDP fits", False, ddp_memory(d, batch_size, gpus, False, value_bytes)),
                  ("needs FSDP (--fsdp)", False,
                   fsdp_memory(d, batch_size, gpus, False, value_bytes)),
                  ("needs FSDP + activation checkpointing (--fsdp --activation-checkpointing)",
                   True, fsdp_memory(d, batch_size, gpus, True, value_bytes))]
    chosen = next(((text, ckpt) for text, ckpt, m in ladder if fits(m)), None)
    smaller = next((b for b in range(batch_size - 1, 0, -1)
                    if fits(ddp_memory(d, b, gpus, False, value_bytes))), None)
    smaller_fits = (f"{'' if gpus == 1 else 'DDP at '}--micro-batch {smaller} (gradient "
                    "accumulation keeps --batch-tokens)")
    if chosen is not None:
        first = chosen[0] == ladder[0][0]
        return chosen[0] + ("" if first or not smaller else f"; or {smaller_fits}"), \
            chosen[1], True
    if smaller:
        where = "on one GPU" if gpus == 1 else "even sharded"
        return (f"does not fit {where} at micro-batch {batch_size}: use {smaller_fits}",
                False, True)
    return _no_fit_advice(d, batch_size, gpus, value_bytes, usable), False, False


def _no_fit_advice(d: ModelDesign, batch_size: int, gpus: int, value_bytes: int,
                   usable: float) -> str:
    """What to change when even FSDP with checkpointing overflows: more GPUs only help while
    the sharded states are what overflows; the rest does not shrink with N."""
    fixed = fsdp_memory(d, batch_size, gpus, True, value_bytes)
    unshardable = fixed.in_flight + fixed.activations
    base = ("does not fit on one GPU: " if gpus == 1 else "does not fit even sharded: ")
    if unshardable >= usable:
        return (base + f"use a smaller design or micro-batch (activations and unsharded "
                f"copies alone take {human_bytes(unshardable)})")
    states = 16 * count_params(d).total  # fp32 weights, grads and AdamW's two moments
    need = max(gpus + 1, math.ceil(states / (usable - unshardable)))
    while fsdp_memory(d, batch_size, need, True, value_bytes).total > usable:
        need += 1  # the per-rank shard rounds up
    with_fsdp = " with --fsdp --activation-checkpointing" if gpus == 1 else ""
    return base + f"use more GPUs (at least {need}{with_fsdp}) or a smaller design"


def human_count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def human_seconds(s: float) -> str:
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.1f} {unit}"
    return f"{s:.1f} s"


def design_table(report: dict[str, Any]) -> Table:
    d = report["design"]
    p, f, m = report["params"], report["flops_per_token"], report["training_memory_bytes"]
    table = Table(title=f"design: {d['name']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    head = d["d_model"] // d["n_heads"]
    table.add_row("shape", f"{d['n_layers']} layers x d_model {d['d_model']}, "
                           f"{d['n_heads']} heads ({d['n_kv_heads']} kv) of {head}, "
                           f"FFN {d['ffn_hidden']}")
    table.add_row("vocab / context", f"{d['vocab_size']} / {d['context_length']}"
                  + (", tied embeddings" if d["tie_embeddings"] else ""))
    table.add_row("parameters", f"{human_count(p['total'])} ({p['total']:,}): "
                  f"{human_count(p['embedding'] + p['lm_head'])} embedding, "
                  f"{human_count(p['non_embedding'])} non-embedding")
    table.add_row("FLOPs / token", f"{human_count(f['training'])} training (fwd+bwd), "
                  f"{human_count(f['inference'])} inference")
    table.add_row(f"train memory (batch {m['batch_size']} x {m['seq_len']}, fp32)",
                  f"{human_bytes(m['total'])}: weights {human_bytes(m['weights'])}, "
                  f"grads {human_bytes(m['grads'])}, AdamW {human_bytes(m['adamw_states'])}, "
                  f"activations {human_bytes(m['activations'])}")
    table.add_row("compute-optimal tokens", f"{human_count(report['compute_optimal_tokens'])} "
                  "(Chinchilla, 20 per parameter)")
    if "measured_peak" in report:
        mp = report["measured_peak"]
        table.add_row("measured matmul peak",
                      f"{mp['flops_per_second'] / 1e9:.1f} GFLOP/s ({mp['device']}, {mp['dtype']})")
    for est in report["time_estimates"]:
        table.add_row("time to train", f"{human_seconds(est['seconds'])} on {est['hardware']} "
                      f"at {report['assumed_mfu']:.0%} MFU")
    if "data_parallel" in report:
        add_data_parallel_rows(table, report["data_parallel"])
    return table


def _memory_row(m: dict[str, Any], in_flight: str) -> str:
    verdict = "fits" if m["fits"] else "does not fit"
    parts = [f"weights {human_bytes(m['weights'])}", f"grads {human_bytes(m['grads'])}",
             f"AdamW {human_bytes(m['adamw_states'])}"]
    if m["in_flight"]:
        parts.append(f"{in_flight} {human_bytes(m['in_flight'])}")
    parts.append(f"activations {human_bytes(m['activations'])}")
    return f"{human_bytes(m['total'])} ({', '.join(parts)}): {verdict}"


def add_data_parallel_rows(table: Table, p: dict[str, Any]) -> None:
    n, gpu, mem = p["gpus"], p["gpu"], p["per_gpu_memory_bytes"]
    table.add_row(f"data parallel on {n}x {gpu}",
                  f"{human_bytes(p['gpu_memory_bytes'])} each, plan for "
                  f"{p['usable_memory_fraction']:.0%} ({human_bytes(p['usable_memory_bytes'])}); "
                  f"micro-batch {p['micro_batch']} x {p['seq_len']} per GPU, "
                  f"{p['compute_dtype']} compute, fp32 master weights and AdamW")
    copies = "bf16 weight copies" if p["compute_dtype"] == "bf16" else ""
    if n == 1:  # one process: no DDP, and FSDP would shard nothing
        table.add_row("one GPU", _memory_row(mem["ddp"], copies))
        table.add_row("one GPU + act. ckpt",
                      _memory_row(mem["ddp_activation_checkpointing"], copies))
    else:
        table.add_row("per GPU, DDP", _memory_row(
            mem["ddp"], "all-reduce buckets" + (" + bf16 copies" if copies else "")))
        table.add_row(f"per GPU, FSDP (1/{n} shards)",
                      _memory_row(mem["fsdp"], "unsharded in flight"))
        table.add_row("per GPU, FSDP + act. ckpt",
                      _memory_row(mem["fsdp_activation_checkpointing"], "unsharded in flight"))
    scaling = "" if n == 1 else \
        f" and {p['scaling_efficiency']:.0%} data-parallel scaling efficiency"
    recompute = p["activation_checkpointing_time_factor"]
    table.add_row(f"time to train on {n}x {gpu}",
                  f"{human_seconds(p['seconds'])} at {p['assumed_mfu']:.0%} MFU per GPU"
                  f"{scaling} (activation checkpointing: x{recompute:.2f})")
    table.add_row("global batch", f"batch_tokens must be a multiple of {n} x "
                  f"{p['micro_batch']} x {p['seq_len']} = {p['global_batch_multiple_tokens']:,} "
                  "tokens (whole micro-batches for every rank)")
    table.add_row("recommendation", p["recommendation"])
