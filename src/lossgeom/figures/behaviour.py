"""Figures for the behavioural analyses (4-6 of PAPER.md): accuracy, McNemar p-values, LMC, CKA.

Every public function takes tidy DataFrames (the outputs of :mod:`lossgeom.behaviour.stats`,
:mod:`lossgeom.behaviour.cka`, or an LMC table) and an output path ending in ``.png``; it writes that PNG
and a PDF of the same figure beside it (same stem, ``.pdf``), and returns both paths.

Implementation notes
--------------------
* Figures are built as :class:`matplotlib.figure.Figure` objects attached to an explicit Agg
  canvas, never through ``pyplot``: no global figure registry, no GUI backend, nothing to
  close, safe to call from workers. Seaborn styles are applied through context managers so the
  caller's rcParams are left untouched.
* Files are written to a temporary file in the destination directory and moved into place with
  :func:`os.replace`, so a crashed or killed job never leaves a truncated figure that a workflow
  manager would take as finished. Volatile metadata (PDF creation date, software tag) is dropped
  so identical inputs give identical files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from .common import figure, method_colour, method_name, save, style

__all__ = [
    "plot_accuracy",
    "plot_pairwise_pvalues",
    "plot_lmc",
    "plot_cka_profiles",
    "plot_cka_heatmap",
]



# --------------------------------------------------------------------------------------------
# accuracy and significance (analysis 6)
# --------------------------------------------------------------------------------------------
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
    """
    _require_columns(table, ["accuracy", "ci_low", "ci_high"], "accuracy table")
    t = table.reset_index() if "model" not in table.columns else table
    if "model" not in t.columns:  # index had another name
        t = t.rename(columns={t.columns[0]: "model"})
    if ci_label is None:
        ci_label = f"95% {t['ci_method'].iloc[0].replace('_', '-')} interval" if "ci_method" in t.columns else "95% CI"
    base_row = t[t["model"].astype(str) == "base"]
    t = t[t["model"].astype(str) != "base"] if len(t) > len(base_row) else t
    t = t.assign(_method=[str(m).split("/")[0] for m in t["model"]])
    order = list(dict.fromkeys(t["_method"]))
    t = t.sort_values("_method", key=lambda c: c.map(order.index), kind="stable")
    models = t["model"].astype(str).tolist()
    acc = 100.0 * t["accuracy"].to_numpy(dtype=float)
    low = 100.0 * t["ci_low"].to_numpy(dtype=float)
    high = 100.0 * t["ci_high"].to_numpy(dtype=float)
    if np.any(low > acc + 1e-9) or np.any(high < acc - 1e-9):
        raise ValueError("accuracy table: every CI must contain its accuracy")
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
            ax.annotate(f"base {b:.1f}", (x[0] - 0.45, b), xytext=(0, 2), textcoords="offset points", ha="left",
                        fontsize=7)
        ax.errorbar(x, acc, yerr=np.vstack([acc - low, high - acc]), fmt="none",
                    ecolor="black", capsize=3, linewidth=1)
        for xi, a, h in zip(x, acc, high):
            ax.annotate(f"{a:.1f}", (xi, h), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
        names = [f"{method_name(m.split('/')[0])} {m.split('/', 1)[1]}" if "/" in m else m for m in models]
        ax.set_xticks(x, names, rotation=30 if len(models) > 4 else 0,
                      ha="right" if len(models) > 4 else "center")
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
    _require_columns(pairwise, ["model_a", "model_b", column], "pairwise table")
    if pairwise.empty:
        raise ValueError("pairwise table has no pairs to plot")
    models = _ordered_models(pairwise)
    mat = _symmetric_matrix(pairwise, models, column, diagonal=np.nan)
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
            pd.DataFrame(shown, index=models, columns=models), mask=~np.isfinite(mat.to_numpy(dtype=float)),
            annot=annot, fmt="", annot_kws={"fontsize": 7}, cmap="mako",
            norm=LogNorm(vmin=floor, vmax=1.0), square=True, linewidths=0.5,
            cbar_kws={"label": label}, ax=ax,
        )
        ax.grid(False)  # the style's grid would show through masked cells
        ax.set_xlabel("model")
        ax.set_ylabel("model")
        ax.set_title(title if title is not None else f"pairwise exact McNemar (* p < {alpha:g})")
        return save(fig, out_path)


