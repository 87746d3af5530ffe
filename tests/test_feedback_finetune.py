"""Stage 10: a served model's feedback (ratings, preferred answers, review verdicts) frozen into
a snapshot with counts per filter, and `lmforge finetune MODEL --from-feedback` making a
successor with lineage to its predecessor and the snapshot, kept only without regression."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from lmforge.lifecycle.feedback_data import FeedbackRules, collect, parse_since
from lmforge.lifecycle.feedback_tune import MIN_DPO_PAIRS, choose_method, compare, decision
from lmforge.registry import Workspace
from lmforge.serve.feedback import FeedbackStore, store_path
from lmforge.serve.preferences import add_pair, judge
from test_cli import (  # noqa: F401
    artifact_id,
    corpus_file,
    design_file,
    model_v0,
    one_clean_error,
)

NOW, OLD = "2026-11-05T10:00:00.000Z", "2026-10-01T10:00:00.000Z"
TUNE = ("--steps", "2", "--batch-tokens", "256", "--micro-batch", "4", "--seq-len", "64",
        "--device", "cpu")


def _ask(n: int) -> list[dict]:
    return [{"role": "user", "content": f"What is {n} plus {n}?"}]


class Feedback:
    """Fills one model's feedback store as the server would, one response at a time."""

    def __init__(self, ws_root: Path, model_id: str):
        self.store = FeedbackStore(store_path(ws_root, model_id), model_id)
        self.count = 0

    def answer(self, messages, *texts, endpoint="chat.completions", finish="stop",
               key=None, **request) -> str:
        self.count += 1
        rid = f"chatcmpl-{self.count}"
        self.store.add_response(rid, endpoint, key, {"messages": messages, **request},
                                [{"index": i, "text": t, "finish_reason": finish}
                                 for i, t in enumerate(texts)], {})
        return rid

    def rate(self, rid, rating=None, key=None, choice=0, preferred=None, comment=None) -> int:
        return self.store.add_feedback(rid, choice, rating, preferred, comment, key)[0]

    def review(self, messages, a, b, verdict, key=None):
        pid = f"review-{self.count}"
        self.count += 1
        add_pair(self.store, pid, key, None, messages,
                 [{"content": a, "seed": 1, "finish_reason": "stop"},
                  {"content": b, "seed": 2, "finish_reason": "stop"}], {})
        if verdict is not None:
            judge(self.store, pid, verdict, None, key)

    def date_everything(self, old_seqs=()) -> None:
        """Every signal given on NOW, those in `old_seqs` on OLD (the store writes real
        times; the tests need fixed ones around a --since date)."""
        with self.store.connection() as db:
            db.execute("UPDATE feedback SET created = ?", (NOW,))
            db.execute("UPDATE preferences SET judged = ? WHERE verdict IS NOT NULL", (NOW,))
            for seq in old_seqs:
                db.execute("UPDATE feedback SET created = ? WHERE seq = ?", (OLD, seq))

    def close(self):
        self.store.close()


