"""Every pair of adapters at once: Frobenius inner products and principal angles per module.

Metrics (``a``, ``b`` adapters; ``dW = s B A`` per module; all maths in float64):

* ``inner``: ``<dW_a, dW_b>_F`` per module, from which cosines (global: all modules stacked into
  one vector; per layer; per module) and norms follow. Exact from the factors: the Gram matrices of
  all adapters' factors stacked per module (one BLAS ``syrk`` per side), so they are exact to
  rounding and gauge-free.
* principal angles between the top-``k`` left (output, ``side=left``) and right (input,
  ``side=right``) singular subspaces of each module, ``k`` clamped to both modules' numerical
  ranks, so both subspaces of a pair are ``k``-dimensional. They come from the singular values
  (cosines) of the ``k x k`` products ``U_a^T U_b``, whose angle error is about
  ``eps / sin(theta)``; where a top-1 angle is below ``SMALL_ANGLE_SWITCH_RAD`` the module's angles
  are recomputed with the sine formula on the explicit vectors
  (:func:`lossgeom.lora.lowrank.principal_angles`, the algorithm of
  ``scipy.linalg.subspace_angles``), so near-zero angles keep full relative accuracy.
* ``agreement``: ``|<u1_a, u1_b>|`` (left) and ``|<v1_a, v1_b>|`` (right) per module.

Cost. The all-pairs Gram matrices are the bulk of the work: ``sum_modules (d_out + d_in) (n r)^2 / 2``
multiply-adds (54 G for 12 rank-32 adapters of Qwen3-4B's attention, ~2.5 s on one core). On hosts
whose cores are shared with other jobs, running BLAS single-threaded (``OPENBLAS_NUM_THREADS=1``)
avoids OpenBLAS's thread hand-offs, which were 2-3x slower there; on hosts with transparent-huge-page
defrag set to ``madvise``, ``NUMPY_MADVISE_HUGEPAGE=0`` makes the first touch of the float64 factors
about 3x faster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.linalg.blas import dsyrk

from ..errors import InputError
from ..lora import lowrank
from ..lora.adapters import check_compatible
from .factors import FactorCache, FactorCacheError

log = logging.getLogger(__name__)
SMALL_ANGLE_SWITCH_RAD = 1e-3  # below: recompute angles with the sine formula on explicit vectors


@dataclass
class PairGeometry:
    """Everything pairwise, as arrays (``n`` labels, ``M`` modules, ``P = n(n-1)/2`` pairs).

    Attributes:
        labels: ``(n,)``. module_names, module_layers, module_shapes: per module (``M``).
        pairs: ``(P, 2)`` index pairs ``i < j`` (row-major upper triangle).
        inner: ``(M, n, n)`` Frobenius inner products per module (symmetric; diagonal = norm^2).
        angles: ``{"left", "right"} -> (M, P, k)`` principal angles in radians, ascending, ``nan``
            beyond the pair's ``k`` (``k = min(top_k, numerical ranks)``).
        k_used: ``{"left", "right"} -> (M, P)`` number of angles.
        agreement: ``{"left", "right"} -> (M, P)`` ``|<u1_a, u1_b>|`` / ``|<v1_a, v1_b>|``.
        top_k: requested ``k``. n_sine_recomputed: entries recomputed with the sine formula (-1 for a
            :meth:`subset`, whose count is its parent's).
    """

    labels: list[str]
    module_names: list[str]
    module_layers: np.ndarray
    module_shapes: list[tuple[int, int]]
    pairs: np.ndarray
    inner: np.ndarray
    angles: dict[str, np.ndarray]
    k_used: dict[str, np.ndarray]
    agreement: dict[str, np.ndarray]
    top_k: int
    n_sine_recomputed: int = 0

    # -- aggregates -------------------------------------------------------------------------
    def layers(self) -> np.ndarray:
        """Sorted distinct layer indices (-1 collects modules without one)."""
        return np.unique(self.module_layers)

    def inner_by_layer(self) -> np.ndarray:
        """``(n_layers, n, n)`` inner products summed over each layer's modules."""
        lay = self.layers()
        return np.stack([self.inner[self.module_layers == L].sum(axis=0) for L in lay])

    def inner_global(self) -> np.ndarray:
        return self.inner.sum(axis=0)

    @staticmethod
    def cosine_of(ip: np.ndarray) -> np.ndarray:
        """Cosine matrix from an inner-product matrix ``(..., n, n)`` (``nan`` for zero norms)."""
        d = np.sqrt(np.clip(np.diagonal(ip, axis1=-2, axis2=-1), 0.0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            c = ip / (d[..., :, None] * d[..., None, :])
        return np.clip(c, -1.0, 1.0)

    def norms(self) -> np.ndarray:
        """``(n,)`` global Frobenius norms."""
        return np.sqrt(np.clip(np.diagonal(self.inner_global()), 0.0, None))

    def subset(self, labels: Sequence[str], rename: Sequence[str] | None = None) -> "PairGeometry":
        """The geometry of ``labels`` alone (in that order), as :func:`pairwise_geometry` of their caches
        would compute it: every pair's numbers depend on that pair only, so they are sliced, not redone.

        Args:
            labels: labels of this geometry, at least 2, unique. rename: new labels, one per label (e.g. a
                saved step's ``"sft/seed42@25"`` -> ``"sft/seed42"``, so the noise floors parse them).
        """
        idx = [self.labels.index(l) for l in labels]
        if rename is not None and len(rename) != len(idx):
            raise ValueError(f"PairGeometry.subset: {len(rename)} new labels for {len(idx)} labels")
        if len(idx) < 2 or len(set(idx)) != len(idx):
            raise ValueError(f"PairGeometry.subset: need at least 2 distinct labels, got {list(labels)}")
        n = len(self.labels)
        iu = np.triu_indices(len(idx), 1)
        a, b = np.asarray(idx)[iu[0]], np.asarray(idx)[iu[1]]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        # index of pair (lo, hi), lo < hi, in the row-major upper triangle of n labels
        p = lo * n - lo * (lo + 1) // 2 + (hi - lo - 1)
        return PairGeometry(
            labels=list(rename) if rename is not None else list(labels),
            module_names=self.module_names,
            module_layers=self.module_layers,
            module_shapes=self.module_shapes,
            pairs=np.stack(iu, axis=1),
            inner=self.inner[:, idx][:, :, idx],
            angles={s: v[:, p] for s, v in self.angles.items()},
            k_used={s: v[:, p] for s, v in self.k_used.items()},
            agreement={s: v[:, p] for s, v in self.agreement.items()},
            top_k=self.top_k,
            n_sine_recomputed=-1,  # not known for a slice: the count is of the whole computation
        )


def _stack_columns(mats: Sequence[np.ndarray], widths: Sequence[int], out: np.ndarray) -> np.ndarray:
    """Copy ``mats[i][:, :widths[i]]`` side by side into ``out`` (zero-padded to equal widths)."""
    w = out.shape[1] // len(mats)
    out.fill(0.0)
    for i, (m, k) in enumerate(zip(mats, widths)):
        out[:, i * w : i * w + k] = m[:, :k]
    return out


class _Scratch:
    """Scratch arrays for one role (``"B"``, ``"A"``, ``"left"``, ``"right"``), reused across modules to
    avoid page-faulting fresh memory. Keyed by role, never by shape: two roles alive at once (stacked B
    and stacked A) must never share memory, even when their shapes coincide (a square module with
    ``d == n * r``)."""

    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}

    def __call__(self, role: str, shape: tuple[int, int]) -> np.ndarray:
        b = self.buffers.get(role)
        if b is None or b.shape != shape:
            b = self.buffers[role] = np.empty(shape)
        return b


def _module_inner(mods: list, buf: _Scratch) -> np.ndarray:
    """(n, n) Frobenius inner products <dW_i, dW_j> of one module across the n adapters:
    tr((B_i^T B_j)(A_j A_i^T)) = sum((B_i^T B_j) * (A_i A_j^T)), from the Grams of all adapters'
    factors stacked side by side (one syrk per side)."""
    d_out, d_in = mods[0].shape
    offs = np.concatenate([[0], np.cumsum([m.rank for m in mods])])
    R, n = int(offs[-1]), len(mods)
    Bs = buf("B", (d_out, R))
    for i, m in enumerate(mods):
        Bs[:, offs[i] : offs[i + 1]] = m.B
    As = buf("A", (R, d_in))
    for i, m in enumerate(mods):
        As[offs[i] : offs[i + 1]] = m.A
    GB = dsyrk(1.0, Bs.T, trans=0)  # upper triangle of Bs^T Bs; strict lower is 0
    GA = dsyrk(1.0, As.T, trans=1)  # upper triangle of As As^T
    blocks = np.add.reduceat(np.add.reduceat(GB * GA, offs[:-1], axis=0), offs[:-1], axis=1)
    scl = np.array([m.scale for m in mods])
    ip = np.triu(blocks, 1) * np.outer(scl, scl)
    ip = ip + ip.T
    ip[np.diag_indices(n)] = [float(np.sum(m.S**2)) for m in mods]  # diagonal blocks: only half in syrk
    return ip


def _module_subspaces(vecs: list[np.ndarray], mods: list, kk: int, iu, X: np.ndarray):
    """One side (left: U, right: V) of one module: for every pair p of ``iu``, the cosines of the
    principal angles between the two top-k subspaces (singular values of U_i^T U_j, (P, kk)), the k
    used (P,) and |cos| of the two top-1 directions (P,; NaN where k = 0). ``X``: (dim, n * kk) scratch."""
    n = len(mods)
    widths = [min(kk, v.shape[1], m.numerical_rank) for v, m in zip(vecs, mods)]
    X = _stack_columns(vecs, widths, X)
    G = dsyrk(1.0, X.T, trans=0).reshape(n, kk, n, kk).transpose(0, 2, 1, 3)
    C = G[iu]  # (P, kk, kk): C[p] = X_i^T X_j
    k_pair = np.minimum(np.asarray(widths)[iu[0]], np.asarray(widths)[iu[1]])
    # Both subspaces of a pair are k_pair-dimensional: keep only U_i[:, :k]^T U_j[:, :k].
    # (The wider adapter's extra vectors are non-zero; left in, they would give angles
    # between a k-dim and a wider subspace, which are too small.)
    C[np.arange(kk)[None, :] >= k_pair[:, None]] = 0.0  # rows beyond k
    C.transpose(0, 2, 1)[np.arange(kk)[None, :] >= k_pair[:, None]] = 0.0  # columns beyond k
    return np.linalg.svd(C, compute_uv=False), k_pair, np.where(k_pair > 0, np.abs(C[:, 0, 0]), np.nan)


def _angles(cosines: np.ndarray, k_used: np.ndarray, side: str, cs: list, names: list, iu) -> tuple[np.ndarray, int]:
    """Principal angles (radians, ascending; NaN beyond each pair's k) from their cosines (M, P, kk), with
    the smallest redone by the sine formula (arccos loses accuracy there: error ~ eps / sin theta).
    Returns (angles, how many module-pairs were redone)."""
    kk = cosines.shape[2]
    ang = np.arccos(np.clip(cosines, -1.0, 1.0))
    ang[np.arange(kk)[None, None, :] >= k_used[:, :, None]] = np.nan
    small = np.argwhere(ang[:, :, 0] < SMALL_ANGLE_SWITCH_RAD)
    for mi, p in small:
        i, j = iu[0][p], iu[1][p]
        k = int(k_used[mi, p])
        mi_, mj_ = cs[i].modules[names[mi]], cs[j].modules[names[mi]]
        Qi, Qj = (mi_.U, mj_.U) if side == "left" else (mi_.V, mj_.V)
        ang[mi, p, :k] = lowrank.principal_angles(Qi[:, :k], Qj[:, :k])
    return ang, len(small)


def pairwise_geometry(caches: Mapping[str, FactorCache], top_k: int = 10, progress: bool = False) -> PairGeometry:
    """All-pairs geometry from factor caches (see the module docstring for the metrics).

    Args:
        caches: label -> :class:`FactorCache`; order defines rows and columns. At least 2.
        top_k: subspace dimension for principal angles (clamped to each module's numerical rank
            and to the vectors the caches hold).
        progress: show a tqdm bar over modules.
    Raises:
        AdapterMismatchError: caches of different base models, target modules, modules or shapes.
        ValueError: fewer than 2 caches, or ``top_k`` above what a cache stores (rebuild it).

    Long because it allocates the result arrays and runs the per-module loop; the maths is in the three
    helpers it calls.
    """
    labels = list(caches)
    cs = [caches[l] for l in labels]
    if len(cs) < 2:
        raise InputError(f"the geometry compares at least 2 adapters (or saved steps); given {len(cs)}: {labels}")
    check_compatible(cs)
    n = len(cs)
    for c, l in zip(cs, labels):
        if c.norm == 0:  # every cosine and angle with it is 0/0: NaN in the tables, said here
            # not an error: online GRPO on a base that never earns a reward legitimately ends where it began
            log.warning(
                "adapter %r (%s): its delta is zero in every module (lora_B or lora_A all zero: an untrained "
                "adapter, or a run without a learning signal); its cosines and angles are undefined (nan)",
                l,
                c.source,
            )
        if c.top_k < top_k and any(m.rank > c.top_k for m in c.modules.values()):
            raise FactorCacheError(
                f"factor cache of {l!r} ({c.source}) holds {c.top_k} vectors, {top_k} requested: rebuild it"
            )
    names = list(cs[0].modules)
    M = len(names)
    iu = np.triu_indices(n, 1)
    P = len(iu[0])
    inner = np.zeros((M, n, n))
    kk = max(1, int(top_k))
    cosines = {s: np.full((M, P, kk), np.nan) for s in ("left", "right")}
    k_used = {s: np.zeros((M, P), dtype=np.int64) for s in ("left", "right")}
    agreement = {s: np.full((M, P), np.nan) for s in ("left", "right")}
    shapes, layers, buf = [], np.empty(M, dtype=np.int64), _Scratch()
    it = range(M)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="geometry: modules", unit="module")
    for mi in it:
        mods = [c.modules[names[mi]] for c in cs]
        d_out, d_in = mods[0].shape
        shapes.append((d_out, d_in))
        layers[mi] = mods[0].layer
        inner[mi] = _module_inner(mods, buf)
        for side, vecs, dim in (("left", [m.U for m in mods], d_out), ("right", [m.V for m in mods], d_in)):
            cosines[side][mi], k_used[side][mi], agreement[side][mi] = _module_subspaces(
                vecs, mods, kk, iu, buf(side, (dim, n * kk))
            )
    angles, n_sine = {}, 0
    for side in ("left", "right"):
        angles[side], redone = _angles(cosines[side], k_used[side], side, cs, names, iu)
        n_sine += redone
    return PairGeometry(
        labels=labels,
        module_names=names,
        module_layers=layers,
        module_shapes=shapes,
        pairs=np.stack(iu, axis=1),
        inner=inner,
        angles=angles,
        k_used=k_used,
        agreement=agreement,
        top_k=kk,
        n_sine_recomputed=n_sine,
    )
