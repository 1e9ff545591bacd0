"""Tests of lossgeom.behaviour.estimators and lossgeom.behaviour.paired against independent references.

What is checked against what:

* ``pass_at_k``: brute-force enumeration of every k-subset of n samples (itertools.combinations),
  every (n, c, k) with n <= 10, scalar and broadcast array inputs; its unbiasedness by exact
  expectation over c ~ Binomial(n, q) (scipy.stats.binom.pmf) against 1 - (1 - q)^k; input errors.
* ``per_item_pass_at_k``: first-seen id order, n and c counted by hand, pass@k by brute force.
* ``per_item_log_ratio``, ``kl_sequence``, ``kl_token``: a plain per-id loop in numpy on random data,
  both signs; a seeded Monte Carlo check that the per-sequence estimator of KL(P || Q) (and, with
  sign -1, of KL(Q || P)) lies within 5 standard errors of the exact sum P log(P / Q) of two explicit
  discrete distributions; NaN rejection.
* ``sign_test``: the exact two-sided p from enumerating all 2^m sign assignments of the m non-zero
  differences (itertools.product), the counts by hand; on 0/1 data equality with the exact McNemar
  test ``lossgeom.behaviour.stats.mcnemar_exact``.
* ``mean_interval`` / ``ratio_interval`` / ``resample_indices``: scipy.stats.bootstrap (percentile
  method, independent resamples) within a tolerance derived from the Monte Carlo error of a
  bootstrap quantile, with checks that the tolerance rejects a non-paired interval and a 90%
  interval; ``percentile_interval`` against numpy.quantile.
* ``paired_tests``: per-row recomputation (means, differences, counts, bootstrap quantiles by hand,
  the sign test via scipy.stats.binomtest) and Holm's step-down adjustment written out by hand.
* ``spearman_interval``: scipy.stats.spearmanr for rho and p, the Fisher-z / Bonett-Wright interval
  computed by hand on one case (rho from the rank-difference formula), and a seeded coverage
  simulation of the 95% interval for bivariate normal data, whose population Spearman correlation
  is (6 / pi) arcsin(rho / 2).
"""

from __future__ import annotations

import math
from itertools import combinations, product

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from lossgeom.behaviour.estimators import (
    kl_sequence,
    kl_token,
    pass_at_k,
    per_item_log_ratio,
    per_item_pass_at_k,
)
from lossgeom.behaviour.paired import (
    PAIRED_COLUMNS,
    mean_interval,
    paired_tests,
    percentile_interval,
    ratio_interval,
    resample_indices,
    sign_test,
    spearman_interval,
)
from lossgeom.behaviour.stats import mcnemar_exact


# ---------------------------------------------------------------- references
def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (the first c correct) holding at least one correct."""
    subsets = list(combinations(range(n), k))
    hits = sum(1 for s in subsets if any(i < c for i in s))
    return hits / len(subsets)


def brute_sign_p(diff: np.ndarray) -> float:
    """Exact two-sided sign-test p by enumerating all 2^m sign assignments of the non-zero differences."""
    d = np.asarray(diff, dtype=np.float64)
    m = int((d != 0).sum())
    if m == 0:
        return 1.0
    observed = abs(int((d > 0).sum()) - m / 2)
    extreme = sum(1 for signs in product((0, 1), repeat=m) if abs(sum(signs) - m / 2) >= observed)
    return extreme / 2**m


def holm_by_hand(p: list[float]) -> list[float]:
    """Holm step-down: sort ascending, multiply the i-th (0-based) by m - i, running max, cap at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


# ---------------------------------------------------------------- pass@k
def test_pass_at_k_equals_brute_force_every_n_c_k():
    checked = 0
    for n in range(1, 11):
        for c in range(0, n + 1):
            for k in range(1, n + 1):
                got = pass_at_k(n, c, k)
                assert got.shape == ()
                assert got.dtype == np.float64
                assert abs(float(got) - brute_pass_at_k(n, c, k)) <= 1e-12, (n, c, k)
                checked += 1
    assert checked == sum((n + 1) * n for n in range(1, 11))


