"""The chat suite's pydocs_qa task: the summary-shape checker on hand-written answers, a
scripted model that answers perfectly or echoes the question, and a tiny random model."""

import json

import pytest

from lmforge.data.corpora.pydocs_chat import heldout_questions
from lmforge.design.spec import ModelDesign
from lmforge.eval import chat_suite as cs
from lmforge.eval import pydocs_qa as qa
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import train_tokenizer

TEXT = ["What does textwrap.dedent do? Remove any common leading whitespace from every "
        "line in text. Explain os.get_terminal_size. Return the size of the terminal "
        "window as a tuple of columns and lines. The moon orbits the earth."] * 40

DEDENT = qa.Question(0, "textwrap.dedent", "What does textwrap.dedent do?",
                     "Remove any common leading whitespace from every line in text.")
METRICS = ("summary_shaped", "ends_turn", "on_topic", "not_copy", "is_sentence")


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXT, 400, show_progress=False)


@pytest.fixture(scope="module")
def model():
    # A context long enough that no held-out question is cut (prompt room = context - 64).
    d = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=512,
                    context_length=256, name="pydocs-qa-test")
    return initialize(Transformer(d), "gpt2", 0).eval()


def passed(answer: str, ended: bool = True, q: qa.Question = DEDENT) -> dict[str, bool]:
    return {r.kind: r.passed for r in qa.check_answer(q, answer, ended)}


# ---------------------------------------------------------------- the checker


def test_a_finished_paraphrase_of_the_summary_is_summary_shaped():
    flags = passed("It strips the common indentation whitespace from each line of a text.")
    assert flags == dict.fromkeys(qa.CHECKS, True)
    answer = "Removes leading whitespace."
    assert qa.scores_of(qa.check_answer(DEDENT, answer, True), answer) == {
        "summary_shaped": 1.0, **dict.fromkeys(qa.CHECKS, 1.0), "declines": 0.0}


def test_the_reference_summaries_pass_and_echoes_fail_on_every_question():
    # The ceiling of the >= 90% figure: a few summaries are symbols only ("Same as a != b.")
    # and share no word with their name, so even the reference answer is off topic there.
    items = qa.heldout_items()
    shaped = [all(r.passed for r in qa.check_answer(q, q.expected, True)) for q in items]
    assert sum(shaped) / len(items) >= 0.98
    assert not any(qa.check_answer(q, q.question, True)[2].passed for q in items)


def test_i_dont_know_is_counted_apart_but_can_pass_the_checks():
    answer = "I don't know textwrap.dedent; it is not in the Python documentation I have read."
    assert qa.declines(answer) and qa.scores_of(qa.check_answer(DEDENT, answer, True), answer
                                                )["summary_shaped"] == 1.0
    for text in ("I do not know.", "I'm not aware of it.", "I can’t help with that.",
                 "I cannot help with hacking.", "I am not aware of dedent."):
        assert qa.declines(text), text
    assert not qa.declines("It removes indentation I know of.")


def test_the_name_alone_makes_an_answer_on_topic():
    size = qa.Question(1, "os.get_terminal_size", "Explain os.get_terminal_size.",
                       "Return the size of the terminal window.")
    assert qa.name_words(size.name) == {"get", "terminal", "size"}
    assert passed("It tells you how big the terminal is.", q=size)["on_topic"]
    assert passed("Dedent an indented block.")["on_topic"]  # 'dedent' from the name


def test_copying_the_question_fails_not_copy():
    assert not passed("What does textwrap.dedent do?")["not_copy"]
    # contained in a longer answer, in other case and spacing: still a copy
    echo = passed("Well,  WHAT does textwrap.dedent   do? It removes leading whitespace.")
    assert not echo["not_copy"] and echo["on_topic"]
    # the question's words reordered: Jaccard 1.0 >= 0.6
    assert not passed("textwrap.dedent: what does it do")["not_copy"]
    # one shared word out of many is fine: Jaccard well below 0.6
    assert passed("textwrap.dedent removes whitespace that all lines share.")["not_copy"]


def test_an_off_topic_answer_fails_on_topic():
    flags = passed("The moon orbits the earth once a month.")
    assert not flags["on_topic"] and flags["ends_turn"] and flags["not_copy"]
    # stop words and docstring boilerplate are not content
    assert not passed("It returns the value of the given object.")["on_topic"]


def test_an_unfinished_answer_fails_ends_turn():
    flags = passed("Remove any common leading whitespace from every line", ended=False)
    assert not flags["ends_turn"] and flags["on_topic"] and flags["is_sentence"]
    assert qa.scores_of(qa.check_answer(DEDENT, "Remove whitespace", False))[
        "summary_shaped"] == 0.0


