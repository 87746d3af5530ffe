"""Metrics and their standard errors.

Every reported number comes with a standard error: the sample standard error of the mean
(ddof=1) for per-item scores, and a seeded bootstrap over items for ratios of sums (bits
per byte, perplexities), where items of different length make the plain mean wrong.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

LN2 = math.log(2)


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error sqrt(var(ddof=1) / n); stderr 0 for fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), 0.0
    if x.size < 2:
        return float(x[0]), 0.0
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def bootstrap_stderr(values: Sequence, stat: Callable = np.mean, iters: int = 1000,
                     seed: int = 0) -> float:
    """Standard deviation of `stat` over `iters` resamples (with replacement) of the items.

    `values` may be 2-D (one row per item, e.g. [nll, bytes]) for ratio statistics; `stat`
    receives the resampled array. Seeded, so a report is reproducible.
    """
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    stats = [stat(x[rng.integers(0, n, n)]) for _ in range(iters)]
    return float(np.std(stats, ddof=1))


def centered(acc: float, chance: float) -> float:
    """Accuracy rescaled so chance is 0 and perfect is 1: (acc - chance) / (1 - chance)."""
    return (acc - chance) / (1.0 - chance)


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    """Total negative log-likelihood in nats over UTF-8 bytes, in bits per byte."""
    return total_nll_nats / (LN2 * n_bytes)


def word_perplexity(total_nll_nats: float, n_words: int) -> float:
    """exp(total nll / words): per-word perplexity, comparable across tokenizers
    (lm-eval's wikitext `word_perplexity`)."""
    return math.exp(total_nll_nats / n_words)


def _ratio_stat(column_scale: float, transform: Callable[[float], float]) -> Callable:
    def stat(rows: np.ndarray) -> float:
        return transform(rows[:, 0].sum() / (column_scale * rows[:, 1].sum()))
    return stat


def bpb_and_stderr(nll_nats: Sequence[float], n_bytes: Sequence[int], iters: int = 1000,
                   seed: int = 0) -> tuple[float, float]:
    """Bits per byte of a set of documents, sum(nll) / sum(bytes), and its bootstrap
    standard error over documents."""
    rows = np.column_stack([np.asarray(nll_nats, float), np.asarray(n_bytes, float)])
    stat = _ratio_stat(LN2, lambda r: r)
    return float(stat(rows)), bootstrap_stderr(rows, stat, iters, seed)


def word_perplexity_and_stderr(nll_nats: Sequence[float], n_words: Sequence[int],
                               iters: int = 1000, seed: int = 0) -> tuple[float, float]:
    rows = np.column_stack([np.asarray(nll_nats, float), np.asarray(n_words, float)])
    stat = _ratio_stat(1.0, math.exp)
    return float(stat(rows)), bootstrap_stderr(rows, stat, iters, seed)


def perplexity_and_stderr(loglikelihoods: Sequence[float], iters: int = 1000, seed: int = 0
                          ) -> tuple[float, float]:
    """lm-eval's `perplexity` aggregation, exp(-mean(loglikelihood)) over items (LAMBADA),
    with a bootstrap standard error."""
    def stat(x: np.ndarray) -> float:
        return math.exp(-float(np.mean(x)))
    x = np.asarray(loglikelihoods, float)
    return stat(x), bootstrap_stderr(x, stat, iters, seed)


# ---- generation metrics ------------------------------------------------------------------
# Answer normalization of the SQuAD v1.1 evaluation script (Rajpurkar et al. 2016,
# `normalize_answer` in evaluate-v1.1.py): lowercase, drop punctuation, drop the articles
# a/an/the, collapse whitespace. EM and token F1 take the best over the references.

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(pred: str, refs: Sequence[str]) -> float:
    """1.0 if the normalized prediction equals any normalized reference."""
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(r) for r in refs))


def contains(pred: str, refs: Sequence[str]) -> float:
    """1.0 if any normalized reference occurs in the normalized prediction."""
    p = f" {normalize_answer(pred)} "
    return float(any(f" {normalize_answer(r)} " in p for r in refs if normalize_answer(r)))


def regex_match(pred: str, pattern: str) -> float:
    """1.0 if the pattern is found anywhere in the prediction."""
    return float(re.search(pattern, pred) is not None)


def _f1(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(ref_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(pred: str, refs: Sequence[str]) -> float:
    """SQuAD token-overlap F1 of normalized answers, best over the references."""
    p = normalize_answer(pred).split()
    return max((_f1(p, normalize_answer(r).split()) for r in refs), default=0.0)
