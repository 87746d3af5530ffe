"""The seam every stage meets: settings checked in one way, one run function, one outcome.

Each stage's `stage.py` exports a settings type (`from_dict` for recipe tables), a run function
`run(ws, settings, show_progress) -> Outcome`, and builds the outcome's one-line summary. The
CLI verb and the recipe step are both thin calls of that run function, so a stage is wired
once and says the same thing wherever it runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.registry import Artifact


@dataclass
class Outcome:
    """What a stage made (None for a report-only stage), its summary line, and details for
    callers that want more (a training result, an evaluation report)."""
    artifact: Artifact | None
    summary: str
    details: Any = None
    show: Any = None  # something to print where the stage ran (a rich table), if any


def check_keys(values: dict[str, Any], where: str, required: Iterable[str] = (),
               optional: Iterable[str] = ()) -> None:
    """Refuse unknown and missing settings, naming them and listing the valid ones."""
    required, optional = tuple(required), tuple(optional)
    unknown = sorted(set(values) - set(required) - set(optional))
    if unknown:
        raise LmforgeError(f"{where}: unknown setting(s) {', '.join(unknown)}",
                           hint=f"valid: {', '.join(sorted(required + optional))}")
    missing = [k for k in required if k not in values]
    if missing:
        raise LmforgeError(f"{where}: missing setting(s) {', '.join(missing)}")
