"""The chat suite's `pydocs_qa` task: are answers about held-out functions summary-shaped?

The questions are `heldout_questions()` of the built-in SFT data (`pydocs_chat`): names of
the embedded corpus that SFT never showed, asked in one of its phrasings. Each question goes
to the model as one user turn (no system prompt, as in the held-out split), decoded greedily
in batches (`generate_batch`) until <|end|> or `max_new_tokens` (64 by default).

An answer is *summary-shaped* when all four checks pass:
- `ends_turn`: the model emitted <|end|> within the budget (a base model that never learned
  the turn layout scores 0 here);
- `on_topic`: it shares a content word with the expected summary or with the name's last
  dotted component split on underscores (`os.get_terminal_size` -> get, terminal, size);
- `not_copy`: it does not contain the question, and the Jaccard overlap of its word set
  with the question's is below 0.6;
- `is_sentence`: it is non-empty and at most 60 words.

Beside these, `declines` is the share of answers that say "I don't know" or refuse, the
two other shapes SFT teaches: such an answer names the function, so it can pass all four
checks, and a high `summary_shaped` should be read with it. It is not part of the score.

The report holds each share with its standard error, and one item per question (index into
`heldout_questions()`, prompt, output, scores, checks) so `eval compare` pairs two models on
the same questions and `eval review` can sample them.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lmforge.eval.instructions import CheckResult

TASK = "pydocs_qa"
DEFAULT_MAX_NEW_TOKENS = 64
MAX_WORDS = 60
MAX_JACCARD = 0.6
CHECKS = ("ends_turn", "on_topic", "not_copy", "is_sentence")

# Words that say nothing about which function is meant: English function words, the words
# of the question phrasings and the boilerplate most docstring summaries share ("Return
# the value of the given object."). Sharing only these is not being on topic.
STOP_WORDS = frozenset("""
the and for with that this from are was were not but can its has have had into than then
when which what who whom how why does did done you your one all any each only also more
most some such there their they them these those will would should could may might must
been being our out over under about after before other same use used using like just very
here yes nor off per via both either neither whether while where
explain purpose tell describe summarize sentence function method class module
return returns returned given object objects value values new instance python
""".split())

# The openings of the built-in "I don't know" answers and refusals, and their usual variants.
_DECLINE = re.compile(r"\bi(?: do ?n[o']t know| am not aware|'m not aware| can(?:no|')t help)\b")
_WORD = re.compile(r"[a-z0-9]+")
_ALPHA = re.compile(r"[a-z]+")


def word_set(text: str) -> set[str]:
    """Lowercased runs of letters and digits: the words the copy check compares."""
    return set(_WORD.findall(text.lower()))


def content_words(text: str) -> set[str]:
    """Lowercased alphabetic words of 3+ letters that are not in `STOP_WORDS`."""
    return {w for w in _ALPHA.findall(text.lower()) if len(w) >= 3 and w not in STOP_WORDS}


def name_words(name: str) -> set[str]:
    """Content words of a name's last dotted component, split on underscores."""
    return content_words(" ".join(name.rsplit(".", 1)[-1].split("_")))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


@dataclass(frozen=True)
class Question:
    index: int  # position in heldout_questions(): stable for one Python, so reports pair
    name: str
    question: str
    expected: str


def heldout_items(seed: int = 0, limit: int | None = None) -> list[Question]:
    """The held-out questions, all of them or a seeded sample of `limit` in corpus order."""
    from lmforge.data.corpora.pydocs_chat import heldout_questions

    every = [Question(i, name, q, expected)
             for i, (name, q, expected) in enumerate(heldout_questions())]
    if limit is None or limit >= len(every):
        return every
    picked = sorted(random.Random(seed).sample(range(len(every)), limit))
    return [every[i] for i in picked]


def check_answer(q: Question, answer: str, ended: bool, stop: str = "<|end|>"
                 ) -> list[CheckResult]:
    """The four checks of one answer; `ended` says whether generation stopped at <|end|>
    (`stop` names what it stopped at otherwise, for the detail)."""
    ws = answer.split()
    topic = content_words(q.expected) | name_words(q.name)
    shared = sorted(topic & content_words(answer))
    overlap = jaccard(word_set(answer), word_set(q.question))
    # Containment is judged on lowercased, whitespace-normalised text, so a re-spaced
    # or re-cased echo of the question still counts as a copy.
    contains = " ".join(q.question.lower().split()) in " ".join(answer.lower().split())
    return [
        CheckResult("ends_turn", ended, "emitted <|end|>" if ended else f"stopped: {stop}"),
        CheckResult("on_topic", bool(shared),
                    f"shares {', '.join(shared[:6])}" if shared else "no shared content word"),
        CheckResult("not_copy", not contains and overlap < MAX_JACCARD,
                    ("contains the question; " if contains else "")
                    + f"word overlap {overlap:.2f} (< {MAX_JACCARD} passes)"),
        CheckResult("is_sentence", 0 < len(ws) <= MAX_WORDS,
                    f"{len(ws)} words (1-{MAX_WORDS} passes)"),
    ]