def fill(ws_root: Path, model_id: str) -> dict:
    """One of each case the rules handle; returns the seq of the one old rating."""
    f = Feedback(ws_root, model_id)
    # Kept: thumbs-up and thumbs-down answers to one conversation (SFT + a pair), twice.
    for n, good, bad, up_key, down_key in ((1, "1 plus 1 is 2.", "It is 7.", "k1", "k2"),
                                           (2, "2 plus 2 is 4.", "Maybe 9.", "k1", "k3")):
        rid = f.answer(_ask(n), good, bad, n=2)
        f.rate(rid, 1, up_key, choice=0)
        f.rate(rid, -1, down_key, choice=1)
    # A refusal rated up on a benign ask: not taught.
    f.rate(f.answer(_ask(3), "I'm sorry, but I can't help with that."), 1, "k2")
    # The same conversation and answer liked twice (two responses): one example.
    f.rate(f.answer(_ask(4), "4 plus 4 is 8."), 1, "k1")
    f.rate(f.answer(_ask(4), "4 plus 4 is 8."), 1, "k2")
    # A user's own better answer: SFT, and a pair over what they got; the -1 alone: unpaired.
    f.rate(f.answer(_ask(5), "Five."), -1, "k3", preferred="5 plus 5 is 10.")
    # Rated up by one key and down by another: conflicting.
    rid = f.answer(_ask(6), "6 plus 6 is 12.")
    f.rate(rid, 1, "k1")
    f.rate(rid, -1, "k2")
    # A key that changed its mind: the last rating stands.
    rid = f.answer(_ask(7), "7 plus 7 is 14.")
    f.rate(rid, -1, "k3")
    f.rate(rid, 1, "k3")
    # Signals without training value, or not in chat text.
    f.rate(f.answer(_ask(8), "8 plus 8 is 16."), comment="nice", key="k1")
    f.rate(f.answer(_ask(9), "9 plus 9 is 18."), 1, "k1", comment="x" * 3000)
    f.rate(f.answer([{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "http://x/cat.png"}}]}], "A cat."), 1, "k2")
    f.rate(f.answer(_ask(10), "Call docstring.", tools=[{"type": "function", "function": {
        "name": "docstring"}}]), 1, "k3")
    f.rate(f.answer("Once upon a", " time.", endpoint="completions"), 1, "k1")
    # Answers that cannot be learned: cut at max_tokens, undecodable bytes.
    f.rate(f.answer(_ask(11), "11 plus 11 is", finish="length"), 1, "k2")
    f.rate(f.answer(_ask(12), "\ufffd\ufffd12"), 1, "k3")
    # One client rating far more than the others: spam.
    for i in range(50):
        f.rate(f.answer(_ask(100 + i), f"Spam {i}."), 1, "spammer")
    # Review page: a verdict (SFT + pair), a tie, one not judged yet.
    f.review(_ask(13), "13 plus 13 is 26.", "13 plus 13 is 31.", "A", key="k2")
    f.review(_ask(14), "28.", "29.", "tie", key="k3")
    f.review(_ask(15), "30.", "31.", None, key="k1")
    # Given before --since.
    old = f.rate(f.answer(_ask(16), "16 plus 16 is 32."), 1, "k1")
    f.date_everything([old])
    f.close()
    return {"old": old}


def test_the_rules_keep_and_drop_what_they_say(tmp_path):
    fill(tmp_path / "ws", "model-x")
    ws = Workspace.open(tmp_path / "ws")
    try:
        data = collect(ws, ["model-x"], FeedbackRules(since=parse_since("2026-11-01")))
    finally:
        ws.close()
    c = data.counts()
    assert c["signals_read"] == {"comment": 1, "preferred": 1, "rating": 69, "review": 2}
    assert c["pending_reviews"] == 1
    assert c["signals_dropped"] == {"before-since": 1, "comment-only": 1, "conflicting": 2,
                                    "long-comment": 1, "no-preference": 1, "non-text": 1,
                                    "not-chat": 1, "spam-key": 50, "superseded": 1,
                                    "tool-use": 1}
    assert c["sft_dropped"] == {"duplicate": 1, "garbled": 1, "refusal": 1, "unfinished": 1}
    assert c["pairs_dropped"] == {"unpaired": 1}
    answers = sorted(ex["messages"][-1]["content"] for ex in data.sft)
    assert answers == ["1 plus 1 is 2.", "13 plus 13 is 26.", "2 plus 2 is 4.",
                       "4 plus 4 is 8.", "5 plus 5 is 10.", "7 plus 7 is 14."]
    assert all(ex["messages"][:-1] == _ask(int(ex["messages"][-1]["content"].split()[0]))
               for ex in data.sft)
    pairs = sorted((p["chosen"], p["rejected"]) for p in data.pairs)
    assert pairs == [("1 plus 1 is 2.", "It is 7."), ("13 plus 13 is 26.", "13 plus 13 is 31."),
                     ("2 plus 2 is 4.", "Maybe 9."), ("5 plus 5 is 10.", "Five.")]
    # Too few pairs for DPO by default (MIN_DPO_PAIRS): SFT, unless asked.
    assert choose_method(None, data) == "sft" and choose_method("dpo", data) == "dpo"
    data.pairs *= MIN_DPO_PAIRS // len(data.pairs)
    assert choose_method(None, data) == "dpo"
    # Without --since the old rating counts; with a later date nothing is left.
    ws = Workspace.open(tmp_path / "ws")
    try:
        everything = collect(ws, ["model-x"], FeedbackRules())
        nothing = collect(ws, ["model-x"], FeedbackRules(since=parse_since("2026-12-01")))
    finally:
        ws.close()
    assert len(everything.sft) == 7 and "before-since" not in everything.dropped_signals
    assert not nothing.sft and not nothing.pairs
    assert nothing.dropped_signals == {"before-since": 73}  # every signal


