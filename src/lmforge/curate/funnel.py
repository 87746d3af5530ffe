"""Counting what each curation step let through and what it removed, per source and reason.

Each worker fills a `Funnel` for its shard; the pipeline merges them in shard order, so the
totals and the examples kept are the same for 1 worker or many.
"""

from __future__ import annotations

from typing import Any

EXCERPT_CHARS = 200


def excerpt(text: str) -> str:
    """The start of a text on one line, for removal examples."""
    flat = " ".join(text[: EXCERPT_CHARS * 2].split())
    return flat[:EXCERPT_CHARS] + ("…" if len(flat) > EXCERPT_CHARS else "")


def _empty_counts() -> dict[str, Any]:
    return {"documents_in": 0, "characters_in": 0, "documents_out": 0, "characters_out": 0,
            "reasons": {}}


class Funnel:
    """steps[name][source] -> counts in/out and {reason: {count, examples}}."""

    def __init__(self, examples: int = 3):
        self.examples = examples
        self.steps: dict[str, dict[str, dict[str, Any]]] = {}
        self.extra: dict[str, dict[str, Any]] = {}  # per-step extras (PII counts, eval items)

    def _counts(self, step: str, source: str) -> dict[str, Any]:
        return self.steps.setdefault(step, {}).setdefault(source, _empty_counts())

    def passed(self, step: str, source: str, chars_in: int, chars_out: int) -> None:
        c = self._counts(step, source)
        c["documents_in"] += 1
        c["characters_in"] += chars_in
        c["documents_out"] += 1
        c["characters_out"] += chars_out

    def passed_many(self, step: str, source: str, documents: int, characters: int) -> None:
        """`documents` documents of `characters` in all passed unchanged (a reader's count)."""
        c = self._counts(step, source)
        c["documents_in"] += documents
        c["characters_in"] += characters
        c["documents_out"] += documents
        c["characters_out"] += characters

    def wants_example(self, step: str, source: str, reason: str) -> bool:
        """Whether the next removal for `reason` would be kept as an example (so a caller can
        skip loading the text of documents whose example would be dropped)."""
        r = self.steps.get(step, {}).get(source, {}).get("reasons", {}).get(reason)
        return len(r["examples"] if r else []) < self.examples

    def removed(self, step: str, source: str, chars_in: int, reason: str,
                example: dict[str, Any] | None) -> None:
        c = self._counts(step, source)
        c["documents_in"] += 1
        c["characters_in"] += chars_in
        r = c["reasons"].setdefault(reason, {"count": 0, "examples": []})
        r["count"] += 1
        if example is not None and len(r["examples"]) < self.examples:
            r["examples"].append(example)

    def touch(self, step: str, source: str) -> None:
        """Make a step appear for a source even when no document reached it."""
        self._counts(step, source)

    def merge(self, other: dict[str, Any]) -> None:
        """Add a shard's `to_dict()` (shard order decides which examples are kept)."""
        for step, by_source in other["steps"].items():
            for source, c in by_source.items():
                mine = self._counts(step, source)
                for key in ("documents_in", "characters_in", "documents_out", "characters_out"):
                    mine[key] += c[key]
                for reason, r in c["reasons"].items():
                    m = mine["reasons"].setdefault(reason, {"count": 0, "examples": []})
                    m["count"] += r["count"]
                    room = self.examples - len(m["examples"])
                    m["examples"].extend(r["examples"][:max(room, 0)])
        for step, extra in other.get("extra", {}).items():
            mine_extra = self.extra.setdefault(step, {})
            for key, value in extra.items():
                if isinstance(value, dict):  # counters: {"email": 3} or {"hellaswag": [12]}
                    target = mine_extra.setdefault(key, {})
                    for k, v in value.items():
                        if isinstance(v, list):
                            target[k] = sorted(set(target.get(k, [])) | set(v))
                        else:
                            target[k] = target.get(k, 0) + v
                else:
                    mine_extra[key] = value

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "extra": self.extra}

    def step_list(self, order: list[str]) -> list[dict[str, Any]]:
        """The `steps` list of stats.json, in pipeline order, with each step's extras."""
        out = []
        for name in order:
            if name not in self.steps:
                continue
            entry: dict[str, Any] = {"name": name, "by_source": self.steps[name]}
            entry.update(self.extra.get(name, {}))
            out.append(entry)
        return out