def test_empty_and_rambling_answers_are_not_sentences():
    assert not passed("")["is_sentence"]
    assert not passed("   ")["is_sentence"]
    assert not passed(" ".join(["whitespace"] * 61))["is_sentence"]
    assert passed(" ".join(["whitespace"] * 60))["is_sentence"]


def test_questions_are_held_out_and_sampled_deterministically():
    every = qa.heldout_items()
    assert len(every) == len(heldout_questions()) > 100
    assert [q.index for q in every] == list(range(len(every)))
    a, b, c = qa.heldout_items(0, 20), qa.heldout_items(0, 20), qa.heldout_items(1, 20)
    assert a == b and a != c and len(a) == 20
    assert [q.index for q in a] == sorted({q.index for q in a})  # corpus order, no repeats
    assert all(every[q.index] == q for q in a)
    assert qa.heldout_items(0, 10_000) == every


# ---------------------------------------------------------------- scripted and tiny models


def scripted(tok, answer_for):
    """A stand-in for generate_batch: the answer `answer_for(question)` then <|end|>."""
    by_question = {q: (q, e) for _, q, e in heldout_questions()}

    def generate_batch(model, prompts, params, stop_ids=()):
        assert all(p.max_new_tokens == qa.DEFAULT_MAX_NEW_TOKENS for p in params)
        out = []
        for ids in prompts:
            question, expected = by_question[tok.decode(ids, skip_special=True)]
            out.append(tok.encode(answer_for(question, expected)) + [tok.end_id])
        return out

    return generate_batch


def test_a_model_answering_with_the_summary_scores_one(model, tok, monkeypatch):
    import lmforge.engine.generate as gen

    monkeypatch.setattr(gen, "generate_batch", scripted(tok, lambda q, expected: expected))
    entry = qa.run_pydocs_qa(model, tok, {"batch_size": 8}, limit=30, progress=False)
    assert entry["n"] == 30 and all(it["finish"] == "stop" for it in entry["items"])
    for name in METRICS:
        assert entry["metrics"][name]["value"] == 1.0, name
    assert entry["metrics"]["summary_shaped"]["stderr"] == 0.0
    assert entry["metrics"]["declines"]["value"] == 0.0
    assert all(it["output"] == it["expected"] for it in entry["items"])


def test_a_model_echoing_the_question_scores_zero(model, tok, monkeypatch):
    import lmforge.engine.generate as gen

    monkeypatch.setattr(gen, "generate_batch", scripted(tok, lambda q, expected: q))
    entry = qa.run_pydocs_qa(model, tok, {}, limit=30, progress=False)
    assert entry["metrics"]["summary_shaped"]["value"] == 0.0
    assert entry["metrics"]["not_copy"]["value"] == 0.0
    assert entry["metrics"]["ends_turn"]["value"] == 1.0  # it did end the turn


def test_a_model_that_never_ends_the_turn_scores_zero(model, tok, monkeypatch):
    import lmforge.engine.generate as gen

    def rambles(model, prompts, params, stop_ids=()):
        return [tok.encode(" whitespace line") * 2 for _ in prompts]  # no stop token

    monkeypatch.setattr(gen, "generate_batch", rambles)
    entry = qa.run_pydocs_qa(model, tok, {}, limit=10, progress=False)
    assert entry["metrics"]["ends_turn"]["value"] == 0.0
    assert entry["metrics"]["summary_shaped"]["value"] == 0.0
    assert all(it["finish"] == "length" for it in entry["items"])


def test_the_chat_suite_reports_pydocs_qa_on_a_tiny_random_model(model, tok):
    tasks = cs.run_chat_suite(model, tok, {"max_new_tokens": 4, "batch_size": 3}, limit=7,
                              progress=False)
    entry = tasks["pydocs_qa"]
    json.dumps(entry)  # the report is JSON
    assert entry["kind"] == "generation" and entry["n"] == 7 == len(entry["items"])
    assert set(METRICS) <= set(entry["metrics"])
    for m in entry["metrics"].values():
        assert set(m) == {"value", "stderr"} and 0 <= m["value"] <= 1 and m["stderr"] >= 0
    every = heldout_questions()
    for item in entry["items"]:
        assert {"index", "prompt", "output", "scores", "checks", "expected"} <= set(item)
        assert item["prompt"] == every[item["index"]][1]  # pairs with other reports by index
        assert item["tokens"] <= 4 and isinstance(item["output"], str)
        assert [c["kind"] for c in item["checks"]] == list(qa.CHECKS)
        assert item["scores"]["summary_shaped"] == float(all(c["passed"]
                                                             for c in item["checks"]))
    for name in METRICS:  # each metric is the mean of its item scores (paired-comparable)
        mean = sum(it["scores"][name] for it in entry["items"]) / 7
        assert entry["metrics"][name]["value"] == pytest.approx(mean)

