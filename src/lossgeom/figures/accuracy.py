"""Accuracy figures (the paper's accuracy analysis; rule ``accuracy_figures``): greedy pass@1 per model
with its confidence interval, and the pairwise McNemar p-values, one pair of figures per test set, from the
tables of :func:`lossgeom.behaviour.accuracy.accuracy_statistics` (``eval/accuracy.tsv``,
``eval/pairwise.tsv``).

Every public ``plot_*`` function takes tidy DataFrames and an output path ending in ``.png``; it writes
that PNG and a PDF of the same figure beside it (same stem, ``.pdf``), and returns both paths (canvas,
style and atomic, metadata-free saving: :mod:`.common`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm

from ..errors import InputError
from ..fsutil import read_tsv_or
from ..labels import Label
from .common import (
    figure,
    method_colour,
    model_name,
    ordered_models,
    require_columns,
    save,
    style,
    symmetric_matrix,
)

__all__ = ["accuracy_figures", "plot_accuracy", "plot_pairwise_pvalues"]

# the columns accuracy_figures reads of the accuracy statistics' tables
ACCURACY_COLUMNS = ("test_set", "model", "accuracy", "ci_low", "ci_high")
PAIRWISE_COLUMNS = ("test_set", "model_a", "model_b", "p_holm")


def accuracy_figures(
    accuracy: str | os.PathLike, pairwise: str | os.PathLike, out_dir: str | os.PathLike
) -> list[Path]:
    """``accuracy_{test_set}.png`` and ``mcnemar_{test_set}.png`` (and their PDFs) in ``out_dir`` for every
    test set of the accuracy table; returns the written paths."""
    out_dir = Path(out_dir)
    acc = read_tsv_or(
        Path(accuracy), InputError, ACCURACY_COLUMNS, "an accuracy.tsv of 'lossgeom measure-stats accuracy'"
    )
    pairs = read_tsv_or(
        Path(pairwise), InputError, PAIRWISE_COLUMNS, "a pairwise.tsv of 'lossgeom measure-stats accuracy'"
    )
    written = []
    for t in acc["test_set"].unique():
        written += plot_accuracy(
            acc[acc["test_set"] == t].set_index("model"), out_dir / f"accuracy_{t}.png", title=f"greedy pass@1 on {t}"
        )
        written += plot_pairwise_pvalues(
            pairs[pairs["test_set"] == t], out_dir / f"mcnemar_{t}.png", title=f"exact McNemar, Holm-adjusted p ({t})"
        )
    return written


def plot_accuracy(
    table: pd.DataFrame,
    out_path: str | os.PathLike,
    *,
    title: str | None = None,
    ylabel: str = "pass@1 accuracy (%)",
    ci_label: str | None = None,
) -> tuple[Path, Path]:
    """Bar chart of accuracy per model with asymmetric confidence-interval error bars, grouped by
    method (models ``{method}/seed{seed}`` in method order, one colour per method across every
    figure, :func:`.common.method_colour`); the base model is drawn as a dashed reference line.

    Parameters
    ----------
    table : DataFrame as returned by :func:`lossgeom.behaviour.stats.accuracy_table`: one row per model
        (model name in the index, or in a ``model`` column), columns ``accuracy``, ``ci_low``,
        ``ci_high`` as fractions in [0, 1]; an optional ``n`` column (items) goes in the title.
        Bars keep the row order.
    out_path : path ending in ``.png``; a ``.pdf`` is written beside it.
    title : figure title; default ``"n = <items> items; error bars: <ci_label>"``.
    ylabel : y-axis label; values are plotted in percent.
    ci_label : what the error bars are (goes into the default title); default from the table's
        ``ci_method`` column (else "95% CI").

    Long because it lays out one figure (bars, intervals, annotations, the base line); the pieces share
    the axes.
    """
    require_columns(table, ["accuracy", "ci_low", "ci_high"], "accuracy table")
    t = table.reset_index() if "model" not in table.columns else table
    if "model" not in t.columns:  # index had another name
        t = t.rename(columns={t.columns[0]: "model"})
    if ci_label is None:
        ci_label = f"95% {t['ci_method'].iloc[0].replace('_', '-')} interval" if "ci_method" in t.columns else "95% CI"
    base_row = t[t["model"].astype(str) == "base"]
    t = t[t["model"].astype(str) != "base"] if len(t) > len(base_row) else t
    t = t.assign(_method=[Label.method_of(str(m)) for m in t["model"]])
    order = list(dict.fromkeys(t["_method"]))
    t = t.sort_values("_method", key=lambda c: c.map(order.index), kind="stable")
    models = t["model"].astype(str).tolist()
    acc = 100.0 * t["accuracy"].to_numpy(dtype=float)
    low = 100.0 * t["ci_low"].to_numpy(dtype=float)
    high = 100.0 * t["ci_high"].to_numpy(dtype=float)
    if np.any(low > acc + 1e-9) or np.any(high < acc - 1e-9):
        raise InputError("accuracy table: every CI must contain its accuracy")
    if title is None:
        title = f"error bars: {ci_label}"
        if "n" in t.columns and t["n"].nunique() == 1:
            title = f"n = {int(t['n'].iloc[0])} items; {title}"

    with style("whitegrid"):
        fig, ax = figure(width=max(3.5, 0.75 * len(models) + 1.5), height=3.2)
        colors = [method_colour(m) for m in t["_method"]]
        x = np.arange(len(models))
        ax.bar(x, acc, color=colors, edgecolor="black", linewidth=0.5)
        if len(base_row) and len(t) and "base" not in models:
            b = 100.0 * float(base_row["accuracy"].iloc[0])
            ax.axhline(b, color="k", ls="--", lw=1)
            ax.annotate(
                f"base {b:.1f}", (x[0] - 0.45, b), xytext=(0, 2), textcoords="offset points", ha="left", fontsize=7
            )
        ax.errorbar(x, acc, yerr=np.vstack([acc - low, high - acc]), fmt="none", ecolor="black", capsize=3, linewidth=1)
        for xi, a, h in zip(x, acc, high):
            ax.annotate(
                f"{a:.1f}", (xi, h), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7
            )
        names = [model_name(m) for m in models]
        ax.set_xticks(x, names, rotation=30 if len(models) > 4 else 0, ha="right" if len(models) > 4 else "center")
        ax.set_xlabel("model")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, min(100.0, float(np.max(high)) * 1.12 + 1.0))
        if title:
            ax.set_title(title)
        return save(fig, out_path)


def plot_pairwise_pvalues(
    pairwise: pd.DataFrame,
    out_path: str | os.PathLike,
    *,
    column: str = "p_holm",
    alpha: float = 0.05,
    title: str | None = None,
) -> tuple[Path, Path]:
    """Symmetric model x model heatmap of (by default Holm-adjusted) McNemar p-values.

    Parameters
    ----------
    pairwise : DataFrame as returned by :func:`lossgeom.behaviour.stats.pairwise_tests` (columns
        ``model_a``, ``model_b`` and ``column``); each unordered pair once. Models keep their order
        of first appearance. Pairs absent from the frame and the diagonal are left blank.
    column : which p-value column to show (``"p_holm"`` or ``"p"``).
    alpha : cells with p < alpha are starred in their annotation.

    Colour is on a log scale (p = 1e-12 .. 1); each cell is annotated with its p-value.
    """
    require_columns(pairwise, ["model_a", "model_b", column], "pairwise table")
    if pairwise.empty:
        raise InputError("pairwise table has no pairs to plot")
    models = ordered_models(pairwise)
    mat = symmetric_matrix(pairwise, models, column, diagonal=np.nan)
    floor = 1e-12  # colour floor so p = 0 or astronomically small values stay plottable
    shown = np.clip(mat.to_numpy(dtype=float), floor, 1.0)
    annot = np.full(mat.shape, "", dtype=object)
    for (i, j), p in np.ndenumerate(mat.to_numpy(dtype=float)):
        if np.isfinite(p):
            annot[i, j] = f"{p:.2g}" + ("*" if p < alpha else "")
    label = ("Holm-adjusted " if column == "p_holm" else "") + "McNemar p (log scale)"

    with style("whitegrid"):
        k = len(models)
        fig, ax = figure(width=2.0 + 0.8 * k, height=1.0 + 0.8 * k)
        sns.heatmap(
            pd.DataFrame(shown, index=models, columns=models),
            mask=~np.isfinite(mat.to_numpy(dtype=float)),
            annot=annot,
            fmt="",
            annot_kws={"fontsize": 7},
            cmap="mako",
            norm=LogNorm(vmin=floor, vmax=1.0),
            square=True,
            linewidths=0.5,
            cbar_kws={"label": label},
            ax=ax,
        )
        ax.grid(False)  # the style's grid would show through masked cells
        ax.set_xlabel("model")
        ax.set_ylabel("model")
        ax.set_title(title if title is not None else f"pairwise exact McNemar (* p < {alpha:g})")
        return save(fig, out_path)
