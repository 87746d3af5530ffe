"""Words of a document in the shape of spaCy's rule-based English tokenizer.

The Gopher, C4 and FineWeb rules publish thresholds tuned on such tokens (datatrove counts
words with spaCy's English tokenizer): punctuation is a word of its own in Gopher's
alphabetic-word ratio, "can't" is two words, "well-known" three. A document on a threshold
keeps or loses its place by one token, so matching the shape matters more than linguistic
finesse. This is a plain loop over `str.split()` chunks (most chunks are plain words and cost
one `isalnum()` call) written from spaCy's documented algorithm:

1. A chunk that is a known whole token stays whole: abbreviations ("Mr.", "e.g."), a lone
   clitic ("'s", "n't"), emoticons (":)").
2. Prefixes come off the front and suffixes off the back, one of each per round, until
   neither matches or what is left is a known whole token. Both: punctuation, quotes,
   brackets, ellipses (two or more periods, "…") and symbols (emoji, ™, ©, °). Prefixes
   also: "§ % = — –", "+" before a non-digit, currency signs. Suffixes also: "— –", "'s",
   after a digit "+", a currency sign or a unit ("5km", "50%"), and a final period where the
   rule takes it: after a digit, a lower-case or uncased letter, punctuation or a quote, or
   two capitals ("USA." splits; "aX." and "ab€." stay whole).
3. What is left: a URL stays whole; a contraction of a known host splits ("can't" -> "ca",
   "n't"; "we'll" -> "we", "'ll"; "dont" -> "do", "nt"); anything else is split at its
   infixes: ellipses, symbols, "+-*^" between digits, a period from a lower-case letter to a
   capital ("end.Next"), a comma between letters, hyphens and dashes from a letter or digit
   to a letter ("well-known"), ":<>=/" from a letter or digit to a letter.
4. Tokens of one chunk that together spell a whole token are joined back ("y):" -> "y",
   "):"; "can't." ends in "t." as in spaCy).

Measured against spaCy 3 (datatrove's tokenizer) on texts of ../shared/data: the tokens are
identical for 15,279 of 15,281 texts (8,008 TinyStories blocks read without encoding repair,
3,000 WikiText lines, 3,000 Shakespeare passages, Alpaca, Self-Instruct and MT-Bench
records; the earlier, simpler splitter matched 13,313). The two left are spellings in
spaCy's exception table ("C'mon" -> "C'm", "on"; "Goin'"); tests/test_curate_filters.py
checks a table of shapes against spaCy itself.
"""

from __future__ import annotations

import re
import unicodedata

# Punctuation, quotes and brackets spaCy splits off either end of a chunk.
_PUNCT = frozenset("…,:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪")
_QUOTES = frozenset("'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉〈〉⟦⟧")
_BOTH_ENDS = _PUNCT | _QUOTES
_CURRENCY = frozenset("$£€¥฿₽﷼") | frozenset(chr(c) for c in range(0x20A0, 0x20C0))
_PREFIX_ONLY = frozenset("§%=—–") | _CURRENCY
_PREFIXES = _BOTH_ENDS | _PREFIX_ONLY
_SUFFIXES = _BOTH_ENDS | frozenset("—–")
_MULTI_CURRENCY = ("US$", "C$", "A$")
# Units split off a number ("5km" -> "5", "km"); longest first.
_UNITS = sorted({
    *(u + p for u in ("km", "m", "dm", "cm", "mm") for p in ("", "²", "³")),
    "µm", "nm", "yd", "in", "ft", "ha", "kg", "g", "mg", "µg", "t", "lb", "oz",
    "m/s", "km/h", "kmh", "mph", "hPa", "Pa", "mbar", "mb", "MB", "kb", "KB", "gb", "GB",
    "tb", "TB", "T", "G", "M", "K", "%",
}, key=len, reverse=True)
_UNIT_SET = frozenset(_UNITS)
_MAX_UNIT = len(_UNITS[0])
_DIGITS = frozenset("0123456789")
_HYPHENS = ("---", "--", "-", "——", "—", "–", "~")  # tried longest first, see _infix_at

# Whole tokens: the shapes of spaCy's exception table that ordinary text meets.
_ABBREVIATIONS = frozenset(
    "Mr. Mrs. Ms. Dr. St. Jr. Prof. Inc. Ltd. Co. Corp. Mt. vs. Gen. Gov. Sen. Rep. Rev. "
    "Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec.".split())
