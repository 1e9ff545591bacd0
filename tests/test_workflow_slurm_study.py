"""The tiny study end to end through a real SLURM cluster and profiles/slurm (see test_workflow_slurm_cluster.py
for how to start one): GPU rules are submitted with --gpus=1, cheap aggregates run locally."""

from __future__ import annotations

import os
import shutil
import subprocess

import pandas as pd
import pytest
import yaml
from conftest import REPO
from test_workflow import TINY, write_rollouts

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sinfo") is None, reason="no SLURM here (sinfo not on PATH)"),
    pytest.mark.skipif(os.environ.get("LOSSGEOM_SLURM") != "1", reason="set LOSSGEOM_SLURM=1 with a running cluster"),
]


def test_tiny_study_through_the_slurm_profile(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["seeds"] = [1]
    config["methods"] = {k: config["methods"][k] for k in ("sft", "rift", "dpo")}
    config_path = tmp_path / "slurm_study.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    write_rollouts(tmp_path)
    cmd = [
        "timeout",
        "-s",
        "KILL",
        "900",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(config_path),
        "--workflow-profile",
        str(REPO / "profiles" / "slurm"),
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--jobs",
        "4",
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout[-8000:]
    submitted = proc.stdout.count("has been submitted with SLURM jobid")
    # toy base model, 3 trainings, 3 data-order replicates (the tiny config's data_order_replicate),
    # 4 evaluations (each with its activations, samples and held-out text), 2 sweeps and the base spectrum
    # (it holds the base model's weights): all through sbatch
    assert config["data_order_replicate"], "the count below assumes one replicate per method"
    assert submitted == 1 + 3 + 3 + 4 + 2 + 1, proc.stdout[-4000:]
    for rule in (
        "geometry",
        "trajectory",
        "trajectory_figures",
        "base_spectrum_figures",
        "eval_stats",
        "behaviour_stats",
        "behaviour_figures",
        "cka",
        "lmc_summary",
        "accuracy_figures",
        "connectivity_figures",
        "representations_figures",
        "toy_world",
        "import_rollouts",
        "rollouts_summary",
        "versions",
    ):
        assert f"localrule {rule}:" in proc.stdout, rule
    cos = pd.read_csv(tmp_path / "results" / "geometry" / "cosine_global.tsv", sep="\t", index_col=0)
    methods = ["sft", "rift", "dpo"]
    assert list(cos.index) == [f"{m}/seed1" for m in methods] + [f"{m}/seed1data5" for m in methods]
    assert (tmp_path / "results" / "figures" / "lmc.png").exists()
    assert list((tmp_path / "logs" / "slurm" / "rule_train").rglob("*.log"))
