"""Small JSON Lines files read strictly: every line one object, a bad line an error that names
`file:line`. (Corpora go through data/documents.py, which can also skip and count bad lines.)"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError


def json_objects(path: Path, hint: str = "each line must be one JSON object"
                 ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`name:line`, object) for each non-blank line of a .jsonl or .jsonl.gz file."""
    if not path.is_file():
        raise LmforgeError(f"{path}: no such file", hint="check the path")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path.name}:{number}"
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LmforgeError(f"{where}: not valid JSON ({e.msg})", hint=hint) from None
                if not isinstance(data, dict):
                    raise LmforgeError(f"{where}: a JSON {type(data).__name__}, not an object",
                                       hint=hint)
                yield where, data
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{path}: cannot read ({e})", hint="JSONL files are UTF-8 text") \
            from None
