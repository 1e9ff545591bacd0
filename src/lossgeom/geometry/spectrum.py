"""Each delta against the base weight's own spectrum: intruder dimensions, spectral rotation and the change
of the top singular values, each beside its chance level.

Per module, with ``W`` the base weight ``(d_out, d_in)`` (its thin SVD ``W = U0 diag(S0) V0^T``,
``q = min(d_out, d_in)`` singular triplets) and ``W' = W + dW`` the tuned one, ``k = min(top_k, q)``, all
in float64:

* **Intruder dimensions** (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of
  Equivalence", Definition 1, as PEFT's ``reduce_intruder_dimension`` computes it): a left singular
  vector ``u'_j`` among the top ``k`` of ``W'`` is an intruder when ``max_i |<u'_j, U0_i>| < threshold``
  over *all* ``q`` left singular vectors of ``W``. ``intruders`` counts them; ``min_max_cos`` is the
  smallest of the ``k`` maxima. The absolute value because a singular vector's sign is arbitrary (the
  paper writes the cosine; PEFT takes its absolute value, as here). Where this differs from the paper: the
  paper counts on full fine-tuning's and LoRA's ``W'``, we on LoRA's only (the study has no full
  fine-tuning); the chance level below is ours.
* **Spectral rotation**: the principal angles between the top-``k`` singular subspaces of ``W`` and
  ``W'`` ("The Path Not Taken: RLVR Provably Learns Off the Principals", 2025, measures this rotation),
  output (``left``: ``U0_k`` vs ``U'_k``) and input side (``right``); ``rotation_{side}_deg`` is their
  mean, ``rotation_{side}_max_deg`` the largest, in degrees.
* **Top singular values**: ``sv_change`` = mean over ``i < k`` of ``|S'_i / S0_i - 1|``,
  ``sv_change_top1`` = ``S'_1 / S0_1 - 1`` (signed).

**Chance level**: every statistic again for a random delta of the same rank and singular values (so the
same norm): ``U_r diag(S_dW) V_r^T`` with ``U_r``, ``V_r`` Haar-random orthonormal ``(d, r)`` bases, one draw
per (adapter, module), seeded by ``seed``, the label and the module (columns ``chance_*``). A loss whose
number sits at its chance level moves the base's spectrum as much as any update of that size would; one
below it keeps off the base's principal directions.

**Cost**: the base's SVD is computed once per base module (LAPACK ``gesdd``) and cached by the weight's
content (``cache_dir``; each file carries a digest of its arrays, checked on every read: :func:`base_svd`);
the top-``k`` of each ``W'`` comes from ARPACK's Lanczos (``scipy.sparse.linalg.svds``, ``tol=0``: to
machine precision) on ``x -> W x + s B (A x)``, never forming ``W'``. At Qwen3-4B's shape on a Gaussian
base (the hard case for Lanczos: its top singular values crowd at the spectrum's edge) that is 3-6x faster
than a dense SVD of ``W'`` per module (``benchmarks/bench_base_spectrum.py``); a trained base's top
singular values are spread further apart, where Lanczos converges sooner. Where ``k >= q`` (ARPACK needs
``k < q``) the dense SVD of ``W'`` is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from scipy.sparse.linalg import LinearOperator, svds

from ..errors import InputError
from ..fsutil import arrays_digest, atomic_path, atomic_swap_dir, check_replaceable, write_table
from ..labels import Label, mean_pair_difference
from ..lora import lowrank
from ..lora.adapters import AdapterMismatchError
from .alignment import canonical_base_weights
from .factors import FactorCache

log = logging.getLogger(__name__)

# per-module statistics, each also as chance_{name}
MODULE_STATS = (
    "intruders",
    "min_max_cos",
    "rotation_left_deg",
    "rotation_left_max_deg",
    "rotation_right_deg",
    "rotation_right_max_deg",
    "sv_change",
    "sv_change_top1",
)
# per-adapter statistics of the summary: name -> (module statistic, how modules are combined); the signed
# sv_change_top1 stays per module (its median over modules sits near 0, so no ratio to chance is stable)
SUMMARY_STATS = {
    "intruders": ("intruders", "sum"),
    "rotation_left_deg": ("rotation_left_deg", "median"),
    "rotation_right_deg": ("rotation_right_deg", "median"),
    "sv_change": ("sv_change", "median"),
}
SPECTRUM_TABLES = ("modules", "summary")
BASE_SVD_FORMAT = "lossgeom.base_svd"
BASE_SVD_VERSION = 2  # 2: a "meta" entry with the weight's digest and the arrays' (version 1 files had none)


@dataclass(frozen=True)
class BaseSVD:
    """The thin SVD of one base weight: ``U`` ``(d_out, q)`` every left singular vector (the intruder test
    compares with all of them), ``S`` ``(q,)`` descending, ``V`` ``(d_in, k)`` the top-``k`` right singular
    vectors (the rotation reads only those; ``q = min(d_out, d_in)``)."""

    U: np.ndarray
    S: np.ndarray
    V: np.ndarray


class BaseSVDCacheError(InputError):
    """A base-SVD cache file that cannot be trusted (the message says why)."""


def _base_svd_digest(weight: str, arrays: Mapping[str, np.ndarray]) -> str:
    """The digest a base-SVD file carries: format, version, the weight's SHA-256 and the arrays."""
    return arrays_digest(arrays, BASE_SVD_FORMAT, str(BASE_SVD_VERSION), weight)


