"""DPO throughput: lmforge's DPO (`lmforge finetune --method dpo`) against TRL's DPOTrainer, on
the same model and the same preference pairs, in one run.

One model (a named design, random init, saved once as an lmforge model folder, which is an HF
Llama folder with its tokenizer and chat template) and one set of pairs serve every contender;
each trains in its own fresh process, so its peak resident memory is its own:

- lmforge: `lmforge.train.loop.train` with the `DPO` objective (sigmoid, beta 0.1) over
  `PairBatches`: each pair one unit (the prompt once, each answer after it, attention kept
  apart by a mask), units packed best-fit decreasing into `rows` rows of `seq_len` a step; the
  reference's log-probs computed once before training (`fill_reference_logps`, timed apart);
- lmforge bf16: the same with the loop's bf16 autocast;
- TRL 1.16 `DPOTrainer` on the same folder, pairs as conversational prompt/chosen/rejected
  (tokenized by the folder's chat template to the same ids: tests/test_dpo.py checks it),
  `max_length` = seq_len + 1 (nothing is cut: every pair here fits), as many pairs a step as
  an lmforge step holds on average:
  - TRL default: `DPOConfig` defaults, which on a CPU are bf16 autocast, activation
    checkpointing, no packing, and a reference model kept beside the policy and run on every
    batch (plus `use_cpu=True`, without which it does not start);
  - TRL precomputed: the defaults with `precompute_ref_log_probs=True` (the reference pass
    runs once before training and the reference is dropped: TRL's fastest DPO setting);
  - TRL fp32 / TRL fp32 precomputed: no autocast, no activation checkpointing (like for like
    with lmforge's fp32), with the reference kept or precomputed;
  - TRL bf16 precomputed: bf16 autocast without activation checkpointing, precomputed.

Same AdamW (torch fused, lr 1e-4, betas 0.9/0.95, weight decay 0.1, clipping at 1.0).
`warmup` untimed steps, then `steps` timed ones (perf_counter between step ends: data,
forward(s), backward, clipping, optimizer, logging); one more step ends the run untimed.
Pairs per timed step are counted from the batches. The reference pass, where it runs up front
(lmforge, TRL precomputed), is timed apart, and a one-epoch figure folds it in: pairs /
(reference seconds + pairs / training pairs per second).

    python bench/dpo_throughput.py                 # hh_rlhf helpful-base, tiny design (~12 minutes)
    python bench/dpo_throughput.py --quick         # pydocs-prefs, 4 contenders, 1 round (~1 minute)
    python bench/dpo_throughput.py --data pydocs-prefs --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_throughput import OPTIM, installed, peak_rss_mib, rss_mib, run_rounds  # noqa: E402

SHARED_HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_rlhf" / \
    "helpful-base" / "test.jsonl.gz"
BETA = 0.1
NO_CKPT = {"activation_checkpointing": False}
CONTENDERS: dict[str, tuple[str, dict[str, Any]]] = {
    "lmforge": ("lmforge", {}),
    "lmforge bf16": ("lmforge", {"dtype": "bfloat16"}),
    "TRL default": ("trl", {}),
    "TRL precomputed": ("trl", {"precompute_ref_log_probs": True}),
    "TRL fp32": ("trl", {"bf16": False, **NO_CKPT}),
    "TRL fp32 precomputed": ("trl", {"bf16": False, **NO_CKPT,
                                     "precompute_ref_log_probs": True}),
    "TRL bf16 precomputed": ("trl", {"bf16": True, **NO_CKPT,
                                     "precompute_ref_log_probs": True}),
}
QUICK = ["lmforge", "TRL default", "TRL precomputed", "TRL fp32 precomputed"]


# ---- children: one contender per process ----------------------------------------------------

class Counted:
    """A PairBatches that records, per step, the pairs and the real (non-padding) and padded
    positions it hands out."""

    def __init__(self, inner):
        self.inner, self.tokens = inner, inner.tokens
        self.pairs: list[int] = []
        self.real: list[int] = []
        self.padded: list[int] = []

    def step_batches(self, step: int, seed: int, device: torch.device) -> list:
        batches = self.inner.step_batches(step, seed, device)
        self.pairs.append(sum(b.tokens for b in batches))
        self.real.append(sum(int((b["unit"] >= 0).sum()) for b in batches))
        self.padded.append(sum(b["inputs"].numel() for b in batches))
        return batches

    def validation_batches(self, device: torch.device) -> Iterator:
        return self.inner.validation_batches(device)


def read_pairs(spec: dict) -> list[dict]:
    with open(spec["pairs"], encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def child_lmforge(spec: dict, settings: dict) -> dict:
    from lmforge.data.preferences import PreferencePair
    from lmforge.model.io import load_model_dir
    from lmforge.train.dpo import DPO, PairBatches, fill_reference_logps, make_units
    from lmforge.train.loop import autocast_dtype
    from lmforge.train.loop import train as train_loop
    from lmforge.train.settings import TrainSettings

    model, tok = load_model_dir(Path(spec["model"]))
    seq_len, rows = spec["seq_len"], spec["rows"]
    pairs = [PreferencePair(r["prompt"], r["chosen"][0]["content"],
                            r["rejected"][0]["content"], str(i))
             for i, r in enumerate(read_pairs(spec))]
    units, cut = make_units(tok, pairs, seq_len)
    assert not cut and all(u.length <= seq_len for u in units)
    total = spec["warmup"] + spec["steps"] + 1
    s = TrainSettings(steps=total, batch_tokens=rows * seq_len, micro_batch=rows,
                      seq_len=seq_len, lr=OPTIM["lr"], weight_decay=OPTIM["weight_decay"],
                      beta1=OPTIM["betas"][0], beta2=OPTIM["betas"][1],
                      grad_clip=OPTIM["grad_clip"], warmup_steps=0, eval_every=10**9,
                      eval_batches=1, checkpoint_every=10**9, device="cpu",
                      dtype=settings.get("dtype", "float32"))
    cpu = torch.device("cpu")
    rss_before = rss_mib()
    t0 = time.perf_counter()
    fill_reference_logps(model, units, seq_len, rows, cpu, autocast_dtype(s, cpu))
    ref_s = time.perf_counter() - t0
    source = Counted(PairBatches(units, units[:rows], seq_len, rows, 1, 1))
    ends: list[float] = []
    with tempfile.TemporaryDirectory() as run_dir:
        ends.append(time.perf_counter())
        train_loop(model, DPO(BETA), source, s, Path(run_dir),
                   on_step=lambda step: ends.append(time.perf_counter()), show_progress=False)
    return timed(ends, source.pairs, source.real, source.padded, spec, rss_before,
                 ref_s=ref_s, ref_pairs=len(units))


def child_trl(spec: dict, settings: dict) -> dict:
    import datasets
    import transformers
    from trl import DPOConfig, DPOTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    folder = spec["model"]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    data = datasets.Dataset.from_list(read_pairs(spec))
    total = spec["warmup"] + spec["steps"] + 1
    config = DPOConfig(
        output_dir=spec["scratch"], report_to="none", use_cpu=True, disable_tqdm=True,
        save_strategy="no", max_steps=total, seed=0, beta=BETA, loss_type=["sigmoid"],
        max_length=spec["seq_len"] + 1, per_device_train_batch_size=spec["trl_pairs"],
        learning_rate=OPTIM["lr"], weight_decay=OPTIM["weight_decay"],
        adam_beta1=OPTIM["betas"][0], adam_beta2=OPTIM["betas"][1],
        max_grad_norm=OPTIM["grad_clip"], **settings)
    pairs: list[int] = []
    real: list[int] = []
    padded: list[int] = []
    ends: list[float] = []
    ref_s: list[float] = []

    class Timer(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    class Counting(DPOTrainer):
        def _precompute_ref_logps(self, *args, **kwargs):
            t0 = time.perf_counter()
            out = super()._precompute_ref_logps(*args, **kwargs)
            ref_s.append(time.perf_counter() - t0)
            return out

        def training_step(self, model, inputs, *args, **kwargs):
            pairs.append(int(inputs["input_ids"].shape[0]) // 2)  # chosen rows, rejected rows
            padded.append(int(inputs["input_ids"].numel()))
            real.append(int(inputs["attention_mask"].sum()))
            return super().training_step(model, inputs, *args, **kwargs)

    rss_before = rss_mib()
    trainer = Counting(model=model, args=config, train_dataset=data, processing_class=tok,
                       callbacks=[Timer()])
    ends.append(time.perf_counter())
    trainer.train()
    return timed(ends, pairs, real, padded, spec, rss_before, ref_s=sum(ref_s),
                 ref_pairs=len(data) if ref_s else 0)


def timed(ends: list[float], pairs: list[int], real: list[int], padded: list[int], spec: dict,
          rss_before: float, ref_s: float, ref_pairs: int) -> dict:
    """Figures of the timed steps: steps warmup+1 .. warmup+steps (1-based)."""
    w, n = spec["warmup"], spec["steps"]
    if len(ends) < w + n + 1 or len(pairs) < w + n:
        raise RuntimeError(f"expected {w + n + 1} step ends, got {len(ends) - 1}")
    seconds = [ends[i + 1] - ends[i] for i in range(w, w + n)]
    done = sum(pairs[w:w + n])
    pps = done / sum(seconds)
    # One epoch over the set: the reference pass once per pair, then training.
    per_pair_ref = ref_s / ref_pairs if ref_pairs else 0.0
    return {"seconds": sum(seconds), "step_s_median": sorted(seconds)[n // 2], "steps": n,
            "pairs": done, "pairs_per_s": pps, "real_tokens": sum(real[w:w + n]),
            "padded_tokens": sum(padded[w:w + n]),
            "real_tokens_per_s": sum(real[w:w + n]) / sum(seconds),
            "ref_s": ref_s, "ref_pairs": ref_pairs,
            "ref_pairs_per_s": ref_pairs / ref_s if ref_s else None,
            "epoch_pairs_per_s": 1 / (per_pair_ref + 1 / pps),
            "rss_before_train_mib": rss_before, "peak_rss_mib": peak_rss_mib()}


def child_main(name: str, spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    library, settings = CONTENDERS[name]
    result = (child_lmforge if library == "lmforge" else child_trl)(spec, settings)
    print("RESULT " + json.dumps(result))
    return 0


# ---- the parent: one model, one set of pairs, every contender ------------------------------

def load_source(data: str) -> tuple[str, list]:
    from lmforge.data.preferences import load_pairs

    if data == "hh":
        if not SHARED_HH.is_file():
            print(f"{SHARED_HH} not found: using pydocs-prefs", file=sys.stderr)
            data = "pydocs-prefs"
        else:
            data = str(SHARED_HH)
    return data, load_pairs([data])


def prepare(args: argparse.Namespace, work: Path) -> dict:
    """Tokenizer, model folder and the pairs on disk; returns the children's spec."""
    from lmforge.data.corpora.pydocs import build_pydocs_corpus
    from lmforge.design.spec import from_preset
    from lmforge.model.init import initialize
    from lmforge.model.io import save_model_dir
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import train_tokenizer
    from lmforge.train.dpo import make_unit, pack_units

    t0 = time.perf_counter()
    d = from_preset(args.shape)
    if args.seq_len > d.context_length:
        d = dataclasses.replace(d, context_length=args.seq_len)
    tok = train_tokenizer((doc.text for doc in build_pydocs_corpus()), d.vocab_size,
                          show_progress=False)
    model = initialize(Transformer(d), "gpt2", seed=0)
    save_model_dir(model, work / "model", tok, f"# dpo bench ({args.shape})\n")
    source, all_pairs = load_source(args.data)
    # Pairs that fit a row whole: neither side cuts anything, so both do the same work.
    kept, units = [], []
    for p in all_pairs:
        u = make_unit(tok, p, 10**9)
        if u is not None and u.length <= args.seq_len:
            kept.append(p)
            units.append(u)
        if len(kept) == args.pairs:
            break
    with open(work / "pairs.jsonl", "w", encoding="utf-8") as f:
        for p in kept:
            f.write(json.dumps({"prompt": p.prompt,
                                "chosen": [{"role": "assistant", "content": p.chosen}],
                                "rejected": [{"role": "assistant", "content": p.rejected}]},
                               ensure_ascii=False) + "\n")
    per_row = len(units) / len(pack_units(units, args.seq_len))
    lengths = sorted(u.length for u in units)
    return {"model": str(work / "model"), "pairs": str(work / "pairs.jsonl"),
            "scratch": str(work / "scratch"), "design": d.to_dict(), "shape": args.shape,
            "data": source, "n_pairs": len(kept), "n_source": len(all_pairs),
            "seq_len": args.seq_len, "rows": args.rows,
            "trl_pairs": max(1, round(args.rows * per_row)), "pairs_per_row": per_row,
            "unit_median": lengths[len(lengths) // 2], "unit_max": lengths[-1],
            "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
            "setup_s": time.perf_counter() - t0}


def run_child(name: str, spec_path: Path) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--spec", str(spec_path)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
           "HF_DATASETS_CACHE": str(Path(spec_path).parent / "hf_cache")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not lines:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
        raise RuntimeError(f"{name} failed (exit {done.returncode}):\n{tail}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def precision(name: str) -> str:
    library, settings = CONTENDERS[name]
    if library == "lmforge":
        return "bf16" if settings.get("dtype") == "bfloat16" else "fp32"
    return "bf16" if settings.get("bf16", True) else "fp32"


def summarize(results: dict[str, list[dict]]) -> list[dict]:
    """Per contender its best round; pairs/s against TRL's default, TRL's fastest and TRL's
    fastest fp32 configuration."""
    rows = []
    for name, runs in results.items():
        best = max(runs, key=lambda r: r["pairs_per_s"])
        rows.append({"contender": name, "precision": precision(name), **best,
                     "rounds": len(runs), "pairs_per_s_all": [r["pairs_per_s"] for r in runs],
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                     "padding": 1 - best["real_tokens"] / max(1, best["padded_tokens"]),
                     "round_spread": max(r["pairs_per_s"] for r in runs) /
                     min(r["pairs_per_s"] for r in runs)})
    trl = [r for r in rows if CONTENDERS[r["contender"]][0] == "trl"]
    bases = {
        "vs_trl_default": next((r for r in trl if r["contender"] == "TRL default"), None),
        "vs_trl_fastest": max(trl, key=lambda r: r["pairs_per_s"], default=None),
        "vs_trl_fastest_fp32": max((r for r in trl if r["precision"] == "fp32"),
                                   key=lambda r: r["pairs_per_s"], default=None),
    }
    for r in rows:
        r["baselines"] = {k: b["contender"] if b else None for k, b in bases.items()}
        for key, base in bases.items():
            r[key] = r["pairs_per_s"] / base["pairs_per_s"] if base else None
    return rows


def print_table(report: dict) -> None:
    s = report["spec"]
    d = s["design"]
    print(f"\ntorch {report['torch']}, transformers {report['transformers']}, "
          f"trl {report['trl'] or '(not installed)'}, {report['threads']} threads, "
          f"{report['cpu']}; load before: {report['load_before']}")
    print(f"{s['shape']}: {d['n_layers']} layers, d_model {d['d_model']}, {d['n_heads']}/"
          f"{d['n_kv_heads']} heads, vocab {d['vocab_size']}; {s['n_pairs']} pairs of "
          f"{s['data']} (the first that fit {s['seq_len']} positions whole; unit median "
          f"{s['unit_median']}, max {s['unit_max']})")
    print(f"lmforge: {s['rows']} rows of {s['seq_len']} a step ({s['pairs_per_row']:.2f} pairs "
          f"a row); TRL: {s['trl_pairs']} pairs a step; {s['warmup']} warm-up + {s['steps']} "
          f"timed steps, best of {report['rounds']} round(s)")
    if report.get("skipped"):
        print(f"skipped: {report['skipped']}")
    print(f"{'contender':22s} {'prec':4s} {'pairs/s':>8s} {'step ms':>8s} {'pad':>4s} "
          f"{'ref s':>6s} {'epoch p/s':>9s} {'vs default':>10s} {'vs fastest':>10s} "
          f"{'vs fp32':>8s} {'peak RSS':>9s}")

    def ratio(x: float | None) -> str:
        return f"{x:.2f}x" if x else "-"

    for r in report["results"]:
        ref = f"{r['ref_s']:6.1f}" if r["ref_s"] else "     -"
        print(f"{r['contender']:22s} {r['precision']:4s} {r['pairs_per_s']:8.2f} "
              f"{r['step_s_median'] * 1e3:8.0f} {r['padding']:4.0%} {ref} "
              f"{r['epoch_pairs_per_s']:9.2f} {ratio(r['vs_trl_default']):>10s} "
              f"{ratio(r['vs_trl_fastest']):>10s} {ratio(r['vs_trl_fastest_fp32']):>8s} "
              f"{r['peak_rss_mib']:7.0f}Mi")
    if report["results"] and report["results"][0]["baselines"]["vs_trl_fastest"]:
        b = report["results"][0]["baselines"]
        print(f"TRL fastest: {b['vs_trl_fastest']}; fastest fp32: {b['vs_trl_fastest_fp32']}")
    uneven = [r["contender"] for r in report["results"] if r["round_spread"] > 1.15]
    if uneven:
        print(f"rounds differ by more than 15% for {', '.join(uneven)}: the machine was "
              f"busy; the best round is kept, rerun when it is quiet")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="hh",
                   help="hh (../shared/data/hh_rlhf helpful-base), pydocs-prefs, or a file")
    p.add_argument("--pairs", type=int, default=300, help="use the first N that fit")
    p.add_argument("--shape", default="tiny", help="a design preset (lmforge.design.spec)")
    p.add_argument("--seq-len", type=int, default=512,
                   help="row length (the design's context is raised to it if shorter)")
    p.add_argument("--rows", type=int, default=8, help="lmforge rows a step")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per contender")
    p.add_argument("--steps", type=int, default=None, help="timed steps per contender")
    p.add_argument("--rounds", type=int, default=None,
                   help="run every contender this often, order rotating; keep the best")
    p.add_argument("--contenders", default=None, help=f"comma list of {', '.join(CONTENDERS)}")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    p.add_argument("--quick", action="store_true", help="pydocs-prefs, few steps: a smoke run")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args.child, args.spec)
    if args.quick:
        args.data, args.pairs, args.seq_len = "pydocs-prefs", 300, 256
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.steps = args.steps if args.steps is not None else (3 if args.quick else 10)
    args.rounds = args.rounds or (1 if args.quick else 2)
    names = args.contenders.split(",") if args.contenders else (
        QUICK if args.quick else list(CONTENDERS))
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        p.error(f"unknown contender(s) {unknown}; choose from {list(CONTENDERS)}")
    skipped = None
    if installed("trl") is None:
        skipped = ("TRL is not installed: `pip install -c constraints.txt trl` to compare "
                   "against its DPOTrainer; running lmforge alone")
        names = [n for n in names if CONTENDERS[n][0] != "trl"]
        print(skipped, file=sys.stderr)
    from lmforge.runtime import cpu_name

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="dpo_bench_") as tmp:
        work = Path(tmp)
        spec = prepare(args, work)
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        results = run_rounds(names, args.rounds, lambda name: run_child(name, spec_path),
                             quiet=args.json)
    report = {"torch": torch.__version__, "transformers": installed("transformers"),
              "trl": installed("trl"), "threads": args.threads or torch.get_num_threads(),
              "cpu": cpu_name(), "cores": os.cpu_count(), "rounds": args.rounds,
              "load_before": load_before, "load_after": load_average(),
              "command": " ".join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])]),
              "skipped": skipped, "spec": spec, "results": summarize(results)}
    for r in report["results"]:
        if not math.isfinite(r["pairs_per_s"]):
            raise RuntimeError(f"{r['contender']}: no pairs timed")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
        print(f"load average before {report['load_before']}, after {report['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
