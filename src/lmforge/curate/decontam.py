"""Decontamination: find training documents that contain text from evaluation sets.

A document is contaminated when it shares a word 13-gram with an evaluation item, the test
GPT-3 used (Brown et al. 2020, "Language Models are Few-Shot Learners", appendix C: 13-grams
at most, words compared ignoring punctuation, whitespace and case, and no n shorter than 8
words on natural-text tasks because shorter ones collide by chance). The index holds one
64-bit hash per distinct (n-gram, item) in two sorted numpy arrays, so it pickles small and
cheaply to worker processes: 12 bytes per (n-gram, item). Measured: the 7,030 HellaSwag items
here (context + 4 endings, ~110 words each) take 10.7 MB, so 10,000 such items ~15 MB;
ARC-Easy's 1,664 shorter items take 0.46 MB.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.curate.dedup import ngram_hashes, simplify_words, word_hashes
from lmforge.data.jsonl import json_objects
from lmforge.errors import LmforgeError

# GPT-3 (appendix C): shorter n-grams match unrelated text by chance, so nothing under 8 words.
MIN_WORDS = 8


@dataclass
class EvalSetSpec:
    """One evaluation set of a curation recipe: `[[decontaminate.eval_sets]]`."""

    name: str
    path: str  # JSONL (`fields` are joined into one item per record) or text (one per line)
    fields: list[str] = field(default_factory=lambda: ["text"])  # "a.b" reaches nested keys


def _spec(name: str, relative: str, fields: Sequence[str]) -> Callable[[Path], EvalSetSpec]:
    return lambda root: EvalSetSpec(name, str(Path(root).resolve() / relative), list(fields))


# The evaluation sets in ../shared/data (fields as documented in each folder's SOURCE.md).
# Everything a model sees at test time is indexed: context and all candidate answers.
BUILTIN_EVAL_SETS: dict[str, Callable[[Path], EvalSetSpec]] = {
    "hellaswag": _spec("hellaswag", "hellaswag/hellaswag_val.jsonl", ["ctx", "endings"]),
    "arc_easy": _spec("arc_easy", "arc/ARC-Easy-test.jsonl", ["question", "choices.text"]),
    "arc_challenge": _spec("arc_challenge", "arc/ARC-Challenge-test.jsonl",
                           ["question", "choices.text"]),
    "piqa": _spec("piqa", "piqa/piqa_valid.jsonl", ["goal", "sol1", "sol2"]),
    "winogrande": _spec("winogrande", "winogrande/winogrande_v1.0_dev.jsonl",
                        ["sentence", "option1", "option2"]),
    "lambada": _spec("lambada", "lambada/lambada_test.jsonl", ["text"]),
}


def load_eval_set(spec: EvalSetSpec, base_dir: Path) -> list[str]:
    """The items of an evaluation set as texts (a relative path is relative to `base_dir`).

    JSONL: one item per record, the named fields joined by newlines (a list field gives all
    its strings, `choices.text` reaches into an object). Other files: one item per non-empty
    line.
    """
    path = Path(spec.path)
    if not path.is_absolute():
        path = Path(base_dir) / path
    if not path.is_file():
        raise LmforgeError(f"eval set '{spec.name}': file not found: {path}",
                           hint="check the path in [[decontaminate.eval_sets]]")
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        if not spec.fields:
            raise LmforgeError(f"eval set '{spec.name}': no fields named",
                               hint='say which JSONL fields hold the text, e.g. '
                                    'fields = ["text"]')
        return ["\n".join(_field_text(record, f, where, spec.name) for f in spec.fields)
                for where, record in json_objects(path, hint="eval set files are JSON Lines: "
                                                             "one object per line")]
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [line for line in f.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise LmforgeError(f"eval set '{spec.name}': cannot read {path}: {e}",
                           hint="eval sets are UTF-8 text or JSONL files") from None


def _field_text(record: dict[str, Any], name: str, where: str, set_name: str) -> str:
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            keys = ", ".join(sorted(value)) if isinstance(value, dict) else "none"
            raise LmforgeError(f"{where}: eval set '{set_name}' has no field '{name}'",
                               hint=f"fields here: {keys}")
        value = value[part]
    return "\n".join(_strings(value, name, where))


def _strings(value: Any, name: str, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [str(value)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v, name, where)]
    raise LmforgeError(f"{where}: field '{name}' is an object",
                       hint=f"name the part that holds text, e.g. '{name}.text'")


def _words(text: str) -> np.ndarray:
    # Digits are kept (unlike near-dedup): in eval items a number is often the answer.
    return word_hashes(simplify_words(text, numbers=False))


class Decontaminator:
    """An index of evaluation items' word n-grams, and a lookup of which items a text hits."""

    def __init__(self, ngram: int = 13, min_words: int = MIN_WORDS):
        if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
            raise LmforgeError(f"decontamination ngram must be a positive integer, not {ngram!r}",
                               hint="GPT-3 used 13")
        if isinstance(min_words, bool) or not isinstance(min_words, int) or min_words < 1:
            raise LmforgeError(f"min_words must be a positive integer, not {min_words!r}")
        self.ngram = ngram
        self.min_words = min(min_words, ngram)
        self.names: list[str] = []
        self._keys = np.zeros(0, dtype=np.uint64)  # sorted n-gram hashes ...
        self._owners = np.zeros(0, dtype=np.int32)  # ... and the item each one belongs to
        self._item_set = np.zeros(0, dtype=np.int32)  # per item: index into names
        self._item_index = np.zeros(0, dtype=np.int32)  # per item: index in its eval set
        self._short_lengths: list[int] = []  # lengths of items indexed whole

    def add_eval_set(self, name: str, items: Sequence[str]) -> int:
        """Index `items` under `name`; returns how many were indexed.

        Items of at least `ngram` words contribute all their n-grams. A shorter item can
        share no n-gram with anything, so it is indexed whole: a document containing the
        entire item (normalized) matches it. Items under `min_words` words (8, GPT-3's floor)
        are skipped: a short phrase turns up in unrelated text by chance.
        """
        if name in self.names:
            raise LmforgeError(f"eval set '{name}' is indexed twice",
                               hint="give each [[decontaminate.eval_sets]] a different name")
        set_id = len(self.names)
        first_item = len(self._item_set)
        keys, owners, indexed, lengths = [], [], [], set(self._short_lengths)
        for index, text in enumerate(items):
            words = _words(text)
            if len(words) < self.min_words:
                continue
            if len(words) < self.ngram:
                lengths.add(len(words))
            hashes = np.unique(ngram_hashes(words, self.ngram))
            keys.append(hashes)
            owners.append(np.full(len(hashes), first_item + len(indexed), dtype=np.int32))
            indexed.append(index)
        self.names.append(name)
        self._item_set = np.concatenate(
            [self._item_set, np.full(len(indexed), set_id, dtype=np.int32)])
        self._item_index = np.concatenate([self._item_index, np.array(indexed, dtype=np.int32)])
        all_keys = np.concatenate([self._keys, *keys])
        all_owners = np.concatenate([self._owners, *owners])
        order = np.argsort(all_keys, kind="stable")
        self._keys, self._owners = all_keys[order], all_owners[order]
        self._short_lengths = sorted(lengths)
        return len(indexed)

    def matches(self, text: str) -> list[tuple[str, int]]:
        """Sorted unique (eval set name, item index) of the items `text` shares an n-gram
        with (or, for items shorter than the n-gram, contains whole)."""
        if not len(self._keys):
            return []
        words = _words(text)
        probes = [ngram_hashes(words, n)
                  for n in (self.ngram, *self._short_lengths) if n <= len(words)]
        if not probes:
            return []
        query = np.concatenate(probes)
        lo = np.searchsorted(self._keys, query, side="left")
        hi = np.searchsorted(self._keys, query, side="right")
        hit = hi > lo
        if not hit.any():
            return []
        lo, counts = lo[hit], (hi - lo)[hit]
        # All positions in the [lo, hi) runs: several items can share one n-gram.
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        items = np.unique(self._owners[np.repeat(lo, counts) + offsets])
        return sorted((self.names[s], int(i))
                      for s, i in zip(self._item_set[items], self._item_index[items]))

    @property
    def nbytes(self) -> int:
        """Memory held by the index (what a worker process receives)."""
        return sum(a.nbytes for a in (self._keys, self._owners, self._item_set,
                                      self._item_index))

    def __repr__(self) -> str:
        return (f"Decontaminator(ngram={self.ngram}, eval_sets={self.names}, "
                f"items={len(self._item_set)}, ngrams={len(self._keys)})")
