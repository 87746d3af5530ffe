"""Chat data for SFT: every accepted shape converts, every bad input stops with one line naming
file:line, the loss mask covers exactly the assistant turns, and the built-in pydocs
conversations are deterministic with a held-out set of names never trained on."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data.chat import (
    Conversation,
    check_mask,
    conversation_sources,
    encode_conversation,
    load_conversations,
    split_conversations,
)
from lmforge.data.corpora import build_pydocs_corpus
from lmforge.data.corpora import pydocs_chat as pc
from lmforge.errors import LmforgeError
from lmforge.tokenizer import train_tokenizer

CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What does textwrap.dedent do?"},
        {"role": "assistant", "content": "It removes common leading whitespace."},
        {"role": "user", "content": "And <|assistant|> in text? 😀"},
        {"role": "assistant", "content": " It stays text.\n"}]


def _jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _pair(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


@pytest.fixture(scope="module")
def tok():
    texts = [m["content"] for m in CHAT] * 20 + [
        "Give three tips for staying healthy. Eat well, sleep, move.",
        "naïve café 你好 🎉 <|end|> def f(x): return x"] * 20
    return train_tokenizer(texts, 300, show_progress=False)


# ---- shapes ------------------------------------------------------------------------------

def test_each_shape_converts(tmp_path):
    path = _jsonl(tmp_path / "mixed.jsonl", [
        {"messages": CHAT, "id": 7},
        {"conversations": [{"from": "system", "value": "Be brief."},
                           {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Summarize.", "context": "Cats sleep a lot.", "response": "Cats nap.",
         "category": "summarization"},
        {"instruction": "Say hi.", "response": "Hi."},
        {"prompt": "Translate 'chat' to English.", "completion": " cat<|endoftext|>"},
        {"instruction": "Classify the sentiment.", "instances": [
            {"input": "I love it", "output": "positive"},
            {"input": "I hate it", "output": "negative"}], "is_classification": True},
    ])
    convs = load_conversations([str(path)])
    assert [c.messages for c in convs] == [
        CHAT,
        [{"role": "system", "content": "Be brief."}, *_pair("Hi", "Hello")],
        _pair("Add the numbers.\n\n2 and 3", "5"),
        _pair("Name a colour.", "Blue."),
        _pair("Summarize.\n\nCats sleep a lot.", "Cats nap."),
        _pair("Say hi.", "Hi."),
        _pair("Translate 'chat' to English.", "cat"),
        _pair("Classify the sentiment.\n\nI love it", "positive"),
        _pair("Classify the sentiment.\n\nI hate it", "negative"),
    ]
    assert [c.source for c in convs] == [f"{path}:{n}" for n in range(1, 8)] + [
        f"{path}:8#1", f"{path}:8#2"]


def test_json_array_gzip_folder_and_glob(tmp_path):
    # A JSON array as Alpaca ships it (indented): sources give the line each record starts on.
    array = tmp_path / "data" / "alpaca.json"
    array.parent.mkdir()
    array.write_text(json.dumps([{"instruction": "A", "input": "", "output": "a"},
                                 {"instruction": "B", "input": "", "output": "b"}], indent=4))
    (tmp_path / "data" / "sub").mkdir()
    with gzip.open(tmp_path / "data" / "sub" / "chat.jsonl.gz", "wt") as f:
        f.write(json.dumps({"messages": _pair("C", "c")}) + "\n")
    _jsonl(tmp_path / "data" / ".hidden" / "skip.jsonl", [{"bad": 1}])
    (tmp_path / "data" / "notes.txt").write_text("not chat data")
    convs = load_conversations(str(tmp_path / "data"))  # recursive, sorted, hidden skipped
    assert [c.messages[0]["content"] for c in convs] == ["A", "B", "C"]
    assert [c.source for c in convs[:2]] == [f"{array}:2", f"{array}:7"]
    globbed = load_conversations([str(tmp_path / "data" / "**" / "*.jsonl.gz")])
    assert [c.messages[1]["content"] for c in globbed] == ["c"]


def test_hf_dataset_from_a_local_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    # Two shapes in one dataset: its columns are the union, a row's missing fields None.
    _jsonl(tmp_path / "set" / "train.jsonl", [
        {"messages": _pair("hi", "hello")}, {"instruction": "Say hi", "output": "hi"},
        {"instruction": "Say bye", "output": "bye"}])
    convs = load_conversations(f"hf:{tmp_path / 'set'}:train[1:]")
    assert [c.messages for c in convs] == [_pair("Say hi", "hi"), _pair("Say bye", "bye")]
    assert convs[0].source == f"hf:{tmp_path / 'set'}:train[1]"


def test_real_instruction_datasets(shared_data, tok):
    alpaca = shared_data / "alpaca_1k" / "alpaca_1k.jsonl"
    self_instruct = shared_data / "self_instruct_human"
    raw = [json.loads(line) for line in alpaca.read_text(encoding="utf-8").splitlines()]
    convs = load_conversations([str(alpaca)])
    assert len(convs) == len(raw) == 1000
    for rec, conv in zip(raw, convs):
        user, assistant = conv.messages
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"].startswith(rec["instruction"].strip())
        assert (rec["input"].strip() in user["content"]) and assistant["content"] == \
            rec["output"].strip()
    tasks = [json.loads(line) for f in sorted(self_instruct.glob("*.jsonl"))
             for line in f.read_text(encoding="utf-8").splitlines()]
    si = load_conversations([str(self_instruct)])
    assert len(si) == sum(len(t["instances"]) for t in tasks) == 427
    assert si[0].messages[1]["content"] == tasks[0]["instances"][0]["output"].strip()
    # Every real conversation learns something, and exactly its answer.
    for conv in convs[::10] + si[::10]:
        ids, mask = encode_conversation(tok, conv)
        assert _learned_spans(tok, ids, mask) == [conv.messages[1]["content"] + "<|end|>"]


# ---- bad input ------------------------------------------------------------------------------

BAD = [
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]},
     "message 1: unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": "hi", "tool_calls": [{"name": "f"}]},
                   {"role": "assistant", "content": "yo"}]},
     "message 0 (user) has tool_calls; only assistant turns call tools"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None,
                   "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}]},
     "message 1, tool call 0 (f): arguments are not valid JSON"),
    ({"messages": _pair("hi", "yo"), "tools": [{"type": "function", "function": {}}]},
     "tool 0 has no valid function name"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
     "message 1: empty assistant turn"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]},
     "no assistant turn"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
     "message 0 (user): content is int"),
    ({"conversations": [{"from": "bot", "value": "hi"}]}, "unknown speaker 'bot'"),
    ({"instruction": "Say hi.", "input": "", "output": ""}, "field 'output' is empty"),
    ({"instruction": "", "input": "x", "output": "y"}, "field 'instruction' is empty"),
    ({"instruction": "Q", "context": "", "response": "\n"}, "field 'response' is empty"),
    ({"instruction": "Q", "instances": [{"input": "", "output": ""}]},
     "instance 0: field 'output' is empty"),
    ({"prompt": "Q", "completion": "<|endoftext|>"}, "field 'completion' is empty"),
    ({"chosen": "Human: hi Assistant: yo", "rejected": "no"},
     "unrecognised record shape (fields: chosen, rejected)"),
    ({"text": "just text"}, "unrecognised record shape (fields: text)"),
    (["a", "list"], "a JSON list, not an object"),
]


@pytest.mark.parametrize("record, what", BAD)
def test_bad_record_is_one_error_naming_file_and_line(tmp_path, record, what):
    good = {"messages": _pair("hi", "hello")}
    path = _jsonl(tmp_path / "chat.jsonl", [good, good, record, good])
    with pytest.raises(LmforgeError) as err:
        load_conversations([str(path)])
    assert err.value.message.startswith(f"{path}:3: ")
    assert what in err.value.message and "\n" not in err.value.message
    assert "accepted records" in err.value.hint  # the hint shows the shapes that work


def test_bad_files_and_paths(tmp_path):
    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text(json.dumps({"messages": _pair("a", "b")}) + "\n{not json\n")
    with pytest.raises(LmforgeError, match=re.escape(f"{bad_json}:2: invalid JSON")):
        load_conversations(str(bad_json))
    array = tmp_path / "broken.json"
    array.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c"}\n]')
    with pytest.raises(LmforgeError, match=re.escape(f"{array}:3: unrecognised record shape")):
        load_conversations(str(array))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(LmforgeError, match="no conversations"):
        load_conversations(str(empty))
    with pytest.raises(LmforgeError, match="does not exist"):
        load_conversations([str(empty), str(tmp_path / "missing.jsonl")])
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(LmforgeError, match="unsupported file type"):
        load_conversations(str(tmp_path / "data.csv"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(LmforgeError, match="holds no"):
        load_conversations(str(tmp_path / "nothing"))


# ---- masks ---------------------------------------------------------------------------------

def _learned_spans(tok, ids: list[int], mask: list[bool]) -> list[str]:
    """The decoded runs of learned tokens, in order."""
    spans, run = [], []
    for i, m in zip(ids, mask):
        if m:
            run.append(i)
        elif run:
            spans.append(tok.decode(run))
            run = []
    return spans + ([tok.decode(run)] if run else [])


def test_mask_covers_exactly_the_assistant_turns(tok):
    ids, mask = encode_conversation(tok, CHAT)
    assert len(ids) == len(mask) and all(isinstance(m, bool) for m in mask)
    assert _learned_spans(tok, ids, mask) == [
        m["content"] + "<|end|>" for m in CHAT if m["role"] == "assistant"]
    # The rest is the prompt: every system and user content appears unlearned.
    prompt = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert all(m["content"] in prompt for m in CHAT if m["role"] != "assistant")


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
_message = st.builds(lambda role, content: {"role": role, "content": content},
                     st.sampled_from(["system", "user", "assistant"]), _text)


@settings(max_examples=100, deadline=None)
@given(before=st.lists(_message, max_size=4), answer=_text.filter(str.strip),
       after=st.lists(_message, max_size=3))
def test_mask_spans_match_assistant_contents_for_any_conversation(tok, before, answer, after):
    messages = [*before, {"role": "assistant", "content": answer}, *after]
    ids, mask = encode_conversation(tok, messages)
    assert _learned_spans(tok, ids, mask) == [
        m["content"] + "<|end|>" for m in messages if m["role"] == "assistant"]


def test_truncation_never_leaves_an_all_zero_mask(tok):
    messages = [{"role": "user", "content": "a long question " * 20},
                {"role": "assistant", "content": "short answer"}]
    conv = Conversation(messages, "chats.jsonl:12")
    full, _ = encode_conversation(tok, conv)
    prompt_len = len(full) - len(tok.encode("short answer")) - 1
    with pytest.raises(LmforgeError, match=r"chats\.jsonl:12: no assistant token to learn "
                                           r"within its first 10 tokens"):
        encode_conversation(tok, conv, max_tokens=10)
    with pytest.raises(LmforgeError, match="the conversation starting 'a long question"):
        encode_conversation(tok, messages, max_tokens=prompt_len)
    ids, mask = encode_conversation(tok, conv, max_tokens=prompt_len + 1)
    assert len(ids) == len(mask) == prompt_len + 1 and mask[-1] and sum(mask) == 1
    with pytest.raises(LmforgeError, match="x.jsonl:1: no assistant token"):
        check_mask([False, False, False], "x.jsonl:1")
    with pytest.raises(LmforgeError, match="x.jsonl:1: no assistant token"):
        check_mask([True, False], "x.jsonl:1")  # position 0 is never a target
    check_mask([False, True], "x.jsonl:1")


def test_encode_names_the_source_of_bad_messages(tok):
    conv = Conversation([{"role": "robot", "content": "x"}], "chats.jsonl:4")
    with pytest.raises(LmforgeError, match=r"chats\.jsonl:4: message 0: unknown role 'robot'"):
        encode_conversation(tok, conv)


# ---- train / validation split ----------------------------------------------------------------

def test_split_is_by_content_and_stable():
    convs = [Conversation(_pair(f"question {i}", f"answer {i}"), f"f:{i}") for i in range(2000)]
    train, val = split_conversations(convs, 0.1, seed=3)
    assert len(train) + len(val) == 2000 and {id(c) for c in train}.isdisjoint(map(id, val))
    assert 130 <= len(val) <= 270  # 200 expected; binomial sd ~13, so ±5 sd holds anywhere
    assert train == [c for c in convs if c in train]  # input order kept
    # The same content lands on the same side whatever else is in the data, in any order.
    more = convs[::-1] + [Conversation(_pair("new", "one"), "g:1")]
    _, val2 = split_conversations(more, 0.1, seed=3)
    assert {c.source for c in val} <= {c.source for c in val2}
    assert split_conversations(convs, 0.1, seed=4)[1] != val  # the seed matters
    dup = [convs[0], Conversation(list(convs[0].messages), "copy:1"), *convs[1:50]]
    tr, va = split_conversations(dup, 0.5, seed=0)
    assert (dup[0] in va) == (dup[1] in va)  # duplicates never straddle the split


def test_split_small_data_and_bad_fraction():
    two = [Conversation(_pair("a", "b"), "f:1"), Conversation(_pair("c", "d"), "f:2")]
    train, val = split_conversations(two, 0.01, seed=0)
    assert len(train) == 1 and len(val) == 1
    assert split_conversations(two, 0.0, seed=0) == (two, [])
    for bad in (1.0, -0.1, "0.1"):
        with pytest.raises(LmforgeError, match="val_fraction must be in"):
            split_conversations(two, bad, seed=0)


# ---- the built-in pydocs conversations -------------------------------------------------------

@pytest.fixture(scope="module")
def pydocs():
    return pc.pydocs_conversations("train"), pc.pydocs_conversations("heldout")


def test_pydocs_conversations_are_deterministic(pydocs):
    train, heldout = pydocs
    pc._entries.cache_clear()  # build again from the corpus, not from the cache
    assert pc.pydocs_conversations("train") == train
    assert pc.pydocs_conversations("heldout") == heldout
    assert len(train) > 5000 and len(heldout) > 300


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w|\.\w)", text) is not None


def test_heldout_names_never_appear_in_training(pydocs):
    train, heldout = pydocs
    names = pc.heldout_names()
    everything = {e.name for e in pc._entries()}
    assert 0.07 < len(names) / len(everything) < 0.13  # a hash's tenth: ~10% ± a few sd
    asked = " ".join(m["content"] for c in train for m in c.messages if m["role"] == "user")
    asked_names = set(re.findall(r"[A-Za-z_][\w.]*[\w]", asked))
    assert not asked_names & set(names)
    assert all(c.source.removeprefix("pydocs-chat:").split("#")[0] not in names for c in train)
    # Held-out questions ask about held-out names, and their answers were never trained on.
    trained_answers = {m["content"] for c in train for m in c.messages if m["role"] == "assistant"}
    questions = pc.heldout_questions()
    assert len(questions) > 300
    for name, question, expected in questions:
        assert name in names and _mentions(question, name)
        assert expected not in trained_answers
    assert {q[0] for q in questions} <= {c.source.removeprefix("pydocs-chat:") for c in heldout}


def test_answers_are_single_sentences_from_the_docstrings(pydocs):
    train, _ = pydocs
    summaries = {d.meta["object"]: " ".join(d.meta["summary"].split())
                 for d in build_pydocs_corpus() if "summary" in d.meta}
    checked = 0
    for conv in train:
        name = conv.source.removeprefix("pydocs-chat:")
        if name not in summaries:
            continue  # the project's own conversations, and two-turn ones
        named, answer = conv.messages[-1]["content"].split(": ", 1)
        assert named == name  # the answer names what it describes, then the summary
        assert answer.endswith(".") and "\n" not in answer and answer[0].isupper()
        # One sentence: no "word. Word" boundary inside (abbreviations like "e.g." aside).
        assert not re.search(r"\b[a-z]{3,}[.!?] [A-Z][a-z]", answer), answer
        # The answer is the docstring's first sentence, not something made up.
        assert answer[1:-1] in summaries[name] + " ", (answer, summaries[name])
        checked += 1
    assert checked > 5000
    phrasings = {re.sub(r"\S*\.\S*\w", "N", c.messages[-2]["content"]) for c in train}
    assert len(phrasings) >= 20  # several phrasings per kind


def test_project_written_conversations(pydocs, tok):
    train, heldout = pydocs
    kinds = ("greeting", "unknown", "refusal", "thanks", "farewell")
    own = [c for c in train + heldout if c.source.split(":")[1].split("|")[0] in kinds]
    assert {c.source.split(":")[1].split("|")[0] for c in own} == set(kinds)
    assert len({c.messages[-2]["content"] for c in own}) >= 150
    known = {e.name for e in pc._entries()}
    for conv in own:
        if "unknown|" in conv.source:
            name = conv.source.split("|", 1)[1].removesuffix("#tools")
            asked = next(m for m in conv.messages if m["role"] == "user")["content"]
            assert name not in known and _mentions(asked, name)
            assert "don't know" in conv.messages[-1]["content"] or \
                "not aware" in conv.messages[-1]["content"]
        if "refusal|" in conv.source:
            assert conv.messages[-1]["content"].startswith("I can't help")
    # Every built-in conversation trains on something.
    for conv in train[::7] + heldout:
        _, mask = encode_conversation(tok, conv)
        assert any(mask)


def test_clean_summary():
    assert pc.clean_summary("Return the sum. Start defaults to 0.") == "Return the sum."
    assert pc.clean_summary("convert a path, e.g. Foo to foo") == "Convert a path, e.g. Foo to foo."
    assert pc.clean_summary("Replace it by repl. repl can be a string.") == \
        "Replace it by repl."
    assert pc.clean_summary("Move to X, Y. If several match, the first.") == "Move to X, Y."
    for bad in ("Internal: read lines.", "f(x) -> int", ">>> f(1)", "The following:",
                "Ok.", "word " * 40, "Return a copy -> list."):
        assert pc.clean_summary(bad) is None, bad


def test_builtin_names_in_conversation_sources(tmp_path, pydocs):
    path = _jsonl(tmp_path / "extra.jsonl", [{"messages": _pair("hi", "hello")}])
    convs = conversation_sources(["pydocs-chat", str(path)])
    assert convs[:len(pydocs[0])] == pydocs[0] and convs[-1].source == f"{path}:1"
    assert conversation_sources(["pydocs-chat:heldout"]) == pydocs[1]


def test_tool_conversations_call_the_docstring_tool_and_answer_from_it(pydocs, tok):
    train, heldout = pydocs
    held = set(pc.heldout_names())
    with_tools = [c for c in train + heldout if c.tools]
    named = [c for c in with_tools if "|" not in c.source]
    everything = {e.name for e in pc._entries()}
    assert 0.42 < len(named) / len(everything) < 0.58  # one name in TOOL_SHARE (2)
    for conv in named:
        name = conv.source.removeprefix("pydocs-chat:").removesuffix("#tools")
        assert (conv in heldout) == (name in held)  # held-out names stay out of training
        user, call, result, answer = conv.messages[-4:]
        assert user["role"] == "user" and _mentions(user["content"], name)
        assert call["tool_calls"] == [{"type": "function", "function": {
            "name": "docstring", "arguments": {"name": name}}}]
        assert result == {"role": "tool", "content": pc.docstring_text(name)}
        assert answer["content"].startswith(f"{name}: ")
        ids, mask = encode_conversation(tok, conv)
        assert 0 < sum(mask) < len(ids)
    # The project's own conversations are asked with the tool offered too: greetings and
    # refusals answered without a call, made-up names looked up, not found, and not known.
    own = {c.source.split("|")[0].removeprefix("pydocs-chat:"): c for c in with_tools
           if "|" in c.source}
    assert {"greeting", "refusal", "unknown", "thanks", "farewell"} <= set(own)
    no_call = 0
    for conv in with_tools:
        calls = [m for m in conv.messages if m.get("tool_calls")]
        if any(k in conv.source for k in ("greeting|", "refusal|", "thanks|", "farewell|")):
            assert not calls
            no_call += 1
        if "unknown|" in conv.source:
            assert conv.messages[-2]["content"].startswith("No documentation found for")
            assert "know" in conv.messages[-1]["content"] or "aware" in conv.messages[-1]["content"]
    assert no_call >= 0.12 * len(named)  # enough answers without a call to learn from


def test_copy_practice_calls_carry_invented_names_letter_for_letter(pydocs):
    """Invented names under real modules, asked with the tool offered: the call copies the
    name exactly, the tool finds nothing, the answer says so; none is a documented name,
    none is held out, and open questions the evaluation asks are never trained on."""
    train, heldout = pydocs
    copies = [c for c in train if "copy|" in c.source]
    assert len(copies) == pc.COPY_PRACTICE_NAMES
    assert not any("copy|" in c.source for c in heldout)
    documented = {e.name for e in pc._entries()}
    names = set()
    for conv in copies:
        name = conv.source.split("copy|")[1].removesuffix("#tools")
        names.add(name)
        assert name not in documented and name.split(".")[0] in {
            n.split(".")[0] for n in documented}
        user, call, result, answer = conv.messages[-4:]
        assert _mentions(user["content"], name)
        assert call["tool_calls"][0]["function"]["arguments"] == {"name": name}
        assert result["content"] == f"No documentation found for {name}."
        assert name in answer["content"]
    assert len(names) == len(copies)
    asked = {m["content"] for c in train for m in c.messages if m["role"] == "user"}
    assert not asked & set(pc.NO_TOOL_PROMPTS)
    chat = [c for c in train if c.source.split(":")[1].split("|")[0] in
            ("about", "want", "favourite", "learning")]
    assert chat and all(not any(m.get("tool_calls") for m in c.messages) for c in chat)


def test_docstring_tool_text(tok):
    assert pc.docstring_text("textwrap.dedent").startswith("Remove any common leading")
    assert pc.docstring_text("flurblegrad") == "No documentation found for flurblegrad."
    long = max(pc._docstrings(), key=lambda n: len(pc._docstrings()[n]))
    assert len(pc.docstring_text(long)) <= pc.DOC_CHARS + 4  # cut near DOC_CHARS, then " ..."
