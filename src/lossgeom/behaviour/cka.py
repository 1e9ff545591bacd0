"""Linear centred kernel alignment (CKA) between representations (the paper's representation analysis).

Conventions
-----------
A *representation* is a float array ``X`` of shape ``(n, d)``: row ``i`` is the feature vector
of example ``i`` (e.g. one pooled hidden state per GSM8K prompt), ``d`` the feature width. Two
representations are compared only on the *same* examples in the *same* row order, so ``n`` must
match; the widths ``d1``, ``d2`` may differ. How tokens are pooled into one row per prompt is the
caller's choice (and must be stated there). Inputs are converted to float64 and column-centred
here, so callers need not centre.

Linear CKA (Kornblith et al. 2019) with centred ``X``, ``Y``::

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)
              = <K, L>_F / (||K||_F * ||L||_F),     K = X X^T, L = Y Y^T   (n x n Gram matrices)

Both forms are the same number; they differ in cost. The feature-space form costs about
``n * (d1*d2 + d1^2 + d2^2)`` multiply-adds, the Gram form about ``n^2 * (d1 + d2)``. We pick
the cheaper one from the shapes (:func:`_use_gram`): for the paper's setting (n = 100 prompts,
d = 2560) that is the Gram form; for many examples of narrow features it is the feature form.

Biased CKA is inflated when ``d`` is comparable to or larger than ``n`` (two independent random
representations can score near 1). :func:`debiased_linear_cka` replaces each HSIC by the unbiased
U-statistic estimator of Song et al. (2012), as in Nguyen, Raghu & Kornblith (2021); it is close
to 0 for independent data, can be slightly negative, and needs ``n >= 4``.

Degenerate input (a representation that is constant over examples) makes CKA 0/0; both
functions return NaN there rather than raising, so one dead layer does not stop a sweep.
"""

from __future__ import annotations

from itertools import combinations_with_replacement
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import InputError
from ..fsutil import write_table

__all__ = ["linear_cka", "debiased_linear_cka", "cka_matrix", "cka_tables"]


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Biased linear CKA between ``X`` (n, d1) and ``Y`` (n, d2); a float in [0, 1] (or NaN).

    Symmetric, 1 for ``X == Y``, invariant to orthogonal transforms and isotropic scaling of
    either argument and to translations of the features (inputs are centred here).

    Raises :class:`ValueError` if the inputs are not 2-D, have different numbers of rows ``n``,
    have fewer than 2 rows or contain non-finite values.
    """
    Xc, Yc = _prepare(X, Y, min_n=2)
    a, b = _Rep(Xc), _Rep(Yc)
    return _ratio(_cross(a, b), a.self_dot, b.self_dot)


def debiased_linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Debiased linear CKA between ``X`` (n, d1) and ``Y`` (n, d2), with ``n >= 4``.

    Each of the three HSIC terms of CKA is replaced by the unbiased estimator (Song et al. 2012)

        HSIC_u(K, L) = [tr(K~ L~) + (1'K~1)(1'L~1) / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))

    where ``K~``, ``L~`` are the Gram matrices with their diagonals set to zero. With centred
    features ``K 1 = 0``, so ``K~ 1 = -diag(K)`` and the estimator reduces to

        n(n-3) HSIC_u = <K, L> - n/(n-2) diag(K).diag(L) + tr(K) tr(L) / ((n-1)(n-2)),

    which needs only ``<K, L> = ||Y^T X||_F^2`` (computed in the cheaper form) and the row norms.
    The common factor ``1/(n(n-3))`` cancels in the ratio. The result is NaN if a self term is
    not positive (possible for degenerate or tiny samples). Same invariances as
    :func:`linear_cka`; not bounded below by 0.
    """
    Xc, Yc = _prepare(X, Y, min_n=4)
    a, b = _Rep(Xc), _Rep(Yc)
    n = Xc.shape[0]
    return _ratio(
        _debias(_cross(a, b), a, b, n),
        _debias(a.self_dot, a, a, n),
        _debias(b.self_dot, b, b, n),
    )


