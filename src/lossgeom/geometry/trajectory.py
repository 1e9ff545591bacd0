"""Geometry along training: every saved step of every adapter, compared with the same pair maths.

A training job keeps its adapter at each step of ``save_steps`` (``train_info.json``): the analysis step
in the adapter directory itself, every other step ``N`` in ``step{N}/`` below it
(:func:`lossgeom.labels.step_dir`). Each (adapter, step) gets one factor cache (reused from
``cache_dir`` when its content matches), and one :func:`.pairwise.pairwise_geometry` over all of them
gives every pair at once: same step (the methods at that step, with the noise floors of that step's
replicates), same adapter (its path: how straight it is) and across steps (does one loss reach
another's later point sooner?). Keys of the combined geometry are ``"{label}@{step}"``.

Tables (tab-separated, written by :func:`write_trajectory`, angles in degrees):

* ``paths.tsv``: one row per adapter and saved step: ``label, method, init_seed, data_seed, step,
  analysis_step, norm`` (``||dW||_F``, all modules), ``norm_ratio_to_analysis`` (``norm`` over the
  norm at the analysis step), ``cos_to_analysis`` (cosine to its own analysis-step delta),
  ``previous_step``, ``cos_to_previous`` (cosine to its previous saved step; ``nan`` at the first).
* ``steps.tsv``: ``step`` and the columns of :func:`.tables.noise_floor_table`, computed on the
  adapters saved at that step alone (``nan`` floors where no replicate was saved at it): the pairwise
  cosines of the methods at each step beside their data-order and init-seed floors and the random level.
* ``cross_steps.tsv``: every pair of (adapter, step): ``label_a, step_a, label_b, step_b`` and the
  headline metrics of :func:`.tables.pair_values` (``cosine_global``, ``norm_ratio`` =
  ``||dW_b|| / ||dW_a||``, ``top1_angle_left_median``, ...).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import InputError
from ..fsutil import atomic_swap_dir, check_replaceable, write_table
from ..labels import Label, step_dir
from ..lora.adapters import check_compatible
from .factors import FactorCache, factor_cache_for_dir
from .pairwise import PairGeometry, pairwise_geometry
from .tables import noise_floor_table, pair_values

log = logging.getLogger(__name__)

TRAJECTORY_TABLES = ("paths", "steps", "cross_steps")


def saved_steps(adapter_dir: str | Path) -> dict[int, Path]:
    """Step -> directory of every adapter a training job kept (``train_info.json``'s ``save_steps``).

    Raises:
        FileNotFoundError: no ``train_info.json``, or a saved step's directory is missing (naming both).
    """
    adapter_dir = Path(adapter_dir)
    info_path = adapter_dir / "train_info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{adapter_dir}: no train_info.json (not an adapter written by 'lossgeom train')")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        save_steps, analysis_step = list(info["save_steps"]), info["analysis_step"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise InputError(
            f"{info_path}: not the train_info.json of 'lossgeom train' ({type(e).__name__}: {e}); retrain the adapter"
        ) from None
    if analysis_step not in save_steps:
        raise InputError(f"{info_path}: analysis_step {analysis_step} is not one of save_steps {save_steps}")
    out = {}
    for step in save_steps:
        d = adapter_dir if step == analysis_step else step_dir(adapter_dir, step)
        if not (d / "adapter_model.safetensors").is_file():
            raise FileNotFoundError(
                f"{adapter_dir}: step {step} is in train_info.json's save_steps, but {d} holds no adapter"
            )
        out[int(step)] = d
    return out


def step_key(label: str, step: int) -> str:
    """The key of an adapter at a saved step in the combined geometry: ``"{label}@{step}"``."""
    return f"{label}@{step}"


@dataclass
class Trajectory:
    """The combined geometry of every (adapter, saved step), and which key is which.

    Attributes: geo (labels are :func:`step_key` keys); index: DataFrame ``key, label, step,
    analysis_step`` in the geometry's order.
    """

    geo: PairGeometry
    index: pd.DataFrame

    def at_step(self, step: int) -> PairGeometry | None:
        """The geometry of the adapters saved at ``step``, labelled by their plain labels (``None`` if
        fewer than two were)."""
        rows = self.index[self.index["step"] == step]
        if len(rows) < 2:
            return None
        return self.geo.subset(list(rows["key"]), rename=list(rows["label"]))


def build_trajectory(
    adapters: Mapping[str, str | Path], top_k: int, cache_dir: str | Path | None = None, progress: bool = False
) -> Trajectory:
    """Factor caches of every saved step of every adapter (label -> adapter directory), and their pairs."""
    caches: dict[str, FactorCache] = {}
    rows = []
    for label, d in adapters.items():
        steps = saved_steps(d)
        analysis = next(s for s, sd in steps.items() if sd == Path(d))  # kept in the adapter directory itself
        for step, sd in steps.items():
            key = step_key(label, step)
            path = None if cache_dir is None else Path(cache_dir) / (re.sub(r"[^\w.-]+", "_", key) + ".safetensors")
            caches[key] = factor_cache_for_dir(sd, path, top_k=top_k, label=key)
            rows.append((key, label, step, analysis))
    check_compatible(list(caches.values()))
    geo = pairwise_geometry(caches, top_k=top_k, progress=progress)
    return Trajectory(geo, pd.DataFrame(rows, columns=["key", "label", "step", "analysis_step"]))


def paths_table(traj: Trajectory) -> pd.DataFrame:
    """``paths.tsv`` (see the module docstring): each adapter's own path through its saved steps."""
    idx = traj.index
    pos = {k: i for i, k in enumerate(traj.geo.labels)}
    cos = PairGeometry.cosine_of(traj.geo.inner_global())
    norms = traj.geo.norms()
    out = []
    for label, rows in idx.groupby("label", sort=False):
        rows = rows.sort_values("step")
        a = pos[step_key(label, int(rows["analysis_step"].iloc[0]))]
        lab = Label.try_parse(label)
        prev = None
        for r in rows.itertuples(index=False):
            i = pos[r.key]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = norms[i] / norms[a]
            out.append(
                {
                    "label": label,
                    "method": lab.method if lab else label,
                    "init_seed": lab.seed if lab else np.nan,
                    "data_seed": lab.data_order_seed if lab else np.nan,
                    "step": r.step,
                    "analysis_step": r.analysis_step,
                    "norm": norms[i],
                    "norm_ratio_to_analysis": ratio,
                    "cos_to_analysis": cos[i, a],
                    "previous_step": np.nan if prev is None else prev[0],
                    "cos_to_previous": np.nan if prev is None else cos[i, prev[1]],
                }
            )
            prev = (r.step, i)
    return pd.DataFrame(out)


def steps_table(traj: Trajectory) -> pd.DataFrame:
    """``steps.tsv``: :func:`.tables.noise_floor_table` of the adapters saved at each step."""
    parts = []
    for step in sorted(traj.index["step"].unique()):
        geo = traj.at_step(int(step))
        if geo is not None:
            nf = noise_floor_table(geo)
            nf.insert(0, "step", int(step))
            parts.append(nf)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["step"])