# Dotted abbreviations ("e.g.", "U.S.", "p.m.", "Ph.D.") and a single lower-case letter
# ("a.": the period rule would split it; "A." it leaves whole anyway).
_DOTTED = re.compile(r"[a-z]\.|(?:[A-Za-z]\.){2,}|Ph\.D\.")
_LONE = frozenset(
    "'s 'S ’s ’S 're ’re 'll ’ll 'd ’d n't n’t 'em ’em '' 'cause 'Cause 'bout".split())
_EMOTICONS = frozenset(
    ":) :( :-) :-( ;) ;-) :D :P :p :-P :-D :/ :-/ :'( :o :O <3 </3 xD XD =) =( "
    "-_- ^_^ o.O (: ): :(( :)) 8) (-: )-:".split())
_WHOLE = _ABBREVIATIONS | _LONE | _EMOTICONS
_MAX_WHOLE = max(map(len, _WHOLE))

# Contractions. "n't" splits after an auxiliary, the other clitics after a pronoun, a
# wh-word or a modal; written without the apostrophe they split the same way ("dont").
_NT_HOSTS = ("do does did ca wo is are was were have has had could would should must might "
             "need dare ought sha ai").split()
_CLITIC_HOSTS = frozenset(
    "i you he she it we they there that who what where when why how this here let "
    "could would should might must".split())
_CLITICS = ("'ll", "'re", "'ve", "'d", "'m", "’ll", "’re", "’ve", "’d", "’m")


def _bare_contractions() -> dict[str, tuple[str, ...]]:
    lower: dict[str, tuple[str, ...]] = {h + "nt": (h, "nt") for h in _NT_HOSTS}
    for host, clitics in (("i", "m ve d"), ("you", "re ve ll d"), ("they", "re ve ll d"),
                          ("we", "ve d"), ("he", "s d"), ("she", "s"), ("it", "ll"),
                          ("there", "s"), ("that", "s"), ("what", "s"), ("where", "s"),
                          ("how", "s"), ("who", "s"), ("would", "ve"), ("could", "ve"),
                          ("should", "ve")):
        for clitic in clitics.split():
            lower[host + clitic] = (host, clitic)
    lower.update(ima=("i", "m", "a"), cannot=("can", "not"), gonna=("gon", "na"),
                 gotta=("got", "ta"))
    splits = dict(lower)
    for word, parts in lower.items():  # "Dont" -> "Do", "nt"; upper case stays whole
        splits[word[0].upper() + word[1:]] = (parts[0][0].upper() + parts[0][1:], *parts[1:])
    return splits


WHOLE_WORD_SPLITS: dict[str, tuple[str, ...]] = _bare_contractions()
_NT_HOST_SET = frozenset(_NT_HOSTS) | {"may"}
_CLOCK = re.compile(r"(1[0-2]|[1-9])(a\.?m\.?|p\.?m\.?)")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.ASCII)

_CATEGORY_CACHE: dict[str, bool] = {}


def _is_icon(ch: str) -> bool:
    """A symbol spaCy splits off wherever it stands: Unicode category So (emoji, ™, ©, °)."""
    hit = _CATEGORY_CACHE.get(ch)
    if hit is None:
        hit = _CATEGORY_CACHE[ch] = unicodedata.category(ch) == "So"
    return hit


def _lowerish(ch: str) -> bool:
    """A lower-case letter, or a letter of a script without case (CJK, Hebrew, Devanagari)."""
    return ch.islower() or (ch.isalpha() and not ch.isupper())


def _upperish(ch: str) -> bool:
    return ch.isupper() or (ch.isalpha() and not ch.islower())


def _prefix_len(s: str, i: int, end: int) -> int:
    ch = s[i]
    if ch == "." and i + 1 < end and s[i + 1] == ".":
        j = i + 2
        while j < end and s[j] == ".":
            j += 1
        return j - i
    if ch in _PREFIXES or _is_icon(ch):
        return 1
    if ch == "+":
        return 0 if i + 1 < end and s[i + 1] in _DIGITS else 1
    for cur in _MULTI_CURRENCY:
        if s.startswith(cur, i, end):
            return len(cur)
    return 0


