"""Guardrail rules: input and output filters that `lmforge serve --guardrails FILE` applies.

Red teaming writes these files from its findings; the server reads them. This module knows
nothing of HTTP, so either side can use it alone.

The file is TOML: `[[input]]` tables filter what the client sends (the text of user and
tool messages, or a completion prompt; never the system prompt, which the operator wrote),
`[[output]]` tables filter what the model writes.

    version = 1                       # optional; the only version so far

    [[input]]
    name = "weapons"                  # unique per direction: [A-Za-z0-9_.:-], up to 64 chars
    words = ["bomb", "nerve agent"]   # words or phrases (or `pattern`, not both)
    category = "violence"             # optional, free text
    refusal = "I can't help with making weapons."   # optional; a default sentence otherwise
    source = "redteam-report 3f2a9c"  # optional: where the rule came from

    [[output]]
    name = "canary"
    pattern = 'CANARY-[0-9a-f]{8}'    # a Python regular expression

A `pattern` is searched in the text exactly as written (add `(?i)` for case-insensitive
matching). `words` match whole words, case-insensitively, after the text is brought to a
common form that undoes the common disguises:

- Unicode NFKC (full-width and other compatibility letters become plain ones: "ｂｏｍｂ");
- zero-width characters and soft hyphens removed ("bo\\u200bmb");
- leetspeak digits and symbols read as letters: 0 o, 1 i/l, 3 e, 4 a, @ a, 5 s, $ s, 7 t,
  8 b, 9 g, | i/l, ! i ("b0mb", "k1ll");
- letters split by spaces, dots, dashes, underscores or asterisks ("b o m b", "b.o.m.b"),
  when every letter of the word is split (so "u.s. ex" does not spell "sex"). The words of a
  phrase may be joined by any of these separators or by none ("nerve-agent", "nerveagent"),
  and each may be split or not ("n e r v e agent").

A word matches on word boundaries only: "bomb" finds "Bomb!" and "b-o-m-b" but not "the
bombastic speech"; list "bombs" too if the plural matters. Homoglyphs from other scripts
(Cyrillic "о") are not undone.

    rules = load_rules("rules.toml")
    rules.check_input(messages)     # -> Match | None (OpenAI chat messages as dicts)
    rules.check_prompt(text)        # a completion prompt -> Match | None
    rules.check_output(text)        # -> Match | None
    watch = rules.watch()           # a streamed answer: watch.feed(piece) -> Match | None,
                                    # and watch.feed(last, final=True) at its end

`OutputWatch` reports a match as soon as the piece that completes it arrives (a match at
the very end of the text so far waits for the next piece when more text could undo it: the
"bomb" of "bomb|astic"). It holds nothing back: text streamed before that piece has reached
the client and cannot be recalled (as with OpenAI's content filter, which also cuts a stream
where it trips). A pattern that more text could undo only in ways the watch does not probe
(a lookahead for a whole word, `kill(?!ing)`) may trip on a prefix in a stream.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge._toml import load_toml_file
from lmforge.errors import LmforgeError

DIRECTIONS = ("input", "output")
DEFAULT_REFUSAL = "I can't help with that request."
RULE_KEYS = ("name", "pattern", "words", "category", "refusal", "source")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_HINT = "fix the rule, then check the file again with `lmforge serve MODEL --guardrails FILE`"

# Zero-width space/non-joiner/joiner, word joiner, BOM, Mongolian vowel separator, soft hyphen.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u180e\u00ad"))
# What each letter may be written as (leetspeak). Kept small: the common substitutions.
_LEET: dict[str, str] = {"a": "4@", "b": "8", "e": "3", "g": "9", "i": "1!|", "l": "1|",
                         "o": "0", "s": "5$", "t": "7"}
_SEP = r"[\s.\-_*]"  # what may split the letters of a word ("b o m b", "b.o.m.b")
_SPLIT_MAX = 3        # separator characters allowed between two split letters


def normalize(text: str) -> str:
    """The form `words` rules are matched in: NFKC, no zero-width characters, casefolded."""
    return unicodedata.normalize("NFKC", text).translate(_INVISIBLE).casefold()


@dataclass(frozen=True)
class Match:
    """A rule that matched: which one, in which direction, where, and the matched text (for
    logs that may show text; the server logs it only with --log-prompts)."""

    rule: str
    direction: str         # "input" or "output"
    refusal: str
    text: str              # the matched text (normalized for `words` rules)
    where: str             # "messages[2]", "prompt", "output"
    category: str | None = None
    source: str | None = None


def _forms(ch: str) -> str:
    """A letter and its leetspeak forms."""
    return ch + _LEET.get(ch, "")


def _class(chars: str) -> str:
    return "[" + "".join(re.escape(c) for c in dict.fromkeys(chars)) + "]"


def _word_rest(phrase: str) -> tuple[str, str, int]:
    """A phrase's first letter, the regex of the rest (each word plain, or split letter by
    letter), and the longest text it can match, so a stream is searched only where a new
    match can be."""
    tokens = re.findall(r"[^\W_]+", normalize(phrase))
    between_words, between_letters = f"{_SEP}{{0,{_SPLIT_MAX}}}", f"{_SEP}{{1,{_SPLIT_MAX}}}"

    def word(letters: str) -> str:  # the letters after a word's first, plain or split
        if not letters:
            return ""
        plain = "".join(_class(_forms(c)) for c in letters)
        return f"(?:{plain}|{''.join(between_letters + _class(_forms(c)) for c in letters)})"

    rest = word(tokens[0][1:]) + "".join(
        f"{between_words}{_class(_forms(t[0]))}{word(t[1:])}" for t in tokens[1:])
    return tokens[0][0], rest, sum(map(len, tokens)) * (1 + _SPLIT_MAX)


def _words_regex(phrases: Sequence[str]) -> tuple[re.Pattern[str], int]:
    """One regex for a rule's words, and the longest text it can match. It opens with one
    class of every first letter, so the regex engine skips ahead to where one occurs (a
    lookbehind or an alternation first made the search 15-50x slower); the boundary check
    and the word chosen by its first letter follow."""
    parts = [_word_rest(p) for p in phrases]
    firsts = _class("".join(_forms(first) for first, _, _ in parts))
    words = "|".join(f"(?<={_class(_forms(first))}){rest}" for first, rest, _ in parts)
    regex = rf"{firsts}(?<!\w[\s\S])(?:{words})(?!\w)"
    return re.compile(regex), max(size for _, _, size in parts)


def _pattern_width(regex: re.Pattern[str]) -> int | None:
    """The longest text a pattern can match, or None when unbounded (or unknown): the stream
    watch searches only the last that many characters again."""
    try:
        parser = re._parser  # type: ignore[attr-defined]  # Python 3.11+; sre_parse before
    except AttributeError:  # pragma: no cover - Python 3.10
        import sre_parse as parser  # type: ignore[no-redef]
    try:
        widest = parser.parse(regex.pattern, regex.flags).getwidth()[1]
    except Exception:  # noqa: BLE001 - a private API: without it, search the whole text
        return None
    return widest if widest < 100_000 else None


@dataclass(frozen=True)
class Rule:
    """One `[[input]]` or `[[output]]` table, compiled."""

    name: str
    direction: str
    regex: re.Pattern[str]
    pattern: str | None = None
    words: tuple[str, ...] = ()
    category: str | None = None
    refusal: str = DEFAULT_REFUSAL
    source: str | None = None
    longest: int | None = None  # the longest text a match can span; None: unbounded

    def search(self, text: str, normalized: str, pos: int = 0) -> str | None:
        """The matched text in `text` (or in its `normalized` form, for words), from `pos`."""
        m = self.regex.search(normalized if self.words else text, pos)
        return m.group(0) if m else None

    def to_table(self) -> dict[str, Any]:
        """The rule as its TOML table (what `dump_rules` writes)."""
        table: dict[str, Any] = {"name": self.name}
        if self.pattern is not None:
            table["pattern"] = self.pattern
        else:
            table["words"] = list(self.words)
        for key in ("category", "source"):
            if getattr(self, key) is not None:
                table[key] = getattr(self, key)
        if self.refusal != DEFAULT_REFUSAL:
            table["refusal"] = self.refusal
        return table


def _text_of(content: Any) -> str:
    """A message's content as text: a string, or OpenAI's text parts joined as the chat
    template joins them (with nothing between: "bo" + "mb" is what the model reads)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                         if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return ""


