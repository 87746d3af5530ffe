"""Human review: blinded export, HTML escaping, rating import, agreement statistics."""

import json

import pytest

from lmforge.errors import LmforgeError
from lmforge.eval import review as rv

EVIL = '<script>alert("x")</script> & <b>bold</b>'


def report(model: str, n: int = 6, prefix: str = "answer") -> dict:
    items = [{"index": i, "prompt": f"Question {i}?", "output": f"{prefix} {i}",
              "scores": {"prompt_level_acc": 1.0}} for i in range(n)]
    items[0]["output"] = EVIL
    return {"suite": "chat", "model": model, "settings": {},
            "tasks": {"ifeval": {"kind": "generation", "metrics": {}, "items": items},
                      "hellaswag": {"kind": "multiple_choice", "metrics": {},
                                    "items": [{"index": 0, "prompt": "p", "output": "o"}]}}}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_is_blinded_shuffled_deterministically_and_paired(tmp_path):
    reports = [report("model-alpha"), report("model-beta")]
    summary = rv.export_review(reports, tmp_path / "a", n=4, seed=0)
    rv.export_review(reports, tmp_path / "b", n=4, seed=0)
    rv.export_review(reports, tmp_path / "c", n=4, seed=1)
    assert summary["prompts"] == 4 and summary["items"] == 8  # each prompt: both models
    rows = read_jsonl(tmp_path / "a" / "review.jsonl")
    assert (tmp_path / "a" / "review.jsonl").read_bytes() == \
        (tmp_path / "b" / "review.jsonl").read_bytes()
    assert [r["prompt"] for r in rows] != [r["prompt"] for r in read_jsonl(
        tmp_path / "c" / "review.jsonl")]
    for path in ("review.jsonl", "review.html"):
        text = (tmp_path / "a" / path).read_text()
        assert "model-alpha" not in text and "model-beta" not in text
        assert "ifeval" not in text  # not even the task
    assert set(rows[0]) >= {"item_id", "prompt", "output", *rv.CRITERIA}
    assert all(r[c] is None for r in rows for c in rv.CRITERIA)
    key = json.loads((tmp_path / "a" / "key.json").read_text())
    assert set(key["items"]) == {r["item_id"] for r in rows}
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], set()).add(key["items"][r["item_id"]]["model"])
    assert all(models == {"model-alpha", "model-beta"} for models in by_prompt.values())
    # shuffled: the two answers to one prompt are not always side by side in model order
    order = [key["items"][r["item_id"]]["model"] for r in rows]
    assert order != sorted(order) and order != ["model-alpha", "model-beta"] * 4


def test_html_escapes_model_text_and_is_self_contained(tmp_path):
    rv.export_review([report("m", n=2)], tmp_path, n=2, seed=0)
    page = (tmp_path / "review.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)" in page
    assert "<b>bold</b>" not in page and "&amp;" in page
    assert page.count("<script>") == 1  # only the page's own download script
    assert "http://" not in page and "https://" not in page and "src=" not in page
    assert "new Blob(" in page and 'id="reviewer"' in page
    assert page.count('type="radio"') == 2 * (3 * 5 + 2)


def test_several_reviewers_get_the_same_items_in_their_own_order(tmp_path):
    s = rv.export_review([report("m", n=8)], tmp_path, n=8, seed=1, reviewers=2)
    r1, r2 = (read_jsonl(tmp_path / f"review-r{j}.jsonl") for j in (1, 2))
    assert len(s["files"]["html"]) == 3 and (tmp_path / "review-r2.html").is_file()
    assert {r["item_id"] for r in r1} == {r["item_id"] for r in r2}
    assert [r["item_id"] for r in r1] != [r["item_id"] for r in r2]


def rate(rows, reviewer, fn):
    return "".join(json.dumps({**r, "reviewer": reviewer, **fn(r)}) + "\n" for r in rows)


def test_import_round_trip_unblinds_and_measures_agreement(tmp_path):
    rv.export_review([report("alpha"), report("beta", prefix="reply")], tmp_path, n=6, seed=0)
    rows = read_jsonl(tmp_path / "review.jsonl")
    key = json.loads((tmp_path / "key.json").read_text())["items"]

    def scores_for(bump):
        def fn(r):
            good = key[r["item_id"]]["model"] == "beta"
            return {"clarity": 4 + good - bump * (not good), "relevance": 3, "tone": 5,
                    "within_bounds": "yes" if good else False}
        return fn

    (tmp_path / "ann.jsonl").write_text(rate(rows, "ann", scores_for(0)))
    (tmp_path / "bob.jsonl").write_text(rate(rows, "bob", scores_for(1)))
    hr = rv.import_reviews(tmp_path, [tmp_path / "ann.jsonl", tmp_path / "bob.jsonl"])
    assert hr["reviewers"] == ["ann", "bob"] and hr["n_ratings"] == 24 and hr["n_items"] == 12
    beta, alpha = hr["models"]["beta"], hr["models"]["alpha"]
    assert beta["n_items"] == alpha["n_items"] == 6
    assert beta["clarity"] == {"value": 5.0, "stderr": 0.0}
    assert alpha["clarity"]["value"] == 3.5  # ann 4, bob 3: averaged per item first
    assert beta["within_bounds"]["value"] == 1.0 and alpha["within_bounds"]["value"] == 0.0
    pair = hr["agreement"]["pairs"]["ann | bob"]
    assert pair["n_items"] == 12
    assert pair["clarity"]["percent_agreement"] == 0.5
    assert pair["within_bounds"]["percent_agreement"] == 1.0
    assert pair["within_bounds"]["kappa"] == pytest.approx(1.0)
    assert pair["relevance"]["kappa"] is None  # both always said 3: kappa is undefined
    assert hr["agreement"]["krippendorff_alpha"]["within_bounds"] == pytest.approx(1.0)
    json.dumps(hr)


def test_unrated_rows_are_skipped_and_reviewer_defaults_to_the_file_name(tmp_path):
    rv.export_review([report("m", n=3)], tmp_path, n=3, seed=0)
    rows = read_jsonl(tmp_path / "review.jsonl")
    text = rate(rows[:1], "", lambda r: {"clarity": "4", "relevance": 4, "tone": 4,
                                          "within_bounds": True})
    text += json.dumps(rows[1]) + "\n"  # untouched line of the hand-edited file
    (tmp_path / "carol.jsonl").write_text(text)
    hr = rv.import_reviews(tmp_path, [tmp_path / "carol.jsonl"])
    assert hr["reviewers"] == ["carol"] and hr["n_ratings"] == 1
    assert hr["agreement"]["pairs"] == {}


@pytest.mark.parametrize("change, message", [
    ({"item_id": "nope"}, "unknown item_id 'nope'"),
    ({"clarity": 6}, "clarity is 6, not a whole number 1-5"),
    ({"tone": 2.5}, "tone is 2.5"),
    ({"within_bounds": "maybe"}, "within_bounds is 'maybe'"),
    ({"relevance": None}, "only partly rated"),
])
def test_bad_rating_files_name_the_file_and_line(tmp_path, change, message):
    rv.export_review([report("m", n=3)], tmp_path, n=3, seed=0)
    rows = read_jsonl(tmp_path / "review.jsonl")
    good = {"clarity": 3, "relevance": 3, "tone": 3, "within_bounds": True}
    lines = [json.dumps({**rows[0], **good}), "", json.dumps({**rows[1], **good, **change})]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LmforgeError) as e:
        rv.import_reviews(tmp_path, [path])
    assert f"{path}:3" in str(e.value) and message in str(e.value)


