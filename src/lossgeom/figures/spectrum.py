"""Each delta against the base's spectrum (rule ``base_spectrum_figures``), from ``summary.tsv`` of
:mod:`lossgeom.geometry.spectrum`.

Top row, one panel per statistic (intruder dimensions summed over modules, the mean rotation of the top-k
output and input singular subspaces, the mean relative change of the top-k singular values): each adapter
as a point (circle: the shared-init seed, square: another init seed, triangle: a data-order replicate),
its chance level (a random delta of the same singular values) as a grey cross beside it. Bottom row: the
same as a ratio to the chance level (1 = what any update of that size would do), the shared-init
adapter's point with its method's data-order floor as an error bar."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import InputError
from ..fsutil import read_tsv_or
from ..labels import Label
from .common import figure, method_colour, method_name, require_columns, save, style

PANELS = (
    ("intruders", "intruder dimensions (sum over modules)"),
    ("rotation_left_deg", "rotation of the top-k output subspace (deg)"),
    ("rotation_right_deg", "rotation of the top-k input subspace (deg)"),
    ("sv_change", "relative change of the top-k singular values"),
)
COLUMNS = [
    "label",
    "method",
    "init_seed",
    "data_seed",
    "statistic",
    "value",
    "chance",
    "ratio_to_chance",
    "ratio_data_floor",
]


def base_spectrum_figure(
    tables: str | os.PathLike, roles: Mapping[str, str], seed: int, out_path: str | os.PathLike
) -> tuple[Path, Path]:
    """The figure of the module docstring at ``out_path`` (.png, and its PDF); methods in the order of
    ``roles`` (the paper's methods), then the study's others; ``seed`` is the shared-init seed."""
    df = read_tsv_or(Path(tables) / "summary.tsv", InputError, what="a summary.tsv of 'lossgeom base-spectrum'")
    require_columns(df, COLUMNS, f"{Path(tables) / 'summary.tsv'}")
    methods = list(dict.fromkeys([m for m in roles.values() if m in set(df["method"])] + list(df["method"])))
    x = {m: i for i, m in enumerate(methods)}
    with style("whitegrid"):
        fig, axes = figure(15, 6.5, 2, len(PANELS))
        for col, (stat, title) in enumerate(PANELS):
            top, bottom = axes[col], axes[len(PANELS) + col]
            d = df[df["statistic"] == stat]
            for r in d.itertuples(index=False):
                lab = Label.try_parse(r.label)
                replicate = lab is not None and lab.is_replicate
                shared = lab is not None and lab.seed == seed and not replicate
                marker, dx = ("^", 0.22) if replicate else (("o", -0.22) if shared else ("s", 0.0))
                xs = x[r.method] + dx
                colour = method_colour(r.method)
                top.scatter(xs, r.value, marker=marker, s=22, color=colour, zorder=3)
                top.scatter(xs + 0.08, r.chance, marker="x", s=16, color="0.45", zorder=2)
                err = r.ratio_data_floor if shared and np.isfinite(r.ratio_data_floor) else None
                bottom.errorbar(xs, r.ratio_to_chance, yerr=err, fmt=marker, ms=4, color=colour, capsize=2, zorder=3)
            bottom.axhline(1.0, color="0.45", ls=":", lw=0.9)
            top.set_title(title, fontsize=8)
            bottom.set_title("ratio to chance (bar: the method's data-order floor)", fontsize=8)
            for ax in (top, bottom):
                ax.set_xticks(range(len(methods)))
                ax.set_xticklabels([method_name(m) for m in methods], rotation=45, ha="right", fontsize=7)
        from matplotlib.lines import Line2D

        handles = [
            Line2D([], [], marker="o", ls="", color="0.2", label=f"seed {seed} (shared init)"),
            Line2D([], [], marker="s", ls="", color="0.2", label="another init seed"),
            Line2D([], [], marker="^", ls="", color="0.2", label="data-order replicate"),
            Line2D([], [], marker="x", ls="", color="0.45", label="chance: random delta, same singular values"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=7, frameon=False)
        return save(fig, out_path)
