"""Preemption on a real SLURM: a training job requeued mid-run (as a preempting scheduler does)
restarts and resumes from its last checkpoint, and the workflow still completes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

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


def _running_job_id() -> str | None:
    """The running SLURM job; while a checkpoint directory exists that is the training job (the
    only job of this workflow that runs after the toy base model)."""
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True).stdout.split()
    return out[0] if len(out) == 1 else None


def test_requeued_training_job_resumes_from_its_checkpoint(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["seeds"] = [1]
    config["methods"] = {"sft": config["methods"]["sft"]}
    # long enough (~40 s of training) that the requeue lands mid-run, however fast the node
    config["training"].update(steps=1500, save_steps=[1500], analysis_step=1500, checkpoint_every=50)
    path = tmp_path / "preempt.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    write_rollouts(tmp_path)
    target = "results/adapters/sft/seed1"
    cmd = [
        "timeout",
        "-s",
        "KILL",
        "600",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(path),
        "--workflow-profile",
        str(REPO / "profiles" / "slurm"),
        "--slurm-init-seconds-before-status-checks",
        "2",
        target,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = tmp_path / "results" / "checkpoints" / "sft" / "seed1"
    requeued = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        job = _running_job_id()
        if job and any(ckpt.glob("checkpoint-*")):
            subprocess.run(["scontrol", "requeue", job], check=True)
            # SLURM holds a requeued job back for a while (BeginTime); make it eligible at once
            time.sleep(1)
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=False)
            requeued = job
            break
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=600)
    assert requeued, "the training job finished before it could be requeued:\n" + out[-3000:]
    assert proc.returncode == 0, out[-6000:]
    info = json.loads((tmp_path / target / "train_info.json").read_text())
    assert info["resumed_from"] and "checkpoint-" in info["resumed_from"], info
