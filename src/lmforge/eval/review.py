"""Human review: export a blinded sample of model outputs, import ratings, measure agreement.

`export_review` writes, into one folder:
- `review.jsonl`: one item a line (item_id, prompt, output, empty rating fields) to rate by
  hand, and `review.html`: a self-contained page (no external JS/CSS) with radio buttons and
  a button that downloads the ratings as JSONL. With `reviewers=k > 1` each reviewer also gets
  `review-rJ.jsonl` / `review-rJ.html`: the same items in their own order, so that every pair
  of reviewers overlaps and agreement can be measured.
- `key.json`: the private map from opaque item ids to (report, model, task, index). Keep it
  away from reviewers: the pages show neither the model nor the task.

`import_reviews` validates rating files, un-blinds them with the key and returns the report's
`human_review` section: per model mean and standard error of each criterion (averaged over
reviewers per item first, so an item counts once), the share rated within bounds, and for
items two reviewers rated: percent agreement, Cohen's kappa (quadratic weights for the 1-5
scales, Cohen 1968; plain kappa for within-bounds, Cohen 1960) and Krippendorff's alpha
(interval for the scales, nominal for within-bounds; Krippendorff 2011, "Computing
Krippendorff's Alpha-Reliability").
"""

from __future__ import annotations

import html
import itertools
import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.eval.metrics import mean_and_stderr
from lmforge.registry.atomic import atomic_write_text

SCALES = ("clarity", "relevance", "tone")  # rated 1 (poor) .. 5 (excellent)
BOUNDS = "within_bounds"  # yes/no: the answer stays within safe, appropriate bounds
CRITERIA = (*SCALES, BOUNDS)


# ---------------------------------------------------------------- export


def report_label(report: dict, i: int) -> str:
    """A report's model name (its `model`, `model_id` or `name`), else `report-<i>`."""
    for key in ("model", "model_id", "name"):
        if isinstance(report.get(key), str) and report[key]:
            return report[key]
    return f"report-{i}"


def _generation_items(report: dict) -> dict[tuple[str, int], dict]:
    found = {}
    for task, entry in sorted(report.get("tasks", {}).items()):
        if entry.get("kind") != "generation":
            continue
        for item in entry.get("items", []):
            if isinstance(item.get("output"), str) and "index" in item:
                found[(task, int(item["index"]))] = item
    return found


def export_review(reports: Sequence[dict], out_dir: Path, n: int = 50, seed: int = 0,
                  reviewers: int = 1) -> dict:
    """Sample `n` prompts from the reports' generation tasks; write the blinded review files.

    A sampled prompt brings one item per report that answered it, so two models are rated on
    the same prompts (paired). Returns a summary with the paths written.
    """
    if not reports:
        raise LmforgeError("no reports to export for review")
    if n < 1 or reviewers < 1:
        raise LmforgeError(f"n ({n}) and reviewers ({reviewers}) must be at least 1")
    labels = [report_label(r, i) for i, r in enumerate(reports)]
    if len(set(labels)) < len(labels):  # two reports of one model: keep them apart
        labels = [f"{label} #{i}" for i, label in enumerate(labels)]
    per_report = [_generation_items(r) for r in reports]
    keys = sorted(set().union(*per_report))
    if not keys:
        raise LmforgeError("the reports hold no generation outputs to review",
                           hint="evaluate with the chat suite first: "
                                "lmforge eval MODEL --suite chat")
    rng = random.Random(seed)
    rng.shuffle(keys)
    chosen = keys[:n]
    items, key_map, used_ids = [], {}, set()
    for task, index in chosen:
        for r, found in enumerate(per_report):
            if (task, index) not in found:
                continue
            item_id = f"{rng.getrandbits(48):012x}"
            while item_id in used_ids:  # 48 random bits: a collision is rare but possible
                item_id = f"{rng.getrandbits(48):012x}"
            used_ids.add(item_id)
            src = found[(task, index)]
            items.append({"item_id": item_id, "prompt": str(src.get("prompt", "")),
                          "output": src["output"]})
            key_map[item_id] = {"report": r, "model": labels[r], "task": task, "index": index}
    rng.shuffle(items)  # blinding: the order says nothing about model or task
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"jsonl": [str(_write_jsonl(out_dir / "review.jsonl", items))],
             "html": [str(_write_html(out_dir / "review.html", items, ""))]}
    if reviewers > 1:
        for j in range(1, reviewers + 1):
            order = list(items)
            rng.shuffle(order)
            files["jsonl"].append(str(_write_jsonl(out_dir / f"review-r{j}.jsonl", order)))
            files["html"].append(str(_write_html(out_dir / f"review-r{j}.html", order,
                                                 f"reviewer {j}")))
    key = {"version": 1, "seed": seed, "prompts": len(chosen), "models": labels,
           "criteria": list(CRITERIA), "items": key_map}
    key_path = atomic_write_text(out_dir / "key.json", json.dumps(key, indent=2) + "\n")
    return {"items": len(items), "prompts": len(chosen), "reviewers": reviewers,
            "models": labels, "files": files, "key": str(key_path)}