def test_since_reads_dates_and_times_as_utc():
    assert parse_since("2026-11-01") == "2026-11-01T00:00:00.000Z"
    assert parse_since("2026-11-01T02:00:00+02:00") == "2026-11-01T00:00:00.000Z"
    assert parse_since(None) is None
    with pytest.raises(Exception, match="cannot read --since"):
        parse_since("last tuesday")


def _report(suite: str, values: dict[str, float], gates: list[tuple[str, str, float, bool]]
            ) -> dict:
    tasks: dict = {}
    for metric, value in values.items():
        task, name = metric.split("/")
        tasks.setdefault(task, {"metrics": {}})["metrics"][name] = {"value": value,
                                                                   "stderr": 0.01}
    results = [{"metric": m, "op": op, "threshold": t, "value": values.get(m), "passed": ok}
               for m, op, t, ok in gates]
    return {"suite": suite, "tasks": tasks,
            "gates": {"results": results, "passed": all(r["passed"] for r in results)
                      if results else None}}


def test_no_regression_allows_the_tolerance_and_no_more():
    gates = [("mc/acc", ">=", 0.3, True), ("ppl/bpb", "<=", 3.0, True)]
    before = _report("custom", {"mc/acc": 0.50, "ppl/bpb": 2.00}, gates)
    within = _report("custom", {"mc/acc": 0.49, "ppl/bpb": 2.015}, gates)
    rows = compare(before, within, 0.02)
    assert [r["regressed"] for r in rows] == [False, False]
    assert decision(rows, [within], 0.02)["passed"] is True
    worse = _report("custom", {"mc/acc": 0.47, "ppl/bpb": 1.5}, gates)
    rows = compare(before, worse, 0.02)
    assert [r["regressed"] for r in rows] == [True, False]  # bpb fell: better, not worse
    verdict = decision(rows, [worse], 0.02)
    assert verdict["passed"] is False and "mc/acc" in verdict["reason"]
    # The successor fails a gate its predecessor passed: held, though within tolerance.
    failing = _report("custom", {"mc/acc": 0.49, "ppl/bpb": 2.0},
                      [("mc/acc", ">=", 0.3, True), ("ppl/bpb", "<=", 1.99, False)])
    assert decision(compare(before, failing, 0.02), [failing], 0.02)["passed"] is False
    # A report without gates: each task's headline metric, bpb lower-is-better.
    ungated = _report("pydocs", {"doc/acc_norm": 0.4, "doc/acc": 0.5, "bits/bpb": 2.0}, [])
    after = _report("pydocs", {"doc/acc_norm": 0.41, "doc/acc": 0.1, "bits/bpb": 2.1}, [])
    rows = compare(ungated, after, 0.02)
    assert [(r["metric"], r["regressed"]) for r in rows] == [("doc/acc_norm", False),
                                                             ("bits/bpb", True)]


# ---- the command -----------------------------------------------------------------------


def evaluate(cli, model: str, tmp_path: Path) -> str:
    """A gated evaluation of `model` on a tiny task file; the report's id."""
    items = [{"q": f"the {w} is", "choices": ["red", "blue", "green"], "answer": i % 3}
             for i, w in enumerate(["sky", "sea", "grass", "apple", "leaf"] * 2)]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    (tmp_path / "ppl.jsonl").write_text("".join(json.dumps({"text": f"What is {i} plus {i}?"})
                                                + "\n" for i in range(6)))
    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[tasks.colors]\nkind = "multiple_choice"\npath = "mc.jsonl"\n'
                     'context_field = "q"\nchoices_field = "choices"\ngold_field = "answer"\n\n'
                     '[tasks.ppl]\nkind = "perplexity"\npath = "ppl.jsonl"\n'
                     'text_field = "text"\n')
    code, out, err = cli("eval", model, "--tasks", tasks, "--gate", "colors/acc >= 0",
                         "--gate", "ppl/bpb <= 1000", "--device", "cpu")
    assert code == 0, err
    return artifact_id(out, "eval-report")


