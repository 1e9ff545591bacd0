"""Per-item estimators from sampled completions: pass@k (Chen et al., 2021) and the Monte Carlo KL.

pass@k. With ``n`` samples of an item of which ``c`` are correct, the unbiased estimate of the
probability that at least one of ``k`` fresh samples is correct is (Chen et al. 2021, eq. 1)

    pass@k = 1 - C(n - c, k) / C(n, k),

computed from Python's exact integer binomials (:func:`math.comb`; their ratio rounded once), so two
items with the same exact value get the same float whatever their ``n`` (a paired sign test counts
them as tied); it is 1 when ``n - c < k``. Averaging it over items estimates the model's pass@k.

KL between two models' distributions over completions. ``P`` is the sampled model's distribution
over completions of a prompt (temperature 1, no top-p: the model's own distribution), ``Q`` the
other's; a completion ends at EOS or is cut at ``max_new_tokens``, so both are distributions over the
same finite set (complete sequences of at most that many tokens, and cut prefixes of exactly that
many). With ``y_1..y_n ~ P`` and ``log P(y)``, ``log Q(y)`` summed over the completion's tokens (EOS
included when generated), the per-sequence estimate

    KL_seq(P || Q) ~= (1/n) sum_j [log P(y_j) - log Q(y_j)]          (nats per completion)

is unbiased (the "k1" estimator: single samples may be negative; the mean is not biased). The
per-token rate divides the total log-ratio by the total number of sampled tokens,

    KL_tok(P || Q) ~= sum_ij [log P(y_ij) - log Q(y_ij)] / sum_ij |y_ij|   (nats per token),

a ratio estimator of ``E[log P/Q] / E[|y|]`` (consistent, not exactly unbiased at finite n).
``KL(tuned || base)`` samples the tuned model, the reverse ``KL(base || tuned)`` samples the base.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd


def pass_at_k(n: np.ndarray | int, c: np.ndarray | int, k: int) -> np.ndarray:
    """Chen et al.'s unbiased pass@k per item; float64 with the broadcast shape of ``n`` and ``c``.

    ``n`` samples per item (>= k), ``c`` of them correct (0 <= c <= n); ``k >= 1``.
    """
    n_arr, c_arr = np.broadcast_arrays(np.asarray(n, dtype=np.int64), np.asarray(c, dtype=np.int64))
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got {k}")
    if (n_arr < k).any():
        raise ValueError(f"pass@{k} needs at least {k} samples per item, got {int(n_arr.min())}")
    if (c_arr < 0).any() or (c_arr > n_arr).any():
        raise ValueError("pass@k needs 0 <= correct <= samples on every item")
    out = np.ones(n_arr.shape, dtype=np.float64)
    for idx in np.ndindex(n_arr.shape):
        nn, cc = int(n_arr[idx]), int(c_arr[idx])
        if nn - cc >= k:
            # exact: P(no correct among k) = C(n - c, k) / C(n, k) as a fraction of integers, rounded once
            out[idx] = float(Fraction(math.comb(nn, k) - math.comb(nn - cc, k), math.comb(nn, k)))
    return out


def per_item_pass_at_k(samples: pd.DataFrame, ks: list[int]) -> pd.DataFrame:
    """pass@k per item from graded samples (columns ``id``, ``correct`` in {0, 1}): index id (first-seen
    order), columns ``n``, ``c`` and ``pass@{k}`` for each k."""
    g = samples.groupby("id", sort=False)["correct"]
    n, c = g.size(), g.sum().astype(int)
    out = pd.DataFrame({"n": n, "c": c})
    for k in ks:
        out[f"pass@{k}"] = pass_at_k(n.to_numpy(), c.to_numpy(), k)
    return out


def per_item_log_ratio(samples: pd.DataFrame, sign: float = 1.0) -> pd.DataFrame:
    """Per-item sums over samples of ``sign * (logp - logp_base)`` (nats) and of ``n_tokens``, and the
    sample count: index id (first-seen order), columns ``log_ratio_sum``, ``tokens``, ``n``.

    ``sign = 1`` on the tuned model's samples gives KL(tuned || base); ``sign = -1`` on the base's
    samples (scored under the tuned model as ``logp``) gives KL(base || tuned).
    """
    if samples[["logp", "logp_base"]].isna().any().any():
        raise ValueError("KL needs every sample scored under both models (a logp or logp_base is missing)")
    d = samples.assign(_lr=sign * (samples["logp"] - samples["logp_base"]))
    g = d.groupby("id", sort=False)
    return pd.DataFrame({"log_ratio_sum": g["_lr"].sum(), "tokens": g["n_tokens"].sum(), "n": g.size()})


def kl_sequence(log_ratio_sum: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Per-item KL per completion (nats): each item's mean log-ratio over its samples."""
    return np.asarray(log_ratio_sum, dtype=np.float64) / np.asarray(n, dtype=np.float64)


def kl_token(log_ratio_sum: np.ndarray, tokens: np.ndarray, axis: int = -1) -> np.ndarray:
    """The KL per token (nats) of a set of items: total log-ratio over total sampled tokens along ``axis``."""
    return np.sum(np.asarray(log_ratio_sum, dtype=np.float64), axis=axis) / np.sum(
        np.asarray(tokens, dtype=np.float64), axis=axis
    )


def path_gap(samples: pd.DataFrame) -> tuple[float, float]:
    """How far the engine's two paths put one model's log-probabilities apart on its own samples: (nats
    per sequence, nats per token) of ``logp_sampler - logp`` (decode path minus scoring path), the mean
    over samples and the ratio of sums over tokens, as :func:`kl_sequence` and :func:`kl_token` average a
    KL's log-ratios. It is the KL estimate of the model against itself through the two paths: what the
    numerics alone would add to a KL whose two terms came from different paths. NaN when no sample has
    a sampler log-probability (an engine with one path, or a table written before the column existed)."""
    if "logp_sampler" not in samples:
        return float("nan"), float("nan")
    s = samples[samples["logp_sampler"].notna() & samples["logp"].notna()]
    if s.empty:
        return float("nan"), float("nan")
    d = (s["logp_sampler"] - s["logp"]).to_numpy(dtype=np.float64)
    return float(d.mean()), float(d.sum() / s["n_tokens"].to_numpy(dtype=np.float64).sum())
