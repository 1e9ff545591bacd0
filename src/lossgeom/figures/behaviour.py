"""Behaviour figures (rule ``behaviour_figures``): what each delta buys (pass@k) and what it costs (the KL
to the base, forgetting), from the tables of :func:`lossgeom.behaviour.sampled_stats.behaviour_statistics`
in one directory (``behaviour/``).

``pass_at_k.png`` (and .pdf), two panels, from ``pass_at_k.tsv`` (columns model, k, n_items, n_samples,
value, ci_low, ci_high, diff, diff_ci_low, diff_ci_high, seed_floor):

* left: pass@k against k (log2 axis, ticks at the study's k) for every model, the base thick and black
  with its 95% interval shaded, each adapter in its method's colour (seeds: line style and marker) with
  its 95% interval (``ci_low``/``ci_high``) as error bars, dodged along k;
* right: each adapter's pass@k minus the base's (``diff``) with its paired 95% interval
  (``diff_ci_low``/``diff_ci_high``), a zero line and, in grey, +- the largest ``seed_floor`` at that k
  (the noise floor of a difference between two methods); the title states the items and samples.

``kl_forgetting.png`` (and .pdf), three panels:

* (a) from ``kl.tsv`` (rows ``unit == "token"``; columns model, direction, value, ci_low, ci_high,
  seed_floor): each adapter's KL to the base per sampled token, forward (KL(adapter || base), circles)
  and reverse (KL(base || adapter), squares) side by side with their 95% intervals; a short horizontal
  tick in the method's colour over the method's adapters marks its ``seed_floor`` (solid: forward,
  dashed: reverse). Adapters in method order (first appearance in the table), then seed. The y axis is
  logarithmic when the values span more than 30x -- symmetric-log (linear around 0) when an estimate is
  zero or negative, as a per-token KL estimate of a nearly unchanged model may be -- else linear;
* (b) from ``forgetting.tsv`` (columns model, value, ci_low, ci_high): each adapter's held-out
  cross-entropy minus the base's (nats/token) with its paired 95% interval, and a zero line;
* (c) forgetting (y) against forward per-token KL (x), one point per adapter in its method's colour, and
  in the title Spearman's rho with its interval and n from ``forgetting_vs_kl.tsv`` (columns predictor,
  n, rho, ci_low, ci_high; row ``kl_forward_token``, and ``delta_norm`` as "vs ||dW||" when present);
  a NaN rho (fewer than 4 adapters, or no variation) reads "n/a".

Forgetting is optional in the config: without ``forgetting.tsv`` and ``forgetting_vs_kl.tsv`` panels (b)
and (c) say so instead. A missing required table stops with one line naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ..errors import InputError
from ..fsutil import read_tsv_or
from ..labels import Label
from .common import figure, method_colour, method_name, require_columns, save, style

__all__ = ["behaviour_figures"]

BASE = "base"
PASS_COLUMNS = [
    "model",
    "k",
    "n_items",
    "n_samples",
    "value",
    "ci_low",
    "ci_high",
    "diff",
    "diff_ci_low",
    "diff_ci_high",
    "seed_floor",
]
KL_COLUMNS = ["model", "direction", "unit", "value", "ci_low", "ci_high", "seed_floor"]
FORGETTING_COLUMNS = ["model", "value", "ci_low", "ci_high"]
CORRELATION_COLUMNS = ["predictor", "n", "rho", "ci_low", "ci_high"]
NO_FORGETTING = "forgetting not measured\n(forgetting.source unset)"
# per seed within a method (first, second, third...): line style and marker
SEED_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (1, 1)), "v")]
LOG_SPAN = 30.0  # values spanning more than this factor get a logarithmic axis


def _read(tables: Path, name: str, columns: list[str], required: bool = True) -> pd.DataFrame | None:
    path = tables / f"{name}.tsv"
    if not path.is_file():
        if required:
            raise FileNotFoundError(
                f"behaviour figures: {path} does not exist (written by 'lossgeom measure-stats samples')"
            )
        return None
    df = read_tsv_or(path, InputError, what=f"a {name}.tsv of 'lossgeom measure-stats samples'")
    require_columns(df, columns, str(path))
    df["model"] = df["model"].astype(str)
    return df


def _adapter_order(models) -> list[str]:
    """Adapters (the base left out) in method order (first appearance), then init seed, then data seed."""
    models = [m for m in dict.fromkeys(models) if m != BASE]
    labels = {m: Label.try_parse(m) for m in models}
    methods = list(dict.fromkeys(labels[m].method if labels[m] else m for m in models))

    def key(m):
        lab = labels[m]
        if lab is None:
            return (methods.index(m), -1, -1)
        return (methods.index(lab.method), lab.seed, -1 if lab.data_seed is None else lab.data_seed)

    return sorted(models, key=key)


def _method(model: str) -> str:
    lab = Label.try_parse(model)
    return lab.method if lab else model


def _seed_styles(adapters: list[str]) -> dict[str, tuple]:
    """(line style, marker) of each adapter: by its position among its method's adapters."""
    seen: dict[str, int] = {}
    out = {}
    for m in adapters:
        i = seen.get(_method(m), 0)
        seen[_method(m)] = i + 1
        out[m] = SEED_STYLES[i % len(SEED_STYLES)]
    return out