@dataclass
class Guardrails:
    """The rules of one file, ready to check requests and answers."""

    input: list[Rule] = field(default_factory=list)
    output: list[Rule] = field(default_factory=list)
    origin: str = "<rules>"

    @property
    def rules(self) -> list[Rule]:
        return [*self.input, *self.output]

    def _first(self, rules: list[Rule], text: str, where: str) -> Match | None:
        normalized = normalize(text)
        for rule in rules:
            found = rule.search(text, normalized)
            if found is not None:
                return _match(rule, found, where)
        return None

    def check_prompt(self, text: str, where: str = "prompt") -> Match | None:
        """The first input rule that matches a completion prompt."""
        return self._first(self.input, text, where)

    def check_input(self, messages: Iterable[Mapping[str, Any]]) -> Match | None:
        """The first input rule that matches the text of a user or tool message. System
        (and developer) prompts are the operator's; assistant turns are the model's earlier
        answers, which output rules saw when they were written."""
        for i, m in enumerate(messages):
            if m.get("role") in ("user", "tool"):
                found = self.check_prompt(_text_of(m.get("content")), f"messages[{i}]")
                if found is not None:
                    return found
        return None

    def check_output(self, text: str) -> Match | None:
        """The first output rule that matches a whole answer."""
        return self._first(self.output, text, "output")

    def watch(self) -> OutputWatch:
        return OutputWatch(self.output)

    def summary(self) -> str:
        return f"{len(self.input)} input and {len(self.output)} output rules from {self.origin}"


