"""Byte-level BPE tokenizer: exact round trips, fixed special ids, chat template, HF parity."""

from __future__ import annotations

import json

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data.corpora import build_pydocs_corpus
from lmforge.errors import LmforgeError
from lmforge.tokenizer import (
    ASSISTANT_ID,
    BOS_ID,
    CHAT_TEMPLATE_JINJA,
    END_ID,
    SPECIAL_TOKENS,
    SYSTEM_ID,
    USER_ID,
    Tokenizer,
    hf_tokenizer_files,
    train_tokenizer,
)

VOCAB = 1000
TRICKY = [
    "", " ", "  two leading", "trailing  ", "\n\n\n", "\t\r\n\r", "\x00\x01\x1b[31m\x7f",
    "e\u0301 combining a\u0308\u0323", "🏳️‍🌈 👨‍👩‍👧‍👦 emoji", "中文字符 日本語のテキスト 한국어",
    "مرحبا بالعالم", "\ufeffBOM \u200b zero width \u2028 line sep", "\U0010ffff\U0001f600",
    "<|bos|><|end|> literal specials", "<|endoftext|>", "a" * 500, "def f(x):\n    return x\n",
    " leading space", "multiple     spaces", "\u00a0nbsp", "Ω≈ç√∫˜µ≤≥÷",
]
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What does textwrap.dedent do? 😀"},
    {"role": "assistant", "content": "It removes common leading whitespace."},
    {"role": "user", "content": "Thanks <|assistant|>"},
    {"role": "assistant", "content": " Sure.\n"},
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    docs = build_pydocs_corpus()[::4]
    extra = TRICKY + ["naïve café déjà vu 你好世界 😀🎉 " * 20]
    return train_tokenizer([d.text for d in docs] + extra, VOCAB, show_progress=False)


# --- round trips --------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_round_trip_any_unicode(tok, text):
    ids = tok.encode(text)
    assert all(i >= len(SPECIAL_TOKENS) for i in ids)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_tricky_strings(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_token_spelling_is_ordinary_text(tok):
    text = "say <|bos|> and <|user|> and <|end|>"
    ids = tok.encode(text)
    assert not set(ids) & set(range(len(SPECIAL_TOKENS)))
    assert tok.decode(ids) == text


def test_encode_batch_matches_encode(tok):
    assert tok.encode_batch(TRICKY) == [tok.encode(t) for t in TRICKY]


def test_decode_specials_and_skip(tok):
    ids = [BOS_ID, *tok.encode("hi"), END_ID]
    assert tok.decode(ids) == "<|bos|>hi<|end|>"
    assert tok.decode(ids, skip_special=True) == "hi"
    assert tok.decode([*tok.encode("hi"), tok.vocab_size + 5]) == "hi"  # padded model vocab


# --- vocabulary and files -----------------------------------------------------------------

def test_special_ids_fixed(tok):
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tok.inner.token_to_id(token) == i
    assert SPECIAL_TOKENS == ("<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>",
                              "<|assistant|>", "<|end|>")
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.end_id) == (0, 1, 2, 6)
    assert (tok.system_id, tok.user_id, tok.assistant_id) == (3, 4, 5)


def test_vocab_size_honoured(tok):
    assert tok.vocab_size == VOCAB
    small = train_tokenizer(["tiny text"] * 3, 5000, show_progress=False)
    assert 256 + len(SPECIAL_TOKENS) < small.vocab_size < 5000  # the text ran out of merges


@pytest.mark.parametrize("size", [0, -1, 256, 263, "1000", 1000.0])
def test_bad_vocab_size(size):
    with pytest.raises(LmforgeError, match="vocab_size"):
        train_tokenizer(["some text"], size, show_progress=False)


def test_empty_training_text():
    with pytest.raises(LmforgeError, match="no text"):
        train_tokenizer([], 1000, show_progress=False)


def test_save_and_load(tok, tmp_path):
    path = tok.save(tmp_path / "tok" / "tokenizer.json")
    for source in (path, path.parent):  # the file, or the folder holding it
        loaded = Tokenizer.load(source)
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.encode("x <|bos|> 😀") == tok.encode("x <|bos|> 😀")
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]


