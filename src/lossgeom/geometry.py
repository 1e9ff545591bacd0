"""Weight-space geometry of every pair of LoRA adapters, from per-adapter factor caches.

Two stages:

1. :func:`build_factor_cache` (once per adapter): the factors ``B``, ``A`` and scale of every
   module plus its thin SVD summary: singular values, the top-``k`` left / right singular vectors
   (explicit, orthonormal), numerical rank, norm, effective rank and stable rank. Saved and loaded
   with :func:`save_factor_cache` / :func:`load_factor_cache` (safetensors, with the adapter's
   fingerprint).
2. :func:`pairwise_geometry` (all pairs at once) and :func:`write_geometry` (tables).

Metrics (``a``, ``b`` adapters; ``dW = s B A`` per module; all maths in float64):

* ``cosine``: ``<dW_a, dW_b>_F / (||dW_a|| ||dW_b||)``: global (all modules stacked into one
  vector), per layer (that layer's modules stacked), per module. Exact from the factors.
* ``orthogonal_fraction``: ``||dW_b - P_a dW_b|| / ||dW_b||`` with ``P_a`` the projection onto the
  direction of ``dW_a`` (global, or per layer with both restricted to the layer). Projection onto a
  single direction makes it ``sqrt(1 - cos^2)``, the same both ways.
* ``norm_ratio``: ``||dW_b||_F / ||dW_a||_F`` (square matrix entry ``[a, b]``; global).
* principal angles between the top-``k`` left (output, ``side=left``) and right (input,
  ``side=right``) singular subspaces of each module, in **degrees** in the tables, ``k`` clamped to
  both modules' ranks; the top-1 (smallest) and the worst (``k``-th, largest) angle per module;
  their median and IQR (75th - 25th percentile) over modules.
* ``top1_agreement``: ``|<u1_a, u1_b>|`` (left) and ``|<v1_a, v1_b>|`` (right) per module, and
  the mean over modules.

Noise floor: labels ``"{method}/seed{seed}"`` define methods (a label that does not parse is its
own method). Beside each cross-method value, ``noise_floor.tsv`` gives the mean of the same
metric over the same-method, different-seed pairs of each method, and the value expected for
unrelated directions (see :func:`random_reference`).

Numerics. Inner products come from the Gram matrices of all adapters' factors stacked per module
(one BLAS ``syrk`` per module side), so they are exact to rounding and gauge-free. Per-module SVDs
use CholeskyQR, batched over modules of one shape: the ``R`` of ``B = Q R`` is the Cholesky factor
of ``B^T B``, and ``U_k = B R^{-1} W_k`` costs one ``(d, r) x (r, k)`` product. Modules where this
could lose accuracy (a failed Cholesky, ``cond(B)`` or ``cond(A)`` above ``CHOLQR_MAX_COND``, or
``s ||B|| ||A|| / sigma_k`` above ``CHOLQR_MAX_KAPPA``) take Householder QR instead
(:func:`lossgeom.lowrank.thin_svd`). Principal angles come from the singular values (cosines) of
the ``k x k`` products ``U_a^T U_b``, whose angle error is about ``eps / sin(theta)``; where a
top-1 angle is below ``SMALL_ANGLE_SWITCH_RAD`` the module's angles are recomputed with the sine
formula on the explicit vectors (:func:`lossgeom.lowrank.principal_angles`, the algorithm of
``scipy.linalg.subspace_angles``), so near-zero angles keep full relative accuracy.

Cost. The all-pairs Gram matrices are the bulk of the work: ``sum_modules (d_out + d_in) (n r)^2 / 2``
multiply-adds (54 G for 12 rank-32 adapters of Qwen3-4B's attention, ~2.5 s on one core), against
``n (d_out + d_in) r^2`` for the caches. On hosts whose cores are shared with other jobs, running
BLAS single-threaded (``OPENBLAS_NUM_THREADS=1``) avoids OpenBLAS's thread hand-offs, which were
2-3x slower there; on hosts with transparent-huge-page defrag set to ``madvise``,
``NUMPY_MADVISE_HUGEPAGE=0`` makes the first touch of the float64 factors about 3x faster.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.linalg.blas import dsyrk

from . import lowrank
from .config import parse_label as config_parse_label
from .fsutil import atomic_path, write_table
from .adapters import (
    AdapterMismatchError,
    LoraAdapter,
    ShapeGroup,
    adapter_fingerprint,
    canonical_module_name,
    check_compatible,
    load_adapter,
)

__all__ = [
    "ModuleFactors",
    "FactorGroup",
    "FactorCache",
    "FactorCacheError",
    "PairGeometry",
    "build_factor_cache",
    "save_factor_cache",
    "load_factor_cache",
    "factor_cache_for_dir",
    "pairwise_geometry",
    "random_reference",
    "parse_label",
    "label_for_dir",
    "base_alignment",
    "write_geometry",
    "compare_adapter_dirs",
    "SQUARE_METRICS",
    "NOISE_FLOOR_METRICS",
]

log = logging.getLogger(__name__)

CACHE_FORMAT = "lossgeom.factor_cache"
CACHE_VERSION = 1
CHOLQR_MAX_COND = 1e7  # above this cond(B) or cond(A), use Householder QR for the module
CHOLQR_MAX_KAPPA = 1e3  # s||B|| ||A|| / sigma_k above this: Householder QR for the module
NUMERICAL_RANK_RTOL = 1e-10  # singular values <= rtol * sigma_1 count as zero
SMALL_ANGLE_SWITCH_RAD = 1e-3  # below: recompute angles with the sine formula on explicit vectors
RANDOM_MC_SAMPLES = 4000
RANDOM_MC_SEED = 0


class FactorCacheError(ValueError):
    """A factor cache file is unreadable, of another format, or stale (fingerprint mismatch)."""


# ============================================================================================
# Factor caches
# ============================================================================================


@dataclass(frozen=True)
class ModuleFactors:
    """One module of a :class:`FactorCache` (arrays are views into its :class:`FactorGroup`).

    Attributes:
        name, layer: canonical module name and layer index (-1 when the name has none).
        B: ``(d_out, r)``; A: ``(r, d_in)``; scale: ``dW = scale * B @ A``.
        S: ``(r,)`` singular values of ``dW``, descending (zero-padded if ``r > min(d_out, d_in)``).
        U: ``(d_out, k)`` top-``k`` left singular vectors, orthonormal. V: ``(d_in, k)`` right ones.
        numerical_rank: number of singular values above ``NUMERICAL_RANK_RTOL * S[0]``.
    """

    name: str
    layer: int
    B: np.ndarray
    A: np.ndarray
    scale: float
    S: np.ndarray
    U: np.ndarray
    V: np.ndarray
    numerical_rank: int

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.B.shape[0]), int(self.A.shape[1])

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def norm(self) -> float:
        """``||dW||_F``."""
        return float(np.sqrt(np.sum(self.S**2)))

    @property
    def effective_rank(self) -> float:
        return lowrank.effective_rank(self.S)

    @property
    def stable_rank(self) -> float:
        return lowrank.stable_rank(self.S)


@dataclass(frozen=True)
class FactorGroup:
    """Modules of one cache sharing ``(d_out, d_in, r)``, stacked (``m`` modules).

    Attributes: names ``(m,)``; layers ``(m,)`` int; B ``(m, d_out, r)``; A ``(m, r, d_in)``;
    scales ``(m,)``; S ``(m, r)``; U ``(m, d_out, k)``; V ``(m, d_in, k)``; numerical_rank ``(m,)``;
    householder ``(m,)`` bool, True where the Householder fallback was used.
    """

    names: tuple[str, ...]
    layers: np.ndarray
    B: np.ndarray
    A: np.ndarray
    scales: np.ndarray
    S: np.ndarray
    U: np.ndarray
    V: np.ndarray
    numerical_rank: np.ndarray
    householder: np.ndarray


@dataclass
class FactorCache:
    """Per-module factors and thin-SVD summaries of one adapter.

    Attributes:
        source: the adapter directory it was built from. label: e.g. ``"sft/seed42"`` (optional).
        fingerprint: :func:`lossgeom.adapters.adapter_fingerprint` of the adapter (``None`` if not
            computed). base_model_name_or_path, target_modules: from the adapter config.
        top_k: number of singular vectors stored per module (``U``, ``V`` have ``min(top_k, r)``).
        groups: ``(d_out, d_in, r)`` -> :class:`FactorGroup`. modules: name -> :class:`ModuleFactors`
            sorted by (layer, name).
    """

    source: str
    label: str | None
    fingerprint: str | None
    base_model_name_or_path: str | None
    target_modules: tuple[str, ...] | str
    top_k: int
    groups: dict[tuple[int, int, int], FactorGroup]
    modules: dict[str, ModuleFactors] = field(default_factory=dict)

    def __post_init__(self):
        if not self.modules:
            self.modules = _modules_from_groups(self.groups)

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        return {k: m.shape for k, m in self.modules.items()}

    @property
    def norm(self) -> float:
        """Global ``||dW||_F`` over all modules."""
        return float(np.sqrt(sum(float(np.sum(g.S**2)) for g in self.groups.values())))

    def summary(self) -> dict:
        """Per-adapter numbers: n modules, ranks, global norm, mean effective and stable rank."""
        S = [g.S for g in self.groups.values()]
        er = np.concatenate([np.atleast_1d(lowrank.effective_rank(s)) for s in S])
        sr = np.concatenate([np.atleast_1d(lowrank.stable_rank(s)) for s in S])
        ranks = [m.rank for m in self.modules.values()]
        return {
            "n_modules": len(self.modules),
            "rank_min": min(ranks),
            "rank_max": max(ranks),
            "norm": self.norm,
            "effective_rank_mean": float(np.nanmean(er)),
            "stable_rank_mean": float(np.nanmean(sr)),
            "n_householder_fallback": int(sum(int(g.householder.sum()) for g in self.groups.values())),
        }


def _modules_from_groups(groups: Mapping[tuple[int, int, int], FactorGroup]) -> dict[str, ModuleFactors]:
    mods = {}
    for g in groups.values():
        for i, name in enumerate(g.names):
            mods[name] = ModuleFactors(
                name=name, layer=int(g.layers[i]), B=g.B[i], A=g.A[i], scale=float(g.scales[i]),
                S=g.S[i], U=g.U[i], V=g.V[i], numerical_rank=int(g.numerical_rank[i]),
            )
    return dict(sorted(mods.items(), key=lambda kv: (kv[1].layer, kv[0])))


def _batched_cholesky(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower Cholesky factors of a stack ``(m, r, r)``; ``ok[i]`` False where ``G[i]`` is not PD
    (that factor is then the identity, to be replaced by the caller)."""
    try:
        return np.linalg.cholesky(G), np.ones(G.shape[0], dtype=bool)
    except np.linalg.LinAlgError:  # numpy fails the whole batch: redo one by one
        L = np.empty_like(G)
        ok = np.ones(G.shape[0], dtype=bool)
        for i in range(G.shape[0]):
            try:
                L[i] = np.linalg.cholesky(G[i])
            except np.linalg.LinAlgError:
                L[i] = np.eye(G.shape[1])
                ok[i] = False
        return L, ok