# --------------------------------------------------------------------------------------------
# linear mode connectivity (analysis 4)
# --------------------------------------------------------------------------------------------
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
    _require_columns(curves, ["pair", "alpha", "metric", "value"], "LMC table")
    if curves.empty:
        raise ValueError("LMC table is empty")
    a = curves["alpha"].to_numpy(dtype=float)
    if np.any(~np.isfinite(a)) or np.any(a < 0) or np.any(a > 1):
        raise ValueError("LMC table: alpha must lie in [0, 1]")
    ylabels = dict(ylabels or {})
    metrics = list(dict.fromkeys(curves["metric"]))
    pairs = list(dict.fromkeys(curves["pair"].astype(str)))
    data = curves.assign(pair=curves["pair"].astype(str))
    palette = dict(zip(pairs, sns.color_palette("colorblind", len(pairs))))

    with style("whitegrid"):
        fig, axes = figure(width=3.3 * len(metrics) + 1.6, height=3.0, ncols=len(metrics))
        for ax, metric in zip(axes, metrics):
            sub = data[data["metric"] == metric]
            sns.lineplot(data=sub, x="alpha", y="value", hue="pair", hue_order=pairs,
                         palette=palette, estimator="mean", errorbar=None, marker="o",
                         markersize=4, ax=ax, legend=False)
            ax.set_xlim(0.0, 1.0)
            ax.set_xlabel(xlabel, fontsize=7)
            ax.set_ylabel(ylabels.get(metric, str(metric)))
            ax.set_title(str(metric))
        _pair_legend(fig, pairs, palette, title="pair (a→b)")
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
    _require_columns(curves, ["pair_a", "pair_b", "alpha", "metric", "value"], "LMC curves")
    _require_columns(summary, ["pair_a", "pair_b", "metric", "barrier"], "LMC summary")
    sub = curves[curves["metric"] == metric]
    if sub.empty:
        raise ValueError(f"LMC curves have no metric {metric!r}")
    pairs = list(dict.fromkeys(zip(sub["pair_a"], sub["pair_b"])))
    pairs.sort(key=lambda p: p[0].split("/")[0] == p[1].split("/")[0])
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
            ax.plot(al, v, "o-", color=method_colour(b.split("/")[0]), ms=3, lw=1.3)
            ax.plot(al, line, "--", color="0.4", lw=1)
            row = summary[(summary["pair_a"] == a) & (summary["pair_b"] == b) & (summary["metric"] == metric)]
            bar = float(row["barrier"].iloc[0]) if len(row) else float(np.nanmax(v - line))
            k = int(np.nanargmax(v - line))
            if bar > 0:
                ax.vlines(al[k], line[k], v[k], color="k", lw=1.5)
            rel = 100 * bar / ((v[0] + v[-1]) / 2)
            ax.set_title(f"{_short(a)} → {_short(b)}\nbarrier {bar:.3g} ({rel:.0f}% of endpoints)", fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_xlabel("α (0 = first, 1 = second)", fontsize=7)
            ax.set_ylabel(ylabel, fontsize=7)
        for ax in axes[n:]:
            ax.set_visible(False)
        fig.suptitle("Linear mode connectivity per pair: dashed = straight line between the endpoints; "
                     "black bar = barrier", fontsize=9)
        return save(fig, out_path)


def _short(label: str) -> str:
    method, _, seed = label.partition("/")
    return f"{method_name(method)} {seed}"


# --------------------------------------------------------------------------------------------
# CKA (analysis 5)
# --------------------------------------------------------------------------------------------
def plot_cka_profiles(
    cka: pd.DataFrame,
    reference: str,
    out_path: str | os.PathLike,
    *,
    column: str = "cka",
    title: str | None = None,
) -> tuple[Path, Path]:
    """Per-layer CKA between ``reference`` and every other model: one line per other model.

    Parameters
    ----------
    cka : long DataFrame from :func:`lossgeom.behaviour.cka.cka_matrix` (columns ``model_a``, ``model_b``,
        ``layer`` and ``column``). Rows with ``reference`` on either side (self pair excluded)
        are used; the other model's name labels the line.
    reference : the model every line is compared against (e.g. ``"SFT"``).
    column : ``"cka"`` or ``"cka_debiased"``.
    """
    _require_columns(cka, ["model_a", "model_b", "layer", column], "CKA table")
    sel = cka[((cka["model_a"] == reference) | (cka["model_b"] == reference))
              & (cka["model_a"] != cka["model_b"])]
    if sel.empty:
        raise ValueError(f"CKA table has no pair involving reference model {reference!r}")
    other = np.where(sel["model_a"] == reference, sel["model_b"], sel["model_a"])
    data = pd.DataFrame({"model": pd.Series(other).astype(str).to_numpy(),
                         "layer": sel["layer"].to_numpy(), "value": sel[column].to_numpy(dtype=float)})
    models = list(dict.fromkeys(data["model"]))
    palette = {m: method_colour(m.split("/")[0]) for m in models}
    what = "debiased linear CKA" if column == "cka_debiased" else "linear CKA"
    # 1 - CKA on a log scale: values of 0.96-1.00 (typical between fine-tunes of one base) differ here
    data["distance"] = np.clip(1.0 - data["value"], 1e-6, None)

    with style("whitegrid"):
        fig, ax = figure(width=5.5, height=3.2)
        for m in models:
            d = data[data["model"] == m].groupby("layer")["distance"].mean()
            seed = m.split("/", 1)[1] if "/" in m else ""
            ax.plot(d.index, d.to_numpy(), marker="o", ms=3, color=palette[m],
                    ls="--" if seed and seed != sorted({x.split("/", 1)[1] for x in models if "/" in x})[0] else "-")
        ax.set_yscale("log")
        ax.set_xlabel("layer index")
        ax.set_ylabel(f"1 - {what} with {reference} (log)")
        ax.xaxis.set_major_locator(__import__("matplotlib.ticker", fromlist=["MaxNLocator"]).MaxNLocator(integer=True))
        _pair_legend(fig, models, palette, title=f"model vs {reference}")
        ax.set_title(title if title is not None else f"{what} per layer vs {reference}")
        return save(fig, out_path)


def plot_cka_heatmap(
    cka: pd.DataFrame,
    layer: int,
    out_path: str | os.PathLike,
    *,
    column: str = "cka",
    title: str | None = None,
) -> tuple[Path, Path]:
    """Symmetric model x model heatmap of CKA at one layer.

    Parameters
    ----------
    cka : long DataFrame from :func:`lossgeom.behaviour.cka.cka_matrix`; rows with ``layer == layer`` are
        used. Self pairs (present in ``cka_matrix`` output) fill the diagonal; a missing self pair
        is drawn as 1 for ``"cka"`` and left blank otherwise. Missing cross pairs are blank.
    layer : layer index (the ``layer`` column value).
    column : ``"cka"`` or ``"cka_debiased"``.
    """
    _require_columns(cka, ["model_a", "model_b", "layer", column], "CKA table")
    sel = cka[cka["layer"] == layer]
    if sel.empty:
        raise ValueError(f"CKA table has no rows for layer {layer!r}")
    models = _ordered_models(sel)
    mat = _symmetric_matrix(sel, models, column, diagonal=1.0 if column == "cka" else np.nan,
                            overwrite_diagonal=False)
    values = mat.to_numpy(dtype=float)
    what = "debiased linear CKA" if column == "cka_debiased" else "linear CKA"
    vmin = min(0.0, float(np.nanmin(values))) if np.isfinite(values).any() else 0.0

    with style("whitegrid"):
        k = len(models)
        fig, ax = figure(width=2.0 + 0.8 * k, height=1.0 + 0.8 * k)
        sns.heatmap(mat, mask=~np.isfinite(values), annot=True, fmt=".2f",
                    annot_kws={"fontsize": 7}, cmap="rocket", vmin=vmin, vmax=1.0, square=True,
                    linewidths=0.5, cbar_kws={"label": f"{what} (unitless)"}, ax=ax)
        ax.grid(False)  # the style's grid would show through masked cells
        ax.set_xlabel("model")
        ax.set_ylabel("model")
        ax.set_title(title if title is not None else f"{what} at layer {layer}")
        return save(fig, out_path)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _pair_legend(fig: Figure, labels: Iterable[str], palette: Mapping[str, object], title: str):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette[lab], marker="o", markersize=4, label=lab)
               for lab in labels]
    fig.legend(handles=handles, title=title, loc="outside right center", fontsize=7,
               title_fontsize=7, frameon=False)


def _require_columns(df: pd.DataFrame, cols: list[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; has {list(df.columns)}")


def _ordered_models(df: pd.DataFrame) -> list[str]:
    """Model labels in order of first appearance, reading model_a then model_b row by row."""
    seq = np.column_stack([df["model_a"].astype(str), df["model_b"].astype(str)]).ravel()
    return list(dict.fromkeys(seq))


def _symmetric_matrix(df: pd.DataFrame, models: list[str], column: str, diagonal: float,
                      overwrite_diagonal: bool = True) -> pd.DataFrame:
    """k x k frame with ``df[column]`` at (a, b) and (b, a); unset cells NaN."""
    mat = pd.DataFrame(np.nan, index=models, columns=models, dtype=float)
    for a, b, v in zip(df["model_a"].astype(str), df["model_b"].astype(str), df[column]):
        mat.loc[a, b] = mat.loc[b, a] = float(v)
    for m in models:
        if overwrite_diagonal or not np.isfinite(mat.loc[m, m]):
            mat.loc[m, m] = diagonal
    return mat
