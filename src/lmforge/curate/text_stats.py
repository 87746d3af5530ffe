"""Word, line and paragraph splits of one document, computed once and shared by the filters.

Every quality filter reads the same few views of a document (its words, its lines, its
paragraphs). `doc_stats(text)` returns a `DocStats` whose views are computed on first use and
remembered; the last document's stats are kept, so the next filter in the chain that looks at
the same text reuses them instead of splitting again (a filter that edits the text, such as
C4, naturally starts a fresh one).

Words follow the shape of spaCy's rule-based English tokenizer, which is what datatrove's
filters use for English: punctuation is split off as its own token ("Hello," -> "Hello", ","),
clitics are split ("can't" -> "ca", "n't"; "Tom's" -> "Tom", "'s"), hyphenated words are split
at the hyphen, while numbers ("3.5", "1,000", "10:30"), abbreviations ("e.g.", "Mr.") and
URLs stay whole. The thresholds the Gopher and FineWeb rules publish were tuned with such
tokens (punctuation counts as a word in the alphabetic-word ratio), so matching that shape
matters more than linguistic finesse. It is a plain loop over `str.split()` chunks: most
chunks are plain words and cost one `isalnum()` call.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cached_property

# Sentence-ending marks of the major scripts (Unicode Sentence_Terminal, UAX #29): Latin,
# CJK full stops and full-width forms, Devanagari danda, Arabic and Urdu, Armenian,
# Ethiopic, Myanmar, Khmer, Syriac, and the doubled marks (!!, ?!, ...).
TERMINAL_PUNCTUATION: tuple[str, ...] = (
    ".", "!", "?", "\u3002", "\uff0e", "\uff01", "\uff1f", "\uff61", "\u0964", "\u0965",
    "\u061f", "\u06d4", "\u061e", "\u0589", "\u1362", "\u1367", "\u1368", "\u104a", "\u104b",
    "\u17d4", "\u17d5", "\u0700", "\u0701", "\u0702", "\u203c", "\u203d", "\u2047", "\u2048",
    "\u2049", "\ufe52", "\ufe56", "\ufe57",
)

# Characters spaCy's English tokenizer splits off the front and the back of a chunk.
_PREFIX_CHARS = frozenset("\"'“‘„«([{<*$£€¥#§¿¡`…")
_SUFFIX_CHARS = frozenset("\"'”’»)]}>*%.,!?;:…`—–")
# Clitics split off only after these words (spaCy lists them as exceptions): "Sam'll" stays.
_CLITIC_HOSTS = frozenset(
    "i you he she it we they there that who what where when why how this here let".split())
_CLITICS = ("'ll", "'re", "'ve", "'d", "'m", "’ll", "’re", "’ve", "’d", "’m")
# Abbreviations that keep their final period (a subset of spaCy's English exceptions).
_ABBREVIATIONS = frozenset(
    "Mr. Mrs. Ms. Dr. St. Jr. Sr. Prof. Inc. Ltd. Co. Corp. Mt. vs. Gen. Gov. Sen. Rep. Rev. "
    "Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec.".split())
_WHOLE_WORD_SPLITS = {"cannot": ("can", "not"), "Cannot": ("Can", "not"),
                      "gonna": ("gon", "na"), "gotta": ("got", "ta")}
# Dotted abbreviations ("e.g.", "U.S.", "p.m.", "Ph.D.") and a single letter ("A.").
_DOTTED = re.compile(r"[A-Za-z]\.|(?:[A-Za-z]\.){2,}|Ph\.D\.")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.ASCII)
# Infixes: an ellipsis anywhere, a dash or slash or "=" between letters, a comma or ":"
# between letters, a period from lower case to upper case ("end.Next").
_INFIX = re.compile(
    r"(\.{3,}|…|(?<=[^\W_])(?:--+|[-–—/=])(?=[^\W\d_])|(?<=\d)[-+*/^=](?=\d)"
    r"|(?<=[^\W\d_])[,:](?=[^\W\d_])|(?<=[a-z])\.(?=[A-Z]))")

# A word made only of these is a "symbol word" (Gopher counts words with at least one
# character outside punctuation and symbols).
_SYMBOL_CATEGORIES = ("P", "S")


def _is_punct_char(ch: str) -> bool:
    return unicodedata.category(ch)[0] in _SYMBOL_CATEGORIES


_PUNCT_CACHE: dict[str, bool] = {}


def is_symbol_word(word: str) -> bool:
    """True when every character of `word` is punctuation or a symbol ("...", "--", "#")."""
    if word.isalnum():
        return False
    hit = _PUNCT_CACHE.get(word)
    if hit is None:
        hit = all(_is_punct_char(ch) for ch in word)
        if len(_PUNCT_CACHE) < 100_000:  # bounded: tokens of unusual text are unbounded
            _PUNCT_CACHE[word] = hit
    return hit


def _split_clitic(core: str, out: list[str]) -> None:
    """Append `core`, split before a clitic when it has one; then split infixes."""
    low = core.lower()
    if len(core) > 3 and (low.endswith("n't") or low.endswith("n’t")) and core[-4:-3].isalpha():
        # spaCy splits only lower- and title-case forms ("DON'T" stays whole).
        if not core.isupper():
            _split_infixes(core[:-3], out)
            out.append(core[-3:])
            return
    if len(core) > 2 and (low.endswith("'s") or low.endswith("’s")):
        _split_infixes(core[:-2], out)
        out.append(core[-2:])
        return
    for clitic in _CLITICS:
        if low.endswith(clitic) and low[: -len(clitic)] in _CLITIC_HOSTS:
            out.append(core[: -len(clitic)])
            out.append(core[-len(clitic):])
            return
    _split_infixes(core, out)


def _split_infixes(core: str, out: list[str]) -> None:
    if not core:
        return
    if core.isalnum():
        out.append(core)
        return
    split = _WHOLE_WORD_SPLITS.get(core)
    if split:
        out.extend(split)
        return
    for part in _INFIX.split(core):
        if part:
            out.append(part)


def _split_chunk(chunk: str, out: list[str]) -> None:
    """Split one whitespace-free chunk into tokens: prefixes, the core, then suffixes.
    Works with indices, not by re-slicing, so a chunk of 100,000 colons stays linear."""
    if _URL.match(chunk):
        out.append(chunk)
        return
    start, end = 0, len(chunk)
    # Prefixes, left to right.
    while end - start > 1:
        if chunk.startswith("...", start):
            stop = start + 3
            while stop < end and chunk[stop] == ".":
                stop += 1
            out.append(chunk[start:stop])
            start = stop
        elif chunk[start] in _PREFIX_CHARS:
            out.append(chunk[start])
            start += 1
        else:
            break
    # Suffixes, right to left (collected, then appended in reading order).
    suffixes: list[str] = []
    while end - start > 1:
        if chunk[end - 1] == ".":
            core = chunk[start:end]
            if core in _ABBREVIATIONS or _DOTTED.fullmatch(core):
                break
            if chunk.endswith("...", start, end) and end - start > 3:
                stop = end - 3
                while stop > start and chunk[stop - 1] == ".":
                    stop -= 1
                if stop > start:
                    suffixes.append(chunk[stop:end])
                    end = stop
                    continue
        if chunk[end - 1] in _SUFFIX_CHARS:
            suffixes.append(chunk[end - 1])
            end -= 1
        else:
            break
    core = chunk[start:end]
    if core:
        if core.isalnum():
            split = _WHOLE_WORD_SPLITS.get(core)
            if split:
                out.extend(split)
            else:
                out.append(core)
        else:
            _split_clitic(core, out)
    out.extend(reversed(suffixes))


def split_words(text: str) -> list[str]:
    """The words of `text` in the shape of spaCy's English tokenizer (see the module doc)."""
    out: list[str] = []
    append = out.append
    special = _WHOLE_WORD_SPLITS
    for chunk in text.split():
        if chunk.isalnum() and chunk not in special:
            append(chunk)
        else:
            _split_chunk(chunk, out)
    return out


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
        """Words with at least one character that is not punctuation or a symbol."""
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