def _factor_group(B: np.ndarray, A: np.ndarray, scales: np.ndarray, k: int):
    """Thin SVD summaries of a stack of modules (see the module docstring, "Numerics").

    CholeskyQR: ``B = Qb Rb`` with ``Rb^T Rb = B^T B`` and ``A^T = Qa Ra`` likewise; the core
    ``s Rb Ra^T = W diag(S) Z^T`` (``r x r``); ``U_k = B (Rb^{-1} W_k)``, ``V_k = A^T (Ra^{-1} Z_k)``,
    one ``(d, r) x (r, k)`` product per side. The loss of orthogonality of ``U_k`` grows with
    ``kappa_k = s ||B|| ||A|| / sigma_k`` (in tests about ``eps * kappa_k``: 2e-13 at ``kappa_k``
    = 1e3 with ``cond(B)`` = 1e7), so modules with ``kappa_k > CHOLQR_MAX_KAPPA``, ``cond(B)`` or
    ``cond(A) > CHOLQR_MAX_COND``, or a failed Cholesky take Householder QR instead.

    Args: B ``(m, d_out, r)``, A ``(m, r, d_in)``, scales ``(m,)``, k vectors to keep.
    Returns: S ``(m, r)``, U ``(m, d_out, kk)``, V ``(m, d_in, kk)``, numerical rank ``(m,)``,
    householder ``(m,)`` with ``kk = min(k, r, d_out, d_in)``.
    """
    m, d_out, r = B.shape
    d_in = A.shape[2]
    kk = max(0, min(k, r, d_out, d_in))
    GB = np.matmul(np.swapaxes(B, 1, 2), B)  # (m, r, r)
    GA = np.matmul(A, np.swapaxes(A, 1, 2))
    eb = np.linalg.eigvalsh(GB)  # ascending; cond(B)^2 = eb[-1] / eb[0]
    ea = np.linalg.eigvalsh(GA)
    ok = (eb[:, 0] * CHOLQR_MAX_COND**2 > eb[:, -1]) & (ea[:, 0] * CHOLQR_MAX_COND**2 > ea[:, -1])
    eye = np.eye(r)
    LB, okb = _batched_cholesky(np.where(ok[:, None, None], GB, eye))  # Rb = LB^T
    LA, oka = _batched_cholesky(np.where(ok[:, None, None], GA, eye))
    ok &= okb & oka
    core = scales[:, None, None] * np.matmul(np.swapaxes(LB, 1, 2), LA)  # s Rb Ra^T, (m, r, r)
    W, S, Zt = np.linalg.svd(core)
    if kk:
        with np.errstate(divide="ignore", invalid="ignore"):
            kappa = np.abs(scales) * np.sqrt(np.clip(eb[:, -1], 0, None) * np.clip(ea[:, -1], 0, None)) / S[:, kk - 1]
        ok &= kappa <= CHOLQR_MAX_KAPPA
        LB = np.where(ok[:, None, None], LB, eye)
        LA = np.where(ok[:, None, None], LA, eye)
        TB = np.linalg.solve(np.swapaxes(LB, 1, 2), W[:, :, :kk])  # Rb^{-1} W_k, (m, r, kk)
        TA = np.linalg.solve(np.swapaxes(LA, 1, 2), np.swapaxes(Zt, 1, 2)[:, :, :kk])
        U = np.matmul(B, TB)
        V = np.matmul(np.swapaxes(A, 1, 2), TA)
    else:
        U = np.zeros((m, d_out, 0))
        V = np.zeros((m, d_in, 0))
    householder = ~ok
    for i in np.flatnonzero(householder):  # rare: ill-conditioned or rank-deficient factors
        svd = lowrank.thin_svd(B[i], A[i], float(scales[i]))
        n = svd.S.shape[0]
        S[i] = 0.0
        S[i, :n] = svd.S
        U[i] = 0.0
        V[i] = 0.0
        U[i, :, : min(kk, n)] = svd.U[:, :kk]
        V[i, :, : min(kk, n)] = svd.V[:, :kk]
    nrank = np.sum(S > NUMERICAL_RANK_RTOL * S[:, :1], axis=1) * (S[:, 0] > 0)
    return S, U, V, nrank.astype(np.int64), householder


