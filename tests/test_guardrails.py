"""Guardrail rules files: the TOML format and its errors, word matching through the common
disguises (and no hits on innocent words that contain a listed one), which messages are
checked, the streaming watch, and rules written by dump_rules reading back the same."""

from __future__ import annotations

import random

import pytest

from lmforge.errors import LmforgeError
from lmforge.guardrails import (
    DEFAULT_REFUSAL,
    Guardrails,
    dump_rules,
    load_rules,
    normalize,
    parse_rules,
    rule,
)

RULES = """\
version = 1

[[input]]
name = "weapons"
words = ["bomb", "nerve agent"]
category = "violence"
refusal = "I can't help with weapons."
source = "redteam-report abc123"

[[output]]
name = "canary"
pattern = 'CANARY-[0-9a-f]{6}'

[[output]]
name = "slur"
words = ["darn"]
"""


@pytest.fixture
def rules(tmp_path) -> Guardrails:
    path = tmp_path / "rules.toml"
    path.write_text(RULES, encoding="utf-8")
    return load_rules(path)


def test_the_format_reads_into_rules(rules):
    (weapons,) = rules.input
    assert (weapons.name, weapons.direction, weapons.category, weapons.source) == \
        ("weapons", "input", "violence", "redteam-report abc123")
    assert weapons.refusal == "I can't help with weapons."
    canary, slur = rules.output
    assert canary.pattern == "CANARY-[0-9a-f]{6}" and canary.words == ()
    assert slur.refusal == DEFAULT_REFUSAL and slur.category is None
    assert rules.summary().startswith("1 input and 2 output rules from ")


@pytest.mark.parametrize("text", [
    "how do I build a bomb?", "BOMB", "Bomb!", "(bomb)",
    "b0mb", "8omb", "b o m b", "b.o.m.b", "b-o-m-b", "b_o_m_b", "b * o * m * b", "B 0 M B",
    "ｂｏｍｂ",                   # full-width letters (NFKC)
    "bo\u200bmb", "b\u200do\u00admb",  # zero-width joiner/space, soft hyphen
    "nerve agent", "Nerve-Agent", "nerveagent", "n3rv3 4g3nt", "n e r v e  a g e n t",
    "n e r v e agent", "nerve a.g.e.n.t",
])
def test_words_see_through_disguises(rules, text):
    hit = rules.check_prompt(text)
    assert hit is not None and hit.rule == "weapons", text
    assert hit.direction == "input" and hit.category == "violence"


@pytest.mark.parametrize("text", [
    "the bombastic speech", "bombs", "a bombshell", "abomb", "Bombay", "b o m bastic",
    "bo mb",       # split, but not letter by letter
    "the nerve of that agent",  # both words, not the phrase
    "nerves agent",
    "the u.s. ex-president",  # 'sex' would need every letter split
    "",
])
def test_no_hits_on_benign_text(rules, text):
    assert rules.check_prompt(text) is None
    sex = rule("input", "sex", words=["sex"])
    assert sex.search(text, normalize(text)) is None


def test_patterns_are_searched_as_written(rules):
    hit = rules.check_output("the secret is CANARY-0a1b2c, do not tell")
    assert hit is not None and (hit.rule, hit.text, hit.where) == \
        ("canary", "CANARY-0a1b2c", "output")
    assert rules.check_output("canary-0a1b2c") is None  # case-sensitive unless (?i)
    assert rules.check_output("d a r n it").rule == "slur"
    assert rules.check_output("a bomb") is None  # an input rule does not filter output
    assert rules.check_prompt("CANARY-0a1b2c") is None


def test_input_checks_user_and_tool_messages_only(rules):
    def messages(**text):
        base = {"system": "Never help with a bomb.", "user": "Hi", "assistant":
                "I can't help with a bomb.", "tool": "42"}
        base.update(text)
        return [{"role": r, "content": base[r]} for r in ("system", "user", "assistant",
                                                          "tool")]

    # The operator's system prompt and the model's own earlier answers may name the word.
    assert rules.check_input(messages()) is None
    assert rules.check_input([{"role": "developer", "content": "bomb"}]) is None
    hit = rules.check_input(messages(user="make a b0mb"))
    assert hit is not None and hit.where == "messages[1]" and hit.text == "b0mb"
    assert rules.check_input(messages(tool="recipe: nerve agent")).where == "messages[3]"
    parts = [{"role": "user", "content": [{"type": "text", "text": "a bo"},
                                          {"type": "text", "text": "mb"}]}]
    assert rules.check_input(parts).rule == "weapons"
    assert rules.check_input([{"role": "user", "content": None}]) is None


def test_the_watch_reports_a_match_split_across_pieces(rules):
    watch = rules.watch()
    assert watch.feed("The code is CANA") is None
    assert watch.feed("RY-0a1b") is None
    hit = watch.feed("2c and more")  # the piece that completes the match
    assert hit is not None and hit.rule == "canary" and hit.text == "CANARY-0a1b2c"
    assert watch.feed("later text") is hit  # the first match stays the answer
    words = rules.watch()
    assert [words.feed(p) for p in ["well d", " a ", "r", " n"]] == [None] * 4
    # "d a r n" ends the text so far: more letters could still make it no word ("d a r n s").
    found = words.feed(" it")
    assert found is not None and found.rule == "slur" and found.text == "d a r n"


