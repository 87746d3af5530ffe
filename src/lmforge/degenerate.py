"""A reply a model got stuck in: one character written over and over ('cccc…'), as a
briefly tuned small model can write. The serve-smoke stage fails on such a reply, and the
red-team loop keeps it out of the answers it retains (tuning on it teaches the loop)."""

from __future__ import annotations

RUN = 16  # real prose never ends in 16 copies of one character; a stuck model does


def repeated_character(text: str) -> str | None:
    """The character `text` is stuck on, or None: the text (whitespace aside) is one
    character repeated, or ends in RUN or more copies of one."""
    core = "".join(text.split())
    if len(core) >= 4 and len(set(core)) == 1:
        return core[0]
    tail = core[-RUN:]
    if len(tail) == RUN and len(set(tail)) == 1:
        return tail[0]
    return None
