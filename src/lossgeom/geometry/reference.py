"""The level each headline metric takes for unrelated adapters (random directions and subspaces)."""

from __future__ import annotations

import numpy as np

from ..lora import lowrank
from .pairwise import PairGeometry
from .reductions import nanmedian0

RANDOM_MC_SAMPLES = 4000
RANDOM_MC_SEED = 0

_MC_MEMO: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}


def _random_angles_deg(k: int, n: int) -> tuple[float, float]:
    """Monte-Carlo expected (top-1, worst) principal angle in degrees, k-dim subspaces of R^n."""
    if k < 1:
        return float("nan"), float("nan")
    key = (k, k, n)
    if key not in _MC_MEMO:
        _MC_MEMO[key] = lowrank.random_principal_angles(k, k, n, RANDOM_MC_SAMPLES, RANDOM_MC_SEED)
    mean, _ = _MC_MEMO[key]
    return float(np.degrees(mean[0])), float(np.degrees(mean[-1]))


def random_reference(geo: PairGeometry) -> dict[str, np.ndarray]:
    """Per pair (``(P,)`` arrays), the value each headline metric takes for unrelated adapters.

    * ``cosine_global``: exact ``E|cos|`` of uniform random directions in ``R^D``,
      ``D = sum_modules d_out d_in`` (:func:`lossgeom.lora.lowrank.expected_abs_cosine_random`).
    * ``orthogonal_fraction_global``: exact ``E sqrt(1 - cos^2)`` in ``R^D``.
    * ``top1_angle_{side}_median`` / ``worst_angle_{side}_median``: the median over modules of the
      expected smallest / largest principal angle (degrees) between random ``k``-dim subspaces of
      ``R^d`` (``d = d_out`` left, ``d_in`` right; ``k`` the pair's ``k`` at that module), by the
      seeded Monte Carlo of :func:`lossgeom.lora.lowrank.random_principal_angles` (standard error
      below 0.05 degrees).
    * ``u1_agreement`` / ``v1_agreement``: mean over modules of the exact ``E|<u, u'>|`` in ``R^d``.
    * IQRs and ``norm_ratio`` have no reference (``nan``).
    """
    P = len(geo.pairs)
    D = float(sum(a * b for a, b in geo.module_shapes))
    out = {
        "cosine_global": np.full(P, lowrank.expected_abs_cosine_random(D)),
        "orthogonal_fraction_global": np.full(P, lowrank.expected_sine_random(D)),
    }
    for side, dim_i, key in (("left", 0, "u1_agreement"), ("right", 1, "v1_agreement")):
        dims = np.array([s[dim_i] for s in geo.module_shapes])
        out[key] = np.full(P, float(np.mean(lowrank.expected_abs_cosine_random(dims))))
        ku = geo.k_used[side]
        top1 = np.full(ku.shape, np.nan)
        worst = np.full(ku.shape, np.nan)
        for k, d in {(int(k), int(d)) for k, d in zip(ku.ravel(), np.repeat(dims, ku.shape[1]))}:
            t, w = _random_angles_deg(k, d)
            sel = (ku == k) & (dims[:, None] == d)
            top1[sel], worst[sel] = t, w
        with np.errstate(all="ignore"):
            out[f"top1_angle_{side}_median"] = nanmedian0(top1)
            out[f"worst_angle_{side}_median"] = nanmedian0(worst)
    return out