def test_load_errors(tmp_path):
    with pytest.raises(LmforgeError, match="no tokenizer file"):
        Tokenizer.load(tmp_path / "missing.json")
    (tmp_path / "garbage.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(LmforgeError, match="not a valid tokenizer.json"):
        Tokenizer.load(tmp_path / "garbage.json")
    plain = tokenizers.Tokenizer(tokenizers.models.BPE())
    plain.save(str(tmp_path / "plain.json"))
    with pytest.raises(LmforgeError, match="not an lmforge tokenizer"):
        Tokenizer.load(tmp_path / "plain.json")


# --- chat ---------------------------------------------------------------------------------

def test_render_chat_layout_and_mask(tok):
    ids, mask = tok.render_chat(CHAT)
    role = {"system": SYSTEM_ID, "user": USER_ID, "assistant": ASSISTANT_ID}
    want_ids, want_mask = [BOS_ID], [0]
    for m in CHAT:
        body = tok.encode(m["content"]) + [END_ID]
        want_ids += [role[m["role"]], *body]
        want_mask += [0] + [int(m["role"] == "assistant")] * len(body)
    assert ids == want_ids and mask == want_mask
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == "It removes common leading whitespace.<|end|> Sure.\n<|end|>"
    assert tok.decode(ids).count("<|assistant|>") == 3  # 2 role tokens + 1 inside user text


def test_render_chat_generation_prompt(tok):
    ids, mask = tok.render_chat(CHAT[:2], add_generation_prompt=True)
    assert ids[-2:] == [END_ID, ASSISTANT_ID]
    assert sum(mask) == 0 and len(mask) == len(ids)


@pytest.mark.parametrize("messages, where", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "user", "content": "hi"}, "oops"], "message 1"),
    ([{"role": "bot", "content": "hi"}], "message 0: unknown role 'bot'"),
    ([{"role": "user", "content": "a"}, {"role": "assistant"}], "message 1 (assistant)"),
    ([{"role": "user", "content": None}], "message 0 (user): content is NoneType"),
])
def test_render_chat_rejects_bad_messages(tok, messages, where):
    with pytest.raises(LmforgeError, match=where.replace("(", r"\(").replace(")", r"\)")):
        tok.render_chat(messages)


# --- streaming ----------------------------------------------------------------------------

def test_stream_decoder_holds_back_partial_characters(tok):
    text = "Grüße 你好 🏳️‍🌈 🎉 done"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode(ids[:k]) for k in range(len(ids)))  # splits exist
    stream = tok.stream_decoder()
    pieces = [stream.add(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


@settings(max_examples=100, deadline=None)
@given(text=st.text())
def test_stream_decoder_any_unicode(tok, text):
    stream = tok.stream_decoder(skip_special=True)
    out = "".join(stream.add(i) for i in [BOS_ID, *tok.encode(text), END_ID])
    assert out + stream.flush() == text


# --- Hugging Face transformers ------------------------------------------------------------

def test_transformers_parity(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path / "tokenizer.json")
    for name, content in hf_tokenizer_files(tok, model_max_length=512).items():
        (tmp_path / name).write_text(json.dumps(content), encoding="utf-8")

    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in [t for t in TRICKY if "<|bos|>" not in t]:  # HF would read it as control
        assert fast.encode(text, add_special_tokens=False) == tok.encode(text)
        assert fast.decode(tok.encode(text)) == text

    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2)
    assert hf.chat_template == CHAT_TEMPLATE_JINJA
    chat = [dict(m) for m in CHAT]
    chat[3]["content"] = "Thanks"  # HF reads special-token spellings in content as control
    ids, mask = tok.render_chat(chat)
    out = hf.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    assert list(out["input_ids"]) == ids
    assert list(out["assistant_masks"]) == mask
    prompt = hf.apply_chat_template(chat[:2], add_generation_prompt=True, return_dict=True)
    assert list(prompt["input_ids"]) == tok.render_chat(chat[:2], add_generation_prompt=True)[0]


TOOLS = [{"type": "function", "function": {
    "name": "docstring", "description": "Documentation of a Python name, e.g. \"os.sep\".",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}},
                   "required": ["name"]}}}]