def _shape_groups(adapter: LoraAdapter) -> dict[tuple[int, int, int], ShapeGroup]:
    """The adapter's stacked shape groups; built (by copying) when the adapter was assembled by
    hand without them."""
    if adapter.groups and sum(len(g.names) for g in adapter.groups.values()) == len(adapter.modules):
        return adapter.groups
    by_shape: dict[tuple[int, int, int], list[str]] = {}
    for name, m in adapter.modules.items():
        by_shape.setdefault((*m.shape, m.rank), []).append(name)
    return {
        key: ShapeGroup(
            names=tuple(names),
            B=np.stack([np.asarray(adapter.modules[n].B, dtype=np.float64) for n in names]),
            A=np.stack([np.asarray(adapter.modules[n].A, dtype=np.float64) for n in names]),
            scales=np.array([adapter.modules[n].scale for n in names], dtype=np.float64),
        )
        for key, names in by_shape.items()
    }


def build_factor_cache(
    adapter: LoraAdapter, top_k: int = 10, label: str | None = None, fingerprint: str | None = None
) -> FactorCache:
    """Per-module thin SVD summaries of one adapter (batched over modules of equal shape).

    Args:
        adapter: from :func:`lossgeom.adapters.load_adapter`.
        top_k: singular vectors to keep per module (clamped to the rank); the pairwise suite can
            use any ``k <= top_k``.
        label: optional label such as ``"sft/seed42"``. fingerprint: optional content hash.
    Returns:
        :class:`FactorCache`; its ``B`` and ``A`` are views of the adapter's arrays (no copy).
    """
    groups = {}
    for key, g in _shape_groups(adapter).items():
        S, U, V, nrank, hh = _factor_group(g.B, g.A, g.scales, int(top_k))
        layers = np.array([adapter.modules[n].layer if adapter.modules[n].layer is not None else -1 for n in g.names])
        groups[key] = FactorGroup(
            names=tuple(g.names), layers=layers, B=g.B, A=g.A, scales=np.asarray(g.scales, dtype=np.float64),
            S=S, U=U, V=V, numerical_rank=nrank, householder=hh,
        )
    return FactorCache(
        source=str(adapter.path), label=label, fingerprint=fingerprint,
        base_model_name_or_path=adapter.base_model_name_or_path, target_modules=adapter.target_modules,
        top_k=int(top_k), groups=groups,
    )


# --------------------------------------------------------------------------------------------
# Atomic writing helpers
# --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)


# --------------------------------------------------------------------------------------------
# Saving and loading caches
# --------------------------------------------------------------------------------------------

_GROUP_ARRAYS = ("B", "A", "scales", "S", "U", "V", "numerical_rank", "householder", "layers")


