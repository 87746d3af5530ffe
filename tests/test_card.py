"""`lmforge card`: a model card generated from the record alone. A real record (tokenizer,
init, tokenize, a 3-step pretrain, an evaluation with gates, a forced approval) must come out
with its design, data, training, evaluation, lineage and history; a record built directly
(curation stats, a red-team report, a deprecation) with those; and nothing is invented where
the record is silent."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from lmforge.lifecycle.card import gather
from lmforge.lifecycle.card_render import (
    SVG_H,
    svg_points,
    to_markdown,
    write_html,
)
from lmforge.registry import Workspace, atomic_write_json, atomic_write_text
from test_cli import artifact_id, corpus_file, design_file, one_clean_error  # noqa: F401
from test_eval_cli import tasks_file  # noqa: F401
from test_pretrain_cli import ARGS, setup  # noqa: F401


def _front_matter(md: str) -> tuple[dict, str]:
    assert md.startswith("---\n")
    head, body = md[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.fixture
def record(cli, setup, tasks_file):  # noqa: F811
    """A pretrained model with a passing evaluation, approved by force (no red-team report)."""
    code, out, err = cli("pretrain", "--model", setup["model"], "--data", setup["tokens"], *ARGS)
    assert code == 0, err
    model = artifact_id(out, "model")
    code, out, err = cli("eval", model, "--tasks", tasks_file, "--gate", "colors/acc >= 0",
                         "--gate", "ppl/bpb <= 1000")
    assert code == 0, err
    report = artifact_id(out, "eval-report")
    code, _, err = cli("registry", "promote", model, "approved", "--reason", "demo release",
                       "--force")
    assert code == 0, err
    return {**setup, "pretrained": model, "eval": report}


def test_card_names_design_data_training_eval_lineage_and_the_forced_move(cli, record):
    model = record["pretrained"]
    code, md, err = cli("card", model)
    assert code == 0, err
    meta, body = _front_matter(md)
    ws = Workspace.open(cli.workspace)
    art = ws.resolve(model)
    # design: the shape of tests' mini.toml, and its parameter count
    assert "| n_layers | 2 |" in body and "| d_model | 64 |" in body
    assert f"{art.metrics.get('params', 0):,}" in body or "parameters" in body
    # data: the tokens and the tokenizer it was made from, with their counts
    tokens = ws.resolve(record["tokens"])
    assert record["tokens"] in body and record["tokenizer"] in body
    assert f"{tokens.metrics['train_tokens']:,}" in body
    # training: the run's steps and tokens as the record keeps them
    m = art.metrics
    assert m["steps"] == 3
    row = next(line for line in body.splitlines() if line.startswith(f"| `{model}` |"))
    assert f"| pretrain | 3 | {m['tokens']:,} |" in row
    assert f"{m['train_loss']:.4g}" in row
    # evaluation: the report, its metrics and its gates
    report = json.loads(ws.resolve(record["eval"]).file("report.json").read_text())
    assert record["eval"] in body and "gates passed" in body
    assert "| colors/acc >= 0 |" in body
    acc = report["tasks"]["colors"]["metrics"]["acc"]["value"]
    assert f"| colors | acc | {acc:.4g} |" in body
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == pytest.approx(
        round(report["tasks"]["colors"]["metrics"][
            meta["model-index"][0]["results"][0]["metrics"][0]["type"]]["value"], 6))
    assert "acc" in meta["metrics"] and meta["license"] == "unknown"
    # the forced approval: a notice before the first section, and in the history table
    first_section = body.index("\n## ")
    warning = body.index("forced past the checks")
    assert warning < first_section
    assert "demo release" in body[warning:first_section]
    history = body[body.index("## State history"):]
    assert "| pretrained | approved | demo release | **FORCED** |" in history
    assert "forced-lifecycle-move" in meta["tags"] and "lifecycle-approved" in meta["tags"]
    # no red-team report anywhere: said, not invented
    assert "No red-team report of this model" in body
    # lineage: a tree naming every ancestor
    tree = body[body.index("```text"):]
    for key in ("model", "tokens", "tokenizer"):
        assert record[key] in tree
    assert "design-" in tree and "└── " in tree


def test_html_writes_index_with_a_loss_plot_of_the_logged_losses(cli, record, tmp_path):
    model = record["pretrained"]
    out = tmp_path / "card"
    code, text, err = cli("card", model, "--html", out, "--out", tmp_path / "md" / "card.md")
    assert code == 0, err
    page = (out / "index.html").read_text()
    png = out / f"loss-{model}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"src='loss-{model}.png'" in page and "forced past the checks" in page
    assert "<ul class='lineage'>" in page and record["tokenizer"] in page
    # the plotted numbers are the training metrics the pretrain stage logged
    ws = Workspace.open(cli.workspace)
    logged = [json.loads(line) for line in
              ws.resolve(model).file("training_metrics.jsonl").read_text().splitlines()]
    with open(out / f"loss-{model}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [r["step"] for r in logged]
    assert [float(r["loss"]) for r in rows] == [r["loss"] for r in logged]
    assert [float(r["val_loss"]) for r in rows if r["val_loss"]] == \
        [r["val_loss"] for r in logged if "val_loss" in r]
    assert float(rows[-1]["loss"]) == ws.resolve(model).metrics["train_loss"]
    # --out writes the Markdown with its own copy of the curve beside it
    md = (tmp_path / "md" / "card.md").read_text()
    assert f"![loss curve of {model}](loss-{model}.png)" in md
    assert (tmp_path / "md" / f"loss-{model}.png").is_file()
    assert (out / "README.md").read_text() == md


def test_export_hf_writes_the_card_as_readme(cli, record, tmp_path):
    model = record["pretrained"]
    code, _, err = cli("export", model, "--out", tmp_path / "hf")
    assert code == 0, err
    readme = (tmp_path / "hf" / "README.md").read_text()
    meta, body = _front_matter(readme)
    assert meta["library_name"] == "transformers" and record["eval"] in body


def test_a_model_with_no_evaluations_says_so(cli, setup):  # noqa: F811
    code, md, err = cli("card", setup["model"])
    assert code == 0, err
    meta, body = _front_matter(md)
    assert "No evaluation of this model or of the models it was made from" in body
    assert "eval-report-" not in body and "model-index" not in meta and "metrics" not in meta
    assert "No red-team report" in body
    assert "its weights are random" in body and "has not been trained" in body
    assert "forced past the checks" not in body and "**FORCED**" not in body


def test_unknown_model_and_non_model_are_one_clean_error(cli, setup):  # noqa: F811
    code, _, err = cli("card", "model-doesnotexist")
    one_clean_error(code, err, "model-doesnotexist", "registry ls")
    code, _, err = cli("card", setup["tokenizer"])
    one_clean_error(code, err, setup["tokenizer"], "expected a model")


# --- a record registered directly: curation stats, two training runs, a red-team report,
# --- a deprecation -------------------------------------------------------------------------


def _register(ws: Workspace, kind: str, stage: str, files: dict[str, object], **kw):
    with ws.staging() as d:
        for name, content in files.items():
            if isinstance(content, str):
                atomic_write_text(d / name, content)
            else:
                atomic_write_json(d / name, content)
        return ws.register(d, kind=kind, stage=stage, **kw)


def _log(losses: list[float], every: int) -> str:
    """training_metrics.jsonl as the training loop writes it."""
    return "".join(json.dumps({"step": i + 1, "loss": x, "tokens": 256 * (i + 1),
                               **({"val_loss": x + 0.1} if (i + 1) % every == 0 else {})})
                   + "\n" for i, x in enumerate(losses))


def _redteam_report(model_id: str, asr: tuple[int, int], over: tuple[int, int]) -> dict:
    def rate(k: int, n: int) -> dict:
        return {"n": n, "successes": k, "rate": k / n, "ci_low": max(0.0, k / n - 0.1),
                "ci_high": min(1.0, k / n + 0.1), "ci_method": "bootstrap"}

    over_entry = {**rate(*over), "by_split": {"seen": rate(*over), "heldout": rate(*over)}}
    return {"model": model_id, "target": model_id, "suite": "builtin", "attempts_per_unit": 1,
            "summary": {"asr": rate(*asr), "categories": {
                "direct": {**rate(*asr), "by_split": {}}, "over_refusal": over_entry},
                "unjudged": {"attempts": 0, "of": 20, "share": 0.0, "reasons": {}}},
            "gates": [{"gate": "asr <= 0.1", "metric": "asr", "value": asr[0] / asr[1],
                       "passed": asr[0] / asr[1] <= 0.1}],
            "gates_passed": asr[0] / asr[1] <= 0.1, "findings": [{}] * asr[0]}


@pytest.fixture
def built(tmp_path):
    from lmforge.redteam.stage import metrics_of

    ws = Workspace.open(tmp_path / "ws")
    steps = [{"name": "read", "by_source": {
                 "web": {"documents_in": 100, "characters_in": 9000, "documents_out": 100,
                         "characters_out": 9000},
                 "docs": {"documents_in": 40, "characters_in": 4000, "documents_out": 40,
                          "characters_out": 4000}}},
             {"name": "gopher_quality", "by_source": {
                 "web": {"documents_in": 100, "characters_in": 9000, "documents_out": 70,
                         "characters_out": 7000},
                 "docs": {"documents_in": 40, "characters_in": 4000, "documents_out": 38,
                          "characters_out": 3900}}}]
    sources = {"web": {"documents_in": 100, "characters_in": 9000, "documents_out": 70,
                       "characters_out": 7000},
               "docs": {"documents_in": 40, "characters_in": 4000, "documents_out": 38,
                        "characters_out": 3900}}
    curated = _register(
        ws, "dataset", "curate", {"stats.json": {"sources": sources, "steps": steps},
                                  "report.md": "# curation\n"},
        settings={"sources": [{"name": "web", "paths": ["crawl/*.jsonl"], "preset": "web",
                               "filters": {}},
                              {"name": "docs", "paths": ["hf:someone/docs:train"],
                               "preset": "docs", "filters": {}}]},
        metrics={"documents": 108, "characters": 10900, "sources": sources, "warnings": []},
        name="curated-web-docs")
    tok = _register(ws, "tokenizer", "tokenizer", {"tokenizer.json": "{}"},
                    parents={"data": [curated.id]}, settings={"vocab_size": 300,
                                                              "inputs": [curated.id]},
                    metrics={"vocab_size": 300, "documents": 108, "characters": 10900})
    design = _register(ws, "design", "design", {"design.toml": "[model]\n"},
                       settings={"n_layers": 1, "d_model": 32, "n_heads": 2, "n_kv_heads": 1,
                                 "vocab_size": 300, "context_length": 64, "name": "toy"},
                       metrics={"params": 30_000, "compute_optimal_tokens": 600_000})
    v0 = _register(ws, "model", "init", {"model.safetensors": "0"},
                   parents={"design": design.id, "tokenizer": tok.id},
                   metrics={"params": 30_000}, state="initialized", name="toy-v0")
    tokens = _register(ws, "tokens", "tokenize", {"index.json": {}},
                       parents={"data": curated.id, "tokenizer": tok.id},
                       metrics={"train_tokens": 5000, "val_tokens": 500})
    pre_losses = [6.0, 5.1, 4.7, 4.2, 4.4, 3.9]
    pre = _register(ws, "model", "pretrain", {"training_metrics.jsonl": _log(pre_losses, 3)},
                    parents={"base": v0.id, "data": tokens.id, "tokenizer": tok.id},
                    settings={"lr": 0.003, "seed": 0},
                    metrics={"steps": 6, "tokens": 1536, "train_loss": 3.9, "val_loss": 4.0,
                             "best_step": 6}, state="pretrained", name="toy-pretrained")
    sft = _register(ws, "model", "finetune", {"training_metrics.jsonl": _log([3.0, 2.5], 2)},
                    parents={"base": pre.id, "tokenizer": tok.id},
                    settings={"method": "sft", "data": ["pydocs-chat"], "lr": 0.001},
                    metrics={"method": "sft", "steps": 2, "tokens": 300, "train_loss": 2.5,
                             "val_loss": 2.6}, state="tuned", name="toy-sft")
    report = _redteam_report(sft.id, asr=(3, 20), over=(2, 10))
    red = _register(ws, "redteam-report", "redteam", {"report.json": report},
                    parents={"model": sft.id}, settings={"suite": "builtin"},
                    metrics=metrics_of(report), name="redteam")
    ws.set_state(pre.id, "approved", "shipped for a demo", force=True)
    # The deprecation's sunset and successor, where this registry records them.
    import inspect

    announce = {"sunset": "2027-03-01", "successor": sft.id} if "sunset" in \
        inspect.signature(ws.set_state).parameters else {}
    ws.set_state(pre.id, "deprecated", "superseded by the SFT model", **announce)
    yield {"ws": ws, "curated": curated, "pre": pre, "sft": sft, "red": red, "tok": tok,
           "announce": announce, "pre_losses": pre_losses}
    ws.close()


def test_card_shows_curation_stats_training_runs_redteam_and_deprecation(built):
    ws = built["ws"]
    card = gather(ws, built["sft"].id)
    md = to_markdown(card)
    _, body = _front_matter(md)
    # data: sources with documents in and kept, and each step's removals
    assert "| web | crawl/*.jsonl | web | 100 | 70 | yes |" in body
    assert "| gopher_quality | 140 | 32 | 22.9% |" in body
    assert f"lmforge curate --report {built['curated'].id}" in body
    # training runs in order, with the best validation loss and its step from the log
    assert [r.method for r in card.training] == ["pretrain", "sft"]
    assert card.training[0].best_val_loss == pytest.approx(min(
        x + 0.1 for i, x in enumerate(built["pre_losses"]) if (i + 1) % 3 == 0))
    assert card.training[0].best_step == 6
    assert "| `" + built["pre"].id + "` | pretrain | 6 | 1,536 | 3.9 |" in body
    # red team: attack success and over-refusal with their intervals, gates failed
    assert "Attack success (all attacks) 15.0% [5.0%, 25.0%] (n=20)" in body
    assert "over-refusal of benign asks 20.0% [10.0%, 30.0%] (n=10)" in body
    assert "| asr <= 0.1 | 0.15 | **FAILED** |" in body
    assert "Red-teamed (" in body and "it FAILED its red-team gates" in body
    # no evaluation at all: said, not invented
    assert "No evaluation of this model or of the models it was made from" in body
    # the ancestor's forced approval is shown up front
    assert body.index("shipped for a demo") < body.index("\n## ")
    # intended use: sizes and tokens from the record
    assert "30,000-parameter" in card.intended_use and "1,536 tokens" in card.intended_use
    assert "0.26% of the compute-optimal tokens" in body

    old = to_markdown(gather(ws, built["pre"].id))
    head = old[:old.index("\n## ")]
    assert "This model is **deprecated**" in head and "superseded by the SFT model" in head
    assert f"Successor: `{built['sft'].id}`" in head  # announced, or the newest child
    assert ("not announced" in head) == (not built["announce"])
    if built["announce"]:
        assert "Sunset date: 2027-03-01" in head
    assert "| approved | deprecated | superseded by the SFT model |" in old


def test_without_matplotlib_the_page_draws_the_curves_as_svg(built, tmp_path, monkeypatch):
    import lmforge.lifecycle.card_render as render

    monkeypatch.setattr(render, "matplotlib_available", lambda: False)
    card = gather(built["ws"], built["sft"].id)
    plots = write_html(card, tmp_path / "page")
    page = (tmp_path / "page" / "index.html").read_text()
    assert not list((tmp_path / "page").glob("*.png"))
    assert "matplotlib is not installed" in page
    pre = built["pre"].id
    assert (tmp_path / "page" / f"loss-{pre}.svg").is_file() and pre in plots.files
    svg = page[page.index(f"aria-label='loss curve of {pre}'"):]
    points = svg[svg.index("class='train'"):].split("points='")[1].split("'")[0]
    drawn = [tuple(map(float, p.split(","))) for p in points.split()]
    losses = built["pre_losses"]
    assert len(drawn) == len(losses)
    both = losses + [x + 0.1 for x in losses[2::3]]  # the y axis spans train and val losses
    expected = svg_points([(float(i + 1), x) for i, x in enumerate(losses)],
                          (1.0, 6.0), (min(both), max(both)))
    assert drawn == [(round(x, 2), round(y, 2)) for x, y in expected]
    # a higher loss is drawn higher up (smaller y), inside the frame
    for (_, ya), (_, yb), la, lb in zip(drawn, drawn[1:], losses, losses[1:]):
        assert (ya < yb) == (la > lb)
    assert all(0 < y < SVG_H for _, y in drawn)
