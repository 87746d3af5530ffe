"""Single-stream decode: lmforge's tokens/s against transformers `generate()` on the exported model.

One request, one process, the same weights: the model is exported with lmforge's HF export
(what `lmforge export MODEL --format hf` writes), then loaded twice from that folder, by
lmforge (`load_model_dir`) and by transformers (`LlamaForCausalLM.from_pretrained`, fp32,
eval, no grad). Both decode greedily from the same `--prompt-len`-token prompt until `--tokens`
new tokens, each with its KV cache:

- lmforge `generate_tokens` (what `lmforge generate`, evaluation and sampling use);
- lmforge `Engine` with one stream (the continuous-batching scheduler the server runs, for
  reference: its bookkeeping with nobody to batch);
- transformers `model.generate(do_sample=False, max_new_tokens=N, min_new_tokens=N)`.

Each is warmed up, then timed `--rounds` times in rotating order under the same torch thread
count; the best round counts (background load only ever slows a round down). Time covers the
prefill and every decode step, as a user waits for them; the process's CPU time per token is
printed too (on a shared machine it moves less than the wall clock, but it counts threads
that spin while waiting for each other, so compare it at one thread count). Greedy parity
is checked: both libraries should write the same tokens; fp32 ties on a random model may
split them late, and the first differing index is reported.

The model is the `tiny` design preset (the CPU quickstart's shape), randomly initialized
(speed does not depend on training), unless `--model` names a model folder or artifact. Its
context is 256 tokens, so with a 32-token prompt the default is the 224 new tokens that fill
it (`--tokens` larger is cut to the context's end, as `generate_tokens` does).

    python bench/decode_vs_transformers.py            # about a minute on 2 cores
    python bench/decode_vs_transformers.py --quick    # a smoke run, not a figure to quote
    python bench/decode_vs_transformers.py --model PATH_OR_REF --tokens 128 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lmforge.design.spec import from_preset
from lmforge.engine.generate import generate_tokens
from lmforge.engine.sampling import SamplingParams
from lmforge.engine.scheduler import Engine, GenerationRequest
from lmforge.model.hf import export_hf
from lmforge.model.init import initialize
from lmforge.model.io import load_model_dir, save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.registry import Artifact, Workspace
from lmforge.runtime import cpu_name
from lmforge.tokenizer import Tokenizer, train_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"
FALLBACK = ("Once upon a time there was a little cat. The cat liked to play in the sun. "
            "One day it met a dog, and they became friends. They played all day long.\n\n")


def stories() -> list[str]:
    part = SHARED / "tinystories_v1_train_head_part00.txt"
    text = part.read_text(encoding="utf-8")[:500_000] if part.is_file() else FALLBACK * 200
    return [s for s in text.split("\n\n") if s.strip()]


def source_artifact(args: argparse.Namespace, scratch: Path) -> tuple[Workspace, Artifact, str]:
    """The artifact to export: --model resolved in its workspace, a plain model folder
    registered in a scratch workspace, or the tiny preset built there."""
    if args.model is not None and not Path(args.model).expanduser().is_dir():
        ws = Workspace.open(args.workspace)
        return ws, ws.resolve(args.model, kind="model"), args.model
    ws = Workspace.open(scratch / "ws")
    with ws.staging() as staged:
        if args.model is None:
            design = from_preset("tiny")
            tok = train_tokenizer(stories(), design.vocab_size, show_progress=False)
            model = initialize(Transformer(design), "gpt2", seed=0)
            save_model_dir(model, staged, tok, "# tiny (random init)\n")
            label = "tiny (random init)"
        else:
            model, tok = load_model_dir(Path(args.model).expanduser())
            save_model_dir(model.float(), staged, tok, "# bench copy\n")
            label = args.model
        art = ws.register(staged, kind="model", stage="init", state="initialized")
    return ws, art, label


def make_prompt(tok: Tokenizer, length: int) -> list[int]:
    ids = [tok.bos_id]
    for story in stories():
        ids += tok.encode(story)
        if len(ids) >= length:
            break
    return (ids * (length // len(ids) + 1))[:length]


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def run(args: argparse.Namespace) -> dict:
    import transformers

    transformers.logging.disable_progress_bar()  # "Loading weights" bars in the table
    with tempfile.TemporaryDirectory(prefix="lmforge-decode-bench-") as tmp:
        scratch = Path(tmp)
        ws, art, label = source_artifact(args, scratch)
        try:
            export_hf(art, scratch / "hf")  # what `lmforge export --format hf` writes
        finally:
            ws.close()
        ours, tok = load_model_dir(scratch / "hf")
        ours = ours.float().eval()
        hf = transformers.LlamaForCausalLM.from_pretrained(
            scratch / "hf", dtype=torch.float32).eval()

    prompt = make_prompt(tok, args.prompt_len)
    n = min(args.tokens, ours.design.context_length - len(prompt))
    hf_ids = torch.tensor([prompt])
    hf_mask = torch.ones_like(hf_ids)
    engine = Engine(ours, tok, max_batch=1)

    def with_generate_tokens(k: int) -> list[int]:
        return list(generate_tokens(ours, prompt, SamplingParams(temperature=0,
                                                                 max_new_tokens=k)))

    def with_engine(k: int) -> list[int]:
        stream = engine.submit(GenerationRequest(list(prompt), SamplingParams(
            temperature=0, max_new_tokens=k)))
        return [e.token for e in stream if e.token is not None]

    @torch.no_grad()
    def with_transformers(k: int) -> list[int]:
        out = hf.generate(hf_ids, attention_mask=hf_mask, do_sample=False, max_new_tokens=k,
                          min_new_tokens=k, pad_token_id=tok.pad_id, use_cache=True)
        return out[0, len(prompt):].tolist()

    contenders: dict[str, Callable[[int], list[int]]] = {
        "transformers generate()": with_transformers,
        "lmforge generate_tokens": with_generate_tokens,
        "lmforge Engine (1 stream)": with_engine,
    }
    names = list(contenders)
    best = {name: float("inf") for name in names}
    cpu = {name: float("inf") for name in names}  # process CPU time: steadier under load
    outputs: dict[str, list[int]] = {}
    engine.start()
    try:
        for name in names:  # warm-up: thread pools, allocator, HF's generation config
            contenders[name](8)
        for r in range(args.rounds):
            for name in names[r % 3:] + names[:r % 3]:
                start, start_cpu = time.perf_counter(), time.process_time()
                outputs[name] = contenders[name](n)
                best[name] = min(best[name], time.perf_counter() - start)
                cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    finally:
        engine.stop()
    reference = outputs[names[0]]
    rows = [{"contender": name, "tokens": len(outputs[name]), "seconds": best[name],
             "tokens_per_s": len(outputs[name]) / best[name],
             "ms_per_token": 1000 * best[name] / len(outputs[name]),
             "cpu_ms_per_token": 1000 * cpu[name] / len(outputs[name]),
             "first_difference_vs_transformers": first_difference(outputs[name], reference)}
            for name in names]
    for row in rows:
        row["vs_transformers"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    d = ours.design
    return {"model": label, "design": d.to_dict(), "params": ours.num_params(),
            "prompt_len": len(prompt), "tokens": n, "rounds": args.rounds,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cpu": cpu_name(),
            "cores": os.cpu_count(), "load_average": os.getloadavg(), "results": rows}


def print_table(report: dict) -> None:
    d = report["design"]
    print(f"\n{report['model']}: {d['n_layers']} layers, d_model {d['d_model']}, "
          f"{d['n_heads']}/{d['n_kv_heads']} heads, vocab {d['vocab_size']}, "
          f"{report['params'] / 1e6:.1f}M params")
    print(f"one stream, {report['prompt_len']}-token prompt, {report['tokens']} new tokens, "
          f"greedy, fp32, {report['threads']} threads, {report['cpu']}; best of "
          f"{report['rounds']} round(s); load average {report['load_average'][0]:.2f}")
    print(f"  {'contender':28s} {'tok/s':>7s} {'ms/tok':>7s} {'CPU ms/tok':>10s} "
          f"{'seconds':>8s} {'vs transformers':>15s}  greedy parity")
    for r in report["results"]:
        diff = r["first_difference_vs_transformers"]
        parity = "same tokens" if diff is None else f"differs from token {diff}"
        print(f"  {r['contender']:28s} {r['tokens_per_s']:7.1f} {r['ms_per_token']:7.2f} "
              f"{r['cpu_ms_per_token']:10.2f} {r['seconds']:8.2f} "
              f"{r['vs_transformers']:14.2f}x  {parity}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a model directory or artifact reference "
                   "(default: the tiny preset, randomly initialized)")
    p.add_argument("--workspace", default=None, help="workspace for --model references")
    p.add_argument("--tokens", type=int, default=256,
                   help="new tokens (cut to the context's end: 224 for tiny)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens")
    p.add_argument("--rounds", type=int, default=3, help="timed runs per contender")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (32 tokens, 1 round): not a figure to quote")
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.rounds = 32, 1
    if min(args.tokens, args.prompt_len, args.rounds) < 1:
        p.error("--tokens, --prompt-len and --rounds must be at least 1")
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
