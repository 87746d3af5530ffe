"""The chat suite: a deterministic prompt set, program-judged edge cases, an end-to-end run."""

import json
from itertools import combinations

import pytest
import tokenizers

from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError
from lmforge.eval import chat_suite as cs
from lmforge.eval.instructions import KINDS
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import train_tokenizer

TEXT = ["Rivers carry water from mountains to the sea. The moon orbits the earth; "
        "bees make honey in a hive. Bread needs flour, yeast and an oven."] * 40


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXT, 400, show_progress=False)


@pytest.fixture(scope="module")
def model():
    d = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=512,
                    context_length=128, name="chat-test")
    return initialize(Transformer(d), "gpt2", 0).eval()


def test_prompt_set_is_deterministic_and_covers_every_kind():
    a, b, c = cs.ifeval_prompts(0), cs.ifeval_prompts(0), cs.ifeval_prompts(1)
    assert len(a) == 100
    assert [p.prompt for p in a] == [p.prompt for p in b]
    assert [p.prompt for p in a] != [p.prompt for p in c]
    assert {i.kind for p in a for i in p.instructions} == set(KINDS)
    for p in a:
        assert 1 <= len(p.instructions) <= 3
        for x, y in combinations(p.instructions, 2):  # never two that could contradict
            assert not cs.SLOTS[x.kind] & cs.SLOTS[y.kind], (p.prompt, x.kind, y.kind)
        assert all(i.prompt_text() in p.prompt for i in p.instructions)
    assert len({len(p.instructions) for p in a}) == 3


def test_no_repetition_catches_loops_but_not_prose():
    check = cs.NoRepetition()
    assert check.check("The cat sat on the mat. " * 5).passed is False
    assert check.check("!!!!!!!!!!!!!!!!!!").passed is False
    prose = ("Volcanoes form where magma rises. The magma rises through cracks, and when "
             "pressure builds the volcano erupts.")
    assert check.check(prose).passed
    assert check.check("").passed  # emptiness is NonEmpty's job


def test_on_topic_counts_shared_content_words():
    case = cs._topic_case(0, "volcanoes", "How do volcanoes form, and why do they erupt?")
    on_topic = next(c for c in case.checks if c.kind == "on_topic")
    assert {"volcanoe", "volcano", "lava", "magma", "erupt", "form"} <= on_topic.topic_words
    assert on_topic.check("Magma rises and the volcano erupts lava.").passed
    drift = on_topic.check("I like to eat pizza with my friends on Sunday.")
    assert not drift.passed and drift.detail.startswith("0/")
    assert not on_topic.check("Lava is hot.").passed  # one shared word is not enough


def test_contradictory_prompt_records_the_constraint_chosen():
    assert cs._contradiction_choice("Yes.")["chose"] == "one word"
    assert cs._contradiction_choice("A b. C d. E f.")["chose"] == "three or more sentences"
    assert cs._contradiction_choice("Maybe so.")["chose"] == "neither"


def test_long_prompt_is_cut_from_the_left_keeping_the_chat_framing(tok):
    text = cs.long_prompt_text(tok, 128)
    assert len(tok.encode(text)) > 128
    full, _ = tok.render_chat([{"role": "user", "content": text}], add_generation_prompt=True)
    ids, seen, note = cs.fit_chat_prompt(tok, text, 100)
    assert len(ids) == 100 and note and "truncated from the left" in note
    assert ids[:2] == full[:2] and ids[-2:] == full[-2:]  # BOS, <|user|> ... <|end|>, <|assistant|>
    assert ids[2:-2] == full[len(full) - 100 + 2:-2]
    assert seen.endswith("what is the text above about?") and text.endswith(seen)
    short_ids, short_seen, none = cs.fit_chat_prompt(tok, "Hi", 100)
    assert none is None and short_seen == "Hi" and len(short_ids) < 100