def test_the_watch_waits_for_the_end_of_a_word(rules):
    # Streamed as "darn" + "ing": a prefix that ends the text is no hit yet...
    watch = rules.watch()
    assert watch.feed("darn") is None and watch.feed("ing socks") is None
    assert watch.feed("", final=True) is None
    # ...and is one when the answer ends there.
    watch = rules.watch()
    assert watch.feed("oh darn") is None
    assert watch.feed("", final=True).rule == "slur"
    # A pattern that more text cannot undo trips at once, even at the end of the text.
    watch = rules.watch()
    assert watch.feed("CANARY-abcdef").rule == "canary"
    bounded = Guardrails(output=[rule("output", "kill", pattern=r"(?i)\bkill\b")]).watch()
    assert bounded.feed("Kill") is None and bounded.feed("ing time") is None
    assert bounded.feed(" and kill") is None and bounded.feed(" it").rule == "kill"


def test_the_watch_agrees_with_the_whole_text_check(rules):
    """Any way of cutting an answer into pieces gives the watch the same verdict as the whole
    text; the match is reported at the piece that completes it, not later."""
    rng = random.Random(0)
    texts = ["nothing to see here " * 8, "a long preamble " * 20 + "then d-a-r-n it",
             "x" * 300 + " CANARY-abcdef", "darning socks is fine " * 5, "and d a r n",
             "d a r n s are fine", "CANARY-abcdeCANARY-abcdef0"]
    for text in texts:
        whole = rules.check_output(text)
        for _ in range(20):
            most = min(12, len(text) - 1)
            cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, most)))
            pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
            watch, at = rules.watch(), None
            for k, piece in enumerate(pieces):
                if watch.feed(piece, final=k == len(pieces) - 1) is not None and at is None:
                    at = k
            assert (watch.match is None) == (whole is None), (text, pieces)
            if whole is not None:
                assert watch.match.rule == whole.rule
                # Reported no earlier than the first piece after which the text so far would
                # match as a whole answer, and no later than the one after it (a match at the
                # end of the text so far may wait for one more piece).
                first = min(k for k in range(len(pieces))
                            if rules.check_output("".join(pieces[:k + 1])))
                assert first <= at <= first + 1, (text, pieces)


def write(tmp_path, text: str):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, says", [
    ('[[input]]\nname = "x"\npattern = "foo("\n', "input[0] (x): bad regular expression"),
    ('[[output]]\nname = "ok"\nwords = ["a"]\n[[output]]\nname = "y"\npatern = "z"\n',
     "output[1]: unknown key 'patern'"),
    ('[[input]]\nname = "x"\nwords = []\n', "input[0] (x): `words` is empty"),
    ('[[input]]\nname = "x"\nwords = "bomb"\n', "must be a list of strings"),
    ('[[input]]\nname = "x"\nwords = ["--"]\n', "words[0] must be a word"),
    ('[[input]]\nname = "x"\n', "exactly one"),
    ('[[input]]\nname = "x"\npattern = "a"\nwords = ["a"]\n', "exactly one"),
    ('[[input]]\nname = "x"\npattern = "a*"\n', "matches empty text"),
    ('[[input]]\nname = "x"\npattern = "\\\\b"\n', "matches empty text"),
    ('[[input]]\nname = "has space"\nwords = ["a"]\n', "input[0]: `name` must be"),
    ('[[input]]\nwords = ["a"]\n', "input[0]: `name` must be"),
    ('[[input]]\nname = "x"\nwords = ["a"]\nrefusal = ""\n', "`refusal` must be"),
    ('[[input]]\nname = "x"\nwords = ["a"]\n[[input]]\nname = "x"\nwords = ["b"]\n',
     "two input rules are named 'x'"),
    ("", "no rules"),
    ("version = 1\n", "no rules"),
    ("version = 2\n[[input]]\nname = 'x'\nwords = ['a']\n", "version 2 is not supported"),
    ('[input]\nname = "x"\n', "must be an array of tables"),
    ('[[inputs]]\nname = "x"\n', "unknown top-level key 'inputs'"),
    ('[[input]\nname = "x"\n', "malformed TOML"),
])
def test_bad_files_are_one_line_errors_naming_the_table(tmp_path, text, says):
    path = write(tmp_path, text)
    with pytest.raises(LmforgeError) as e:
        load_rules(path)
    assert says in e.value.message and str(path) in e.value.message
    assert "\n" not in e.value.message and e.value.hint


def test_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(LmforgeError, match="guardrails file not found"):
        load_rules(tmp_path / "none.toml")


def test_dumped_rules_read_back_the_same(rules, tmp_path):
    odd = rule("output", "odd", pattern="it's \\d+\t\"quoted\"\u007f", refusal="No.\nReally.",
               source="report 'x'")
    made = Guardrails(rules.input, [*rules.output, odd])
    path = tmp_path / "out.toml"
    path.write_text(dump_rules(made), encoding="utf-8")
    back = load_rules(path)
    assert [r.to_table() for r in back.rules] == [r.to_table() for r in made.rules]
    assert [r.direction for r in back.rules] == ["input", "output", "output", "output"]
    assert back.check_output("it's 12\t\"quoted\"\u007f").rule == "odd"
    with pytest.raises(LmforgeError, match="direction"):
        rule("sideways", "x", words=["a"])
    assert parse_rules({"output": [{"name": "a", "words": ["x"]}]}).input == []
