"""Geometry along training (rule ``trajectory_figures``): cosines against the optimiser step, each beside the
floor that matches it, from the tables of :mod:`lossgeom.geometry.trajectory` (``paths.tsv``,
``steps.tsv``, ``cross_steps.tsv``).

Six panels: each method's path (cosine of its delta to its own analysis-step delta, and to its previous
saved step), its norm, the cluster's pairs (SFT, RFT, RIFT), SFT against DFT / Offline GRPO / DPO, the
same loss at two init seeds, and SFT at 10x the learning rate against SFT at every step. Pairs of one
LoRA init are drawn with their data-order floor (dashed, the same colour), every pair panel with the
random level (grey, dotted)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import InputError
from ..fsutil import read_tsv_or
from ..labels import Label
from .common import figure, method_colour, method_name, require_columns, save, style

CLUSTER = ("sft", "rft", "rift")
OTHERS = ("dft", "grpo", "dpo")


def _read(tables: Path, name: str, cols: list[str]) -> pd.DataFrame:
    df = read_tsv_or(tables / f"{name}.tsv", InputError, what=f"a {name}.tsv of 'lossgeom trajectory'")
    require_columns(df, cols, f"{tables / name}.tsv")
    return df


def _pair_series(steps: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Rows (step, value, floor, random) of the cosine of labels ``a``, ``b`` (either order) at each step."""
    cos = steps[steps["metric"] == "cosine_global"]
    sel = ((cos["pair_a"] == a) & (cos["pair_b"] == b)) | ((cos["pair_a"] == b) & (cos["pair_b"] == a))
    return cos[sel].sort_values("step")[["step", "value", "floor", "random"]]


def _draw_pairs(ax, steps: pd.DataFrame, pairs: list[tuple[str, str, str, str | None]], title: str) -> None:
    """One line per (label_a, label_b, name, colour; None: the axes' next colour) with its matching floor
    dashed in the same colour."""
    randoms = []
    for a, b, name, colour in pairs:
        s = _pair_series(steps, a, b)
        if s.empty:
            continue
        (line,) = ax.plot(s["step"], s["value"], marker="o", ms=3, label=name, color=colour)
        if s["floor"].notna().any():
            ax.plot(s["step"], s["floor"], ls="--", lw=0.9, color=line.get_color())
        randoms.append(s["random"].to_numpy())
    if randoms:
        ax.axhline(float(np.nanmean(np.concatenate(randoms))), color="0.5", ls=":", lw=0.9, label="random")
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("cosine of the deltas")
    ax.legend(fontsize=6, frameon=False)


def _draw_paths(ax_cos, ax_norm, paths: pd.DataFrame, seed: int) -> None:
    """Each method's path at the shared-init seed: cosine to its analysis-step delta (x: to its previous
    saved step) and its norm."""
    own = paths[(paths["init_seed"] == seed) & (paths["data_seed"] == seed)]
    for method, g in own.groupby("method", sort=False):
        colour = method_colour(method)
        ax_cos.plot(g["step"], g["cos_to_analysis"], marker="o", ms=3, color=colour, label=method_name(method))
        ax_cos.scatter(g["step"], g["cos_to_previous"], marker="x", s=14, color=colour)
        ax_norm.plot(g["step"], g["norm"], marker="o", ms=3, color=colour, label=method_name(method))
    ax_cos.set_title(
        f"path: cosine to its own analysis-step delta (x: to its previous saved step), seed {seed}", fontsize=8
    )
    ax_cos.set_ylabel("cosine")
    ax_norm.set_title(f"||dW||_F along training, seed {seed}", fontsize=8)
    ax_norm.set_yscale("log")
    ax_norm.set_ylabel("Frobenius norm")
    for ax in (ax_cos, ax_norm):
        ax.set_xlabel("optimiser step")
        ax.legend(fontsize=6, frameon=False)


