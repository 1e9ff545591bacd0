"""Training curves: per-method loss, gradient norm and learning rate against the optimiser step,
from each adapter's ``metrics.tsv`` (columns ``step, loss, grad_norm, learning_rate, ...``, one row
per logging step). One colour per method (:func:`.common.method_colour`), one line style per seed;
a dotted vertical line marks the analysis step every later stage reads (rule ``training_figures``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from ..errors import InputError
from ..fsutil import read_tsv_or
from ..labels import Label
from .common import figure, method_colour, method_name, save, style

PANELS = (
    ("loss", "training loss (method's own objective)"),
    ("grad_norm", "gradient norm (before clipping)"),
    ("learning_rate", "learning rate"),
)
LINESTYLES = ("-", "--", ":", "-.")


def training_figures(
    adapters: Mapping[str, str | os.PathLike], out_path: str | os.PathLike, analysis_step: int | None = None
) -> tuple[Path, Path]:
    """The training curves of adapters given as label -> adapter directory (each holds the
    ``metrics.tsv`` its training job wrote) at ``out_path`` (.png, and its PDF)."""
    return plot_training_curves(
        {label: Path(path) / "metrics.tsv" for label, path in adapters.items()}, out_path, analysis_step
    )


def plot_training_curves(
    metrics: Mapping[str, str | os.PathLike], out_path: str | os.PathLike, analysis_step: int | None = None
) -> tuple[Path, Path]:
    """One panel per quantity of :data:`PANELS`; ``metrics`` maps an adapter label
    (``"{method}/seed{seed}"``) to its ``metrics.tsv``. DPO's loss is its own sigmoid loss, not an NLL,
    so its curve is drawn on the same axes but is not comparable in level with the NLL family's."""
    if not metrics:
        raise InputError("plot_training_curves: no metrics files")
    frames = {}
    for label, path in metrics.items():
        df = read_tsv_or(Path(path), InputError, what="a metrics.tsv of 'lossgeom train'")
        missing = [c for c, _ in PANELS if c not in df.columns] + ([] if "step" in df.columns else ["step"])
        if missing:
            raise InputError(f"{path}: metrics table lacks column(s) {missing}")
        frames[label] = df
    seeds = sorted({Label.parse(l).seed for l in frames})
    with style("whitegrid"):
        fig, axes = figure(13, 3.6, 1, len(PANELS))
        for ax, (col, title) in zip(axes, PANELS):
            for label, df in frames.items():
                method, seed = Label.parse(label).method, Label.parse(label).seed
                ax.plot(
                    df["step"],
                    df[col],
                    color=method_colour(method),
                    ls=LINESTYLES[seeds.index(seed) % 4],
                    lw=1.2,
                    label=f"{method_name(method)}, seed {seed}",
                )
            if analysis_step is not None:
                ax.axvline(analysis_step, color="k", ls=":", lw=1)
            ax.set_title(title)
            ax.set_xlabel("optimiser step")
        axes[0].legend(fontsize=6, ncol=2, loc="upper right")
        fig.suptitle(
            f"Training curves, {len(frames)} adapters"
            + (f"; dotted line: analysis step {analysis_step}" if analysis_step else "")
        )
        return save(fig, Path(out_path))
