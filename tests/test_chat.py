"""`lmforge chat` and the engine's ChatSession: history, system prompt, end of turn, dropped
turns, refusal of models that cannot chat, and the chat template's parity with transformers."""

from __future__ import annotations

import io
import json
import shutil
import sys

import pytest
import tokenizers

import lmforge.engine.chat as chat_engine
from lmforge.design.spec import ModelDesign
from lmforge.engine.chat import ChatSession, load_chat_model
from lmforge.engine.sampling import SamplingParams
from lmforge.errors import LmforgeError
from lmforge.model.init import initialize
from lmforge.model.io import save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import ASSISTANT_ID, BOS_ID, END_ID, SYSTEM_ID, USER_ID, train_tokenizer

TEXT = [
    "The cat sat on the mat and looked at the dog.",
    "A dog is a loyal animal that likes to play outside.",
    "What is a cat? A cat is a small furry animal that purrs.",
    "Hello! How are you today? I am fine, thank you.",
    "Python functions return values; modules group functions together.",
] * 20
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXT, 400, show_progress=False)


@pytest.fixture(scope="module")
def model(tok):
    d = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size,
                    context_length=96)
    return initialize(Transformer(d), "scaled", seed=0).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, model, tok):
    out = tmp_path_factory.mktemp("models") / "tiny"
    save_model_dir(model, out, tok, "# tiny\n\nA random model for chat tests.\n")
    return out


@pytest.fixture
def prompts(monkeypatch):
    """Record every prompt the chat engine generates from, then generate as usual."""
    seen: list[list[int]] = []
    real = chat_engine.generate_tokens

    def spy(model, ids, params, stop_ids=()):
        seen.append(list(ids))
        return real(model, ids, params, stop_ids)

    monkeypatch.setattr(chat_engine, "generate_tokens", spy)
    return seen


def scripted(monkeypatch, tok, reply: list[int]):
    """The model 'writes' `reply`, even past a stop id: the session must stop by itself."""
    calls: list[dict] = []

    def fake(model, ids, params, stop_ids=()):
        calls.append({"ids": list(ids), "stop_ids": tuple(stop_ids), "params": params})
        return iter(reply)

    monkeypatch.setattr(chat_engine, "generate_tokens", fake)
    return calls


def feed(monkeypatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))  # a pipe: not a TTY


# --- through the CLI ----------------------------------------------------------------------

def test_cli_answers_each_piped_line_as_the_session_does(cli, monkeypatch, folder, model, tok):
    feed(monkeypatch, "What is a cat?\n\nAnd a dog?\n")  # the blank line is no message
    code, out, err = cli("chat", folder, "--temperature", "0", "--max-tokens", "6",
                         "--system", "Be brief.", "--device", "cpu")
    assert code == 0, err
    # The same greedy computation run twice gives the same tokens.
    session = ChatSession(model, tok, GREEDY, system="Be brief.")
    expected = ["".join(session.send(q)) for q in ("What is a cat?", "And a dog?")]
    assert all(expected)  # the random model writes some text before any special token
    assert out == "".join(reply + "\n" for reply in expected)
    assert "<|" not in out  # no special token is ever printed