def _draw_seed_pairs(ax, steps: pd.DataFrame) -> None:
    """The same loss at two init seeds (no data-order replicates) at each step, with the random level."""
    seeds = steps[(steps["metric"] == "cosine_global") & (steps["kind"] == "same-method") & (steps["init"] == "other")]
    original = np.array(
        [
            not (Label.parse(a).is_replicate or Label.parse(b).is_replicate)
            for a, b in zip(seeds["pair_a"], seeds["pair_b"])
        ],
        dtype=bool,
    )  # an array, not a list: an empty list would select columns (a study of one seed has no such pair)
    seeds = seeds[original]
    for (a, b), g in seeds.groupby(["pair_a", "pair_b"], sort=False):
        method = Label.parse(a).method
        g = g.sort_values("step")
        name = f"{method_name(method)} ({Label.parse(a).dir_name} vs {Label.parse(b).dir_name})"
        ax.plot(g["step"], g["value"], marker="o", ms=3, color=method_colour(method), label=name)
    if not seeds.empty:
        ax.axhline(float(seeds["random"].mean()), color="0.5", ls=":", lw=0.9, label="random")
    ax.set_title("the same loss at two init seeds (the init-seed floor)", fontsize=8)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("cosine of the deltas")
    ax.legend(fontsize=6, frameon=False)


def _draw_faster(ax, cross: pd.DataFrame, fast: str | None, slow: str | None) -> None:
    """``fast`` (SFT at 10x LR) at each of its steps against ``slow`` (SFT) at every step."""
    sel = cross[
        ((cross["label_a"] == fast) & (cross["label_b"] == slow))
        | ((cross["label_a"] == slow) & (cross["label_b"] == fast))
    ]
    if sel.empty:
        ax.text(
            0.5, 0.5, "no SFT at 10x the learning rate in this study", ha="center", va="center", transform=ax.transAxes
        )
    else:
        from matplotlib import colormaps

        swap = sel["label_a"] == slow
        df = pd.DataFrame(
            {
                "fast": np.where(swap, sel["step_b"], sel["step_a"]),
                "slow": np.where(swap, sel["step_a"], sel["step_b"]),
                "cos": sel["cosine_global"].to_numpy(),
            }
        ).sort_values("slow")
        shades = colormaps["viridis"](np.linspace(0.0, 0.85, df["fast"].nunique()))
        for shade, (s, g) in zip(shades, df.groupby("fast")):
            ax.plot(g["slow"], g["cos"], marker="o", ms=3, color=shade, label=f"10x LR at step {s}")
        ax.legend(fontsize=6, frameon=False)
    ax.set_title("SFT at 10x LR (step s) against SFT at each step: the same path, sooner?", fontsize=8)
    ax.set_xlabel("SFT's optimiser step")
    ax.set_ylabel("cosine of the deltas")


def trajectory_figure(
    tables: str | os.PathLike, roles: Mapping[str, str], seed: int, out_path: str | os.PathLike
) -> tuple[Path, Path]:
    """The six panels of the module docstring at ``out_path`` (.png, and its PDF). ``roles`` maps the paper's
    methods (``sft rft dft rift grpo dpo lr10x``) to this study's method names; ``seed`` is the shared-init seed."""
    tables = Path(tables)
    paths = _read(tables, "paths", ["label", "method", "data_seed", "init_seed", "step", "norm", "cos_to_analysis"])
    steps = _read(tables, "steps", ["step", "pair_a", "pair_b", "metric", "value", "floor", "random", "kind", "init"])
    cross = _read(tables, "cross_steps", ["label_a", "step_a", "label_b", "step_b", "cosine_global"])

    def lab(role: str) -> str | None:
        return str(Label(roles[role], seed)) if role in roles else None

    with style("whitegrid"):
        fig, axes = figure(14, 7.5, 2, 3)
        _draw_paths(axes[0], axes[1], paths, seed)
        cluster = [r for r in CLUSTER if r in roles]
        cpairs = [
            (lab(a), lab(b), f"{method_name(roles[a])}-{method_name(roles[b])}", None)
            for i, a in enumerate(cluster)
            for b in cluster[i + 1 :]
        ]
        _draw_pairs(axes[2], steps, cpairs, "the cluster's pairs (dashed: their data-order floor)")
        others = [
            (lab("sft"), lab(o), f"SFT-{method_name(roles[o])}", method_colour(roles[o]))
            for o in OTHERS
            if o in roles and "sft" in roles
        ]
        _draw_pairs(axes[3], steps, others, "SFT against the others (dashed: data-order floor)")
        _draw_seed_pairs(axes[4], steps)
        _draw_faster(axes[5], cross, lab("lr10x"), lab("sft"))
        return save(fig, out_path)
