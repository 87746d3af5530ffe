"""The document-filter protocol, the registry of filter types, presets, and building from config.

A filter is a plain dataclass (picklable: the pipeline sends filters to worker processes) with
a `name` and `apply(text) -> (text or None, reason or None)`. A kept document comes back as
`(text, None)`, edited where the filter edits (C4 removes lines); a removed one as
`(None, "<filter name>:<rule>")`. Reason strings are stable: the curation report groups by
them.

Presets are per-source recipes (which filters, in order, with which settings):
- `web`: prose from the web. The FineWeb recipe (Penedo et al. 2024): Gopher repetition and
  quality, C4 line rules with the terminal-punctuation rule off (FineWeb found it removes
  too much), FineWeb's rules; plus length, block list and the English check.
- `docs`: documentation and code-like text (docstrings, reference pages). Line punctuation
  (C4, FineWeb), Gopher's bullet rule and its 50-word minimum would remove most of it.
- `chat`: short conversational turns: no minimum word count, no line rules; repetition,
  language and block list stay.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Protocol, Union

from lmforge.curate.language import LanguageFilter
from lmforge.curate.quality import GopherQualityFilter, GopherRepetitionFilter
from lmforge.curate.rules import BlocklistFilter, C4Filter, FineWebFilter, LengthFilter
from lmforge.errors import LmforgeError

FilterResult = tuple[str | None, str | None]  # (kept text, reason for removal)


class DocFilter(Protocol):
    name: str

    def apply(self, text: str) -> FilterResult: ...


FILTER_TYPES: dict[str, type] = {cls.name: cls for cls in (
    LengthFilter, BlocklistFilter, LanguageFilter, GopherRepetitionFilter,
    GopherQualityFilter, C4Filter, FineWebFilter)}

PRESETS: dict[str, dict[str, dict]] = {
    "web": {
        "length": {"min_chars": 64},
        "blocklist": {},
        "language": {},
        "gopher_repetition": {},
        "gopher_quality": {},
        # FineWeb ran C4's rules without the terminal-punctuation line rule.
        "c4": {"filter_no_terminal_punct": False},
        "fineweb": {},
    },
    # Tuned on the embedded corpus (build_pydocs_corpus(), CPython 3.11.7, normalized): of its
    # 7,898 documents of >= 64 characters `docs` keeps 6,483 (82.1%), `web` only 448 (5.7%:
    # Gopher's n-gram and alphabetic-word rules read signatures and code as junk). What
    # `docs` still removes is mostly boilerplate: "Initialize self.  See help(type(self))
    # for accurate signature." (no stop word), bare "Return getattr(self, name)." (under 5
    # words), doctest dumps (alphabetic words), repeated paragraphs.
    "docs": {
        "length": {"min_chars": 64},
        "blocklist": {},
        "language": {"min_english_score": 0.05},  # terse API prose: "Return a copy."
        "gopher_repetition": {"min_words_for_ngrams": 100},
        "gopher_quality": {
            "min_words": 5,              # a one-line docstring is a document here
            "max_mean_word_length": 15.0,  # identifiers such as "ensure_ascii" are long
            "max_symbol_word_ratio": 0.5,  # "#" starts comments in code samples
            "max_bullet_lines_ratio": None,
            "min_alpha_words_ratio": 0.4,  # code punctuation: "f(x, y=1)" is 9 tokens
            "min_stop_words": 1,
        },
    },
    # Edited prose already free of crawl junk: stories, books, synthetic text. On the
    # TinyStories V1 train head (1,096 stories, ../shared/data) `web` keeps only 850: Gopher's
    # alphabetic-word rule counts punctuation as words and drops 138 stories for their
    # dialogue ("Mom," she said, "look!"). `prose` keeps the rules that catch broken text
    # (length, language, degenerate repetition) and leaves the web-page heuristics out.
    "prose": {
        "length": {"min_chars": 64},
        "blocklist": {},
        "language": {},
        "gopher_repetition": {},
    },
    "chat": {
        "length": {"min_chars": 1},
        "blocklist": {},
        "language": {},
        "gopher_repetition": {"min_words_for_ngrams": 50},
    },
}


def _type_name(hint: Any, plural: bool = False) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return f"{_type_name(inner[0])} or false (off)"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0], plural=True)}"
        return ("pairs [" if plural else "a pair [") + ", ".join(map(_type_name, args)) + "]"
    names = {int: ("an integer", "integers"), float: ("a number", "numbers"),
             bool: ("true or false", "true or false values"), str: ("a string", "strings")}
    return names[hint][plural] if hint in names else str(hint)


_BAD = object()


def _coerce(value: Any, hint: Any) -> Any:
    """`value` converted to the field type `hint`, or _BAD when it does not fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):  # X | None: None, or false to turn a rule off
        if value is None or value is False:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _BAD
        if len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0]) for v in value]
        elif len(value) == len(args):
            items = [_coerce(v, a) for v, a in zip(value, args)]
        else:
            return _BAD
        return _BAD if any(i is _BAD for i in items) else tuple(items)
    if hint is bool:
        return value if isinstance(value, bool) else _BAD
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _BAD
    if hint is str:
        return value if isinstance(value, str) else _BAD
    return _BAD


