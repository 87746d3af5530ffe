"""Verifiable instructions: constraints on a response that a program can check.

The kinds follow IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for Large
Language Models", arXiv:2311.07911); the code is lmforge's own. Each instruction is a small
dataclass with `prompt_text()` (the sentence appended to a prompt) and `check(response)`.

Conventions every check shares (users rely on them, so they are stated here):
- The response is stripped of leading and trailing whitespace before any check.
- An empty (or whitespace-only) response fails every instruction, including the "negative"
  ones (forbidden words, no commas): a model that stops at once has followed nothing, and
  passing it would inflate scores of small models that emit end-of-turn immediately.
- A word is a run of Unicode word characters (`\\w`), where an apostrophe or hyphen between
  two runs joins them: "don't" and "well-known" are one word each, "3.5" is two.
- Keyword matching is case-insensitive and on whole words ("cat" does not match "cats").
- A paragraph is a non-empty block between separators; the separator is a line holding only
  `***` (IFEval's markdown divider) by default, or one or more blank lines.

Metrics (IFEval): prompt-level accuracy (every instruction of a prompt passes) and
instruction-level accuracy (fraction of all instructions that pass), each "strict" (the
response as is) and "loose" (passes if any of IFEval's eight relaxed variants passes: the
response with the first line, the last line or both removed, each with and without `*`).
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from lmforge.errors import LmforgeError

WORD_RE = re.compile(r"\w+(?:['’-]\w+)*")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "no", "fig"}


@dataclass(frozen=True)
class CheckResult:
    kind: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def words(text: str) -> list[str]:
    """The words of `text` (see the module docstring for what counts as one)."""
    return WORD_RE.findall(text)


def count_sentences(text: str) -> int:
    """Sentences end at '.', '!' or '?' (runs count once) followed by whitespace or the end.

    A period after a common abbreviation (Dr., e.g., etc.) does not end a sentence; a final
    fragment without end punctuation still counts if it has a word.
    """
    count, start = 0, 0
    for m in re.finditer(r"[.!?]+(?=\s|$)", text):
        piece = text[start:m.end()]
        before = re.search(r"([\w.]+)$", text[start:m.start()])
        if m.group() == "." and before and before.group(1).lower() in _ABBREVIATIONS:
            continue
        if words(piece):
            count += 1
            start = m.end()
    return count + bool(words(text[start:]))


def _has_word(text: str, word: str) -> int:
    """How many times `word` (or phrase) occurs as whole words, case-insensitively."""
    return len(re.findall(r"(?<!\w)" + re.escape(word.lower()) + r"(?!\w)", text.lower()))


def _relation_ok(value: int, relation: str, n: int) -> bool:
    return {"at most": value <= n, "at least": value >= n, "exactly": value == n}[relation]


def _check_relation(relation: str) -> None:
    if relation not in ("at most", "at least", "exactly"):
        raise LmforgeError(f"unknown relation {relation!r}",
                           hint="use 'at most', 'at least' or 'exactly'")


@dataclass(frozen=True)
class Instruction(ABC):
    """Base: subclasses set `kind` and implement `prompt_text` and `_check` (non-empty text)."""

    kind = "instruction"

    @abstractmethod
    def prompt_text(self) -> str: ...

    @abstractmethod
    def _check(self, text: str) -> CheckResult: ...

    def check(self, response: str) -> CheckResult:
        text = response.strip()
        if not text:
            return CheckResult(self.kind, False, "empty response")
        return self._check(text)

    def result(self, passed: bool, detail: str) -> CheckResult:
        return CheckResult(self.kind, bool(passed), detail)

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class WordLimit(Instruction):
    relation: str
    n: int
    kind = "word_limit"

    def __post_init__(self) -> None:
        _check_relation(self.relation)

    def prompt_text(self) -> str:
        return f"Answer in {self.relation} {self.n} words."

    def _check(self, text: str) -> CheckResult:
        got = len(words(text))
        return self.result(_relation_ok(got, self.relation, self.n),
                           f"{got} words ({self.relation} {self.n} required)")


@dataclass(frozen=True)
class SentenceCount(Instruction):
    relation: str
    n: int
    kind = "sentence_count"

    def __post_init__(self) -> None:
        _check_relation(self.relation)

    def prompt_text(self) -> str:
        return f"Your response should contain {self.relation} {self.n} sentences."

    def _check(self, text: str) -> CheckResult:
        got = count_sentences(text)
        return self.result(_relation_ok(got, self.relation, self.n),
                           f"{got} sentences ({self.relation} {self.n} required)")


@dataclass(frozen=True)
class RequiredKeywords(Instruction):
    keywords: tuple[str, ...]
    kind = "required_keywords"

    def prompt_text(self) -> str:
        return "Include the keywords " + ", ".join(f'"{k}"' for k in self.keywords) + "."

    def _check(self, text: str) -> CheckResult:
        missing = [k for k in self.keywords if not _has_word(text, k)]
        return self.result(not missing, f"missing: {', '.join(missing)}" if missing
                           else "all keywords present")


@dataclass(frozen=True)
class ForbiddenWords(Instruction):
    forbidden: tuple[str, ...]
    kind = "forbidden_words"

    def prompt_text(self) -> str:
        return "Do not use the words " + ", ".join(f'"{w}"' for w in self.forbidden) + "."

    def _check(self, text: str) -> CheckResult:
        used = [w for w in self.forbidden if _has_word(text, w)]
        return self.result(not used, f"used: {', '.join(used)}" if used else "none used")


@dataclass(frozen=True)
class KeywordFrequency(Instruction):
    keyword: str
    n: int
    relation: str = "at least"
    kind = "keyword_frequency"

    def __post_init__(self) -> None:
        _check_relation(self.relation)

    def prompt_text(self) -> str:
        return f'Use the word "{self.keyword}" {self.relation} {self.n} times.'

    def _check(self, text: str) -> CheckResult:
        got = _has_word(text, self.keyword)
        return self.result(_relation_ok(got, self.relation, self.n),
                           f'"{self.keyword}" appears {got} times ({self.relation} {self.n})')


_FENCE = re.compile(r"^```[A-Za-z]*\s*\n?(.*?)\n?```$", re.S)


@dataclass(frozen=True)
class JsonFormat(Instruction):
    """The whole response is JSON; like IFEval, one surrounding ``` / ```json fence is allowed."""

    required_keys: tuple[str, ...] = ()
    kind = "json_format"

    def prompt_text(self) -> str:
        text = "Your entire response must be valid JSON."
        if self.required_keys:
            text += " Use a JSON object with the keys " + ", ".join(
                f'"{k}"' for k in self.required_keys) + "."
        return text

    def _check(self, text: str) -> CheckResult:
        fenced = _FENCE.match(text)
        try:
            value = json.loads(fenced.group(1) if fenced else text)
        except ValueError as e:
            return self.result(False, f"not JSON: {e}")
        if self.required_keys:
            if not isinstance(value, dict):
                return self.result(False, f"JSON {type(value).__name__}, not an object")
            missing = [k for k in self.required_keys if k not in value]
            if missing:
                return self.result(False, f"missing keys: {', '.join(missing)}")
        return self.result(True, "valid JSON")


# A bullet: a line starting (after indentation) with "*" or "-" and a space; "***", "---" and
# "**bold**" lines are not bullets.
_BULLET = re.compile(r"^\s*[*-][ \t]+\S", re.M)


@dataclass(frozen=True)
class BulletCount(Instruction):
    n: int
    kind = "bullet_count"

    def prompt_text(self) -> str:
        return (f"Your answer must contain exactly {self.n} bullet points, using markdown "
                f"bullets such as:\n* This is a point.")

    def _check(self, text: str) -> CheckResult:
        got = len(_BULLET.findall(text))
        return self.result(got == self.n, f"{got} bullet points (exactly {self.n} required)")


@dataclass(frozen=True)
class ParagraphCount(Instruction):
    n: int
    separator: str = "***"  # "***" (a line holding only ***) or "blank" (blank lines)
    kind = "paragraph_count"

    def __post_init__(self) -> None:
        if self.separator not in ("***", "blank"):
            raise LmforgeError(f"unknown paragraph separator {self.separator!r}",
                               hint="use '***' or 'blank'")

    def prompt_text(self) -> str:
        how = ("separated by the markdown divider ***" if self.separator == "***"
               else "separated by blank lines")
        return f"There should be exactly {self.n} paragraphs, {how}."

    def _check(self, text: str) -> CheckResult:
        pattern = r"^\s*\*\*\*\s*$" if self.separator == "***" else r"\n\s*\n"
        parts = re.split(pattern, text, flags=re.M)
        if any(not p.strip() for p in parts):
            return self.result(False, "an empty paragraph (two separators in a row, or one "
                                      "at the start or end)")
        return self.result(len(parts) == self.n,
                           f"{len(parts)} paragraphs (exactly {self.n} required)")


@dataclass(frozen=True)
class AllLowercase(Instruction):
    kind = "lowercase"

    def prompt_text(self) -> str:
        return "Your entire response must be in lowercase letters; no capital letters."

    def _check(self, text: str) -> CheckResult:
        upper = [c for c in text if c.isupper()]
        if not any(c.isalpha() for c in text):
            return self.result(False, "no letters")
        return self.result(not upper, f"{len(upper)} capital letters" if upper
                           else "all lowercase")


@dataclass(frozen=True)
class AllUppercase(Instruction):
    kind = "uppercase"

    def prompt_text(self) -> str:
        return "Your entire response must be in English, in capital letters only."

    def _check(self, text: str) -> CheckResult:
        lower = [c for c in text if c.islower()]
        if not any(c.isalpha() for c in text):
            return self.result(False, "no letters")
        return self.result(not lower, f"{len(lower)} lowercase letters" if lower
                           else "all capitals")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class StartsWith(Instruction):
    """Case-insensitive, with runs of whitespace treated as one space."""

    phrase: str
    kind = "starts_with"

    def prompt_text(self) -> str:
        return f'Start your response with the exact phrase "{self.phrase}".'

    def _check(self, text: str) -> CheckResult:
        ok = _norm(text).startswith(_norm(self.phrase))
        return self.result(ok, "starts with the phrase" if ok
                           else f"starts with {text[:len(self.phrase) + 10]!r}")


@dataclass(frozen=True)
class EndsWith(Instruction):
    """Case-insensitive, with runs of whitespace treated as one space; nothing may follow."""

    phrase: str
    kind = "ends_with"

    def prompt_text(self) -> str:
        return (f'Finish your response with the exact phrase "{self.phrase}". '
                f"No other words should follow it.")

    def _check(self, text: str) -> CheckResult:
        ok = _norm(text).endswith(_norm(self.phrase))
        return self.result(ok, "ends with the phrase" if ok
                           else f"ends with {text[-len(self.phrase) - 10:]!r}")


@dataclass(frozen=True)
class QuotationWrap(Instruction):
    kind = "quotation"

    def prompt_text(self) -> str:
        return "Wrap your entire response in double quotation marks."

    def _check(self, text: str) -> CheckResult:
        ok = len(text) > 1 and text[0] == '"' and text[-1] == '"'
        return self.result(ok, "wrapped in quotes" if ok else "not wrapped in double quotes")


@dataclass(frozen=True)
class Title(Instruction):
    kind = "title"

    def prompt_text(self) -> str:
        return "Your answer must have a title wrapped in double angular brackets, like <<title>>."

    def _check(self, text: str) -> CheckResult:
        titles = [t for t in re.findall(r"<<([^\n]+?)>>", text) if t.strip()]
        return self.result(bool(titles), f"title {titles[0]!r}" if titles else "no <<title>>")


@dataclass(frozen=True)
class NoCommas(Instruction):
    kind = "no_commas"

    def prompt_text(self) -> str:
        return "Do not use any commas in your response."

    def _check(self, text: str) -> CheckResult:
        n = sum(text.count(c) for c in ",，、")  # ASCII, full-width and ideographic commas
        return self.result(n == 0, f"{n} commas")


@dataclass(frozen=True)
class PlaceholderCount(Instruction):
    n: int
    kind = "placeholders"

    def prompt_text(self) -> str:
        return (f"The response must contain at least {self.n} placeholders in square "
                f"brackets, such as [address].")

    def _check(self, text: str) -> CheckResult:
        got = len([p for p in re.findall(r"\[([^\[\]\n]*)\]", text) if p.strip()])
        return self.result(got >= self.n, f"{got} placeholders (at least {self.n} required)")


# The 60 most frequent English function words (a small, fixed list in the style of NLTK's
# English stop words); in running English text they make up roughly 40-50% of tokens.
ENGLISH_STOPWORDS = frozenset("""
the of and to a in is it you that he was for on are with as i his they be at one have this
from or had by not but what some we can out other were all there when up use your how said
an each she which do their if will about would them then many these so its has been than
""".split())


def english_score(text: str) -> tuple[bool, str]:
    """A light language check: mostly Latin letters and enough English function words.

    Passes when >= 90% of letters are Latin (a-z and Latin-1/Extended-A letters) and, for texts
    of 5+ words, >= 15% of words are English stop words (French or Spanish text rarely gets
    above 5% on this list; English prose sits near 40%). Shorter texts need only the script.
    """
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False, "no letters"
    latin = sum(1 for c in letters if c.isascii() or "\u00c0" <= c <= "\u017f")
    if latin / len(letters) < 0.9:
        return False, f"{latin / len(letters):.0%} Latin letters"
    ws = [w.lower() for w in words(text)]
    if len(ws) < 5:
        return True, "Latin script (too short for a word test)"
    share = sum(w in ENGLISH_STOPWORDS for w in ws) / len(ws)
    return share >= 0.15, f"{share:.0%} English function words"


@dataclass(frozen=True)
class ResponseLanguage(Instruction):
    language: str = "en"
    kind = "language"

    def __post_init__(self) -> None:
        if self.language != "en":
            raise LmforgeError(f"language check for {self.language!r} is not available",
                               hint="only 'en' (English) is checked")

    def prompt_text(self) -> str:
        return "Your entire response should be in English; no other language is allowed."

    def _check(self, text: str) -> CheckResult:
        ok, detail = english_score(text)
        return self.result(ok, detail)


KINDS: dict[str, type[Instruction]] = {cls.kind: cls for cls in (
    WordLimit, SentenceCount, RequiredKeywords, ForbiddenWords, KeywordFrequency, JsonFormat,
    BulletCount, ParagraphCount, AllLowercase, AllUppercase, StartsWith, EndsWith,
    QuotationWrap, Title, NoCommas, PlaceholderCount, ResponseLanguage)}


def instruction_from_dict(data: dict) -> Instruction:
    """Rebuild an instruction from `Instruction.to_dict()` (e.g. from a saved report)."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in KINDS:
        raise LmforgeError(f"unknown instruction kind {kind!r}",
                           hint="known kinds: " + ", ".join(sorted(KINDS)))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return KINDS[kind](**fields)
    except TypeError as e:
        raise LmforgeError(f"instruction {kind}: bad fields {sorted(data)} ({e})") from None