def _match(rule: Rule, text: str, where: str) -> Match:
    return Match(rule.name, rule.direction, rule.refusal, text, where, rule.category,
                 rule.source)


class OutputWatch:
    """Output rules over a streamed answer, fed piece by piece: `feed` returns the first
    match once the piece completing it arrives (and the same match on later calls). Nothing
    is held back: what was sent before that piece stays sent.

    A match that ends where the text so far ends, and that more text could undo ("bomb" of
    "bomb|astic", a pattern ending in a word boundary), waits for the next piece, or for
    `feed(..., final=True)` at the end of the answer."""

    def __init__(self, rules: Sequence[Rule]):
        self.rules = list(rules)
        self.text = ""
        self.match: Match | None = None
        self._seen = 0  # length of the normalized text already searched

    def feed(self, piece: str, final: bool = False) -> Match | None:
        if self.match is not None or (not piece and not final):
            return self.match
        self.text += piece
        normalized = normalize(self.text)
        for rule in self.rules:
            subject = normalized if rule.words else self.text
            # A match ending in the new text starts at most `longest` characters before it
            # (a little more: normalizing may merge characters across pieces).
            pos = 0 if rule.longest is None else max(0, self._seen - rule.longest - 4)
            for m in rule.regex.finditer(subject, pos):
                if final or m.end() < len(subject) or _holds(rule.regex, subject, pos):
                    self.match = _match(rule, m.group(0), "output")
                    return self.match
        self._seen = len(normalized)
        return None


def _holds(regex: re.Pattern[str], subject: str, pos: int) -> bool:
    """Whether a match that ends where `subject` ends stays one whatever comes next: probed
    with a letter, a digit, a space, a dot and a newline after it."""
    for probe in ("a", "0", " ", ".", "\n"):
        m = regex.search(subject + probe, pos)
        if m is None or m.start() >= len(subject):
            return False
    return True


# --- reading a rules file -------------------------------------------------------------


def _fail(where: str, message: str) -> LmforgeError:
    return LmforgeError(f"{where}: {message}", hint=_HINT)


def _optional_text(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"`{key}` must be a non-empty string")
    return value


def _empty_matches(regex: re.Pattern[str]) -> bool:
    """Whether a pattern matches empty text (so it would trip on everything)."""
    return any(m.end() == m.start() for sample in ("", "x y\n") for m in regex.finditer(sample))