def test_history_grows_turn_by_turn(model, tok, prompts):
    session = ChatSession(model, tok, GREEDY, system="You are terse.")
    first = "".join(session.send("Hello!"))
    second = "".join(session.send("How are you today?"))
    assert len(prompts) == 2
    assert prompts[0] == tok.render_chat([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello!"}], add_generation_prompt=True)[0]
    # The second prompt is the first one, then the first reply closed by <|end|>, then the
    # new user turn and the generation prompt.
    assert prompts[1][:len(prompts[0])] == prompts[0]
    reply_ids = tok.encode(first)
    assert prompts[1][len(prompts[0]):] == [*reply_ids, END_ID, USER_ID,
                                            *tok.encode("How are you today?"), END_ID,
                                            ASSISTANT_ID]
    assert session.messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello!"}, {"role": "assistant", "content": first},
        {"role": "user", "content": "How are you today?"},
        {"role": "assistant", "content": second}]


def test_reply_stops_at_end_of_turn_and_hides_it(cli, monkeypatch, folder, model, tok):
    hello, world = tok.encode("hello there"), tok.encode(" world")
    calls = scripted(monkeypatch, tok, [*hello, END_ID, *world])
    session = ChatSession(model, tok, SamplingParams(max_new_tokens=50))
    assert "".join(session.send("hi")) == "hello there"
    assert session.history[-1] == {"role": "assistant", "content": "hello there"}
    assert session.last.finish == "stop" and session.last.reply_tokens == len(hello)
    assert session.notice is None
    # The engine is told to stop at <|end|>, EOS and the role tokens as well.
    assert {END_ID, BOS_ID, 1, USER_ID, SYSTEM_ID, ASSISTANT_ID} <= set(calls[0]["stop_ids"])

    feed(monkeypatch, "hi\n")
    code, out, err = cli("chat", folder, "--device", "cpu")
    assert (code, out) == (0, "hello there\n"), err


def test_reply_cut_at_max_tokens_is_noted(monkeypatch, model, tok):
    words = tok.encode(" cat") * 10
    scripted(monkeypatch, tok, words)
    session = ChatSession(model, tok, SamplingParams(max_new_tokens=4))
    assert "".join(session.send("hi")) == " cat" * 4
    assert session.last.finish == "length" and "cut at 4 tokens" in session.notice


def test_reset_and_system_commands(cli, monkeypatch, folder, tok, prompts):
    feed(monkeypatch, "first question\n/reset\nsecond question\n/system Be kind.\nthird\n"
                      "/system\nfourth\n/exit\nnever sent\n")
    code, out, err = cli("chat", folder, "--temperature", "0", "--max-tokens", "3",
                         "--device", "cpu")
    assert code == 0, err
    assert len(prompts) == 4 and len(out.splitlines()) >= 4
    user = {"role": "user"}
    # After /reset the first turn is gone.
    assert prompts[1] == tok.render_chat([{**user, "content": "second question"}], True)[0]
    # /system TEXT puts the system prompt first and keeps the history after it.
    system = [BOS_ID, SYSTEM_ID, *tok.encode("Be kind."), END_ID, USER_ID,
              *tok.encode("second question"), END_ID, ASSISTANT_ID]
    assert prompts[2][:len(system)] == system
    # /system alone removes it; /exit ends before the last line.
    assert prompts[3][:3] == [BOS_ID, USER_ID, *tok.encode("second question")[:1]]
    assert "conversation cleared" in err and "system prompt set" in err
    assert "system prompt removed" in err


def test_unknown_command_and_slash_escape(cli, monkeypatch, folder, tok, prompts):
    feed(monkeypatch, "/help\n//etc/hosts\n")
    code, _, err = cli("chat", folder, "--max-tokens", "2", "--device", "cpu")
    assert code == 0 and "unknown command /help" in err
    assert prompts == [tok.render_chat([{"role": "user", "content": "/etc/hosts"}], True)[0]]


def test_oldest_turns_are_dropped_and_the_system_prompt_kept(monkeypatch, model, tok):
    calls = scripted(monkeypatch, tok, [*tok.encode("ok"), END_ID])
    session = ChatSession(model, tok, SamplingParams(max_new_tokens=8), system="Be brief.",
                          max_context=48)
    questions = [f"What is a cat number {i}?" for i in range(6)]
    for q in questions:
        "".join(session.send(q))
        assert len(calls[-1]["ids"]) + 8 <= 48  # the prompt leaves the reply its budget
        assert calls[-1]["ids"][:2] == [BOS_ID, SYSTEM_ID]  # the system prompt stays
    assert any(c["ids"].count(USER_ID) < i + 1 for i, c in enumerate(calls))
    assert session.last.dropped_turns >= 1
    assert "dropped" in session.notice and "system prompt is kept" in session.notice
    kept = [m["content"] for m in session.history if m["role"] == "user"]
    assert kept == questions[-len(kept):] and len(kept) < len(questions)
    assert calls[-1]["ids"] == tok.render_chat(
        session.messages[:-1], add_generation_prompt=True)[0]  # what it said is what it kept


def test_cli_notes_dropped_turns_and_survives_a_message_too_long(cli, monkeypatch, folder,
                                                                tok):
    scripted(monkeypatch, tok, [*tok.encode("ok"), END_ID])
    feed(monkeypatch, "one two three four\n" * 4 + "cat " * 80 + "\nstill here\n")
    code, out, err = cli("chat", folder, "--max-context", "32", "--max-tokens", "4",
                         "--device", "cpu")
    assert code == 0
    assert "dropped the 1 oldest turn(s)" in err
    assert "this message needs" in err and "Traceback" not in err
    assert out.splitlines()[-1] == "ok"  # the session went on after the error


def test_seeded_sampling_repeats(model, tok):
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=3)
    runs = []
    for _ in range(2):
        session = ChatSession(model, tok, params)
        runs.append(["".join(session.send(q)) for q in ("hi", "and then?")])
    assert runs[0] == runs[1]


