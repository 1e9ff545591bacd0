"""Per-adapter factor caches: each module's LoRA factors and the thin SVD of its delta.

:func:`build_factor_cache` (once per adapter) keeps, for every module, the factors ``B``, ``A``
and scale plus its thin SVD summary: singular values, the top-``k`` left / right singular vectors
(explicit, orthonormal), numerical rank, norm, effective rank and stable rank.
:func:`save_factor_cache` / :func:`load_factor_cache` store it as safetensors with the adapter's
fingerprint and a digest of its own content (:func:`lossgeom.fsutil.arrays_digest` over every array and
the metadata); :func:`factor_cache_for_dir` reuses a stored cache only when the digest proves its content
and the fingerprint matches the adapter, and rebuilds any other (a damaged one with a WARNING line).

Numerics (all float64). Per-module SVDs use CholeskyQR, batched over modules of one shape: the ``R``
of ``B = Q R`` is the Cholesky factor of ``B^T B``, and ``U_k = B R^{-1} W_k`` costs one
``(d, r) x (r, k)`` product. Modules where this could lose accuracy (a failed Cholesky, ``cond(B)``
or ``cond(A)`` above ``CHOLQR_MAX_COND``, or ``s ||B|| ||A|| / sigma_k`` above
``CHOLQR_MAX_KAPPA``) take Householder QR instead (:func:`lossgeom.lora.lowrank.thin_svd`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..errors import InputError
from ..fsutil import arrays_digest, atomic_path
from ..lora import lowrank
from ..lora.adapters import LoraAdapter, ShapeGroup, adapter_fingerprint, load_adapter

CACHE_FORMAT = "lossgeom.factor_cache"
CACHE_VERSION = 2  # 2: metadata "digest" proves the content (version 1 files had none)
CHOLQR_MAX_COND = 1e7  # above this cond(B) or cond(A), use Householder QR for the module
CHOLQR_MAX_KAPPA = 1e3  # s||B|| ||A|| / sigma_k above this: Householder QR for the module
NUMERICAL_RANK_RTOL = 1e-10  # singular values <= rtol * sigma_1 count as zero

log = logging.getLogger(__name__)


class FactorCacheError(InputError):
    """A factor cache file is unreadable, of another format or version, fails its content digest, or
    is stale (:class:`StaleFactorCacheError`)."""


class StaleFactorCacheError(FactorCacheError):
    """An intact factor cache of other adapter content (fingerprint mismatch): rebuilt without alarm."""


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
        fingerprint: :func:`lossgeom.lora.adapters.adapter_fingerprint` of the adapter (``None`` if not
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
                name=name,
                layer=int(g.layers[i]),
                B=g.B[i],
                A=g.A[i],
                scale=float(g.scales[i]),
                S=g.S[i],
                U=g.U[i],
                V=g.V[i],
                numerical_rank=int(g.numerical_rank[i]),
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
        adapter: from :func:`lossgeom.lora.adapters.load_adapter`.
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
            names=tuple(g.names),
            layers=layers,
            B=g.B,
            A=g.A,
            scales=np.asarray(g.scales, dtype=np.float64),
            S=S,
            U=U,
            V=V,
            numerical_rank=nrank,
            householder=hh,
        )
    return FactorCache(
        source=str(adapter.path),
        label=label,
        fingerprint=fingerprint,
        base_model_name_or_path=adapter.base_model_name_or_path,
        target_modules=adapter.target_modules,
        top_k=int(top_k),
        groups=groups,
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


def _content_digest(meta: Mapping[str, str], tensors: Mapping[str, np.ndarray]) -> str:
    """The digest a cache file carries in its metadata: every other metadata entry (format and
    version included) as sorted JSON, then every tensor (:func:`lossgeom.fsutil.arrays_digest`)."""
    rest = {k: v for k, v in meta.items() if k != "digest"}
    return arrays_digest(tensors, json.dumps(rest, sort_keys=True))


def save_factor_cache(cache: FactorCache, path: str | Path) -> None:
    """Write a cache to one safetensors file (atomic). Metadata: format, version, fingerprint,
    source, label, base model, target modules, top_k, each group's module names, and ``digest``
    (:func:`_content_digest` of the rest and the tensors)."""
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
    meta["digest"] = _content_digest(meta, tensors)
    _atomic_write(Path(path), lambda p: save_file(tensors, str(p), metadata=meta))


def _read_checked(path: Path) -> tuple[dict, dict]:
    """The metadata and tensors of a cache file whose format, version and content digest check out.

    Raises:
        FactorCacheError: one line naming ``path`` and why (unreadable, truncated or empty; another
        format or version; no digest: written by older code; digest mismatch: changed after writing).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any read failure is reported the same way
        raise FactorCacheError(f"{path}: cannot read factor cache ({' '.join(str(e).split())[:200]})") from None
    if meta.get("format") != CACHE_FORMAT or meta.get("version") != str(CACHE_VERSION):
        raise FactorCacheError(
            f"{path}: not a {CACHE_FORMAT} v{CACHE_VERSION} file (format={meta.get('format')!r}, "
            f"version={meta.get('version')!r}: written by older or other code)"
        )
    if not meta.get("digest"):
        raise FactorCacheError(f"{path}: no content digest (written by older code)")
    if _content_digest(meta, tensors) != meta["digest"]:
        raise FactorCacheError(f"{path}: content digest mismatch (the file changed after it was written)")
    return meta, tensors