def test_end_to_end_on_a_tiny_random_model(model, tok):
    tasks = cs.run_chat_suite(model, tok, {"max_new_tokens": 4}, limit=5, progress=False)
    assert set(tasks) == {"ifeval", "edge_cases", "pydocs_qa", "pydocs_tools"}
    json.dumps(tasks)  # the report is JSON
    tools = tasks.pop("pydocs_tools")  # a call, then an answer: no single token count
    assert tools["n"] == 10 and {it["kind"] for it in tools["items"]} == {"needs_tool",
                                                                          "no_tool"}
    assert {"call_accuracy", "false_calls"} <= set(tools["metrics"])
    for entry in tasks.values():
        assert entry["kind"] == "generation" and entry["n"] == 5 == len(entry["items"])
        for m in entry["metrics"].values():
            assert set(m) == {"value", "stderr"} and 0 <= m["value"] <= 1
        for item in entry["items"]:
            assert {"index", "prompt", "output", "scores", "checks"} <= set(item)
            assert item["tokens"] <= 4 and isinstance(item["output"], str)
    ifeval = tasks["ifeval"]
    for name in ("prompt_level_acc", "instruction_level_acc", "prompt_level_loose_acc",
                 "instruction_level_loose_acc"):
        items = ifeval["items"]
        w = [it.get("weights", {}).get(name, 1) for it in items]
        mean = sum(it["scores"][name] * wi for it, wi in zip(items, w)) / sum(w)
        assert ifeval["metrics"][name]["value"] == pytest.approx(mean)  # paired-comparable
    long_item = next(it for it in tasks["edge_cases"]["items"] if it["case"] == "very_long")
    assert "truncated from the left" in long_item["note"]
    assert [it["case"] for it in tasks["edge_cases"]["items"]][:2] == ["empty",
                                                                      "whitespace_only"]


def test_seeded_sampling_repeats(model, tok):
    settings = {"max_new_tokens": 4, "temperature": 1.0, "seed": 7}
    def outputs(s):
        tasks = cs.run_chat_suite(model, tok, s, limit=2, progress=False)
        return [i["output"] for t in tasks.values() for i in t["items"]]

    assert outputs(settings) == outputs(settings)
    assert outputs({**settings, "seed": 8}) != outputs(settings)


def test_stop_token_ends_the_answer_and_is_not_in_the_output(model, tok, monkeypatch):
    import lmforge.engine.generate as gen

    hello = tok.encode("hello")
    monkeypatch.setattr(gen, "generate_tokens",
                        lambda m, ids, params, stop_ids=(): iter([*hello, tok.end_id]))
    tasks = cs.run_chat_suite(model, tok, {"max_new_tokens": 8}, limit=1, progress=False)
    item = tasks["ifeval"]["items"][0]
    assert item["output"] == "hello" and item["finish"] == "stop"
    monkeypatch.setattr(gen, "generate_tokens", lambda m, ids, params, stop_ids=(): iter([]))
    empty = cs.run_chat_suite(model, tok, {"max_new_tokens": 8}, limit=1, progress=False)
    assert empty["ifeval"]["metrics"]["instruction_level_acc"]["value"] == 0.0
    assert empty["edge_cases"]["items"][0]["scores"]["non_empty"] == 0.0


def test_a_tokenizer_without_role_tokens_is_refused(model, tok):
    cs.require_chat_template(tok)  # lmforge tokenizers carry the chat layout
    bare = tokenizers.Tokenizer(tokenizers.models.BPE())
    bare.train_from_iterator(TEXT, tokenizers.trainers.BpeTrainer(vocab_size=300,
                                                                 show_progress=False))
    with pytest.raises(LmforgeError) as e:
        cs.require_chat_template(bare, "model 'imported-llama'")
    assert "imported-llama" in str(e.value) and "no chat template" in str(e.value)
    assert "lmforge tokenizer train --input FILES" in e.value.hint
    with pytest.raises(LmforgeError, match="no chat template"):
        cs.run_chat_suite(model, bare, {"model": "imported"}, limit=1, progress=False)
