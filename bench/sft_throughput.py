"""SFT throughput: lmforge's fine-tuning loop against TRL's SFTTrainer, on the same conversations.

One model (a named design, random init, saved once as an HF folder with its tokenizer and chat
template) and one set of conversations serve every contender; each contender trains in its own
fresh process, so its peak resident memory (`getrusage(RUSAGE_SELF).ru_maxrss`) is its own:

- lmforge packed: `lmforge.train.loop.train` (the loop `lmforge finetune` runs) with
  `NextToken` over `PackedSequences` of `encode_conversation(tok, conv, max_tokens=seq_len+1)`
  (several conversations to a row, document masks, loss on assistant tokens only);
- lmforge unpacked: the same loop over one conversation per row, right-padded to the longest
  row of the batch (inputs, targets, no segments: `Unpacked` below);
- lmforge packed bfd*: a what-if, not lmforge's code: the same source with its rows packed
  best-fit decreasing (`best_fit_rows` below) instead of `pack_rows`' next fit;
- TRL's `SFTTrainer` on the same HF folder, `messages` rendered by the folder's chat template,
  `assistant_only_loss=True` (loss on the same tokens), `max_length=seq_len+1`: without
  activation checkpointing, packing "bfd" (padding-free: a step's rows flattened into one
  sequence, kept apart by position ids) and "wrapped" (full rows; attention crosses
  conversations, and conversations are cut at row ends instead of at seq_len + 1), each in
  fp32 and in bf16 autocast; fp32 unpacked; and its default configuration, which on a CPU
  is `use_cpu=True` (required to start) with the defaults: bf16 autocast, activation
  checkpointing, no packing;
- lmforge packed bf16: `dtype="bfloat16"` (the loop's autocast), against TRL's bf16.

Same optimizer (fused torch AdamW, same lr, betas, weight decay, clipping at 1.0), same rows
per step for the packed contenders (micro_batch rows of seq_len), and for the unpacked ones
as many conversations per step as a packed step holds on average. Every contender runs
`warmup` untimed steps, then `steps` timed ones (perf_counter between consecutive step ends:
data, forward, backward, clipping, optimizer, logging); one more step ends the run and is not
timed (lmforge validates there, TRL tears down). Tokens are counted per timed step from the
batches themselves:

- loss tokens: positions whose target is learned (assistant contents and their <|end|>);
  the same per conversation in every contender (the run checks the totals);
- real tokens: non-padding input positions the model processed. A conversation of n tokens
  is n - 1 input positions in lmforge (its last token is only a target) and n in TRL.

Ratios use loss tokens/s, the work that counts, against three TRL baselines: its fastest
fp32 configuration (like for like), its fastest of any precision, and its default. Each
contender runs `rounds` times (order rotating) and keeps its best round.

    python bench/sft_throughput.py                      # alpaca_1k, tiny design (~9 minutes)
    python bench/sft_throughput.py --quick --json
    python bench/sft_throughput.py --data pydocs-chat --profile
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

SHARED_ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_1k"
OPTIM = dict(lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), grad_clip=1.0)

# Contender name -> (library, settings). TRL settings are SFTConfig fields on top of the shared
# ones; "default" adds nothing but what a CPU needs to start at all (use_cpu=True).
FP32_NO_CKPT = {"bf16": False, "activation_checkpointing": False}
BF16_NO_CKPT = {"bf16": True, "activation_checkpointing": False}
CONTENDERS: dict[str, tuple[str, dict[str, Any]]] = {
    "lmforge packed": ("lmforge", {"packed": True}),
    "lmforge unpacked": ("lmforge", {"packed": False}),
    # What-if, not lmforge's code: the same source with rows packed best-fit decreasing.
    "lmforge packed bfd*": ("lmforge", {"packed": True, "best_fit": True}),
    "TRL packed bfd": ("trl", {**FP32_NO_CKPT, "packing": True, "packing_strategy": "bfd"}),
    "TRL packed wrapped": ("trl", {**FP32_NO_CKPT, "packing": True,
                                   "packing_strategy": "wrapped"}),
    # bf16 autocast (this CPU's avx512_bf16 runs bf16 matmuls several times faster than fp32).
    "lmforge packed bf16": ("lmforge", {"packed": True, "dtype": "bfloat16"}),
    "TRL packed bfd bf16": ("trl", {**BF16_NO_CKPT, "packing": True, "packing_strategy": "bfd"}),
    "TRL packed wrapped bf16": ("trl", {**BF16_NO_CKPT, "packing": True,
                                        "packing_strategy": "wrapped"}),
    "TRL unpacked fp32": ("trl", {**FP32_NO_CKPT, "packing": False}),
    "TRL default": ("trl", {"packing": False}),
}
QUICK = ["lmforge packed", "lmforge unpacked", "TRL packed wrapped", "TRL default"]


# ---- the unpacked baseline ------------------------------------------------------------------

class Unpacked:
    """One conversation per row, right-padded to the batch's longest row; rows shuffled every
    epoch like `PackedSequences`. A right pad never changes a causal model's real positions,
    so no segments are needed; padded targets are ignored."""

    def __init__(self, train: list, val: list, seq_len: int, rows: int):
        self.train = [s for s in train if min(len(s[0]), seq_len + 1) > 1]
        self.val, self.seq_len, self.rows = val, seq_len, rows
        self.tokens = sum(min(len(ids), seq_len + 1) - 1 for ids, _ in self.train)
        self._order: tuple[tuple[int, int] | None, np.ndarray] = (None, np.arange(0))

    def _batch(self, picked: list, device: torch.device):
        from lmforge.model.loss import IGNORE_INDEX
        from lmforge.train.batches import Batch

        width = max(min(len(ids), self.seq_len + 1) - 1 for ids, _ in picked)
        inputs = torch.zeros(len(picked), width, dtype=torch.long)
        targets = torch.full((len(picked), width), IGNORE_INDEX, dtype=torch.long)
        lengths = torch.zeros(len(picked), dtype=torch.long)
        for r, (ids, mask) in enumerate(picked):
            ids = torch.as_tensor(list(ids)[:self.seq_len + 1], dtype=torch.long)
            n = len(ids) - 1
            learned = ids[1:].clone()
            learned[~torch.as_tensor(list(mask)[1:n + 1], dtype=torch.bool)] = IGNORE_INDEX
            inputs[r, :n], targets[r, :n], lengths[r] = ids[:-1], learned, n
        learned_count = int((targets != IGNORE_INDEX).sum())
        # NextToken reads inputs and targets; "lengths" is for counting real tokens.
        tensors = {"inputs": inputs, "targets": targets, "lengths": lengths}
        return Batch({k: v.to(device) for k, v in tensors.items()}, learned_count)

    def step_batches(self, step: int, seed: int, device: torch.device) -> list:
        n = len(self.train)
        picked = []
        for k in range(step * self.rows, (step + 1) * self.rows):
            epoch, offset = divmod(k, n)
            if self._order[0] != (seed, epoch):
                rng = np.random.default_rng([seed, epoch, 1])
                self._order = ((seed, epoch), rng.permutation(n))
            picked.append(self.train[self._order[1][offset]])
        return [self._batch(picked, device)]

    def validation_batches(self, device: torch.device) -> Iterator:
        for i in range(0, len(self.val), self.rows):
            yield self._batch(self.val[i:i + self.rows], device)


def best_fit_rows(seqs: list, seq_len: int) -> list[list[int]]:
    """Rows packed best-fit decreasing (as TRL's "bfd"): longest sequence first, each into the
    fullest row it fits; the what-if against `pack_rows`' next fit in the given order."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    rows: list[list[int]] = []
    frees: list[tuple[int, int]] = []  # (free positions, row), sorted
    for i in order:
        n = min(len(seqs[i][0]), seq_len + 1) - 1
        if n < 1:
            continue
        k = bisect.bisect_left(frees, (n, -1))
        if k < len(frees):
            free, r = frees.pop(k)
            rows[r].append(i)
        else:
            free, r = seq_len, len(rows)
            rows.append([i])
        if free > n:
            bisect.insort(frees, (free - n, r))
    return rows


class Counted:
    """A batch source that records, per step, the real (non-padding) input positions of what
    it hands out; `Batch.tokens` already counts the loss tokens."""

    def __init__(self, inner):
        self.inner, self.tokens = inner, inner.tokens
        self.real: list[int] = []
        self.padded: list[int] = []
        self.learned: list[int] = []

    def step_batches(self, step: int, seed: int, device: torch.device) -> list:
        batches = self.inner.step_batches(step, seed, device)
        real = 0
        for b in batches:
            seg = b.get("segments")
            real += int((seg >= 0).sum()) if seg is not None else int(b["lengths"].sum())
        self.real.append(real)
        self.padded.append(sum(b["inputs"].numel() for b in batches))
        self.learned.append(sum(b.tokens for b in batches))
        return batches

    def validation_batches(self, device: torch.device) -> Iterator:
        return self.inner.validation_batches(device)


# ---- children: one contender per process ----------------------------------------------------

def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def read_conversations(spec: dict) -> list[list[dict]]:
    with open(spec["conversations"], encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f]


def child_lmforge(spec: dict, settings: dict) -> dict:
    from lmforge.data.chat import encode_conversation
    from lmforge.model.io import load_model_dir
    from lmforge.train.batches import PackedSequences
    from lmforge.train.loop import train
    from lmforge.train.objectives import NextToken
    from lmforge.train.settings import TrainSettings

    model, tok = load_model_dir(Path(spec["model"]))
    seq_len, rows = spec["seq_len"], spec["rows"]
    seqs = [encode_conversation(tok, m, max_tokens=seq_len + 1)
            for m in read_conversations(spec)]
    val = seqs[:rows]  # validated once, after the timed steps
    if settings["packed"]:
        inner = PackedSequences(seqs, val, seq_len, rows, 1, eval_batches=1)
        if settings.get("best_fit"):
            inner.train_rows = best_fit_rows(seqs, seq_len)
    else:
        inner = Unpacked(seqs, val, seq_len, spec["unpacked_rows"])
    source = Counted(inner)
    total = spec["warmup"] + spec["steps"] + 1
    s = TrainSettings(steps=total, batch_tokens=rows * seq_len, micro_batch=rows,
                      seq_len=seq_len, lr=OPTIM["lr"], weight_decay=OPTIM["weight_decay"],
                      beta1=OPTIM["betas"][0], beta2=OPTIM["betas"][1],
                      grad_clip=OPTIM["grad_clip"], warmup_steps=0, eval_every=10**9,
                      eval_batches=1, checkpoint_every=10**9, device="cpu",
                      dtype=settings.get("dtype", "float32"),
                      compile=spec["compile"])
    ends: list[float] = []
    rss_before = rss_mib()
    with tempfile.TemporaryDirectory() as run_dir:
        ends.append(time.perf_counter())
        train(model, NextToken(), source, s, Path(run_dir),
              on_step=lambda step: ends.append(time.perf_counter()), show_progress=False)
    if spec.get("profile"):
        profile_lmforge(model, inner, spec)
    return timed(ends, source.learned, source.real, source.padded, spec, rss_before,
                 totals=dataset_totals_lmforge(seqs, seq_len))


def dataset_totals_lmforge(seqs: list, seq_len: int) -> dict:
    return {"loss_tokens": sum(sum(m[1:seq_len + 1]) for _, m in seqs),
            "conversations": len(seqs)}


def profile_lmforge(model, inner, spec: dict) -> None:
    """Where a packed step's time goes: torch.profiler over a few steps, top ops by self CPU."""
    from torch.profiler import ProfilerActivity, profile

    from lmforge.train.objectives import NextToken

    opt = torch.optim.AdamW(model.parameters(), lr=OPTIM["lr"], fused=True)
    model.train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in range(3):
            for batch in inner.step_batches(step, 1, torch.device("cpu")):
                loss, _ = NextToken()(model, batch)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25),
          file=sys.stderr)


