"""Training throughput: lmforge's Transformer against transformers' LlamaForCausalLM.

Both models get the same shape, the same weights, the same batch and the same optimizer
(torch AdamW, same settings) in one process; a step is forward + backward + optimizer step in
fp32. Each is trained as its library intends: lmforge through `model(ids, targets=...)` (the
output head fused with the loss), transformers through `model(input_ids, labels=...)`. Steps
alternate between the contenders (the order rotating every round) so background load hits
them alike; the figure is the median of the timed steps after warm-up.

MFU = tokens/s x training FLOPs per token (lmforge.design.estimate, PaLM's 6N + 12LHQT) /
matmul peak. Two peaks are measured in the same run: a square 1024 matmul
(`measure_matmul_peak`) and the model's own matmul shapes (forward and both backward products
of every projection and the head, weighted as one step uses them); MFU is reported against
the higher of the two, so it is never flattered by a slow peak measurement.

    python bench/train_throughput.py            # tiny and d512 shapes, eager
    python bench/train_throughput.py --compile  # also torch.compile'd lmforge and HF
    python bench/train_throughput.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmforge.design.estimate import training_flops_per_token
from lmforge.design.spec import ModelDesign, from_preset
from lmforge.model.hf_config import design_to_hf_config
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer
from lmforge.runtime import cpu_name, measure_matmul_peak

# Two shapes: the tiny preset, and the small preset (d_model 512, 8 layers, 8/4 heads,
# vocab 8192) trained at sequence length 256.
SHAPES: dict[str, tuple[ModelDesign, int]] = {
    "tiny": (from_preset("tiny"), 256),
    "d512": (from_preset("small"), 256),
}
ADAMW = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


@dataclass
class Contender:
    name: str
    step: Callable[[], float]  # one training step; returns the loss
    times: list[float]


def batch_for(d: ModelDesign, batch: int, seq: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, d.vocab_size, (batch, seq + 1), generator=g)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def lmforge_model(d: ModelDesign) -> Transformer:
    return initialize(Transformer(d), "gpt2", seed=0).train()


def hf_model(d: ModelDesign, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    import transformers

    cfg = design_to_hf_config(d, bos_id=0, eos_id=1, pad_id=2)
    cfg.pop("lmforge")
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return model.train()


def make_step(model: torch.nn.Module, loss_of: Callable[[], torch.Tensor],
              adamw: str) -> Callable[[], float]:
    opt = torch.optim.AdamW(model.parameters(), **ADAMW, fused=adamw == "fused",
                            foreach=adamw == "foreach")

    def step() -> float:
        loss = loss_of()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def contenders_for(d: ModelDesign, batch: int, seq: int, compile_too: bool,
                   adamw: str) -> list[Contender]:
    x, y = batch_for(d, batch, seq)
    models: list[tuple[str, torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]] = []

    def ours_loss(m: torch.nn.Module) -> torch.Tensor:
        return m(x, targets=y)

    def hf_loss(m: torch.nn.Module) -> torch.Tensor:
        # shift_labels: the loss covers exactly the tokens lmforge's does.
        return m(input_ids=x, labels=y, shift_labels=y, use_cache=False).loss

    ours = lmforge_model(d)
    weights = {k: v.clone() for k, v in ours.state_dict().items()}
    models.append(("transformers eager", hf_model(d, weights), hf_loss))
    models.append(("lmforge eager", ours, ours_loss))
    if compile_too:
        # Regional compilation for both: every decoder layer compiled in place.
        hf_c = hf_model(d, weights)
        for layer in hf_c.model.layers:
            layer.compile()
        models.append(("transformers compiled", hf_c, hf_loss))
        ours_c = lmforge_model(d)
        ours_c.load_state_dict(weights)
        models.append(("lmforge compiled", ours_c.compile_blocks(), ours_loss))
    return [Contender(name, make_step(m, (lambda m=m, f=f: f(m)), adamw), [])
            for name, m, f in models]


@dataclass
class KernelFloor:
    """The step's compute kernels timed alone: what no implementation built on them beats."""
    matmul_flops_per_s: float  # the model's own matmul shapes, weighted as one step runs them
    matmul_s: float  # one step's projection and head matmuls, each at its best time
    attention_s: float  # one step's causal flash attention, forward + backward, every layer

    @property
    def seconds(self) -> float:
        return self.matmul_s + self.attention_s


def best_time(fn: Callable[[], object], budget: float) -> float:
    fn()  # warm-up
    best, deadline = float("inf"), time.perf_counter() + budget
    while time.perf_counter() < deadline or best == float("inf"):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def kernel_floor(d: ModelDesign, batch: int, seq: int, seconds: float) -> KernelFloor:
    """Time the kernels every implementation of this step must run, each best-of-N.

    Matmuls: for each projection (in, out) and the head, forward x @ W.T, input gradient
    dY @ W and weight gradient dY.T @ x, in the memory layouts autograd uses. Attention: one
    layer's causal SDPA forward + backward (torch's CPU flash kernel, the one both libraries
    call), times the layer count. Elementwise work, the loss and the optimizer are left out,
    so the floor is below any real step.
    """
    tokens = batch * seq
    per_layer = [(d.d_model, d.d_model), (d.d_model, d.kv_dim), (d.d_model, d.kv_dim),
                 (d.d_model, d.d_model), (d.d_model, d.ffn_hidden), (d.d_model, d.ffn_hidden),
                 (d.ffn_hidden, d.d_model)]
    counts: dict[tuple[int, int], int] = {}
    for shape in per_layer:
        counts[shape] = counts.get(shape, 0) + d.n_layers
    counts[(d.d_model, d.vocab_size)] = 1
    budget = seconds / (3 * len(counts) + 1)
    total_flops = total_time = 0.0
    for (fan_in, fan_out), count in counts.items():
        x, w = torch.randn(tokens, fan_in), torch.randn(fan_out, fan_in)
        dy = torch.randn(tokens, fan_out)
        for a, b in ((x, w.T), (dy, w), (dy.T, x)):
            total_flops += count * 2 * tokens * fan_in * fan_out
            total_time += count * best_time(lambda a=a, b=b: torch.mm(a, b), budget)
    head_dim = d.d_model // d.n_heads
    q = torch.randn(batch, d.n_heads, seq, head_dim, requires_grad=True)
    k = torch.randn(batch, d.n_kv_heads, seq, head_dim, requires_grad=True)
    v = torch.randn(batch, d.n_kv_heads, seq, head_dim, requires_grad=True)
    grad = torch.randn(batch, d.n_heads, seq, head_dim)

    def attention() -> None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           enable_gqa=d.n_kv_heads != d.n_heads)
        y.backward(grad)
        q.grad = k.grad = v.grad = None

    attention_s = d.n_layers * best_time(attention, budget)
    return KernelFloor(total_flops / total_time, total_time, attention_s)