def _name(model: str) -> str:
    lab = Label.try_parse(model)
    return f"{method_name(lab.method)} {lab.dir_name}" if lab else model


def _fmt_rho(row: pd.Series | None) -> str:
    if row is None or not np.isfinite(float(row["rho"])):
        n = "" if row is None else f", n = {int(row['n'])}"
        return f"rho n/a{n}"
    interval = ""
    if np.isfinite(float(row["ci_low"])) and np.isfinite(float(row["ci_high"])):
        interval = f" [{float(row['ci_low']):.2f}, {float(row['ci_high']):.2f}]"
    return f"rho = {float(row['rho']):.2f}{interval}, n = {int(row['n'])}"


def _scale(ax, axis: str, values: np.ndarray, lower: np.ndarray | None = None) -> str:
    """Log scale on ``axis`` ("x"/"y") when the finite nonzero ``values`` span more than LOG_SPAN in
    magnitude; symmetric-log (linear within a decade below most of them) when a value or a ``lower``
    interval end is <= 0, which a log axis would drop. Returns the scale chosen, for the labels."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    low = np.asarray([] if lower is None else lower, dtype=float)
    low = low[np.isfinite(low)]
    pos = np.abs(v[v != 0])
    if pos.size < 2 or pos.max() / pos.min() <= LOG_SPAN:
        return "linear"
    setter = ax.set_xscale if axis == "x" else ax.set_yscale
    if (v <= 0).any() or (low <= 0).any():
        linthresh = 10.0 ** np.floor(np.log10(np.quantile(pos, 0.1)))
        setter("symlog", linthresh=linthresh, linscale=0.5)
        return f"symlog, linear within ±{linthresh:g}"
    setter("log")
    return "log"


def _samples_text(df: pd.DataFrame) -> str:
    items, samples = df["n_items"].astype(int), df["n_samples"].astype(int)
    it = f"{items.iloc[0]}" if items.nunique() == 1 else f"{items.min()}-{items.max()}"
    sa = f"{samples.iloc[0]}" if samples.nunique() == 1 else f"{samples.min()}-{samples.max()}"
    return f"n = {it} items, {sa} samples per item"


def _pass_at_k(passk: pd.DataFrame, out: Path) -> None:
    """The pass@k figure (module docstring). Long because it is two panels drawn model by model, each
    with its intervals, and one shared legend; split, the panels' shared dodge and styles would travel."""
    ks = sorted(int(k) for k in passk["k"].unique())
    adapters = _adapter_order(passk["model"])
    styles = _seed_styles(adapters)
    # a small dodge along log2(k) so that the intervals of the models at one k do not hide each other
    dodge = {m: 0.18 * (i / (len(adapters) - 1) - 0.5) if len(adapters) > 1 else 0.0 for i, m in enumerate(adapters)}
    with style("whitegrid"):
        fig, (left, right) = figure(12, 5.6, 1, 2)
        base = passk[passk["model"] == BASE].sort_values("k")
        if not base.empty:
            left.fill_between(base["k"], base["ci_low"], base["ci_high"], color="0.6", alpha=0.3, lw=0, zorder=1)
            left.plot(base["k"], base["value"], color="k", lw=2.6, marker="o", ms=4, zorder=4)
        for m in adapters:
            d = passk[passk["model"] == m].sort_values("k")
            ls, marker = styles[m]
            colour = method_colour(_method(m))
            x = d["k"].to_numpy(float) * 2.0 ** dodge[m]
            for ax, y, lo, hi in (
                (left, d["value"], d["ci_low"], d["ci_high"]),
                (right, d["diff"], d["diff_ci_low"], d["diff_ci_high"]),
            ):
                y, lo, hi = (np.asarray(c, dtype=float) for c in (y, lo, hi))
                yerr = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
                ax.errorbar(
                    x,
                    y,
                    yerr=yerr,
                    color=colour,
                    ls=ls,
                    marker=marker,
                    ms=3.5,
                    lw=1.1,
                    elinewidth=0.7,
                    capsize=1.5,
                    alpha=0.9,
                    zorder=3,
                )
        floor = passk[passk["model"] != BASE].groupby("k")["seed_floor"].max().reindex(ks).to_numpy(float)
        if np.isfinite(floor).any():
            right.fill_between(ks, -floor, floor, color="0.55", alpha=0.25, lw=0, zorder=1)
        right.axhline(0.0, color="k", lw=1.0, zorder=2)
        for ax in (left, right):
            ax.set_xscale("log", base=2)
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.minorticks_off()
            ax.set_xlim(ks[0] / 2**0.25, ks[-1] * 2**0.25)
            ax.set_xlabel("k (samples drawn per item)")
        left.set_ylabel("pass@k")
        left.set_title("pass@k (base: black, band: its 95% interval; bars: 95% intervals)", fontsize=8)
        right.set_ylabel("pass@k - base pass@k")
        floor_note = "grey: the noise floor" if np.isfinite(floor).any() else "no method has two seeds: no noise floor"
        right.set_title(f"difference to the base (bars: paired 95% intervals; {floor_note})", fontsize=8)
        fig.suptitle(f"pass@k, {_samples_text(passk)}", fontsize=10)
        handles = [Line2D([], [], color="k", lw=2.6, marker="o", ms=4, label="base")]
        handles += [
            Line2D(
                [], [], color=method_colour(_method(m)), ls=styles[m][0], marker=styles[m][1], ms=3.5, label=_name(m)
            )
            for m in adapters
        ]
        if np.isfinite(floor).any():
            handles.append(
                Line2D([], [], color="0.55", alpha=0.5, lw=6, label="noise floor: ± largest seed floor at k")
            )
        ncol = min(len(handles), 6)
        fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=7, frameon=False)
        save(fig, out / "pass_at_k.png")


