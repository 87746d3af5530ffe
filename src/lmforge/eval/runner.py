"""Run tasks against a model and return the report dict everything else reads.

```
{"suite", "settings": {...}, "tasks": {name: {"kind", "source", "n", "num_fewshot",
 "chance" (multiple choice), "metrics": {metric: {"value", "stderr"}},
 "skipped": {"n", "reasons": {reason: [item index, ...]}},
 "items": [{"index", "scores": {...}, ...}]}}, "seconds"}
```
Every item carries its per-item scores so two reports on the same task compare item by item
(paired); the first `samples` items also carry the prompt and the model's output.

An item the scorer cannot score (a choice or continuation longer than the model's context:
lm-eval's HF backend stops the whole run on one) is left out of the metrics and listed under
`skipped` with the reason; `n` counts the items scored. One such item never stops a suite.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmforge.engine.generate import generate_tokens
from lmforge.engine.sampling import SamplingParams
from lmforge.errors import LmforgeError
from lmforge.eval import metrics as M
from lmforge.eval.render import (
    fewshot_examples,
    loglikelihood_request,
    mc_requests,
    render_context,
    render_prompt,
)
from lmforge.eval.scorer import LoglikelihoodScorer
from lmforge.eval.tasks import (
    GenerationTask,
    LoglikelihoodTask,
    MultipleChoiceTask,
    PerplexityTask,
    Task,
)
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer


@dataclass
class EvalSettings:
    batch_size: int = 32
    seed: int = 0
    limit: int | None = None  # caps every task's items (None: each task's own limit)
    add_bos: bool = True
    device: str = "cpu"
    max_new_tokens: int = 64
    style: str = "plain"  # "plain" for base models, "chat" for chat models
    samples: int = 10  # items per task whose prompt and output go into the report


def progress_enabled(progress: bool) -> bool:
    return progress and not os.environ.get("LMFORGE_NO_PROGRESS")


def evaluate(model: Transformer, tok: Tokenizer, tasks: Sequence[Task],
             settings: EvalSettings | None = None, progress: bool = True,
             suite: str = "custom") -> dict[str, Any]:
    """Evaluate `model` on `tasks`; returns the JSON-able report."""
    settings = settings or EvalSettings()
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LmforgeError(f"task name(s) given twice: {', '.join(dupes)}",
                           hint="give every task a distinct name")
    model = model.to(settings.device)
    if torch.device(settings.device).type == "cpu" and next(model.parameters()).dtype \
            != torch.float32:
        model = model.float()  # CPU math stays fp32
    start = time.perf_counter()
    runner = _Runner(model, tok, settings, progress_enabled(progress))
    report_tasks = {}
    for task in tasks:
        report_tasks[task.name] = runner.run(task)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return {
        "suite": suite,
        "settings": {"seed": settings.seed, "batch_size": settings.batch_size,
                     "backend": "lmforge", "device": settings.device, "dtype": dtype,
                     "limit": settings.limit, "add_bos": settings.add_bos,
                     "style": settings.style, "max_new_tokens": settings.max_new_tokens},
        "tasks": report_tasks,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _metric(value: float, stderr: float) -> dict[str, float]:
    return {"value": float(value), "stderr": float(stderr)}


class _Runner:
    def __init__(self, model: Transformer, tok: Tokenizer, settings: EvalSettings,
                 progress: bool):
        self.model, self.tok, self.s, self.progress = model, tok, settings, progress
        self.scorer = LoglikelihoodScorer(model, settings.batch_size, prefix_id=tok.bos_id)

    def run(self, task: Task) -> dict[str, Any]:
        items = task.load_items()
        if self.s.limit is not None:
            items = items[:self.s.limit]
        pool = task.load_fewshot_pool() if task.num_fewshot else []
        shots = [fewshot_examples(task, item, pool) for item in items]
        self.scorer.desc = task.name
        if isinstance(task, MultipleChoiceTask):
            body = self._multiple_choice(task, items, shots)
        elif isinstance(task, LoglikelihoodTask):
            body = self._loglikelihood(task, items, shots)
        elif isinstance(task, PerplexityTask):
            body = self._perplexity(items)
        elif isinstance(task, GenerationTask):
            body = self._generation(task, items, shots)
        else:
            raise LmforgeError(f"task '{task.name}': unknown task type {type(task).__name__}")
        skipped = body.pop("skipped", {})
        if skipped:
            counts = "; ".join(f"{len(ix)} {why}" for why, ix in skipped.items())
            print(f"note: {task.name}: skipped {sum(map(len, skipped.values()))} of "
                  f"{len(items)} items ({counts}); the report lists them", file=sys.stderr)
        head = {"kind": task.kind, "source": str(task.path), "n": len(body["items"]),
                "num_fewshot": task.num_fewshot,
                "skipped": {"n": sum(map(len, skipped.values())), "reasons": skipped}}
        return {**head, **body}

    def _sample(self, k: int) -> bool:
        return k < self.s.samples

    def _scorable(self, items: list, shots: list, requests: list[list]
                  ) -> tuple[list, list, list[list], dict[str, list[int]]]:
        """Items (with their shots and requests) whose every request can be scored, and
        reason -> indexes of the others. An item is kept or dropped whole: a multiple-choice
        item with one unscorable choice has no argmax to take."""
        keep: tuple[list, list, list[list]] = ([], [], [])
        skipped: dict[str, list[int]] = {}
        for item, fs, reqs in zip(items, shots, requests, strict=True):
            why = next((w for _, cont in reqs
                        if (w := self.scorer.unscorable(cont)) is not None), None)
            if why is None:
                for kept, x in zip(keep, (item, fs, reqs), strict=True):
                    kept.append(x)
            else:
                skipped.setdefault(why, []).append(item.index)
        return *keep, skipped

    # ---- multiple choice ---------------------------------------------------------------

    def _multiple_choice(self, task: MultipleChoiceTask, items, shots) -> dict[str, Any]:
        per_item = [mc_requests(task, item, self.tok, self.s.style, fs, self.s.add_bos)
                    for item, fs in zip(items, shots, strict=True)]
        items, shots, per_item, skipped = self._scorable(items, shots, per_item)
        if not items:
            return {"metrics": {}, "items": [], "skipped": skipped}
        requests, spans = [], []
        for reqs in per_item:
            spans.append((len(requests), len(reqs)))
            requests += reqs
        results = self.scorer.loglikelihood(requests, self.progress)
        acc, acc_norm, acc_c, chances, out_items = [], [], [], [], []
        for k, (item, (at, n)) in enumerate(zip(items, spans, strict=True)):
            lls = np.array([results[at + j][0] for j in range(n)])
            # lm-eval divides by the character length of each choice string (without the
            # delimiter); under partial scoring its "choices" are the filled-in contexts.
            texts = ([item.context + c for c in item.choices] if item.suffix is not None
                     else item.choices)
            lengths = np.array([float(len(t)) for t in texts])
            pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / lengths))
            chance = 1.0 / len(item.choices)
            a, an = float(pred == item.gold), float(pred_norm == item.gold)
            acc.append(a)
            acc_norm.append(an)
            acc_c.append(M.centered(a, chance))
            chances.append(chance)
            row = {"index": item.index, "scores": {"acc": a, "acc_norm": an},
                   "pred": pred, "pred_norm": pred_norm, "gold": item.gold,
                   "loglikelihoods": [round(float(x), 6) for x in lls]}
            if self._sample(k):
                row["prompt"] = render_context(task, item, shots[k])
                row["output"] = item.choices[pred]
            out_items.append(row)
        return {"chance": float(np.mean(chances)),
                "metrics": {"acc": _metric(*M.mean_and_stderr(acc)),
                            "acc_norm": _metric(*M.mean_and_stderr(acc_norm)),
                            "acc_centered": _metric(*M.mean_and_stderr(acc_c))},
                "items": out_items, "skipped": skipped}

    # ---- one continuation per item -----------------------------------------------------

    def _loglikelihood(self, task: LoglikelihoodTask, items, shots) -> dict[str, Any]:
        per_item = [[loglikelihood_request(task, item, self.tok, fs, self.s.add_bos)]
                    for item, fs in zip(items, shots, strict=True)]
        items, shots, per_item, skipped = self._scorable(items, shots, per_item)
        if not items:
            return {"metrics": {}, "items": [], "skipped": skipped}
        results = self.scorer.loglikelihood([r for (r,) in per_item], self.progress)
        lls = [r[0] for r in results]
        greedy = [float(r[1]) for r in results]
        n_bytes = [max(len(item.continuation.encode("utf-8")), 1) for item in items]
        out_items = []
        for k, (item, (ll, g), nb) in enumerate(zip(items, results, n_bytes, strict=True)):
            row = {"index": item.index,
                   "scores": {"acc": float(g), "loglikelihood": ll,
                              "bpb": M.bits_per_byte(-ll, nb)}}
            if self._sample(k):
                row["prompt"] = render_context(task, item, shots[k])
                row["output"] = item.continuation
            out_items.append(row)
        seed = self.s.seed
        metrics = {"acc": lambda: _metric(*M.mean_and_stderr(greedy)),
                   "perplexity": lambda: _metric(*M.perplexity_and_stderr(lls, seed=seed)),
                   "bpb": lambda: _metric(*M.bpb_and_stderr([-x for x in lls], n_bytes,
                                                            seed=seed))}
        return {"metrics": {name: metrics[name]() for name in task.metrics},
                "items": out_items, "skipped": skipped}

    # ---- whole documents ---------------------------------------------------------------

    def _perplexity(self, items) -> dict[str, Any]:
        tokens = self.tok.encode_batch([item.text for item in items])
        lls = self.scorer.rolling_loglikelihood(tokens, self.progress)
        nll = [-x for x in lls]
        out_items = []
        for k, (item, x, toks) in enumerate(zip(items, nll, tokens, strict=True)):
            row = {"index": item.index,
                   "scores": {"bpb": M.bits_per_byte(x, item.n_bytes),
                              "nll": x, "tokens": len(toks)}}
            if self._sample(k):
                row["prompt"] = item.text[:200]
            out_items.append(row)
        seed = self.s.seed
        byte_ppl_value = math.exp(sum(nll) / sum(i.n_bytes for i in items))
        bpb = M.bpb_and_stderr(nll, [i.n_bytes for i in items], seed=seed)
        return {"metrics": {
                    "bpb": _metric(*bpb),
                    "word_perplexity": _metric(*M.word_perplexity_and_stderr(
                        nll, [i.words for i in items], seed=seed)),
                    # byte perplexity = 2 ** bpb; its stderr by the delta method
                    "byte_perplexity": _metric(byte_ppl_value,
                                               byte_ppl_value * math.log(2) * bpb[1])},
                "items": out_items}

    # ---- generation --------------------------------------------------------------------

    def _generation(self, task: GenerationTask, items, shots) -> dict[str, Any]:
        params = SamplingParams(temperature=0.0, max_new_tokens=task.max_new_tokens
                                or self.s.max_new_tokens, seed=self.s.seed)
        stop_ids = (self.tok.bos_id, self.tok.eos_id, self.tok.end_id)
        context = self.model.design.context_length
        scores, out_items = [], []
        bar = _task_bar(len(items), self.progress, task.name)
        for k, (item, fs) in enumerate(zip(items, shots, strict=True)):
            prompt = render_prompt(task, item, self.tok, self.s.style, fs)
            ids = prompt.ids if prompt.ids is not None else (
                [self.tok.bos_id] * self.s.add_bos + self.tok.encode(prompt.text))
            ids = ids[-(context - params.max_new_tokens):] or [self.tok.bos_id]
            output = _generate_until(self.model, self.tok, ids, params, stop_ids, task.stop)
            score = _gen_score(task, output, item.references)
            scores.append(score)
            row = {"index": item.index, "scores": {task.metric: score}}
            if self._sample(k):
                row.update(prompt=prompt.text, output=output, references=item.references)
            out_items.append(row)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return {"metrics": {task.metric: _metric(*M.mean_and_stderr(scores))},
                "items": out_items}


def _generate_until(model: Transformer, tok: Tokenizer, ids: list[int],
                    params: SamplingParams, stop_ids: tuple[int, ...],
                    stop: Sequence[str]) -> str:
    """Greedy text after the prompt, cut at the first stop string (lm-eval's `until`)."""
    out: list[int] = []
    text = ""
    for token in generate_tokens(model, ids, params, stop_ids=stop_ids):
        if token in stop_ids:
            break
        out.append(token)
        text = tok.decode(out)
        if any(s and s in text for s in stop):
            break
    cuts = [text.index(s) for s in stop if s and s in text]
    return text[:min(cuts)] if cuts else text


def _gen_score(task: GenerationTask, output: str, refs: list[str]) -> float:
    if task.metric == "exact_match":
        return M.exact_match(output, refs)
    if task.metric == "contains":
        return M.contains(output, refs)
    if task.metric == "regex":
        return M.regex_match(output, task.regex or "")
    return M.token_f1(output, refs)


def _task_bar(total: int, enabled: bool, desc: str):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, disable=None)  # None: off when not a tty
