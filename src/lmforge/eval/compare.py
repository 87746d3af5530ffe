"""Compare two evaluation reports metric by metric, with confidence intervals and p-values.

For each task and metric both reports hold, the delta is b - a. Its uncertainty comes from the
per-item scores (`items[*].scores`):
- paired (the default when items share an `index`, and prompts agree where both record one):
  a paired bootstrap over the shared items for the 95% interval (Efron & Tibshirani 1993,
  percentile method) and a paired sign-flip permutation test for the p-value (the sign of each
  item's difference is exchangeable under "no difference"; as in Dror et al. 2018, "The
  Hitchhiker's Guide to Testing Statistical Significance in NLP");
- unpaired (different items): independent bootstrap of each report's items for the interval
  and a permutation test of the pooled items for the p-value; the row says so.
`significant` means the interval excludes 0.

The per-item statistic is the mean of `scores[metric]`, weighted by `weights[metric]` where an
item carries one (e.g. the number of instructions of an IFEval prompt, so the mean is the
instruction-level micro-average). When that statistic is not how the report computed the
metric (perplexity from pooled log-likelihoods, say), the row notes that the interval is for
the per-item mean.
"""

from __future__ import annotations

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.eval.review import report_label

# Settings that change scores, so reports that differ in them are not comparable.
SCORE_SETTINGS = ("add_bos", "limit", "style", "max_new_tokens", "temperature", "top_p",
                  "top_k")
TASK_SETTINGS = ("num_fewshot", "source")
_LOWER_IS_BETTER = ("perplexity", "bpb", "bits", "loss", "nll", "error")


def lower_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in _LOWER_IS_BETTER)


def setting_differences(a: dict, b: dict) -> list[str]:
    """Score-changing settings on which the reports disagree (unknown on one side: skipped)."""
    diffs = []
    sa, sb = a.get("settings", {}), b.get("settings", {})
    for key in SCORE_SETTINGS:
        if key in sa and key in sb and sa[key] != sb[key]:
            diffs.append(f"{key}: {sa[key]!r} vs {sb[key]!r}")
    for task in sorted(set(a.get("tasks", {})) & set(b.get("tasks", {}))):
        ta, tb = a["tasks"][task], b["tasks"][task]
        for key in TASK_SETTINGS:
            if key in ta and key in tb and ta[key] != tb[key]:
                diffs.append(f"{task}.{key}: {ta[key]!r} vs {tb[key]!r}")
    return diffs


def _item_table(entry: dict, metric: str) -> dict[int, tuple[float, float, str | None]]:
    """index -> (score, weight, prompt) for the items that score `metric`."""
    table = {}
    for item in entry.get("items", []):
        scores = item.get("scores", {})
        if "index" not in item or scores.get(metric) is None:
            continue
        weight = float(item.get("weights", {}).get(metric, 1.0))
        table[int(item["index"])] = (float(scores[metric]), weight, item.get("prompt"))
    return table


def _wmean(s: np.ndarray, w: np.ndarray, axis: int = -1) -> np.ndarray:
    return (s * w).sum(axis) / w.sum(axis)


def _paired(sa: np.ndarray, sb: np.ndarray, w: np.ndarray, iters: int,
            rng: np.random.Generator, alpha: float) -> tuple[float, float, float, float]:
    d = sb - sa
    observed = float(_wmean(d, w))
    pick = rng.integers(0, len(d), size=(iters, len(d)))
    boots = _wmean(d[pick], w[pick])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    signs = rng.choice(np.array([-1.0, 1.0]), size=(iters, len(d)))
    null = _wmean(signs * d, w)
    # |T*| >= |T| with a tolerance, so floating-point noise cannot make identical runs "rare"
    extreme = np.abs(null) >= abs(observed) - 1e-12
    p = (1 + int(extreme.sum())) / (iters + 1)
    return observed, float(lo), float(hi), p


def _unpaired(sa: np.ndarray, wa: np.ndarray, sb: np.ndarray, wb: np.ndarray, iters: int,
              rng: np.random.Generator, alpha: float) -> tuple[float, float, float, float]:
    observed = float(_wmean(sb, wb) - _wmean(sa, wa))
    pa = rng.integers(0, len(sa), size=(iters, len(sa)))
    pb = rng.integers(0, len(sb), size=(iters, len(sb)))
    boots = _wmean(sb[pb], wb[pb]) - _wmean(sa[pa], wa[pa])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    pooled_s, pooled_w = np.concatenate([sa, sb]), np.concatenate([wa, wb])
    perms = np.argsort(rng.random((iters, len(pooled_s))), axis=1)
    ga, gb = perms[:, :len(sa)], perms[:, len(sa):]
    null = _wmean(pooled_s[gb], pooled_w[gb]) - _wmean(pooled_s[ga], pooled_w[ga])
    p = (1 + int((np.abs(null) >= abs(observed) - 1e-12).sum())) / (iters + 1)
    return observed, float(lo), float(hi), p