def _read_base_svd(path: Path, weight: str, shape: tuple[int, int]) -> BaseSVD:
    """A cached :class:`BaseSVD` whose format, version, weight and content digest check out.

    Raises:
        BaseSVDCacheError: unreadable (empty, truncated, not a zip, a bad zip CRC), another format or
        version (no ``meta`` entry: written by older code), the SVD of another weight, a digest mismatch,
        or shapes that are not those of a ``shape`` weight's SVD.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {n: z[n] for n in ("U", "S", "V")}
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        meta = meta if isinstance(meta, dict) else {}
    except Exception as e:  # noqa: BLE001 - whatever np.load/zipfile raise on a damaged file, reported alike
        raise BaseSVDCacheError(f"unreadable ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if meta.get("format") != BASE_SVD_FORMAT or meta.get("version") != BASE_SVD_VERSION:
        raise BaseSVDCacheError(
            f"not a {BASE_SVD_FORMAT} v{BASE_SVD_VERSION} file (format={meta.get('format')!r}, "
            f"version={meta.get('version')!r}: written by older or other code)"
        )
    if meta.get("weight") != weight:
        raise BaseSVDCacheError(f"the SVD of another weight ({str(meta.get('weight'))[:16]}...)")
    if meta.get("digest") != _base_svd_digest(weight, arrays):
        raise BaseSVDCacheError("content digest mismatch (the file changed after it was written)")
    U, S, V = arrays["U"], arrays["S"], arrays["V"]
    q = min(shape)
    if U.shape != (shape[0], q) or S.shape != (q,) or V.ndim != 2 or V.shape[0] != shape[1]:
        raise BaseSVDCacheError(f"shapes U {U.shape}, S {S.shape}, V {V.shape} for a {shape} weight")
    return BaseSVD(U, S, V)


def base_svd(W: np.ndarray, k: int, cache_dir: str | Path | None = None) -> BaseSVD:
    """The thin SVD of a base weight (:class:`BaseSVD`, ``k`` right vectors), float64, read from ``cache_dir``
    when it holds the SVD of this very weight with at least ``k`` right vectors, else computed with LAPACK and
    saved there (atomically).

    A file is named by the SHA-256 of the weight's shape and float64 bytes (its first 32 hex digits) and
    holds ``U``, ``S``, ``V`` and ``meta`` (JSON: format, version, the whole SHA-256 of the weight, and
    ``digest``: :func:`lossgeom.fsutil.arrays_digest` of the three arrays under those). A file that fails any
    check (:func:`_read_base_svd`) is recomputed and replaced, with one WARNING line naming it and why."""
    W = np.ascontiguousarray(W, dtype=np.float64)
    k = min(k, min(W.shape))
    path = None
    if cache_dir is not None:
        h = hashlib.sha256(repr(W.shape).encode())
        h.update(memoryview(W))  # the contiguous float64 bytes, without a copy
        weight = h.hexdigest()
        path = Path(cache_dir) / f"{weight[:32]}.npz"
        if path.is_file():
            try:
                cached = _read_base_svd(path, weight, W.shape)
            except BaseSVDCacheError as e:
                log.warning("base SVD cache %s: %s; recomputing it", path, e)
            else:
                if cached.V.shape[1] >= k:
                    return BaseSVD(cached.U, cached.S, cached.V[:, :k])
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    out = BaseSVD(U, S, np.ascontiguousarray(Vt[:k].T))
    if path is not None:
        arrays = {"U": out.U, "S": out.S, "V": out.V}
        meta = {"format": BASE_SVD_FORMAT, "version": BASE_SVD_VERSION, "weight": weight}
        meta["digest"] = _base_svd_digest(weight, arrays)
        with atomic_path(path) as tmp:  # one file: its digest is never out of step with its arrays
            with open(tmp, "wb") as f:
                np.savez(f, **arrays, meta=np.array(json.dumps(meta)))
    return out


def top_singular(W: np.ndarray, B: np.ndarray, A: np.ndarray, scale: float, k: int):
    """Top-``k`` singular triplets of ``W + scale B A`` (``B`` ``(d_out, r)``, ``A`` ``(r, d_in)``), float64.

    Returns ``(U (d_out, k), S (k,) descending, V (d_in, k))``. Lanczos (ARPACK, ``tol=0``, a fixed
    start vector) on the operator, never forming the sum; the dense SVD where ``k >= min(d_out, d_in)``."""
    W = np.asarray(W, dtype=np.float64)
    sB = float(scale) * np.asarray(B, dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)
    if k >= min(W.shape):
        U, S, Vt = np.linalg.svd(W + sB @ A, full_matrices=False)
        return U[:, :k], S[:k], Vt[:k].T
    op = LinearOperator(
        W.shape,
        matvec=lambda x: W @ x + sB @ (A @ x),
        rmatvec=lambda y: W.T @ y + A.T @ (sB.T @ y),
        matmat=lambda X: W @ X + sB @ (A @ X),
        rmatmat=lambda Y: W.T @ Y + A.T @ (sB.T @ Y),
        dtype=np.float64,
    )
    U, S, Vt = svds(op, k=k, tol=0, solver="arpack", random_state=0)
    order = np.argsort(S)[::-1]
    return U[:, order], S[order], Vt[order].T


def spectrum_stats(base: BaseSVD, U: np.ndarray, S: np.ndarray, V: np.ndarray, threshold: float) -> dict:
    """The statistics of :data:`MODULE_STATS` for a tuned weight's top-``k`` triplets ``U, S, V`` (``k`` =
    ``len(S)``) against the base's SVD (see the module docstring)."""
    k = len(S)
    max_cos = np.max(np.abs(base.U.T @ U), axis=0)  # (k,): each u'_j's largest |cos| to any base vector
    left = np.degrees(lowrank.principal_angles(base.U[:, :k], U))
    right = np.degrees(lowrank.principal_angles(base.V[:, :k], V))  # base.V holds at least k
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = S / base.S[:k] - 1.0
    return {
        "intruders": int(np.sum(max_cos < threshold)),
        "min_max_cos": float(np.min(max_cos)),
        "rotation_left_deg": float(np.mean(left)),
        "rotation_left_max_deg": float(np.max(left)),
        "rotation_right_deg": float(np.mean(right)),
        "rotation_right_max_deg": float(np.max(right)),
        "sv_change": float(np.mean(np.abs(rel))),
        "sv_change_top1": float(rel[0]),
    }


