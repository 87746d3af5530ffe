import gzip
import json
import math

import pytest

from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError
from lmforge.eval import runner as runner_mod
from lmforge.eval.gates import evaluate_gates, parse_gates
from lmforge.eval.render import fewshot_examples, mc_requests, render_context, render_prompt
from lmforge.eval.render_report import report_markdown
from lmforge.eval.runner import EvalSettings, evaluate
from lmforge.eval.scorer import LoglikelihoodScorer
from lmforge.eval.tasks import LoglikelihoodTask, MCItem, MultipleChoiceTask, load_tasks_toml
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import train_tokenizer


def write_jsonl(path, records, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def write_toml(tmp_path, body):
    p = tmp_path / "tasks.toml"
    p.write_text(body)
    return p


MC_RECORDS = [
    {"question": "2+2?", "choices": ["3", "4", "5"], "answer": 1},
    {"question": "Sky?", "choices": ["blue", "green"], "answer": "A"},
    {"question": "Cat says?", "choices": ["woof", "meow"], "answer": "meow"},
    {"question": "One?", "choices": ["1", "2"], "answer": "0"},
]


def test_gold_as_index_letter_string_and_gzip(tmp_path):
    write_jsonl(tmp_path / "mc.jsonl.gz", MC_RECORDS, gz=True)
    toml = write_toml(tmp_path, '[tasks.mc]\nkind = "multiple_choice"\npath = "mc.jsonl.gz"\n'
                                'context_template = "Q: {question}\\nA:"\n')
    (task,) = load_tasks_toml(toml)
    items = task.load_items()
    assert [i.gold for i in items] == [1, 0, 1, 0]
    assert items[0].context == "Q: 2+2?\nA:" and items[1].choices == ["blue", "green"]


@pytest.mark.parametrize("record, message", [
    ({"q": "x", "choices": ["a", "b"], "answer": 0}, r"mc.jsonl:2: no field 'question' "
                                                     r"\(fields: answer, choices, q\)"),
    ({"question": "x", "choices": ["a", "b"], "answer": 5}, r"mc.jsonl:2: .*out of range"),
    ({"question": "x", "choices": ["a", "b"], "answer": "Z?"}, r"mc.jsonl:2: .*not an index"),
    ({"question": "x", "choices": "ab", "answer": 0}, r"mc.jsonl:2: .*list of two or more"),
])
def test_bad_records_name_file_and_line(tmp_path, record, message):
    write_jsonl(tmp_path / "mc.jsonl", [MC_RECORDS[0], record])
    toml = write_toml(tmp_path, '[tasks.mc]\nkind = "multiple_choice"\npath = "mc.jsonl"\n'
                                'context_field = "question"\n')
    (task,) = load_tasks_toml(toml)
    with pytest.raises(LmforgeError, match=message):
        task.load_items()


def test_toml_errors_name_file_and_line(tmp_path):
    write_jsonl(tmp_path / "mc.jsonl", MC_RECORDS)
    bad_kind = '# tasks\n\n[tasks.ok]\nkind = "perplexity"\npath = "mc.jsonl"\n\n' \
               '[tasks.broken]\nkind = "essay"\npath = "mc.jsonl"\n'
    with pytest.raises(LmforgeError, match=r"tasks.toml:7: task 'broken' has unknown kind"):
        load_tasks_toml(write_toml(tmp_path, bad_kind))
    with pytest.raises(LmforgeError, match=r"tasks.toml:1: .*unknown metric 'bleu'"):
        load_tasks_toml(write_toml(tmp_path, '[tasks.g]\nkind = "generation"\n'
                                             'path = "mc.jsonl"\nmetric = "bleu"\n'))
    with pytest.raises(LmforgeError, match=r"tasks.toml:1: .*unknown key\(s\) contxt_field"):
        load_tasks_toml(write_toml(tmp_path, '[tasks.m]\nkind = "multiple_choice"\n'
                                             'path = "mc.jsonl"\ncontxt_field = "q"\n'))
    (task,) = load_tasks_toml(write_toml(
        tmp_path, '[tasks.m]\nkind = "multiple_choice"\npath = "mc.jsonl"\n'
                  'context_template = "Q: {qestion}"\n'))
    with pytest.raises(LmforgeError, match=r"mc.jsonl:1: context_template uses \{qestion\}"):
        task.load_items()
    write_jsonl(tmp_path / "empty.jsonl", [])
    (task,) = load_tasks_toml(write_toml(tmp_path, '[tasks.e]\nkind = "perplexity"\n'
                                                   'path = "empty.jsonl"\n'))
    with pytest.raises(LmforgeError, match="holds no items"):
        task.load_items()


def test_fewshot_is_seeded_and_excludes_the_item(tmp_path):
    records = [{"question": f"q{i}", "choices": ["a", "b"], "answer": i % 2} for i in range(30)]
    write_jsonl(tmp_path / "mc.jsonl", records)
    task = MultipleChoiceTask(name="m", path=tmp_path / "mc.jsonl", context_field="question",
                              num_fewshot=5)
    items = task.load_items()
    pool = task.load_fewshot_pool()
    for item in items:
        shots = fewshot_examples(task, item, pool)
        assert len(shots) == 5 and item.index not in [s.index for s in shots]
        assert [s.index for s in shots] == [s.index for s in fewshot_examples(task, item, pool)]
    assert fewshot_examples(task, items[0], pool) != fewshot_examples(task, items[1], pool)
    other = MultipleChoiceTask(name="m", path=task.path, context_field="question",
                               num_fewshot=5, fewshot_seed=99)
    assert fewshot_examples(other, items[0], pool) != fewshot_examples(task, items[0], pool)
    text = render_context(task, items[0], fewshot_examples(task, items[0], pool))
    first = fewshot_examples(task, items[0], pool)[0]
    assert text.startswith(f"{first.context} {first.choices[first.gold]}\n\n")
    assert text.endswith("\n\nq0")


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["Question: what is it? Answer: a cat, a dog, the sky is blue."] * 30,
                           300, show_progress=False)