def load_factor_cache(path: str | Path, expected_fingerprint: str | None = None) -> FactorCache:
    """Read a cache written by :func:`save_factor_cache`, after checking its content digest.

    Raises:
        FactorCacheError: unreadable or damaged file, another format or version, no or a wrong
        digest (:func:`_read_checked`). StaleFactorCacheError: (when ``expected_fingerprint`` is
        given) an intact cache built from other adapter content.
    """
    path = Path(path)
    meta, tensors = _read_checked(path)
    fp = meta.get("fingerprint") or None
    if expected_fingerprint is not None and fp != expected_fingerprint:
        raise StaleFactorCacheError(f"{path}: stale cache, fingerprint {fp} but the adapter is {expected_fingerprint}")
    try:  # the digest proves these were written so; a failure here is a writer's bug, still no traceback
        groups = {}
        for gi, gm in enumerate(json.loads(meta["groups"])):
            arrs = {a: tensors[f"g{gi}.{a}"] for a in _GROUP_ARRAYS}
            arrs["householder"] = arrs["householder"].astype(bool)
            groups[tuple(gm["key"])] = FactorGroup(names=tuple(gm["names"]), **arrs)
        tm = json.loads(meta["target_modules"])
        return FactorCache(
            source=meta.get("source", ""),
            label=meta.get("label") or None,
            fingerprint=fp,
            base_model_name_or_path=json.loads(meta["base_model_name_or_path"]),
            target_modules=tuple(tm) if isinstance(tm, list) else tm,
            top_k=int(meta["top_k"]),
            groups=groups,
        )
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise FactorCacheError(f"{path}: malformed factor cache ({type(e).__name__}: {e})") from None


def factor_cache_for_dir(
    adapter_dir: str | Path, cache_path: str | Path | None = None, top_k: int = 10, label: str | None = None
) -> FactorCache:
    """The factor cache of an adapter directory; reuse ``cache_path`` when its content digest checks
    out, its fingerprint matches the adapter's content and it holds at least ``top_k`` vectors, else
    build and save it (over the old file). A damaged, foreign or older-format file is rebuilt with one
    WARNING line naming it and why; a stale one (the adapter changed) with an INFO line.
    Without ``cache_path`` it is built in memory only (no hashing)."""
    if cache_path is None:
        return build_factor_cache(load_adapter(adapter_dir), top_k=top_k, label=label)
    fp = adapter_fingerprint(adapter_dir)
    cache_path = Path(cache_path)
    if cache_path.is_file():
        try:
            cache = load_factor_cache(cache_path, expected_fingerprint=fp)
        except StaleFactorCacheError as e:
            log.info("%s; rebuilding it", e)
        except FactorCacheError as e:
            log.warning("%s; rebuilding it", e)
        else:
            if cache.top_k >= top_k:
                cache.label = label or cache.label
                cache.source = str(adapter_dir)
                return cache
    cache = build_factor_cache(load_adapter(adapter_dir), top_k=top_k, label=label, fingerprint=fp)
    save_factor_cache(cache, cache_path)
    return cache
