"""Evaluation throughput: lmforge's multiple-choice scorer against lm-evaluation-harness.

One process, one model, the same N HellaSwag items (../shared/data, lmforge's built-in
loader), zero-shot, CPU fp32, the same torch threads and batch size for every contender:

- lmforge: `lmforge.eval.runner.evaluate` on the built-in task (prefix-shared packed rows,
  output head only where a continuation token is predicted);
- lm-eval + HFLM: `lm_eval.simple_evaluate` with its Hugging Face backend on the model
  exported to an HF folder (`lmforge.model.hf.export_hf`), over a YAML task holding the same
  items (`lmforge.eval.lm_eval_tasks`), `add_bos_token=True` so it scores the same tokens;
- lm-eval + LmforgeLM: the same lm-eval run with lmforge's adapter as the model, which shows
  what lm-eval's own request and metric machinery adds around lmforge's scorer.

Each contender is built once (model loading is not timed) and warmed up on a few items; then
the contenders run in turn, the order rotating every round, and the figure is the best
round (background load on a shared machine only ever slows a round down). Items/s counts
whole multiple-choice items (4 scored endings each), task loading and metrics included.

    python bench/eval_throughput.py                    # tiny design, 500 items
    python bench/eval_throughput.py --quick            # a smoke run: 32 items, one round
    python bench/eval_throughput.py --shape d512       # the small preset (d_model 512)
    python bench/eval_throughput.py --model PATH_OR_REF --n 200 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.design.spec import ModelDesign, from_preset
from lmforge.eval.runner import EvalSettings, evaluate
from lmforge.eval.suites import default_data_root, parse_hellaswag
from lmforge.eval.tasks import MultipleChoiceTask
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer
from lmforge.runtime import cpu_name
from lmforge.tokenizer import Tokenizer, train_tokenizer

# The two shapes of bench/train_throughput.py: the tiny preset, and the small preset
# (d_model 512, 8 layers, 8/4 heads, vocab 8192).
SHAPES: dict[str, ModelDesign] = {"tiny": from_preset("tiny"), "d512": from_preset("small")}


@dataclass
class Contender:
    name: str
    run: Callable[[int], dict]  # n items -> {"acc": ..., "acc_norm": ...}
    times: list[float] = field(default_factory=list)
    scores: dict = field(default_factory=dict)


def tokenizer_texts(root: Path) -> list[str]:
    """TinyStories if present (what our small models are trained on), else HellaSwag."""
    parts = sorted((root / "tinystories").glob("tinystories_v1_train_head_part*.txt"))
    if parts:
        text = "\n\n".join(p.read_text(encoding="utf-8") for p in parts)
        return [s for s in text.split("\n\n") if s.strip()]
    lines = (root / "hellaswag" / "hellaswag_val.jsonl").read_text(encoding="utf-8")
    return lines.splitlines()


def build_model(shape: str, root: Path) -> tuple[Transformer, Tokenizer]:
    """A randomly initialized model of the design (speed does not depend on training)."""
    design = SHAPES[shape]
    tok = train_tokenizer(tokenizer_texts(root), design.vocab_size, show_progress=False)
    return initialize(Transformer(design), "gpt2", seed=0).eval(), tok


def export_to_hf(model: Transformer, tok: Tokenizer, out: Path) -> Path:
    """Register the model in a scratch workspace and export it the way users do."""
    from lmforge.model.hf import export_hf
    from lmforge.model.io import save_model_dir
    from lmforge.registry import Workspace

    ws = Workspace.open(out / "ws")
    try:
        with ws.staging() as d:
            save_model_dir(model, d, tok, "# eval throughput model\n")
            art = ws.register(d, kind="model", stage="bench", state="pretrained",
                              name="eval-bench")
        export_hf(art, out / "hf")
    finally:
        ws.close()
    return out / "hf"


def load_or_build(args: argparse.Namespace, scratch: Path
                  ) -> tuple[Transformer, Tokenizer, Path, str]:
    if args.model is None:
        model, tok = build_model(args.shape, args.data_root)
        return model, tok, export_to_hf(model, tok, scratch), f"{args.shape} (random init)"
    path = Path(args.model).expanduser()
    if path.is_dir() and not (path / "manifest.json").exists():
        from lmforge.model.io import load_model_dir

        model, tok = load_model_dir(path)
        return model, tok, path, str(path)  # a model directory already is an HF folder
    from lmforge.model.io import load_model
    from lmforge.registry import Workspace

    ws = Workspace.open(args.workspace)
    try:
        model, tok, _ = load_model(ws, args.model)
    finally:
        ws.close()
    return model, tok, export_to_hf(model, tok, scratch), args.model


def contenders_for(model: Transformer, tok: Tokenizer, hf_dir: Path, task_file: Path,
                   yaml_dir: Path, args: argparse.Namespace) -> list[Contender]:
    from lmforge.eval.lm_eval_tasks import make_lm, run_lm_eval, write_mc_task

    def lmforge_run(n: int) -> dict:
        task = MultipleChoiceTask(name="hellaswag", path=task_file, limit=n,
                                  parse=parse_hellaswag)
        report = evaluate(model, tok, [task], EvalSettings(batch_size=args.batch_size),
                          progress=False)
        return {m: v["value"] for m, v in report["tasks"]["hellaswag"]["metrics"].items()
                if m in ("acc", "acc_norm")}

    # lm-eval reads exactly the items lmforge scores: one YAML task per item count.
    full = MultipleChoiceTask(name="hellaswag", path=task_file, limit=args.n,
                              parse=parse_hellaswag).load_items()
    for n in {args.n, args.warmup_items}:
        write_mc_task(f"hellaswag_{n}", full[:n], yaml_dir)

    def lm_eval_run(lm, backend: str) -> Callable[[int], dict]:
        def run(n: int) -> dict:
            out = run_lm_eval(lm, yaml_dir, [f"hellaswag_{n}"], batch_size=args.batch_size,
                              backend=backend)
            metrics = next(iter(out["tasks"].values()))["metrics"]
            return {m: v["value"] for m, v in metrics.items()}
        return run

    hflm = make_lm(str(hf_dir), backend="hf", batch_size=args.batch_size)
    ours = make_lm((model, tok), backend="lmforge", batch_size=args.batch_size)
    return [Contender("lm-eval + HFLM", lm_eval_run(hflm, "hf")),
            Contender("lmforge scorer", lmforge_run),
            Contender("lm-eval + LmforgeLM", lm_eval_run(ours, "lmforge"))]


def run(args: argparse.Namespace) -> dict:
    root = args.data_root
    task_file = root / "hellaswag" / "hellaswag_val.jsonl"
    if not task_file.is_file():
        sys.exit(f"no HellaSwag file at {task_file}; pass --data-root or set "
                 "LMFORGE_EVAL_DATA (a folder laid out like shared/data, with "
                 "hellaswag/hellaswag_val.jsonl)")
    with tempfile.TemporaryDirectory(prefix="lmforge-eval-bench-") as tmp:
        scratch = Path(tmp)
        model, tok, hf_dir, label = load_or_build(args, scratch)
        model = model.float().eval()
        contenders = contenders_for(model, tok, hf_dir, task_file, scratch / "yaml", args)
        for c in contenders:  # warm-up: thread pools, allocator, datasets' cache of the file
            c.run(args.warmup_items)
        for r in range(args.rounds):
            k = r % len(contenders)
            for c in contenders[k:] + contenders[:k]:
                start = time.perf_counter()
                c.scores = c.run(args.n)
                c.times.append(time.perf_counter() - start)
    d = model.design
    base = min(contenders[0].times)
    rows = [{"contender": c.name, "items_per_s": args.n / min(c.times),
             "seconds_best": min(c.times), "seconds_all": c.times,
             "vs_hflm": base / min(c.times), **c.scores} for c in contenders]
    return {"model": label, "design": d.to_dict(), "params": model.num_params(), "n": args.n,
            "batch_size": args.batch_size, "rounds": args.rounds, "threads":
            torch.get_num_threads(), "torch": torch.__version__, "cpu": cpu_name(),
            "cores": os.cpu_count(), "results": rows}


def print_table(report: dict) -> None:
    d = report["design"]
    print(f"\n{report['model']}: {d['n_layers']} layers, d_model {d['d_model']}, "
          f"{d['n_heads']}/{d['n_kv_heads']} heads, vocab {d['vocab_size']}, context "
          f"{d['context_length']}, {report['params'] / 1e6:.1f}M params")
    print(f"HellaSwag, {report['n']} items (4 endings each), zero-shot, batch "
          f"{report['batch_size']}, fp32, {report['threads']} threads, {report['cpu']}; "
          f"best of {report['rounds']} round(s)")
    print(f"  {'contender':22s} {'items/s':>8s} {'seconds':>8s} {'vs HFLM':>8s} "
          f"{'acc':>6s} {'acc_norm':>8s}")
    for r in report["results"]:
        print(f"  {r['contender']:22s} {r['items_per_s']:8.1f} {r['seconds_best']:8.2f} "
              f"{r['vs_hflm']:7.2f}x {r['acc']:6.3f} {r['acc_norm']:8.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), default="tiny",
                   help="design of the built model (ignored with --model)")
    p.add_argument("--model", default=None, help="a model directory or artifact reference")
    p.add_argument("--workspace", default=None, help="workspace for --model references")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder laid out like shared/data (default: ../shared/data)")
    p.add_argument("--n", type=int, default=500, help="HellaSwag items")
    p.add_argument("--batch-size", type=int, default=32, help="the same for every contender")
    p.add_argument("--rounds", type=int, default=2, help="timed runs per contender")
    p.add_argument("--warmup-items", type=int, default=16, help="untimed items per contender")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (32 items, 1 round, 4 warm-up items): checks that every "
                        "contender runs, not a figure to quote")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.rounds, args.warmup_items = min(args.n, 32), 1, 4
    if args.n < 1 or args.rounds < 1 or args.warmup_items < 1:
        p.error("--n, --rounds and --warmup-items must be at least 1")
    args.data_root = default_data_root(args.data_root)
    if args.threads:
        torch.set_num_threads(args.threads)
    # lm-eval logs a warning per task about num_fewshot; the table is the output here.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    report = run(args)
    report["command"] = " ".join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])])
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