def _compare_metric(task: str, metric: str, ea: dict, eb: dict, iters: int,
                    rng: np.random.Generator, alpha: float) -> dict:
    ma, mb = ea["metrics"][metric], eb["metrics"][metric]
    row = {"task": task, "metric": metric, "a": ma.get("value"), "a_stderr": ma.get("stderr"),
           "b": mb.get("value"), "b_stderr": mb.get("stderr"), "delta": None,
           "ci_low": None, "ci_high": None, "p_value": None, "significant": None,
           "method": "none", "n_a": 0, "n_b": 0, "n_paired": 0,
           "higher_is_better": not lower_is_better(metric), "note": ""}
    if row["a"] is not None and row["b"] is not None:
        row["delta"] = float(row["b"]) - float(row["a"])
    ta, tb = _item_table(ea, metric), _item_table(eb, metric)
    row["n_a"], row["n_b"] = len(ta), len(tb)
    shared = sorted(set(ta) & set(tb))
    notes: list[str] = []
    same_items = all(ta[i][2] is None or tb[i][2] is None or ta[i][2] == tb[i][2]
                     for i in shared)
    if len(shared) >= 2 and same_items:
        sa = np.array([ta[i][0] for i in shared])
        sb = np.array([tb[i][0] for i in shared])
        w = np.array([ta[i][1] for i in shared])
        stat, lo, hi, p = _paired(sa, sb, w, iters, rng, alpha)
        row.update(method="paired bootstrap + sign-flip test", n_paired=len(shared))
        if len(shared) < max(len(ta), len(tb)):
            notes.append(f"paired on the {len(shared)} items both reports scored")
    elif len(ta) >= 2 and len(tb) >= 2:
        sa, wa = np.array([v[0] for v in ta.values()]), np.array([v[1] for v in ta.values()])
        sb, wb = np.array([v[0] for v in tb.values()]), np.array([v[1] for v in tb.values()])
        stat, lo, hi, p = _unpaired(sa, wa, sb, wb, iters, rng, alpha)
        row["method"] = "unpaired bootstrap + permutation test"
        notes.append("items differ (same index, different prompt): unpaired"
                     if shared and not same_items else "no shared items: unpaired")
    else:
        row["note"] = "too few per-item scores for an interval"
        return row
    row.update(ci_low=lo, ci_high=hi, p_value=p, significant=bool(lo > 0 or hi < 0))
    if row["delta"] is None:
        row["delta"] = stat
    elif abs(stat - row["delta"]) > 1e-6:
        notes.append(f"the interval is for the per-item mean over these items (delta "
                     f"{stat:+.4g}), not the reported values")
    row["note"] = "; ".join(notes)
    return row


def compare_reports(a: dict, b: dict, iters: int = 2000, seed: int = 0, alpha: float = 0.05,
                    force: bool = False) -> dict:
    """Deltas b - a for every task metric both reports hold, with intervals and p-values.

    Raises LmforgeError when the reports differ in a setting that changes scores (few-shot,
    add_bos, limit, ...) unless `force`; the comparison then lists the differences.
    """
    if iters < 100:
        raise LmforgeError(f"iters={iters} is too few for a bootstrap", hint="use 1000 or more")
    if not 0 < alpha < 1:
        raise LmforgeError(f"alpha must be in (0, 1), got {alpha}", hint="0.05 gives 95% CIs")
    diffs = setting_differences(a, b)
    if diffs and not force:
        raise LmforgeError("the reports were made with different settings that change scores: "
                           + "; ".join(diffs),
                           hint="re-run one evaluation with the other's settings, or force the "
                                "comparison (--force)")
    tasks_a, tasks_b = a.get("tasks", {}), b.get("tasks", {})
    common = sorted(set(tasks_a) & set(tasks_b))
    if not common:
        raise LmforgeError("the reports share no task",
                           hint=f"a has {sorted(tasks_a)}, b has {sorted(tasks_b)}")
    rng = np.random.default_rng(seed)
    rows = []
    for task in common:
        ea, eb = tasks_a[task], tasks_b[task]
        for metric in sorted(set(ea.get("metrics", {})) & set(eb.get("metrics", {}))):
            rows.append(_compare_metric(task, metric, ea, eb, iters, rng, alpha))
    return {
        "a": report_label(a, 0), "b": report_label(b, 1),
        "confidence": 1 - alpha, "iters": iters, "seed": seed,
        "forced": bool(diffs and force), "setting_differences": diffs,
        "only_in_a": sorted(set(tasks_a) - set(tasks_b)),
        "only_in_b": sorted(set(tasks_b) - set(tasks_a)),
        "rows": rows,
    }
