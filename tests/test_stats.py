"""Tests of lossgeom.behaviour.stats against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lossgeom.behaviour.stats import (
    accuracy_table,
    bootstrap_ci,
    cochran_summary,
    cochrans_q,
    holm,
    mcnemar_exact,
    pairwise_tests,
)


# ---------------------------------------------------------------- McNemar
@pytest.mark.parametrize(
    "b, c, exact, midp",
    [
        # n=6, k=1: P(X<=1) = (1+6)/64; mid-p = 2*P(X<1) + P(X=1) = (2+6)/64
        (1, 5, 14 / 64, 8 / 64),
        # n=3, k=0: 2*(1/8); mid-p = P(X=0) = 1/8
        (0, 3, 0.25, 0.125),
        # n=7, k=3: P(X<=3) = 64/128 -> exact capped at 1; mid = 2*29/128 + 35/128
        (3, 4, 1.0, 93 / 128),
        # b == c: both variants are exactly 1
        (2, 2, 1.0, 1.0),
        # n=10, k=0: 2/1024
        (0, 10, 2 / 1024, 1 / 1024),
        # no discordant items
        (0, 0, 1.0, 1.0),
    ],
)
def test_mcnemar_hand_values(b, c, exact, midp):
    assert mcnemar_exact(b, c) == pytest.approx(exact, rel=1e-12)
    assert mcnemar_exact(c, b) == pytest.approx(exact, rel=1e-12)  # symmetric
    assert mcnemar_exact(b, c, mid_p=True) == pytest.approx(midp, rel=1e-12)


def test_mcnemar_tiny_pvalue_is_accurate():
    # 0 vs 60 discordant: 2 * 2^-60, must not underflow to 0 or lose precision
    assert mcnemar_exact(0, 60) == pytest.approx(2.0 * 2.0**-60, rel=1e-10)


@pytest.mark.parametrize("b, c", [(-1, 3), (1.5, 2)])
def test_mcnemar_rejects_bad_counts(b, c):
    with pytest.raises(ValueError):
        mcnemar_exact(b, c)


# ---------------------------------------------------------------- Holm
def test_holm_hand_example():
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> running max .02 .03 .06 .06
    got = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02])


def test_holm_cap_monotone_and_empty():
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    p = np.random.default_rng(0).uniform(size=20)
    adj = holm(p)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj >= p) and np.all(adj <= 1)
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError):
        holm([0.1, np.nan])


# ---------------------------------------------------------------- Cochran's Q
def test_cochrans_q_hand_example():
    x = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0], [1, 1, 0]])
    # T = (5,3,1), N = 9, sum R^2 = 19: Q = 2*(3*35 - 81)/(27 - 19) = 6; chi2(2).sf(6) = e^-3
    q, df, p = cochrans_q(x)
    assert q == pytest.approx(6.0)
    assert df == 2
    assert p == pytest.approx(math.exp(-3.0))


def test_cochrans_q_two_models_is_mcnemar_chi2():
    rng = np.random.default_rng(1)
    x = (rng.uniform(size=(200, 2)) < [0.6, 0.7]).astype(int)
    b = int(np.sum((x[:, 0] == 1) & (x[:, 1] == 0)))
    c = int(np.sum((x[:, 0] == 0) & (x[:, 1] == 1)))
    q, df, _ = cochrans_q(x)
    assert df == 1
    assert q == pytest.approx((b - c) ** 2 / (b + c))


def test_cochrans_q_no_discordance():
    x = np.array([[1, 1, 1], [0, 0, 0]])
    assert cochrans_q(x) == (0.0, 2, 1.0)


# ---------------------------------------------------------------- bootstrap
def test_bootstrap_ci_contains_mean_and_is_seeded():
    x = np.random.default_rng(2).uniform(size=500) < 0.8
    low, high = bootstrap_ci(x, n_boot=4000, seed=7)
    assert low < x.mean() < high
    assert (low, high) == bootstrap_ci(x, n_boot=4000, seed=7)
    assert (low, high) != bootstrap_ci(x, n_boot=4000, seed=8)
    # roughly the normal-approximation width 2*1.96*sqrt(p(1-p)/n)
    assert high - low == pytest.approx(2 * 1.96 * math.sqrt(0.8 * 0.2 / 500), rel=0.15)
    low90, high90 = bootstrap_ci(x, n_boot=4000, confidence=0.9, seed=7)
    assert low <= low90 and high90 <= high


def test_bootstrap_ci_matches_explicit_resampling():
    # the binomial shortcut must give the same distribution as resampling items
    x = np.array([1] * 30 + [0] * 20)
    rng = np.random.default_rng(3)
    explicit = x[rng.integers(0, x.size, size=(20000, x.size))].mean(axis=1)
    low, high = bootstrap_ci(x, n_boot=20000, seed=4)
    lo_e, hi_e = np.quantile(explicit, [0.025, 0.975])
    assert abs(low - lo_e) <= 0.021 and abs(high - hi_e) <= 0.021  # one item = 0.02


def test_bootstrap_ci_degenerate_and_bad_input():
    assert bootstrap_ci(np.ones(10), n_boot=100) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([0, 1, 2]))
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]))


# ---------------------------------------------------------------- DataFrame level
@pytest.fixture
def frame():
    # model A right on items 0-7, B right on 0-5 and 8, C right on 0-1
    idx = pd.Index([f"q{i}" for i in range(10)], name="item")
    a = [1] * 8 + [0, 0]
    b = [1] * 6 + [0, 0, 1, 0]
    c = [1, 1] + [0] * 8
    return pd.DataFrame({"A": a, "B": b, "C": c}, index=idx)


def test_accuracy_table(frame):
    t = accuracy_table(frame, n_boot=500, seed=0)
    assert list(t.index) == ["A", "B", "C"]
    assert list(t.columns) == ["n", "accuracy", "ci_low", "ci_high", "ci_method"]
    assert (t["n"] == 10).all() and (t["ci_method"] == "wilson").all()
    np.testing.assert_allclose(t["accuracy"], [0.8, 0.7, 0.2])
    assert (t["ci_low"] <= t["accuracy"]).all() and (t["accuracy"] <= t["ci_high"]).all()


def test_pairwise_tests(frame):
    pw = pairwise_tests(frame)
    assert list(zip(pw.model_a, pw.model_b)) == [("A", "B"), ("A", "C"), ("B", "C")]
    ab = pw.iloc[0]
    # A right & B wrong: items 6, 7; A wrong & B right: item 8
    assert (ab.n10, ab.n01, ab.n11, ab.n00) == (2, 1, 6, 1)
    assert ab.acc_diff == pytest.approx(0.1)
    assert ab.p == pytest.approx(mcnemar_exact(2, 1))
    np.testing.assert_allclose(pw["acc_diff"], (pw["n10"] - pw["n01"]) / pw["n"])
    np.testing.assert_allclose(pw["acc_diff"], pw["acc_a"] - pw["acc_b"])
    np.testing.assert_allclose(pw["p_holm"], holm(pw["p"]))
    mid = pairwise_tests(frame, mid_p=True)
    assert (mid["p"] <= pw["p"]).all()
    assert pairwise_tests(frame[["A"]]).empty


def test_cochran_summary(frame):
    s = cochran_summary(frame)
    q, df, p = cochrans_q(frame.to_numpy())
    assert s["Q"] == pytest.approx(q) and s["df"] == df == 2 and s["p"] == pytest.approx(p)
    assert s["n_items"] == 10 and s["models"] == ["A", "B", "C"]


@pytest.mark.parametrize("func", [accuracy_table, pairwise_tests, cochran_summary])
def test_validation_names_the_column(frame, func):
    bad = frame.astype(float)
    bad.loc["q3", "B"] = np.nan
    with pytest.raises(ValueError, match="'B'"):
        func(bad)
    bad = frame.copy()
    bad.loc["q3", "C"] = 2
    with pytest.raises(ValueError, match="'C'"):
        func(bad)


@pytest.mark.parametrize("method, scipy_method", [("wilson", "wilson"), ("clopper_pearson", "exact")])
@pytest.mark.parametrize("s, n", [(0, 30), (1, 30), (15, 30), (30, 30), (3, 200), (187, 200), (0, 1)])
def test_small_sample_intervals_match_scipy(method, scipy_method, s, n):
    """Wilson and Clopper-Pearson against scipy's binomtest; 0/30 (AIME-sized) gets a real upper end."""
    from scipy.stats import binomtest

    from lossgeom.behaviour.stats import clopper_pearson_ci, wilson_ci

    ours = (wilson_ci if method == "wilson" else clopper_pearson_ci)(s, n, 0.95)
    ref = binomtest(s, n).proportion_ci(confidence_level=0.95, method=scipy_method)
    assert ours == pytest.approx((ref.low, ref.high), abs=1e-9)
    if s == 0:
        assert ours[0] == 0.0 and ours[1] > 0.05


def test_accuracy_table_ci_choice_and_zero_of_thirty():
    frame = pd.DataFrame({"none_right": [0] * 30})
    boot = accuracy_table(frame, n_boot=500, ci="bootstrap").iloc[0]
    assert (boot.ci_low, boot.ci_high) == (0.0, 0.0)  # why the bootstrap is not the default
    for ci in ("wilson", "clopper_pearson"):
        row = accuracy_table(frame, ci=ci).iloc[0]
        assert row.ci_low == 0.0 and row.ci_high > 0.08 and row.ci_method == ci
    with pytest.raises(ValueError, match="unknown CI method"):
        accuracy_table(frame, ci="normal")
