"""Prompt lists (what RLHF samples answers to and what `eval compare --judge` asks): every
shape, preference records and HH transcripts by their shared turns, `hf:` datasets, fallbacks,
and bad records named by file and line."""

import gzip
import json

import pytest

from lmforge.data.files import absent_local, with_fallback
from lmforge.data.prompts import load_prompts
from lmforge.errors import LmforgeError

HH_CHOSEN = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is a cat?\n\nAssistant: A pet."
HH_REJECTED = ("\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is a cat?\n\nAssistant: "
               "No idea.")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_every_shape_gives_the_turns_before_the_first_answer(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"text": "What is a dog?"},
        {"prompt": "What is a sun?"},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "What is a moon?"},
                      {"role": "assistant", "content": "A rock."}]},
        {"prompt": "What is a cup?", "chosen": "A vessel.", "rejected": "Dunno."},
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
        {"text": "What is a dog?"},  # a duplicate: kept once
    ])
    prompts = load_prompts([str(path)])
    assert [p[-1]["content"] for p in prompts] == [
        "What is a dog?", "What is a sun?", "What is a moon?", "What is a cup?",
        "What is a cat?"]
    assert prompts[2][0] == {"role": "system", "content": "Be brief."}
    # The HH record's prompt is every turn the two transcripts share, split into messages.
    assert prompts[4] == [{"role": "user", "content": "Hi there"},
                          {"role": "assistant", "content": "Hello!"},
                          {"role": "user", "content": "What is a cat?"}]


def test_pairs_without_a_usable_prompt_are_left_out_and_bad_records_name_the_line(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        # These transcripts part inside the person's turn: no prompt both share.
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED.replace("a cat", "a dog")},
        {"prompt": "What is a tie?", "chosen": "A", "rejected": "B", "tie": True},
        {"chosen": HH_CHOSEN, "rejected": HH_CHOSEN},  # identical answers, a fine prompt
    ])
    assert [p[-1]["content"] for p in load_prompts([str(path)])] == [
        "What is a tie?", "What is a cat?"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"chosen": "plain text",
                                                                "rejected": "other"}])
    with pytest.raises(LmforgeError) as e:
        load_prompts([str(bad)])
    assert f"{bad}:2" in e.value.message and "HH transcript" in e.value.message
    none = write_jsonl(tmp_path / "none.jsonl", [{"answer": "x"}])
    with pytest.raises(LmforgeError) as e:
        load_prompts([str(none)])
    assert f"{none}:1" in e.value.message and "'chosen'/'rejected'" in e.value.message


def test_hh_rlhf_prompts_load_from_the_real_file(shared_data):
    path = shared_data / "hh_rlhf" / "helpful-online" / "test.jsonl.gz"
    prompts = load_prompts([str(path)])
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = sum(1 for _ in f)  # 1,137 (SOURCE.md)
    # Distinct prompts only, and every one ends with the person's turn.
    assert 0.9 * records <= len(prompts) <= records
    assert all(p[-1]["role"] == "user" and p[-1]["content"] for p in prompts)
    assert not any("\n\nHuman:" in m["content"] for p in prompts for m in p)


def test_hub_prompts_read_a_local_dataset_copy(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"chosen": HH_CHOSEN.replace("cat", n), "rejected": HH_REJECTED.replace("cat", n)}
            for n in ("cat", "dog", "owl")]
    folder = tmp_path / "hh"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder))
    prompts = load_prompts([f"hf:{folder}:test[1:3]"])  # rows 1 and 2 only
    assert [p[-1]["content"] for p in prompts] == ["What is a dog?", "What is a owl?"]


def test_fallback_replaces_the_absent_local_paths_and_says_so(tmp_path):
    here = write_jsonl(tmp_path / "p.jsonl", [{"text": "x"}])
    gone = str(tmp_path / "gone" / "p.jsonl")
    assert absent_local(gone) and not absent_local(str(here))
    assert not absent_local("pydocs-chat:heldout") and not absent_local("hf:a/b:test")
    assert with_fallback([gone], ["hf:a/b"]) == (
        ["hf:a/b"], f"{gone} absent; read its fallback hf:a/b")
    # A recipe's own file stays beside the fallback of a shared file a user's clone lacks.
    assert with_fallback([gone, str(here)], ["hf:a/b"]) == (
        [str(here), "hf:a/b"], f"{gone} absent; read its fallback hf:a/b")
    assert with_fallback([str(here)], ["hf:a/b"]) == ([str(here)], None)
    assert with_fallback([gone], []) == ([gone], None)  # no fallback: the path's own error
