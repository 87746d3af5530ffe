"""Comparing two reports: paired significance, unpaired fallback, refusals; rendering."""

import copy
import random

import pytest
from rich.console import Console

from lmforge.errors import LmforgeError
from lmforge.eval import render_report as rr
from lmforge.eval.compare import compare_reports


def report(p_correct: float, n: int = 200, seed: int = 0, model: str = "m",
           start: int = 0) -> dict:
    rng = random.Random(seed)
    acc = [float(rng.random() < p_correct) for _ in range(n)]
    bpb = [2.0 - 0.5 * p_correct + rng.gauss(0, 0.05) for _ in range(n)]
    items = [{"index": start + i, "prompt": f"q{start + i}", "scores": {"acc": a, "bpb": b}}
             for i, (a, b) in enumerate(zip(acc, bpb))]
    mean = sum(acc) / n
    return {"suite": "base", "model": model,
            "settings": {"seed": 0, "limit": None, "add_bos": True},
            "tasks": {"hellaswag": {
                "kind": "multiple_choice", "n": n, "num_fewshot": 0,
                "metrics": {"acc": {"value": mean, "stderr": 0.03},
                            "bpb": {"value": sum(bpb) / n, "stderr": 0.004}},
                "items": items}}}


def row(cmp, metric):
    return next(r for r in cmp["rows"] if r["metric"] == metric)


def test_identical_reports_have_zero_deltas_and_nothing_significant():
    a = report(0.4)
    cmp = compare_reports(a, copy.deepcopy(a), iters=500)
    for r in cmp["rows"]:
        assert r["delta"] == 0 and r["ci_low"] == r["ci_high"] == 0
        assert r["significant"] is False and r["p_value"] == 1.0
        assert r["method"].startswith("paired") and r["n_paired"] == 200


def test_a_clearly_better_model_is_significant_and_a_noisy_one_is_not():
    a, b = report(0.3, model="old"), report(0.6, seed=1, model="new")
    cmp = compare_reports(a, b, iters=1000)
    acc = row(cmp, "acc")
    assert acc["delta"] == pytest.approx(b["tasks"]["hellaswag"]["metrics"]["acc"]["value"]
                                         - a["tasks"]["hellaswag"]["metrics"]["acc"]["value"])
    assert acc["significant"] and 0 < acc["ci_low"] < acc["delta"] < acc["ci_high"]
    assert acc["p_value"] < 0.01
    bpb = row(cmp, "bpb")
    assert bpb["significant"] and bpb["delta"] < 0 and not bpb["higher_is_better"]
    md = rr.comparison_markdown(cmp)
    assert "| hellaswag | acc |" in md and "yes, better" in md and "old" in md
    # Same model quality, different luck: no significance claimed.
    same = compare_reports(report(0.5, seed=2), report(0.5, seed=3), iters=1000)
    assert not row(same, "acc")["significant"] and row(same, "acc")["p_value"] > 0.05


def test_comparison_is_reproducible_for_a_seed():
    a, b = report(0.4), report(0.5, seed=1)
    assert compare_reports(a, b, seed=5) == compare_reports(a, b, seed=5)


def test_different_items_fall_back_to_an_unpaired_bootstrap():
    a, b = report(0.3), report(0.7, seed=1, start=1000)
    r = row(compare_reports(a, b, iters=500), "acc")
    assert r["method"].startswith("unpaired") and r["n_paired"] == 0
    assert "no shared items" in r["note"] and r["significant"]
    c = report(0.7, seed=1)
    for item in c["tasks"]["hellaswag"]["items"]:
        item["prompt"] = "other " + item["prompt"]
    r = row(compare_reports(a, c, iters=500), "acc")
    assert r["method"].startswith("unpaired") and "different prompt" in r["note"]


def test_per_item_weights_give_the_micro_average():
    def rep(scores):
        items = [{"index": i, "scores": {"ila": s}, "weights": {"ila": w}}
                 for i, (s, w) in enumerate(scores)]
        total = sum(s * w for s, w in scores) / sum(w for _, w in scores)
        return {"settings": {}, "tasks": {"ifeval": {"metrics": {
            "ila": {"value": total, "stderr": 0.1}}, "items": items}}}
    a = rep([(0.0, 1), (1 / 3, 3), (0.5, 2), (1.0, 1)])
    b = rep([(1.0, 1), (2 / 3, 3), (0.5, 2), (1.0, 1)])
    r = compare_reports(a, b, iters=200)["rows"][0]
    assert r["delta"] == pytest.approx(2 / 7) and r["note"] == ""


@pytest.mark.parametrize("where, value, name", [
    ("settings", {"add_bos": False}, "add_bos"),
    ("settings", {"limit": 100}, "limit"),
    ("task", {"num_fewshot": 5}, "hellaswag.num_fewshot"),
])
def test_settings_that_change_scores_are_refused_unless_forced(where, value, name):
    a, b = report(0.4), report(0.4)
    (b["settings"] if where == "settings" else b["tasks"]["hellaswag"]).update(value)
    with pytest.raises(LmforgeError, match=name) as e:
        compare_reports(a, b)
    assert "--force" in e.value.hint
    cmp = compare_reports(a, b, force=True, iters=200)
    assert cmp["forced"] and any(name in d for d in cmp["setting_differences"])
    assert "FORCED" in rr.comparison_markdown(cmp)


def test_nothing_in_common_is_an_error():
    a, b = report(0.4), report(0.4)
    b["tasks"] = {"arc_easy": b["tasks"].pop("hellaswag")}
    with pytest.raises(LmforgeError, match="share no task"):
        compare_reports(a, b)


def test_comparison_png_is_deterministic(tmp_path):
    cmp = compare_reports(report(0.3), report(0.6, seed=1), iters=200)
    p1 = rr.save_comparison_png(cmp, tmp_path / "a.png")
    p2 = rr.save_comparison_png(cmp, tmp_path / "sub" / "b.png")
    data = p1.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data == p2.read_bytes()
    assert b"matplotlib" not in data  # no Software chunk carrying the version


def test_report_rendering_with_gates_and_human_review():
    rep = report(0.4)
    rep["gates"] = {"results": [
        {"metric": "base/hellaswag/acc", "op": ">=", "threshold": 0.5, "value": 0.4,
         "passed": False},
        {"metric": "base/wikitext/bpb", "op": "<=", "threshold": 2.0, "value": 1.9,
         "passed": True}], "passed": False}
    within = {"value": 0.75, "stderr": 0.1}
    scale = {"value": 3.5, "stderr": 0.2}
    rep["human_review"] = {
        "models": {"m": {"n_items": 4, "clarity": scale, "relevance": scale, "tone": scale,
                         "within_bounds": within}},
        "agreement": {"pairs": {"ann | bob": {"n_items": 4, "clarity": {
            "percent_agreement": 0.5, "kappa": 0.61}}},
            "n_items_multiply_rated": 4, "krippendorff_alpha": {"clarity": 0.58}}}
    md = rr.report_markdown(rep)
    assert "## Gates: FAILED" in md and "| base/hellaswag/acc | >= 0.5000 | 0.4000 | FAIL |" in md
    assert "| hellaswag | acc |" in md and "| m | 4 | 3.5000 ± 0.2000 |" in md
    assert "0.6100" in md and "alpha 0.5800" in md
    console = Console(record=True, width=160)
    rr.render_report(rep, console)
    text = console.export_text()
    assert "FAIL" in text and "hellaswag" in text and "reviewer agreement" in text
    rr.render_comparison(compare_reports(rep, report(0.7, seed=4), iters=200), console)
    assert "yes, better" in console.export_text()
