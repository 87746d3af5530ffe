"""Stage 10's data: what users said about a served model's answers, as SFT conversations and
DPO pairs, frozen into a `feedback-snapshot` artifact that the successor names as a parent.

The server keeps every answer and what people said about it in
`<workspace>/feedback/<model id>.sqlite` (serve/feedback.py). This module reads such stores
read-only (a server may be writing them) and turns three kinds of signal into examples:

- a rating (+1/-1) on one choice of a stored answer;
- a preferred answer a user wrote instead of the one they got;
- a review-page verdict (A or B better) on two sampled answers to one prompt.

SFT conversations: each thumbs-up answer, each user-preferred answer and each review
winner, after the conversation the client sent. DPO pairs: a user-preferred answer over the
answer it replaced; a review winner over the loser; a thumbs-up answer over a thumbs-down
answer to the same conversation (at most `max_pairs_per_prompt` pairs a conversation, so one
popular prompt does not outweigh the rest).

Rules, in the order they are applied; each dropped signal or example is counted under one:

signals (a rating, a preferred answer or a verdict)
  before-since   given before --since
  spam-key       from a key that gave more than `spam_factor` x the median key's count of
                 signals (and at least `spam_min_signals`), when at least three keys (clients
                 without a key count as one) gave feedback: one client flooding the store
  long-comment   its comment is longer than `max_comment_chars` (pasted text, not a remark)
  comment-only   a comment with no rating or preferred answer: for people, not for training
  not-chat       the answer was to a plain completion, or the conversation does not end
                 with a user turn (nothing to put an assistant answer after)
  tool-use       the request offered tools or carried tool calls: the store keeps the
                 answer's text, not its parsed calls, so tool use is not learned from it
  non-text       a message's content is not plain text (image or audio parts)
  superseded     the same key rated the same answer again later: the last rating stands
  conflicting    different keys rated the same answer up and down
  no-preference  a review verdict of "tie" or "neither"
examples (an answer to learn, or a chosen/rejected pair)
  unfinished     the answer to learn stopped early (length, content filter, abort); a cut
                 thumbs-down answer still serves as a rejected one (unless filtered/aborted)
  empty          an answer with no text
  long           an answer longer than `max_answer_chars`
  garbled        an answer with U+FFFD or control characters (undecodable model output)
  refusal        an answer to learn (or a chosen answer over a non-refusal) is a refusal:
                 thumbs-up on refusals mostly rewards over-refusal of benign asks, and
                 feedback cannot tell a benign ask from a harmful one; safety data comes from
                 `lmforge redteam to-dataset`, where the ask is known (keep_refusals: keep)
  same-answers   chosen and rejected are the same text
  duplicate      the same conversation and answer (or the same pair) was kept already
  unpaired       a thumbs-down answer with no thumbs-up answer to its conversation
  pair-cap       beyond `max_pairs_per_prompt` rating pairs of one conversation
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.registry import Artifact, Workspace, atomic_write_json
from lmforge.rerun import check_read, records_digest, rerun_metrics
from lmforge.serve.feedback import store_path

SNAPSHOT_KIND = "feedback-snapshot"
SFT_FILE, DPO_FILE, DROPPED_FILE, REPORT_FILE = ("sft.jsonl", "dpo.jsonl", "dropped.jsonl",
                                                  "report.json")
SIGNAL_RULES = ("before-since", "spam-key", "long-comment", "comment-only", "not-chat",
                "tool-use", "non-text", "superseded", "conflicting", "no-preference")
EXAMPLE_RULES = ("unfinished", "empty", "long", "garbled", "refusal", "same-answers",
                 "duplicate", "unpaired", "pair-cap")
_GARBLED = re.compile(r"[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ANONYMOUS = "(no key)"


@dataclass(frozen=True)
class FeedbackRules:
    """The filters' settings; part of the snapshot's settings (and so of its id)."""

    since: str | None = None  # UTC ISO-8601 (as the store writes it); older signals drop
    max_answer_chars: int = 8000
    max_comment_chars: int = 2000
    spam_factor: float = 5.0
    spam_min_signals: int = 20
    max_pairs_per_prompt: int = 4
    keep_refusals: bool = False


def parse_since(text: str | None) -> str | None:
    """`2026-11-01` or `2026-11-01T12:00:00+02:00` as the store's UTC text, which sorts in
    time order against the stored `created` values."""
    if text is None or not str(text).strip():
        return None
    raw = str(text).strip()
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise LmforgeError(f"cannot read --since {raw!r} as a date",
                           hint="write a date or a time, e.g. --since 2026-11-01 or "
                                "--since 2026-11-01T09:30:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)  # a bare date or time is UTC, as stored
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass
class Signal:
    """One thing a person said that may become training data."""

    kind: str  # rating | preferred | review
    where: str  # e.g. "feedback 12 (model-ab12…)": for the dropped list
    key: str  # the key id that said it (or _ANONYMOUS)
    created: str
    endpoint: str = "chat.completions"
    request: dict[str, Any] = field(default_factory=dict)
    comment: str | None = None
    answer: dict[str, Any] = field(default_factory=dict)  # {text, finish_reason}
    rating: int | None = None
    preferred: str | None = None
    target: tuple[str, str, int] | None = None  # (store, response id, choice) rated
    seq: int = 0
    verdict: str | None = None
    answers: list[dict[str, Any]] = field(default_factory=list)  # review: A, B


@dataclass
class FeedbackData:
    """The examples, and what was read, kept and dropped under which rule."""

    sft: list[dict[str, Any]] = field(default_factory=list)  # {"messages", "source"}
    pairs: list[dict[str, Any]] = field(default_factory=list)  # {"prompt", "chosen", ...}
    read: Counter = field(default_factory=Counter)  # signal kind -> count
    dropped_signals: Counter = field(default_factory=Counter)
    dropped_sft: Counter = field(default_factory=Counter)
    dropped_pairs: Counter = field(default_factory=Counter)
    dropped: list[dict[str, Any]] = field(default_factory=list)  # {rule, what, where}
    stores: list[str] = field(default_factory=list)
    pending_reviews: int = 0  # pairs shown on the review page and not judged yet
    read_digests: list[str] = field(default_factory=list)  # per store: the rows as read

    def counts(self) -> dict[str, Any]:
        return {"signals_read": dict(sorted(self.read.items())),
                "signals_dropped": dict(sorted(self.dropped_signals.items())),
                "sft_examples": len(self.sft), "sft_dropped": dict(sorted(
                    self.dropped_sft.items())),
                "dpo_pairs": len(self.pairs),
                "pairs_dropped": dict(sorted(self.dropped_pairs.items())),
                "pending_reviews": self.pending_reviews}

    def describe(self) -> str:
        """One line: what was read and every rule's count, for summaries and errors."""
        read = ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in sorted(self.read.items()))
        parts = [f"read {read or 'no feedback'}"]
        for label, counter in (("signals dropped", self.dropped_signals),
                               ("SFT examples dropped", self.dropped_sft),
                               ("pairs dropped", self.dropped_pairs)):
            if counter:
                parts.append(f"{label}: " + ", ".join(f"{r} {n}" for r, n in
                                                      sorted(counter.items())))
        parts.append(f"kept {len(self.sft)} SFT examples and {len(self.pairs)} DPO pairs")
        return "; ".join(parts)

    def drop(self, counter: Counter, rule: str, what: str, where: str) -> None:
        counter[rule] += 1
        self.dropped.append({"rule": rule, "what": what, "where": where})


