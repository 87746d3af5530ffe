import re
from pathlib import Path

import pytest

from lmforge.data.shards import split_key
from lmforge.errors import LmforgeError
from lmforge.eval.docstrings import docstring_tasks, held_out_functions
from lmforge.eval.render import mc_requests
from lmforge.eval.suites import (
    BUILTIN_TASKS,
    SUITES,
    base_suite,
    hellaswag_preprocess,
    parse_task_names,
    select_builtin,
    wikitext_detokenize,
)
from lmforge.eval.tasks import LoglikelihoodItem, MCItem, PerplexityItem
from lmforge.tokenizer import train_tokenizer

# Record counts of the shared copies (each SOURCE.md's table).
COUNTS = {"hellaswag": 7030, "arc_easy": 1665, "arc_challenge": 821, "piqa": 1288,
          "winogrande": 2005, "lambada": 3608, "wikitext": 44}


def by_name(tasks):
    return {t.name: t for t in tasks}


def test_base_suite_reads_every_file_with_correct_counts_and_fields(shared_data):
    tasks = by_name(base_suite(shared_data, limit=None, include_docstrings=False))
    assert set(tasks) == set(COUNTS)
    for name, n in COUNTS.items():
        items = tasks[name].load_items()
        assert len(items) == n, name
        for item in items:
            if isinstance(item, MCItem):
                assert 0 <= item.gold < len(item.choices) and item.context, name
                assert all(c for c in item.choices), name
    hs = tasks["hellaswag"].load_items()
    assert hs[0].context == "Roof shingle removal: A man is sitting on a roof. he"
    assert hs[0].gold == 3 and len(hs[0].choices) == 4
    assert not any(re.search(r"\[.*?\]", c) for i in hs for c in i.choices)  # markup gone
    arc = tasks["arc_easy"].load_items()[0]
    assert arc.context.startswith("Question: ") and arc.context.endswith("\nAnswer:")
    piqa = tasks["piqa"].load_items()[0]
    assert len(piqa.choices) == 2 and piqa.context.startswith("Question: How do I ready")
    lam = tasks["lambada"].load_items()[0]
    assert isinstance(lam, LoglikelihoodItem) and lam.continuation.startswith(" ")
    assert " " not in lam.continuation[1:]
    wiki = tasks["wikitext"].load_items()
    assert isinstance(wiki[0], PerplexityItem) and wiki[0].text.startswith("= Robert <unk> =")
    assert " @-@ " not in wiki[0].text and wiki[0].n_bytes > len(wiki[0].text.encode()) - 1000


def test_limit_caps_items(shared_data):
    tasks = by_name(base_suite(shared_data, limit=7, include_docstrings=False))
    assert len(tasks["hellaswag"].load_items()) == 7
    assert len(tasks["wikitext"].load_items()) == 44  # documents are never cut


def test_winogrande_partial_scoring_requests(shared_data):
    task = by_name(base_suite(shared_data, limit=3, include_docstrings=False))["winogrande"]
    item = task.load_items()[0]
    assert item.context.endswith("as the ") and item.choices == ["panels", "generator"]
    assert item.suffix == "would be his main power supply."
    tok = train_tokenizer(["as the panels would be his main power supply. generator"] * 10,
                          300, show_progress=False)
    (ctx1, cont1), (ctx2, cont2) = mc_requests(task, item, tok)
    # The context differs per choice (the filled blank); the scored continuation is shared.
    assert ctx1 != ctx2 and cont1 == cont2
    assert tok.decode(cont1) == " would be his main power supply."
    assert tok.decode(ctx1[1:]).endswith("as the panels")


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(LmforgeError, match="does not exist"):
        base_suite(tmp_path / "nowhere")
    (tmp_path / "hellaswag").mkdir()
    with pytest.raises(LmforgeError, match="evaluation data missing"):
        base_suite(tmp_path)


def _partial_root(shared_data, tmp_path, *names):
    """A data root holding only some benchmarks' files (copied from shared/data)."""
    files = {"piqa": "piqa/piqa_valid.jsonl", "arc_easy": "arc/ARC-Easy-test.jsonl",
             "lambada": "lambada/lambada_test.jsonl"}
    for name in names:
        (tmp_path / files[name]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / files[name]).write_bytes((shared_data / files[name]).read_bytes())
    return tmp_path