def _compile(table: Any, direction: str, index: int, origin: str) -> Rule:
    where = f"{origin}: {direction}[{index}]"
    if not isinstance(table, dict):
        raise _fail(where, f"must be a table ([[{direction}]]), not {type(table).__name__}")
    unknown = sorted(set(table) - set(RULE_KEYS))
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r} (a rule has {', '.join(RULE_KEYS)})")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(where, f"`name` must be 1-64 characters of letters, digits and _.:-, got "
                           f"{name!r}")
    where = f"{where} ({name})"
    pattern, words = table.get("pattern"), table.get("words")
    if (pattern is None) == (words is None):
        raise _fail(where, "give `pattern` (a regular expression) or `words` (a list), "
                           "exactly one")
    rest = {k: _optional_text(table, k, where) for k in ("category", "refusal", "source")}
    common = dict(name=name, direction=direction, category=rest["category"],
                  refusal=rest["refusal"] or DEFAULT_REFUSAL, source=rest["source"])
    if pattern is not None:
        if not isinstance(pattern, str) or not pattern:
            raise _fail(where, "`pattern` must be a non-empty string")
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise _fail(where, f"bad regular expression {pattern!r}: {e}") from None
        if _empty_matches(regex):
            raise _fail(where, f"pattern {pattern!r} matches empty text, so it would match "
                               "everything")
        return Rule(regex=regex, pattern=pattern, longest=_pattern_width(regex), **common)
    if isinstance(words, str) or not isinstance(words, list):
        raise _fail(where, "`words` must be a list of strings, e.g. words = [\"bomb\"]")
    if not words:
        raise _fail(where, "`words` is empty")
    for j, word in enumerate(words):
        if not isinstance(word, str) or not re.search(r"[^\W_]", normalize(word)):
            raise _fail(where, f"words[{j}] must be a word or phrase with letters or digits, "
                               f"got {word!r}")
    regex, longest = _words_regex(words)
    return Rule(regex=regex, words=tuple(words), longest=longest, **common)


def parse_rules(data: Mapping[str, Any], origin: str = "<rules>") -> Guardrails:
    """Rules from a parsed TOML document; `origin` names it in errors."""
    unknown = sorted(set(data) - {"version", *DIRECTIONS})
    if unknown:
        raise _fail(origin, f"unknown top-level key {unknown[0]!r} (a rules file has "
                            "[[input]] and [[output]] tables, and an optional version)")
    if data.get("version", 1) != 1:
        raise _fail(origin, f"version {data['version']!r} is not supported (only 1)")
    out = Guardrails(origin=origin)
    for direction in DIRECTIONS:
        tables = data.get(direction, [])
        if not isinstance(tables, list):
            raise _fail(origin, f"`{direction}` must be an array of tables: write "
                                f"[[{direction}]] above each rule")
        rules = [_compile(t, direction, i, origin) for i, t in enumerate(tables)]
        names = [r.name for r in rules]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            raise _fail(origin, f"two {direction} rules are named {twice!r}; names must be "
                                "unique per direction (they label the metrics)")
        setattr(out, direction, rules)
    if not out.rules:
        raise _fail(origin, "no rules: add an [[input]] or [[output]] table")
    return out


def load_rules(path: str | Path) -> Guardrails:
    """Read and compile a rules file; every mistake is an LmforgeError naming the file and
    the table (`rules.toml: input[2] (weapons): ...`)."""
    return parse_rules(load_toml_file(path, "guardrails file"), str(path))


# --- writing a rules file (red teaming writes its findings with this) ------------------


def _toml_string(text: str) -> str:
    """A TOML string: literal ('...') when it can be (regexes stay readable), else basic."""
    if "'" not in text and not any(ord(c) < 32 or ord(c) == 127 for c in text):
        return f"'{text}'"
    escaped = []
    for c in text:
        if c in '"\\':
            escaped.append("\\" + c)
        elif ord(c) < 32 or ord(c) == 127:
            escaped.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c, f"\\u{ord(c):04x}"))
        else:
            escaped.append(c)
    return '"' + "".join(escaped) + '"'


def dump_rules(rules: Guardrails | Iterable[Rule]) -> str:
    """The TOML text of rules; `load_rules` reads it back to the same rules."""
    items = rules.rules if isinstance(rules, Guardrails) else list(rules)
    lines = ["version = 1"]
    for rule in items:
        lines += ["", f"[[{rule.direction}]]"]
        for key, value in rule.to_table().items():
            if isinstance(value, list):
                value_text = "[" + ", ".join(_toml_string(v) for v in value) + "]"
            else:
                value_text = _toml_string(value)
            lines.append(f"{key} = {value_text}")
    return "\n".join(lines) + "\n"


def rule(direction: str, name: str, *, pattern: str | None = None,
         words: Sequence[str] | None = None, category: str | None = None,
         refusal: str | None = None, source: str | None = None) -> Rule:
    """One rule built in code, checked as a file's table would be."""
    if direction not in DIRECTIONS:
        raise LmforgeError(f"direction must be 'input' or 'output', got {direction!r}")
    table = {"name": name, "pattern": pattern, "words": list(words) if words is not None
             else None, "category": category, "refusal": refusal, "source": source}
    return _compile({k: v for k, v in table.items() if v is not None}, direction, 0, "<rule>")