def random_delta(S: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Factors ``(B, A)`` of ``U_r diag(S) V_r^T``: ``len(S)`` singular values ``S`` on Haar-random
    orthonormal bases ``U_r`` ``(d_out, r)``, ``V_r`` ``(d_in, r)`` (QR of a Gaussian, signs fixed)."""

    def haar(d: int, r: int) -> np.ndarray:
        Q, R = np.linalg.qr(rng.standard_normal((d, r)))
        return Q * np.sign(np.diag(R))

    S = np.asarray(S)[: min(shape)]  # beyond min(d_out, d_in) a delta's singular values are zero padding
    r = len(S)
    return haar(shape[0], r) * S, haar(shape[1], r).T


def _rng(seed: int, label: str, module: str) -> np.random.Generator:
    """One generator per (adapter, module), the same whatever else is in the study or its order."""
    return np.random.default_rng([seed, zlib.crc32(label.encode()), zlib.crc32(module.encode())])


def base_spectrum(
    caches: Mapping[str, FactorCache],
    base_weights: Mapping[str, np.ndarray],
    top_k: int = 10,
    threshold: float = 0.5,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """``modules.tsv``: one row per adapter and module with a base weight: ``label, module, layer, d_out,
    d_in, k`` and every statistic of :data:`MODULE_STATS` with its ``chance_`` twin.

    Modules are taken one at a time (the base SVD of one module in memory, then every adapter's).
    Raises:
        AdapterMismatchError: a base weight's shape differs from the module's ``(d_out, d_in)``; no adapter
            module has a base weight.
    """
    bw = canonical_base_weights(base_weights)
    # the adapters' module order (layer, then name), whatever order the base weights come in
    names = [n for n in dict.fromkeys(n for c in caches.values() for n in c.modules) if n in bw]
    if not names:
        some = next(iter(caches.values()))
        raise AdapterMismatchError(
            f"base spectrum: none of the base weights ({sorted(bw)[:3]} ...) is a module of the adapters "
            f"({list(some.modules)[:3]} ...)"
        )
    it = names
    if progress:
        from tqdm import tqdm

        it = tqdm(names, desc="base spectrum: modules", unit="module")
    rows = []
    for name in it:
        W = np.asarray(bw[name], dtype=np.float64)
        base = None
        for label, c in caches.items():
            m = c.modules.get(name)
            if m is None:
                continue
            if tuple(W.shape) != m.shape:
                raise AdapterMismatchError(
                    f"base weight of {name!r}: expected shape (d_out, d_in) = {m.shape}, found {W.shape}"
                )
            if base is None:
                base = base_svd(W, top_k, cache_dir)
            rows.append(_module_row(label, m, W, base, top_k, threshold, seed))
    return pd.DataFrame(rows)


def _module_row(label: str, m, W: np.ndarray, base: BaseSVD, top_k: int, threshold: float, seed: int) -> dict:
    """One row of ``modules.tsv``: the statistics of ``W + dW`` and of ``W`` plus its chance-level delta."""
    k = min(top_k, len(base.S))
    stats = spectrum_stats(base, *top_singular(W, m.B, m.A, m.scale, k), threshold)
    Br, Ar = random_delta(m.S, m.shape, _rng(seed, label, m.name))
    chance = spectrum_stats(base, *top_singular(W, Br, Ar, 1.0, k), threshold)
    return {
        "label": label,
        "module": m.name,
        "layer": m.layer,
        "d_out": m.shape[0],
        "d_in": m.shape[1],
        "k": k,
        **stats,
        **{f"chance_{s}": v for s, v in chance.items()},
    }


def _floor(values: pd.Series, labels: list[Label | None], method: str, kind: str) -> float:
    """Mean |difference| of a statistic over one method's pairs of adapters of one kind (``data``: same
    init, another data order; ``seed``: another init seed): :func:`lossgeom.labels.mean_pair_difference`."""
    return mean_pair_difference(values.to_numpy(), labels, method, kind)


def spectrum_summary(modules: pd.DataFrame) -> pd.DataFrame:
    """``summary.tsv``: one row per adapter and statistic of :data:`SUMMARY_STATS` (intruders summed over
    modules, the others their median over modules): ``label, method, init_seed, data_seed, statistic,
    n_modules, value, chance, ratio_to_chance`` (``value / chance``) and the floors a difference between
    two methods is read against: ``data_floor`` (the mean |difference| of ``value`` between the method's
    adapters of one init and two data orders), ``seed_floor`` (two inits), and the same of
    ``ratio_to_chance`` (``ratio_data_floor``, ``ratio_seed_floor``); ``nan`` where the method has no such pair.
    """
    rows = []
    for stat, (col, how) in SUMMARY_STATS.items():
        g = modules.groupby("label", sort=False)
        value = g[col].agg(how)
        chance = g[f"chance_{col}"].agg(how)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = value / chance
        labels = [Label.try_parse(l) for l in value.index]
        for i, label in enumerate(value.index):
            lab = labels[i]
            method = lab.method if lab else label
            rows.append(
                {
                    "label": label,
                    "method": method,
                    "init_seed": lab.seed if lab else np.nan,
                    "data_seed": lab.data_order_seed if lab else np.nan,
                    "statistic": stat,
                    "n_modules": int(g.size().loc[label]),
                    "value": float(value.iloc[i]),
                    "chance": float(chance.iloc[i]),
                    "ratio_to_chance": float(ratio.iloc[i]),
                    "data_floor": _floor(value, labels, method, "data"),
                    "seed_floor": _floor(value, labels, method, "seed"),
                    "ratio_data_floor": _floor(ratio, labels, method, "data"),
                    "ratio_seed_floor": _floor(ratio, labels, method, "seed"),
                }
            )
    return pd.DataFrame(rows)


def write_base_spectrum(
    caches: Mapping[str, FactorCache],
    base_weights: Mapping[str, np.ndarray],
    out_dir: str | Path,
    top_k: int = 10,
    threshold: float = 0.5,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Write ``modules.tsv`` (:func:`base_spectrum`), ``summary.tsv`` (:func:`spectrum_summary`) and
    ``settings.json`` into ``out_dir``, the directory as a whole (:func:`lossgeom.fsutil.atomic_swap_dir`):
    exactly these files, or after any failure its previous contents untouched; returns the summary. An
    ``out_dir`` holding other files, or ``cache_dir`` inside it, stops before any work."""
    check_replaceable(out_dir, keep=(cache_dir,))
    modules = base_spectrum(caches, base_weights, top_k, threshold, seed, cache_dir, progress)
    summary = spectrum_summary(modules)
    settings = {
        "labels": list(caches),
        "sources": [c.source for c in caches.values()],
        "top_k": top_k,
        "threshold": threshold,
        "seed": seed,
        "angle_unit": "degrees",
        "chance": "the same statistic for U_r diag(S_dW) V_r^T, U_r and V_r Haar-random: one draw per adapter and module",
    }
    with atomic_swap_dir(out_dir) as tmp:
        write_table(modules, tmp / "modules.tsv")
        write_table(summary, tmp / "summary.tsv")
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    log.info(
        "wrote the base spectrum of %d adapters (%d modules) to %s", len(caches), modules["module"].nunique(), out_dir
    )
    return summary