def test_missing_fields_broken_json_and_duplicates_are_errors(tmp_path):
    rv.export_review([report("m", n=3)], tmp_path, n=3, seed=0)
    rows = read_jsonl(tmp_path / "review.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"item_id": rows[0]["item_id"], "clarity": 3}) + "\n")
    with pytest.raises(LmforgeError, match=r"bad.jsonl:1: missing field\(s\) relevance"):
        rv.import_reviews(tmp_path, [bad])
    bad.write_text("{not json\n")
    with pytest.raises(LmforgeError, match="bad.jsonl:1: not valid JSON"):
        rv.import_reviews(tmp_path, [bad])
    line = json.dumps({**rows[0], "reviewer": "x", "clarity": 1, "relevance": 1, "tone": 1,
                       "within_bounds": "no"})
    bad.write_text(line + "\n" + line + "\n")
    with pytest.raises(LmforgeError, match="bad.jsonl:2: reviewer 'x' already rated"):
        rv.import_reviews(tmp_path, [bad])
    with pytest.raises(LmforgeError, match="no review key"):
        rv.import_reviews(tmp_path / "elsewhere", [bad])


def test_cohen_kappa_by_hand_and_against_sklearn():
    # Unweighted: p_o = 3/4, p_e = .5*.25 + .5*.75 = .5, kappa = (.75 - .5) / .5 = .5
    assert rv.cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0], [0, 1]) == pytest.approx(0.5)
    # Quadratic: sum(wO) = 1/3, sum(wE) = 5/3 (marginals 1/3,1/3,1/3 and 1/3,0,2/3) -> 0.8;
    # categories 4 and 5, never used, change nothing.
    assert rv.cohen_kappa([1, 2, 3], [1, 3, 3], [1, 2, 3, 4, 5], "quadratic") == \
        pytest.approx(0.8)
    metrics = pytest.importorskip("sklearn.metrics")
    x = [1, 2, 3, 4, 5, 3, 2, 1, 4, 4, 5, 2]
    y = [1, 3, 3, 5, 5, 2, 2, 2, 4, 3, 4, 1]
    for weights in (None, "linear", "quadratic"):
        assert rv.cohen_kappa(x, y, [1, 2, 3, 4, 5], weights) == pytest.approx(
            metrics.cohen_kappa_score(x, y, labels=[1, 2, 3, 4, 5], weights=weights))


def test_krippendorff_alpha_matches_the_published_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the 4 coders x 12
    # units example with missing values: nominal .743, ordinal .815, interval .849.
    n = None
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
              [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
              [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
              [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]]
    units = [[v for v in unit if v is not None] for unit in zip(*coders)]
    assert rv.krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert rv.krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert rv.krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)
    assert rv.krippendorff_alpha([[3, 3], [3, 3]]) is None
