"""Source balancing (lmforge.curate.balance)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmforge.curate.balance import MixtureSettings, check_mixture_settings, plan_mixture
from lmforge.errors import LmforgeError


def _sizes(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"web": rng.integers(100, 1000, 6000),     # ~3.3M, the big one
            "books": rng.integers(1000, 5000, 250),   # ~0.75M
            "code": rng.integers(50, 500, 300)}       # ~0.08M, the small one


def _after(plan, sizes) -> dict[str, float]:
    return {s: float((sizes[s] * plan.repeats[s]).sum()) for s in sizes}


def test_natural_proportions_keep_everything_once():
    sizes = _sizes()
    plan = plan_mixture(sizes, MixtureSettings())
    for s, a in sizes.items():
        assert plan.repeats[s].shape == a.shape and plan.repeats[s].dtype == np.int64
        assert (plan.repeats[s] == 1).all()
    rep = plan.report
    assert rep["size_before"] == rep["size_after"] == sum(int(a.sum()) for a in sizes.values())
    web = rep["sources"]["web"]
    assert web["share_before"] == pytest.approx(web["share_after"])
    assert web["effective_repeat"] == 1.0 and web["documents_after"] == 6000


def test_weights_are_achieved_within_one_percent():
    sizes = _sizes()
    weights = {"web": 0.5, "books": 0.3, "code": 0.2}
    plan = plan_mixture(sizes, MixtureSettings(weights=weights))
    after = _after(plan, sizes)
    total = sum(after.values())
    for s, w in weights.items():
        assert after[s] / total == pytest.approx(w, rel=0.01)
        assert plan.report["sources"][s]["share_after"] == pytest.approx(after[s] / total)
    # The small source limits the mixture: it is repeated the most allowed (4x) ...
    code = plan.report["sources"]["code"]
    assert code["effective_repeat"] == pytest.approx(4.0, rel=0.01)
    assert (plan.repeats["code"] == 4).all()
    # ... and the big one is down-sampled to a subset of whole documents.
    assert set(np.unique(plan.repeats["web"])) == {0, 1}
    assert plan.report["target_weights"] == pytest.approx(weights)
    # Unnormalized weights mean the same thing.
    again = plan_mixture(sizes, MixtureSettings(weights={"web": 5, "books": 3, "code": 2}))
    assert all((again.repeats[s] == plan.repeats[s]).all() for s in sizes)


def test_total_is_reached_and_max_repeat_respected():
    sizes = _sizes()
    weights = {"web": 0.6, "books": 0.25, "code": 0.15}
    plan = plan_mixture(sizes, MixtureSettings(weights=weights, total=1_000_000,
                                               max_repeat=2.5))
    after = _after(plan, sizes)
    assert sum(after.values()) == pytest.approx(1_000_000, rel=0.01)
    code = plan.report["sources"]["code"]
    assert code["effective_repeat"] <= 2.5 + 0.01
    assert plan.repeats["code"].max() <= math.ceil(2.5)
    assert set(np.unique(plan.repeats["code"])) == {1, 2}  # whole copies, then a subset
    with pytest.raises(LmforgeError, match="repeat source 'code' more than 2.5") as e:
        plan_mixture(sizes, MixtureSettings(weights=weights, total=5_000_000, max_repeat=2.5))
    assert "largest total" in str(e.value)


def test_caps_are_respected():
    sizes = _sizes()
    weights = {"web": 0.5, "books": 0.3, "code": 0.2}
    plan = plan_mixture(sizes, MixtureSettings(weights=weights, caps={"web": 100_000}))
    after = _after(plan, sizes)
    assert 99_000 < after["web"] <= 100_000
    assert plan.report["sources"]["web"]["capped"] is True
    assert not plan.report["sources"]["books"]["capped"]
    # Uncapped sources keep their planned size; the capped one just holds less.
    free = plan_mixture(sizes, MixtureSettings(weights=weights))
    assert after["books"] == _after(free, sizes)["books"]


def test_temperature_flattens_toward_small_sources():
    sizes = _sizes()
    natural = {s: float(a.sum()) for s, a in sizes.items()}
    shares = {}
    for t in (1.0, 2.0, 5.0):
        plan = plan_mixture(sizes, MixtureSettings(temperature=t))
        after = _after(plan, sizes)
        shares[t] = {s: v / sum(after.values()) for s, v in after.items()}
        want = {s: v ** (1 / t) for s, v in natural.items()}
        for s in sizes:
            assert shares[t][s] == pytest.approx(want[s] / sum(want.values()), rel=0.01)
        assert max(plan.repeats[s].max() for s in sizes) <= 4
    assert shares[1.0]["code"] < shares[2.0]["code"] < shares[5.0]["code"]
    assert shares[1.0]["web"] > shares[2.0]["web"] > shares[5.0]["web"]


def test_documents_mode_counts_documents():
    sizes = {"a": np.full(900, 10), "b": np.full(100, 1000)}
    plan = plan_mixture(sizes, MixtureSettings(by="documents", weights={"a": 1, "b": 1}))
    assert plan.repeats["a"].sum() == plan.repeats["b"].sum() == 400  # b 4x, a down to 400


def test_seeded_and_deterministic():
    sizes = _sizes()
    s = MixtureSettings(weights={"web": 0.3, "books": 0.3, "code": 0.4}, seed=7)
    a, b = plan_mixture(sizes, s), plan_mixture(sizes, s)
    assert all((a.repeats[k] == b.repeats[k]).all() for k in sizes)
    assert a.report == b.report
    c = plan_mixture(sizes, MixtureSettings(weights=s.weights, seed=8))
    assert not (a.repeats["web"] == c.repeats["web"]).all()
    # A source's plan does not depend on which other sources are present.
    weights = {"web": 0.3, "books": 0.3}
    sub = plan_mixture({k: sizes[k] for k in weights},
                       MixtureSettings(weights=weights, total=600_000, seed=7))
    full = plan_mixture(sizes, MixtureSettings(weights={**weights, "code": 0.05},
                                               total=650_000, seed=7))  # web: 300k in both
    assert (sub.repeats["web"] == full.repeats["web"]).all()


def test_plan_errors():
    sizes = _sizes()
    with pytest.raises(LmforgeError, match="unknown source.*wiki") as e:
        plan_mixture(sizes, MixtureSettings(weights={"web": 1, "books": 1, "code": 1,
                                                     "wiki": 1}))
    assert "web, books, code" in str(e.value)
    with pytest.raises(LmforgeError, match="'empty' has weight 0.5 but no documents"):
        plan_mixture({**sizes, "empty": np.zeros(0)},
                     MixtureSettings(weights={"web": 1, "books": 1, "code": 1, "empty": 0.5}))
    # Weight 0 for an empty source is fine, and natural proportions skip it.
    plan = plan_mixture({**sizes, "empty": np.zeros(0)},
                        MixtureSettings(weights={"web": 1, "books": 1, "code": 1, "empty": 0}))
    assert plan.repeats["empty"].shape == (0,)
    with pytest.raises(LmforgeError, match="not negative"):
        plan_mixture({"web": np.array([1, -2])}, MixtureSettings())


def test_check_mixture_settings():
    src = ["web", "books"]
    got = check_mixture_settings({"by": "characters", "weights": {"web": 2, "books": 1},
                                  "caps": {"web": 10}, "max_repeat": 3, "total": 99,
                                  "seed": 4}, "r", src)
    assert got == MixtureSettings("characters", {"web": 2, "books": 1}, {"web": 10}, 3.0, 1.0,
                                  99, 4)
    assert check_mixture_settings({}, "r", src) == MixtureSettings()
    bad = [({"by": "bytes"}, "by must be"),
           ({"weights": {"web": 1, "wiki": 1}}, "unknown source.*wiki"),
           ({"weights": {"web": 1}}, "leave out source.*books"),
           ({"weights": {"web": 0, "books": 0}}, "add up to 0"),
           ({"weights": {"web": -1, "books": 1}}, "non-negative"),
           ({"weights": [1, 2]}, "table"),
           ({"caps": {"web": 1.5}}, "non-negative integer"),
           ({"max_repeat": 0.5}, "at least 1"),
           ({"temperature": 0}, "positive"),
           ({"weights": {"web": 1, "books": 1}, "temperature": 2}, "temperature only"),
           ({"total": 0}, "total"),
           ({"seed": "x"}, "seed"),
           ({"weight": {}}, "unknown setting")]
    for table, message in bad:
        with pytest.raises(LmforgeError, match=message) as e:
            check_mixture_settings(table, "recipe.toml [balance]", src)
        assert "recipe.toml [balance]" in str(e.value)