def _adapter_axis(ax, adapters: list[str]) -> None:
    ax.set_xticks(range(len(adapters)), [_name(m) for m in adapters], rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(adapters) - 0.4)
    ax.grid(axis="x", visible=False)


def _kl_panel(ax, kl: pd.DataFrame) -> bool:
    """Panel (a); returns whether any method's seed floor is drawn."""
    tok = kl[kl["unit"] == "token"]
    adapters = _adapter_order(tok["model"])
    x = {m: i for i, m in enumerate(adapters)}
    offsets = {
        "forward": (-0.17, "o", "forward KL(adapter || base)"),
        "reverse": (0.17, "s", "reverse KL(base || adapter)"),
    }
    for r in tok.itertuples(index=False):
        if r.direction not in offsets:
            continue
        dx, marker, _ = offsets[r.direction]
        colour = method_colour(_method(r.model))
        yerr = [[max(r.value - r.ci_low, 0.0)], [max(r.ci_high - r.value, 0.0)]]
        face = colour if r.direction == "forward" else "white"
        ax.errorbar(
            x[r.model] + dx,
            r.value,
            yerr=yerr,
            fmt=marker,
            ms=4.5,
            color=colour,
            mfc=face,
            mew=1.1,
            elinewidth=0.9,
            capsize=2,
            zorder=3,
        )
    # each method's seed floor: a tick over its adapters (the same value for each of its seeds)
    floors = False
    for (method, direction), g in tok.groupby([tok["model"].map(_method), "direction"], sort=False):
        f = g["seed_floor"].astype(float)
        if direction not in offsets or not np.isfinite(f).any():
            continue
        xs = [x[m] for m in g["model"]]
        floors = True
        ax.hlines(
            float(f.max()),
            min(xs) - 0.35,
            max(xs) + 0.35,
            color=method_colour(method),
            ls="-" if direction == "forward" else "--",
            lw=1.2,
            alpha=0.8,
            zorder=2,
        )
    scale = _scale(ax, "y", tok["value"].to_numpy(float), tok["ci_low"].to_numpy(float))
    if scale != "log":  # zero is on the axis: mark it
        ax.axhline(0.0, color="0.3", lw=0.8)
    _adapter_axis(ax, adapters)
    ax.set_ylabel("KL to the base (nats per sampled token)")
    note = "" if scale == "linear" else f"; y: {scale}"
    ticks = "ticks: each method's seed floor" if floors else "no method has two seeds: no seed floor"
    ax.set_title(f"(a) per-token KL to the base (bars: 95% intervals)\n{ticks}{note}", fontsize=8)
    return floors


