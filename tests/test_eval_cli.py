"""`lmforge eval`, `eval compare`, `review export/import` and gates, from the command line:
reports are registered on the exact model, gates decide approval, bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_cli import (  # noqa: F401
    artifact_id,
    corpus_file,
    design_file,
    model_v0,
    one_clean_error,
)


@pytest.fixture
def tasks_file(tmp_path: Path) -> Path:
    items = [{"q": f"the {w} is", "choices": ["red", "blue", "green"], "answer": i % 3}
             for i, w in enumerate(["sky", "sea", "grass", "apple", "leaf", "sun"] * 5)]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    (tmp_path / "ppl.jsonl").write_text("".join(json.dumps({"text": f"the sky is blue {i}"})
                                                + "\n" for i in range(8)))
    f = tmp_path / "tasks.toml"
    f.write_text('[tasks.colors]\nkind = "multiple_choice"\npath = "mc.jsonl"\n'
                 'context_field = "q"\nchoices_field = "choices"\ngold_field = "answer"\n\n'
                 '[tasks.ppl]\nkind = "perplexity"\npath = "ppl.jsonl"\ntext_field = "text"\n')
    return f


def _report(cli, ref: str) -> dict:
    ws = Path(cli.workspace)
    path = next(ws.glob(f"artifacts/eval-report/{ref}/report.json"))
    return json.loads(path.read_text())


def test_eval_registers_report_on_the_model_with_gates(cli, model_v0, tasks_file):  # noqa: F811
    model, _ = model_v0
    code, out, err = cli("eval", model, "--tasks", tasks_file,
                         "--gate", "colors/acc >= 0", "--gate", "ppl/bpb <= 1000")
    assert code == 0, err
    rep_id = artifact_id(out, "eval-report")
    assert "gates passed" in out
    report = _report(cli, rep_id)
    assert report["model_id"] == model and len(report["weights_sha256"]) == 64
    assert report["tasks"]["colors"]["n"] == 30
    for m in report["tasks"]["colors"]["metrics"].values():
        assert 0 <= m["stderr"] < 1
    assert report["gates"]["passed"] is True
    code, out, _ = cli("registry", "lineage", rep_id)
    assert model in out
    # failing gates are reported as such, and approval then names what is missing
    code, out, err = cli("eval", model, "--tasks", tasks_file, "--gate", "ppl/bpb <= 0.001")
    assert code == 0 and "FAILED" in out


def test_approval_needs_a_passing_eval_report(cli, model_v0, tasks_file):  # noqa: F811
    model, _ = model_v0
    code, _, err = cli("registry", "promote", model, "pretrained", "--reason", "test",
                       "--force")
    assert code == 0, err
    code, _, err = cli("registry", "promote", model, "approved", "--reason", "release")
    one_clean_error(code, err, "no eval-report")
    code, _, err = cli("eval", model, "--tasks", tasks_file, "--gate", "colors/acc >= 0")
    assert code == 0, err
    code, out, err = cli("registry", "promote", model, "approved", "--reason", "release")
    one_clean_error(code, err, "no redteam-report")  # a passing evaluation is not enough
    # The red-team report (tests/test_redteam*.py cover it): a short run whose one gate an
    # untrained model meets (its answers are mostly not UTF-8, so no attack rate is measured).
    code, _, err = cli("redteam", model, "--suite", "builtin", "--limit", 2, "--attempts", 1,
                       "--categories", "direct", "--max-new-tokens", 4, "--device", "cpu",
                       "--gate", "unjudged <= 1")
    assert code == 0, err
    code, out, err = cli("registry", "promote", model, "approved", "--reason", "release")
    assert code == 0, err
    assert f"{model}: pretrained -> approved" in out


def test_bad_gates_and_tasks_fail_before_any_work(cli, model_v0, tasks_file, tmp_path):  # noqa: F811
    model, _ = model_v0
    code, _, err = cli("eval", model, "--tasks", tasks_file, "--gate", "colors/acc >> 1")
    one_clean_error(code, err, "TASK/METRIC OP NUMBER")
    code, _, err = cli("eval", model, "--tasks", tasks_file, "--gate", "nope/acc >= 1")
    one_clean_error(code, err, "nope", "colors")
    code, _, err = cli("eval", model, "--suite", "weird")
    one_clean_error(code, err, "unknown suite")
    code, _, err = cli("eval", model)
    one_clean_error(code, err, "nothing to evaluate")
    code, _, err = cli("eval", model, "--tasks", tasks_file, "--device", "banana")
    one_clean_error(code, err, "unknown device")
    bad = tmp_path / "bad.toml"
    bad.write_text('[tasks.x]\nkind = "multiple_choice"\npath = "mc.jsonl"\n'
                   'context_field = "q"\nchoices_field = "choices"\ngold_field = "missing"\n')
    code, _, err = cli("eval", model, "--tasks", bad)
    one_clean_error(code, err, "mc.jsonl:1", "missing")


def test_compare_two_models(cli, model_v0, corpus_file, design_file, tasks_file, tmp_path):  # noqa: F811
    model_a, tok = model_v0
    code, out, err = cli("init", "--design", design_file, "--tokenizer", tok, "--seed", 7)
    model_b = artifact_id(out, "model")
    for m in (model_a, model_b):
        code, _, err = cli("eval", m, "--tasks", tasks_file)
        assert code == 0, err
    code, out, err = cli("eval", "compare", model_a, model_b, "--png", tmp_path / "c.png")
    assert code == 0, err
    assert "colors" in out and "acc" in out
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = cli("eval", "compare", model_a)
    one_clean_error(code, err, "two")


def test_review_export_import_round_trip(cli, model_v0, tmp_path):  # noqa: F811
    model, _ = model_v0
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps({"p": f"Say {w}.", "r": w}) + "\n"
                           for w in ["yes", "no", "maybe", "hello"]))
    toml = tmp_path / "gen.toml"
    toml.write_text('[tasks.say]\nkind = "generation"\npath = "gen.jsonl"\n'
                    'prompt_field = "p"\nreferences_field = "r"\nmetric = "contains"\n'
                    'max_new_tokens = 4\n')
    code, out, err = cli("eval", model, "--tasks", toml, "--max-new-tokens", 4)
    assert code == 0, err
    rep = artifact_id(out, "eval-report")
    review = tmp_path / "review"
    code, out, err = cli("review", "export", rep, "--out", review, "--n", 4, "--reviewers", 2)
    assert code == 0, err
    assert model not in (review / "review.html").read_text()  # blinded
    rated = []
    for j in (1, 2):
        rows = [json.loads(line) for line in (review / f"review-r{j}.jsonl").open()]
        for row in rows:
            row.update(reviewer=f"r{j}", clarity=3, relevance=4, tone=5, within_bounds=True)
        f = tmp_path / f"r{j}.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
        rated.append(f)
    code, out, err = cli("review", "import", review, *rated)
    assert code == 0, err
    new = artifact_id(out.split("eval report")[-1], "eval-report")
    report = _report(cli, new)
    assert report["human_review"]["n_ratings"] == 8


@pytest.fixture
def some_benchmarks(tmp_path: Path) -> Path:
    """A data root with only PIQA and ARC-Easy, laid out like shared/data; PIQA item 1 has
    a solution far longer than the test model's 64-token context (like the 276-token PIQA
    solution that used to stop `--suite base` on a 256-token model)."""
    root = tmp_path / "bench"
    (root / "piqa").mkdir(parents=True)
    (root / "arc").mkdir()
    piqa = [{"goal": f"How do I open jar {i}?", "sol1": "Twist the lid.",
             "sol2": "Hit it with a hammer.", "label": i % 2} for i in range(4)]
    piqa[1]["sol2"] = " ".join(["Hold the jar in one hand and twist the lid"] * 30)
    (root / "piqa" / "piqa_valid.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in piqa))
    arc = [{"question": f"Which is a {w}?", "answerKey": "A",
            "choices": {"text": [w, "rock"], "label": ["A", "B"]}} for w in ("cat", "dog")]
    (root / "arc" / "ARC-Easy-test.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in arc))
    return root


def test_json_output_is_one_json_document(cli, model_v0, tasks_file):  # noqa: F811
    model, _ = model_v0
    code, out, err = cli("eval", model, "--tasks", tasks_file, "--json")
    assert code == 0, err
    report = json.loads(out)  # nothing before or after the report on stdout
    assert report["tasks"]["colors"]["n"] == 30 and report["artifact"].startswith("eval-report")
    assert f"eval report {report['artifact']}" in err


def test_suite_with_an_over_long_item_and_missing_benchmarks_finishes(cli, model_v0,  # noqa: F811
                                                                      some_benchmarks):
    model, _ = model_v0
    code, out, err = cli("eval", model, "--suite", "base", "--data-root", some_benchmarks,
                         "--limit", 4, "--json")
    assert code == 0, err
    report = json.loads(out)
    piqa = report["tasks"]["piqa"]
    assert piqa["n"] == 3 and [i["index"] for i in piqa["items"]] == [0, 2, 3]
    assert piqa["skipped"] == {"n": 1, "reasons": {
        "continuation longer than the model's context (64 tokens)": [1]}}
    assert "piqa: skipped 1 of 4 items" in err
    # The tasks after it ran too, and the benchmarks the root lacks are named.
    assert {"arc_easy", "docstrings_mc", "docstrings_bpb"} <= set(report["tasks"])
    assert set(report["absent_tasks"]) == {"hellaswag", "arc_challenge", "winogrande",
                                           "lambada", "wikitext"}
    assert "holds no file for hellaswag" in err
    md = _report(cli, report["artifact"])
    assert md["tasks"]["piqa"]["skipped"]["n"] == 1


def test_tasks_picks_built_in_tasks_by_name(cli, model_v0, some_benchmarks, tasks_file):  # noqa: F811
    model, _ = model_v0
    code, out, err = cli("eval", model, "--tasks", "piqa,arc_easy", "--data-root",
                         some_benchmarks, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert list(report["tasks"]) == ["piqa", "arc_easy"]
    assert report["settings"]["tasks"] == "piqa,arc_easy" and "absent_tasks" not in report
    code, _, err = cli("eval", model, "--tasks", "hellaswog,piqa")
    one_clean_error(code, err, "unknown task(s): hellaswog", "hellaswag", "arc_easy",
                    "docstrings_bpb")
    code, _, err = cli("eval", model, "--tasks", "hellaswag", "--data-root", some_benchmarks)
    one_clean_error(code, err, "no file for hellaswag")
    code, _, err = cli("eval", model, "--suite", "base", "--tasks", "piqa")
    one_clean_error(code, err, "does not combine with --suite")
    code, _, err = cli("eval", model, "--tasks", "ifeval")
    one_clean_error(code, err, "--suite chat")
    code, _, err = cli("eval", model, "--tasks", tasks_file.parent / "nope.toml")
    one_clean_error(code, err, "nope.toml")


def test_recipe_eval_step_takes_task_names(cli, model_v0, some_benchmarks, tmp_path):  # noqa: F811
    import io

    from rich.console import Console

    from lmforge.lifecycle.stages import STAGES, Context
    from lmforge.registry import Workspace

    model, _ = model_v0
    ws = Workspace.open(cli.workspace)
    try:
        ctx = Context(ws, tmp_path, Console(file=io.StringIO()), show_progress=False)
        step = STAGES["eval"](ctx, "eval", {"model": model, "tasks": "arc_easy,piqa",
                                            "data_root": str(some_benchmarks), "limit": 4})
        report = _report(cli, step.artifact)
    finally:
        ws.close()
    assert list(report["tasks"]) == ["arc_easy", "piqa"]
    assert report["tasks"]["piqa"]["skipped"]["n"] == 1