def _settings(name: str, cls: type, params: dict, where: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for field, value in params.items():
        if field not in valid:
            raise LmforgeError(f"{where}: filter {name!r} has no setting {field!r}",
                               hint=f"valid settings of {name!r}: {', '.join(valid)}")
        coerced = _coerce(value, hints[field])
        if coerced is _BAD:
            raise LmforgeError(
                f"{where}: filter {name!r} setting {field!r} must be "
                f"{_type_name(hints[field])}, not {value!r}",
                hint=f"valid settings of {name!r}: {', '.join(valid)}")
        out[field] = coerced
    return out


def _check_preset(preset: str, where: str) -> dict[str, dict]:
    if preset not in PRESETS:
        raise LmforgeError(f"{where}: unknown curation preset {preset!r}",
                           hint=f"valid presets: {', '.join(PRESETS)}")
    return PRESETS[preset]


def build_filters(preset: str = "web", overrides: dict[str, dict | bool] | None = None,
                  where: str = "curation recipe") -> list[DocFilter]:
    """The filters of `preset`, in order, with `overrides` applied.

    `overrides` maps a filter name to a dict of settings (merged over the preset's; a filter
    the preset lacks is added at the end), to True (on, with the preset's or the default
    settings) or to False (off). A mistake raises LmforgeError naming `where`, the filter and
    the setting, and listing the valid ones."""
    plan = {name: dict(params) for name, params in _check_preset(preset, where).items()}
    for name, change in (overrides or {}).items():
        if name not in FILTER_TYPES:
            raise LmforgeError(f"{where}: unknown filter {name!r}",
                               hint=f"valid filters: {', '.join(FILTER_TYPES)}")
        if change is False:
            plan.pop(name, None)
        elif change is True:
            plan.setdefault(name, {})
        elif isinstance(change, dict):
            plan.setdefault(name, {}).update(change)
        else:
            raise LmforgeError(
                f"{where}: filter {name!r} must be true, false or a table of settings, "
                f"not {change!r}",
                hint=f"e.g. {name} = false, or [{name}] with its settings")
    filters = []
    for name, params in plan.items():
        cls = FILTER_TYPES[name]
        settings = _settings(name, cls, params, where)
        try:
            filters.append(cls(**settings))
        except LmforgeError as e:
            raise LmforgeError(f"{where}: {e.message}", hint=e.hint) from None
    return filters


def describe_preset(preset: str) -> list[tuple[str, dict]]:
    """(filter name, every setting with its value) for each filter of `preset`, in order."""
    return [(f.name, {fl.name: getattr(f, fl.name) for fl in dataclasses.fields(f)})
            for f in build_filters(preset, where=f"preset {preset!r}")]
