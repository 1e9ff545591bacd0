"""Tests of the base-spectrum figure (lossgeom.figures.spectrum): drawn from the summary table its stage
writes."""

from __future__ import annotations

import pandas as pd

from lossgeom.figures.spectrum import base_spectrum_figure
from lossgeom.geometry.spectrum import MODULE_STATS, spectrum_summary

ROLES = {"sft": "a", "rft": "b", "rift": "c", "lr10x": "a_fast"}


# over ~0.5 s but not heavy: the fast loop's one test of lossgeom/figures/spectrum.py (scripts/test.sh)
def test_base_spectrum_figure_from_a_summary(tmp_path):
    rows = []
    for label in ("a/seed1", "a/seed2", "a/seed1data7", "b/seed1", "c/seed1"):
        for module in ("q", "k"):
            stats = {s: float(len(label) + len(module)) for s in MODULE_STATS}
            rows.append({"label": label, "module": module, **stats, **{f"chance_{s}": 9.0 for s in MODULE_STATS}})
    (tmp_path / "bs").mkdir()
    spectrum_summary(pd.DataFrame(rows)).to_csv(tmp_path / "bs" / "summary.tsv", sep="\t", index=False)
    png, pdf = base_spectrum_figure(tmp_path / "bs", ROLES, 1, tmp_path / "fig" / "base_spectrum.png")
    assert png.stat().st_size > 10_000 and pdf.is_file()