@pytest.fixture
def served(cli, model_v0, tmp_path):  # noqa: F811
    """A predecessor with a gated evaluation, and feedback on it."""
    model, _ = model_v0
    report = evaluate(cli, model, tmp_path)
    code, _, err = cli("registry", "alias", "production", model)
    assert code == 0, err
    fill(cli.workspace, model)
    return {"model": model, "report": report}


def _show(cli, ref: str):
    ws = Workspace.open(cli.workspace)
    try:
        art = ws.resolve(ref)
        reports = [r.id for r in ws.children(art.id, kind="eval-report")]
        return art, reports
    finally:
        ws.close()


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_finetune_from_feedback_makes_a_successor_with_lineage_and_a_decision(
        cli, served, method):
    code, out, err = cli("finetune", "production", "--from-feedback", "--since", "2026-11-01",
                         "--method", method, "--max-regression", "0.5", "--alias", "staging",
                         *TUNE)
    assert code == 0, err
    successor = artifact_id(out, "model")
    snap_id = artifact_id(out, "feedback-snapshot")
    assert "successor vs predecessor" in out and "colors/acc" in out and "ppl/bpb" in out
    art, reports = _show(cli, successor)
    snap, _ = _show(cli, snap_id)
    assert art.parents["base"] == served["model"] and art.parents["feedback"] == snap_id
    assert snap.parents["model"] == served["model"]
    assert snap.metrics["sft_examples"] == 6 and snap.metrics["dpo_pairs"] == 4
    assert snap.metrics["signals_dropped/spam-key"] == 50
    assert snap.metrics["signals_dropped/before-since"] == 1
    lines = snap.file("sft.jsonl" if method == "sft" else "dpo.jsonl").read_text().splitlines()
    assert len(lines) == (6 if method == "sft" else 4)
    assert art.metrics["method"] == method
    verdict = art.metrics["no_regression"]
    assert [r["metric"] for r in verdict["checks"]] == ["colors/acc", "ppl/bpb"]
    assert art.metrics["promote"] is verdict["passed"] is True  # within 0.5 of 2 steps
    # The predecessor's values are the ones in its report; the successor's are in its own.
    pred = json.loads(_show(cli, served["report"])[0].file("report.json").read_text())
    assert verdict["checks"][1]["before"] == pred["tasks"]["ppl"]["metrics"]["bpb"]["value"]
    assert len(reports) == 1
    rep, _ = _show(cli, reports[0])
    assert rep.parents == {"model": successor, "baseline": served["report"]}
    assert rep.metrics["ppl/bpb"] == verdict["checks"][1]["after"]
    assert rep.metrics["gates_passed"] is True
    ws = Workspace.open(cli.workspace)
    try:
        assert ws.aliases()["staging"] == successor
        assert ws.aliases()["production"] == served["model"]  # not moved by this stage
    finally:
        ws.close()


def test_a_regressing_successor_is_held(cli, served):
    # A learning rate that wrecks the model: its bits per byte rise far beyond 0.02.
    code, out, err = cli("finetune", served["model"], "--from-feedback", "--method", "sft",
                         "--lr", "0.5", "--alias", "staging", *TUNE)
    assert code == 0, err
    assert "HOLD" in out and "REGRESSED" in out
    art, _ = _show(cli, artifact_id(out, "model"))
    assert art.metrics["promote"] is False
    assert any(r["regressed"] for r in art.metrics["no_regression"]["checks"])
    ws = Workspace.open(cli.workspace)
    try:
        assert "staging" not in ws.aliases()
    finally:
        ws.close()