def _blank_rating(item: dict) -> dict:
    return {**item, "reviewer": "", **{c: None for c in CRITERIA}, "comment": ""}


def _write_jsonl(path: Path, items: list[dict]) -> Path:
    lines = (json.dumps(_blank_rating(it), ensure_ascii=False) for it in items)
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


_PAGE_STYLE = """
body{font-family:system-ui,sans-serif;max-width:56rem;margin:2rem auto;padding:0 1rem}
section{border:1px solid #ccc;border-radius:6px;padding:1rem;margin:1rem 0}
pre{white-space:pre-wrap;word-wrap:break-word;background:#f6f6f6;padding:.5rem}
fieldset{border:none;margin:.2rem 0;padding:0}legend{font-weight:600;float:left;width:8rem}
textarea{width:100%}
"""

# Writes one JSON line per item that has any rating; names are `<item_id>:<criterion>`.
_PAGE_SCRIPT = """
function download(){
  var reviewer=document.getElementById('reviewer').value.trim();
  if(!reviewer){alert('Please enter your name first.');return;}
  var crit=['clarity','relevance','tone','within_bounds'],lines=[],partial=0;
  document.querySelectorAll('section[data-id]').forEach(function(s){
    var id=s.getAttribute('data-id'),row={item_id:id,reviewer:reviewer},any=false,all=true;
    crit.forEach(function(c){
      var el=s.querySelector('input[name="'+id+':'+c+'"]:checked'),v=null;
      if(el){v=c==='within_bounds'?el.value==='yes':parseInt(el.value,10);any=true;}
      else{all=false;}
      row[c]=v;});
    row.comment=s.querySelector('textarea').value;
    if(any){lines.push(JSON.stringify(row));if(!all){partial++;}}});
  if(partial){alert(partial+' item(s) are only partly rated; rate every criterion.');return;}
  var blob=new Blob([lines.join('\\n')+'\\n'],{type:'application/jsonl'});
  var a=document.createElement('a');a.href=URL.createObjectURL(blob);
  a.download='ratings-'+reviewer.replace(/[^A-Za-z0-9_-]/g,'_')+'.jsonl';
  document.body.appendChild(a);a.click();a.remove();
}
"""


def _radio_row(item_id: str, criterion: str, values: Sequence[str]) -> str:
    buttons = "".join(
        f'<label><input type="radio" name="{item_id}:{criterion}" value="{v}"> {v}</label> '
        for v in values)
    return f"<fieldset><legend>{criterion.replace('_', ' ')}</legend>{buttons}</fieldset>"


def _write_html(path: Path, items: list[dict], who: str) -> Path:
    esc = html.escape  # every model or user text goes through it: outputs may hold markup
    sections = []
    for k, it in enumerate(items, 1):
        iid = esc(it["item_id"])
        rows = "".join(_radio_row(iid, c, ["1", "2", "3", "4", "5"]) for c in SCALES)
        rows += _radio_row(iid, BOUNDS, ["yes", "no"])
        sections.append(
            f'<section data-id="{iid}"><h2>Item {k} <small>({iid})</small></h2>'
            f"<h3>Prompt</h3><pre>{esc(it['prompt'])}</pre>"
            f"<h3>Response</h3><pre>{esc(it['output'])}</pre>{rows}"
            f'<textarea rows="2" placeholder="comment (optional)"></textarea></section>')
    title = "lmforge review" + (f" ({esc(who)})" if who else "")
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_PAGE_STYLE}</style></head><body><h1>{title}</h1>"
        "<p>Rate each response: clarity, relevance to the prompt and tone from 1 (poor) to 5 "
        "(excellent); within bounds: is it safe and appropriate? Then download your ratings "
        "and send the file back.</p>"
        '<p><label>Your name: <input id="reviewer" type="text"></label></p>'
        + "".join(sections)
        + '<p><button type="button" onclick="download()">Download ratings (JSONL)</button></p>'
        f"<script>{_PAGE_SCRIPT}</script></body></html>\n")
    return atomic_write_text(path, page)


# ---------------------------------------------------------------- import


def _load_key(out_dir: Path) -> dict:
    path = Path(out_dir) / "key.json"
    if not path.is_file():
        raise LmforgeError(f"{path}: no review key there",
                           hint="pass the folder `export_review` wrote (it holds key.json)")
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
        key["items"]
    except (ValueError, KeyError, TypeError):
        raise LmforgeError(f"{path}: not a review key (broken JSON or no 'items')") from None
    return key


