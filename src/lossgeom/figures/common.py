"""What every figure shares: an explicit Agg canvas (no pyplot, no GUI backend), a seaborn style
applied only inside the figure's own ``with`` block, and an atomic PNG + PDF save without volatile
metadata (so re-running a figure job gives byte-identical files)."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..fsutil import atomic_path

DPI = 200


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


def save(fig: Figure, out_path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_path`` (.png) and its .pdf sibling atomically; returns both paths."""
    png = Path(out_path)
    if png.suffix.lower() != ".png":
        raise ValueError(f"output path must end in .png, got {str(png)!r}")
    pdf = png.with_suffix(".pdf")
    for path, fmt, metadata in (
        (png, "png", {"Software": None}),
        (pdf, "pdf", {"CreationDate": None, "Creator": None, "Producer": None}),
    ):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata=metadata)
    return png, pdf