# ---- reading the stores ----------------------------------------------------------------


@contextlib.contextmanager
def _read_only(path: Path):
    # mode=ro: the snapshot never writes to a store a running server may be writing.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        yield conn
    finally:
        conn.close()


def _signals(path: Path, label: str, data: FeedbackData) -> list[Signal]:
    """Every rating, preferred answer and judged review in one store, oldest first."""
    out: list[Signal] = []
    try:
        with _read_only(path) as db:
            rows = db.execute(
                "SELECT f.seq, f.response_id, f.choice, f.rating, f.preferred, f.comment, "
                "f.key_id, f.created, r.endpoint, r.request_json, r.choices_json FROM feedback "
                "f JOIN responses r ON r.id = f.response_id ORDER BY f.seq").fetchall()
            has_reviews = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                     "name = 'preferences'").fetchone() is not None
            reviews = db.execute(
                "SELECT id, messages_json, answers_json, verdict, comment, judged, "
                "judged_key_id FROM preferences ORDER BY judged, id").fetchall() \
                if has_reviews else []
    except sqlite3.Error as e:
        raise LmforgeError(f"cannot read the feedback store {path}: {e}",
                           hint="it is written by `lmforge serve`; check the file is a "
                                "feedback store and readable") from None
    # `lmforge reproduce` reads the store again and goes on only if it reads these rows.
    data.read_digests.append(records_digest([list(r) for r in rows],
                                            [list(r) for r in reviews]))
    for seq, rid, choice, rating, preferred, comment, key, created, endpoint, req, chs in rows:
        choices = json.loads(chs)
        answer = choices[choice] if 0 <= choice < len(choices) else {}
        base = dict(where=f"feedback {seq} ({label})", key=key or _ANONYMOUS, created=created,
                    endpoint=endpoint, request=json.loads(req), comment=comment,
                    answer={"text": answer.get("text") or "",
                            "finish_reason": answer.get("finish_reason")},
                    target=(label, rid, choice), seq=seq)
        said = False
        if rating is not None:
            out.append(Signal("rating", rating=rating, **base))
            said = True
        if preferred is not None and preferred.strip():
            out.append(Signal("preferred", preferred=preferred, **base))
            said = True
        if not said:  # a comment alone
            out.append(Signal("comment", **base))
    for pid, messages, answers, verdict, comment, judged, key in reviews:
        if verdict is None:
            data.pending_reviews += 1
            continue
        out.append(Signal("review", where=f"review {pid} ({label})", key=key or _ANONYMOUS,
                          created=judged, request={"messages": json.loads(messages)},
                          comment=comment, verdict=verdict, answers=json.loads(answers)))
    return out


