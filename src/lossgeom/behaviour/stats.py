"""Paired significance tests and intervals for per-item correctness (the paper's accuracy analysis).

Every model is graded on the *same* benchmark items, so comparisons between models are paired:
the right tool is the exact McNemar test on the discordant items of two models, Cochran's Q for
"do all k models have the same accuracy", and Holm's step-down correction over the family of
pairwise tests.

Data convention used throughout
-------------------------------
``correct`` is a :class:`pandas.DataFrame` with

* index   -- item id (unique; e.g. the GSM8K test index), one row per benchmark item;
* columns -- one per model (the column label is the model's name);
* values  -- 1 if the model's graded answer on that item is correct, 0 otherwise
  (``bool`` and ``0.0``/``1.0`` are accepted).

A missing value (NaN) means the model has no graded answer for that item. Paired tests are
meaningless on different item sets, so missing items and any value outside {0, 1} raise
:class:`ValueError` naming the offending model column; filter or fill before calling.

All functions are pure (no I/O, no global random state).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as _sps

__all__ = [
    "mcnemar_exact",
    "holm",
    "cochrans_q",
    "bootstrap_ci",
    "wilson_ci",
    "clopper_pearson_ci",
    "CI_METHODS",
    "accuracy_table",
    "pairwise_tests",
    "cochran_summary",
    "validate_correct",
]


# --------------------------------------------------------------------------------------------
# Scalar tests
# --------------------------------------------------------------------------------------------
def mcnemar_exact(b: int, c: int, mid_p: bool = False) -> float:
    """Exact two-sided McNemar test from the two discordant counts.

    Under H0 (both models equally accurate) each of the ``n = b + c`` discordant items is equally
    likely to favour either model, so ``min(b, c) ~ Binomial(n, 1/2)`` and

    * exact:  ``p = min(1, 2 * P(X <= min(b, c)))``
    * mid-p:  ``p = 2 * [P(X <= k) - P(X = k) / 2] = 2 P(X < k) + P(X = k)``, ``k = min(b, c)``,
      which counts only half of the observed outcome's probability and is less conservative
      (Fagerland, Lydersen & Laake 2013 recommend it).

    Parameters
    ----------
    b, c : int
        Discordant counts (items only model A got right, items only model B got right). The test
        is symmetric in ``b`` and ``c``. Concordant items carry no information and are not needed.
    mid_p : bool
        Return the mid-p value instead of the exact (conservative) one.

    Returns
    -------
    float
        Two-sided p-value in (0, 1]. ``b = c = 0`` (no discordant items) gives 1.0.
    """
    b_i, c_i = _as_count(b, "b"), _as_count(c, "c")
    n = b_i + c_i
    if n == 0:
        return 1.0
    k = min(b_i, c_i)
    # binom.cdf/pmf on the lower tail stay accurate for tiny p-values (e.g. p < 1e-9 in the paper).
    if mid_p:
        p = 2.0 * _sps.binom.cdf(k, n, 0.5) - _sps.binom.pmf(k, n, 0.5)
    else:
        p = 2.0 * _sps.binom.cdf(k, n, 0.5)
    return float(min(1.0, p))


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values.

    With the m raw p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of the
    i-th smallest (1-based) is ``max_{j <= i} min(1, (m - j + 1) * p_(j))``: the running maximum
    makes the adjustment monotone in the raw p-values, and it is capped at 1. Rejecting every
    hypothesis whose adjusted p is <= alpha controls the family-wise error rate at alpha.

    Parameters
    ----------
    pvalues : array-like, shape (m,) (any shape is accepted and preserved)
        Raw p-values in [0, 1]; NaN is rejected.

    Returns
    -------
    numpy.ndarray of float64, same shape as ``pvalues``, in the original order.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    shape = p.shape
    flat = p.ravel()
    if flat.size == 0:
        return flat.reshape(shape)
    if np.isnan(flat).any() or (flat < 0).any() or (flat > 1).any():
        raise ValueError("holm: p-values must lie in [0, 1] and contain no NaN")
    m = flat.size
    order = np.argsort(flat, kind="stable")
    multipliers = m - np.arange(m)  # m, m-1, ..., 1 for the ascending-sorted values
    adjusted_sorted = np.maximum.accumulate(np.minimum(1.0, multipliers * flat[order]))
    out = np.empty(m, dtype=np.float64)
    out[order] = adjusted_sorted
    return out.reshape(shape)


def cochrans_q(correct: np.ndarray | pd.DataFrame) -> tuple[float, int, float]:
    """Cochran's Q test that k paired binary outcomes share one success rate.

    ``Q = (k - 1) * (k * sum_j T_j^2 - N^2) / (k * N - sum_i R_i^2)`` where ``T_j`` are the
    column (model) totals, ``R_i`` the row (item) totals and ``N`` the grand total. Under H0,
    ``Q ~ chi2(k - 1)`` asymptotically. For k = 2 it equals McNemar's chi-square without
    continuity correction, ``(b - c)^2 / (b + c)``.

    Parameters
    ----------
    correct : array-like, shape (n_items, n_models), values in {0, 1}, n_models >= 2.

    Returns
    -------
    (Q, df, p) : (float, int, float)
        If no item is discordant (every row all-0 or all-1) Q is 0/0; we return ``(0.0, k-1, 1.0)``
        because the data then carry no evidence of any accuracy difference.
    """
    x = _as_binary_matrix(correct)
    n_items, k = x.shape
    if k < 2:
        raise ValueError("cochrans_q needs at least two models (columns)")
    col = x.sum(axis=0, dtype=np.float64)
    row = x.sum(axis=1, dtype=np.float64)
    total = col.sum()
    denom = k * total - np.dot(row, row)
    df = k - 1
    if denom == 0:
        return 0.0, df, 1.0
    q = (k - 1) * (k * np.dot(col, col) - total**2) / denom
    return float(q), df, float(_sps.chi2.sf(q, df))


def bootstrap_ci(
    correct: Sequence[int] | np.ndarray,
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval for the accuracy (mean) of a 0/1 vector.

    Resampling n items with replacement from a 0/1 vector with s successes gives a resample mean
    distributed exactly as ``Binomial(n, s/n) / n``; we draw those binomials directly, which is
    the same bootstrap distribution at O(n_boot) cost instead of O(n_boot * n) memory and time.

    Parameters
    ----------
    correct : array-like, shape (n,), values in {0, 1}, n >= 1.
    n_boot : int
        Number of bootstrap replicates (>= 1).
    confidence : float
        Two-sided coverage in (0, 1); the interval is the (1-c)/2 and (1+c)/2 quantiles.
    seed : int
        Seed of a fresh :func:`numpy.random.default_rng`; same inputs and seed give the same CI.

    Returns
    -------
    (low, high) : tuple of float, accuracies as fractions in [0, 1].
    """
    x = np.asarray(correct)
    if x.ndim != 1:
        raise ValueError(f"bootstrap_ci expects a 1-D array, got shape {x.shape}")
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one item")
    x = _as_binary_matrix(x.reshape(-1, 1))[:, 0]
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n = x.size
    rng = np.random.default_rng(seed)
    means = rng.binomial(n, x.mean(), size=int(n_boot)) / n
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927), as fractions in [0, 1].

    With ``p = s/n`` and ``z`` the ``(1+c)/2`` normal quantile, the interval is
    ``(p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``. Unlike a percentile bootstrap,
    which collapses to ``[0, 0]`` for ``0/n``, it has a positive upper end at 0 successes
    (``0/30`` gives about ``[0, 0.114]``): the interval for small test sets such as AIME (n = 30).
    """
    s, n = _as_count(successes, "successes"), _as_count(n, "n")
    if n == 0 or s > n:
        raise ValueError(f"wilson_ci needs 0 <= successes <= n and n >= 1, got {s}/{n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = float(_sps.norm.ppf(0.5 + confidence / 2.0))
    p = s / n
    centre = p + z * z / (2 * n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return float(max(0.0, (centre - half) / denom)), float(min(1.0, (centre + half) / denom))


def clopper_pearson_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval from beta quantiles: ``[B(a/2; s, n-s+1), B(1-a/2; s+1, n-s)]``
    with ``a = 1 - confidence``, the ends ``0`` at ``s = 0`` and ``1`` at ``s = n``. Conservative:
    coverage is at least ``confidence`` for every true proportion."""
    s, n = _as_count(successes, "successes"), _as_count(n, "n")
    if n == 0 or s > n:
        raise ValueError(f"clopper_pearson_ci needs 0 <= successes <= n and n >= 1, got {s}/{n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a = 1.0 - confidence
    low = 0.0 if s == 0 else float(_sps.beta.ppf(a / 2, s, n - s + 1))
    high = 1.0 if s == n else float(_sps.beta.ppf(1 - a / 2, s + 1, n - s))
    return low, high


# Interval methods of :func:`accuracy_table`; Wilson is the default at every n.
CI_METHODS = ("wilson", "clopper_pearson", "bootstrap")


# --------------------------------------------------------------------------------------------
# DataFrame-level summaries
# --------------------------------------------------------------------------------------------
def validate_correct(correct: pd.DataFrame) -> np.ndarray:
    """Check a per-item correctness frame and return it as an int8 array (n_items, n_models).

    Raises :class:`ValueError` naming the model column if a column has missing items (NaN/None)
    or a value outside {0, 1}; also if the index has duplicate item ids or the frame is empty.
    """
    if not isinstance(correct, pd.DataFrame):
        raise TypeError("correct must be a pandas DataFrame (index = item id, columns = models)")
    if correct.shape[1] == 0:
        raise ValueError("correct has no model columns")
    if correct.shape[0] == 0:
        raise ValueError("correct has no items (rows)")
    if not correct.index.is_unique:
        dup = correct.index[correct.index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"correct has duplicate item ids in its index, e.g. {dup}")
    if not correct.columns.is_unique:
        raise ValueError("correct has duplicate model columns")
    out = np.empty(correct.shape, dtype=np.int8)
    for j, model in enumerate(correct.columns):
        col = correct[model]
        missing = col.isna()
        if missing.any():
            items = col.index[missing][:5].tolist()
            raise ValueError(f"model column {model!r} has {int(missing.sum())} missing item(s), e.g. {items}")
        try:
            values = col.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"model column {model!r} is not numeric 0/1: {err}") from None
        bad = (values != 0) & (values != 1)
        if bad.any():
            examples = col[bad].iloc[:5].tolist()
            raise ValueError(f"model column {model!r} has values outside {{0, 1}}: {examples}")
        out[:, j] = values.astype(np.int8)
    return out


def accuracy_table(
    correct: pd.DataFrame,
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    ci: str = "wilson",
) -> pd.DataFrame:
    """Accuracy and a confidence interval per model.

    Parameters
    ----------
    correct : DataFrame (index = item id, one 0/1 column per model); see module docstring.
    ci : one of :data:`CI_METHODS`: ``wilson`` (default; :func:`wilson_ci`), ``clopper_pearson``
        (:func:`clopper_pearson_ci`) or ``bootstrap`` (:func:`bootstrap_ci`, percentile; it gives
        ``[0, 0]`` for ``0/n``, so it is not for small test sets).
    n_boot, confidence, seed : ``confidence`` for every method; ``n_boot`` and ``seed`` for the
        bootstrap. Every model uses the same ``seed``, so a model's interval does not depend on
        which other models are in the frame.

    Returns
    -------
    DataFrame indexed by model (name ``"model"``, in column order) with columns
    ``n`` (int, items), ``accuracy``, ``ci_low``, ``ci_high`` (fractions in [0, 1]), ``ci_method``.
    """
    if ci not in CI_METHODS:
        raise ValueError(f"unknown CI method {ci!r}; expected one of {list(CI_METHODS)}")
    x = validate_correct(correct)
    rows = []
    for j, model in enumerate(correct.columns):
        s, n = int(x[:, j].sum()), int(x.shape[0])
        if ci == "bootstrap":
            low, high = bootstrap_ci(x[:, j], n_boot=n_boot, confidence=confidence, seed=seed)
        elif ci == "wilson":
            low, high = wilson_ci(s, n, confidence)
        else:
            low, high = clopper_pearson_ci(s, n, confidence)
        rows.append(
            {"model": model, "n": n, "accuracy": float(x[:, j].mean()), "ci_low": low, "ci_high": high, "ci_method": ci}
        )
    return pd.DataFrame(rows).set_index("model")


PAIRWISE_COLUMNS = [
    "model_a",
    "model_b",
    "n",
    "n11",
    "n10",
    "n01",
    "n00",
    "acc_a",
    "acc_b",
    "acc_diff",
    "p",
    "p_holm",
]


def pairwise_tests(correct: pd.DataFrame, mid_p: bool = False) -> pd.DataFrame:
    """Exact McNemar test for every unordered pair of models, Holm-adjusted over all pairs.

    Pairs follow the column order: ``(columns[i], columns[j])`` for ``i < j``.

    Returns
    -------
    DataFrame, one row per pair, columns

    * ``model_a``, ``model_b`` -- the pair;
    * ``n`` -- number of items;
    * ``n11`` -- both right; ``n00`` -- both wrong;
    * ``n10`` -- **model_a right, model_b wrong** (first digit = model_a, second = model_b);
    * ``n01`` -- **model_a wrong, model_b right**;
    * ``acc_a``, ``acc_b`` -- accuracies (fractions);
    * ``acc_diff`` -- ``acc_a - acc_b`` = ``(n10 - n01) / n``;
    * ``p`` -- two-sided exact McNemar p on (n10, n01) (mid-p if ``mid_p``);
    * ``p_holm`` -- Holm-adjusted over the whole family of ``k(k-1)/2`` pairs.

    Fewer than two models give an empty frame with these columns.
    """
    x = validate_correct(correct)
    models = list(correct.columns)
    n = x.shape[0]
    rows: list[dict[str, Any]] = []
    for i, j in combinations(range(len(models)), 2):
        a, b = x[:, i].astype(bool), x[:, j].astype(bool)
        n10 = int(np.sum(a & ~b))
        n01 = int(np.sum(~a & b))
        rows.append(
            {
                "model_a": models[i],
                "model_b": models[j],
                "n": n,
                "n11": int(np.sum(a & b)),
                "n10": n10,
                "n01": n01,
                "n00": int(np.sum(~a & ~b)),
                "acc_a": float(a.mean()),
                "acc_b": float(b.mean()),
                "acc_diff": (n10 - n01) / n,
                "p": mcnemar_exact(n10, n01, mid_p=mid_p),
            }
        )
    out = pd.DataFrame(rows, columns=PAIRWISE_COLUMNS[:-1])
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else pd.Series(dtype=float)
    return out


def cochran_summary(correct: pd.DataFrame) -> dict[str, Any]:
    """Cochran's Q over all model columns of a correctness frame.

    Returns a JSON-serialisable dict ``{"Q", "df", "p", "n_items", "n_models", "models"}``.
    """
    x = validate_correct(correct)
    q, df, p = cochrans_q(x)
    return {
        "Q": q,
        "df": df,
        "p": p,
        "n_items": int(x.shape[0]),
        "n_models": int(x.shape[1]),
        "models": [str(m) for m in correct.columns],
    }


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _as_count(v: Any, name: str) -> int:
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer count, got bool")
    iv = int(v)
    if iv != v or iv < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    return iv


def _as_binary_matrix(values: Any) -> np.ndarray:
    """2-D 0/1 int8 array from an array or DataFrame; DataFrames get column-named errors."""
    if isinstance(values, pd.DataFrame):
        return validate_correct(values)
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D (n_items, n_models) array, got shape {arr.shape}")
    bad = ~np.isin(arr, (0.0, 1.0))  # NaN is also caught here
    if bad.any():
        cols = sorted(set(np.nonzero(bad)[1].tolist()))[:5]
        raise ValueError(f"values must be 0/1 with no missing entries; bad column index(es) {cols}")
    return arr.astype(np.int8)