def test_an_abandoned_reply_leaves_the_history_alone(model, tok):
    session = ChatSession(model, tok, SamplingParams(temperature=0, max_new_tokens=20))
    stream = session.send("hello")
    next(stream)
    stream.close()
    assert session.history == []


def test_ctrl_c_ends_cleanly(cli, monkeypatch, folder):
    class Interrupted(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", Interrupted())
    code, _, err = cli("chat", folder, "--device", "cpu")
    assert code == 0 and "Traceback" not in err


# --- models that cannot chat --------------------------------------------------------------

def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("error:") and "Traceback" not in err
    assert all(line.lstrip().startswith("fix:") for line in lines[1:2]) and len(lines) == 2
    return lines[0]


def test_a_stored_model_without_chat_template_is_refused(cli, monkeypatch, folder, tmp_path):
    bare = tmp_path / "no-template"
    shutil.copytree(folder, bare)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    feed(monkeypatch, "hi\n")
    code, out, err = cli("chat", bare, "--device", "cpu")
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert "no-template has no chat template" in line and "stores none" in line


def test_a_tokenizer_without_chat_tokens_is_refused(cli, monkeypatch, folder, tmp_path):
    bare = tmp_path / "plain-bpe"
    shutil.copytree(folder, bare)
    plain = tokenizers.Tokenizer(tokenizers.models.BPE())
    plain.train_from_iterator(TEXT, tokenizers.trainers.BpeTrainer(vocab_size=300,
                                                                  show_progress=False))
    plain.save(str(bare / "tokenizer.json"))
    feed(monkeypatch, "hi\n")
    code, out, err = cli("chat", bare, "--device", "cpu")
    assert code == 2 and out == ""
    assert "plain-bpe has no chat template" in one_error_line(err)
    with pytest.raises(LmforgeError, match="no chat template"):
        ChatSession(object.__new__(Transformer), plain)  # type: ignore[arg-type]


def test_load_chat_model_labels_registered_models(cli, folder, tok):
    from lmforge.registry import Workspace

    assert cli("import", folder, "--name", "tiny-chat")[0] == 0
    _, loaded, label = load_chat_model(Workspace.open(cli.workspace), "model:latest")
    assert "(tiny-chat)" in label and loaded.vocab_size == tok.vocab_size


# --- Hugging Face: the exported template gives the same ids -------------------------------

CONVERSATIONS = [
    [{"role": "user", "content": "What is a cat?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "What is a cat?"},
     {"role": "assistant", "content": "A small furry animal."},
     {"role": "user", "content": "And a dog?"}],
    [{"role": "system", "content": "Answer in French.\nBe polite."},
     {"role": "user", "content": "Hello!"},
     {"role": "assistant", "content": " Bonjour ! 😀"},
     {"role": "user", "content": "  spaces  \n\n"},
     {"role": "assistant", "content": ""},
     {"role": "user", "content": "def f(x):\n    return x\n"}],
]


def test_exported_chat_template_matches_render_chat(cli, folder, tok, model, tmp_path,
                                                    monkeypatch):
    transformers = pytest.importorskip("transformers")
    assert cli("import", folder, "--name", "tiny-chat")[0] == 0
    out = tmp_path / "hf"
    code, _, err = cli("export", "model:latest", "--format", "hf", "--out", out)
    assert code == 0, err
    hf = transformers.AutoTokenizer.from_pretrained(str(out))

    for messages in CONVERSATIONS:
        prompt = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                        return_dict=True)
        assert list(prompt["input_ids"]) == tok.render_chat(messages, True)[0]
        # With the assistant's answer: the ids and the SFT mask ({% generation %} spans).
        done = [*messages, {"role": "assistant", "content": "It purrs."}]
        full = hf.apply_chat_template(done, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        ids, mask = tok.render_chat(done)
        assert list(full["input_ids"]) == ids
        assert list(full["assistant_masks"]) == mask and sum(mask) > 0

    # What the chat session sends each turn is what transformers renders from its history.
    sent = []
    real = chat_engine.generate_tokens
    monkeypatch.setattr(chat_engine, "generate_tokens",
                        lambda m, ids, p, stop_ids=(): (sent.append(list(ids)),
                                                        real(m, ids, p, stop_ids))[1])
    session = ChatSession(model, tok, GREEDY, system="You are terse.")
    for question in ("What is a cat?", "And a dog?", "Thanks."):
        before = session.messages
        "".join(session.send(question))
        expected = hf.apply_chat_template([*before, {"role": "user", "content": question}],
                                          tokenize=True, add_generation_prompt=True,
                                          return_dict=True)["input_ids"]
        assert sent[-1] == list(expected)


# --- tool calling -----------------------------------------------------------------------------

def scripted_turns(monkeypatch, replies: list[list[int]]):
    """The model 'writes' the next of `replies` at each generation (past any stop)."""
    calls: list[list[int]] = []
    pending = list(replies)

    def fake(model, ids, params, stop_ids=()):
        calls.append(list(ids))
        return iter(pending.pop(0))

    monkeypatch.setattr(chat_engine, "generate_tokens", fake)
    return calls


CALL = '<tool_call>{"name": "docstring", "arguments": {"name": "math.sqrt"}}</tool_call>'


@pytest.fixture(scope="module")
def wide(tok):
    """A model with room for the tools block (this test tokenizer spends many tokens on it)."""
    d = ModelDesign(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, vocab_size=tok.vocab_size,
                    context_length=512)
    return initialize(Transformer(d), "scaled", seed=0).eval()


def test_tool_call_runs_the_tool_and_the_model_goes_on(monkeypatch, wide, tok):
    from lmforge.data.corpora.pydocs_chat import docstring_text
    from lmforge.engine.tools import docstring_tool

    answer = "math.sqrt: Return the square root of x."
    junk = tok.encode(" and more text the engine must never read")
    prompts = scripted_turns(monkeypatch, [tok.encode(CALL) + junk,
                                           [*tok.encode(answer), END_ID]])
    heard = []
    session = ChatSession(wide, tok, SamplingParams(max_new_tokens=200),
                          tools=[docstring_tool()], on_tool=heard.append)
    assert "".join(session.send("What does math.sqrt do?")) == answer  # the call is not shown
    result = docstring_text("math.sqrt")
    assert "square root" in result
    assert [(e.name, e.arguments, e.result) for e in heard] == \
        [("docstring", {"name": "math.sqrt"}, result)]
    assert session.history == [
        {"role": "user", "content": "What does math.sqrt do?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function",
             "function": {"name": "docstring", "arguments": {"name": "math.sqrt"}}}]},
        {"role": "tool", "content": result},
        {"role": "assistant", "content": answer}]
    tools = [docstring_tool().spec()]
    # The first prompt offers the tool; the second is the conversation with the tool's
    # result fed back, as the chat template renders it (generation stopped at the call).
    assert prompts[0] == tok.render_chat(session.history[:1], add_generation_prompt=True,
                                         tools=tools)[0]
    assert prompts[1] == tok.render_chat(session.history[:3], add_generation_prompt=True,
                                         tools=tools)[0]
    assert session.last.reply_tokens == len(tok.encode(CALL)) + len(tok.encode(answer))
    assert session.last.finish == "stop" and session.last.tool_events == heard