@pytest.mark.parametrize("n", [1, 2, 5, 9, 10])
def test_pass_at_k_special_cases(n):
    for k in range(1, n + 1):
        assert float(pass_at_k(n, 0, k)) == 0.0  # no correct sample
        assert float(pass_at_k(n, n, k)) == 1.0  # all correct
        for c in range(max(0, n - k + 1), n + 1):  # n - c < k: every k-subset holds a correct one
            assert float(pass_at_k(n, c, k)) == 1.0
    for c in range(n + 1):
        assert abs(float(pass_at_k(n, c, 1)) - c / n) <= 1e-12  # k = 1 is the plain success rate
        assert float(pass_at_k(n, c, n)) == (1.0 if c > 0 else 0.0)  # k = n: any correct at all


def test_pass_at_k_broadcasts_arrays():
    rng = np.random.default_rng(0)
    n = rng.integers(3, 11, size=(4, 1))
    c = rng.integers(0, 3, size=(1, 5))
    k = 3
    got = pass_at_k(n, c, k)
    assert got.shape == (4, 5)
    for i in range(4):
        for j in range(5):
            assert abs(got[i, j] - brute_pass_at_k(int(n[i, 0]), int(c[0, j]), k)) <= 1e-12
    # 1-D arrays of equal length, and a scalar n against an array of c
    n1 = np.array([4, 7, 10, 6, 5])
    c1 = np.array([0, 3, 10, 2, 4])
    want = [brute_pass_at_k(int(a), int(b), 2) for a, b in zip(n1, c1)]
    np.testing.assert_allclose(pass_at_k(n1, c1, 2), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        pass_at_k(8, np.arange(9), 4), [brute_pass_at_k(8, cc, 4) for cc in range(9)], rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(
    "n, c, k",
    [
        (5, 2, 0),  # k < 1
        (5, 2, -1),
        (3, 1, 4),  # n < k
        (np.array([5, 2]), np.array([1, 1]), 3),  # one item with n < k
        (5, 6, 2),  # c > n
        (5, -1, 2),  # c < 0
        (np.array([5, 5]), np.array([2, 7]), 2),  # one item with c > n
    ],
)
def test_pass_at_k_rejects_bad_inputs(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.parametrize("q", [0.0, 0.03, 0.2, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("n, k", [(1, 1), (5, 1), (5, 3), (10, 4), (10, 10), (16, 5), (40, 7)])
def test_pass_at_k_is_unbiased_in_exact_expectation(q, n, k):
    c = np.arange(n + 1)
    expectation = float(np.sum(sps.binom.pmf(c, n, q) * pass_at_k(n, c, k)))
    assert abs(expectation - (1.0 - (1.0 - q) ** k)) <= 1e-12


# ---------------------------------------------------------------- per-item pass@k
def test_per_item_pass_at_k_order_counts_and_values():
    # ids interleaved and out of sorted order; first-seen order is q3, q1, q7, q2
    rows = [
        ("q3", 1),
        ("q1", 0),
        ("q3", 0),
        ("q7", 1),
        ("q1", 0),
        ("q2", 1),
        ("q3", 1),
        ("q7", 1),
        ("q1", 0),
        ("q2", 0),
        ("q3", 0),
        ("q7", 1),
        ("q2", 0),
        ("q1", 1),
        ("q3", 0),
        ("q2", 0),
        ("q7", 1),
        ("q3", 0),
    ]
    df = pd.DataFrame(rows, columns=["id", "correct"])
    out = per_item_pass_at_k(df, [1, 2, 4])
    assert list(out.index) == ["q3", "q1", "q7", "q2"]
    assert list(out.columns) == ["n", "c", "pass@1", "pass@2", "pass@4"]
    want_n = {"q3": 6, "q1": 4, "q7": 4, "q2": 4}
    want_c = {"q3": 2, "q1": 1, "q7": 4, "q2": 1}
    for item in out.index:
        assert out.loc[item, "n"] == want_n[item]
        assert out.loc[item, "c"] == want_c[item]
        for k in (1, 2, 4):
            assert abs(out.loc[item, f"pass@{k}"] - brute_pass_at_k(want_n[item], want_c[item], k)) <= 1e-12


def test_per_item_pass_at_k_random_against_brute_force():
    rng = np.random.default_rng(1)
    ids = [f"item{i}" for i in rng.permutation(12)]
    n_per = rng.integers(4, 10, size=12)
    rows = [(item, int(rng.random() < 0.4)) for item, m in zip(ids, n_per) for _ in range(m)]
    df = pd.DataFrame(rows, columns=["id", "correct"]).sample(frac=1.0, random_state=3).reset_index(drop=True)
    out = per_item_pass_at_k(df, [1, 3])
    assert list(out.index) == list(pd.unique(df["id"]))
    for item in out.index:
        sub = df.loc[df["id"] == item, "correct"].to_numpy()
        assert out.loc[item, "n"] == sub.size
        assert out.loc[item, "c"] == sub.sum()
        for k in (1, 3):
            assert abs(out.loc[item, f"pass@{k}"] - brute_pass_at_k(sub.size, int(sub.sum()), k)) <= 1e-12


# ---------------------------------------------------------------- log ratio and KL
def random_samples(rng: np.random.Generator, n_items: int) -> pd.DataFrame:
    ids = [f"p{i}" for i in rng.permutation(n_items)]
    counts = rng.integers(1, 8, size=n_items)
    id_col = np.repeat(ids, counts)
    rng.shuffle(id_col)
    m = id_col.size
    return pd.DataFrame(
        {
            "id": id_col,
            "logp": -rng.gamma(2.0, 20.0, size=m),
            "logp_base": -rng.gamma(2.0, 20.0, size=m),
            "n_tokens": rng.integers(1, 300, size=m),
        }
    )


@pytest.mark.parametrize("seed, n_items", [(0, 1), (1, 5), (2, 17), (3, 40)])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_log_ratio_and_kl_against_recomputation(seed, n_items, sign):
    rng = np.random.default_rng(seed)
    df = random_samples(rng, n_items)
    out = per_item_log_ratio(df, sign)
    order = list(pd.unique(df["id"]))
    assert list(out.index) == order
    assert list(out.columns) == ["log_ratio_sum", "tokens", "n"]
    lr, tok, cnt = [], [], []
    for item in order:
        mask = (df["id"] == item).to_numpy()
        logp, base = df["logp"].to_numpy()[mask], df["logp_base"].to_numpy()[mask]
        lr.append(float(np.sum(sign * logp - sign * base)))
        tok.append(int(df["n_tokens"].to_numpy()[mask].sum()))
        cnt.append(int(mask.sum()))
    lr, tok, cnt = np.array(lr), np.array(tok), np.array(cnt)
    np.testing.assert_allclose(out["log_ratio_sum"].to_numpy(), lr, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(out["tokens"].to_numpy(), tok)
    np.testing.assert_array_equal(out["n"].to_numpy(), cnt)

    seq = kl_sequence(out["log_ratio_sum"].to_numpy(), out["n"].to_numpy())
    np.testing.assert_allclose(seq, lr / cnt, rtol=1e-12, atol=1e-9)
    tokrate = kl_token(out["log_ratio_sum"].to_numpy(), out["tokens"].to_numpy())
    want_tok = sign * (df["logp"] - df["logp_base"]).sum() / df["n_tokens"].sum()
    assert abs(float(tokrate) - want_tok) <= 1e-12 * max(1.0, abs(want_tok))
    # along an axis: per bootstrap resample of the items
    idx = rng.integers(0, n_items, size=(6, n_items))
    got = kl_token(lr[idx], tok[idx], axis=1)
    want = [lr[row].sum() / tok[row].sum() for row in idx]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    got0 = kl_token(lr[idx].T, tok[idx].T, axis=0)
    np.testing.assert_allclose(got0, want, rtol=1e-12)


@pytest.mark.parametrize("column", ["logp", "logp_base"])
def test_log_ratio_rejects_nan(column):
    df = random_samples(np.random.default_rng(5), 4)
    df.loc[2, column] = np.nan
    with pytest.raises(ValueError):
        per_item_log_ratio(df)
    with pytest.raises(ValueError):
        per_item_log_ratio(df, -1.0)


def test_kl_sequence_estimator_is_unbiased_on_discrete_distributions():
    p = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
    q = np.array([0.1, 0.3, 0.3, 0.05, 0.25])
    kl_pq = float(np.sum(p * np.log(p / q)))
    kl_qp = float(np.sum(q * np.log(q / p)))
    assert kl_pq > 0.1 and kl_qp > 0.1 and abs(kl_pq - kl_qp) > 0.02
    rng = np.random.default_rng(2024)
    n = 20_000
    lengths = np.array([3, 5, 8, 13, 21])  # completion lengths per outcome, irrelevant to KL_seq

    # KL(P || Q): sample the tuned model P, logp = log P, logp_base = log Q, sign +1
    y = rng.choice(5, size=n, p=p)
    tuned = pd.DataFrame({"id": "x", "logp": np.log(p[y]), "logp_base": np.log(q[y]), "n_tokens": lengths[y]})
    out = per_item_log_ratio(tuned, 1.0)
    est = float(kl_sequence(out["log_ratio_sum"].to_numpy(), out["n"].to_numpy())[0])
    se = float(np.std(np.log(p[y] / q[y]), ddof=1) / np.sqrt(n))
    assert abs(est - kl_pq) <= 5 * se
    assert abs(est - kl_qp) > 5 * se  # the check can tell the two directions apart

    # KL(Q || P): sample the base model Q, scored under the tuned model P as logp, sign -1
    z = rng.choice(5, size=n, p=q)
    base = pd.DataFrame({"id": "x", "logp": np.log(p[z]), "logp_base": np.log(q[z]), "n_tokens": lengths[z]})
    out = per_item_log_ratio(base, -1.0)
    est = float(kl_sequence(out["log_ratio_sum"].to_numpy(), out["n"].to_numpy())[0])
    se = float(np.std(np.log(q[z] / p[z]), ddof=1) / np.sqrt(n))
    assert abs(est - kl_qp) <= 5 * se
    assert abs(est - kl_pq) > 5 * se


# ---------------------------------------------------------------- sign test
def sign_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    cases = [
        np.array([1.0]),
        np.array([-1.0]),
        np.array([0.0, 2.0, 2.0, 2.0]),
        np.array([0.5, 0.5, -0.5, 0.0, 0.0, 0.5]),
        np.ones(12),
        -np.ones(11),
        np.array([1, -1] * 6, dtype=float),
    ]
    for m in range(1, 13):
        for _ in range(3):
            # small integer differences: zeros and ties throughout
            cases.append(rng.integers(-2, 3, size=m).astype(float))
        cases.append(rng.normal(0.3, 1.0, size=m))
    return cases


@pytest.mark.parametrize("diff", sign_cases())
def test_sign_test_equals_enumeration(diff):
    pos, neg, tied, p = sign_test(diff)
    assert (pos, neg, tied) == (int((diff > 0).sum()), int((diff < 0).sum()), int((diff == 0).sum()))
    assert pos + neg + tied == diff.size
    assert abs(p - brute_sign_p(diff)) <= 1e-12


def test_sign_test_all_zero_and_nan():
    assert sign_test(np.zeros(5)) == (0, 0, 5, 1.0)
    assert sign_test(np.zeros(0)) == (0, 0, 0, 1.0)
    with pytest.raises(ValueError):
        sign_test(np.array([1.0, np.nan, -2.0]))


def test_sign_test_on_binary_data_is_exact_mcnemar():
    rng = np.random.default_rng(11)
    for _ in range(60):
        n = int(rng.integers(1, 60))
        a = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(float)
        b = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(float)
        pos, neg, tied, p = sign_test(a - b)
        b_count, c_count = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
        assert (pos, neg, tied) == (b_count, c_count, n - b_count - c_count)
        assert abs(p - mcnemar_exact(b_count, c_count)) <= 1e-12


# ---------------------------------------------------------------- bootstrap intervals
N_BOOT = 20_000


def quantile_tolerance(replicates: np.ndarray, q: float, n_boot: int = N_BOOT, n_se: float = 5.0) -> float:
    """``n_se`` Monte Carlo standard deviations of the difference of two independent estimates of
    the q-quantile from ``n_boot`` replicates each.

    One estimate has sd ~ sqrt(q (1 - q) / B) / f(x_q); the difference of two, sqrt(2) times that.
    With h = n_se * sqrt(2 q (1 - q) / B), (Q(q + h) - Q(q - h)) / 2 ~ h / f(x_q) is that many sds,
    read off the replicates' own quantile function (no density estimate needed).
    """
    h = n_se * math.sqrt(2.0 * q * (1.0 - q) / n_boot)
    lo, hi = np.quantile(replicates, [q - h, q + h])
    return float(hi - lo) / 2.0


def paired_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Strongly correlated pair (the paired interval is far narrower than the unpaired one)."""
    rng = np.random.default_rng(seed)
    a = rng.gamma(2.0, 1.0, size=n)
    b = a + rng.normal(0.2, 0.3, size=n)
    return a, b


@pytest.mark.parametrize("n", [20, 57, 200])
def test_mean_interval_agrees_with_scipy_bootstrap(n):
    a, b = paired_data(n, seed=n)
    d = a - b
    idx = resample_indices(n, N_BOOT, seed=100 + n)
    low, high = mean_interval(d, idx)
    ref = sps.bootstrap(
        (d,), np.mean, method="percentile", n_resamples=N_BOOT, confidence_level=0.95, rng=np.random.default_rng(9)
    ).confidence_interval
    reps = d[idx].mean(axis=1)
    tol_low, tol_high = quantile_tolerance(reps, 0.025), quantile_tolerance(reps, 0.975)
    assert abs(low - ref.low) <= tol_low
    assert abs(high - ref.high) <= tol_high

    # the tolerance is tight enough to reject wrong intervals:
    # a 90% interval
    low90, high90 = mean_interval(d, idx, confidence=0.90)
    assert abs(low90 - ref.low) > tol_low and abs(high90 - ref.high) > tol_high
    # the non-paired difference (a and b resampled independently)
    idx2 = resample_indices(n, N_BOOT, seed=200 + n)
    unpaired = percentile_interval(a[idx].mean(axis=1) - b[idx2].mean(axis=1))
    assert abs(unpaired[0] - ref.low) > tol_low and abs(unpaired[1] - ref.high) > tol_high
    # and the interval of a shifted statistic
    assert abs(mean_interval(d + 0.5 * (high - low), idx)[0] - ref.low) > tol_low


@pytest.mark.parametrize("n", [20, 57, 200])
def test_ratio_interval_agrees_with_scipy_paired_bootstrap(n):
    rng = np.random.default_rng(300 + n)
    den = rng.integers(20, 400, size=n).astype(float)  # tokens per item
    num = den * rng.gamma(3.0, 0.05, size=n) + rng.normal(0.0, 2.0, size=n)  # log-ratio sums
    idx = resample_indices(n, N_BOOT, seed=400 + n)
    low, high = ratio_interval(num, den, idx)

    def ratio(x, y, axis=-1):
        return np.sum(x, axis=axis) / np.sum(y, axis=axis)

    ref = sps.bootstrap(
        (num, den),
        ratio,
        paired=True,
        vectorized=True,
        method="percentile",
        n_resamples=N_BOOT,
        rng=np.random.default_rng(10),
    ).confidence_interval
    reps = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    tol_low, tol_high = quantile_tolerance(reps, 0.025), quantile_tolerance(reps, 0.975)
    assert abs(low - ref.low) <= tol_low
    assert abs(high - ref.high) <= tol_high
    # wrong intervals fail: 90%, and the mean of per-item ratios instead of the ratio of sums
    low90, high90 = ratio_interval(num, den, idx, confidence=0.90)
    assert abs(low90 - ref.low) > tol_low and abs(high90 - ref.high) > tol_high
    idx2 = resample_indices(n, N_BOOT, seed=500 + n)
    unpaired = percentile_interval(num[idx].sum(axis=1) / den[idx2].sum(axis=1))
    assert abs(unpaired[0] - ref.low) > tol_low or abs(unpaired[1] - ref.high) > tol_high


@pytest.mark.parametrize("n_items, n_boot", [(1, 1), (1, 50), (7, 3), (30, 1000)])
def test_resample_indices_shape_range_determinism(n_items, n_boot):
    idx = resample_indices(n_items, n_boot, seed=3)
    assert idx.shape == (n_boot, n_items)
    assert idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() <= n_items - 1
    np.testing.assert_array_equal(idx, resample_indices(n_items, n_boot, seed=3))
    if n_items > 1 and n_boot * n_items >= 20:
        assert not np.array_equal(idx, resample_indices(n_items, n_boot, seed=4))
    if n_items * n_boot >= 10_000:  # every item is drawn, at about the same rate
        counts = np.bincount(idx.ravel(), minlength=n_items)
        expected = n_boot
        assert np.all(np.abs(counts - expected) < 6 * math.sqrt(expected))


@pytest.mark.parametrize("n_items, n_boot", [(0, 10), (-1, 10), (5, 0), (5, -3)])
def test_resample_indices_rejects_empty(n_items, n_boot):
    with pytest.raises(ValueError):
        resample_indices(n_items, n_boot, seed=0)


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("size", [1, 2, 11, 1000])
def test_percentile_interval_is_numpy_quantile(confidence, size):
    reps = np.random.default_rng(size).standard_t(3, size=size)
    tail = (1 - confidence) / 2
    low, high = percentile_interval(reps, confidence)
    assert isinstance(low, float) and isinstance(high, float)
    assert low == float(np.quantile(reps, tail))
    assert high == float(np.quantile(reps, 1 - tail))
    assert low <= high


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.1, 1.5, 95.0, float("nan")])
def test_percentile_interval_rejects_bad_confidence(confidence):
    with pytest.raises(ValueError):
        percentile_interval(np.arange(10.0), confidence)


# ---------------------------------------------------------------- paired tests
def paired_values(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    m_a = rng.integers(0, 5, size=n) / 4.0  # pass@k-like: few levels, many ties
    m_b = np.clip(m_a + rng.integers(-1, 2, size=n) / 4.0, 0, 1)  # ties with m_a on about a third
    m_c = m_a.copy()  # identical to m_a: every item tied
    m_d = rng.gamma(2.0, 0.3, size=n)  # continuous
    ids = [f"item{i}" for i in rng.permutation(n)]
    return pd.DataFrame({"tuned": m_a, "base": m_b, "copy": m_c, "other": m_d}, index=ids)


@pytest.mark.parametrize("n, seed", [(15, 0), (48, 1), (120, 2)])
def test_paired_tests_against_recomputation(n, seed):
    values = paired_values(n, seed)
    idx = resample_indices(n, 2000, seed=seed)
    out = paired_tests(values, idx)
    assert list(out.columns) == PAIRED_COLUMNS
    want_pairs = [
        ("tuned", "base"),
        ("tuned", "copy"),
        ("tuned", "other"),
        ("base", "copy"),
        ("base", "other"),
        ("copy", "other"),
    ]
    assert list(zip(out["model_a"], out["model_b"])) == want_pairs
    raw_p = []
    for row, (a, b) in zip(out.itertuples(index=False), want_pairs):
        va, vb = values[a].to_numpy(), values[b].to_numpy()
        assert row.n == n
        assert abs(row.mean_a - va.mean()) <= 1e-12
        assert abs(row.mean_b - vb.mean()) <= 1e-12
        assert abs(row.diff - (va.mean() - vb.mean())) <= 1e-12
        pos, neg = int((va > vb).sum()), int((va < vb).sum())
        assert (row.n_a_higher, row.n_b_higher, row.n_tied) == (pos, neg, n - pos - neg)
        p = 1.0 if pos + neg == 0 else sps.binomtest(pos, pos + neg, 0.5).pvalue
        assert abs(row.p - p) <= 1e-12
        raw_p.append(p)
        # the paired interval: quantiles of the difference of the two models' means on shared resamples
        reps = va[idx].mean(axis=1) - vb[idx].mean(axis=1)
        np.testing.assert_allclose([row.ci_low, row.ci_high], np.quantile(reps, [0.025, 0.975]), rtol=0, atol=1e-12)
    # the identical pair: all tied, p = 1, a zero-width interval at 0
    same = out[(out["model_a"] == "tuned") & (out["model_b"] == "copy")].iloc[0]
    assert same["n_tied"] == n and same["p"] == 1.0 and same["ci_low"] == same["ci_high"] == 0.0
    # ties really occur in (tuned, base)
    tb = out.iloc[0]
    assert 0 < tb["n_tied"] < n
    np.testing.assert_allclose(out["p_holm"].to_numpy(), holm_by_hand(raw_p), rtol=0, atol=1e-12)
    # a 90% interval is nested in the 95% one
    out90 = paired_tests(values, idx, confidence=0.90)
    assert (out90["ci_low"] >= out["ci_low"] - 1e-12).all() and (out90["ci_high"] <= out["ci_high"] + 1e-12).all()


def test_paired_tests_explicit_pairs_and_holm_family():
    values = paired_values(40, 5)
    idx = resample_indices(40, 500, seed=1)
    pairs = [("other", "tuned"), ("base", "tuned")]
    out = paired_tests(values, idx, pairs=pairs)
    assert list(zip(out["model_a"], out["model_b"])) == pairs
    assert len(out) == 2
    full = paired_tests(values, idx)
    # the order a - b is honoured: the reversed pair flips the difference and the counts
    rev = full[(full["model_a"] == "tuned") & (full["model_b"] == "other")].iloc[0]
    first = out.iloc[0]
    assert abs(first["diff"] + rev["diff"]) <= 1e-12
    assert (first["n_a_higher"], first["n_b_higher"]) == (rev["n_b_higher"], rev["n_a_higher"])
    assert abs(first["ci_low"] + rev["ci_high"]) <= 1e-12 and abs(first["ci_high"] + rev["ci_low"]) <= 1e-12
    assert abs(first["p"] - rev["p"]) <= 1e-12
    # Holm runs over the pairs given, not over all pairs
    np.testing.assert_allclose(out["p_holm"].to_numpy(), holm_by_hand(list(out["p"])), rtol=0, atol=1e-12)
    # a single pair: Holm leaves p unchanged
    one = paired_tests(values, idx, pairs=[("tuned", "base")])
    assert one["p_holm"].iloc[0] == one["p"].iloc[0]


def test_paired_tests_rejects_nan_and_mismatched_idx():
    values = paired_values(20, 3)
    values.iloc[4, values.columns.get_loc("copy")] = np.nan
    with pytest.raises(ValueError, match="'copy'"):
        paired_tests(values, resample_indices(20, 10, seed=0))
    values = paired_values(20, 3)
    with pytest.raises(ValueError):
        paired_tests(values, resample_indices(19, 10, seed=0))
    with pytest.raises(ValueError):
        paired_tests(values, resample_indices(21, 10, seed=0))


# ---------------------------------------------------------------- Spearman
@pytest.mark.parametrize("n, seed", [(4, 0), (5, 1), (9, 2), (14, 3), (30, 4), (200, 5)])
def test_spearman_interval_matches_scipy(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 0.5 * x + rng.normal(size=n)
    if n >= 9:
        y[:3] = y[3]  # ties
    res = spearman_interval(x, y)
    ref = sps.spearmanr(x, y)
    assert res["n"] == n
    assert abs(res["rho"] - ref.statistic) <= 1e-12
    assert abs(res["p"] - ref.pvalue) <= 1e-12
    assert res["ci_low"] < res["rho"] < res["ci_high"]
    assert -1 <= res["ci_low"] and res["ci_high"] <= 1


def test_spearman_interval_fisher_z_bonett_wright_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    y = np.array([2.0, 1.0, 4.0, 3.0, 7.0, 8.0, 5.0, 6.0])  # distinct values: ranks are y itself
    n = 8
    d2 = np.sum((x - y) ** 2)  # = 1 + 1 + 1 + 1 + 4 + 4 + 4 + 4 = 20
    assert d2 == 20
    rho = 1 - 6 * d2 / (n * (n**2 - 1))  # 1 - 120 / 504
    res = spearman_interval(x, y)
    assert abs(res["rho"] - rho) <= 1e-12
    for confidence, z in [(0.95, 1.959963984540054), (0.90, 1.6448536269514722)]:
        se = math.sqrt((1 + rho**2 / 2) / (n - 3))
        low, high = math.tanh(math.atanh(rho) - z * se), math.tanh(math.atanh(rho) + z * se)
        res = spearman_interval(x, y, confidence=confidence)
        assert abs(res["ci_low"] - low) <= 1e-12
        assert abs(res["ci_high"] - high) <= 1e-12
    # plain Fisher SE 1 / sqrt(n - 3) would be distinguishable at this precision
    assert abs(res["ci_high"] - math.tanh(math.atanh(rho) + 1.6448536269514722 / math.sqrt(n - 3))) > 1e-3


@pytest.mark.heavy
def test_spearman_interval_coverage_bivariate_normal():
    rho = 0.6
    true_spearman = 6 / math.pi * math.asin(rho / 2)
    rng = np.random.default_rng(20240601)
    n, reps = 14, 2000
    cov = np.array([[1.0, rho], [rho, 1.0]])
    data = rng.multivariate_normal([0.0, 0.0], cov, size=(reps, n))
    covered = 0
    for sample in data:
        res = spearman_interval(sample[:, 0], sample[:, 1])
        covered += res["ci_low"] <= true_spearman <= res["ci_high"]
    coverage = covered / reps
    assert 0.92 <= coverage <= 0.98, coverage


@pytest.mark.parametrize(
    "x, y",
    [
        ([1.0, 2.0, 3.0], [3.0, 1.0, 2.0]),  # n < 4
        ([], []),
        ([1.0], [2.0]),
        ([2.0] * 6, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),  # constant x
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.5] * 6),  # constant y
    ],
)
def test_spearman_interval_degenerate_is_nan(x, y):
    res = spearman_interval(np.array(x), np.array(y))
    assert res["n"] == len(x)
    for key in ("rho", "ci_low", "ci_high", "p"):
        assert np.isnan(res[key]), key