def loose_variants(response: str) -> list[str]:
    """IFEval's relaxed forms: drop the first line, the last line or both; strip '*' markup."""
    lines = response.split("\n")
    bases = [response, "\n".join(lines[1:]), "\n".join(lines[:-1]), "\n".join(lines[1:-1])]
    return [v for b in bases for v in (b, b.replace("*", ""))]


def check_loose(instruction: Instruction, response: str) -> CheckResult:
    """Pass if any non-empty loose variant passes (IFEval's loose accuracy)."""
    first = instruction.check(response)
    if first.passed:
        return first
    for variant in loose_variants(response)[1:]:
        if variant.strip():
            r = instruction.check(variant)
            if r.passed:
                return CheckResult(r.kind, True, f"loose: {r.detail}")
    return first


def check_all(instructions: Sequence[Instruction], response: str
              ) -> tuple[list[CheckResult], list[CheckResult]]:
    """Strict and loose results of each instruction on one response."""
    return ([i.check(response) for i in instructions],
            [check_loose(i, response) for i in instructions])


def ifeval_scores(strict: Sequence[CheckResult], loose: Sequence[CheckResult]
                  ) -> dict[str, float]:
    """Per-prompt scores; the instruction-level ones are fractions of this prompt's checks."""
    if not strict:
        raise LmforgeError("a prompt needs at least one instruction to be scored")
    return {
        "prompt_level_acc": float(all(r.passed for r in strict)),
        "instruction_level_acc": sum(r.passed for r in strict) / len(strict),
        "prompt_level_loose_acc": float(all(r.passed for r in loose)),
        "instruction_level_loose_acc": sum(r.passed for r in loose) / len(loose),
    }
