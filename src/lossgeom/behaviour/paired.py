"""Paired comparisons of per-item values (pass@k, KL, held-out cross-entropy) between models, and the
rank correlation of two per-model measures.

Every model is measured on the same items, so two models' values pair by item. Conventions:

* ``values`` -- a DataFrame, index item id, one float column per model, no NaN (a model without a
  value for an item cannot be paired; the caller drops or fails first);
* intervals are percentile bootstrap intervals over items with one matrix of resampled item
  indices (:func:`resample_indices`) shared by every model and pair of a table, so each pair's
  interval is that of the paired difference and the table reads the same resamples throughout;
* the test of a pair is the two-sided exact sign test on the per-item differences (items where the
  two are equal carry no information and are dropped): distribution-free, so it holds for the
  bounded, tied pass@k values as for the heavy-tailed per-item KLs; on 0/1 values it is exactly
  McNemar's test. Holm's correction runs over the family of pairs of one measure.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats as sps

from .stats import holm, mcnemar_exact

PAIRED_COLUMNS = [
    "model_a",
    "model_b",
    "n",
    "mean_a",
    "mean_b",
    "diff",
    "ci_low",
    "ci_high",
    "n_a_higher",
    "n_b_higher",
    "n_tied",
    "p",
    "p_holm",
]


def resample_indices(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap resamples of item positions: int64 ``(n_boot, n_items)``, drawn with replacement."""
    if n_items < 1 or n_boot < 1:
        raise ValueError(f"a bootstrap needs at least one item and one resample, got {n_items}, {n_boot}")
    return np.random.default_rng(seed).integers(0, n_items, size=(n_boot, n_items))


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The ``(1 - c)/2`` and ``(1 + c)/2`` quantiles of bootstrap replicates (1-D)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(replicates, dtype=np.float64), [tail, 1.0 - tail])
    return float(low), float(high)


def mean_interval(x: np.ndarray, idx: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of per-item values ``x`` (n_items,) over resamples ``idx``."""
    return percentile_interval(np.asarray(x, dtype=np.float64)[idx].mean(axis=1), confidence)


def ratio_interval(num: np.ndarray, den: np.ndarray, idx: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``sum(num) / sum(den)`` over items resampled by ``idx`` (a ratio estimator)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return percentile_interval(num[idx].sum(axis=1) / den[idx].sum(axis=1), confidence)


def sign_test(diff: np.ndarray) -> tuple[int, int, int, float]:
    """Two-sided exact sign test of per-item differences: (n positive, n negative, n zero, p).

    Under H0 a non-zero difference is as likely positive as negative: the count of positives is
    Binomial(n_nonzero, 1/2), the exact McNemar test on the two counts (:func:`.stats.mcnemar_exact`,
    which it is on 0/1 values). No non-zero difference gives p = 1.
    """
    d = np.asarray(diff, dtype=np.float64)
    if np.isnan(d).any():
        raise ValueError("sign test: a per-item difference is NaN")
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    return pos, neg, int(d.size - pos - neg), mcnemar_exact(pos, neg)


def paired_tests(
    values: pd.DataFrame, idx: np.ndarray, pairs: list[tuple[str, str]] | None = None, confidence: float = 0.95
) -> pd.DataFrame:
    """Every pair of model columns (``pairs``; default all, in column order): mean of each, their mean
    difference ``a - b`` with its paired bootstrap interval, the sign test, Holm over the pairs given.

    ``idx``: :func:`resample_indices` over ``len(values)`` items. Columns :data:`PAIRED_COLUMNS`.
    """
    if values.isna().any().any():
        bad = values.columns[values.isna().any()][0]
        raise ValueError(f"paired tests: model {bad!r} has no value for some item")
    if idx.shape[1] != len(values):
        raise ValueError(f"resample indices cover {idx.shape[1]} items, the values {len(values)}")
    pairs = list(combinations(values.columns, 2)) if pairs is None else pairs
    rows = []
    for a, b in pairs:
        d = values[a].to_numpy(np.float64) - values[b].to_numpy(np.float64)
        low, high = mean_interval(d, idx, confidence)
        pos, neg, tied, p = sign_test(d)
        rows.append(
            {
                "model_a": a,
                "model_b": b,
                "n": len(d),
                "mean_a": float(values[a].mean()),
                "mean_b": float(values[b].mean()),
                "diff": float(d.mean()),
                "ci_low": low,
                "ci_high": high,
                "n_a_higher": pos,
                "n_b_higher": neg,
                "n_tied": tied,
                "p": p,
            }
        )
    out = pd.DataFrame(rows, columns=PAIRED_COLUMNS[:-1])
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else pd.Series(dtype=float)
    return out


def spearman_interval(x: np.ndarray, y: np.ndarray, confidence: float = 0.95) -> dict:
    """Spearman's rank correlation of paired per-model values with its Fisher-z interval.

    The interval is ``tanh(atanh(rho) -/+ z * se)`` with Bonett & Wright's (2000) standard error
    ``sqrt((1 + rho**2 / 2) / (n - 3))``; p is scipy's two-sided test of rho = 0. Returns
    ``{"n", "rho", "ci_low", "ci_high", "p"}``; NaNs below 4 points (no interval) or without
    variation in x or y.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = int(x.size)
    out = {"n": n, "rho": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan}
    if n < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    res = sps.spearmanr(x, y)
    rho = float(res.statistic)
    z = float(sps.norm.ppf(0.5 + confidence / 2.0))
    se = np.sqrt((1.0 + rho**2 / 2.0) / (n - 3))
    centre = np.arctanh(np.clip(rho, -1 + 1e-12, 1 - 1e-12))
    out.update(
        rho=rho, ci_low=float(np.tanh(centre - z * se)), ci_high=float(np.tanh(centre + z * se)), p=float(res.pvalue)
    )
    return out
