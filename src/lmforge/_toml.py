"""tomllib is stdlib from Python 3.11; tomli is the same parser for 3.10."""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from lmforge.errors import LmforgeError

__all__ = ["tomllib", "load_toml_file"]


def load_toml_file(path: str | Path, what: str = "file") -> dict[str, Any]:
    """A TOML file as a dict; a missing file or bad syntax is a one-line LmforgeError."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{what} not found: {path}", hint="check the path")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{path}: malformed TOML: {e}", hint="fix the syntax") from None