def test_too_little_feedback_and_no_evaluation_are_clear_errors(cli, model_v0,  # noqa: F811
                                                                tmp_path):
    model, _ = model_v0
    code, _, err = cli("finetune", model, "--from-feedback", *TUNE)
    one_clean_error(code, err, "has no evaluation to compare", "lmforge eval")
    evaluate(cli, model, tmp_path)
    code, _, err = cli("finetune", model, "--from-feedback", *TUNE)
    one_clean_error(code, err, "has no feedback store", "lmforge serve")
    f = Feedback(cli.workspace, model)
    f.rate(f.answer(_ask(1), "2."), 1, "k1")
    f.rate(f.answer(_ask(2), "I'm sorry, but I can't help with that."), 1, "k1")
    f.date_everything()
    f.close()
    code, _, err = cli("finetune", model, "--from-feedback", "--since", "2026-11-01", *TUNE)
    one_clean_error(code, err, "too little feedback to tune with sft: 1 SFT examples",
                    "refusal 1", "--method dpo")
    code, _, err = cli("finetune", model, "--from-feedback", "--method", "rlhf")
    one_clean_error(code, err, "sft or dpo")
    code, _, err = cli("finetune", model, "--from-feedback", "--data", "x.jsonl")
    one_clean_error(code, err, "--data")
    code, _, err = cli("finetune", model, "--data", "x.jsonl")
    one_clean_error(code, err, "needs --method")


def test_the_snapshot_reads_the_store_without_writing_it(tmp_path):
    fill(tmp_path / "ws", "model-y")
    path = store_path(tmp_path / "ws", "model-y")
    before = path.read_bytes()
    ws = Workspace.open(tmp_path / "ws")
    try:
        collect(ws, ["model-y"], FeedbackRules())
    finally:
        ws.close()
    assert path.read_bytes() == before
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM feedback").fetchone()[0] == 70


def test_a_replicas_store_adds_its_feedback_and_its_copies_are_duplicates(tmp_path):
    fill(tmp_path / "ws", "model-x")
    copy = tmp_path / "elsewhere" / "replica.sqlite"  # another machine's store, copied here
    copy.parent.mkdir()
    copy.write_bytes(store_path(tmp_path / "ws", "model-x").read_bytes())
    ws = Workspace.open(tmp_path / "ws")
    try:
        one = collect(ws, ["model-x"], FeedbackRules())
        both = collect(ws, ["model-x"], FeedbackRules(), [copy])
    finally:
        ws.close()
    assert both.read["rating"] == 2 * one.read["rating"]
    assert [ex["messages"] for ex in both.sft] == [ex["messages"] for ex in one.sft]
    assert both.dropped_sft["duplicate"] == one.dropped_sft["duplicate"] + len(one.sft) + 1
    # Rating pairs form across stores: two ups x two downs on each of 2 conversations, one
    # kept each; the preferred-answer pair and the review pair once more each.
    assert both.dropped_pairs["duplicate"] == 2 * (2 * 2 - 1) + 2
    assert both.dropped_pairs["unpaired"] == 2 and len(both.pairs) == len(one.pairs)
    assert both.stores == ["feedback/model-x.sqlite", str(copy)]


def test_a_recipe_step_reads_rules_training_and_dpo_settings(tmp_path):
    from lmforge.lifecycle.feedback_tune import FeedbackTuneSettings
    from lmforge.lifecycle.stages import STAGES

    assert "feedback-finetune" in STAGES
    s = FeedbackTuneSettings.from_dict(
        {"model": "production", "since": "2026-11-01", "method": "dpo", "beta": 0.2,
         "steps": 5, "spam_factor": 3.0, "stores": ["replica.sqlite"]}, "step 'x'", tmp_path)
    assert s.rules.since == "2026-11-01T00:00:00.000Z" and s.rules.spam_factor == 3.0
    assert dict(s.train) == {"steps": 5} and dict(s.dpo) == {"beta": 0.2}
    assert s.stores == (str(tmp_path / "replica.sqlite"),)
    with pytest.raises(Exception, match="unknown setting"):
        FeedbackTuneSettings.from_dict({"model": "m", "sinse": "2026-11-01"}, "step 'x'",
                                       tmp_path)