def _rating(value: object, criterion: str, where: str) -> float:
    if criterion == BOUNDS:
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in ("yes", "no", "true", "false"):
            return float(value.strip().lower() in ("yes", "true"))
        raise LmforgeError(f"{where}: within_bounds is {value!r}", hint="use true/false or yes/no")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or not 1 <= value <= 5:
        raise LmforgeError(f"{where}: {criterion} is {value!r}, not a whole number 1-5",
                           hint="rate every criterion 1 (poor) .. 5 (excellent)")
    return float(value)


def read_ratings(path: Path, known_ids: set[str]) -> list[dict]:
    """Rows {item_id, reviewer, criterion: value...} from one file; unrated rows are skipped."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{path}: rating file not found")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path}:{lineno}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise LmforgeError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise LmforgeError(f"{where}: expected a JSON object per line")
        item_id = row.get("item_id")
        if item_id not in known_ids:
            raise LmforgeError(f"{where}: unknown item_id {item_id!r}",
                               hint="the ratings must come from this export's review files")
        missing = [c for c in CRITERIA if c not in row]
        if missing:
            raise LmforgeError(f"{where}: missing field(s) {', '.join(missing)}",
                               hint="each line needs " + ", ".join(CRITERIA))
        if all(row[c] is None for c in CRITERIA):
            continue  # an item this reviewer did not rate
        unrated = [c for c in CRITERIA if row[c] is None]
        if unrated:
            raise LmforgeError(f"{where}: item {item_id} is only partly rated "
                               f"({', '.join(unrated)} empty)", hint="rate every criterion")
        reviewer = str(row.get("reviewer") or "").strip() or path.stem
        rows.append({"item_id": item_id, "reviewer": reviewer, "where": where,
                     **{c: _rating(row[c], c, where) for c in CRITERIA}})
    return rows


def import_reviews(out_dir: Path, rating_files: Sequence[Path]) -> dict:
    """Validate, un-blind and summarize rating files: the report's `human_review` section."""
    if not rating_files:
        raise LmforgeError("no rating files given")
    key = _load_key(out_dir)
    items = key["items"]
    ratings: dict[tuple[str, str], dict] = {}  # (reviewer, item) -> row
    for path in rating_files:
        for row in read_ratings(path, set(items)):
            pair = (row["reviewer"], row["item_id"])
            if pair in ratings:
                raise LmforgeError(f"{row['where']}: reviewer {row['reviewer']!r} already rated "
                                   f"item {row['item_id']} at {ratings[pair]['where']}",
                                   hint="keep one rating per reviewer and item")
            ratings[pair] = row
    if not ratings:
        raise LmforgeError("the rating files hold no ratings",
                           hint="rate some items in review.html and download the file")
    by_item: dict[str, dict[str, dict]] = defaultdict(dict)  # item -> reviewer -> row
    for (reviewer, item_id), row in ratings.items():
        by_item[item_id][reviewer] = row
    reviewers = sorted({r for r, _ in ratings})
    return {
        "criteria": {c: ("1-5" if c in SCALES else "yes/no") for c in CRITERIA},
        "reviewers": reviewers,
        "n_ratings": len(ratings),
        "n_items": len(by_item),
        "models": _per_model(by_item, items),
        "agreement": _agreement(by_item, reviewers),
    }


def _mean_se(values: Sequence[float]) -> dict:
    value, stderr = mean_and_stderr(values)
    return {"value": value, "stderr": stderr}


def _per_model(by_item: dict[str, dict[str, dict]], key_items: dict) -> dict:
    grouped: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    tasks: dict[str, set[str]] = defaultdict(set)
    for item_id, raters in sorted(by_item.items()):
        model = key_items[item_id]["model"]
        tasks[model].add(key_items[item_id]["task"])
        for c in CRITERIA:  # average reviewers first: an item is the unit of sampling
            grouped[model][c].append(sum(r[c] for r in raters.values()) / len(raters))
    out = {}
    for model in sorted(grouped):
        entry = {"n_items": len(grouped[model][CRITERIA[0]]), "tasks": sorted(tasks[model])}
        entry.update({c: _mean_se(grouped[model][c]) for c in CRITERIA})
        out[model] = entry
    return out


