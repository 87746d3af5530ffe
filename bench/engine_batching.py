"""Continuous batching: output tokens/s of the Engine against one request at a time.

16 clients (`--streams`) each ask for N new tokens (`--tokens`) from a prompt of
`--prompt-len` tokens, all arriving at once. Contenders, in one process, on one model:

- one at a time: `generate_tokens` for each request in turn (what a server without batching
  does: a request waits for every one before it);
- Engine: `lmforge.engine.scheduler.Engine` (continuous batching), the streams read through
  their async iterators in one asyncio loop, as the HTTP server reads them;
- static batch: `generate_batch` over all prompts at once, a reference ceiling (no streaming,
  nobody joins or leaves).

Greedy decoding, no stop ids, so every request makes exactly N tokens. Time to first token
(TTFT) counts from the moment all requests arrive. Each contender is warmed up, then timed
`--rounds` times in rotating order; the best round is reported (background load only ever
slows a round down). The model is the `tiny` design preset, randomly initialized (speed does
not depend on training), unless `--model` names a model folder or artifact.

    python bench/engine_batching.py          # 16 streams x 128 tokens, best of 5 (under a minute)
    python bench/engine_batching.py --quick  # a smoke run, not a figure to quote
    python bench/engine_batching.py --model PATH_OR_REF --streams 8 --tokens 64 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lmforge.design.spec import from_preset
from lmforge.engine.generate import generate_batch, generate_tokens
from lmforge.engine.sampling import SamplingParams
from lmforge.engine.scheduler import Engine, GenerationRequest
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer
from lmforge.runtime import cpu_name
from lmforge.tokenizer import Tokenizer, train_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"
FALLBACK = ("Once upon a time there was a little cat. The cat liked to play in the sun. "
            "One day it met a dog, and they became friends. They played all day long.\n\n")


def stories() -> list[str]:
    part = SHARED / "tinystories_v1_train_head_part00.txt"
    text = part.read_text(encoding="utf-8")[:2_000_000] if part.is_file() else FALLBACK * 200
    return [s for s in text.split("\n\n") if s.strip()]


def load_or_build(args: argparse.Namespace) -> tuple[Transformer, Tokenizer, str]:
    if args.model is None:
        design = from_preset("tiny")
        tok = train_tokenizer(stories(), design.vocab_size, show_progress=False)
        return initialize(Transformer(design), "gpt2", seed=0).eval(), tok, "tiny (random init)"
    path = Path(args.model).expanduser()
    if path.is_dir() and not (path / "manifest.json").exists():
        from lmforge.model.io import load_model_dir

        model, tok = load_model_dir(path)
        return model.float().eval(), tok, str(path)
    from lmforge.model.io import load_model
    from lmforge.registry import Workspace

    ws = Workspace.open(args.workspace)
    try:
        model, tok, _ = load_model(ws, args.model)
    finally:
        ws.close()
    return model.float().eval(), tok, args.model


def make_prompts(tok: Tokenizer, n: int, length: int) -> list[list[int]]:
    ids = [tok.bos_id]
    for story in stories():
        ids += tok.encode(story)
        if len(ids) >= n * length:
            break
    ids = (ids * (n * length // len(ids) + 1))[:n * length]
    return [ids[i * length:(i + 1) * length] for i in range(n)]


Result = tuple[list[list[int]], list[float]]  # tokens per request, TTFT per request (s)


def one_at_a_time(model: Transformer, prompts: list[list[int]], params: SamplingParams
                  ) -> Result:
    start, outputs, ttft = time.perf_counter(), [], []
    for p in prompts:
        out = []
        for token in generate_tokens(model, p, params):
            if not out:
                ttft.append(time.perf_counter() - start)
            out.append(token)
        outputs.append(out)
    return outputs, ttft


def with_engine(engine: Engine, prompts: list[list[int]], params: SamplingParams) -> Result:
    async def read(prompt: list[int], start: float) -> tuple[list[int], float]:
        out, first = [], 0.0
        async for event in engine.submit(GenerationRequest(prompt, params)):
            if event.token is not None:
                first = first or time.perf_counter() - start
                out.append(event.token)
        return out, first

    async def everyone() -> list[tuple[list[int], float]]:
        start = time.perf_counter()
        return await asyncio.gather(*(read(p, start) for p in prompts))

    results = asyncio.run(everyone())
    return [r[0] for r in results], [r[1] for r in results]


def static_batch(model: Transformer, prompts: list[list[int]], params: SamplingParams
                 ) -> Result:
    start = time.perf_counter()
    outputs = generate_batch(model, prompts, params)
    return outputs, [time.perf_counter() - start] * len(prompts)  # nothing shows before the end


def run(args: argparse.Namespace) -> dict:
    model, tok, label = load_or_build(args)
    prompts = make_prompts(tok, args.streams, args.prompt_len)
    params = SamplingParams(temperature=0, max_new_tokens=args.tokens)
    engine = Engine(model, tok, max_batch=args.streams)
    engine.start()
    contenders: dict[str, Callable[[list[list[int]], SamplingParams], Result]] = {
        "one at a time (generate_tokens)": lambda p, s: one_at_a_time(model, p, s),
        "Engine (continuous batching)": lambda p, s: with_engine(engine, p, s),
        "static batch (generate_batch)": lambda p, s: static_batch(model, p, s),
    }
    names = list(contenders)
    best: dict[str, tuple[float, Result]] = {}
    try:
        for name in names:  # warm-up: thread pools, allocator
            contenders[name](prompts[:2], SamplingParams(temperature=0, max_new_tokens=4))
        for r in range(args.rounds):
            for name in names[r % 3:] + names[:r % 3]:
                start = time.perf_counter()
                result = contenders[name](prompts, params)
                wall = time.perf_counter() - start
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, result)
        # One stream alone: what the engine's machinery costs when there is nobody to batch.
        single = {name: float("inf") for name in names[:2]}
        for _ in range(args.rounds):
            for name in names[:2]:
                start = time.perf_counter()
                contenders[name](prompts[:1], params)
                single[name] = min(single[name], time.perf_counter() - start)
    finally:
        engine.stop()
    reference = best[names[0]][1][0]
    rows = []
    for name in names:
        wall, (outputs, ttft) = best[name]
        rows.append({"contender": name, "output_tokens_per_s": sum(map(len, outputs)) / wall,
                     "seconds": wall, "ttft_p50_ms": 1000 * statistics.median(ttft),
                     "same_tokens": sum(o == ref for o, ref in zip(outputs, reference))})
    for row in rows:
        row["vs_one_at_a_time"] = row["output_tokens_per_s"] / rows[0]["output_tokens_per_s"]
    d = model.design
    return {"model": label, "design": d.to_dict(), "params": model.num_params(),
            "streams": args.streams, "tokens": args.tokens, "prompt_len": args.prompt_len,
            "rounds": args.rounds, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu": cpu_name(), "cores": os.cpu_count(),
            "results": rows, "single_stream_tokens_per_s": {
                name: args.tokens / seconds for name, seconds in single.items()}}


def print_table(report: dict) -> None:
    d = report["design"]
    print(f"\n{report['model']}: {d['n_layers']} layers, d_model {d['d_model']}, "
          f"{d['n_heads']}/{d['n_kv_heads']} heads, vocab {d['vocab_size']}, "
          f"{report['params'] / 1e6:.1f}M params")
    print(f"{report['streams']} concurrent streams x {report['tokens']} new tokens, prompts of "
          f"{report['prompt_len']} tokens, greedy, fp32, {report['threads']} threads, "
          f"{report['cpu']}; best of {report['rounds']} round(s)")
    print(f"  {'contender':32s} {'out tok/s':>9s} {'seconds':>8s} {'TTFT p50':>9s} "
          f"{'vs 1-at-a-time':>14s} {'same tokens':>11s}")
    for r in report["results"]:
        print(f"  {r['contender']:32s} {r['output_tokens_per_s']:9.1f} {r['seconds']:8.2f} "
              f"{r['ttft_p50_ms']:7.0f}ms {r['vs_one_at_a_time']:13.2f}x "
              f"{r['same_tokens']:>5d}/{report['streams']}")
    one, engine = report["single_stream_tokens_per_s"].values()
    print(f"  one stream alone: generate_tokens {one:.1f} tok/s, Engine {engine:.1f} tok/s "
          f"({engine / one:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a model directory or artifact reference "
                   "(default: the tiny preset, randomly initialized)")
    p.add_argument("--workspace", default=None, help="workspace for --model references")
    p.add_argument("--streams", type=int, default=16, help="concurrent requests")
    p.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per request")
    p.add_argument("--rounds", type=int, default=5, help="timed runs per contender")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (4 streams x 16 tokens, 1 round): not a figure to quote")
    args = p.parse_args(argv)
    if args.quick:
        args.streams, args.tokens, args.rounds = 4, 16, 1
    if min(args.streams, args.tokens, args.prompt_len, args.rounds) < 1:
        p.error("--streams, --tokens, --prompt-len and --rounds must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    report["command"] = " ".join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])])
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
