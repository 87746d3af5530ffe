"""Held-out docstrings of the embedded corpus: does the model know what a function does?

The quickstart trains on the standard library's docstrings (data/corpora/pydocs.py), where
each document reads "module.func(signature)\\n\\nDocstring...". The tokenize stage holds out
the documents whose split coin `split_key(seed, id)` falls below `val_fraction`
(data/shards.py), so a model never trained on those. From the held-out function and method
docstrings this builds two tasks:

- docstrings_mc: given the header line, pick the true summary among it and 3 summaries of
  other held-out functions (seeded); acc / acc_norm like any multiple-choice task.
- docstrings_bpb: bits per byte of the summary given the header.

The defaults (seed 0, val_fraction 0.05) are the tokenize stage's defaults and the
quickstart recipe's; pass the values a model was tokenized with if they differ. (The
tokenize stage moves one document into an empty validation split; with the corpus's ~9,000
documents that never happens at 0.05, and it is not reproduced here.)
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

from lmforge.data.shards import split_key
from lmforge.eval.tasks import LoglikelihoodItem, LoglikelihoodTask, MCItem, MultipleChoiceTask

SOURCE = Path("<embedded pydocs corpus>")
N_CHOICES = 4
# Longer summaries are whole paragraphs; they make slow, noisy items and can outgrow a
# small model's context.
MAX_SUMMARY_CHARS = 300
DELIMITER = "\n\n"  # what separates header and docstring in the corpus documents


@functools.lru_cache(maxsize=4)
def held_out_functions(seed: int = 0, val_fraction: float = 0.05
                       ) -> tuple[tuple[str, str, str], ...]:
    """(document id, header line, summary) of every held-out function/method docstring,
    sorted by id."""
    from lmforge.data.corpora.pydocs import build_pydocs_corpus

    out = []
    seen_in_training: set[str] = set()
    for doc in build_pydocs_corpus():
        summary = doc.meta.get("summary", "")
        if split_key(seed, doc.id) >= val_fraction:
            seen_in_training.add(summary)  # in the training split
            continue
        if doc.meta.get("kind") not in ("function", "method"):
            continue
        header = doc.text.split("\n", 1)[0]
        if summary and len(summary) <= MAX_SUMMARY_CHARS and header:
            out.append((doc.id, header, summary))
    # Inherited and copied docstrings repeat a summary under another name; a summary that
    # also appears in the training split was seen, so it is not held out.
    return tuple(f for f in out if f[2] not in seen_in_training)


def docstring_mc_items(functions: tuple[tuple[str, str, str], ...], seed: int = 0
                       ) -> list[MCItem]:
    """One item per function: the true summary and N_CHOICES - 1 others, in seeded order."""
    summaries = sorted({s for _, _, s in functions})
    items = []
    for i, (_, header, summary) in enumerate(functions):
        rng = random.Random(seed * 1_000_003 + i)
        others = [s for s in rng.sample(summaries, min(len(summaries), N_CHOICES + 1))
                  if s != summary][:N_CHOICES - 1]
        if len(others) < N_CHOICES - 1:
            continue
        gold = rng.randrange(N_CHOICES)
        choices = others[:gold] + [summary] + others[gold:]
        items.append(MCItem(header, choices, gold, len(items)))
    return items


def docstring_tasks(seed: int = 0, val_fraction: float = 0.05, limit: int | None = None
                    ) -> list[MultipleChoiceTask | LoglikelihoodTask]:
    def read_mc(_: Path) -> list[MCItem]:
        return docstring_mc_items(held_out_functions(seed, val_fraction), seed)

    def read_ll(_: Path) -> list[LoglikelihoodItem]:
        return [LoglikelihoodItem(header, DELIMITER + summary, i)
                for i, (_, header, summary)
                in enumerate(held_out_functions(seed, val_fraction))]

    return [
        MultipleChoiceTask(name="docstrings_mc", path=SOURCE, limit=limit,
                           target_delimiter=DELIMITER, reader=read_mc),
        LoglikelihoodTask(name="docstrings_bpb", path=SOURCE, limit=limit, reader=read_ll,
                          metrics=("bpb",)),
    ]