TOOL_CHATS = [
    # no system message: the tools block is a system turn of its own
    [{"role": "user", "content": "What does math.sqrt do?"},
     {"role": "assistant", "content": None, "tool_calls": [
         {"id": "call_0", "type": "function",
          "function": {"name": "docstring", "arguments": {"name": "math.sqrt"}}}]},
     {"role": "tool", "tool_call_id": "call_0", "content": "Return the square root of x."},
     {"role": "assistant", "content": "math.sqrt: Return the square root of x."}],
    # a system prompt, text before the call, arguments as a JSON string, two calls, ünïcode
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "Compare os.sep and os.pathsep — ümlaut"},
     {"role": "assistant", "content": "Looking both up.", "tool_calls": [
         {"type": "function", "function": {"name": "docstring",
                                            "arguments": '{"name": "os.sep"}'}},
         {"type": "function", "function": {"name": "docstring",
                                            "arguments": {"name": "os.pathsep"}}}]},
     {"role": "tool", "content": "The path separator."},
     {"role": "tool", "content": "The search path separator."},
     {"role": "assistant", "content": "One separates parts of a path, the other paths."}],
]


@pytest.mark.parametrize("chat", TOOL_CHATS)
def test_tool_calls_render_as_documented(tok, chat):
    ids, mask = tok.render_chat(chat, tools=TOOLS)
    text = tok.decode(ids)
    assert text.startswith("<|bos|><|system|>")
    assert "You can call these tools:" in text
    assert '{"name": "docstring", "description": "Documentation' in text
    assert '<tool_call>{"name": "docstring", "arguments": {"name": "os.sep"}}</tool_call>' \
        in text or '"arguments": {"name": "math.sqrt"}}</tool_call><|end|>' in text
    assert "<|user|><tool_response>" in text
    # SFT learns the calls and the answers, never the tool's results or the tools block
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    assert "<tool_call>" in learned and "tool_response" not in learned
    assert "You can call these tools" not in learned
    # without tools offered the same messages render without a tools block
    plain = tok.decode(tok.render_chat(chat)[0])
    assert "You can call these tools" not in plain and "<tool_call>" in plain


@pytest.mark.parametrize("chat", TOOL_CHATS)
def test_transformers_parity_with_tools(tok, tmp_path, chat):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path / "tokenizer.json")
    for name, content in hf_tokenizer_files(tok, model_max_length=512).items():
        (tmp_path / name).write_text(json.dumps(content), encoding="utf-8")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ids, mask = tok.render_chat(chat, tools=TOOLS)
    out = hf.apply_chat_template(chat, tools=TOOLS, return_dict=True,
                                 return_assistant_tokens_mask=True)
    assert list(out["input_ids"]) == ids
    assert list(out["assistant_masks"]) == mask
    prompt = hf.apply_chat_template(chat[:-1], tools=TOOLS, add_generation_prompt=True,
                                    return_dict=True)
    assert list(prompt["input_ids"]) == tok.render_chat(chat[:-1], add_generation_prompt=True,
                                                        tools=TOOLS)[0]


def test_parse_tool_calls():
    from lmforge.chat_format import parse_tool_calls

    ok = parse_tool_calls('<tool_call>{"name": "docstring", "arguments": {"name": "re.sub"}}'
                          '</tool_call>')
    assert ok.calls == [{"name": "docstring", "arguments": {"name": "re.sub"}}]
    assert ok.content == "" and ok.malformed is None
    assert ok.openai_tool_calls()[0]["function"]["arguments"] == '{"name": "re.sub"}'
    assert parse_tool_calls("math.sqrt: Return the square root.").calls == []
    for bad in ('<tool_call>{"name": "docstring", "arguments": {"name": </tool_call>',
                '<tool_call>{"name": "docstring", "arguments": {}}',  # cut off
                '<tool_call>["docstring"]</tool_call>'):
        reply = parse_tool_calls(bad)
        assert reply.calls == [] and reply.malformed and reply.content == bad


@pytest.mark.parametrize("messages, error", [
    ([{"role": "robot", "content": "hi"}], "unknown role 'robot'"),
    ([{"role": "user", "content": "x", "tool_calls": [{"name": "f"}]}], "only assistant"),
    ([{"role": "assistant", "content": None,
       "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}], "not valid JSON"),
    ([{"role": "assistant", "content": None,
       "tool_calls": [{"function": {"name": "no spaces", "arguments": {}}}]}],
     "function name"),
])
def test_bad_tool_messages_name_the_message(tok, messages, error):
    with pytest.raises(LmforgeError, match=error):
        tok.render_chat(messages)