@pytest.fixture(scope="module")
def model():
    d = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=512,
                    context_length=64, name="t")
    return initialize(Transformer(d), "gpt2", 0).eval()


def test_acc_and_acc_norm_follow_argmax_and_length_normalization(tmp_path, tok, model,
                                                                 monkeypatch):
    """Choice loglikelihoods forced: the longest choice has the highest total but the
    lowest per-character loglikelihood, so acc and acc_norm disagree exactly as designed."""
    write_jsonl(tmp_path / "mc.jsonl", [
        {"q": "x", "choices": ["aaaaaaaaaa", "b", "cc"], "answer": 0},
        {"q": "y", "choices": ["aaaaaaaaaa", "b", "cc"], "answer": 1},
    ])
    task = MultipleChoiceTask(name="m", path=tmp_path / "mc.jsonl", context_field="q")
    forced = {"aaaaaaaaaa": -5.0, "b": -1.0, "cc": -1.5}  # totals; per char -.5, -1, -.75

    def fake(self, requests, progress=False):
        return [(forced[tok.decode(cont).strip()], False) for _, cont in requests]

    monkeypatch.setattr(LoglikelihoodScorer, "loglikelihood", fake)
    report = evaluate(model, tok, [task], EvalSettings(), progress=False)
    t = report["tasks"]["m"]
    assert [i["pred"] for i in t["items"]] == [1, 1]  # argmax of totals: "b"
    assert [i["pred_norm"] for i in t["items"]] == [0, 0]  # per character: "aaaaaaaaaa"
    assert t["metrics"]["acc"]["value"] == 0.5 and t["metrics"]["acc_norm"]["value"] == 0.5
    assert [i["scores"] for i in t["items"]] == [{"acc": 0.0, "acc_norm": 1.0},
                                                 {"acc": 1.0, "acc_norm": 0.0}]
    assert t["chance"] == pytest.approx(1 / 3)
    assert t["metrics"]["acc_centered"]["value"] == pytest.approx((0.5 - 1 / 3) / (2 / 3))
    assert t["items"][0]["output"] == "b"


def test_evaluate_report_for_every_kind(tmp_path, tok, model, monkeypatch):
    write_jsonl(tmp_path / "mc.jsonl", MC_RECORDS)
    write_jsonl(tmp_path / "text.jsonl", [{"text": "the cat sat on the mat. " * k}
                                          for k in (1, 5, 12)])
    write_jsonl(tmp_path / "gen.jsonl", [{"p": "Sky?", "refs": ["blue"]},
                                         {"p": "Cat?", "refs": "meow"}])
    write_jsonl(tmp_path / "ll.jsonl", [{"c": "the cat sat on the", "x": " mat"}])
    toml = write_toml(tmp_path, """
[tasks.mc]
kind = "multiple_choice"
path = "mc.jsonl"
context_field = "question"
num_fewshot = 2
[tasks.ppl]
kind = "perplexity"
path = "text.jsonl"
[tasks.gen]
kind = "generation"
path = "gen.jsonl"
prompt_template = "Q: {p}\\nA:"
references_field = "refs"
metric = "contains"
max_new_tokens = 5
[tasks.ll]
kind = "loglikelihood"
path = "ll.jsonl"
context_field = "c"
continuation_field = "x"
""")
    monkeypatch.setattr(runner_mod, "_generate_until", lambda *a, **k: "it is Blue.")
    report = evaluate(model, tok, load_tasks_toml(toml), EvalSettings(batch_size=4),
                      progress=False, suite="custom")
    json.dumps(report)  # JSON-able
    assert set(report["tasks"]) == {"mc", "ppl", "gen", "ll"}
    for t in report["tasks"].values():
        for m in t["metrics"].values():
            assert set(m) == {"value", "stderr"} and math.isfinite(m["value"])
        assert len(t["items"]) == t["n"] and all("scores" in i for i in t["items"])
    assert report["tasks"]["mc"]["n"] == 4 and report["tasks"]["mc"]["num_fewshot"] == 2
    # A random model: bits per byte near log2(vocab) / bytes per token, well above 1.
    assert report["tasks"]["ppl"]["metrics"]["bpb"]["value"] > 1
    assert [i["scores"]["contains"] for i in report["tasks"]["gen"]["items"]] == [1.0, 0.0]
    assert report["settings"]["backend"] == "lmforge"
    assert report["settings"]["dtype"] == "float32"