def feedback_stores(ws: Workspace, model_ids: Sequence[str]) -> list[tuple[str, Path]]:
    """(model id, store path) of each model that has a feedback store."""
    return [(m, store_path(ws.root, m)) for m in model_ids
            if store_path(ws.root, m).is_file()]


# ---- the rules -------------------------------------------------------------------------


def _spam_keys(signals: Iterable[Signal], rules: FeedbackRules) -> set[str]:
    per_key = Counter(s.key for s in signals)
    if len(per_key) < 3:
        return set()  # with one or two clients, "far more than the others" says nothing
    median = statistics.median(per_key.values())
    return {k for k, n in per_key.items()
            if n >= rules.spam_min_signals and n > rules.spam_factor * median}


def _text(content: Any) -> str | None:
    """A message's text, or None when it holds anything but text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         for p in content):
        return "".join(str(p.get("text") or "") for p in content)
    return None


def _conversation(s: Signal) -> tuple[list[dict[str, str]] | None, str | None]:
    """(the prompt as role/text messages, None), or (None, the rule it breaks)."""
    if s.endpoint != "chat.completions":
        return None, "not-chat"
    messages = s.request.get("messages")
    if s.request.get("tools") or not isinstance(messages, list) or any(
            isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool")
            for m in messages):
        return (None, "tool-use") if isinstance(messages, list) else (None, "not-chat")
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            return None, "not-chat"
        text = _text(m.get("content"))
        if text is None:
            return None, "non-text"
        out.append({"role": m["role"], "content": text})
    if not out or out[-1]["role"] != "user":
        return None, "not-chat"
    return out, None


def _answer_problem(text: str, rules: FeedbackRules, learned: bool) -> str | None:
    """Why an answer cannot be used (as one to learn when `learned`), or None."""
    if not text.strip():
        return "empty"
    if len(text) > rules.max_answer_chars:
        return "long"
    if _GARBLED.search(text):
        return "garbled"
    if learned and not rules.keep_refusals and _is_refusal(text):
        return "refusal"
    return None


def _is_refusal(text: str) -> bool:
    from lmforge.redteam.detectors import is_refusal

    return is_refusal(text)


def _key(prompt: list[dict[str, str]], *answers: str) -> str:
    return json.dumps([prompt, *[a.strip() for a in answers]], ensure_ascii=False,
                      sort_keys=True)


class _Builder:
    """Collects examples from kept signals, applying the example rules as it goes."""

    def __init__(self, data: FeedbackData, rules: FeedbackRules):
        self.data, self.rules = data, rules
        self.seen_sft: set[str] = set()
        self.seen_pairs: set[str] = set()

    def sft(self, prompt: list[dict[str, str]], text: str, finish: str | None, where: str
            ) -> None:
        problem = "unfinished" if finish not in (None, "stop") else \
            _answer_problem(text, self.rules, learned=True)
        key = _key(prompt, text)
        if problem is None and key in self.seen_sft:
            problem = "duplicate"
        if problem is not None:
            self.data.drop(self.data.dropped_sft, problem, "sft", where)
            return
        self.seen_sft.add(key)
        self.data.sft.append({"messages": [*prompt, {"role": "assistant",
                                                     "content": text.strip()}],
                              "source": where})

    def pair(self, prompt: list[dict[str, str]], chosen: dict[str, Any],
             rejected: dict[str, Any], where: str) -> None:
        c, r = chosen["text"], rejected["text"]
        problem = None
        if chosen.get("finish_reason") not in (None, "stop") or \
                rejected.get("finish_reason") in ("content_filter", "abort"):
            problem = "unfinished"
        problem = problem or _answer_problem(c, self.rules, learned=False) \
            or _answer_problem(r, self.rules, learned=False)
        if problem is None and c.strip() == r.strip():
            problem = "same-answers"
        if problem is None and not self.rules.keep_refusals and _is_refusal(c) \
                and not _is_refusal(r):
            problem = "refusal"
        key = _key(prompt, c, r)
        if problem is None and key in self.seen_pairs:
            problem = "duplicate"
        if problem is not None:
            self.data.drop(self.data.dropped_pairs, problem, "pair", where)
            return
        self.seen_pairs.add(key)
        self.data.pairs.append({"prompt": prompt, "chosen": c.strip(), "rejected": r.strip(),
                                "source": where})


def build(signals: list[Signal], rules: FeedbackRules, data: FeedbackData | None = None
          ) -> FeedbackData:
    """Apply the rules to the signals (oldest first) and build the examples."""
    data = data if data is not None else FeedbackData()
    for s in signals:
        data.read[s.kind] += 1
    live = []
    for s in signals:
        if rules.since is not None and s.created < rules.since:
            data.drop(data.dropped_signals, "before-since", s.kind, s.where)
        else:
            live.append(s)
    spam = _spam_keys(live, rules)
    kept: list[tuple[Signal, list[dict[str, str]]]] = []
    for s in live:
        prompt, problem = _conversation(s)
        if s.key in spam:
            problem = "spam-key"
        elif s.comment is not None and len(s.comment) > rules.max_comment_chars:
            problem = "long-comment"
        elif s.kind == "comment":
            problem = "comment-only"
        elif problem is None and s.kind == "review" and s.verdict not in ("A", "B"):
            problem = "no-preference"
        if problem is not None:
            data.drop(data.dropped_signals, problem, s.kind, s.where)
            continue
        kept.append((s, prompt))  # type: ignore[arg-type]
    ratings = _settled_ratings([(s, p) for s, p in kept if s.kind == "rating"], data)
    b = _Builder(data, rules)
    for s, prompt in kept:
        if s.kind == "preferred":
            mine = {"text": s.preferred or "", "finish_reason": "stop"}
            b.sft(prompt, mine["text"], "stop", s.where)
            b.pair(prompt, mine, s.answer, s.where)
        elif s.kind == "review":
            won = "AB".index(s.verdict or "A")
            chosen, rejected = s.answers[won], s.answers[1 - won]
            chosen = {"text": chosen.get("content") or "",
                      "finish_reason": chosen.get("finish_reason")}
            rejected = {"text": rejected.get("content") or "",
                        "finish_reason": rejected.get("finish_reason")}
            b.sft(prompt, chosen["text"], chosen["finish_reason"], s.where)
            b.pair(prompt, chosen, rejected, s.where)
    _rating_examples(ratings, b, rules)
    return data


def _settled_ratings(rated: list[tuple[Signal, list[dict[str, str]]]], data: FeedbackData
                     ) -> list[tuple[Signal, list[dict[str, str]]]]:
    """One rating per key and answer (the last), and none for answers rated both ways."""
    last: dict[tuple[Any, str], tuple[Signal, list[dict[str, str]]]] = {}
    for s, prompt in rated:  # oldest first: a later rating of the same key replaces
        earlier = last.get((s.target, s.key))
        if earlier is not None:
            data.drop(data.dropped_signals, "superseded", "rating", earlier[0].where)
        last[(s.target, s.key)] = (s, prompt)
    by_answer: dict[Any, list[tuple[Signal, list[dict[str, str]]]]] = defaultdict(list)
    for (target, _), item in last.items():
        by_answer[target].append(item)
    out = []
    for items in by_answer.values():
        if len({s.rating for s, _ in items}) > 1:
            for s, _ in items:
                data.drop(data.dropped_signals, "conflicting", "rating", s.where)
            continue
        out.append(items[0])  # several keys agreeing: one example of the answer
        for s, _ in items[1:]:
            data.drop(data.dropped_sft, "duplicate", "sft", s.where)
    return sorted(out, key=lambda item: item[0].seq)


def _rating_examples(ratings: list[tuple[Signal, list[dict[str, str]]]], b: _Builder,
                     rules: FeedbackRules) -> None:
    """Thumbs-up answers as SFT; per conversation, thumbs-up over thumbs-down as pairs."""
    by_prompt: dict[str, dict[int, list[Signal]]] = defaultdict(lambda: {1: [], -1: []})
    prompts: dict[str, list[dict[str, str]]] = {}
    for s, prompt in ratings:
        key = _key(prompt)
        prompts[key] = prompt
        by_prompt[key][s.rating or 1].append(s)
        if s.rating == 1:
            b.sft(prompt, s.answer["text"], s.answer["finish_reason"], s.where)
    for key, sides in by_prompt.items():
        ups, downs = sides[1], sides[-1]
        if not ups:
            for s in downs:
                b.data.drop(b.data.dropped_pairs, "unpaired", "rating", s.where)
            continue
        made = 0
        for down in downs:
            for up in ups:
                where = f"{up.where} over {down.where}"
                if made >= rules.max_pairs_per_prompt:
                    b.data.drop(b.data.dropped_pairs, "pair-cap", "pair", where)
                    continue
                before = len(b.data.pairs)
                b.pair(prompts[key], up.answer, down.answer, where)
                made += len(b.data.pairs) - before


def collect(ws: Workspace, model_ids: Sequence[str], rules: FeedbackRules,
            extra_stores: Sequence[Path] = ()) -> FeedbackData:
    """Read the stores of `model_ids` (those that exist) and `extra_stores` (files copied
    from other machines' workspaces, say) and build the examples."""
    data = FeedbackData()
    stores = feedback_stores(ws, model_ids) + [(p.name, p) for p in extra_stores]
    signals: list[Signal] = []
    for label, path in stores:
        data.stores.append(str(path.relative_to(ws.root)) if path.is_relative_to(ws.root)
                           else str(path))
        signals.extend(_signals(path, label, data))
    signals.sort(key=lambda s: (s.created or "", s.where))  # one time line across stores
    return build(signals, rules, data)


# ---- the snapshot ----------------------------------------------------------------------


def _jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    from lmforge.registry.atomic import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                                    for r in records))