def cross_steps_table(traj: Trajectory) -> pd.DataFrame:
    """``cross_steps.tsv``: every pair of (adapter, step), with the headline metrics."""
    geo = traj.geo
    by_key = traj.index.set_index("key")
    i, j = geo.pairs[:, 0], geo.pairs[:, 1]
    keys = np.asarray(geo.labels, dtype=object)
    out = pd.DataFrame(
        {
            "label_a": by_key.loc[keys[i], "label"].to_numpy(),
            "step_a": by_key.loc[keys[i], "step"].to_numpy(),
            "label_b": by_key.loc[keys[j], "label"].to_numpy(),
            "step_b": by_key.loc[keys[j], "step"].to_numpy(),
        }
    )
    for metric, v in pair_values(geo).items():
        out[metric] = v
    return out


def write_trajectory(
    adapters: Mapping[str, str | Path],
    out_dir: str | Path,
    top_k: int,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> Trajectory:
    """Build the trajectory of ``adapters`` (label -> adapter directory) and write ``paths.tsv``,
    ``steps.tsv``, ``cross_steps.tsv`` and ``settings.json`` into ``out_dir``, the directory as a whole
    (:func:`lossgeom.fsutil.atomic_swap_dir`): exactly these files, or after any failure its previous
    contents untouched. An ``out_dir`` holding other files, or ``cache_dir`` inside it, stops before any work."""
    check_replaceable(out_dir, keep=(cache_dir,))
    traj = build_trajectory(adapters, top_k, cache_dir, progress)
    settings = {
        "adapters": {label: str(d) for label, d in adapters.items()},
        "steps": {label: sorted(int(s) for s in g["step"]) for label, g in traj.index.groupby("label", sort=False)},
        "top_k": traj.geo.top_k,
        "angle_unit": "degrees",
        "n_sine_recomputed": traj.geo.n_sine_recomputed,
    }
    with atomic_swap_dir(out_dir) as tmp:
        write_table(paths_table(traj), tmp / "paths.tsv")
        write_table(steps_table(traj), tmp / "steps.tsv")
        write_table(cross_steps_table(traj), tmp / "cross_steps.tsv")
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    log.info("wrote the trajectory of %d adapters (%d adapter-steps) to %s", len(adapters), len(traj.index), out_dir)
    return traj