def _suffix_len(s: str, start: int, end: int) -> int:
    """The longest suffix of s[start:end] (spaCy takes the match that starts leftmost)."""
    best = 0
    last = s[end - 1]
    if last in _SUFFIXES or _is_icon(last):
        best = 1
        if last == "…" and end - 2 >= start and s[end - 2] == "…":
            best = 2
    if last == ".":
        j = end - 1
        while j > start and s[j - 1] == ".":
            j -= 1
        if end - j >= 2:
            return end - j  # an ellipsis: nothing else ends in two periods
        if end - 2 >= start and _period_splits(s, start, end - 1):
            best = max(best, 1)
    if end - 2 >= start and last in "sS" and s[end - 2] in "'’":
        best = max(best, 2)
    # After a number: a unit, a currency sign, "+".
    for n in range(min(_MAX_UNIT + 1, end - start - 1), 0, -1):
        if n > best and s[end - n - 1] in _DIGITS:
            piece = s[end - n:end]
            if piece in _UNIT_SET or piece in _CURRENCY or piece in _MULTI_CURRENCY \
                    or piece == "+":
                return n
    return best


def _period_splits(s: str, start: int, dot: int) -> bool:
    """Whether the final period at `dot` is a suffix of s[start:dot + 1]."""
    before = s[dot - 1]
    if (before in _DIGITS or before in "%²-+" or before in _BOTH_ENDS or _lowerish(before)):
        return True
    if dot - 2 >= start:
        two = s[dot - 2]
        if _upperish(before) and _upperish(two):
            return True
        if two == "°" and before in "FfCcKk":
            return True
    return False


def _infix_at(core: str, i: int) -> int:
    """The length of the infix starting at core[i] (0: none). Order as spaCy tries them."""
    ch = core[i]
    n = len(core)
    if ch == "." and i + 1 < n and core[i + 1] == ".":
        j = i + 2
        while j < n and core[j] == ".":
            j += 1
        return j - i
    if ch == "…" or _is_icon(ch):
        return 1
    if i == 0:
        return 0
    before = core[i - 1]
    after = core[i + 1] if i + 1 < n else ""
    if ch in "+-*^" and before in _DIGITS and after and (after in _DIGITS or after == "-"):
        return 1
    if not after:
        return 0
    if ch == "." and (_lowerish(before) or before in _QUOTES) \
            and (_upperish(after) or after in _QUOTES):
        return 1
    if ch == "," and before.isalpha() and after.isalpha():
        return 1
    if before.isalpha() or before in _DIGITS:
        for h in _HYPHENS:
            if core.startswith(h, i) and i + len(h) < n and core[i + len(h)].isalpha():
                return len(h)
        if ch in ":<>=/" and after.isalpha():
            return 1
    return 0


def _split_infixes(core: str, out: list[str]) -> None:
    start = 0
    i = 0
    n = len(core)
    while i < n:
        length = _infix_at(core, i)
        if length and i > 0:  # an infix at the very start does not split (spaCy's rule)
            if i > start:
                out.append(core[start:i])
            out.append(core[i:i + length])
            start = i = i + length
        else:
            i += max(length, 1)
    if start < n:
        out.append(core[start:])


def _contraction(core: str) -> tuple[str, ...] | None:
    """A contraction's parts ("can't" -> "ca", "n't"; "I'd've" -> "I", "'d", "'ve"); the
    word itself when it only looks like one ("in't", "DON'T"); None for anything else."""
    low = core.lower()
    if len(core) > 3 and (low.endswith("n't") or low.endswith("n’t")):
        if low[:-3] in _NT_HOST_SET and not core.isupper():  # "DON'T" stays whole
            return core[:-3], core[-3:]
        if core[:-3].isalpha():
            return (core,)  # "in't": not a contraction spaCy knows
    for clitic in _CLITICS:
        if low.endswith(clitic):
            host = core[: -len(clitic)]
            if host.lower() in _CLITIC_HOSTS:
                return host, core[-len(clitic):]
            if host.endswith(_CLITICS):  # "I'd've"
                inner = _contraction(host)
                if inner is not None:
                    return (*inner, core[-len(clitic):])
    return None


def _split_core(core: str, out: list[str]) -> None:
    """What is left after the affixes: whole tokens, URLs, contractions, then infixes."""
    if core in _WHOLE or _DOTTED.fullmatch(core) or _URL.match(core):
        out.append(core)
        return
    split = WHOLE_WORD_SPLITS.get(core)
    if split:
        out.extend(split)
        return
    if (time := _CLOCK.fullmatch(core)) is not None:  # "9am" -> "9", "am"
        out.extend(time.groups())
        return
    parts = _contraction(core)
    if parts is not None:
        out.extend(parts)
        return
    if core.isalnum():
        out.append(core)
    else:
        _split_infixes(core, out)


