"""Word, line and paragraph splits of one document, computed once and shared by the filters.

Every quality filter reads the same few views of a document (its words, its lines, its
paragraphs). `doc_stats(text)` returns a `DocStats` whose views are computed on first use and
remembered; the last document's stats are kept, so the next filter in the chain that looks at
the same text reuses them instead of splitting again (a filter that edits the text, such as
C4, naturally starts a fresh one).

Words follow the shape of spaCy's rule-based English tokenizer, which is what datatrove's
filters use for English (see `words.py`).
"""

from __future__ import annotations

import re
import string
import unicodedata
from functools import cached_property

from lmforge.curate.words import split_words

# Sentence-ending marks of the major scripts (Unicode Sentence_Terminal, UAX #29): Latin,
# CJK full stops and full-width forms, Devanagari danda, Arabic and Urdu, Armenian,
# Ethiopic, Myanmar, Khmer, Syriac, and the doubled marks (!!, ?!, ...).
TERMINAL_PUNCTUATION: tuple[str, ...] = (
    ".", "!", "?", "\u3002", "\uff0e", "\uff01", "\uff1f", "\uff61", "\u0964", "\u0965",
    "\u061f", "\u06d4", "\u061e", "\u0589", "\u1362", "\u1367", "\u1368", "\u104a", "\u104b",
    "\u17d4", "\u17d5", "\u0700", "\u0701", "\u0702", "\u203c", "\u203d", "\u2047", "\u2048",
    "\u2049", "\ufe52", "\ufe56", "\ufe57",
)

# A "symbol word" is made only of punctuation: Unicode category P, ASCII's symbols
# ($+<=>^`|~) and control characters. Other symbols (™, °, £, ©, emoji) count as words,
# as they do for datatrove's Gopher filter: with them counted as symbols, 2 of the 10,026
# TinyStories texts read without encoding repair ("â€™" holds a "™") fell on the other side
# of the 50-word minimum, and across ../shared/data 512 tokens were read differently, not 96.
_ASCII_PUNCT = frozenset(string.punctuation)


def _is_punct_char(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat[0] == "P" or ch in _ASCII_PUNCT or cat == "Cc"


_PUNCT_CACHE: dict[str, bool] = {}


def is_symbol_word(word: str) -> bool:
    """True when every character of `word` is punctuation ("...", "--", "#", "$")."""
    if word.isalnum():
        return False
    hit = _PUNCT_CACHE.get(word)
    if hit is None:
        hit = all(_is_punct_char(ch) for ch in word)
        if len(_PUNCT_CACHE) < 100_000:  # bounded: tokens of unusual text are unbounded
            _PUNCT_CACHE[word] = hit
    return hit


def count_sentences(words: list[str]) -> int:
    """Sentences in a run of words, the way spaCy's rule-based sentencizer cuts them: a new
    sentence starts at the first non-punctuation word after a sentence-ending mark."""
    if not words:
        return 0
    sentences = 1
    seen_end = False
    for word in words:
        if word in _SENTENCE_END:
            seen_end = True
        elif seen_end and not is_symbol_word(word):
            sentences += 1
            seen_end = False
    return sentences


_SENTENCE_END = frozenset(TERMINAL_PUNCTUATION) | {"...", "…"}


def duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items that repeat an earlier one, their total characters)."""
    seen: set[str] = set()
    n_dup = chars = 0
    for item in items:
        if item in seen:
            n_dup += 1
            chars += len(item)
        else:
            seen.add(item)
    return n_dup, chars


_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_LINE_BREAKS = re.compile(r"\n+")
_WORD_CHARS = re.compile(r"\w+")


class DocStats:
    """Lazily computed views of one document's text; each is computed at most once."""

    def __init__(self, text: str):
        self.text = text

    @cached_property
    def words(self) -> list[str]:
        return split_words(self.text)

    @cached_property
    def content_words(self) -> list[str]:
        """Words with at least one character that is not punctuation (see is_symbol_word)."""
        return [w for w in self.words if not is_symbol_word(w)]

    @cached_property
    def lines(self) -> list[str]:
        """`str.splitlines()`, blank lines included (Gopher's and C4's view of lines)."""
        return self.text.splitlines()

    @cached_property
    def nonblank_lines(self) -> list[str]:
        """Lines split on "\\n" with blank ones dropped (FineWeb's view)."""
        return [line for line in self.text.split("\n") if line.strip()]

    @cached_property
    def newline_runs_lines(self) -> list[str]:
        """Lines split on runs of "\\n" (Gopher repetition's view)."""
        return _LINE_BREAKS.split(self.text)

    @cached_property
    def paragraphs(self) -> list[str]:
        """Paragraphs split on blank lines of the stripped text."""
        return _PARAGRAPH_BREAK.split(self.text.strip())

    @cached_property
    def lower_word_set(self) -> frozenset[str]:
        """Lower-cased runs of word characters (for whole-word block lists)."""
        return frozenset(_WORD_CHARS.findall(self.text.lower()))


_last: tuple[str, DocStats] | None = None


def doc_stats(text: str) -> DocStats:
    """The stats of `text`, reused when the previous call was for the same text."""
    global _last
    last = _last
    if last is not None and (last[0] is text or last[0] == text):
        return last[1]
    stats = DocStats(text)
    _last = (text, stats)
    return stats
