"""Figures for the weight-space geometry (the paper's weight-space analyses: cosines, principal angles
and spectra of the deltas; rule ``geometry_figures``).

Inputs are the tables written by :func:`lossgeom.geometry.write_geometry` (a path to a ``.tsv``
or the DataFrame itself); every function writes a PNG at ``out_path`` (must end in ``.png``) and a
PDF beside it, and returns both paths. Figures are built on an explicit Agg canvas (no pyplot
state); files are written under a temporary sibling name and renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from ..errors import InputError
from ..fsutil import read_tsv_or
from ..labels import Label
from .common import figure, method_colour, method_name, model_name, save, style

__all__ = [
    "geometry_figures",
    "plot_geometry_heatmap",
    "plot_geometry_heatmaps",
    "plot_layer_profiles",
    "plot_method_summary",
    "HEATMAP_STYLES",
]


# square-matrix metric -> (colour-bar label, colormap, vmin, vmax, number format, title)
HEATMAP_STYLES: dict[str, tuple[str, str, float | None, float | None, str, str]] = {
    "cosine_global": ("cosine (unitless)", "vlag", -1.0, 1.0, ".2f", "Cosine of the LoRA deltas (all modules)"),
    "top1_angle_left_median": (
        "angle (degrees)",
        "mako",
        0.0,
        90.0,
        ".1f",
        "Median top-1 principal angle, output (left) subspaces",
    ),
    "top1_angle_right_median": (
        "angle (degrees)",
        "mako",
        0.0,
        90.0,
        ".1f",
        "Median top-1 principal angle, input (right) subspaces",
    ),
    "worst_angle_left_median": (
        "angle (degrees)",
        "mako",
        0.0,
        90.0,
        ".0f",
        "Median worst (k-th) principal angle, output subspaces",
    ),
    "orthogonal_fraction_global": (
        "orthogonal fraction (unitless)",
        "rocket_r",
        0.0,
        1.0,
        ".2f",
        "Orthogonal fraction of column off row (all modules)",
    ),
    "norm_ratio": ("||dW_col|| / ||dW_row||", "crest", None, None, ".2f", "Norm ratio of the deltas"),
}
DEFAULT_HEATMAPS = ("cosine_global", "top1_angle_left_median", "orthogonal_fraction_global")
# noise_floor.tsv metric -> the methods x methods figure of it
METHOD_SUMMARIES = {"cosine_global": "cosine_methods", "top1_angle_left_median": "top1_angle_methods"}
# the columns of noise_floor.tsv the summaries read
NOISE_FLOOR_COLUMNS = ("pair_a", "pair_b", "method_a", "method_b", "init", "data_order", "metric", "value", "random")


def geometry_figures(tables: str | os.PathLike, out_dir: str | os.PathLike, reference: str | None = None) -> list[Path]:
    """Every geometry figure from the directory the geometry job wrote (it reads the heatmap metrics'
    ``{metric}.tsv``, ``noise_floor.tsv`` and ``per_layer.tsv``) into ``out_dir``: a heatmap per metric of
    :data:`DEFAULT_HEATMAPS` (``{metric}.png``), the methods x methods summaries of
    :data:`METHOD_SUMMARIES` and ``per_layer_profiles.png`` against ``reference`` (default: the first
    adapter of ``cosine_global.tsv``), each with its PDF; returns the written paths."""
    tables, out_dir = Path(tables), Path(out_dir)
    written = []
    for metric in DEFAULT_HEATMAPS:
        written += plot_geometry_heatmap(tables / f"{metric}.tsv", out_dir / f"{metric}.png", metric=metric)
    for metric, name in METHOD_SUMMARIES.items():
        written += plot_method_summary(tables / "noise_floor.tsv", metric, out_dir / f"{name}.png")
    labels = _read(tables / "cosine_global.tsv", index=True).index.tolist()
    written += plot_layer_profiles(tables / "per_layer.tsv", reference or labels[0], out_dir / "per_layer_profiles.png")
    return written


def _read(table: pd.DataFrame | str | os.PathLike, index: bool, columns=()) -> pd.DataFrame:
    """``table``, or the table of 'lossgeom geometry' at that path: one that is not readable or lacks one of
    ``columns`` stops with one line naming it."""
    if isinstance(table, pd.DataFrame):
        return table
    what = f"a {Path(table).name} of 'lossgeom geometry'"
    return read_tsv_or(Path(table), InputError, columns, what, index_col=0 if index else None)


def plot_geometry_heatmap(
    matrix: pd.DataFrame | str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    metric: str | None = None,
    title: str | None = None,
) -> tuple[Path, Path]:
    """Annotated heatmap of one labelled square matrix (rows and columns ``"method/seed"``).

    Args:
        matrix: a ``{metric}.tsv`` written by :func:`lossgeom.geometry.write_geometry` (labels in
            the first column and the header) or the same as a DataFrame.
        out_path: ``.png`` path; a ``.pdf`` is written beside it.
        metric: selects colours and labels from :data:`HEATMAP_STYLES`; default the file stem.
        title: default from the metric.
    """
    df = _read(matrix, index=True)
    if metric is None and not isinstance(matrix, pd.DataFrame):
        metric = Path(matrix).stem
    cbar, cmap, vmin, vmax, fmt, default_title = HEATMAP_STYLES.get(
        metric or "", (metric or "value", "viridis", None, None, ".2g", metric or "")
    )
    values = df.to_numpy(dtype=float)
    n = len(df)
    with style():
        fig, ax = figure(width=2.2 + 0.75 * n, height=1.4 + 0.65 * n)
        sns.heatmap(
            df.astype(float),
            mask=~np.isfinite(values),
            annot=n <= 16,
            fmt=fmt,
            annot_kws={"fontsize": 7},
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            square=True,
            linewidths=0.5,
            cbar_kws={"label": cbar},
            ax=ax,
        )
        ax.set_xlabel("adapter (method/seed)")
        ax.set_ylabel("adapter (method/seed)")
        ax.tick_params(axis="x", labelrotation=45)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
        ax.set_title(title if title is not None else default_title)
        return save(fig, out_path)


def plot_geometry_heatmaps(
    geometry_dir: str | os.PathLike, out_dir: str | os.PathLike, metrics=DEFAULT_HEATMAPS
) -> list[Path]:
    """Heatmaps (cosine, top-1 angle, orthogonal fraction by default) from a geometry directory;
    writes ``out_dir/geometry_{metric}.png`` and ``.pdf``; returns the written paths."""
    out = []
    for metric in metrics:
        out.extend(
            plot_geometry_heatmap(
                Path(geometry_dir) / f"{metric}.tsv", Path(out_dir) / f"geometry_{metric}.png", metric=metric
            )
        )
    return out


def plot_layer_profiles(
    per_layer: pd.DataFrame | str | os.PathLike,
    reference: str,
    out_path: str | os.PathLike,
    *,
    title: str | None = None,
) -> tuple[Path, Path]:
    """Cosine per layer (top) and orthogonal fraction per layer (bottom) of every adapter vs one.

    Args:
        per_layer: ``per_layer.tsv`` of :func:`lossgeom.geometry.write_geometry` (columns
            ``pair_a, pair_b, layer, cosine, orthogonal_fraction``) or that DataFrame.
        reference: label every other adapter is compared with (e.g. ``"sft/seed42"``).
        out_path: ``.png`` path; a ``.pdf`` is written beside it.
    """
    columns = ("pair_a", "pair_b", "layer", "cosine", "orthogonal_fraction")
    df = _read(per_layer, index=False, columns=columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"per-layer table lacks column(s) {missing}")
    sel = df[(df["pair_a"] == reference) | (df["pair_b"] == reference)].copy()
    if sel.empty:
        labels = sorted(set(df["pair_a"]) | set(df["pair_b"]))
        raise InputError(f"reference {reference!r} not in the per-layer table; labels: {labels}")
    sel["other"] = np.where(sel["pair_a"] == reference, sel["pair_b"], sel["pair_a"])
    sel = sel[sel["layer"] >= 0].sort_values(["other", "layer"])
    others = list(dict.fromkeys(sel["other"]))
    palette = {o: method_colour(Label.method_of(o)) for o in others}
    seeds = list(dict.fromkeys(Label.dir_name_of(o) for o in others))
    dashes = {sd: ("-", "--", ":", "-.")[i % 4] for i, sd in enumerate(seeds)}
    with style():
        fig, (ax1, ax2) = figure(width=7.0, height=5.2, nrows=2)
        for o in others:
            s = sel[sel["other"] == o]
            ls = dashes[Label.dir_name_of(o)]
            name = model_name(o)
            ax1.plot(s["layer"], s["cosine"], marker="o", markersize=3, color=palette[o], ls=ls, label=name)
            ax2.plot(
                s["layer"], s["orthogonal_fraction"], marker="o", markersize=3, color=palette[o], ls=ls, label=name
            )
        ax1.axhline(0.0, color="0.6", linewidth=0.8)
        ax1.set_ylabel("cosine (unitless)")
        ax1.set_ylim(min(-0.05, float(sel["cosine"].min()) - 0.05), 1.02)
        ax2.set_ylabel("orthogonal fraction (unitless)")
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_xlabel("layer")
        for ax in (ax1, ax2):
            ax.grid(True, alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax1.legend(
            title="adapter (method/seed)",
            fontsize=7,
            title_fontsize=7,
            frameon=False,
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
        )
        ax1.set_title(title if title is not None else f"Per-layer geometry vs {reference}")
        return save(fig, out_path)


SUMMARY_STYLES = {
    "cosine_global": ("cosine (unitless)", "vlag", -1.0, 1.0, "Cosine of the deltas, methods x methods"),
    "top1_angle_left_median": ("angle (degrees)", "mako", 0.0, 90.0, "Median top-1 principal angle (output side)"),
}


def plot_method_summary(
    noise_floor: pd.DataFrame | str | os.PathLike,
    metric: str,
    out_path: str | os.PathLike,
) -> tuple[Path, Path]:
    """Methods x methods summary of one metric from ``noise_floor.tsv``, both seeds shown.

    Off the diagonal, each cell is the shared-init value of the two methods at each seed (annotated
    ``seedA / seedB``; colour: their mean). On the diagonal, the method's own floors: the data-order
    floor (same init, another data order; ``d``) and the init-seed floor (another init; ``i``) -- the
    levels the off-diagonal shared-init and cross-seed values are read against. The random level is
    in the title.

    Long because it lays out one multi-panel figure; the panels share axes and the legend.
    """
    nf = _read(noise_floor, index=False, columns=NOISE_FLOOR_COLUMNS)
    nf = nf[nf["metric"] == metric]
    if nf.empty:
        raise InputError(f"noise-floor table has no metric {metric!r}")
    labels = list(dict.fromkeys(list(nf["pair_a"]) + list(nf["pair_b"])))
    parsed = [Label.parse(l) for l in labels]
    methods = list(dict.fromkeys(p.method for p in parsed))
    seeds = sorted({p.seed for p in parsed if not p.is_replicate})
    n = len(methods)
    mean = np.full((n, n), np.nan)
    text = np.full((n, n), "", dtype=object)
    for i, a in enumerate(methods):
        for j, b in enumerate(methods):
            if i == j:
                own = nf[(nf["method_a"] == a) & (nf["method_b"] == a)]
                d = own[(own["init"] == "shared") & (own["data_order"] == "other")]["value"]
                r = own[own["init"] == "other"]["value"]
                parts = ([f"d {d.mean():.2f}"] if len(d) else []) + ([f"i {r.mean():.2f}"] if len(r) else [])
                text[i, j] = "\n".join(parts)
                mean[i, j] = d.mean() if len(d) else np.nan
                continue
            vals = []
            for sd in seeds:
                la, lb = str(Label(a, sd)), str(Label(b, sd))
                row = nf[((nf["pair_a"] == la) & (nf["pair_b"] == lb)) | ((nf["pair_a"] == lb) & (nf["pair_b"] == la))]
                vals.append(float(row["value"].iloc[0]) if len(row) else np.nan)
            mean[i, j] = np.nanmean(vals) if np.isfinite(vals).any() else np.nan
            text[i, j] = " / ".join("-" if not np.isfinite(v) else f"{v:.2f}" for v in vals)
    cbar, cmap, vmin, vmax, title = SUMMARY_STYLES.get(metric, (metric, "viridis", None, None, metric))
    rnd = nf["random"].astype(float)
    names = [method_name(m) for m in methods]
    with style():
        fig, ax = figure(width=2.6 + 1.05 * n, height=1.6 + 0.8 * n)
        sns.heatmap(
            pd.DataFrame(mean, index=names, columns=names),
            annot=text,
            fmt="",
            annot_kws={"fontsize": 6.5},
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            square=True,
            linewidths=0.5,
            cbar_kws={"label": cbar},
            ax=ax,
            mask=~np.isfinite(mean),
        )
        for i in range(n):  # the diagonal holds floors, not a comparison: outline it
            ax.add_patch(
                __import__("matplotlib.patches", fromlist=["Rectangle"]).Rectangle(
                    (i, i), 1, 1, fill=False, lw=1.5, ec="k"
                )
            )
        ax.tick_params(axis="x", labelrotation=45)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
        seed_txt = " / ".join(f"seed {sd}" for sd in seeds)
        ax.set_title(
            f"{title}\noff-diagonal: shared init, {seed_txt}; diagonal: floors (d = data order, "
            f"i = init seed); random {rnd.mean():.2g}",
            fontsize=8,
        )
        return save(fig, out_path)
