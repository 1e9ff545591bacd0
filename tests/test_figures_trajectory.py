"""Tests of the geometry-along-training figure (lossgeom.figures.trajectory): drawn from the tables its
stage writes, and a table without its columns named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lossgeom.errors import InputError
from lossgeom.figures.trajectory import trajectory_figure
from lossgeom.geometry.trajectory import write_trajectory

ROLES = {"sft": "a", "rft": "b", "rift": "c", "lr10x": "a_fast"}


# over ~0.5 s but not heavy: the fast loop's one test of lossgeom/figures/trajectory.py (scripts/test.sh)
def test_trajectory_figure_from_the_trajectory_tables(tmp_path):
    from test_geometry_trajectory import _study

    dirs = _study(
        tmp_path / "adapters",
        np.random.default_rng(0),
        ["a/seed1", "a/seed2", "a/seed1data7", "b/seed1", "c/seed1", "a_fast/seed1"],
    )
    write_trajectory(dirs, tmp_path / "traj", top_k=2)
    png, pdf = trajectory_figure(tmp_path / "traj", ROLES, 1, tmp_path / "fig" / "trajectory.png")
    assert png.stat().st_size > 10_000 and pdf.is_file()
    # without the 10x-LR run its panel says so rather than failing
    trajectory_figure(
        tmp_path / "traj", {k: v for k, v in ROLES.items() if k != "lr10x"}, 1, tmp_path / "fig" / "t2.png"
    )
    # a study of one seed: no init-seed pairs, an empty panel
    one = {k: v for k, v in dirs.items() if k != "a/seed2"}
    write_trajectory(one, tmp_path / "one", top_k=2)
    trajectory_figure(tmp_path / "one", ROLES, 1, tmp_path / "fig" / "one.png")
    paths = pd.read_csv(tmp_path / "traj" / "paths.tsv", sep="\t").drop(columns="cos_to_analysis")
    paths.to_csv(tmp_path / "traj" / "paths.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=r"paths.tsv lacks column\(s\) \['cos_to_analysis'\]"):
        trajectory_figure(tmp_path / "traj", ROLES, 1, tmp_path / "fig" / "t3.png")
