"""Gopher's quality and repetition rules (Rae et al. 2021, "Scaling Language Models:
Methods, Analysis & Insights from Training Gopher", section A.1.1 and table A1).

The thresholds are the paper's, as datatrove publishes them as defaults; the semantics follow
datatrove's `GopherQualityFilter` and `GopherRepetitionFilter` (what counts as a word, a
line, a paragraph, a duplicate), so `lmforge curate` and a datatrove pipeline keep and drop
the same documents. A threshold set to None turns that one rule off.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import accumulate
from operator import itemgetter
from typing import ClassVar

from lmforge.curate.text_stats import doc_stats, duplicates
from lmforge.errors import LmforgeError

# The eight function words Gopher requires at least two of (Rae et al. 2021, A.1.1).
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
_BULLETS = ("•", "-")  # the bullet marks datatrove counts
_ELLIPSES = ("...", "…")


def _fraction_problems(obj: object, names: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for name in names:
        value = getattr(obj, name)
        if value is not None and not 0 <= value <= 1:
            out.append((name, f"must be a fraction between 0 and 1, not {value!r}"))
    return out


def raise_problems(obj: object, problems: list[tuple[str, str]]) -> None:
    """Raise the first problem of a filter's settings as an LmforgeError."""
    if problems:
        field, message = problems[0]
        name = getattr(obj, "name", type(obj).__name__)
        raise LmforgeError(f"filter {name!r}: {field} {message}",
                           hint="fix the value in the curation recipe")


@dataclass
class GopherQualityFilter:
    """Drop documents that do not look like prose: too short or long, odd mean word length,
    too many "#" or ellipses, mostly bullets, mostly trailing ellipses, too few words with a
    letter, or fewer than two of the eight English function words."""

    name: ClassVar[str] = "gopher_quality"
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: tuple[str, ...] = GOPHER_STOP_WORDS

    def __post_init__(self) -> None:
        self.stop_words = tuple(self.stop_words)
        self._stop_set = frozenset(self.stop_words)
        raise_problems(self, self.problems())

    def problems(self) -> list[tuple[str, str]]:
        out = _fraction_problems(self, ("max_bullet_lines_ratio", "max_ellipsis_lines_ratio",
                                        "min_alpha_words_ratio"))
        if self.min_words is not None and self.max_words is not None \
                and self.min_words > self.max_words:
            out.append(("min_words", f"({self.min_words}) is larger than max_words "
                                     f"({self.max_words})"))
        return out

    def apply(self, text: str) -> tuple[str | None, str | None]:
        st = doc_stats(text)
        words = st.words
        content = st.content_words  # words that are not only punctuation
        n_content = len(content)
        if self.min_words is not None and n_content < self.min_words:
            return None, "gopher_quality:too_few_words"
        if self.max_words is not None and n_content > self.max_words:
            return None, "gopher_quality:too_many_words"
        if n_content == 0:
            return None, "gopher_quality:no_words"
        n_words = len(words)  # punctuation tokens count here, as in datatrove
        mean_len = sum(map(len, content)) / n_content
        if self.min_mean_word_length is not None and mean_len < self.min_mean_word_length:
            return None, "gopher_quality:short_words"
        if self.max_mean_word_length is not None and mean_len > self.max_mean_word_length:
            return None, "gopher_quality:long_words"
        if self.max_symbol_word_ratio is not None:
            if text.count("#") / n_words > self.max_symbol_word_ratio:
                return None, "gopher_quality:hash_ratio"
            if (text.count("...") + text.count("…")) / n_words > self.max_symbol_word_ratio:
                return None, "gopher_quality:ellipsis_ratio"
        lines = st.lines
        if self.max_bullet_lines_ratio is not None:
            bullets = sum(1 for line in lines if line.lstrip().startswith(_BULLETS))
            if bullets / len(lines) > self.max_bullet_lines_ratio:
                return None, "gopher_quality:bullet_lines"
        if self.max_ellipsis_lines_ratio is not None:
            ends = sum(1 for line in lines if line.rstrip().endswith(_ELLIPSES))
            if ends / len(lines) > self.max_ellipsis_lines_ratio:
                return None, "gopher_quality:ellipsis_lines"
        if self.min_alpha_words_ratio is not None:
            alpha = sum(1 for w in words if w.isalpha() or any(c.isalpha() for c in w))
            if alpha / n_words < self.min_alpha_words_ratio:
                return None, "gopher_quality:alpha_words"
        # Distinct stop words, matched case-sensitively like datatrove ("The" is not "the").
        if self.min_stop_words is not None \
                and len(self._stop_set.intersection(words)) < self.min_stop_words:
            return None, "gopher_quality:stop_words"
        return text, None