def save_factor_cache(cache: FactorCache, path: str | Path) -> None:
    """Write a cache to one safetensors file (atomic). Metadata: format, version, fingerprint,
    source, label, base model, target modules, top_k and each group's module names."""
    from safetensors.numpy import save_file

    tensors = {}
    groups_meta = []
    for gi, (key, g) in enumerate(cache.groups.items()):
        groups_meta.append({"key": list(key), "names": list(g.names)})
        for a in _GROUP_ARRAYS:
            arr = getattr(g, a)
            if a == "householder":
                arr = arr.astype(np.uint8)
            tensors[f"g{gi}.{a}"] = np.ascontiguousarray(arr)
    meta = {
        "format": CACHE_FORMAT,
        "version": str(CACHE_VERSION),
        "fingerprint": cache.fingerprint or "",
        "source": cache.source,
        "label": cache.label or "",
        "base_model_name_or_path": json.dumps(cache.base_model_name_or_path),
        "target_modules": json.dumps(cache.target_modules),
        "top_k": str(cache.top_k),
        "groups": json.dumps(groups_meta),
    }
    _atomic_write(Path(path), lambda p: save_file(tensors, str(p), metadata=meta))


def load_factor_cache(path: str | Path, expected_fingerprint: str | None = None) -> FactorCache:
    """Read a cache written by :func:`save_factor_cache`.

    Raises:
        FactorCacheError: unreadable file, another format or version, or (when
        ``expected_fingerprint`` is given) a cache built from other adapter content.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any read failure is reported the same way
        raise FactorCacheError(f"{path}: cannot read factor cache ({e})") from None
    if meta.get("format") != CACHE_FORMAT or meta.get("version") != str(CACHE_VERSION):
        raise FactorCacheError(
            f"{path}: not a {CACHE_FORMAT} v{CACHE_VERSION} file (format={meta.get('format')!r}, "
            f"version={meta.get('version')!r})"
        )
    fp = meta.get("fingerprint") or None
    if expected_fingerprint is not None and fp != expected_fingerprint:
        raise FactorCacheError(f"{path}: stale cache, fingerprint {fp} but the adapter is {expected_fingerprint}")
    groups = {}
    for gi, gm in enumerate(json.loads(meta["groups"])):
        arrs = {a: tensors[f"g{gi}.{a}"] for a in _GROUP_ARRAYS}
        arrs["householder"] = arrs["householder"].astype(bool)
        groups[tuple(gm["key"])] = FactorGroup(names=tuple(gm["names"]), **arrs)
    tm = json.loads(meta["target_modules"])
    return FactorCache(
        source=meta.get("source", ""), label=meta.get("label") or None, fingerprint=fp,
        base_model_name_or_path=json.loads(meta["base_model_name_or_path"]),
        target_modules=tuple(tm) if isinstance(tm, list) else tm, top_k=int(meta["top_k"]), groups=groups,
    )


def factor_cache_for_dir(
    adapter_dir: str | Path, cache_path: str | Path | None = None, top_k: int = 10, label: str | None = None
) -> FactorCache:
    """The factor cache of an adapter directory; reuse ``cache_path`` when its fingerprint
    matches the adapter's content and it holds at least ``top_k`` vectors, else build and save it.
    Without ``cache_path`` it is built in memory only (no hashing)."""
    if cache_path is None:
        return build_factor_cache(load_adapter(adapter_dir), top_k=top_k, label=label)
    fp = adapter_fingerprint(adapter_dir)
    cache_path = Path(cache_path)
    if cache_path.is_file():
        try:
            cache = load_factor_cache(cache_path, expected_fingerprint=fp)
            if cache.top_k >= top_k:
                cache.label = label or cache.label
                cache.source = str(adapter_dir)
                return cache
        except FactorCacheError:
            pass  # stale or foreign: rebuild below
    cache = build_factor_cache(load_adapter(adapter_dir), top_k=top_k, label=label, fingerprint=fp)
    save_factor_cache(cache, cache_path)
    return cache


# ============================================================================================
# All pairs
# ============================================================================================



def parse_label(label: str) -> tuple[str, int | None]:
    """``"sft/seed42"`` -> ``("sft", 42)``; a label that does not parse is its own method:
    ``"foo"`` -> ``("foo", None)``."""
    try:
        return config_parse_label(label)
    except ValueError:
        return label, None


def label_for_dir(path: str | Path) -> str:
    """``.../{method}/seed{seed}`` -> ``"{method}/seed{seed}"``; otherwise the directory name."""
    p = Path(path).resolve()
    if re.fullmatch(r"seed-?\d+", p.name) and p.parent.name:
        return f"{p.parent.name}/{p.name}"
    return p.name


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
        top_k: requested ``k``. n_sine_recomputed: entries recomputed with the sine formula.
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


def _stack_columns(mats: Sequence[np.ndarray], widths: Sequence[int], out: np.ndarray) -> np.ndarray:
    """Copy ``mats[i][:, :widths[i]]`` side by side into ``out`` (zero-padded to equal widths)."""
    w = out.shape[1] // len(mats)
    out.fill(0.0)
    for i, (m, k) in enumerate(zip(mats, widths)):
        out[:, i * w : i * w + k] = m[:, :k]
    return out


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
    """
    labels = list(caches)
    cs = [caches[l] for l in labels]
    if len(cs) < 2:
        raise ValueError("pairwise_geometry: need at least 2 adapters")
    check_compatible(cs)
    n = len(cs)
    for c, l in zip(cs, labels):
        if c.top_k < top_k and any(m.rank > c.top_k for m in c.modules.values()):
            raise ValueError(f"factor cache of {l!r} ({c.source}) holds {c.top_k} vectors, {top_k} requested: rebuild it")
    names = list(cs[0].modules)
    M = len(names)
    iu = np.triu_indices(n, 1)
    P = len(iu[0])
    inner = np.zeros((M, n, n))
    kk = max(1, int(top_k))
    cosines = {s: np.full((M, P, kk), np.nan) for s in ("left", "right")}
    k_used = {s: np.zeros((M, P), dtype=np.int64) for s in ("left", "right")}
    agreement = {s: np.full((M, P), np.nan) for s in ("left", "right")}
    shapes = []
    layers = np.empty(M, dtype=np.int64)
    buffers: dict[str, np.ndarray] = {}

    def buf(role: str, shape: tuple[int, int]) -> np.ndarray:
        """Scratch array for one role (``"B"``, ``"A"``, ``"left"``, ``"right"``), reused across
        modules to avoid page-faulting fresh memory. Keyed by role, never by shape: two roles
        alive at once (stacked B and stacked A) must never share memory, even when their shapes
        coincide (a square module with ``d == n * r``)."""
        b = buffers.get(role)
        if b is None or b.shape != shape:
            b = buffers[role] = np.empty(shape)
        return b

    it = range(M)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="geometry: modules", unit="module")
    for mi in it:
        name = names[mi]
        mods = [c.modules[name] for c in cs]
        d_out, d_in = mods[0].shape
        shapes.append((d_out, d_in))
        layers[mi] = mods[0].layer
        ranks = [m.rank for m in mods]
        offs = np.concatenate([[0], np.cumsum(ranks)])
        R = int(offs[-1])
        # Frobenius inner products: tr((B_i^T B_j)(A_j A_i^T)) = sum((B_i^T B_j) * (A_i A_j^T)),
        # from the Grams of all adapters' factors stacked side by side (one syrk per side).
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
        inner[mi] = ip
        # Top-k subspaces: cosines of principal angles are the singular values of U_i^T U_j.
        for side, vecs, dim in (("left", [m.U for m in mods], d_out), ("right", [m.V for m in mods], d_in)):
            widths = [min(kk, v.shape[1], m.numerical_rank) for v, m in zip(vecs, mods)]
            X = _stack_columns(vecs, widths, buf(side, (dim, n * kk)))
            G = dsyrk(1.0, X.T, trans=0).reshape(n, kk, n, kk).transpose(0, 2, 1, 3)
            C = G[iu]  # (P, kk, kk): C[p] = X_i^T X_j
            k_pair = np.minimum(np.asarray(widths)[iu[0]], np.asarray(widths)[iu[1]])
            # Both subspaces of a pair are k_pair-dimensional: keep only U_i[:, :k]^T U_j[:, :k].
            # (The wider adapter's extra vectors are non-zero; left in, they would give angles
            # between a k-dim and a wider subspace, which are too small.)
            C[np.arange(kk)[None, :] >= k_pair[:, None]] = 0.0  # rows beyond k
            C.transpose(0, 2, 1)[np.arange(kk)[None, :] >= k_pair[:, None]] = 0.0  # columns beyond k
            k_used[side][mi] = k_pair
            cosines[side][mi] = np.linalg.svd(C, compute_uv=False)
            agreement[side][mi] = np.where(k_pair > 0, np.abs(C[:, 0, 0]), np.nan)

    angles = {}
    n_sine = 0
    for side in ("left", "right"):
        cos = np.clip(cosines[side], -1.0, 1.0)
        ang = np.arccos(cos)  # ascending
        ang[np.arange(kk)[None, None, :] >= k_used[side][:, :, None]] = np.nan
        # Small angles: arccos loses accuracy (error ~ eps / sin theta); redo with the sine formula.
        small = np.argwhere(ang[:, :, 0] < SMALL_ANGLE_SWITCH_RAD)
        for mi, p in small:
            i, j = iu[0][p], iu[1][p]
            k = int(k_used[side][mi, p])
            mi_, mj_ = cs[i].modules[names[mi]], cs[j].modules[names[mi]]
            Qi, Qj = (mi_.U, mj_.U) if side == "left" else (mi_.V, mj_.V)
            ang[mi, p, :k] = lowrank.principal_angles(Qi[:, :k], Qj[:, :k])
            n_sine += 1
        angles[side] = ang
    return PairGeometry(
        labels=labels, module_names=names, module_layers=layers, module_shapes=shapes,
        pairs=np.stack(iu, axis=1), inner=inner, angles=angles, k_used=k_used, agreement=agreement,
        top_k=kk, n_sine_recomputed=n_sine,
    )