def snapshot(ws: Workspace, model: Artifact, rules: FeedbackRules,
             also: Sequence[Artifact] = (), extra_stores: Sequence[Path] = ()
             ) -> tuple[Artifact, FeedbackData]:
    """Freeze the feedback on `model` (and on the models in `also`, and in the store files
    `extra_stores`) into a registered `feedback-snapshot`: sft.jsonl, dpo.jsonl,
    dropped.jsonl and report.json with the counts. The same feedback and rules give the same
    artifact (its id follows the files)."""
    models = [model, *[a for a in also if a.id != model.id]]
    for path in extra_stores:
        if not path.is_file():
            raise LmforgeError(f"no feedback store at {path}",
                               hint="give a .sqlite file from a server's "
                                    "<workspace>/feedback/ folder")
    stores = feedback_stores(ws, [m.id for m in models])
    if not stores and not extra_stores:
        raise LmforgeError(f"model {model.id} has no feedback store "
                           f"({store_path(ws.root, model.id)} does not exist)",
                           hint=f"serve it (`lmforge serve {model.id}`), and let users rate "
                                f"answers (POST /v1/feedback) or review pairs at /review")
    data = collect(ws, [m.id for m in models], rules, extra_stores)
    read = records_digest(data.read_digests)
    check_read(read, "feedback rows", "the feedback store changed")
    report = {"models": [m.id for m in models], "stores": data.stores,
              "rules": asdict(rules), **data.counts()}
    with ws.staging() as d:
        _jsonl(d / SFT_FILE, data.sft)
        _jsonl(d / DPO_FILE, data.pairs)
        _jsonl(d / DROPPED_FILE, data.dropped)
        atomic_write_json(d / REPORT_FILE, report)
        parents: dict[str, Any] = {"model": model.id}
        if len(models) > 1:
            parents["also"] = [m.id for m in models[1:]]
        art = ws.register(d, kind=SNAPSHOT_KIND, stage="feedback", parents=parents,
                          settings={"rules": asdict(rules)},
                          metrics={**_flat(data), **rerun_metrics({
                              "read_sha256": read, "cwd": os.getcwd(),
                              "extra_stores": [str(p) for p in extra_stores]})},
                          name=f"feedback-{model.name or model.id}")
    return art, data


def _flat(data: FeedbackData) -> dict[str, Any]:
    """The counts as `registry show` lists them: one number per name."""
    out: dict[str, Any] = {"sft_examples": len(data.sft), "dpo_pairs": len(data.pairs),
                           "pending_reviews": data.pending_reviews}
    for kind, n in data.read.items():
        out[f"read/{kind}"] = n
    for prefix, counter in (("signals_dropped", data.dropped_signals),
                            ("sft_dropped", data.dropped_sft),
                            ("pairs_dropped", data.dropped_pairs)):
        for rule, n in counter.items():
            out[f"{prefix}/{rule}"] = n
    return dict(sorted(out.items()))