def _kl_legend(fig, methods: list[str], floors: bool, second_seed: bool) -> None:
    """One legend below the panels: the methods' colours, then the markers and line styles."""
    handles = [Line2D([], [], color=method_colour(m), marker="o", ls="", label=method_name(m)) for m in methods]
    handles += [
        Line2D([], [], color="0.2", marker="o", ls="", label="(a) forward KL(adapter || base)"),
        Line2D([], [], color="0.2", marker="s", mfc="white", ls="", label="(a) reverse KL(base || adapter)"),
    ]
    if floors:
        handles += [
            Line2D([], [], color="0.2", ls="-", label="(a) seed floor, forward"),
            Line2D([], [], color="0.2", ls="--", label="(a) seed floor, reverse"),
        ]
    if second_seed:
        handles.append(Line2D([], [], color="0.2", marker="s", ls="", label="(c) a method's second seed"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=7, frameon=False)


def _not_measured(ax, title: str) -> None:
    ax.text(0.5, 0.5, NO_FORGETTING, ha="center", va="center", fontsize=10, color="0.3", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def _forgetting_panel(ax, forgetting: pd.DataFrame) -> None:
    adapters = _adapter_order(forgetting["model"])
    f = forgetting.set_index("model").loc[adapters]
    for i, (m, r) in enumerate(f.iterrows()):
        colour = method_colour(_method(m))
        yerr = [[max(r["value"] - r["ci_low"], 0.0)], [max(r["ci_high"] - r["value"], 0.0)]]
        ax.errorbar(i, r["value"], yerr=yerr, fmt="o", ms=4.5, color=colour, elinewidth=0.9, capsize=2, zorder=3)
    ax.axhline(0.0, color="k", lw=0.9)
    _adapter_axis(ax, adapters)
    ax.set_ylabel("held-out CE - base's (nats/token)")
    ax.set_title("(b) forgetting: held-out cross-entropy minus the base's\n(bars: paired 95% intervals)", fontsize=8)


def _scatter_panel(ax, kl: pd.DataFrame, forgetting: pd.DataFrame, corr: pd.DataFrame) -> bool:
    """The scatter of panel (c); returns whether any adapter is drawn as a second seed."""
    fwd = kl[(kl["unit"] == "token") & (kl["direction"] == "forward")].set_index("model")
    f = forgetting.set_index("model")
    adapters = [m for m in _adapter_order(f.index) if m in fwd.index]
    styles = _seed_styles(adapters)
    for m in adapters:
        colour = method_colour(_method(m))
        xv, yv = float(fwd.loc[m, "value"]), float(f.loc[m, "value"])
        xerr = [[max(xv - float(fwd.loc[m, "ci_low"]), 0.0)], [max(float(fwd.loc[m, "ci_high"]) - xv, 0.0)]]
        yerr = [[max(yv - float(f.loc[m, "ci_low"]), 0.0)], [max(float(f.loc[m, "ci_high"]) - yv, 0.0)]]
        ax.errorbar(
            xv,
            yv,
            xerr=xerr,
            yerr=yerr,
            fmt=styles[m][1],
            ms=5,
            color=colour,
            elinewidth=0.6,
            alpha=0.9,
            capsize=0,
            zorder=3,
        )
    xs = fwd.loc[adapters]
    scale = _scale(ax, "x", xs["value"].to_numpy(float), xs["ci_low"].to_numpy(float)) if adapters else "linear"
    ax.axhline(0.0, color="0.3", lw=0.8)
    rows = corr.set_index("predictor")
    kl_row = rows.loc["kl_forward_token"] if "kl_forward_token" in rows.index else None
    title = f"(c) forgetting vs forward per-token KL\nSpearman {_fmt_rho(kl_row)}"
    if "delta_norm" in rows.index:
        title += f"; vs ||dW||: {_fmt_rho(rows.loc['delta_norm'])}"
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("forward KL(adapter || base), nats/token" + ("" if scale == "linear" else f"\n({scale})"))
    ax.set_ylabel("forgetting (nats/token)")
    return any(styles[m][1] != "o" for m in adapters)


def _kl_forgetting(kl: pd.DataFrame, forgetting: pd.DataFrame | None, corr: pd.DataFrame | None, out: Path) -> None:
    with style("whitegrid"):
        fig, (a, b, c) = figure(16, 6.2, 1, 3)
        floors = _kl_panel(a, kl)
        second_seed = False
        if forgetting is None or corr is None:
            _not_measured(b, "(b) forgetting")
            _not_measured(c, "(c) forgetting vs forward per-token KL")
        else:
            _forgetting_panel(b, forgetting)
            second_seed = _scatter_panel(c, kl, forgetting, corr)
        tok = kl[kl["unit"] == "token"]
        _kl_legend(fig, list(dict.fromkeys(_method(m) for m in _adapter_order(tok["model"]))), floors, second_seed)
        if {"n_items", "n_samples"} <= set(tok.columns) and not tok.empty:
            fig.suptitle(f"KL to the base and forgetting; KL: {_samples_text(tok)} at temperature 1", fontsize=10)
        save(fig, out / "kl_forgetting.png")


def behaviour_figures(tables: str | os.PathLike, out: str | os.PathLike) -> None:
    """Write ``pass_at_k.png`` and ``kl_forgetting.png`` (each with its PDF) into ``out`` from the tables
    in ``tables`` (module docstring). ``forgetting.tsv`` and ``forgetting_vs_kl.tsv`` are optional, as
    a pair; ``pass_at_k.tsv`` and ``kl.tsv`` are required."""
    tables, out = Path(tables), Path(out)
    passk = _read(tables, "pass_at_k", PASS_COLUMNS)
    kl = _read(tables, "kl", KL_COLUMNS)
    forgetting = _read(tables, "forgetting", FORGETTING_COLUMNS, required=False)
    corr_path = tables / "forgetting_vs_kl.tsv"
    corr = None
    if corr_path.is_file():
        corr = read_tsv_or(corr_path, InputError, what="a forgetting_vs_kl.tsv of 'lossgeom measure-stats samples'")
        require_columns(corr, CORRELATION_COLUMNS, str(corr_path))
    if (forgetting is None) != (corr is None):
        missing = tables / ("forgetting.tsv" if forgetting is None else "forgetting_vs_kl.tsv")
        raise FileNotFoundError(
            f"behaviour figures: {missing} does not exist, but its partner does (the samples measure's statistics write both)"
        )
    if passk.empty:
        raise InputError(f"behaviour figures: {tables / 'pass_at_k.tsv'} has no rows")
    if kl[kl["unit"] == "token"].empty:
        raise InputError(f"behaviour figures: {tables / 'kl.tsv'} has no per-token (unit 'token') rows")
    _pass_at_k(passk, out)
    _kl_forgetting(kl, forgetting, corr, out)
