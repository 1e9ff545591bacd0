"""What every figure shares: an explicit Agg canvas (no pyplot, no GUI backend), a seaborn style
applied only inside the figure's own ``with`` block, a PNG + PDF save without volatile metadata (so
re-running a figure job gives byte-identical files) whose files appear together or not at all, one
colour and name per method, and the table helpers of the model x model figures. Every figure rule
tracks this module as an input."""

from __future__ import annotations

import contextlib
import os
import zlib
from contextlib import ExitStack
from contextvars import ContextVar
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..errors import InputError
from ..fsutil import atomic_files
from ..labels import Label

DPI = 200
PNG_COMPRESS_LEVEL = 1


def style(axes_style: str = "white", context: str = "paper") -> ExitStack:
    """Seaborn axes style and plotting context as one context manager (rcParams restored on exit)."""
    stack = ExitStack()
    stack.enter_context(sns.axes_style(axes_style))
    stack.enter_context(sns.plotting_context(context))
    return stack


def figure(width: float, height: float, nrows: int = 1, ncols: int = 1):
    """A constrained-layout figure on an Agg canvas; returns (fig, ax) or (fig, list of axes)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    return fig, (axes[0] if len(axes) == 1 else axes)


# The staging function of the figure set being written (:func:`all_or_none`), if any.
_STAGE: ContextVar = ContextVar("figure_stage", default=None)


@contextlib.contextmanager
def all_or_none():
    """Every figure written with :func:`save` inside the block appears when the block ends without error, and none if
    anything in it fails (each target keeps its old file): a figure command's set of figures, written into a
    directory that other jobs' figures share, appears whole (:func:`lossgeom.fsutil.atomic_files`)."""
    with atomic_files() as stage:
        token = _STAGE.set(stage)
        try:
            yield
        finally:
            _STAGE.reset(token)


def save(fig: Figure, out_path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_path`` (.png) and its .pdf sibling, both or neither (inside :func:`all_or_none`, with the
    rest of its set); returns both paths."""
    png = Path(out_path)
    if png.suffix.lower() != ".png":
        raise InputError(f"output path must end in .png, got {str(png)!r}")
    pdf = png.with_suffix(".pdf")
    with ExitStack() as stack:
        stage = _STAGE.get() or stack.enter_context(atomic_files())
        # zlib level 1: ~0.5 s less per figure than PIL's default 6, for a file ~20% larger
        png_kw = {"metadata": {"Software": None}, "pil_kwargs": {"compress_level": PNG_COMPRESS_LEVEL}}
        fig.savefig(stage(png), format="png", dpi=DPI, **png_kw)
        fig.savefig(
            stage(pdf), format="pdf", dpi=DPI, metadata={"CreationDate": None, "Creator": None, "Producer": None}
        )
    return png, pdf


# One colour per method across every figure, and readable names. A method not listed gets a colour
# chosen from the spare palette by a hash of its name (the same in every figure job's process) and
# its config name.
METHOD_COLOURS = {
    "sft": "#1f77b4",
    "rft": "#17becf",
    "rift": "#2ca02c",
    "dft": "#ff7f0e",
    "grpo": "#9467bd",
    "dpo": "#d62728",
    "dpo_lrmatched": "#e377c2",
    "base": "#7f7f7f",
    "sft_lr10x": "#aec7e8",
    "sft_lr0p1x": "#393b79",
    "online_grpo": "#8c564b",
    "ipo": "#ff9896",
    "simpo": "#c49c94",
    "kto": "#bcbd22",
}
METHOD_NAMES = {
    "sft": "SFT",
    "rft": "RFT",
    "dft": "DFT",
    "rift": "RIFT",
    "grpo": "Offline GRPO",
    "dpo": "DPO",
    "dpo_lrmatched": "DPO (LR-matched)",
    "base": "base",
    "sft_lr10x": "SFT (10x LR)",
    "sft_lr0p1x": "SFT (0.1x LR)",
    "online_grpo": "online GRPO",
    "ipo": "IPO",
    "simpo": "SimPO",
    "kto": "KTO",
}
_SPARE = ["#637939", "#843c39", "#7b4173", "#e7ba52", "#5254a3", "#6b6ecf"]


def method_colour(method: str) -> str:
    """The colour of ``method`` (a config name); the same in every process."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    return _SPARE[zlib.crc32(method.encode()) % len(_SPARE)]


def method_name(method: str) -> str:
    """A readable name for a config method name (``grpo`` -> ``Offline GRPO``)."""
    return METHOD_NAMES.get(method, method)


def model_name(model: str) -> str:
    """A readable name for a model: an adapter label's method name and seed part (``"sft/seed42"`` ->
    ``"SFT seed42"``); any other model name (``"base"``) as it is."""
    label = Label.try_parse(model)
    return model if label is None else f"{method_name(label.method)} {label.dir_name}"


# Tables of model pairs (model_a, model_b, ...) and the legends of the per-model figures.
def pair_legend(fig: Figure, labels: Iterable[str], palette: Mapping[str, object], title: str):
    """One legend entry per label (its palette colour, a marker), outside the axes on the right."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette[lab], marker="o", markersize=4, label=lab) for lab in labels]
    fig.legend(handles=handles, title=title, loc="outside right center", fontsize=7, title_fontsize=7, frameon=False)


def require_columns(df: pd.DataFrame, cols: list[str], what: str) -> None:
    """Stop with one line naming the table (``what``) and its missing columns."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(f"{what} lacks column(s) {missing}; has {list(df.columns)}")


def ordered_models(df: pd.DataFrame) -> list[str]:
    """Model labels in order of first appearance, reading model_a then model_b row by row."""
    seq = np.column_stack([df["model_a"].astype(str), df["model_b"].astype(str)]).ravel()
    return list(dict.fromkeys(seq))


def symmetric_matrix(
    df: pd.DataFrame, models: list[str], column: str, diagonal: float, overwrite_diagonal: bool = True
) -> pd.DataFrame:
    """k x k frame with ``df[column]`` at (a, b) and (b, a); unset cells NaN."""
    mat = pd.DataFrame(np.nan, index=models, columns=models, dtype=float)
    for a, b, v in zip(df["model_a"].astype(str), df["model_b"].astype(str), df[column]):
        mat.loc[a, b] = mat.loc[b, a] = float(v)
    for m in models:
        if overwrite_diagonal or not np.isfinite(mat.loc[m, m]):
            mat.loc[m, m] = diagonal
    return mat