def test_tool_errors_are_fed_back_and_bad_calls_are_shown_as_text(monkeypatch, wide, tok):
    from lmforge.engine.tools import docstring_tool

    unknown = '<tool_call>{"name": "weather", "arguments": {}}</tool_call>'
    scripted_turns(monkeypatch, [tok.encode(unknown), [*tok.encode("Sorry."), END_ID]])
    session = ChatSession(wide, tok, SamplingParams(max_new_tokens=200),
                          tools=[docstring_tool()])
    assert "".join(session.send("Weather?")) == "Sorry."
    assert session.history[2]["role"] == "tool"
    assert session.history[2]["content"].startswith("error: no tool named 'weather'")

    broken = '<tool_call>{"name": "docstring", "arguments": {"name": </tool_call>'
    scripted_turns(monkeypatch, [[*tok.encode(broken), END_ID]])
    session = ChatSession(wide, tok, SamplingParams(max_new_tokens=200),
                          tools=[docstring_tool()])
    assert "".join(session.send("Hm?")) == broken  # not a call: the user sees what it wrote
    assert session.history[-1] == {"role": "assistant", "content": broken}
    assert session.last.tool_events == []

    # Without tools offered, the same text is just text, streamed as it comes.
    scripted_turns(monkeypatch, [[*tok.encode(CALL), END_ID]])
    plain = ChatSession(wide, tok, SamplingParams(max_new_tokens=200))
    assert "".join(plain.send("Hm?")) == CALL