def _top_ngram_chars(words: list[str], n: int) -> tuple[int, int]:
    """(characters of the most frequent n-gram joined by spaces times its count, that count).
    Ties go to the n-gram seen first, as with `Counter.most_common`."""
    counts = Counter(zip(*(words[i:] for i in range(n))))
    gram, count = max(counts.items(), key=itemgetter(1))
    return (sum(map(len, gram)) + n - 1) * count, count


def _duplicated_ngram_chars(words: list[str], n: int, prefix: list[int]) -> int:
    """Characters (without spaces) of n-grams that repeat an earlier one, scanning left to
    right and jumping past each repeat, so overlapping repeats are not counted twice."""
    grams = list(zip(*(words[i:] for i in range(n))))
    if len(set(grams)) == len(grams):
        return 0
    seen: set[tuple[str, ...]] = set()
    chars = idx = 0
    total = len(grams)
    while idx < total:
        gram = grams[idx]
        if gram in seen:
            chars += prefix[idx + n] - prefix[idx]
            idx += n
        else:
            seen.add(gram)
            idx += 1
    return chars


@dataclass
class GopherRepetitionFilter:
    """Drop documents that repeat themselves: duplicated lines or paragraphs (by count and by
    characters), one n-gram (n = 2..4) covering too much of the text, or too many characters
    in repeated n-grams (n = 5..10)."""

    name: ClassVar[str] = "gopher_repetition"
    max_dup_line_frac: float | None = 0.3
    max_dup_para_frac: float | None = 0.3
    max_dup_line_char_frac: float | None = 0.2
    max_dup_para_char_frac: float | None = 0.2
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
    # Below this many words the n-gram rules are skipped (0: never, as in Gopher): on a short
    # chat turn, "hello world" is one 2-gram covering the whole text.
    min_words_for_ngrams: int = 0

    def __post_init__(self) -> None:
        self.top_n_grams = tuple((int(n), float(f)) for n, f in self.top_n_grams)
        self.dup_n_grams = tuple(sorted((int(n), float(f)) for n, f in self.dup_n_grams))
        raise_problems(self, self.problems())

    def problems(self) -> list[tuple[str, str]]:
        out = _fraction_problems(self, ("max_dup_line_frac", "max_dup_para_frac",
                                        "max_dup_line_char_frac", "max_dup_para_char_frac"))
        for field in ("top_n_grams", "dup_n_grams"):
            for n, frac in getattr(self, field):
                if n < 1 or not 0 <= frac <= 1:
                    out.append((field, f"needs pairs (n >= 1, fraction in [0, 1]), got "
                                       f"({n}, {frac})"))
        return out

    def apply(self, text: str) -> tuple[str | None, str | None]:
        if not text:
            return None, "gopher_repetition:empty"
        st = doc_stats(text)
        n_chars = len(text)
        paragraphs = st.paragraphs
        n_dup, dup_chars = duplicates(paragraphs)
        if self.max_dup_para_frac is not None and n_dup / len(paragraphs) > self.max_dup_para_frac:
            return None, "gopher_repetition:dup_para_frac"
        if self.max_dup_para_char_frac is not None \
                and dup_chars / n_chars > self.max_dup_para_char_frac:
            return None, "gopher_repetition:dup_para_char_frac"
        lines = st.newline_runs_lines
        n_dup, dup_chars = duplicates(lines)
        if self.max_dup_line_frac is not None and n_dup / len(lines) > self.max_dup_line_frac:
            return None, "gopher_repetition:dup_line_frac"
        if self.max_dup_line_char_frac is not None \
                and dup_chars / n_chars > self.max_dup_line_char_frac:
            return None, "gopher_repetition:dup_line_char_frac"

        words = st.words
        if len(words) < self.min_words_for_ngrams:
            return text, None
        any_repeat = True  # does any 2-gram occur twice? if not, no longer n-gram does either
        for n, frac in self.top_n_grams:
            if len(words) < n:
                continue
            if any_repeat:
                chars, count = _top_ngram_chars(words, n)
                if n == 2 and count == 1:
                    any_repeat = False
            else:  # every n-gram occurs once: the first one is "the most frequent"
                chars = sum(map(len, words[:n])) + n - 1
            if chars / n_chars > frac:
                return None, f"gopher_repetition:top_{n}gram"
        if not any_repeat:
            return text, None
        prefix = [0, *accumulate(map(len, words))]
        for n, frac in self.dup_n_grams:
            chars = _duplicated_ngram_chars(words, n, prefix) if len(words) >= n else 0
            if chars / n_chars > frac:
                return None, f"gopher_repetition:dup_{n}gram"
            if chars == 0:
                break  # no repeated n-gram means no repeated longer one either
        return text, None
