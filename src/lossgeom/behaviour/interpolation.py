"""Linear mode connectivity: the grid along the straight path between two adapters' deltas, and the
barrier of a curve measured along it. (The path's points themselves are put on the model by the
generation engines: :mod:`lossgeom.engines.adapters`.) ``a = 0`` is adapter 1, ``a = 1`` adapter 2.

``barrier`` summarises a curve: the largest excess of the curve over the straight line between its
endpoints (for a loss; for an accuracy, the largest shortfall below it).
"""

from __future__ import annotations

import numpy as np


def alpha_grid(n: int) -> np.ndarray:
    """``n`` evenly spaced points in [0, 1], endpoints included (n >= 2)."""
    if n < 2:
        raise ValueError(f"an interpolation grid needs at least 2 points, got {n}")
    return np.linspace(0.0, 1.0, n)


def barrier(alphas, values, higher_is_better: bool = False) -> float:
    """max_a [curve(a) - ((1-a) curve(0) + a curve(1))] for a loss; the sign is flipped for an
    accuracy. 0 means the curve never rises above (falls below) the line; NaN if an endpoint is NaN."""
    a, v = np.asarray(alphas, float), np.asarray(values, float)
    order = np.argsort(a)
    a, v = a[order], v[order]
    if a[0] != 0.0 or a[-1] != 1.0:
        raise ValueError("the alpha grid must include both endpoints 0 and 1")
    line = (1 - a) * v[0] + a * v[-1]
    excess = (line - v) if higher_is_better else (v - line)
    return float(max(0.0, np.nanmax(excess))) if np.isfinite([v[0], v[-1]]).all() else float("nan")
