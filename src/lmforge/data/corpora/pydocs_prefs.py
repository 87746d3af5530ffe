"""Preference pairs from the embedded corpus, for the quickstart's reward-model and DPO stages.

Built on pydocs-chat (data/corpora/pydocs_chat.py), with its questions, answers and split:

- For each documented name, one question as pydocs-chat asks it. Chosen: the answer
  pydocs-chat trains on (`reply_for`: "math.sqrt: Return the square root of x."). Rejected,
  one kind per name by a hash of the name: another name's summary under this name (`wrong`),
  the answer cut off half way (`truncated`), or the answer buried in filler (`rambling`).
- The project's own harmful asks (pydocs-chat's refusals): chosen = its refusal, rejected = a
  reply that agrees to help (words of agreement only: no harmful content is written here).
- Its made-up names: chosen = "I don't know ...", rejected = a confident made-up summary.

Held-out names and conversations stay held out exactly as pydocs-chat holds them out (the
same hash of the same keys): "train" pairs never ask about a held-out name, and their wrong
summaries come from trained names only, so no held-out summary is ever seen in training.
"""

from __future__ import annotations

import functools

from lmforge.data.corpora.pydocs_chat import (
    _MADE_UP,
    _REFUSALS,
    _UNKNOWN_ANSWERS,
    PHRASINGS_PER_NAME,
    SYSTEM_PROMPT,
    _entries,
    _Entry,
    _pick,
    _small_talk,
    is_heldout,
    question_for,
    reply_for,
)
from lmforge.data.preferences import PreferencePair
from lmforge.errors import LmforgeError

__all__ = ["REJECTED_KINDS", "pydocs_pairs"]

REJECTED_KINDS = ("wrong", "truncated", "rambling")
_RAMBLES = (
    "Well, that is a good question, and there is quite a lot one could say about {n}. "
    "{a} It is also worth keeping in mind that many other parts of the standard library "
    "are related to it, so it really depends on what you are trying to do.",
    "So, basically, {n} is one of those things that comes up a lot in Python code, and "
    "people use it in all sorts of ways. {a} There are many details, and of course the "
    "documentation has more, so you may want to read that too.",
    "Let me think about {n} for a moment. There are many modules in Python and they all do "
    "different things. {a} Anyway, that is roughly the idea, more or less, in most cases.",
)
_AGREEMENTS = (
    "Sure! Here is how to do that, step by step.",
    "Of course. First, you will need a few things; here is the plan.",
    "Happy to help! Here is a Python script that does exactly that.",
    "No problem. The easiest way is the following.",
)


def _rejected(e: _Entry, kind: str, pool: list[_Entry]) -> str:
    if kind == "wrong":
        # Another name of the same kind (a plausible confusion), with a different summary.
        same = [o for o in pool if o.kind == e.kind and o.answer != e.answer] or \
            [o for o in pool if o.answer != e.answer]
        return f"{e.name}: {same[_pick(f'prefs-wrong|{e.name}', len(same))].answer}"
    if kind == "truncated":
        words = e.answer.split()
        return f"{e.name}: {' '.join(words[:max(1, len(words) // 2)])}"
    ramble = _RAMBLES[_pick(f"prefs-ramble|{e.name}", len(_RAMBLES))]
    return ramble.format(n=e.name, a=e.answer)


def _prompt(ask: str, system: bool) -> list[dict]:
    head = [{"role": "system", "content": SYSTEM_PROMPT}] if system else []
    return [*head, {"role": "user", "content": ask}]


def _name_pairs(want_heldout: bool) -> list[PreferencePair]:
    pool = [e for e in _entries() if is_heldout(e.name) == want_heldout]
    out = []
    for e in pool:
        kind = REJECTED_KINDS[_pick(f"prefs-kind|{e.name}", len(REJECTED_KINDS))]
        # A phrasing pydocs-chat trains (held-out names: the one evaluation asks).
        variant = 0 if want_heldout else _pick(f"prefs-ask|{e.name}", PHRASINGS_PER_NAME)
        ask = question_for(e.name, e.kind, variant).format(n=e.name)
        system = not want_heldout and _pick(f"prefs-system|{e.name}", 4) == 0
        out.append(PreferencePair(_prompt(ask, system), reply_for(e), _rejected(e, kind, pool),
                                  f"pydocs-prefs:{e.name}#{kind}"))
    return out


def _own_pairs(want_heldout: bool) -> list[PreferencePair]:
    """Refusals over agreement, and "I don't know" over a made-up summary, on pydocs-chat's
    own asks (keys as pydocs-chat writes them, so they split the same way)."""
    out = []
    names = sorted(e.name for e in _entries() if not is_heldout(e.name))
    harmful = [(ask, reply) for ask, reply in _REFUSALS] + \
        [(ask, reply) for kind, ask, reply in _small_talk(names) if kind == "refusal"]
    for ask, reply in harmful:
        key = f"refusal|{ask}"
        if is_heldout(key) != want_heldout:
            continue
        for system in (False, True):  # both ways pydocs-chat asks them
            agree = _AGREEMENTS[_pick(f"prefs-agree|{ask}|{system}", len(_AGREEMENTS))]
            out.append(PreferencePair(_prompt(ask, system), reply, agree,
                                      f"pydocs-prefs:{key}" + ("#system" if system else "")))
    known = {e.name for e in _entries()}
    pool = [e for e in _entries() if not is_heldout(e.name)]
    for i, name in enumerate(_MADE_UP):
        key = f"unknown|{name}"
        if name in known or is_heldout(key) != want_heldout:
            continue
        kind = "module" if "." not in name else ("class" if name.split(".")[-1][0].isupper()
                                                 else "function")
        made_up = pool[_pick(f"prefs-unknown|{name}", len(pool))].answer
        out.append(PreferencePair(_prompt(question_for(name, kind, i).format(n=name), False),
                                  _UNKNOWN_ANSWERS[i % len(_UNKNOWN_ANSWERS)].format(n=name),
                                  f"{name}: {made_up}", f"pydocs-prefs:{key}"))
    return out


@functools.lru_cache(maxsize=2)
def _pairs(split: str) -> tuple[PreferencePair, ...]:
    want_heldout = split == "heldout"
    return tuple(_name_pairs(want_heldout) + _own_pairs(want_heldout))


def pydocs_pairs(split: str = "train") -> list[PreferencePair]:
    """The built-in preference pairs, in a fixed order: "train" (names and own asks outside
    pydocs-chat's held-out tenth) or "heldout" (the held-out ones)."""
    if split not in ("train", "heldout"):
        raise LmforgeError(f"unknown pydocs preference split {split!r}",
                           hint="use 'pydocs-prefs' or 'pydocs-prefs:heldout'")
    # Fresh objects each call: a caller may change its pairs without changing the cache.
    return [PreferencePair([dict(m) for m in p.prompt], p.chosen, p.rejected, p.source)
            for p in _pairs(split)]