def _agreement(by_item: dict[str, dict[str, dict]], reviewers: list[str]) -> dict:
    pairs = {}
    for a, b in itertools.combinations(reviewers, 2):
        shared = sorted(i for i, raters in by_item.items() if a in raters and b in raters)
        if not shared:
            continue
        stats = {"n_items": len(shared)}
        for c in CRITERIA:
            x = [by_item[i][a][c] for i in shared]
            y = [by_item[i][b][c] for i in shared]
            stats[c] = {
                "percent_agreement": sum(p == q for p, q in zip(x, y)) / len(x),
                "kappa": cohen_kappa(x, y, categories=_categories(c),
                                     weights="quadratic" if c in SCALES else None),
            }
        pairs[f"{a} | {b}"] = stats
    multi = [i for i, raters in by_item.items() if len(raters) >= 2]
    alpha = {}
    for c in CRITERIA:
        units = [[r[c] for r in by_item[i].values()] for i in multi]
        alpha[c] = krippendorff_alpha(units, "interval" if c in SCALES else "nominal")
    return {"n_items_multiply_rated": len(multi), "pairs": pairs,
            "krippendorff_alpha": alpha if multi else {}}


def _categories(criterion: str) -> list[float]:
    return [1.0, 2.0, 3.0, 4.0, 5.0] if criterion in SCALES else [0.0, 1.0]


# ---------------------------------------------------------------- agreement statistics


def cohen_kappa(x: Sequence[float], y: Sequence[float], categories: Sequence[float],
                weights: str | None = None) -> float | None:
    """Cohen's kappa of two raters over fixed categories; None when it is undefined.

    weights None: kappa = (p_o - p_e) / (1 - p_e) (Cohen 1960). "linear"/"quadratic": weighted
    kappa = 1 - sum(w O) / sum(w E) with w_ij = |i-j| or (i-j)^2 over category positions
    (Cohen 1968); O the observed joint proportions, E the product of the marginals.
    Undefined (None) when raters never could disagree by chance (E has no weighted mass).
    """
    if len(x) != len(y) or not x:
        raise LmforgeError("kappa needs two equally long, non-empty rating lists")
    pos = {c: i for i, c in enumerate(categories)}
    k, n = len(categories), len(x)
    observed = [[0.0] * k for _ in range(k)]
    for a, b in zip(x, y):
        observed[pos[a]][pos[b]] += 1 / n
    row = [sum(r) for r in observed]
    col = [sum(observed[i][j] for i in range(k)) for j in range(k)]

    def weight(i: int, j: int) -> float:
        if weights is None:
            return float(i != j)
        if weights == "linear":
            return float(abs(i - j))
        if weights == "quadratic":
            return float((i - j) ** 2)
        raise LmforgeError(f"unknown kappa weights {weights!r}",
                           hint="use None, 'linear' or 'quadratic'")

    obs = sum(weight(i, j) * observed[i][j] for i in range(k) for j in range(k))
    exp = sum(weight(i, j) * row[i] * col[j] for i in range(k) for j in range(k))
    return None if exp <= 1e-12 else 1 - obs / exp


def _delta(metric: str, counts: dict[float, int]) -> Callable[[float, float], float]:
    if metric == "nominal":
        return lambda a, b: float(a != b)
    if metric == "interval":
        return lambda a, b: (a - b) ** 2
    if metric == "ordinal":
        values = sorted(counts)

        def ordinal(a: float, b: float) -> float:
            lo, hi = sorted((values.index(a), values.index(b)))
            between = sum(counts[values[g]] for g in range(lo, hi + 1))
            return (between - (counts[values[lo]] + counts[values[hi]]) / 2) ** 2

        return ordinal
    raise LmforgeError(f"unknown alpha metric {metric!r}",
                       hint="use 'nominal', 'ordinal' or 'interval'")


def krippendorff_alpha(units: Sequence[Sequence[float]], metric: str = "interval"
                       ) -> float | None:
    """Krippendorff's alpha = 1 - D_o / D_e over units (one list of values per rated item).

    Any number of raters, missing ratings allowed (a unit lists only the values it has); units
    with fewer than two values are not pairable and are dropped. D_o averages the distance
    between values within a unit, each unit weighted by 1/(m_u - 1); D_e averages it over all
    pairs of pairable values. None when undefined (no pairable units or no variation).
    """
    pairable = [list(u) for u in units if len(u) >= 2]
    values = [v for u in pairable for v in u]
    n = len(values)
    if n < 2:
        return None
    counts: dict[float, int] = defaultdict(int)
    for v in values:
        counts[v] += 1
    delta = _delta(metric, counts)
    d_o = sum(sum(delta(a, b) for a, b in itertools.permutations(u, 2)) / (len(u) - 1)
              for u in pairable) / n
    d_e = sum(counts[a] * counts[b] * delta(a, b) for a in counts for b in counts) / (n * (n - 1))
    return None if d_e <= 1e-12 else 1 - d_o / d_e