def child_trl(spec: dict, settings: dict) -> dict:
    import datasets
    import transformers
    from trl import SFTConfig, SFTTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    folder = spec["model"]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    data = datasets.Dataset.from_list([{"messages": m} for m in read_conversations(spec)])
    packed = settings.get("packing", False)
    total = spec["warmup"] + spec["steps"] + 1
    config = SFTConfig(
        output_dir=spec["scratch"], report_to="none", use_cpu=True, disable_tqdm=True,
        save_strategy="no", max_steps=total, seed=0, assistant_only_loss=True,
        max_length=spec["seq_len"] + 1,  # what lmforge reads: seq_len inputs + the last target
        per_device_train_batch_size=spec["rows"] if packed else spec["unpacked_rows"],
        learning_rate=OPTIM["lr"], weight_decay=OPTIM["weight_decay"],
        adam_beta1=OPTIM["betas"][0], adam_beta2=OPTIM["betas"][1],
        max_grad_norm=OPTIM["grad_clip"], torch_compile=spec["compile"], **settings)
    learned: list[int] = []
    real: list[int] = []
    padded: list[int] = []
    ends: list[float] = []

    class Timer(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            learned.append(int((inputs["labels"][:, 1:] != -100).sum()))
            padded.append(int(inputs["input_ids"].numel()))
            if "attention_mask" in inputs:
                real.append(int(inputs["attention_mask"].sum()))
            else:  # padding-free: one row of concatenated sequences, no padding
                real.append(int(inputs["input_ids"].numel()))
            return super().training_step(model, inputs, *args, **kwargs)

    trainer = Counting(model=model, args=config, train_dataset=data, processing_class=tok,
                       callbacks=[Timer()])
    # Every sequence's first label is its <|bos|>, never learned: all labels count.
    totals = {"loss_tokens": sum(sum(x != -100 for x in row)
                                 for row in trainer.train_dataset["labels"]),
              "conversations": len(data)}
    rss_before = rss_mib()
    ends.append(time.perf_counter())
    trainer.train()
    return timed(ends, learned, real, padded, spec, rss_before, totals=totals)


def timed(ends: list[float], learned: list[int], real: list[int], padded: list[int],
          spec: dict, rss_before: float, totals: dict) -> dict:
    """Figures of the timed steps: steps warmup+1 .. warmup+steps (1-based)."""
    w, n = spec["warmup"], spec["steps"]
    if len(ends) < w + n + 1 or len(learned) < w + n:
        raise RuntimeError(f"expected {w + n + 1} step ends, got {len(ends) - 1}")
    seconds = [ends[i + 1] - ends[i] for i in range(w, w + n)]
    loss_tokens, real_tokens = sum(learned[w:w + n]), sum(real[w:w + n])
    return {"seconds": sum(seconds), "step_s_median": statistics.median(seconds),
            "step_s_min": min(seconds), "steps": n, "loss_tokens": loss_tokens,
            "real_tokens": real_tokens, "padded_tokens": sum(padded[w:w + n]),
            "loss_tokens_per_s": loss_tokens / sum(seconds),
            "real_tokens_per_s": real_tokens / sum(seconds),
            "rss_before_train_mib": rss_before, "peak_rss_mib": peak_rss_mib(),
            "dataset": totals}


def child_main(name: str, spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    library, settings = CONTENDERS[name]
    result = (child_lmforge if library == "lmforge" else child_trl)(spec, settings)
    print("RESULT " + json.dumps(result))
    return 0


# ---- the parent: one model, one set of conversations, every contender ----------------------

def load_chat(data: str, limit: int) -> tuple[str, list[list[dict]]]:
    from lmforge.data.chat import conversation_sources

    if data == "alpaca_1k":
        if not SHARED_ALPACA.is_dir():
            print(f"{SHARED_ALPACA} not found: using pydocs-chat", file=sys.stderr)
            data = "pydocs-chat"
        else:
            data = str(SHARED_ALPACA)
    convs = conversation_sources([data])
    return data, [c.messages for c in convs[:limit or None]]


def prepare(args: argparse.Namespace, work: Path) -> dict:
    """Tokenizer, model folder and conversations on disk; returns the children's spec."""
    from lmforge.data.chat import encode_conversation
    from lmforge.data.corpora.pydocs import build_pydocs_corpus
    from lmforge.design.spec import from_preset
    from lmforge.model.init import initialize
    from lmforge.model.io import save_model_dir
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import train_tokenizer
    from lmforge.train.batches import pack_rows

    t0 = time.perf_counter()
    d = from_preset(args.shape)
    # A byte-level BPE of the design's vocabulary, trained on the embedded corpus (~2 s).
    tok = train_tokenizer((doc.text for doc in build_pydocs_corpus()), d.vocab_size,
                          show_progress=False)
    model = initialize(Transformer(d), "gpt2", seed=0)
    save_model_dir(model, work / "model", tok, f"# sft bench ({args.shape})\n")
    source, convs = load_chat(args.data, args.conversations)
    with open(work / "conversations.jsonl", "w", encoding="utf-8") as f:
        for m in convs:
            f.write(json.dumps({"messages": m}, ensure_ascii=False) + "\n")
    seq_len = args.seq_len or d.context_length
    seqs = [encode_conversation(tok, m, max_tokens=seq_len + 1) for m in convs]
    per_row = len(seqs) / len(pack_rows(seqs, seq_len))
    lengths = [len(ids) for ids, _ in seqs]
    return {"model": str(work / "model"), "conversations": str(work / "conversations.jsonl"),
            "scratch": str(work / "scratch"), "design": d.to_dict(), "shape": args.shape,
            "data": source, "n_conversations": len(convs), "seq_len": seq_len,
            "rows": args.rows, "unpacked_rows": max(1, round(args.rows * per_row)),
            "conversations_per_packed_row": per_row, "tokens_mean": float(np.mean(lengths)),
            "tokens_max": max(lengths), "warmup": args.warmup, "steps": args.steps,
            "threads": args.threads, "compile": args.compile, "profile": args.profile,
            "setup_s": time.perf_counter() - t0}


def run_child(name: str, spec_path: Path) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--spec", str(spec_path)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.stderr and json.loads(spec_path.read_text()).get("profile"):
        print(f"--- {name} ---\n{done.stderr}", file=sys.stderr)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not lines:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
        raise RuntimeError(f"{name} failed (exit {done.returncode}):\n{tail}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def run_rounds(names: list[str], rounds: int, run_one, quiet: bool = False
               ) -> dict[str, list[dict]]:
    """Every contender `rounds` times, the order rotating each round so that no contender
    always runs first (or always just after the slowest); a contender's results in run order."""
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if not quiet:
                print(f"round {r + 1}: {name} ...", file=sys.stderr, flush=True)
            results[name].append(run_one(name))
    return results


def installed(package: str) -> str | None:
    """The installed version of a package, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def precision(name: str) -> str:
    """bf16 for autocast contenders (TRL's default is bf16 on a CPU: `bf16` defaults to True)."""
    library, settings = CONTENDERS[name]
    if library == "lmforge":
        return "bf16" if settings.get("dtype") == "bfloat16" else "fp32"
    return "bf16" if settings.get("bf16", True) else "fp32"


def summarize(results: dict[str, list[dict]]) -> list[dict]:
    """Per contender its best round; ratios of loss tokens/s against TRL's fastest fp32
    configuration, TRL's fastest of any precision, and TRL's default."""
    rows = []
    for name, runs in results.items():
        best = max(runs, key=lambda r: r["loss_tokens_per_s"])
        rows.append({"contender": name, "precision": precision(name), **best,
                     "rounds": len(runs),
                     "loss_tokens_per_s_all": [r["loss_tokens_per_s"] for r in runs],
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                     "padding": 1 - best["real_tokens"] / max(1, best["padded_tokens"]),
                     "round_spread": max(r["loss_tokens_per_s"] for r in runs) /
                     min(r["loss_tokens_per_s"] for r in runs)})
    trl = [r for r in rows if CONTENDERS[r["contender"]][0] == "trl"]
    bases = {
        "vs_trl_fastest_fp32": max((r for r in trl if r["precision"] == "fp32"),
                                   key=lambda r: r["loss_tokens_per_s"], default=None),
        "vs_trl_fastest": max(trl, key=lambda r: r["loss_tokens_per_s"], default=None),
        "vs_trl_default": next((r for r in trl if r["contender"] == "TRL default"), None),
    }
    for r in rows:
        for key, base in bases.items():
            r[key] = r["loss_tokens_per_s"] / base["loss_tokens_per_s"] if base else None
    for key, base in bases.items():
        for r in rows:
            r.setdefault("baselines", {})[key] = base["contender"] if base else None
    return rows


def print_table(report: dict) -> None:
    s = report["spec"]
    d = s["design"]
    print(f"\ntorch {report['torch']}, transformers {report['transformers']}, "
          f"trl {report['trl'] or '(not installed)'}, {report['threads']} threads, "
          f"{report['cpu']}")
    print(f"{s['shape']}: {d['n_layers']} layers, d_model {d['d_model']}, {d['n_heads']}/"
          f"{d['n_kv_heads']} heads, vocab {d['vocab_size']}; {s['n_conversations']} "
          f"conversations of {s['data']} ({s['tokens_mean']:.0f} tokens mean, "
          f"{s['tokens_max']} max, cut at {s['seq_len'] + 1})")
    print(f"packed: {s['rows']} rows of {s['seq_len']} a step "
          f"({s['conversations_per_packed_row']:.2f} conversations a row); "
          f"unpacked: {s['unpacked_rows']} conversations a step; "
          f"{s['warmup']} warm-up + {s['steps']} timed steps, best of {report['rounds']} "
          f"round(s)")
    if report.get("skipped"):
        print(f"skipped: {report['skipped']}")
    head = (f"{'contender':24s} {'prec':4s} {'loss tok/s':>10s} {'real tok/s':>10s} {'pad':>4s} "
            f"{'step ms':>7s} {'vs fastest fp32':>15s} {'vs fastest':>10s} {'vs default':>10s}"
            f" {'peak RSS':>9s} {'+train':>7s}")
    print(head)

    def ratio(x: float | None) -> str:
        return f"{x:.2f}x" if x else "-"

    for r in report["results"]:
        print(f"{r['contender']:24s} {r['precision']:4s} {r['loss_tokens_per_s']:10.0f} "
              f"{r['real_tokens_per_s']:10.0f} {r['padding']:4.0%} "
              f"{r['step_s_median'] * 1e3:7.0f} {ratio(r['vs_trl_fastest_fp32']):>15s} "
              f"{ratio(r['vs_trl_fastest']):>10s} {ratio(r['vs_trl_default']):>10s} "
              f"{r['peak_rss_mib']:7.0f}Mi {r['peak_rss_mib'] - r['rss_before_train_mib']:5.0f}Mi")
    if report["results"] and report["results"][0]["baselines"]["vs_trl_fastest"]:
        b = report["results"][0]["baselines"]
        print(f"TRL fastest fp32: {b['vs_trl_fastest_fp32']}; fastest: {b['vs_trl_fastest']}; "
              f"default: {b['vs_trl_default']}")
    uneven = [r["contender"] for r in report["results"] if r["round_spread"] > 1.15]
    if uneven:  # another process took a core: threads wait on each other, steps slow 2-10x
        print(f"rounds differ by more than 15% for {', '.join(uneven)}: the machine was "
              f"busy; the best round is kept, rerun when it is quiet")
    totals = {r["contender"]: r["dataset"]["loss_tokens"] for r in report["results"]}
    print(f"loss tokens in the whole set, per contender: {totals}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="alpaca_1k",
                   help="alpaca_1k (../shared/data), pydocs-chat, or a chat file/folder")
    p.add_argument("--conversations", type=int, default=0, help="use the first N (0: all)")
    p.add_argument("--shape", default="tiny", help="a design preset (lmforge.design.spec)")
    p.add_argument("--seq-len", type=int, default=0, help="0: the design's context length")
    p.add_argument("--rows", type=int, default=8, help="packed rows a step")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per contender")
    p.add_argument("--steps", type=int, default=None, help="timed steps per contender")
    p.add_argument("--rounds", type=int, default=None,
                   help="run every contender this often, order rotating; keep the best")
    p.add_argument("--contenders", default=None, help=f"comma list of {', '.join(CONTENDERS)}")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    p.add_argument("--compile", action="store_true",
                   help="lmforge compile=True (per block) and TRL torch_compile=True")
    p.add_argument("--profile", action="store_true",
                   help="after its run, torch.profiler over 3 packed lmforge steps (stderr)")
    p.add_argument("--quick", action="store_true", help="few steps, four contenders: a smoke run")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args.child, args.spec)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.steps = args.steps if args.steps is not None else (3 if args.quick else 20)
    args.rounds = args.rounds or (1 if args.quick else 2)
    if args.quick and not args.conversations:
        args.conversations = 200
    names = args.contenders.split(",") if args.contenders else (
        QUICK if args.quick else list(CONTENDERS))
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        p.error(f"unknown contender(s) {unknown}; choose from {list(CONTENDERS)}")
    skipped = None
    if installed("trl") is None:
        skipped = ("TRL is not installed: `pip install -c constraints.txt trl` to compare "
                   "against its SFTTrainer; running lmforge alone")
        names = [n for n in names if CONTENDERS[n][0] != "trl"]
        print(skipped, file=sys.stderr)
    from lmforge.runtime import cpu_name

    with tempfile.TemporaryDirectory(prefix="sft_bench_") as tmp:
        work = Path(tmp)
        spec = prepare(args, work)
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        results = run_rounds(names, args.rounds, lambda name: run_child(name, spec_path),
                             quiet=args.json)
    report = {"torch": torch.__version__, "transformers": installed("transformers"),
              "trl": installed("trl"), "threads": args.threads or torch.get_num_threads(),
              "cpu": cpu_name(), "cores": os.cpu_count(), "rounds": args.rounds,
              "command": " ".join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])]),
              "skipped": skipped, "spec": spec, "results": summarize(results)}
    for r in report["results"]:
        if not math.isfinite(r["loss_tokens_per_s"]):
            raise RuntimeError(f"{r['contender']}: no tokens timed")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