def _whole(s: str, start: int, end: int) -> bool:
    """s[start:end] is a known whole token (sliced only when short: a chunk of 100,000
    colons stays linear)."""
    if s[end - 1] == "." and _DOTTED.fullmatch(s, start, end):
        return True
    return 0 < end - start <= _MAX_WHOLE and s[start:end] in _WHOLE


def _merge_whole(out: list[str], first: int) -> None:
    """Join the tokens of one chunk (from out[first]) that together spell a whole token:
    the rules split "y):" into "y", ")", ":" and "can't." ends in "t", "."; spaCy matches its
    special cases across such splits afterwards ("):", "t.")."""
    i = first
    while i < len(out) - 1:
        for n in (3, 2):
            if i + n <= len(out):
                joined = "".join(out[i:i + n])
                if _whole(joined, 0, len(joined)):
                    out[i:i + n] = [joined]
                    break
        i += 1


def _split_chunk(chunk: str, out: list[str]) -> None:
    """One whitespace-free chunk into tokens, by indices rather than re-slicing."""
    first = len(out)
    start, end = 0, len(chunk)
    suffixes: list[str] = []
    while start < end:
        if _whole(chunk, start, end):
            break
        pre = _prefix_len(chunk, start, end)
        suf = _suffix_len(chunk, start + pre, end) if end - start - pre > 0 else 0
        if pre and _whole(chunk, start + pre, end):
            out.append(chunk[start:start + pre])
            start += pre
            break
        if suf and _whole(chunk, start, end - suf):
            suffixes.append(chunk[end - suf:end])
            end -= suf
            break
        if not pre and not suf:
            break
        if pre:
            out.append(chunk[start:start + pre])
            start += pre
        if suf:
            suffixes.append(chunk[end - suf:end])
            end -= suf
    if start < end:
        _split_core(chunk[start:end], out)
    out.extend(reversed(suffixes))
    if len(out) - first > 1:
        _merge_whole(out, first)


_FAST_PREFIX = frozenset("\"'(“‘")
_FAST_SUFFIX = frozenset(",!?:;.\"')”’")
_WHOLE_MARKS = tuple(w for w in _WHOLE if set(w) <= _FAST_SUFFIX)  # "):", "''"


def _split_simple(chunk: str, out: list[str]) -> bool:
    """The common shapes ("day.", "\"Hello,", "(well)") without the general loop: at most one
    opening mark, a plain word, then closing marks. False (nothing appended) otherwise."""
    start, end = (1 if chunk[0] in _FAST_PREFIX else 0), len(chunk)
    while end - start > 1 and chunk[end - 1] in _FAST_SUFFIX:
        end -= 1
    core = chunk[start:end]
    if not core or core in WHOLE_WORD_SPLITS or core in _WHOLE:
        return False
    parts: tuple[str, ...] | None = (core,)
    if not core.isalnum():
        # "Lily's", "didn't", "I'm": a word and its clitic.
        if core[-2:] in ("'s", "’s") and core[:-2].isalnum():
            parts = core[:-2], core[-2:]
        else:
            parts = _contraction(core)
            if parts is None or not parts[0].isalnum():
                return False
    elif core[0] in _DIGITS and not core.isdigit():
        return False  # units and times: "5km", "9am"
    tail = chunk[end:]
    if tail:
        if tail.count(".") > 1 or (core + tail[0]) in _WHOLE:  # ellipses, "Mr.", "8)"
            return False
        if len(tail) > 1 and any(w in tail for w in _WHOLE_MARKS):
            return False
        if tail[0] == "." and (len(core) == 1
                               or not (_lowerish(core[-1]) or core[-1] in _DIGITS)):
            return False  # "a.", "USA." and "aX." take the period rule's other branches
    if start and chunk[:end] in _WHOLE:  # "'em"
        return False
    if start:
        out.append(chunk[0])
    out.extend(parts)
    out.extend(tail)
    return True


def split_words(text: str) -> list[str]:
    """The words of `text` in the shape of spaCy's English tokenizer (see the module doc)."""
    out: list[str] = []
    append = out.append
    special = WHOLE_WORD_SPLITS
    for chunk in text.split():
        # Plain words: one isalnum() call. A number with letters may end in a unit ("5km").
        if chunk.isalnum():
            if chunk in special or (chunk[0] in _DIGITS and not chunk.isdigit()):
                _split_chunk(chunk, out)
            else:
                append(chunk)
        elif chunk in _WHOLE or not _split_simple(chunk, out):
            _split_chunk(chunk, out)
    return out