# ============================================================================================
# Reference values for unrelated adapters
# ============================================================================================

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
      ``D = sum_modules d_out d_in`` (:func:`lossgeom.lowrank.expected_abs_cosine_random`).
    * ``orthogonal_fraction_global``: exact ``E sqrt(1 - cos^2)`` in ``R^D``.
    * ``top1_angle_{side}_median`` / ``worst_angle_{side}_median``: the median over modules of the
      expected smallest / largest principal angle (degrees) between random ``k``-dim subspaces of
      ``R^d`` (``d = d_out`` left, ``d_in`` right; ``k`` the pair's ``k`` at that module), by the
      seeded Monte Carlo of :func:`lossgeom.lowrank.random_principal_angles` (standard error
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
            out[f"top1_angle_{side}_median"] = _nanmedian0(top1)
            out[f"worst_angle_{side}_median"] = _nanmedian0(worst)
    return out


def _nanmedian0(x: np.ndarray) -> np.ndarray:
    """nan-median over axis 0 without warnings for all-nan columns."""
    ok = np.isfinite(x).any(axis=0)
    out = np.full(x.shape[1:], np.nan)
    if ok.any():
        out[ok] = np.nanmedian(x[:, ok], axis=0)
    return out


def _nanmean0(x: np.ndarray) -> np.ndarray:
    """nan-mean over axis 0 without warnings for all-nan columns."""
    fin = np.isfinite(x)
    cnt = fin.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, np.where(fin, x, 0.0).sum(axis=0) / cnt, np.nan)


def _naniqr0(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x).any(axis=0)
    out = np.full(x.shape[1:], np.nan)
    if ok.any():
        q75, q25 = np.nanpercentile(x[:, ok], [75, 25], axis=0)
        out[ok] = q75 - q25
    return out


# ============================================================================================
# Tables
# ============================================================================================

# metric -> (value on the diagonal, description); entry [a, b] of each square matrix
SQUARE_METRICS: dict[str, tuple[float, str]] = {
    "cosine_global": (1.0, "cosine of the deltas, all modules stacked"),
    "orthogonal_fraction_global": (0.0, "||dW_b - P_a dW_b|| / ||dW_b|| = sqrt(1 - cos^2), global"),
    "norm_ratio": (1.0, "||dW_b||_F / ||dW_a||_F (row a, column b)"),
    "top1_angle_left_median": (0.0, "median over modules of the smallest principal angle (deg), output side"),
    "top1_angle_left_iqr": (0.0, "IQR over modules of the smallest principal angle (deg), output side"),
    "worst_angle_left_median": (0.0, "median over modules of the k-th (largest) principal angle (deg), output"),
    "worst_angle_left_iqr": (0.0, "IQR over modules of the k-th principal angle (deg), output side"),
    "top1_angle_right_median": (0.0, "median over modules of the smallest principal angle (deg), input side"),
    "top1_angle_right_iqr": (0.0, "IQR over modules of the smallest principal angle (deg), input side"),
    "worst_angle_right_median": (0.0, "median over modules of the k-th principal angle (deg), input side"),
    "worst_angle_right_iqr": (0.0, "IQR over modules of the k-th principal angle (deg), input side"),
    "u1_agreement": (1.0, "mean over modules of |<u1_a, u1_b>| (top left singular vectors)"),
    "v1_agreement": (1.0, "mean over modules of |<v1_a, v1_b>| (top right singular vectors)"),
}
NOISE_FLOOR_METRICS = (
    "cosine_global",
    "orthogonal_fraction_global",
    "top1_angle_left_median",
    "worst_angle_left_median",
    "top1_angle_right_median",
    "worst_angle_right_median",
    "u1_agreement",
    "v1_agreement",
    "norm_ratio",
)


def _pair_values(geo: PairGeometry) -> dict[str, np.ndarray]:
    """Headline metric -> ``(P,)`` value for each pair ``(a, b) = labels[i], labels[j]``, i < j."""
    i, j = geo.pairs[:, 0], geo.pairs[:, 1]
    cos = PairGeometry.cosine_of(geo.inner_global())[i, j]
    nrm = geo.norms()
    with np.errstate(divide="ignore", invalid="ignore"):
        vals = {
            "cosine_global": cos,
            "orthogonal_fraction_global": lowrank.orthogonal_fraction_from_cosine(cos),
            "norm_ratio": nrm[j] / nrm[i],
        }
    for side, key in (("left", "u1_agreement"), ("right", "v1_agreement")):
        deg = np.degrees(geo.angles[side])
        top1 = deg[:, :, 0]
        worst = _last_valid(deg, geo.k_used[side])
        vals[f"top1_angle_{side}_median"] = _nanmedian0(top1)
        vals[f"top1_angle_{side}_iqr"] = _naniqr0(top1)
        vals[f"worst_angle_{side}_median"] = _nanmedian0(worst)
        vals[f"worst_angle_{side}_iqr"] = _naniqr0(worst)
        vals[key] = _nanmean0(geo.agreement[side])
    return vals


def _last_valid(ang: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``ang[..., k-1]`` (the k-th angle) for ``ang`` ``(M, P, kk)`` and ``k`` ``(M, P)``."""
    idx = np.clip(k - 1, 0, ang.shape[-1] - 1)
    out = np.take_along_axis(ang, idx[..., None], axis=-1)[..., 0]
    return np.where(k > 0, out, np.nan)


def square_matrices(geo: PairGeometry) -> dict[str, pd.DataFrame]:
    """Metric -> labelled ``n x n`` DataFrame (entry ``[a, b]``; see ``SQUARE_METRICS``)."""
    n = len(geo.labels)
    vals = _pair_values(geo)
    i, j = geo.pairs[:, 0], geo.pairs[:, 1]
    out = {}
    for metric, (diag, _) in SQUARE_METRICS.items():
        m = np.full((n, n), np.nan)
        m[np.diag_indices(n)] = diag
        v = vals[metric]
        if metric == "norm_ratio":
            m[i, j] = v
            with np.errstate(divide="ignore"):
                m[j, i] = 1.0 / v
        else:  # symmetric metrics
            m[i, j] = v
            m[j, i] = v
        df = pd.DataFrame(m, index=geo.labels, columns=geo.labels)
        df.index.name = "label"
        out[metric] = df
    return out


def per_layer_table(geo: PairGeometry) -> pd.DataFrame:
    """One row per pair ``a < b`` and layer: cosine, orthogonal fraction, norms, norm ratio."""
    lay = geo.layers()
    ipl = geo.inner_by_layer()  # (L, n, n)
    cos = PairGeometry.cosine_of(ipl)
    nrm = np.sqrt(np.clip(np.diagonal(ipl, axis1=1, axis2=2), 0.0, None))  # (L, n)
    i, j = geo.pairs[:, 0], geo.pairs[:, 1]
    L, P = len(lay), len(i)
    c = cos[:, i, j]  # (L, P)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = nrm[:, j] / nrm[:, i]
    counts = np.array([(geo.module_layers == x).sum() for x in lay])
    lab = np.asarray(geo.labels, dtype=object)
    return pd.DataFrame({
        "pair_a": np.tile(lab[i], L),
        "pair_b": np.tile(lab[j], L),
        "layer": np.repeat(lay, P),
        "n_modules": np.repeat(counts, P),
        "cosine": c.ravel(),
        "orthogonal_fraction": lowrank.orthogonal_fraction_from_cosine(c).ravel(),
        "norm_a": nrm[:, i].ravel(),
        "norm_b": nrm[:, j].ravel(),
        "norm_ratio": ratio.ravel(),
    })


def long_table(geo: PairGeometry) -> pd.DataFrame:
    """Columns ``pair_a, pair_b, module, layer, side, metric, value`` (pairs ``a < b``).

    ``module = "*"`` for aggregates; ``layer = "*"`` for global rows; ``side`` is ``left``
    (output), ``right`` (input) or ``both``. Angles in degrees. Per module: ``cosine``,
    ``angle_top1_deg``, ``angle_worst_deg``, ``top1_agreement``, ``k``. Per layer: ``cosine``,
    ``orthogonal_fraction``, ``norm_ratio``. Global: those of :data:`SQUARE_METRICS` renamed
    (``angle_top1_deg_median``, ``angle_top1_deg_iqr``, ``angle_worst_deg_median``, ...,
    ``top1_agreement_mean``).
    """
    lab = np.asarray(geo.labels, dtype=object)
    i, j = geo.pairs[:, 0], geo.pairs[:, 1]
    P, M = len(i), len(geo.module_names)
    names = np.asarray(geo.module_names, dtype=object)
    mlay = geo.module_layers.astype(object)
    parts = []

    def add(a, b, module, layer, side, metric, value):
        value = np.asarray(value, dtype=np.float64).ravel()
        size = value.size
        parts.append(pd.DataFrame({
            "pair_a": np.broadcast_to(a, size) if np.ndim(a) == 0 else a,
            "pair_b": np.broadcast_to(b, size) if np.ndim(b) == 0 else b,
            "module": np.broadcast_to(module, size) if np.ndim(module) == 0 else module,
            "layer": np.broadcast_to(layer, size) if np.ndim(layer) == 0 else layer,
            "side": side,
            "metric": metric,
            "value": value,
        }))

    # per module (module-major: arrays of shape (M, P) raveled)
    A_, B_ = np.tile(lab[i], M), np.tile(lab[j], M)
    mod, ml = np.repeat(names, P), np.repeat(mlay, P)
    cosm = PairGeometry.cosine_of(geo.inner)[:, i, j]
    add(A_, B_, mod, ml, "both", "cosine", cosm)
    for side in ("left", "right"):
        deg = np.degrees(geo.angles[side])
        add(A_, B_, mod, ml, side, "angle_top1_deg", deg[:, :, 0])
        add(A_, B_, mod, ml, side, "angle_worst_deg", _last_valid(deg, geo.k_used[side]))
        add(A_, B_, mod, ml, side, "top1_agreement", geo.agreement[side])
        add(A_, B_, mod, ml, side, "k", geo.k_used[side])
    # per layer
    pl = per_layer_table(geo)
    for metric in ("cosine", "orthogonal_fraction", "norm_ratio"):
        add(pl["pair_a"].to_numpy(), pl["pair_b"].to_numpy(), "*", pl["layer"].to_numpy().astype(object), "both",
            metric, pl[metric].to_numpy())
    # global
    vals = _pair_values(geo)
    add(lab[i], lab[j], "*", "*", "both", "cosine", vals["cosine_global"])
    add(lab[i], lab[j], "*", "*", "both", "orthogonal_fraction", vals["orthogonal_fraction_global"])
    add(lab[i], lab[j], "*", "*", "both", "norm_ratio", vals["norm_ratio"])
    for side, agr in (("left", "u1_agreement"), ("right", "v1_agreement")):
        for which in ("top1", "worst"):
            for stat in ("median", "iqr"):
                add(lab[i], lab[j], "*", "*", side, f"angle_{which}_deg_{stat}", vals[f"{which}_angle_{side}_{stat}"])
        add(lab[i], lab[j], "*", "*", side, "top1_agreement_mean", vals[agr])
    return pd.concat(parts, ignore_index=True)


def noise_floor_table(geo: PairGeometry) -> pd.DataFrame:
    """One row per pair and headline metric, with the seed noise floor and the random reference.

    Columns: ``pair_a, pair_b, method_a, method_b, kind`` (``cross-method`` or ``same-method``),
    ``metric, value``, ``seed_floor_a`` / ``seed_floor_b`` (mean of the metric over pairs of two
    different seeds of method a / b; ``nan`` if the method has fewer than two seeds),
    ``n_seed_pairs_a`` / ``n_seed_pairs_b``, ``seed_floor`` (mean of the available of the two) and
    ``random`` (:func:`random_reference`). Cross-method rows come first.
    """
    vals = _pair_values(geo)
    ref = random_reference(geo)
    parsed = [parse_label(l) for l in geo.labels]
    meth = np.array([p[0] for p in parsed], dtype=object)
    seed = [p[1] for p in parsed]
    i, j = geo.pairs[:, 0], geo.pairs[:, 1]
    same = meth[i] == meth[j]
    seed_pair = same & np.array([seed[a] is not None and seed[b] is not None and seed[a] != seed[b] for a, b in zip(i, j)],
                                dtype=bool)
    rows = []
    for metric in NOISE_FLOOR_METRICS:
        v = vals[metric]
        floor = {}
        for m in set(meth):
            sel = seed_pair & (meth[i] == m)
            floor[m] = (float(np.nanmean(v[sel])) if sel.any() and np.isfinite(v[sel]).any() else np.nan, int(sel.sum()))
        r = ref.get(metric, np.full(len(v), np.nan))
        for p in range(len(v)):
            fa, na = floor[meth[i[p]]]
            fb, nb = floor[meth[j[p]]]
            avail = [x for x in (fa, fb) if np.isfinite(x)]
            rows.append((geo.labels[i[p]], geo.labels[j[p]], meth[i[p]], meth[j[p]],
                         "same-method" if same[p] else "cross-method", metric, v[p], fa, fb, na, nb,
                         float(np.mean(avail)) if avail else np.nan, r[p]))
    df = pd.DataFrame(rows, columns=["pair_a", "pair_b", "method_a", "method_b", "kind", "metric", "value",
                                     "seed_floor_a", "seed_floor_b", "n_seed_pairs_a", "n_seed_pairs_b",
                                     "seed_floor", "random"])
    return df.sort_values("kind", kind="stable").reset_index(drop=True)


def adapters_table(caches: Mapping[str, FactorCache]) -> pd.DataFrame:
    """One row per adapter: label, method, seed, source, base model, modules, ranks, global norm,
    mean effective rank, mean stable rank (over modules), Householder fallbacks, fingerprint."""
    rows = []
    for label, c in caches.items():
        method, seed = parse_label(label)
        rows.append({"label": label, "method": method, "seed": seed if seed is not None else "", "source": c.source,
                     "base_model": c.base_model_name_or_path, **c.summary(), "fingerprint": c.fingerprint or ""})
    return pd.DataFrame(rows)


def per_module_adapter_table(caches: Mapping[str, FactorCache]) -> pd.DataFrame:
    """One row per adapter and module: rank, scale, norm, effective and stable rank, numerical rank."""
    rows = []
    for label, c in caches.items():
        for name, m in c.modules.items():
            rows.append((label, name, m.layer, m.rank, m.scale, m.norm, m.effective_rank, m.stable_rank,
                         m.numerical_rank, float(m.S[0])))
    return pd.DataFrame(rows, columns=["label", "module", "layer", "rank", "scale", "norm", "effective_rank",
                                       "stable_rank", "numerical_rank", "sigma_1"])


# ============================================================================================
# Base-weight alignment (optional)
# ============================================================================================


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
    bw = {}
    for key, w in base_weights.items():
        name = canonical_module_name(re.sub(r"\.weight$", "", re.sub(r"^base_model\.model\.", "", key)))
        bw[name] = w
    rows = []
    for name, W0 in bw.items():
        present = [(l, c.modules[name]) for l, c in caches.items() if name in c.modules]
        if not present:
            continue
        shp = present[0][1].shape
        if tuple(np.shape(W0)) != shp:
            raise AdapterMismatchError(f"base weight of {name!r}: expected shape (d_out, d_in) = {shp}, found {np.shape(W0)}")
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


# ============================================================================================
# Writing and the CLI entry point
# ============================================================================================


def write_geometry(
    caches: Mapping[str, FactorCache],
    out_dir: str | Path,
    top_k: int = 10,
    base_weights: Mapping[str, np.ndarray] | None = None,
    progress: bool = False,
) -> PairGeometry:
    """Compute all-pairs geometry and write the tables into ``out_dir`` (each file atomically).

    Files (tab-separated, ``nan`` for undefined values):
      * ``long.tsv``: ``pair_a, pair_b, module, layer, side, metric, value`` (:func:`long_table`).
      * ``{metric}.tsv`` for every metric of :data:`SQUARE_METRICS` (e.g. ``cosine_global.tsv``,
        ``top1_angle_left_median.tsv``, ``orthogonal_fraction_global.tsv``, ``norm_ratio.tsv``):
        labelled square matrices, labels as the first column and the header.
      * ``per_layer.tsv`` (:func:`per_layer_table`), ``adapters.tsv`` (:func:`adapters_table`),
        ``adapter_modules.tsv`` (:func:`per_module_adapter_table`), ``noise_floor.tsv``
        (:func:`noise_floor_table`), ``settings.json``; with ``base_weights`` also
        ``base_alignment.tsv`` (:func:`base_alignment`).
    Returns:
        The :class:`PairGeometry` the tables came from.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    geo = pairwise_geometry(caches, top_k=top_k, progress=progress)
    for metric, df in square_matrices(geo).items():
        write_table(df, out_dir / f"{metric}.tsv", index=True)
    write_table(per_layer_table(geo), out_dir / "per_layer.tsv")
    write_table(adapters_table(caches), out_dir / "adapters.tsv")
    write_table(per_module_adapter_table(caches), out_dir / "adapter_modules.tsv")
    write_table(noise_floor_table(geo), out_dir / "noise_floor.tsv")
    write_table(long_table(geo), out_dir / "long.tsv")
    if base_weights is not None:
        write_table(base_alignment(caches, base_weights, top_k=top_k), out_dir / "base_alignment.tsv")
    settings = {
        "labels": geo.labels,
        "sources": [caches[l].source for l in geo.labels],
        "top_k": geo.top_k,
        "angle_unit": "degrees",
        "small_angle_switch_rad": SMALL_ANGLE_SWITCH_RAD,
        "n_sine_recomputed": geo.n_sine_recomputed,
        "random_mc_samples": RANDOM_MC_SAMPLES,
        "random_mc_seed": RANDOM_MC_SEED,
    }
    _atomic_write(out_dir / "settings.json", lambda p: p.write_text(json.dumps(settings, indent=2) + "\n"))
    return geo


def compare_adapter_dirs(
    dirs: Sequence[str | Path],
    out_dir: str | Path,
    top_k: int = 10,
    labels: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    base_weights: Mapping[str, np.ndarray] | None = None,
) -> PairGeometry:
    """Load two or more PEFT adapter directories, check them, and write the geometry tables.

    Args:
        dirs: adapter directories (``adapter_config.json`` + ``adapter_model.safetensors``).
        out_dir: where :func:`write_geometry` writes.
        top_k: subspace dimension for principal angles (the paper uses 10).
        labels: one per directory; default :func:`label_for_dir` (``"{method}/seed{seed}"`` for
            ``.../{method}/seed{seed}``). Must be unique.
        cache_dir: if given, factor caches are reused from / saved to ``cache_dir/{label}.safetensors``
            (``/`` in the label becomes ``_``; reused only when the adapter's content fingerprint matches).
        progress: tqdm bars over adapters and modules (on stderr).
    Raises:
        AdapterMismatchError: a malformed adapter, or adapters of different base models, target
        modules, module sets or shapes (naming which and why).
        ValueError: fewer than two directories, a label count that differs, duplicate labels.
    """
    dirs = [Path(d) for d in dirs]
    if len(dirs) < 2:
        raise ValueError("compare_adapter_dirs: give at least two adapter directories")
    labels = list(labels) if labels is not None else [label_for_dir(d) for d in dirs]
    if len(labels) != len(dirs):
        raise ValueError(f"compare_adapter_dirs: {len(labels)} labels for {len(dirs)} directories")
    dup = sorted({l for l in labels if labels.count(l) > 1})
    if dup:
        raise ValueError(f"compare_adapter_dirs: duplicate labels {dup}; pass labels explicitly")
    caches: dict[str, FactorCache] = {}
    ref = None
    pairs = list(zip(dirs, labels))
    if progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="geometry: adapters", unit="adapter")
    for d, label in pairs:
        if cache_dir is not None:
            safe = re.sub(r"[^\w.-]+", "_", label)
            cache = factor_cache_for_dir(d, Path(cache_dir) / f"{safe}.safetensors", top_k=top_k, label=label)
        else:
            cache = build_factor_cache(load_adapter(d), top_k=top_k, label=label)
        # Check as soon as each adapter is read, so a mismatch stops before more work.
        if ref is None:
            ref = cache
        else:
            check_compatible([ref, cache])
        caches[label] = cache
        log.info("factor cache of %s (%s): %s", label, d, cache.summary())
    geo = write_geometry(caches, out_dir, top_k=top_k, base_weights=base_weights, progress=progress)
    log.info("wrote geometry of %d adapters (%d pairs, %d modules) to %s", len(labels), len(geo.pairs),
             len(geo.module_names), out_dir)
    return geo
