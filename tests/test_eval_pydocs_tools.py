"""The chat suite's pydocs_tools task: scripted models that call the docstring tool rightly,
wrongly, always or never, scored against the held-out questions and the no-tool prompts."""

import json
import re

import pytest

import lmforge.engine.generate as gen
from lmforge.data.corpora.pydocs_chat import NO_TOOL_PROMPTS, docstring_text, pydocs_conversations
from lmforge.design.spec import ModelDesign
from lmforge.eval import pydocs_tools as pt
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import train_tokenizer

TEXT = ['What does textwrap.dedent do? <tool_call>{"name": "docstring", "arguments": '
        '{"name": "textwrap.dedent"}}</tool_call> Remove any common leading whitespace '
        'from every line in text. Hello! I cannot help with that.'] * 40
CALL = '<tool_call>{{"name": "docstring", "arguments": {{"name": "{}"}}}}</tool_call>'


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXT, 600, show_progress=False)


@pytest.fixture(scope="module")
def model():
    # Context enough for the tools block, a question, a call, a result and an answer with
    # this small test tokenizer; the scripted generation never runs the model.
    d = ModelDesign(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, vocab_size=640,
                    context_length=2048, name="pydocs-tools-test")
    return initialize(Transformer(d), "gpt2", 0).eval()


def scripted(tok, decide):
    """A stand-in for generate_batch: `decide(question, tool_result)` says what to write
    (tool_result is None on the first turn), then <|end|>."""
    seen = []

    def generate_batch(model, prompts, params, stop_ids=()):
        out = []
        for ids in prompts:
            text = tok.decode(ids)
            question = re.findall(r"<\|user\|>(.*?)<\|end\|>", text, re.S)[0]
            results = re.findall(r"<tool_response>(.*?)</tool_response>", text, re.S)
            assert "You can call these tools:" in text  # the tool is always offered
            seen.append(text)
            reply = decide(question, results[-1] if results else None)
            out.append(tok.encode(reply) + [tok.end_id])
        return out

    return generate_batch, seen


def name_in(question: str) -> str:
    return next(w.strip("?.") for w in question.split() if "." in w.strip("?."))


def ideal(question: str, result: str | None) -> str:
    if question in NO_TOOL_PROMPTS:
        return "Hello! How can I help?"
    if result is None:
        return CALL.format(name_in(question))
    return f"{name_in(question)}: {result.split('.')[0]}."


def test_a_model_that_calls_exactly_when_needed_scores_perfectly(model, tok, monkeypatch):
    fake, seen = scripted(tok, ideal)
    monkeypatch.setattr(gen, "generate_batch", fake)
    entry = pt.run_pydocs_tools(model, tok, {"batch_size": 16}, limit=20, progress=False)
    json.dumps(entry)
    m = {k: v["value"] for k, v in entry["metrics"].items()}
    assert m["call_accuracy"] == m["well_formed"] == 1.0
    assert m["false_calls"] == 0.0
    assert m["answer_summary_shaped"] >= 0.9  # a few summaries are symbols, not words
    needs = [it for it in entry["items"] if it["kind"] == "needs_tool"]
    assert len(needs) == 20 and entry["n"] == 20 + 20  # limit: per kind of prompt
    # The tool really ran on the name asked for, and its result was fed back.
    for it in needs:
        assert any(f"<tool_response>{docstring_text(it['name'])}</tool_response>" in s
                   for s in seen)


def test_wrong_arguments_and_needless_calls_are_counted(model, tok, monkeypatch):
    def sloppy(question: str, result: str | None) -> str:
        if result is not None:
            return "I don't know."
        return CALL.format("os.path.join")  # always calls, always about the same name

    fake, _ = scripted(tok, sloppy)
    monkeypatch.setattr(gen, "generate_batch", fake)
    entry = pt.run_pydocs_tools(model, tok, {}, limit=10, progress=False)
    m = {k: v["value"] for k, v in entry["metrics"].items()}
    assert m["well_formed"] == 1.0 and m["call_accuracy"] == 0.0
    assert m["false_calls"] == 1.0


def test_a_model_that_never_calls_gets_no_credit(model, tok, monkeypatch):
    fake, _ = scripted(tok, lambda q, r: '<tool_call>{"name": "docstring", "arguments": '
                                         if q not in NO_TOOL_PROMPTS else "Hi.")
    monkeypatch.setattr(gen, "generate_batch", fake)  # cut-off calls are not well formed
    entry = pt.run_pydocs_tools(model, tok, {}, limit=10, progress=False)
    m = {k: v["value"] for k, v in entry["metrics"].items()}
    assert m["call_accuracy"] == m["well_formed"] == 0.0 and m["false_calls"] == 0.0
    assert all(it["malformed"] for it in entry["items"] if it["kind"] == "needs_tool")


def test_no_tool_prompts_are_never_trained_on():
    asked = {m["content"] for split in ("train", "heldout") for c in pydocs_conversations(split)
             for m in c.messages if m["role"] == "user"}
    assert not asked & set(NO_TOOL_PROMPTS)
    assert len(set(NO_TOOL_PROMPTS)) == len(NO_TOOL_PROMPTS) >= 40
