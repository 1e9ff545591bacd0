"""Linear-mode-connectivity figures (the paper's linear-mode-connectivity analysis; rule
``connectivity_figures``): the curves of every swept pair along alpha, and one panel per pair with its
barrier, from the tables of
:func:`lossgeom.behaviour.connectivity.connectivity_summary` (``lmc/summary.tsv``, ``lmc/curves.tsv``).

Every public ``plot_*`` function takes tidy DataFrames and an output path ending in ``.png``; it writes
that PNG and a PDF of the same figure beside it (same stem, ``.pdf``), and returns both paths (canvas,
style and atomic, metadata-free saving: :mod:`.common`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import seaborn as sns

from ..errors import InputError
from ..fsutil import read_tsv_or
from ..labels import Label
from .common import figure, method_colour, model_name, pair_legend, require_columns, save, style

__all__ = ["connectivity_figures", "plot_lmc", "plot_lmc_pairs"]

# the columns connectivity_figures reads of lmc-summary's tables
CURVE_COLUMNS = ("pair_a", "pair_b", "alpha", "metric", "value")
SUMMARY_COLUMNS = ("pair_a", "pair_b", "metric", "barrier")

YLABELS = {
    "answer_ce": "answer-only CE (nats/token)",
    "solution_ce": "full-solution CE (nats/token)",
    "accuracy": "accuracy (fraction)",
}


def connectivity_figures(
    summary: str | os.PathLike, curves: str | os.PathLike, out_dir: str | os.PathLike
) -> list[Path]:
    """``lmc_pairs.png`` (one panel per pair, barrier marked) and ``lmc.png`` (every pair, one panel per
    metric), and their PDFs, in ``out_dir``; returns the written paths."""
    out_dir = Path(out_dir)
    curves = read_tsv_or(Path(curves), InputError, CURVE_COLUMNS, "a curves table of 'lossgeom lmc-summary'")
    summary = read_tsv_or(Path(summary), InputError, SUMMARY_COLUMNS, "a summary table of 'lossgeom lmc-summary'")
    written = list(plot_lmc_pairs(curves, summary, out_dir / "lmc_pairs.png"))
    curves["pair"] = curves["pair_a"] + " -> " + curves["pair_b"]
    written += plot_lmc(curves[["pair", "alpha", "metric", "value"]], out_dir / "lmc.png", ylabels=YLABELS)
    return written


def plot_lmc(
    curves: pd.DataFrame,
    out_path: str | os.PathLike,
    *,
    ylabels: Mapping[str, str] | None = None,
    xlabel: str = "α  (ΔW = (1−α)·ΔW_a + α·ΔW_b)",
    title: str | None = None,
) -> tuple[Path, Path]:
    """Linear-mode-connectivity curves: one panel per metric, one line per model pair.

    Parameters
    ----------
    curves : long DataFrame with columns ``pair`` (label, e.g. ``"SFT→GRPO"``), ``alpha``
        (float in [0, 1]; the project's convention, lossgeom.behaviour.interpolation: alpha = 0 is model a,
        alpha = 1 model b),
        ``metric`` (name) and ``value``. Rows repeated for the same (pair, alpha, metric) are
        averaged. Panels follow the metrics' order of first appearance; pairs keep one colour
        across panels.
    ylabels : metric name -> y-axis label *with units*, e.g.
        ``{"answer_ce": "answer cross-entropy (nats/token)"}``; unmapped metrics use their name.
    """
    require_columns(curves, ["pair", "alpha", "metric", "value"], "LMC table")
    if curves.empty:
        raise InputError("LMC table is empty")
    a = curves["alpha"].to_numpy(dtype=float)
    if np.any(~np.isfinite(a)) or np.any(a < 0) or np.any(a > 1):
        raise InputError("LMC table: alpha must lie in [0, 1]")
    ylabels = dict(ylabels or {})
    metrics = list(dict.fromkeys(curves["metric"]))
    pairs = list(dict.fromkeys(curves["pair"].astype(str)))
    data = curves.assign(pair=curves["pair"].astype(str))
    palette = dict(zip(pairs, sns.color_palette("colorblind", len(pairs))))

    with style("whitegrid"):
        fig, axes = figure(width=3.3 * len(metrics) + 1.6, height=3.0, ncols=len(metrics))
        for ax, metric in zip(axes, metrics):
            sub = data[data["metric"] == metric]
            sns.lineplot(
                data=sub,
                x="alpha",
                y="value",
                hue="pair",
                hue_order=pairs,
                palette=palette,
                estimator="mean",
                errorbar=None,
                marker="o",
                markersize=4,
                ax=ax,
                legend=False,
            )
            ax.set_xlim(0.0, 1.0)
            ax.set_xlabel(xlabel, fontsize=7)
            ax.set_ylabel(ylabels.get(metric, str(metric)))
            ax.set_title(str(metric))
        pair_legend(fig, pairs, palette, title="pair (a→b)")
        if title:
            fig.suptitle(title)
        return save(fig, out_path)


def plot_lmc_pairs(
    curves: pd.DataFrame,
    summary: pd.DataFrame,
    out_path: str | os.PathLike,
    *,
    metric: str = "answer_ce",
    ylabel: str = "answer-only CE (nats/token)",
) -> tuple[Path, Path]:
    """One panel per swept pair: ``metric`` along alpha, the straight line between the endpoints
    (dashed) and the barrier (the largest excess over that line) marked and stated in the title,
    absolute and as a percentage of the endpoints' mean.

    ``curves``: long table with ``pair_a, pair_b, alpha, metric, value`` (``lmc/curves.tsv``);
    ``summary``: ``pair_a, pair_b, metric, barrier`` (``lmc/summary.tsv``). Same-method pairs
    (two seeds of one loss) come last.
    """
    require_columns(curves, ["pair_a", "pair_b", "alpha", "metric", "value"], "LMC curves")
    require_columns(summary, ["pair_a", "pair_b", "metric", "barrier"], "LMC summary")
    sub = curves[curves["metric"] == metric]
    if sub.empty:
        raise InputError(f"LMC curves have no metric {metric!r}")
    pairs = list(dict.fromkeys(zip(sub["pair_a"], sub["pair_b"])))
    pairs.sort(key=lambda p: Label.method_of(p[0]) == Label.method_of(p[1]))
    n = len(pairs)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    with style("whitegrid"):
        fig, axes = figure(width=3.0 * cols, height=2.6 * rows, nrows=rows, ncols=cols)
        axes = axes if isinstance(axes, list) else [axes]
        for ax, (a, b) in zip(axes, pairs):
            g = sub[(sub["pair_a"] == a) & (sub["pair_b"] == b)].groupby("alpha")["value"].mean().sort_index()
            al, v = g.index.to_numpy(float), g.to_numpy(float)
            line = (1 - al) * v[0] + al * v[-1]
            ax.plot(al, v, "o-", color=method_colour(Label.method_of(b)), ms=3, lw=1.3)
            ax.plot(al, line, "--", color="0.4", lw=1)
            row = summary[(summary["pair_a"] == a) & (summary["pair_b"] == b) & (summary["metric"] == metric)]
            bar = float(row["barrier"].iloc[0]) if len(row) else float(np.nanmax(v - line))
            k = int(np.nanargmax(v - line))
            if bar > 0:
                ax.vlines(al[k], line[k], v[k], color="k", lw=1.5)
            rel = 100 * bar / ((v[0] + v[-1]) / 2)
            ax.set_title(f"{model_name(a)} → {model_name(b)}\nbarrier {bar:.3g} ({rel:.0f}% of endpoints)", fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_xlabel("α (0 = first, 1 = second)", fontsize=7)
            ax.set_ylabel(ylabel, fontsize=7)
        for ax in axes[n:]:
            ax.set_visible(False)
        fig.suptitle(
            "Linear mode connectivity per pair: dashed = straight line between the endpoints; black bar = barrier",
            fontsize=9,
        )
        return save(fig, out_path)
