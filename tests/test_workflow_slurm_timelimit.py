"""A time limit survived on a real SLURM: a training job longer than its limit is stopped by SLURM
(TIMEOUT), retried by the profile (retries), resumes from its last checkpoint each time, and ends in
the same adapter, byte for byte, as an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml
from conftest import REPO
from test_workflow import TINY, write_rollouts

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("scontrol") is None, reason="no SLURM here (scontrol not on PATH)"),
    pytest.mark.skipif(os.environ.get("LOSSGEOM_SLURM") != "1", reason="set LOSSGEOM_SLURM=1 with a running cluster"),
]

# ~40 steps/s for the tiny model on one core: ~150 s of training, over two 1-minute limits
STEPS = 6000


def _config(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["seeds"] = [1]
    config["data_order_replicate"] = None
    config["methods"] = {"sft": config["methods"]["sft"]}
    config["training"].update(steps=STEPS, save_steps=[STEPS // 2, STEPS], analysis_step=STEPS, checkpoint_every=200)
    # memory the loopback node has on every attempt (memory_growth 1: a TIMEOUT is not a memory problem)
    config["resources"] = {"train_mem_mb": 1500, "gpu_job_mem_mb": 1500, "cpu_job_mem_mb": 500, "memory_growth": 1.0}
    path = tmp_path / "timelimit.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config, path


def test_a_training_job_stopped_at_its_time_limit_resumes_on_the_retry_to_the_same_adapter(tmp_path):
    from lossgeom.config import with_defaults
    from lossgeom.methods import MethodSpec

    config, path = _config(tmp_path)
    write_rollouts(tmp_path)
    target = "results/adapters/sft/seed1"
    cmd = ["timeout", "-s", "KILL", "1200", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
    cmd += ["--configfile", str(path), "--workflow-profile", str(REPO / "profiles" / "slurm")]
    # the shortest limit SLURM takes (1 minute), below the job's ~2.5 minutes; retries as the profile's, a few more
    cmd += ["--slurm-init-seconds-before-status-checks", "2", "--set-resources", "train:runtime=1", "--retries", "5"]
    run = subprocess.run([*cmd, target], capture_output=True, text=True)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    logs = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "logs" / "slurm").rglob("*.log"))
    assert "DUE TO TIME LIMIT" in logs, "no training attempt reached its time limit:\n" + logs[-3000:]
    info = json.loads((tmp_path / target / "train_info.json").read_text())
    assert info["resumed_from"] and "checkpoint-" in info["resumed_from"], info

    # the same job uninterrupted, on this machine, from the same base model and rollouts
    spec = MethodSpec.from_config(with_defaults(config), "sft")
    ref = tmp_path / "reference"
    subprocess.run(
        ["lossgeom", "train", "--spec", spec.to_json(), "--seed", "1", "--rollouts"]
        + [
            str(tmp_path / "results" / "rollouts" / "rollouts.parquet"),
            "--base",
            str(tmp_path / "results/toy/models/base"),
        ]
        + ["--out", str(ref), "--checkpoints", str(tmp_path / "ref_ckpt"), "--threads", "1"],
        check=True,
        capture_output=True,
    )
    for name in ("adapter_model.safetensors", f"step{STEPS // 2}/adapter_model.safetensors"):
        assert (tmp_path / target / name).read_bytes() == (ref / name).read_bytes(), name
