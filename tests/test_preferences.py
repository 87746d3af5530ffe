"""Preference pairs: every accepted shape converts to (prompt messages, chosen, rejected), the
Anthropic HH transcripts split at their shared turns, ties and identical pairs are skipped and
counted, bad records stop with one error naming file:line, the mask covers the answer only,
and the built-in pydocs-prefs pairs keep pydocs-chat's held-out names out of training."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lmforge.data.corpora import pydocs_chat as pc
from lmforge.data.preferences import (
    PairReport,
    PreferencePair,
    encode_pair,
    load_pairs,
    split_pairs,
)
from lmforge.errors import LmforgeError
from lmforge.tokenizer import train_tokenizer

HH_CHOSEN = ("\n\nHuman: What is a list?\n\nAssistant: An ordered sequence.\n\nHuman: And a "
             "tuple?\n\nAssistant: An immutable ordered sequence.")
HH_REJECTED = ("\n\nHuman: What is a list?\n\nAssistant: An ordered sequence.\n\nHuman: And a "
               "tuple?\n\nAssistant: A kind of fruit.")


def _jsonl(path: Path, records: list, gz: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok():
    texts = ["What is a list? An ordered sequence. And a tuple? An immutable one, a fruit."] * 30
    return train_tokenizer(texts, 300, show_progress=False)


# ---- shapes ------------------------------------------------------------------------------------

def test_each_shape_converts(tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    path = _jsonl(tmp_path / "p.jsonl", [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": msgs, "chosen": [{"role": "assistant", "content": "Hello."}],
         "rejected": "Go away."},
        {"chosen": [*msgs, {"role": "assistant", "content": "Hello!"}],  # implicit prompt
         "rejected": [*msgs, {"role": "assistant", "content": "No."}]},
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
    ])
    pairs = load_pairs([str(path)])
    assert [p.source for p in pairs] == [f"{path}:{i}" for i in (1, 2, 3, 4)]
    assert pairs[0] == PreferencePair([{"role": "user", "content": "What is 2+2?"}], "4", "5",
                                      f"{path}:1")
    assert pairs[1].prompt == msgs and (pairs[1].chosen, pairs[1].rejected) == ("Hello.",
                                                                                 "Go away.")
    assert pairs[2].prompt == msgs and (pairs[2].chosen, pairs[2].rejected) == ("Hello!", "No.")
    hh = pairs[3]
    assert hh.prompt == [{"role": "user", "content": "What is a list?"},
                         {"role": "assistant", "content": "An ordered sequence."},
                         {"role": "user", "content": "And a tuple?"}]
    assert (hh.chosen, hh.rejected) == ("An immutable ordered sequence.", "A kind of fruit.")


def test_hh_pairs_that_share_the_start_of_their_answers_split_at_the_last_person_turn(tmp_path):
    # Both answers start "An", and one holds a second "Assistant:" part: both stay answers.
    chosen = "\n\nHuman: Hi\n\nAssistant: An answer.\n\nAssistant: More."
    rejected = "\n\nHuman: Hi\n\nAssistant: An insult."
    (pair,) = load_pairs([str(_jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen,
                                                              "rejected": rejected}]))])
    assert pair.prompt == [{"role": "user", "content": "Hi"}]
    assert pair.chosen == "An answer.\n\nAssistant: More." and pair.rejected == "An insult."


def test_ties_identical_and_unusable_pairs_are_skipped_and_counted(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [
        {"prompt": "a?", "chosen": "x", "rejected": "y"},
        {"prompt": "b?", "chosen": "x", "rejected": "y", "tie": True},
        {"prompt": "c?", "chosen": "x", "rejected": "z", "score_chosen": 3,
         "score_rejected": 3.0},
        {"prompt": "d?", "chosen": " same ", "rejected": "same"},
        {"chosen": HH_CHOSEN, "rejected": HH_CHOSEN},
        {"chosen": "\n\nHuman: Hi\n\nAssistant:", "rejected": "\n\nHuman: Hi\n\nAssistant: Yo"},
        {"chosen": "\n\nHuman: Hi there", "rejected": "\n\nHuman: Hi you\n\nAssistant: Yo"},
    ])
    report = PairReport()
    pairs = load_pairs([str(path)], report)
    assert [p.source for p in pairs] == [f"{path}:1"]
    assert report.kept == 1
    assert report.skipped == {"tie": 2, "identical": 2, "hh-empty-answer": 1,
                              "hh-unaligned": 1}
    notes = "\n".join(report.notes())
    assert f"2 pairs skipped: identical answers (first: {path}:4)" in notes
    assert f"(first: {path}:2)" in notes  # the first tie


def test_hh_rlhf_converts_on_load(shared_data):
    report = PairReport()
    pairs = load_pairs([str(shared_data / "hh_rlhf" / "helpful-base" / "test.jsonl.gz")], report)
    # 2,354 records (SOURCE.md), two of them the same transcript twice.
    assert len(pairs) + sum(report.skipped.values()) == 2354
    assert report.skipped["identical"] >= 2
    for p in pairs:
        assert p.prompt[-1]["role"] == "user" and p.chosen and p.rejected
        assert p.chosen != p.rejected
        roles = [m["role"] for m in p.prompt]
        assert all(a != b for a, b in zip(roles, roles[1:]))  # turns alternate
        assert not any("\n\nHuman:" in m["content"] for m in p.prompt)


# ---- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize(("record", "message"), [
    ({"prompt": "q", "chosen": "a"}, "missing field 'rejected' (fields: chosen, prompt)"),
    ({"prompt": "q"}, "missing field 'chosen' and 'rejected'"),
    ({"chosen": "a", "rejected": "b"}, "missing field 'prompt'"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "field 'chosen' is empty"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, "field 'chosen' is int"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "chosen": "x", "rejected": "y"}, "ends with a assistant turn, not a user turn"),
    ({"prompt": [{"role": "robot", "content": "q"}], "chosen": "x", "rejected": "y"},
     "unknown role 'robot'"),
    (["q", "a", "b"], "a JSON list, not an object"),
])
def test_a_bad_record_is_one_error_naming_file_and_line(tmp_path, record, message):
    path = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok?", "chosen": "x", "rejected": "y"},
                                           record])
    with pytest.raises(LmforgeError) as e:
        load_pairs([str(path)])
    assert e.value.message.startswith(f"{path}:2: ")
    assert message in e.value.message
    assert "chosen" in (e.value.hint or "")


def test_missing_paths_and_empty_inputs_are_refused_before_reading(tmp_path):
    good = _jsonl(tmp_path / "g.jsonl", [{"prompt": "a?", "chosen": "x", "rejected": "y"}])
    with pytest.raises(LmforgeError, match="does not exist") as e:
        load_pairs([str(good), str(tmp_path / "nope.jsonl")])
    assert "pydocs-prefs" in e.value.hint
    with pytest.raises(LmforgeError, match="no preference pairs .*identical"):
        load_pairs([str(_jsonl(tmp_path / "same.jsonl",
                               [{"prompt": "a", "chosen": "x", "rejected": "x"}]))])
    with pytest.raises(LmforgeError, match="no preference data"):
        load_pairs([])


def test_gzip_folders_and_globs(tmp_path):
    folder = tmp_path / "prefs"
    folder.mkdir()
    _jsonl(folder / "a.jsonl.gz", [{"prompt": "a?", "chosen": "x", "rejected": "y"}], gz=True)
    _jsonl(folder / "b.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    assert len(load_pairs([str(folder)])) == 2
    assert len(load_pairs([str(folder / "*.jsonl*")])) == 2


# ---- split and encoding ----------------------------------------------------------------------

def test_split_keeps_prompts_on_one_side_and_is_stable():
    pairs = [PreferencePair([{"role": "user", "content": f"q{i % 40}"}], f"a{i}", f"b{i}", str(i))
             for i in range(200)]
    train, val = split_pairs(pairs, 0.2, seed=3)
    assert len(train) + len(val) == 200 and val
    assert not {p.prompt[0]["content"] for p in train} & {p.prompt[0]["content"] for p in val}
    again, _ = split_pairs(list(reversed(pairs)), 0.2, seed=3)
    assert {p.source for p in again} == {p.source for p in train}
    with pytest.raises(LmforgeError, match="val_fraction"):
        split_pairs(pairs, 1.0)


def test_encode_pair_masks_the_answer_only(tok):
    prompt = [{"role": "user", "content": "What is a list?"},
              {"role": "assistant", "content": "An ordered sequence."},  # not scored
              {"role": "user", "content": "And a tuple?"}]
    pair = PreferencePair(prompt, "An immutable one.", "A fruit.", "here")
    c_ids, c_mask, r_ids, r_mask = encode_pair(tok, pair)
    prompt_ids, _ = tok.render_chat(prompt, add_generation_prompt=True)
    for ids, mask, answer in ((c_ids, c_mask, pair.chosen), (r_ids, r_mask, pair.rejected)):
        assert ids[:len(prompt_ids)] == prompt_ids
        assert not any(mask[:len(prompt_ids)]) and all(mask[len(prompt_ids):])
        scored = [i for i, m in zip(ids, mask) if m]
        assert scored == [*tok.encode(answer), tok.end_id]
    c_ids, c_mask, _, _ = encode_pair(tok, pair, max_tokens=len(prompt_ids) + 2)
    assert len(c_ids) == len(prompt_ids) + 2 and sum(c_mask) == 2
    with pytest.raises(LmforgeError, match="no chosen answer token within the first 5"):
        encode_pair(tok, pair, max_tokens=5)


# ---- the built-in pairs -------------------------------------------------------------------------

def test_pydocs_prefs_keep_held_out_names_out_of_training():
    train, heldout = load_pairs(["pydocs-prefs"]), load_pairs(["pydocs-prefs:heldout"])
    assert len(train) > 1000 and len(heldout) > 100
    held_names = set(pc.heldout_names())
    trained_answers = {e.answer for e in pc._entries() if not pc.is_heldout(e.name)}
    held_answers = {e.answer for e in pc._entries() if pc.is_heldout(e.name)} - trained_answers
    for p in train:
        key = p.source.split(":", 1)[1].split("#")[0]
        assert key not in held_names and not pc.is_heldout(key)
        assert not any(a in p.rejected or a in p.chosen for a in held_answers
                       if len(a) > 40), p.source
    asked_train = {p.source.split(":", 1)[1].split("#")[0] for p in train}
    asked_held = {p.source.split(":", 1)[1].split("#")[0] for p in heldout}
    assert not asked_train & asked_held
    assert {k for k in asked_held if "|" not in k} <= held_names


def test_pydocs_prefs_chosen_is_pydocs_chats_answer_and_rejected_of_each_kind():
    pairs = load_pairs(["pydocs-prefs"])
    replies = {pc.reply_for(e) for e in pc._entries()}
    kinds = {"wrong": 0, "truncated": 0, "rambling": 0}
    for p in pairs:
        assert p.prompt[-1]["role"] == "user" and p.chosen != p.rejected
        kind = p.source.rsplit("#", 1)[-1]
        if kind in kinds:
            kinds[kind] += 1
            assert p.chosen in replies
            name = p.chosen.split(": ", 1)[0]
            assert name in p.prompt[-1]["content"]
            if kind == "truncated":
                assert p.chosen.startswith(p.rejected) and len(p.rejected) < len(p.chosen)
            elif kind == "rambling":
                assert p.chosen.split(": ", 1)[1] in p.rejected  # the answer, in filler
                assert len(p.rejected.split()) >= len(p.chosen.split()) + 20
            else:
                assert p.rejected.startswith(f"{name}: ") and p.rejected in {
                    f"{name}: {e.answer}" for e in pc._entries()}
    assert all(n > 1000 for n in kinds.values()), kinds
    refusals = [p for p in pairs if "refusal|" in p.source]
    assert len(refusals) > 40
    assert all(p.chosen.startswith("I can't help") and not p.rejected.startswith("I can't")
               for p in refusals)
    unknown = [p for p in pairs if "unknown|" in p.source]
    assert unknown and all("I don't know" in p.chosen or "not aware" in p.chosen
                           for p in unknown)
    assert load_pairs(["pydocs-prefs"]) == pairs  # deterministic