def test_chat_rendering_uses_the_chat_layout(tmp_path, tok):
    task = MultipleChoiceTask(name="m", path=tmp_path / "x.jsonl")
    item = MCItem("Sky color?", ["blue", "red"], 0)
    prompt = render_prompt(task, item, tok, style="chat")
    assert prompt.ids[0] == tok.bos_id and prompt.ids[1] == tok.user_id
    assert prompt.ids[-1] == tok.assistant_id
    (ctx, cont), _ = mc_requests(task, item, tok, style="chat")
    assert ctx == prompt.ids and tok.decode(cont) == "blue"
    with pytest.raises(LmforgeError, match="unknown prompt style"):
        render_prompt(task, item, tok, style="fancy")


def test_an_item_longer_than_the_context_is_skipped_and_counted(tmp_path, tok, model):
    """lm-eval's HF backend stops the whole run on a continuation longer than the model's
    context; the runner scores every other item and lists the skipped one with its reason."""
    long_choice = "the sky is blue " * 40  # far more than the 64-token context
    records = [{"q": f"Question {i}?", "choices": ["a cat", "a dog"], "answer": i % 2}
               for i in range(5)]
    records[2]["choices"][1] = long_choice
    write_jsonl(tmp_path / "mc.jsonl", records)
    write_jsonl(tmp_path / "ll.jsonl", [{"c": "the cat", "x": " sat"},
                                        {"c": "the sky", "x": " " + long_choice}])
    mc = MultipleChoiceTask(name="mc", path=tmp_path / "mc.jsonl", context_field="q")
    ll = LoglikelihoodTask(name="ll", path=tmp_path / "ll.jsonl", context_field="c",
                           continuation_field="x")
    assert len(tok.encode(" " + long_choice)) > model.design.context_length
    report = evaluate(model, tok, [mc, ll], EvalSettings(batch_size=3), progress=False)
    why = "continuation longer than the model's context (64 tokens)"
    t = report["tasks"]["mc"]
    assert t["n"] == 4 and [i["index"] for i in t["items"]] == [0, 1, 3, 4]
    assert t["skipped"] == {"n": 1, "reasons": {why: [2]}}
    assert report["tasks"]["ll"]["skipped"] == {"n": 1, "reasons": {why: [1]}}
    assert report["tasks"]["ll"]["n"] == 1
    # The other items score as they do without the long one (scores within fp32 rounding of
    # a different batch composition: 1e-5 on sums of a few tokens).
    write_jsonl(tmp_path / "short.jsonl", [r for i, r in enumerate(records) if i != 2])
    short = MultipleChoiceTask(name="mc", path=tmp_path / "short.jsonl", context_field="q")
    alone = evaluate(model, tok, [short], EvalSettings(batch_size=3), progress=False)
    for x, y in zip(t["items"], alone["tasks"]["mc"]["items"], strict=True):
        assert x["loglikelihoods"] == pytest.approx(y["loglikelihoods"], abs=1e-5)
    assert alone["tasks"]["mc"]["skipped"]["n"] == 0
    # Every item too long: no metrics, and a gate on the task fails instead of crashing.
    write_jsonl(tmp_path / "all_long.jsonl", [records[2]])
    bad = MultipleChoiceTask(name="bad", path=tmp_path / "all_long.jsonl", context_field="q")
    rep = evaluate(model, tok, [bad], EvalSettings(), progress=False)
    assert rep["tasks"]["bad"]["n"] == 0 and rep["tasks"]["bad"]["metrics"] == {}
    gates = evaluate_gates(parse_gates(["bad/acc >= 0"]), rep)
    assert gates["passed"] is False and gates["results"][0]["value"] is None
    assert "bad: skipped 1 of 1 items" in report_markdown(rep)