def declines(answer: str) -> bool:
    """Whether an answer says it does not know, or refuses."""
    return bool(_DECLINE.search(answer.lower().replace("\u2019", "'")))


def scores_of(results: Sequence[CheckResult], answer: str = "") -> dict[str, float]:
    """Per-item scores: summary_shaped (all checks pass), each check, and `declines`."""
    out = {r.kind: float(r.passed) for r in results}
    return {"summary_shaped": float(all(r.passed for r in results)), **out,
            "declines": float(declines(answer))}


def run_pydocs_qa(model: Any, tok: Any, settings: Any, limit: int | None = None,
                  progress: bool = True) -> dict:
    """Ask the model every held-out question (or a seeded sample of `limit`); the report's
    task entry. Reads from `settings`: max_new_tokens (64), seed (0), batch_size (32),
    temperature/top_k/top_p (greedy unless asked; sampling is seeded per item)."""
    from lmforge.engine import generate as gen
    from lmforge.engine.sampling import SamplingParams
    from lmforge.eval.chat_suite import _metric, _progress, _setting, fit_chat_prompt

    max_new = int(_setting(settings, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
    seed = int(_setting(settings, "seed", 0))
    temperature = float(_setting(settings, "temperature", 0.0))
    batch = max(1, int(_setting(settings, "batch_size", 32)))
    context = model.design.context_length
    room = context - max(1, min(max_new, context // 2))
    questions = heldout_items(seed, limit)

    def params_for(q: Question) -> SamplingParams:
        return SamplingParams(temperature=temperature, top_k=int(_setting(settings, "top_k", 0)),
                              top_p=float(_setting(settings, "top_p", 1.0)),
                              max_new_tokens=max_new,
                              seed=None if temperature == 0 else seed * 1_000_003 + q.index)

    # A role token or the end of the document also stops the answer, but only <|end|>
    # ends the turn the way a chat model must.
    stops = tuple(t for t in (getattr(tok, n, None) for n in (
        "end_id", "eos_id", "bos_id", "user_id", "assistant_id", "system_id"))
        if isinstance(t, int))
    start, items = time.perf_counter(), []
    bar = _progress(progress, len(questions))
    with bar:
        task = bar.add_task(TASK, total=len(questions))
        for lo in range(0, len(questions), batch):
            chunk = questions[lo:lo + batch]
            fitted = [fit_chat_prompt(tok, q.question, room) for q in chunk]
            outs = gen.generate_batch(model, [ids for ids, _, _ in fitted],
                                      [params_for(q) for q in chunk], stop_ids=stops)
            for q, (_, seen, note), out in zip(chunk, fitted, outs):
                items.append(_item(q, seen, note, list(out), tok, stops))
            bar.advance(task, len(chunk))
    return _entry(items, f"builtin:pydocs-chat heldout (seed={seed})",
                  time.perf_counter() - start, _metric)


def _item(q: Question, seen: str, note: str | None, out: list[int], tok: Any,
          stops: Sequence[int]) -> dict:
    stopped = bool(out) and out[-1] in stops
    last = out[-1] if stopped else None
    body = out[:-1] if stopped else out
    answer = tok.decode(body, skip_special=True)
    ended = last is not None and last == tok.end_id
    stop = f"no stop token in {len(body)} tokens" if last is None else tok.decode([last])
    results = check_answer(q, answer, ended, stop)
    item = {"index": q.index, "name": q.name, "prompt": seen, "output": answer,
            "expected": q.expected, "scores": scores_of(results, answer),
            "checks": [r.to_dict() for r in results], "tokens": len(body),
            "finish": "stop" if stopped else "length"}
    if note:
        item["note"] = note
    return item


def _entry(items: list[dict], source: str, seconds: float,
           metric: Callable[[Sequence[float]], dict]) -> dict:
    metrics = {}
    if items:  # no questions (a Python without documentation): no metric to report
        for name in ("summary_shaped", *CHECKS, "declines"):
            metrics[name] = metric([it["scores"][name] for it in items])
    return {"kind": "generation", "source": source, "n": len(items), "num_fewshot": 0,
            "metrics": metrics, "items": items, "seconds": seconds}
