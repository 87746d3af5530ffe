"""GPU readiness: what lmforge's own training loop and generation engine reach on one GPU.

On the device it runs on (an NVIDIA GPU by default; `--device cpu` for a smoke run) it reports:

- the matmul peak: square matmuls in the training dtype (bf16 on CUDA), timed with CUDA events
  over bursts of calls (`lmforge.runtime.measure_matmul_peak`, the best of a few sizes), and
  the datasheet's dense bf16 peak for the GPU's name (the table below);
- pretraining: `lmforge.train.loop.train` (the loop of `lmforge pretrain`) with `NextToken`
  over `TokenWindows` of random tokens, on the gpt2-124m design (12 layers, d_model 768, 12
  heads, context 1024, vocab 50304) with dtype auto (bf16 autocast on CUDA), per-block
  torch.compile and fused AdamW (`build_optimizers`); tokens/s and MFU (PaLM's 6N + 12LHQT
  FLOPs per token, `training_flops_per_token`) against both peaks, and against the 45% goal;
- SFT: the same loop, `NextToken` over `PackedSequences` of synthetic conversations (several
  to a row with document masks, loss on the answer tokens only): steps/s;
- DPO: the same loop, the `DPO` objective over `PairBatches` of synthetic pairs (reference
  log-probs filled once before training, `fill_reference_logps`, timed apart): steps/s;
- decode: greedy `generate_batch` over many streams and `generate_tokens` for one stream
  (lmforge.engine, KV cache), with fp32 weights (what `lmforge serve` loads) and bf16 weights;
- which SDPA kernels accept the training attention calls (causal, and masked as in packing).

A training phase runs `warmup` untimed steps (compilation happens there), then `steps` timed
ones: step ends are CUDA events recorded from the loop's `on_step` callback (the loop waits for
each step's loss and gradient norm, so the events' gaps are the steps' wall time on the GPU's
own clock); one last step validates and checkpoints, untimed. Every phase builds a fresh model
and resets torch.compile's caches, as a fresh `lmforge` process would.

Prints one summary table, then one line of JSON (the last line of stdout).

    python bench/gpu_check.py                      # CUDA, gpt2-124m (about 3-4 minutes on an H100)
    python bench/gpu_check.py --quick              # fewer steps and tokens (about 2 minutes)
    python bench/gpu_check.py --device cpu --quick # tiny design, a few steps: tests the script
    bash bench/gpu_check.sh                        # the GPU tests, then this, under 8 minutes
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.design.estimate import count_params, training_flops_per_token
from lmforge.design.spec import ModelDesign, from_preset
from lmforge.engine.generate import generate_batch, generate_tokens
from lmforge.engine.sampling import SamplingParams
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer
from lmforge.runtime import cpu_name, measure_matmul_peak, resolve_device
from lmforge.train.batches import Batch, PackedSequences, TokenWindows
from lmforge.train.dpo import DPO, PairBatches, PairUnit, fill_reference_logps
from lmforge.train.loop import autocast_dtype, train
from lmforge.train.objectives import NextToken
from lmforge.train.settings import TrainSettings

MFU_GOAL = 0.45  # issue 16: >= 45% MFU in bf16 on an H100/H200-class GPU

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets, which quote
# "with sparsity" figures: dense is half of those. Matched against torch.cuda.get_device_name
# in order (the first match wins, so "H100 PCIe" before "H100", "L40S" before "L4").
# - H100 datasheet (nvidia.com/en-us/data-center/h100): BF16 1,979 (SXM), 1,513 (PCIe),
#   1,671 (NVL) TFLOPS with sparsity.
# - H200 datasheet (nvidia.com/en-us/data-center/h200): BF16 1,979 (SXM), 1,671 (NVL).
# - GH200 datasheet: the Hopper GPU of H100 SXM, BF16 1,979 with sparsity.
# - B200 (HGX B200 datasheet): BF16 4.5 PFLOPS per GPU with sparsity.
# - A100 datasheet: BF16 312 dense (624 with sparsity), SXM and PCIe alike.
# - L40S datasheet: BF16 362.05 dense; L40 datasheet: 181.05; L4 datasheet: 121 (242 sparse);
#   A10 datasheet: 125 (250 sparse).
# - GeForce (Ada and Ampere architecture whitepapers), bf16 with fp32 accumulate (what torch
#   uses): RTX 4090 165.2, RTX 3090 71.
DATASHEET_BF16_TFLOPS: list[tuple[str, float, str]] = [
    (r"GH200", 989.5, "GH200"),
    (r"H200 NVL", 835.5, "H200 NVL"),
    (r"H200", 989.5, "H200 SXM"),
    (r"H100 NVL", 835.5, "H100 NVL"),
    (r"H100 PCIe", 756.5, "H100 PCIe"),
    (r"H100", 989.5, "H100 SXM"),
    (r"B200", 2250.0, "B200"),
    (r"A100", 312.0, "A100"),
    (r"L40S", 362.05, "L40S"),
    (r"L40\b", 181.05, "L40"),
    (r"L4\b", 121.0, "L4"),
    (r"A10\b", 125.0, "A10"),
    (r"RTX 4090", 165.2, "RTX 4090"),
    (r"RTX 3090", 71.0, "RTX 3090"),
]


def datasheet_peak(name: str) -> tuple[float | None, str | None]:
    """(dense bf16 FLOP/s, the table's label) for a CUDA device name; (None, None) unknown."""
    for pattern, tflops, label in DATASHEET_BF16_TFLOPS:
        if re.search(pattern, name):
            return tflops * 1e12, label
    return None, None


# ---- timing ----------------------------------------------------------------------------------

class Clock:
    """Marks on the device's own timeline: CUDA events where the work runs on a GPU (recorded
    on its stream, so they time the GPU's work, not the host's queueing), perf_counter
    elsewhere. `seconds(i, j)` is the time from mark i to mark j."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self, i: int, j: int) -> float:
        if self.cuda:
            self.marks[j].synchronize()
            return self.marks[i].elapsed_time(self.marks[j]) / 1000
        return self.marks[j] - self.marks[i]


def timed_call(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call, from a synchronized start to a synchronized end."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    clock = Clock(device)
    clock.mark()
    result = fn()
    clock.mark()
    return clock.seconds(0, 1), result


def fresh_state(device: torch.device) -> None:
    """What a new process would start from: no compiled code, no cached memory, peaks reset."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


# ---- synthetic data --------------------------------------------------------------------------

class RandomTokens:
    """Uniform random token ids in memory, shaped like TokenShards for the loop (speed does not
    depend on what the tokens say)."""

    def __init__(self, n: int, vocab_size: int, seed: int):
        self.array = np.random.default_rng(seed).integers(0, vocab_size, n, dtype=np.uint32)
        self.tokens = n

    def get(self, start: int, length: int) -> np.ndarray:
        return self.array[start:start + length]


def synthetic_conversations(n: int, vocab_size: int, seq_len: int, seed: int
                            ) -> list[tuple[list[int], list[bool]]]:
    """(ids, loss mask) pairs of 1/8 to all of a row, the first ~30% a prompt (not learned), the
    rest an answer (learned): the shape `encode_conversation` gives SFT."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(max(4, seq_len // 8), seq_len + 2))
        prompt = max(1, int(0.3 * length))
        ids = rng.integers(0, vocab_size, length).tolist()
        out.append((ids, [False] * prompt + [True] * (length - prompt)))
    return out


def synthetic_pairs(n: int, vocab_size: int, seq_len: int, seed: int) -> list[PairUnit]:
    """DPO units as `make_unit` lays them out (the prompt but its last token; each answer's
    inputs start with that token), a prompt of up to a quarter of a row and answers of up to
    3/8 each, so every unit fits a row and most rows hold two."""
    rng = np.random.default_rng(seed)
    units = []
    for _ in range(n):
        p = int(rng.integers(2, max(3, seq_len // 4)))
        a, b = (int(x) for x in rng.integers(1, max(2, 3 * seq_len // 8), size=2))
        prompt, chosen, rejected = (rng.integers(0, vocab_size, k).tolist() for k in (p, a, b))
        units.append(PairUnit(prompt[:-1], prompt[-1:] + chosen[:-1], chosen,
                              prompt[-1:] + rejected[:-1], rejected))
    return units


class Counting:
    """A batch source that records, per training step, the positions the model computed (what
    the hardware did: MFU) and the units it learned (tokens, or pairs for DPO)."""

    def __init__(self, inner: Any):
        self.inner, self.tokens = inner, inner.tokens
        self.unit = getattr(inner, "unit", "tok")
        self.positions: list[int] = []
        self.learned: list[int] = []

    def step_batches(self, step: int, seed: int, device: torch.device) -> list[Batch]:
        batches = self.inner.step_batches(step, seed, device)
        self.positions.append(sum(b["inputs"].numel() for b in batches))
        self.learned.append(sum(b.tokens for b in batches))
        return batches

    def validation_batches(self, device: torch.device) -> Iterator[Batch]:
        return self.inner.validation_batches(device)


# ---- phases ----------------------------------------------------------------------------------

def new_model(d: ModelDesign) -> Transformer:
    return initialize(Transformer(d), "gpt2", seed=0)


def settings_for(args: argparse.Namespace, device: torch.device, rows: int, accumulation: int,
                 total: int) -> TrainSettings:
    # dtype auto: bf16 autocast on CUDA, fp32 on a CPU, as `lmforge pretrain` decides.
    return TrainSettings(steps=total, batch_tokens=rows * accumulation * args.seq_len,
                         micro_batch=rows, seq_len=args.seq_len, lr=6e-4, warmup_steps=2,
                         weight_decay=0.1, grad_clip=1.0, eval_every=10**9, eval_batches=1,
                         checkpoint_every=10**9, device=str(device), dtype="auto",
                         compile=args.compile)


def run_loop(model: Transformer, objective: Any, source: Counting, s: TrainSettings,
             args: argparse.Namespace, device: torch.device) -> dict:
    """Train `warmup + steps + 1` steps through lmforge's loop; figures of the timed ones."""
    clock = Clock(device)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as run_dir:
        clock.mark()  # mark k is the end of step k; mark 0 (before setup) is never used
        result = train(model, objective, source, s, Path(run_dir),
                       on_step=lambda step: clock.mark(), show_progress=False)
    w, n = args.warmup, args.steps
    seconds = [clock.seconds(k - 1, k) for k in range(w + 1, w + n + 1)]
    total = sum(seconds)
    losses = [r["loss"] for r in result.history]
    logged_mfu = [r["mfu"] for r in result.history[w:w + n]]
    return {"steps": n, "warmup": w, "seconds": total, "steps_per_s": n / total,
            "step_ms_median": 1000 * statistics.median(seconds),
            "step_ms_min": 1000 * min(seconds),
            "positions_per_s": sum(source.positions[w:w + n]) / total,
            "learned_per_s": sum(source.learned[w:w + n]) / total,
            "learned_per_step": sum(source.learned[w:w + n]) / n,
            "loss_first": losses[0], "loss_last": losses[-1],
            "losses_finite": all(math.isfinite(x) for x in losses),
            "loop_logged_mfu_median": statistics.median(logged_mfu),
            "peak_memory_gib": peak_memory_gib(device)}


def mfu_figures(positions_per_s: float, flops_per_token: int, peaks: dict) -> dict:
    measured = positions_per_s * flops_per_token / peaks["measured_flops"]
    sheet = peaks["datasheet_flops"]
    return {"model_flops_per_s": positions_per_s * flops_per_token, "mfu_vs_measured": measured,
            "mfu_vs_datasheet": positions_per_s * flops_per_token / sheet if sheet else None}


def phase_peak(args: argparse.Namespace, device: torch.device, amp: torch.dtype | None) -> dict:
    """The best of a few square sizes in the training dtype; on CUDA each timed with events
    over bursts of calls (measure_matmul_peak), so launches and syncs are not counted."""
    dtype = amp or torch.float32
    by_size = {size: measure_matmul_peak(device, dtype, size=size,
                                         seconds=args.peak_seconds).flops_per_second
               for size in args.peak_sizes}
    best = max(by_size, key=by_size.get)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    sheet, label = datasheet_peak(name) if device.type == "cuda" else (None, None)
    if args.datasheet_tflops:
        sheet, label = args.datasheet_tflops * 1e12, "--datasheet-tflops"
    return {"dtype": str(dtype).removeprefix("torch."), "measured_flops": by_size[best],
            "measured_size": best, "by_size": {str(k): v for k, v in by_size.items()},
            "timer": "cuda events" if device.type == "cuda" else "perf_counter",
            "datasheet_flops": sheet, "datasheet_label": label}


def phase_pretrain(args: argparse.Namespace, device: torch.device, d: ModelDesign,
                   peaks: dict) -> dict:
    total = args.warmup + args.steps + 1
    s = settings_for(args, device, args.micro_batch, args.accumulation, total)
    tokens_needed = 4 * total * s.batch_tokens  # windows drawn at random from 4x what is read
    train_src = RandomTokens(max(tokens_needed, 10 * args.seq_len), d.vocab_size, seed=1)
    val_src = RandomTokens(4 * args.seq_len * args.micro_batch, d.vocab_size, seed=2)
    source = Counting(TokenWindows(train_src, val_src, args.seq_len, args.micro_batch,
                                   s.accumulation, eval_batches=1))
    out = run_loop(new_model(d), NextToken(), source, s, args, device)
    flops = training_flops_per_token(d, args.seq_len)
    out.update(tokens_per_step=s.batch_tokens, micro_batch=args.micro_batch,
               accumulation=s.accumulation, seq_len=args.seq_len, flops_per_token=flops,
               tokens_per_s=out["positions_per_s"], **mfu_figures(out["positions_per_s"], flops,
                                                                  peaks))
    return out


def phase_sft(args: argparse.Namespace, device: torch.device, d: ModelDesign,
              peaks: dict) -> dict:
    total = args.warmup + args.steps + 1
    s = settings_for(args, device, args.sft_rows, 1, total)
    # Enough conversations that no row repeats within the run (about two a row).
    seqs = synthetic_conversations(3 * total * args.sft_rows, d.vocab_size, args.seq_len, 3)
    val = seqs[:args.sft_rows]
    source = Counting(PackedSequences(seqs, val, args.seq_len, args.sft_rows, 1,
                                      eval_batches=1))
    out = run_loop(new_model(d), NextToken(), source, s, args, device)
    flops = training_flops_per_token(d, args.seq_len)
    out.update(rows=args.sft_rows, seq_len=args.seq_len,
               conversations_per_row=len(seqs) / len(source.inner.train_rows),
               learned_tokens_per_s=out["learned_per_s"],
               **mfu_figures(out["positions_per_s"], flops, peaks))
    return out


def phase_dpo(args: argparse.Namespace, device: torch.device, d: ModelDesign,
              peaks: dict) -> dict:
    total = args.warmup + args.steps + 1
    s = settings_for(args, device, args.dpo_rows, 1, total)
    units = synthetic_pairs(args.pairs, d.vocab_size, args.seq_len, seed=4)
    model = new_model(d).to(device)
    amp = autocast_dtype(s, device)
    ref_s, _ = timed_call(device, lambda: fill_reference_logps(
        model, units, args.seq_len, args.dpo_rows, device, amp))
    source = Counting(PairBatches(units, units[:args.dpo_rows], args.seq_len, args.dpo_rows, 1,
                                  eval_batches=1))
    out = run_loop(model, DPO(beta=0.1), source, s, args, device)
    out.update(rows=args.dpo_rows, seq_len=args.seq_len, pairs=len(units),
               pairs_per_s=out["learned_per_s"], pairs_per_step=out["learned_per_step"],
               reference_s=ref_s, reference_pairs_per_s=len(units) / ref_s)
    return out


def phase_decode(args: argparse.Namespace, device: torch.device, d: ModelDesign) -> dict:
    """Greedy decoding through lmforge.engine: `streams` prompts together (generate_batch) and
    one alone (generate_tokens), each the best of `rounds` after a warm-up."""
    rng = np.random.default_rng(5)
    prompts = rng.integers(0, d.vocab_size, (args.streams, args.prompt_len)).tolist()
    params = SamplingParams(temperature=0, max_new_tokens=args.new_tokens)
    warm = SamplingParams(temperature=0, max_new_tokens=4)
    out: dict[str, Any] = {"streams": args.streams, "new_tokens": args.new_tokens,
                           "prompt_len": args.prompt_len}
    for dtype in args.decode_dtypes:
        model = new_model(d).to(device=device, dtype=getattr(torch, dtype)).eval()
        generate_batch(model, prompts, warm)
        list(generate_tokens(model, prompts[0], warm))
        batched = single = math.inf
        batch_out: list[list[int]] = []
        one: list[int] = []
        for _ in range(args.rounds):
            t, batch_out = timed_call(device, lambda m=model: generate_batch(m, prompts, params))
            batched = min(batched, t)
            t, one = timed_call(device, lambda m=model: list(generate_tokens(m, prompts[0],
                                                                             params)))
            single = min(single, t)
        made = sum(len(o) for o in batch_out)
        if made != args.streams * args.new_tokens or len(one) != args.new_tokens:
            raise RuntimeError(f"decode made {made} and {len(one)} tokens, expected "
                               f"{args.streams * args.new_tokens} and {args.new_tokens}")
        out[dtype] = {"batched_tokens_per_s": made / batched,
                      "batched_step_ms": 1000 * batched / args.new_tokens,
                      "single_tokens_per_s": len(one) / single,
                      "single_step_ms": 1000 * single / args.new_tokens,
                      # Greedy row 0 of the batch against the same prompt alone: the engine's
                      # rows are independent (bf16 may differ by rounding near ties).
                      "batched_row0_equals_single": batch_out[0] == one}
        del model
        fresh_state(device)
    return out


def phase_attention(args: argparse.Namespace, device: torch.device, d: ModelDesign,
                    amp: torch.dtype | None) -> dict:
    """Which SDPA kernels take the training attention calls, forward and backward, in the
    training dtype: causal with no mask (pretraining) and with a boolean mask (packed SFT and
    DPO rows). A kernel that cannot take a call raises under sdpa_kernel; math always can."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = amp or torch.float32
    b, t = 2, min(args.seq_len, 256)
    gqa = d.n_kv_heads != d.n_heads
    q = torch.randn(b, d.n_heads, t, d.head_dim, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(b, d.n_kv_heads, t, d.head_dim, device=device, dtype=dtype,
                    requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    # (b, 1, t, t) like segment_mask's: a causal pattern, given as a mask.
    mask = torch.ones(t, t, dtype=torch.bool, device=device).tril().repeat(b, 1, 1, 1)
    backends = {"flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    if hasattr(SDPBackend, "CUDNN_ATTENTION") and device.type == "cuda":
        backends["cudnn"] = SDPBackend.CUDNN_ATTENTION
    out: dict[str, dict[str, bool]] = {"causal": {}, "masked": {}}
    for name, backend in backends.items():
        for kind in out:
            try:
                with sdpa_kernel(backend), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch explains each refusal at length
                    if kind == "causal":
                        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                           enable_gqa=gqa)
                    else:
                        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                           enable_gqa=gqa)
                    y.sum().backward()
                out[kind][name] = True
            except RuntimeError:
                out[kind][name] = False
            q.grad = k.grad = v.grad = None
    return out


# ---- report ----------------------------------------------------------------------------------

def fmt_rate(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.1f} {prefix}{unit}"
    return f"{x:.1f} {unit}"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def goal(x: float | None, gpu: bool) -> str:
    if x is None:
        return "no datasheet peak for this device"
    verdict = f"goal {MFU_GOAL:.0%}: {'met' if x >= MFU_GOAL else 'NOT met'}"
    return verdict if gpu else f"{verdict} (the goal is for bf16 on a GPU)"


def summary_rows(r: dict) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    gpu = r["device"].startswith("cuda")
    p = r.get("peak")
    if p:
        rows.append((f"{p['dtype']} matmul peak, measured", fmt_rate(p["measured_flops"], "FLOP/s"),
                     f"{p['measured_size']}x{p['measured_size']} matmul, {p['timer']}"))
        rows.append((f"{p['dtype']} dense peak, datasheet",
                     fmt_rate(p["datasheet_flops"], "FLOP/s"),
                     p["datasheet_label"] or ("device not in the table (--datasheet-tflops)"
                                              if gpu else "no datasheet table for CPUs")))
    pre = r.get("pretrain")
    if pre:
        shape = (f"{pre['micro_batch']} x {pre['seq_len']} x {pre['accumulation']} accumulated "
                 f"= {pre['tokens_per_step']} tokens/step")
        rows.append(("pretrain tokens/s", f"{pre['tokens_per_s']:,.0f}", shape))
        rows.append(("pretrain step", f"{pre['step_ms_median']:.1f} ms",
                     f"median of {pre['steps']} (min {pre['step_ms_min']:.1f} ms)"))
        rows.append(("pretrain MFU vs measured peak", pct(pre["mfu_vs_measured"]),
                     goal(pre["mfu_vs_measured"], gpu)))
        rows.append(("pretrain MFU vs datasheet peak", pct(pre["mfu_vs_datasheet"]),
                     goal(pre["mfu_vs_datasheet"], gpu)))
        rows.append(("pretrain MFU the loop logged", pct(pre["loop_logged_mfu_median"]),
                     "what `lmforge pretrain` shows (its own peak, perf_counter)"))
        if pre["peak_memory_gib"] is not None:
            rows.append(("pretrain peak memory", f"{pre['peak_memory_gib']:.1f} GiB",
                         "torch.cuda.max_memory_allocated"))
    sft = r.get("sft")
    if sft:
        rows.append(("SFT steps/s", f"{sft['steps_per_s']:.2f}",
                     f"{sft['rows']} packed rows x {sft['seq_len']}, "
                     f"{sft['learned_tokens_per_s']:,.0f} learned tokens/s, MFU "
                     f"{pct(sft['mfu_vs_measured'])} of measured peak"))
    dpo = r.get("dpo")
    if dpo:
        rows.append(("DPO steps/s", f"{dpo['steps_per_s']:.2f}",
                     f"{dpo['rows']} rows x {dpo['seq_len']}, {dpo['pairs_per_step']:.1f} "
                     f"pairs/step, {dpo['pairs_per_s']:,.0f} pairs/s; reference pass "
                     f"{dpo['reference_pairs_per_s']:,.0f} pairs/s"))
    dec = r.get("decode")
    if dec:
        for dtype in r["settings"]["decode_dtypes"]:
            x = dec[dtype]
            rows.append((f"decode tokens/s, {dec['streams']} streams, {dtype}",
                         f"{x['batched_tokens_per_s']:,.0f}",
                         f"generate_batch, {dec['new_tokens']} new tokens each, "
                         f"{x['batched_step_ms']:.2f} ms/step"))
            rows.append((f"decode tokens/s, 1 stream, {dtype}", f"{x['single_tokens_per_s']:,.0f}",
                         f"generate_tokens, {x['single_step_ms']:.2f} ms/token; row 0 "
                         f"{'equals' if x['batched_row0_equals_single'] else 'differs from'} "
                         f"it"))
    att = r.get("attention")
    if att:
        for kind in ("causal", "masked"):
            ok = [k for k, v in att[kind].items() if v]
            rows.append((f"SDPA kernels, {kind}", ", ".join(ok) or "none",
                         "no mask (pretraining)" if kind == "causal"
                         else "boolean mask (packed SFT, DPO)"))
    return rows


def print_table(r: dict) -> None:
    d, s = r["design"], r["settings"]
    print(f"\n{r['device_name']} ({r['device']}); torch {r['torch']}"
          f"{', CUDA ' + r['cuda'] if r['cuda'] else ''}; dtype {r['train_dtype']}, "
          f"compile {s['compile']}, fused AdamW")
    print(f"design {d['name']}: {d['n_layers']} layers, d_model {d['d_model']}, "
          f"{d['n_heads']}/{d['n_kv_heads']} heads, ffn {d['ffn_hidden']}, vocab "
          f"{d['vocab_size']}, {r['params'] / 1e6:.1f}M parameters; seq_len {s['seq_len']}; "
          f"{s['warmup']} warm-up + {s['steps']} timed steps a phase")
    rows = summary_rows(r)
    width = max(len(a) for a, _, _ in rows)
    vwidth = max(len(b) for _, b, _ in rows)
    print(f"  {'figure':{width}s}  {'value':>{vwidth}s}  note")
    for a, b, c in rows:
        print(f"  {a:{width}s}  {b:>{vwidth}s}  {c}")
    pre = r.get("pretrain")
    if pre:
        verdict = pre["mfu_vs_datasheet"] if pre["mfu_vs_datasheet"] is not None \
            else pre["mfu_vs_measured"]
        against = "datasheet" if pre["mfu_vs_datasheet"] is not None else "measured"
        print(f"MFU goal ({MFU_GOAL:.0%} in bf16 on an H100/H200-class GPU): "
              f"{'met' if verdict >= MFU_GOAL else 'NOT met'} ({verdict:.1%} of the {against} "
              f"peak{'; not a GPU run' if r['device'] == 'cpu' else ''})")
    print(f"wall time {r['wall_s']:.0f} s")


# ---- main ------------------------------------------------------------------------------------

PHASES = ("peak", "attention", "pretrain", "sft", "dpo", "decode")


def defaults(device: torch.device, quick: bool) -> dict[str, Any]:
    """Sizes that fill an 80 GB GPU with the gpt2-124m design; tiny ones elsewhere."""
    if device.type == "cuda":
        return dict(design="gpt2-124m", seq_len=1024, micro_batch=32,
                    accumulation=2 if quick else 4, warmup=3, steps=5 if quick else 10,
                    sft_rows=32, dpo_rows=16, pairs=512 if quick else 1024, streams=32,
                    new_tokens=128 if quick else 256, prompt_len=32, rounds=1 if quick else 2,
                    peak_sizes=[8192] if quick else [4096, 8192, 16384],
                    peak_seconds=0.5 if quick else 1.0, compile=True,
                    decode_dtypes=["float32", "bfloat16"])
    return dict(design="tiny", seq_len=64 if quick else 256, micro_batch=4 if quick else 8,
                accumulation=1, warmup=1 if quick else 2, steps=2 if quick else 5,
                sft_rows=4 if quick else 8, dpo_rows=2 if quick else 4, pairs=16 if quick else 64,
                streams=4 if quick else 8, new_tokens=16 if quick else 64, prompt_len=8,
                rounds=1, peak_sizes=[512] if quick else [1024], peak_seconds=0.2,
                compile=False, decode_dtypes=["float32", "bfloat16"])


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, torch.device]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="fewer steps and tokens")
    p.add_argument("--design", help="a design preset (default: gpt2-124m on CUDA, else tiny)")
    p.add_argument("--seq-len", type=int, help="row length of every training phase")
    p.add_argument("--micro-batch", type=int, help="pretraining rows per forward/backward")
    p.add_argument("--accumulation", type=int, help="pretraining micro-batches per step")
    p.add_argument("--warmup", type=int, help="untimed steps per training phase (at least 1)")
    p.add_argument("--steps", type=int, help="timed steps per training phase")
    p.add_argument("--sft-rows", type=int, help="packed rows per SFT step")
    p.add_argument("--dpo-rows", type=int, help="rows per DPO step")
    p.add_argument("--pairs", type=int, help="synthetic DPO pairs")
    p.add_argument("--streams", type=int, help="concurrent decode streams")
    p.add_argument("--new-tokens", type=int, help="new tokens per decode stream")
    p.add_argument("--prompt-len", type=int, help="prompt tokens per decode stream")
    p.add_argument("--rounds", type=int, help="timed decode rounds (the best counts)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="per-block torch.compile in training (default: on for CUDA)")
    p.add_argument("--datasheet-tflops", type=float, default=0.0,
                   help="the device's dense bf16 peak, for a GPU missing from the table")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {PHASES}")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    for key, value in defaults(device, args.quick).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.phases = [x for x in args.phases.split(",") if x]
    unknown = sorted(set(args.phases) - set(PHASES))
    if unknown:
        p.error(f"unknown phase(s) {unknown}; choose from {list(PHASES)}")
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1 (the first step includes setup)")
    context = from_preset(args.design).context_length
    if args.seq_len > context or args.prompt_len + args.new_tokens > context:
        p.error(f"--seq-len and --prompt-len + --new-tokens must fit the design's context "
                f"({context})")
    return args, device


def main(argv: list[str] | None = None) -> int:
    args, device = parse(argv)
    started = time.perf_counter()
    d = from_preset(args.design)
    s = settings_for(args, device, args.micro_batch, args.accumulation, 1)
    amp = autocast_dtype(s, device)
    report: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else cpu_name(),
        "torch": torch.__version__, "cuda": torch.version.cuda if device.type == "cuda" else None,
        "python": platform.python_version(), "cores": os.cpu_count(),
        "train_dtype": str(amp or torch.float32).removeprefix("torch.") +
        (" autocast" if amp else ""),
        "design": d.to_dict(), "params": count_params(d).total,
        "settings": {k: v for k, v in vars(args).items() if k != "phases"},
        "phases": args.phases, "mfu_goal": MFU_GOAL,
        "command": " ".join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])])}
    fresh_state(device)
    # MFU needs a peak: measure it even when the phase is not asked for by name.
    peaks = phase_peak(args, device, amp)
    if "peak" in args.phases:
        report["peak"] = peaks
    runs: dict[str, Callable[[], dict]] = {
        "attention": lambda: phase_attention(args, device, d, amp),
        "pretrain": lambda: phase_pretrain(args, device, d, peaks),
        "sft": lambda: phase_sft(args, device, d, peaks),
        "dpo": lambda: phase_dpo(args, device, d, peaks),
        "decode": lambda: phase_decode(args, device, d)}
    for name in args.phases:
        if name not in runs:
            continue
        print(f"gpu_check: {name} ({time.perf_counter() - started:.0f} s) ...", file=sys.stderr,
              flush=True)
        try:
            report[name] = runs[name]()
        except torch.cuda.OutOfMemoryError:
            print(f"gpu_check: {name} ran out of GPU memory: lower --micro-batch, --sft-rows, "
                  f"--dpo-rows or --streams for this GPU", file=sys.stderr)
            raise
        fresh_state(device)
    pre = report.get("pretrain")
    if pre:
        report["mfu_goal_met"] = {
            "vs_measured": pre["mfu_vs_measured"] >= MFU_GOAL,
            "vs_datasheet": None if pre["mfu_vs_datasheet"] is None
            else pre["mfu_vs_datasheet"] >= MFU_GOAL}
    report["wall_s"] = time.perf_counter() - started
    print_table(report)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
