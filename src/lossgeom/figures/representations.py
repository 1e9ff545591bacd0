"""Representation figures (the paper's representation analysis; rule ``representations_figures``): per-layer
CKA of every model against the base, and the model x model CKA at the last layer, from the table of
:func:`lossgeom.behaviour.cka.cka_tables` (``cka/cka.tsv``).

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

from ..errors import InputError
from ..fsutil import read_tsv_or
from ..labels import Label
from .common import (
    figure,
    method_colour,
    ordered_models,
    pair_legend,
    require_columns,
    save,
    style,
    symmetric_matrix,
)

__all__ = ["representations_figures", "plot_cka_profiles", "plot_cka_heatmap"]


def representations_figures(cka: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """``cka_profiles.png`` (every model vs the base, per layer) and ``cka_last_layer.png`` (all pairs at the
    last layer), and their PDFs, in ``out_dir``; returns the written paths."""
    out_dir = Path(out_dir)
    table = read_tsv_or(
        Path(cka),
        InputError,
        ("model_a", "model_b", "layer", "cka"),
        "a CKA table of 'lossgeom measure-stats activations'",
    )
    written = list(plot_cka_profiles(table, "base", out_dir / "cka_profiles.png"))
    written += plot_cka_heatmap(table, int(table["layer"].max()), out_dir / "cka_last_layer.png")
    return written


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
    require_columns(cka, ["model_a", "model_b", "layer", column], "CKA table")
    sel = cka[((cka["model_a"] == reference) | (cka["model_b"] == reference)) & (cka["model_a"] != cka["model_b"])]
    if sel.empty:
        raise InputError(f"CKA table has no pair involving reference model {reference!r}")
    other = np.where(sel["model_a"] == reference, sel["model_b"], sel["model_a"])
    data = pd.DataFrame(
        {
            "model": pd.Series(other).astype(str).to_numpy(),
            "layer": sel["layer"].to_numpy(),
            "value": sel[column].to_numpy(dtype=float),
        }
    )
    models = list(dict.fromkeys(data["model"]))
    palette = {m: method_colour(Label.method_of(m)) for m in models}
    seeds = {m: Label.dir_name_of(m) for m in models}
    first_seed = min((s for s in seeds.values() if s), default="")  # solid; other seeds dashed
    what = "debiased linear CKA" if column == "cka_debiased" else "linear CKA"
    # 1 - CKA on a log scale: values of 0.96-1.00 (typical between fine-tunes of one base) differ here
    data["distance"] = np.clip(1.0 - data["value"], 1e-6, None)

    with style("whitegrid"):
        fig, ax = figure(width=5.5, height=3.2)
        for m in models:
            d = data[data["model"] == m].groupby("layer")["distance"].mean()
            ax.plot(
                d.index,
                d.to_numpy(),
                marker="o",
                ms=3,
                color=palette[m],
                ls="--" if seeds[m] and seeds[m] != first_seed else "-",
            )
        ax.set_yscale("log")
        ax.set_xlabel("layer index")
        ax.set_ylabel(f"1 - {what} with {reference} (log)")
        ax.xaxis.set_major_locator(__import__("matplotlib.ticker", fromlist=["MaxNLocator"]).MaxNLocator(integer=True))
        pair_legend(fig, models, palette, title=f"model vs {reference}")
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
    require_columns(cka, ["model_a", "model_b", "layer", column], "CKA table")
    sel = cka[cka["layer"] == layer]
    if sel.empty:
        raise InputError(f"CKA table has no rows for layer {layer!r}")
    models = ordered_models(sel)
    mat = symmetric_matrix(sel, models, column, diagonal=1.0 if column == "cka" else np.nan, overwrite_diagonal=False)
    values = mat.to_numpy(dtype=float)
    what = "debiased linear CKA" if column == "cka_debiased" else "linear CKA"
    vmin = min(0.0, float(np.nanmin(values))) if np.isfinite(values).any() else 0.0

    with style("whitegrid"):
        k = len(models)
        fig, ax = figure(width=2.0 + 0.8 * k, height=1.0 + 0.8 * k)
        sns.heatmap(
            mat,
            mask=~np.isfinite(values),
            annot=True,
            fmt=".2f",
            annot_kws={"fontsize": 7},
            cmap="rocket",
            vmin=vmin,
            vmax=1.0,
            square=True,
            linewidths=0.5,
            cbar_kws={"label": f"{what} (unitless)"},
            ax=ax,
        )
        ax.grid(False)  # the style's grid would show through masked cells
        ax.set_xlabel("model")
        ax.set_ylabel("model")
        ax.set_title(title if title is not None else f"{what} at layer {layer}")
        return save(fig, out_path)
