"""Optional: how much of each delta's top singular directions lies in the base weights' top subspaces."""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np
import pandas as pd

from ..lora.adapters import AdapterMismatchError, canonical_module_name
from .factors import FactorCache


def _top_k_subspaces(W0: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` left ``(d_out, k)`` and right ``(d_in, k)`` singular vectors of a dense ``W0``."""
    W0 = np.asarray(W0, dtype=np.float64)
    if k < min(W0.shape) // 4 and min(W0.shape) > 512:
        from scipy.sparse.linalg import svds  # exact to ARPACK's tol=0 (machine precision)

        u, s, vt = svds(W0, k=k, tol=0, random_state=0)
        order = np.argsort(s)[::-1]
        return u[:, order], vt[order].T
    u, s, vt = np.linalg.svd(W0, full_matrices=False)
    return u[:, :k], vt[:k].T


def canonical_base_weights(base_weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Base weights keyed by canonical module name (from a canonical name, or a PEFT/transformers key
    such as ``model.layers.3.self_attn.q_proj.weight`` or ``base_model.model.model.layers...``)."""
    out = {}
    for key, w in base_weights.items():
        out[canonical_module_name(re.sub(r"\.weight$", "", re.sub(r"^base_model\.model\.", "", key)))] = w
    return out


def base_alignment(
    caches: Mapping[str, FactorCache], base_weights: Mapping[str, np.ndarray], top_k: int = 10
) -> pd.DataFrame:
    """How much of each delta's top singular directions lies in the base weight's top subspace.

    For each adapter and module with a base weight ``W0`` ``(d_out, d_in)``: with ``u_l, s_l`` the
    delta's top-``k`` left singular pairs and ``P0`` the projector onto ``W0``'s top-``k`` left
    singular subspace, ``fraction = sum_l s_l^2 ||P0 u_l||^2 / sum_l s_l^2`` (energy-weighted;
    1 = inside, 0 = orthogonal); the same on the right (input) side with ``V`` and ``W0``'s right
    singular vectors. ``random = k / d`` is the expected value for a random direction.

    Args:
        base_weights: module name (canonical, or a PEFT/transformers key such as
            ``model.layers.3.self_attn.q_proj.weight``) -> dense ``W0``.
    Returns:
        DataFrame ``label, module, layer, side, k, fraction, random``.
    Raises:
        AdapterMismatchError: a base weight's shape differs from the module's ``(d_out, d_in)``.
    """
    bw = canonical_base_weights(base_weights)
    rows = []
    for name, W0 in bw.items():
        present = [(l, c.modules[name]) for l, c in caches.items() if name in c.modules]
        if not present:
            continue
        shp = present[0][1].shape
        if tuple(np.shape(W0)) != shp:
            raise AdapterMismatchError(
                f"base weight of {name!r}: expected shape (d_out, d_in) = {shp}, found {np.shape(W0)}"
            )
        k0 = min(top_k, *shp)
        U0, V0 = _top_k_subspaces(W0, k0)
        for label, m in present:
            k = min(top_k, m.U.shape[1], m.numerical_rank)
            if k == 0:
                continue
            e = m.S[:k] ** 2
            for side, Q, Q0, d in (("left", m.U, U0, shp[0]), ("right", m.V, V0, shp[1])):
                proj = np.sum((Q0.T @ Q[:, :k]) ** 2, axis=0)  # ||P0 q_l||^2
                rows.append((label, name, m.layer, side, k, float(np.sum(e * proj) / np.sum(e)), k0 / d))
    return pd.DataFrame(rows, columns=["label", "module", "layer", "side", "k", "fraction", "random"])