def test_a_data_root_with_some_benchmarks_runs_those_and_names_the_rest(shared_data, tmp_path,
                                                                        capsys):
    root = _partial_root(shared_data, tmp_path, "piqa", "arc_easy")
    chosen = select_builtin(root, limit=5)
    assert [t.name for t in chosen.tasks] == ["arc_easy", "piqa", "docstrings_mc",
                                               "docstrings_bpb"]
    assert set(chosen.absent) == {"hellaswag", "arc_challenge", "winogrande", "lambada",
                                  "wikitext"}
    assert chosen.absent["hellaswag"] == str(root / "hellaswag" / "hellaswag_val.jsonl")
    err = capsys.readouterr().err
    assert "holds no file for hellaswag, arc_challenge" in err
    assert [t.name for t in base_suite(root, 5, include_docstrings=False)] == ["arc_easy",
                                                                               "piqa"]


def test_built_in_tasks_by_name(shared_data, tmp_path):
    chosen = select_builtin(shared_data, limit=3, names=["piqa", "hellaswag"])
    assert [t.name for t in chosen.tasks] == ["piqa", "hellaswag"] and not chosen.absent
    assert len(chosen.tasks[0].load_items()) == 3
    assert parse_task_names(" hellaswag, arc_easy ,hellaswag") == ["hellaswag", "arc_easy"]
    # The docstring tasks need no data root at all.
    only_docs = select_builtin(tmp_path / "nowhere", names=["docstrings_mc"])
    assert [t.name for t in only_docs.tasks] == ["docstrings_mc"]
    with pytest.raises(LmforgeError, match="unknown task.*hellaswog") as e:
        parse_task_names("hellaswog,piqa")
    assert all(name in e.value.message for name in BUILTIN_TASKS)
    # Asked for by name but absent from the data root: an error, not a silent skip.
    root = _partial_root(shared_data, tmp_path, "piqa")
    with pytest.raises(LmforgeError, match="no file for hellaswag"):
        select_builtin(root, names=["piqa", "hellaswag"])


def test_lm_eval_preprocessing_rules():
    assert hellaswag_preprocess(" A [title] B [step] c  d ") == "A. B c d"
    assert wikitext_detokenize("a @-@ b , c 's ( x )") == "a-b, c's (x)"


def test_docstring_tasks_are_held_out_and_well_formed():
    pairs = held_out_functions(0, 0.05)
    assert len(pairs) > 100
    mc, bpb = docstring_tasks(limit=50)
    items = mc.load_items()
    assert len(items) == 50 and all(len(i.choices) == 4 for i in items)
    assert all(i.choices[i.gold] == pairs[i.index][2] for i in items)
    assert all(len(set(i.choices)) == 4 for i in items)
    ll = bpb.load_items()
    assert ll[0].context == pairs[0][1] and ll[0].continuation == "\n\n" + pairs[0][2]
    # Held out: every document the items come from is in the tokenize stage's val split.
    assert all(split_key(0, doc_id) < 0.05 for doc_id, _, _ in pairs)
    assert all(h.startswith(doc_id.split(":", 1)[1]) for doc_id, h, _ in pairs)
    assert "pydocs" in SUITES and "base" in SUITES


def test_base_suite_without_any_data_folder_runs_the_docstring_tasks(monkeypatch, capsys):
    # A user's clone has no shared/data and nobody pointed at benchmark files: the quickstart
    # still evaluates (what needs no files) and says what it left out.
    import lmforge.eval.suites as suites

    monkeypatch.delenv("LMFORGE_EVAL_DATA", raising=False)
    monkeypatch.setattr(suites, "default_data_root",
                        lambda root=None: Path(root) if root else Path("/no/such/folder"))
    names = [t.name for t in suites.base_suite(None, 10)]
    assert names == ["docstrings_mc", "docstrings_bpb"]
    assert "LMFORGE_EVAL_DATA" in capsys.readouterr().err
