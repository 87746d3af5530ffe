"""Verifiable instructions: each kind passes what it should and fails what it should."""

import json

import pytest

from lmforge.errors import LmforgeError
from lmforge.eval import instructions as ins

# (instruction, a response that follows it, a response that does not)
CASES = [
    (ins.WordLimit("at most", 5), "One two three four five.", "One two three four five six."),
    (ins.WordLimit("at least", 3), "  don't stop now  ", "don't stop"),
    (ins.SentenceCount("exactly", 2), "Dr. Smith came home. He slept!",
     "It rained. It poured. It stopped."),
    (ins.SentenceCount("at least", 3), "A b. C d? E f!", "A b. C d"),
    (ins.RequiredKeywords(("lava", "magma")), "Magma becomes lava.", "Magma is hot; lavas flow."),
    (ins.ForbiddenWords(("very",)), "It is every bit as good.", "It is Very good."),
    (ins.KeywordFrequency("bee", 2), "A bee met a BEE.", "A bee met bees."),
    (ins.JsonFormat(("topic", "summary")), '```json\n{"topic": "x", "summary": "y"}\n```',
     '{"topic": "x"}'),
    (ins.JsonFormat(), '[1, 2, 3]', "Sure! {\"a\": 1}"),
    (ins.BulletCount(2), "Intro\n* one\n  - two\n**bold** line\n***", "* one\n* two\n* three"),
    (ins.ParagraphCount(2), "First part.\n***\nSecond part.", "First.\n***\n***\nSecond."),
    (ins.ParagraphCount(3, "blank"), "a\n\nb\n \nc", "a\nb\n\nc"),
    (ins.AllLowercase(), "all good here 123.", "all good Here."),
    (ins.AllUppercase(), "ALL GOOD, 123!", "ALL GOOD, mostly"),
    (ins.StartsWith("My answer is:"), "  my  answer is: yes", "Well, my answer is: yes"),
    (ins.EndsWith("That is all."), "Done. That is all.  \n", "That is all. Bye."),
    (ins.QuotationWrap(), '"quoted text"', '"half quoted'),
    (ins.Title(), "<<Poem of joy>>\nroses are red", "<< >>\nno title <<\nsplit>>"),
    (ins.NoCommas(), "no commas here.", "one，two"),
    (ins.PlaceholderCount(2), "Send it to [name] at [address].", "Send it to [name] and []."),
    (ins.ResponseLanguage(), "The cat is on the mat and it is happy there.",
     "Le chat est sur le tapis et il est heureux."),
]


@pytest.mark.parametrize("instruction, good, bad", CASES,
                         ids=[f"{c[0].kind}-{i}" for i, c in enumerate(CASES)])
def test_each_kind_passes_and_fails(instruction, good, bad):
    ok, ko = instruction.check(good), instruction.check(bad)
    assert ok.passed, ok.detail
    assert not ko.passed, ko.detail
    assert ok.kind == ko.kind == instruction.kind
    assert instruction.prompt_text().endswith((".", "point."))


def test_at_least_ten_kinds_and_all_are_covered_by_the_cases():
    assert len(ins.KINDS) >= 10
    assert {c[0].kind for c in CASES} == set(ins.KINDS)


@pytest.mark.parametrize("kind", sorted(ins.KINDS))
def test_an_empty_response_fails_every_kind(kind):
    instruction = next(c[0] for c in CASES if c[0].kind == kind)
    for empty in ("", "   \n\t"):
        r = instruction.check(empty)
        assert not r.passed and r.detail == "empty response"


def test_word_and_sentence_counting_rules():
    assert ins.words("don't well-known 3.5 e-mail") == ["don't", "well-known", "3", "5",
                                                        "e-mail"]
    assert ins.count_sentences("Hello there") == 1
    assert ins.count_sentences("Wait... what?! Yes.") == 3
    assert ins.count_sentences("Pi is 3.14 roughly. See e.g. this.") == 2
    assert ins.count_sentences("") == 0


def test_loose_retries_without_first_or_last_line_and_asterisks():
    lower = ins.AllLowercase()
    response = "Sure! Here it is:\nall lowercase text\nHope This Helps"
    assert not lower.check(response).passed
    assert ins.check_loose(lower, response).passed
    bullets = ins.BulletCount(2)
    framed = "Here are the points:\n* one\n* two\n* Any questions?"
    assert not bullets.check(framed).passed and ins.check_loose(bullets, framed).passed
    title = ins.Title()
    assert not ins.check_loose(title, "no title at all\nreally").passed
    # Markdown emphasis around the phrase is forgiven only by the loose variant.
    starts = ins.StartsWith("My answer is:")
    assert not starts.check("**My answer is:** yes").passed
    assert ins.check_loose(starts, "**My answer is:** yes").passed


def test_ifeval_scores_strict_and_loose():
    instrs = [ins.AllLowercase(), ins.NoCommas(), ins.WordLimit("at most", 4)]
    response = "Answer:\nhello there friend"
    strict, loose = ins.check_all(instrs, response)
    s = ins.ifeval_scores(strict, loose)
    assert s["prompt_level_acc"] == 0.0 and s["instruction_level_acc"] == pytest.approx(2 / 3)
    assert s["prompt_level_loose_acc"] == 1.0 and s["instruction_level_loose_acc"] == 1.0
    with pytest.raises(LmforgeError):
        ins.ifeval_scores([], [])


def test_instructions_round_trip_through_json():
    for instruction, _, _ in CASES:
        data = json.loads(json.dumps(instruction.to_dict()))
        assert ins.instruction_from_dict(data) == instruction
    with pytest.raises(LmforgeError, match="unknown instruction kind"):
        ins.instruction_from_dict({"kind": "haiku"})
    with pytest.raises(LmforgeError, match="relation"):
        ins.WordLimit("roughly", 3)