def run_shape(name: str, d: ModelDesign, seq: int, args: argparse.Namespace) -> dict:
    tokens = args.batch * seq
    contenders = contenders_for(d, args.batch, seq, args.compile, args.adamw)
    for c in contenders:  # warm-up: allocator, thread pools, compilation
        for _ in range(args.warmup):
            c.step()
    for r in range(args.steps):
        k = r % len(contenders)  # rotate the order so no model always runs first
        for c in contenders[k:] + contenders[:k]:
            start = time.perf_counter()
            c.step()
            c.times.append(time.perf_counter() - start)
    peak_seconds = 0.3 if args.quick else 1.0
    square = measure_matmul_peak(torch.device("cpu"), torch.float32, size=1024,
                                 seconds=peak_seconds).flops_per_second
    floor = kernel_floor(d, args.batch, seq, seconds=3 * peak_seconds)
    shaped = floor.matmul_flops_per_s
    peak = max(square, shaped)
    flops = training_flops_per_token(d, seq)
    base = statistics.median(contenders[0].times)
    rows = []
    for c in contenders:
        median = statistics.median(c.times)
        tps = tokens / median
        rows.append({"model": c.name, "tokens_per_s": tps, "step_s_median": median,
                     "step_s_min": min(c.times), "steps": len(c.times),
                     "vs_transformers_eager": base / median, "mfu": tps * flops / peak})
    return {"shape": name, "design": d.to_dict(), "seq_len": seq, "batch": args.batch,
            "tokens_per_step": tokens, "train_flops_per_token": flops,
            "peak_square_1024_flops": square, "peak_model_shapes_flops": shaped,
            "peak_used": "square_1024" if square >= shaped else "model_shapes",
            "floor_matmul_s": floor.matmul_s, "floor_attention_s": floor.attention_s,
            "max_possible_vs_transformers_eager": base / floor.seconds,
            "results": rows}


def print_table(report: dict) -> None:
    print(f"\ntorch {report['torch']}, transformers {report['transformers']}, "
          f"{report['threads']} threads, {report['cpu']}; fp32, AdamW {report['adamw']}")
    for s in report["shapes"]:
        d = s["design"]
        print(f"\n{s['shape']}: {d['n_layers']} layers, d_model {d['d_model']}, "
              f"{d['n_heads']}/{d['n_kv_heads']} heads, ffn {d['ffn_hidden']}, vocab "
              f"{d['vocab_size']}, seq {s['seq_len']}, batch {s['batch']} "
              f"({s['tokens_per_step']} tokens/step), "
              f"{s['train_flops_per_token'] / 1e6:.1f} MFLOP/token")
        print(f"  matmul peak: square 1024 {s['peak_square_1024_flops'] / 1e9:.0f} GFLOP/s, "
              f"model shapes {s['peak_model_shapes_flops'] / 1e9:.0f} GFLOP/s "
              f"(MFU uses the higher)")
        print(f"  kernel floor: matmuls {s['floor_matmul_s'] * 1e3:.0f} ms + attention "
              f"{s['floor_attention_s'] * 1e3:.0f} ms a step; no step built on these kernels "
              f"beats {s['max_possible_vs_transformers_eager']:.2f}x HF eager")
        print(f"  {'model':24s} {'tokens/s':>9s} {'step ms':>8s} {'min ms':>7s} "
              f"{'vs HF eager':>11s} {'MFU':>6s}")
        for r in s["results"]:
            print(f"  {r['model']:24s} {r['tokens_per_s']:9.0f} {r['step_s_median'] * 1e3:8.0f} "
                  f"{r['step_s_min'] * 1e3:7.0f} {r['vs_transformers_eager']:10.2f}x "
                  f"{r['mfu']:6.1%}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="tiny,d512", help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per model")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile'd lmforge and transformers")
    p.add_argument("--adamw", choices=["fused", "foreach"], default="fused",
                   help="AdamW implementation, the same for every model (fused: one kernel "
                        "over all parameters, the faster on CPU)")
    p.add_argument("--quick", action="store_true", help="few steps: a smoke run")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    args = p.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.steps = args.steps if args.steps is not None else (3 if args.quick else 11)
    if args.compile:
        args.warmup = max(args.warmup, 2)  # the first call compiles, the second settles
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    import transformers

    report = {"torch": torch.__version__, "transformers": transformers.__version__,
              "threads": torch.get_num_threads(), "cpu": cpu_name(), "cores": os.cpu_count(),
              "adamw": args.adamw,
              "command": " ".join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])]),
              "shapes": []}
    for name in args.shapes.split(","):
        d, seq = SHAPES[name]
        report["shapes"].append(run_shape(name, d, seq, args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
