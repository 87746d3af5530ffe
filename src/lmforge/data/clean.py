"""Basic cleaning: normalize text, drop documents of unusable length, remove exact duplicates.

This is the quickstart's cleaning. It is deliberately small and deterministic: the same
documents in the same order always give the same output and the same statistics.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from lmforge.data.documents import Document
from lmforge.errors import LmforgeError

# More than two blank lines in a row carry no meaning (PEP 8 code uses at most two).
_EXTRA_BLANK_LINES = re.compile(r"\n{4,}")


def normalize_text(text: str) -> str:
    """Unicode NFC; Unix line ends; no trailing whitespace on any line; at most two blank
    lines in a row; no blank lines at the start or end. Leading indentation is kept (code)."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = _EXTRA_BLANK_LINES.sub("\n\n\n", text)
    return text.strip("\n")


def clean_documents(docs: Iterable[Document], min_chars: int = 64, max_chars: int = 100_000
                    ) -> tuple[list[Document], dict[str, Any]]:
    """Normalize every document, drop those outside [min_chars, max_chars] characters
    (measured after normalizing), and keep only the first of exact duplicates.

    Returns the kept documents, in input order, and statistics of what was removed and why.
    """
    for name, value in (("min_chars", min_chars), ("max_chars", max_chars)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise LmforgeError(f"{name} must be a non-negative integer, not {value!r}")
    if min_chars > max_chars:
        raise LmforgeError(f"min_chars ({min_chars}) is larger than max_chars ({max_chars})",
                           hint="no document could pass; lower min_chars or raise max_chars")
    kept: list[Document] = []
    seen: set[bytes] = set()
    removed = {"too_short": 0, "too_long": 0, "duplicate": 0}
    n_in = chars_in = chars_out = 0
    for doc in docs:
        n_in += 1
        chars_in += len(doc.text)
        text = normalize_text(doc.text)
        if len(text) < min_chars:
            removed["too_short"] += 1
            continue
        if len(text) > max_chars:
            removed["too_long"] += 1
            continue
        # Hash after normalizing, so copies differing only in whitespace or Unicode form match.
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        if digest in seen:
            removed["duplicate"] += 1
            continue
        seen.add(digest)
        kept.append(Document(doc.id, text, doc.source, dict(doc.meta)))
        chars_out += len(text)
    stats = {"input": n_in, "kept": len(kept), "removed": removed,
             "characters_in": chars_in, "characters_out": chars_out}
    return kept, stats
