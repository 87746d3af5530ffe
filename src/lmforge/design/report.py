"""The design report: one dict for --json and the registry, one rich table for people."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from lmforge.design.estimate import (
    ASSUMED_MFU,
    GPU_PEAK_FLOPS,
    compute_optimal_tokens,
    count_params,
    inference_flops_per_token,
    training_flops_per_token,
    training_memory,
    training_seconds,
)
from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError
from lmforge.runtime import MatmulPeak


def design_report(d: ModelDesign, batch_size: int, peak: MatmulPeak | None,
                  gpu: str | None = None) -> dict[str, Any]:
    if batch_size < 1:
        raise LmforgeError(f"--batch-size must be at least 1, got {batch_size}")
    if gpu is not None and gpu not in GPU_PEAK_FLOPS:
        raise LmforgeError(f"unknown GPU class '{gpu}'",
                           hint=f"choose one of: {', '.join(GPU_PEAK_FLOPS)}")
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
    return report


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
    table.add_row(f"train memory (batch {m['batch_size']} x {m['seq_len']})",
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
    return table
