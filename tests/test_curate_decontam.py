"""Decontamination against evaluation sets (lmforge.curate.decontam)."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

from lmforge.curate.decontam import (
    BUILTIN_EVAL_SETS,
    Decontaminator,
    EvalSetSpec,
    load_eval_set,
)
from lmforge.errors import LmforgeError

FILLER = ("The weather report for the coming week promises mild mornings and a little rain "
          "near the coast, so farmers are hoping for a better harvest this autumn.")


@pytest.fixture(scope="module")
def hellaswag(shared_data) -> tuple[list[str], Decontaminator]:
    items = load_eval_set(BUILTIN_EVAL_SETS["hellaswag"](shared_data), shared_data)
    dec = Decontaminator()
    assert dec.add_eval_set("hellaswag", items) == len(items)
    return items, dec


def test_builtin_sets_load_with_their_fields(shared_data):
    expected = {"hellaswag": 7030, "arc_easy": 1665, "arc_challenge": 821, "piqa": 1288,
                "winogrande": 2005, "lambada": 3608}
    for name, make in BUILTIN_EVAL_SETS.items():
        spec = make(shared_data)
        assert spec.name == name and Path(spec.path).is_absolute()
        items = load_eval_set(spec, Path("/nonexistent"))  # absolute: base_dir unused
        assert len(items) == expected[name]
    first = json.loads((shared_data / "hellaswag/hellaswag_val.jsonl").open().readline())
    items = load_eval_set(BUILTIN_EVAL_SETS["hellaswag"](shared_data), shared_data)
    assert items[0] == "\n".join([first["ctx"], *first["endings"]])
    arc = load_eval_set(BUILTIN_EVAL_SETS["arc_easy"](shared_data), shared_data)
    assert arc[0].startswith("Which statement best explains") and "Sunlight is the source" in arc[0]


def test_span_of_a_hellaswag_item_is_found(hellaswag):
    items, dec = hellaswag
    k = 1234
    words = items[k].split()
    span = " ".join(words[len(words) // 2 - 6: len(words) // 2 + 7])  # 13 words
    assert len(span.split()) == 13
    doc = f"{FILLER}\n\n{span}\n\n{FILLER}"
    assert dec.matches(doc) == [("hellaswag", k)]
    # Case, punctuation and line breaks do not hide it.
    shouted = re.sub(r"\s+", "\n", span.upper()).replace(" ", "")
    assert dec.matches(f"{FILLER} -- {shouted}!!! {FILLER}") == [("hellaswag", k)]
    assert dec.matches(span.replace(" ", " , ")) == [("hellaswag", k)]
    # Twelve words of it are not an overlap.
    assert dec.matches(" ".join(span.split()[:12])) == []


def test_paraphrase_and_unrelated_text_do_not_match(hellaswag, shared_data):
    items, dec = hellaswag
    # Item 0: "A man is sitting on a roof. he ... starts pulling up roofing on a roof."
    assert "sitting on a roof" in items[0]
    paraphrase = ("A guy was sitting up on the roof of a house, and then he started to pull up "
                  "the old roofing from the roof while holding a Rubik's cube.")
    assert dec.matches(paraphrase) == []
    stories = (shared_data / "tinystories/tinystories_v1_train_head_part00.txt").read_text()
    assert [s for s in stories.split("\n") if dec.matches(s)] == []


def test_memory_of_the_index(hellaswag):
    _, dec = hellaswag
    size = len(pickle.dumps(dec))
    print(f"\nhellaswag: {len(dec._item_set)} items, {len(dec._keys)} 13-grams, "
          f"{dec.nbytes / 2**20:.1f} MiB in memory, {size / 2**20:.1f} MiB pickled")
    assert dec.nbytes < 2_000 * len(dec._item_set)  # ~1.5 KB per 110-word item
    assert size < dec.nbytes * 1.01 + 10_000


def test_pickle_round_trip_keeps_matches(hellaswag):
    items, dec = hellaswag
    copy = pickle.loads(pickle.dumps(dec))
    doc = FILLER + " " + " ".join(items[42].split()[:20])
    assert copy.matches(doc) == dec.matches(doc) == [("hellaswag", 42)]
    assert copy.names == ["hellaswag"] and copy.ngram == 13


def test_short_items_and_several_sets():
    dec = Decontaminator(ngram=13)
    short = "What is the boiling point of water at sea level"  # 10 words
    tiny = "yes or no"
    long = ("the quick brown fox jumps over the lazy dog while the farmer watches from "
            "the porch of the old red barn")
    assert dec.add_eval_set("quiz", [tiny, short, "", long]) == 2
    assert dec.add_eval_set("other", [long]) == 1
    # A short item matches only when the document contains all of it.
    assert dec.matches(f"Question: {short.upper()}? Answer: 100 C.") == [("quiz", 1)]
    assert dec.matches("What is the boiling point of water on a mountain?") == []
    assert dec.matches("Tell me yes or no, please.") == []  # too short to index
    hit = " ".join(long.split()[3:16])
    assert dec.matches(hit) == [("other", 0), ("quiz", 3)]
    with pytest.raises(LmforgeError, match="twice"):
        dec.add_eval_set("quiz", [short])
    assert Decontaminator().matches("anything at all") == []
    with pytest.raises(LmforgeError):
        Decontaminator(ngram=0)


def test_load_eval_set_files_and_errors(tmp_path):
    (tmp_path / "qa.jsonl").write_text(
        '{"q": "Where is Paris?", "a": {"text": ["France", "Spain"]}, "n": 3}\n\n'
        '{"q": "Second?", "a": {"text": []}, "n": null}\n')
    spec = EvalSetSpec("qa", "qa.jsonl", ["q", "a.text", "n"])
    assert load_eval_set(spec, tmp_path) == ["Where is Paris?\nFrance\nSpain\n3", "Second?\n\n"]
    (tmp_path / "lines.txt").write_text("first item\n\n  \nsecond item\n")
    assert load_eval_set(EvalSetSpec("t", str(tmp_path / "lines.txt"), []), tmp_path) == [
        "first item", "second item"]
    with pytest.raises(LmforgeError, match="not found"):
        load_eval_set(EvalSetSpec("x", "missing.jsonl", ["q"]), tmp_path)
    with pytest.raises(LmforgeError, match=r"qa\.jsonl:1: .*no field 'question'") as e:
        load_eval_set(EvalSetSpec("qa", "qa.jsonl", ["question"]), tmp_path)
    assert "a, n, q" in str(e.value)
    with pytest.raises(LmforgeError, match="is an object"):
        load_eval_set(EvalSetSpec("qa", "qa.jsonl", ["a"]), tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"q": "ok"}\n{"q": oops}\n')
    with pytest.raises(LmforgeError, match=r"bad\.jsonl:2: not valid JSON"):
        load_eval_set(EvalSetSpec("b", "bad.jsonl", ["q"]), tmp_path)
