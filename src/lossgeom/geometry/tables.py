"""Tables of the pairwise geometry: labelled square matrices, per-layer and long tables, the noise
floor beside every cross-method value, and per-adapter summaries.

Noise floor: labels ``"{method}/seed{seed}"`` (and data-order replicates ``.../seed{seed}data{d}``;
:class:`lossgeom.labels.Label`) define methods (a label that does not parse is its own method).
Beside each value, ``noise_floor.tsv`` gives the floor that matches the comparison (the same
method's same-init, other-data-order pairs for a shared-init pair; its other-init pairs for a pair
of two inits) and the value expected for unrelated directions
(:func:`lossgeom.geometry.reference.random_reference`).

* ``orthogonal_fraction``: ``||dW_b - P_a dW_b|| / ||dW_b||`` with ``P_a`` the projection onto the
  direction of ``dW_a`` (global, or per layer with both restricted to the layer). Projection onto a
  single direction makes it ``sqrt(1 - cos^2)``, the same both ways.
* ``norm_ratio``: ``||dW_b||_F / ||dW_a||_F`` (square matrix entry ``[a, b]``; global).
* angles in **degrees**; the top-1 (smallest) and the worst (``k``-th, largest) angle per module,
  their median and IQR (75th - 25th percentile) over modules; top-1 agreement as the mean over modules.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..labels import Label
from ..lora import lowrank
from .factors import FactorCache
from .pairwise import PairGeometry
from .reductions import naniqr0, nanmean0, nanmedian0
from .reference import random_reference


def label_for_dir(path: str | Path) -> str:
    """The label of an adapter directory (:meth:`Label.from_dir`: ``.../{method}/seed{seed}`` and
    ``.../{method}/seed{seed}data{d}``); otherwise the directory's own name."""
    try:
        return str(Label.from_dir(path))
    except ValueError:
        return Path(os.path.abspath(path)).name  # abspath: "." and ".." have no name of their own


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


def pair_values(geo: PairGeometry) -> dict[str, np.ndarray]:
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
        vals[f"top1_angle_{side}_median"] = nanmedian0(top1)
        vals[f"top1_angle_{side}_iqr"] = naniqr0(top1)
        vals[f"worst_angle_{side}_median"] = nanmedian0(worst)
        vals[f"worst_angle_{side}_iqr"] = naniqr0(worst)
        vals[key] = nanmean0(geo.agreement[side])
    return vals