def cka_matrix(acts: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Biased and debiased linear CKA for every pair of models at every layer.

    Parameters
    ----------
    acts : mapping label -> array of shape (n_layers, n, d_label)
        Hidden states per model. All models must share ``n_layers`` and ``n`` (the same examples
        in the same order); widths may differ. Layer ``l`` of one model is compared only with
        layer ``l`` of another. ``n >= 4`` (the debiased estimator needs it).

    Returns
    -------
    Long DataFrame with columns ``model_a``, ``model_b`` (str labels), ``layer`` (int, the index
    along the first axis of the arrays), ``cka``, ``cka_debiased`` (float).

    Every unordered pair appears exactly once, as ``(a, b)`` with ``a`` before ``b`` in the
    mapping's order, **including each self pair** ``(a, a)`` once (value 1, up to rounding, or NaN
    for a constant layer), so a full symmetric model x model matrix per layer can be rebuilt from
    the frame alone. Rows are ordered by layer, then pair. Total rows:
    ``n_layers * k (k + 1) / 2`` for ``k`` models.

    Long because the linear and debiased estimators share one pass over the layers and the pairs; split,
    they would recompute the centred Grams.
    """
    if len(acts) == 0:
        raise ValueError("cka_matrix needs at least one model")
    labels = list(acts)
    arrays = {}
    for label in labels:
        arr = np.asarray(acts[label], dtype=np.float64)
        if arr.ndim != 3:
            raise InputError(f"activations of {label!r} must have shape (n_layers, n, d), got {arr.shape}")
        arrays[label] = arr
    n_layers, n = arrays[labels[0]].shape[:2]
    for label, arr in arrays.items():
        if arr.shape[:2] != (n_layers, n):
            raise InputError(
                f"activations of {label!r} have (n_layers, n) = {arr.shape[:2]}, expected "
                f"{(n_layers, n)} like {labels[0]!r}"
            )
    if n < 4:
        raise InputError(f"CKA needs at least 4 probes, the activations hold {n}: raise cka.n_probe")

    rows = []
    pairs = list(combinations_with_replacement(labels, 2))
    for layer in range(n_layers):
        # centre each model's layer once and cache its self terms (and Gram, if used) for all pairs
        reps = {}
        for label in labels:
            x = arrays[label][layer]
            if not np.isfinite(x).all():
                raise InputError(f"activations of {label!r} at layer {layer} are not finite")
            reps[label] = _Rep(x - x.mean(axis=0))
        for la, lb in pairs:
            a, b = reps[la], reps[lb]
            xy = _cross(a, b)
            rows.append(
                {
                    "model_a": la,
                    "model_b": lb,
                    "layer": layer,
                    "cka": _ratio(xy, a.self_dot, b.self_dot),
                    "cka_debiased": _ratio(
                        _debias(xy, a, b, n), _debias(a.self_dot, a, a, n), _debias(b.self_dot, b, b, n)
                    ),
                }
            )
    return pd.DataFrame(rows, columns=["model_a", "model_b", "layer", "cka", "cka_debiased"])


# --------------------------------------------------------------------------------------------
# internals
# --------------------------------------------------------------------------------------------
def _use_gram(n: int, d1: int, d2: int) -> bool:
    """True when the n x n Gram form of ``||Y^T X||_F^2`` is cheaper than the feature form.

    Feature form: Y^T X, X^T X, Y^T Y cost n*(d1*d2 + d1^2 + d2^2).
    Gram form:    X X^T, Y Y^T cost n^2*(d1 + d2), plus O(n^2) for the inner products.
    """
    return n * (d1 + d2 + 1) < d1 * d2 + d1 * d1 + d2 * d2


class _Rep:
    """A centred representation (n, d) with cached pieces shared by all pairs it is in."""

    def __init__(self, xc: np.ndarray):
        self.x = xc
        self.n, self.d = xc.shape
        self.row_sq = np.einsum("ij,ij->i", xc, xc)  # diag(K), shape (n,)
        self.trace = float(self.row_sq.sum())  # tr(K) = ||X||_F^2
        self._gram: np.ndarray | None = None
        # ||X^T X||_F^2 = ||X X^T||_F^2, via the cheaper side of this one representation
        if self.n < self.d:
            self.self_dot = float(np.sum(self.gram * self.gram))
        else:
            xtx = xc.T @ xc
            self.self_dot = float(np.sum(xtx * xtx))

    @property
    def gram(self) -> np.ndarray:
        if self._gram is None:
            self._gram = self.x @ self.x.T
        return self._gram


def _cross(a: _Rep, b: _Rep) -> float:
    """``||Y^T X||_F^2 = <K, L>_F`` in whichever form is cheaper for these shapes."""
    if a is b:
        return a.self_dot
    if _use_gram(a.n, a.d, b.d):
        return float(np.sum(a.gram * b.gram))
    ytx = b.x.T @ a.x
    return float(np.sum(ytx * ytx))


def _debias(dot: float, a: _Rep, b: _Rep, n: int) -> float:
    """n(n-3) times the unbiased HSIC for centred features, given ``<K, L>`` (see docstring)."""
    return dot - n / (n - 2.0) * float(a.row_sq @ b.row_sq) + a.trace * b.trace / ((n - 1.0) * (n - 2.0))


def _ratio(xy: float, xx: float, yy: float) -> float:
    if not (xx > 0 and yy > 0):  # constant representation, or a non-positive unbiased estimate
        return float("nan")
    return float(xy / np.sqrt(xx * yy))


def _prepare(X: np.ndarray, Y: np.ndarray, min_n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(X, dtype=np.float64)
    y = np.asarray(Y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"X and Y must be 2-D (n, d); got shapes {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"X and Y must have the same number of examples n (rows); got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < min_n:
        raise ValueError(f"need at least {min_n} examples, got {x.shape[0]}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("X and Y must be finite")
    return x - x.mean(axis=0), y - y.mean(axis=0)


def cka_tables(activations: dict[str, Path], out: Path) -> pd.DataFrame:
    """Linear and debiased CKA of every model pair (base included), per layer; writes the table."""
    acts, ids = {}, None
    for label, path in activations.items():
        try:
            with np.load(path) as z:
                z_ids, z_acts = z["ids"], z["acts"]
        except (OSError, ValueError, KeyError, EOFError) as e:  # not an npz, truncated, or another layout
            raise InputError(
                f"{path}: not an activations file of 'lossgeom evaluate' (its activations measure) ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:160]})"
            ) from None
        if ids is not None and not np.array_equal(ids, z_ids):
            raise InputError(f"activations {path} were taken on other probes than the first model's")
        ids = z_ids
        acts[label] = z_acts.astype(np.float64)
    table = cka_matrix(acts)
    write_table(table, out)
    return table
