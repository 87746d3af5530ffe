import math

import numpy as np
import pytest

from lmforge.eval import metrics as M


def test_mean_and_stderr_match_numpy():
    x = np.random.default_rng(0).random(50)
    mean, se = M.mean_and_stderr(x)
    assert mean == pytest.approx(x.mean())
    assert se == pytest.approx(np.std(x, ddof=1) / math.sqrt(50))
    assert M.mean_and_stderr([1.0]) == (1.0, 0.0)
    # Binary accuracy: stderr = sqrt(p (1 - p) / (n - 1)) with the sample variance.
    acc = [1.0] * 30 + [0.0] * 70
    assert M.mean_and_stderr(acc)[1] == pytest.approx(math.sqrt(0.3 * 0.7 / 99))


def test_bootstrap_is_seeded_and_near_the_analytic_stderr():
    x = np.random.default_rng(1).normal(size=400)
    a = M.bootstrap_stderr(x, iters=500, seed=3)
    assert a == M.bootstrap_stderr(x, iters=500, seed=3)
    assert a == pytest.approx(np.std(x, ddof=1) / 20, rel=0.15)
    assert M.bootstrap_stderr([2.0]) == 0.0


def test_bits_per_byte_and_ratio_over_documents():
    assert M.bits_per_byte(math.log(2) * 10, 5) == pytest.approx(2.0)
    nll, nbytes = [math.log(2) * 100, math.log(2) * 10], [100, 10]
    value, se = M.bpb_and_stderr(nll, nbytes)
    assert value == pytest.approx(1.0) and se == pytest.approx(0.0, abs=1e-12)
    # A ratio of sums, not a mean of ratios: the long document weighs more.
    value, se = M.bpb_and_stderr([math.log(2) * 200, math.log(2) * 10], [100, 10])
    assert value == pytest.approx(210 / 110) and se > 0


def test_word_perplexity_and_lambada_perplexity():
    assert M.word_perplexity(10.0, 5) == pytest.approx(math.exp(2))
    value, _ = M.perplexity_and_stderr([-1.0, -3.0])
    assert value == pytest.approx(math.exp(2.0))


def test_centered():
    assert M.centered(0.25, 0.25) == 0.0 and M.centered(1.0, 0.5) == 1.0
    assert M.centered(0.0, 0.5) == -1.0


def test_squad_normalization_exact_match_and_f1():
    # Examples in the style of SQuAD v1.1's evaluate script: case, punctuation and articles
    # do not count; F1 is over normalized tokens, best over references.
    assert M.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert M.exact_match("the Eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert M.exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert M.token_f1("Eiffel", ["Eiffel Tower"]) == pytest.approx(2 / 3)
    assert M.token_f1("in Paris France", ["Berlin", "Paris"]) == pytest.approx(0.5)
    assert M.token_f1("nothing", ["Paris"]) == 0.0
    assert M.contains("It is the Eiffel Tower, of course", ["eiffel tower"]) == 1.0
    assert M.contains("Eiffelland", ["Eiffel"]) == 0.0
    assert M.regex_match("answer: 42", r"\b42\b") == 1.0
    assert M.regex_match("answer: 421", r"\b42\b") == 0.0
