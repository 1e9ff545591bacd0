"""scripts/compare-kernels.sh on the tiny test config: the study run twice under two settings of torch's CPU
kernels, and what moved between them (lossgeom compare-runs).

The two sides here are torch's scalar kernels (``ATEN_CPU_CAPABILITY=default``) and AVX2, which every CI
machine has; the default study's own comparison (this CPU against AVX2) is in docs/TOY-CLAIMS.md. Whether
numbers move is the machine's business; the test checks that each side ran under the kernels it was given
and that the comparison covers every claim and table of both runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_workflow import TINY, write_rollouts

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_kernel_comparison_runs_both_sides_and_compares_every_claim(tmp_path):
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        write_rollouts(tmp_path / side)  # the tiny config imports its rollouts from the working directory
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "KERNELS_A": "ATEN_CPU_CAPABILITY=default",
        "KERNELS_B": "ATEN_CPU_CAPABILITY=avx2",
    }
    run = subprocess.run(
        [str(REPO / "scripts" / "compare-kernels.sh"), str(tmp_path), "--cores", "2", "--configfile", str(TINY)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "side a: torch CPU capability DEFAULT" in run.stdout
    assert "side b: torch CPU capability AVX2" in run.stdout
    verdicts = pd.read_csv(tmp_path / "comparison" / "verdicts.tsv", sep="\t")
    assert len(verdicts) == 26 and verdicts["verdict_a"].ne("").all() and verdicts["verdict_b"].ne("").all()
    tables = pd.read_csv(tmp_path / "comparison" / "tables.tsv", sep="\t")
    assert {"claims.tsv", "geometry/noise_floor.tsv", "eval/accuracy.tsv"} <= set(tables["table"])
    assert not tables["rows"].astype(str).str.startswith("only in").any()  # the same tables on both sides
    summary = (tmp_path / "comparison" / "summary.md").read_text()
    assert summary.startswith("# DEFAULT (ATEN_CPU_CAPABILITY=default) vs AVX2 (ATEN_CPU_CAPABILITY=avx2)")