def _last_valid(ang: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``ang[..., k-1]`` (the k-th angle) for ``ang`` ``(M, P, kk)`` and ``k`` ``(M, P)``."""
    idx = np.clip(k - 1, 0, ang.shape[-1] - 1)
    out = np.take_along_axis(ang, idx[..., None], axis=-1)[..., 0]
    return np.where(k > 0, out, np.nan)


def square_matrices(geo: PairGeometry) -> dict[str, pd.DataFrame]:
    """Metric -> labelled ``n x n`` DataFrame (entry ``[a, b]``; see ``SQUARE_METRICS``)."""
    n = len(geo.labels)
    vals = pair_values(geo)
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
    return pd.DataFrame(
        {
            "pair_a": np.tile(lab[i], L),
            "pair_b": np.tile(lab[j], L),
            "layer": np.repeat(lay, P),
            "n_modules": np.repeat(counts, P),
            "cosine": c.ravel(),
            "orthogonal_fraction": lowrank.orthogonal_fraction_from_cosine(c).ravel(),
            "norm_a": nrm[:, i].ravel(),
            "norm_b": nrm[:, j].ravel(),
            "norm_ratio": ratio.ravel(),
        }
    )


def long_table(geo: PairGeometry) -> pd.DataFrame:
    """Columns ``pair_a, pair_b, module, layer, side, metric, value`` (pairs ``a < b``).

    ``module = "*"`` for aggregates; ``layer = "*"`` for global rows; ``side`` is ``left``
    (output), ``right`` (input) or ``both``. Angles in degrees. Per module: ``cosine``,
    ``angle_top1_deg``, ``angle_worst_deg``, ``top1_agreement``, ``k``. Per layer: ``cosine``,
    ``orthogonal_fraction``, ``norm_ratio``. Global: those of :data:`SQUARE_METRICS` renamed
    (``angle_top1_deg_median``, ``angle_top1_deg_iqr``, ``angle_worst_deg_median``, ...,
    ``top1_agreement_mean``).

    Long because it is one row layout written out column by column, the table's documentation in code.
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
        parts.append(
            pd.DataFrame(
                {
                    "pair_a": np.broadcast_to(a, size) if np.ndim(a) == 0 else a,
                    "pair_b": np.broadcast_to(b, size) if np.ndim(b) == 0 else b,
                    "module": np.broadcast_to(module, size) if np.ndim(module) == 0 else module,
                    "layer": np.broadcast_to(layer, size) if np.ndim(layer) == 0 else layer,
                    "side": side,
                    "metric": metric,
                    "value": value,
                }
            )
        )

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
        add(
            pl["pair_a"].to_numpy(),
            pl["pair_b"].to_numpy(),
            "*",
            pl["layer"].to_numpy().astype(object),
            "both",
            metric,
            pl[metric].to_numpy(),
        )
    # global
    vals = pair_values(geo)
    add(lab[i], lab[j], "*", "*", "both", "cosine", vals["cosine_global"])
    add(lab[i], lab[j], "*", "*", "both", "orthogonal_fraction", vals["orthogonal_fraction_global"])
    add(lab[i], lab[j], "*", "*", "both", "norm_ratio", vals["norm_ratio"])
    for side, agr in (("left", "u1_agreement"), ("right", "v1_agreement")):
        for which in ("top1", "worst"):
            for stat in ("median", "iqr"):
                add(lab[i], lab[j], "*", "*", side, f"angle_{which}_deg_{stat}", vals[f"{which}_angle_{side}_{stat}"])
        add(lab[i], lab[j], "*", "*", side, "top1_agreement_mean", vals[agr])
    return pd.concat(parts, ignore_index=True)


NOISE_FLOOR_COLUMNS = [
    "pair_a",
    "pair_b",
    "method_a",
    "method_b",
    "kind",
    "init",
    "data_order",
    "metric",
    "value",
    "seed_floor_a",
    "seed_floor_b",
    "n_seed_pairs_a",
    "n_seed_pairs_b",
    "seed_floor",
    "data_floor_a",
    "data_floor_b",
    "n_data_pairs_a",
    "n_data_pairs_b",
    "data_floor",
    "floor",
    "floor_kind",
    "random",
]


def noise_floor_table(geo: PairGeometry) -> pd.DataFrame:
    """One row per pair and headline metric, with the noise floor that matches the comparison and
    the random reference.

    A label ``"{method}/seed{s}"`` has LoRA-init seed ``s`` and data-order seed ``s``;
    ``"{method}/seed{s}data{d}"`` (a data-order replicate) has init ``s`` and data order ``d``.
    Two floors per method, each the mean of the metric over that method's own pairs of one kind:

    * ``seed_floor_{a,b}`` (init-seed floor): same method, different init seed (which also changes
      the data order unless ``training.data_seed`` is fixed); ``n_seed_pairs_{a,b}`` pairs;
    * ``data_floor_{a,b}`` (data-order floor): same method, same init, different data order;
      ``n_data_pairs_{a,b}`` pairs.

    ``seed_floor`` / ``data_floor``: the mean of the available of the two methods' floors (``nan``
    when neither method has such a pair). ``floor`` is the one that matches the row: the data-order
    floor for a shared-init pair (``init == "shared"``: cross-method values of one seed share their
    LoRA init, which inflates their similarity), the init-seed floor for a pair of two inits;
    ``floor_kind`` says which. ``random`` is :func:`random_reference`. ``kind`` is ``cross-method``
    or ``same-method``; ``data_order`` is ``same`` or ``other``. Cross-method rows come first.

    Long because each pair kind (shared init, across seeds) has its floor rule stated next to its code.
    """
    vals = pair_values(geo)
    ref = random_reference(geo)
    # a label that does not parse is its own method (Label.method_of), with unknown seeds (None)
    parsed = [Label.try_parse(l) for l in geo.labels]
    meth = np.array([Label.method_of(l) for l in geo.labels], dtype=object)
    seed = [None if p is None else p.init_seed for p in parsed]
    data = [None if p is None else p.data_order_seed for p in parsed]
    i, j = geo.pairs[:, 0], geo.pairs[:, 1]
    same = meth[i] == meth[j]
    known = np.array([seed[a] is not None and seed[b] is not None for a, b in zip(i, j)], dtype=bool)
    shared_init = known & np.array([seed[a] == seed[b] for a, b in zip(i, j)], dtype=bool)
    same_data = known & np.array([data[a] == data[b] for a, b in zip(i, j)], dtype=bool)
    seed_pair = same & known & ~shared_init
    data_pair = same & shared_init & ~same_data
    rows = []
    for metric in NOISE_FLOOR_METRICS:
        v = vals[metric]

        def floors(sel_kind):
            out = {}
            for m in set(meth):
                sel = sel_kind & (meth[i] == m)
                ok = sel.any() and np.isfinite(v[sel]).any()
                out[m] = (float(np.nanmean(v[sel])) if ok else np.nan, int(sel.sum()))
            return out

        sfl, dfl = floors(seed_pair), floors(data_pair)
        r = ref.get(metric, np.full(len(v), np.nan))
        for p in range(len(v)):
            ma, mb = meth[i[p]], meth[j[p]]
            (fa, na), (fb, nb) = sfl[ma], sfl[mb]
            (da, nda), (db, ndb) = dfl[ma], dfl[mb]
            sf = _mean_available(fa, fb)
            df_ = _mean_available(da, db)
            shared = bool(shared_init[p])
            rows.append(
                (
                    geo.labels[i[p]],
                    geo.labels[j[p]],
                    ma,
                    mb,
                    "same-method" if same[p] else "cross-method",
                    "shared" if shared else ("other" if known[p] else "unknown"),
                    "same" if same_data[p] else "other",
                    metric,
                    v[p],
                    fa,
                    fb,
                    na,
                    nb,
                    sf,
                    da,
                    db,
                    nda,
                    ndb,
                    df_,
                    df_ if shared else sf,
                    "data-order" if shared else "init-seed",
                    r[p],
                )
            )
    df = pd.DataFrame(rows, columns=NOISE_FLOOR_COLUMNS)
    return df.sort_values("kind", kind="stable").reset_index(drop=True)


def _mean_available(a: float, b: float) -> float:
    avail = [x for x in (a, b) if np.isfinite(x)]
    return float(np.mean(avail)) if avail else np.nan


def adapters_table(caches: Mapping[str, FactorCache]) -> pd.DataFrame:
    """One row per adapter: label, method, seed, source, base model, modules, ranks, global norm,
    mean effective rank, mean stable rank (over modules), Householder fallbacks, fingerprint."""
    rows = []
    for label, c in caches.items():
        parsed = Label.try_parse(label)
        rows.append(
            {
                "label": label,
                "method": Label.method_of(label),
                "seed": "" if parsed is None else parsed.init_seed,
                "source": c.source,
                "base_model": c.base_model_name_or_path,
                **c.summary(),
                "fingerprint": c.fingerprint or "",
            }
        )
    return pd.DataFrame(rows)


def per_module_adapter_table(caches: Mapping[str, FactorCache]) -> pd.DataFrame:
    """One row per adapter and module: rank, scale, norm, effective and stable rank, numerical rank."""
    rows = []
    for label, c in caches.items():
        for name, m in c.modules.items():
            rows.append(
                (
                    label,
                    name,
                    m.layer,
                    m.rank,
                    m.scale,
                    m.norm,
                    m.effective_rank,
                    m.stable_rank,
                    m.numerical_rank,
                    float(m.S[0]),
                )
            )
    return pd.DataFrame(
        rows,
        columns=[
            "label",
            "module",
            "layer",
            "rank",
            "scale",
            "norm",
            "effective_rank",
            "stable_rank",
            "numerical_rank",
            "sigma_1",
        ],
    )
