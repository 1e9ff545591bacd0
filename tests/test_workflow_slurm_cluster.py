"""End to end through a real SLURM: profiles/slurm + snakemake-executor-plugin-slurm.

Needs a running cluster and LOSSGEOM_SLURM=1, e.g.

    scripts/slurm-local.sh install && scripts/slurm-local.sh start
    LOSSGEOM_SLURM=1 python -m pytest -m slurm tests/test_workflow_slurm_cluster.py
    scripts/slurm-local.sh stop

The cluster must offer one GPU GRES (scripts/slurm-local.sh fakes one on
/dev/null).  This proves the profile and the cluster; the study itself goes
through the same profile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm"

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sinfo") is None, reason="no SLURM here (sinfo not on PATH)"),
    pytest.mark.skipif(
        os.environ.get("LOSSGEOM_SLURM") != "1",
        reason="set LOSSGEOM_SLURM=1 with a running cluster (scripts/slurm-local.sh start)",
    ),
]

# Job shells run with `set -u` and without most SLURM_* variables: use ${VAR:-}.
SNAKEFILE = textwrap.dedent(
    """
    localrules: all

    rule all:
        input: "summary.txt"

    rule prepare:
        output: "prepared.txt"
        shell: "echo prepared > {output}"

    rule gpu:
        input: "prepared.txt"
        output: "gpu.txt"
        resources: gpu=1
        shell:
            "echo ${{CUDA_VISIBLE_DEVICES:-none}} > {output}; "
            "echo ${{SLURM_JOB_ID:-none}} >> {output}"

    rule summarize:
        input: "prepared.txt", "gpu.txt"
        output: "summary.txt"
        shell: "cat {input} > {output}"
    """
)


def _default_partition() -> str:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True)
    for name in out.stdout.split():
        if name.endswith("*"):
            return name[:-1]
    return ""


def _tail_logs(workdir: Path, n: int = 40) -> str:
    parts = []
    for log in sorted((workdir / "logs" / "slurm").rglob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-n:]
        parts.append(f"----- {log.relative_to(workdir)} -----\n" + "\n".join(lines))
    return "\n".join(parts)


def test_three_rule_workflow_through_slurm_profile(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    env = dict(os.environ)
    # exercise the profile's site settings: partition from the environment
    # (the user's own choice if set, else the cluster's default partition)
    env.setdefault("LOSSGEOM_SLURM_PARTITION", _default_partition())
    cmd = [
        "timeout", "-s", "KILL", "300",
        "snakemake",
        # --workflow-profile, not --profile: otherwise a profiles/default next
        # to the Snakefile or in the working directory would override the
        # SLURM profile's default-resources (see profiles/slurm/README.md)
        "--workflow-profile", str(PROFILE),
        "--directory", str(tmp_path),
        "-s", str(tmp_path / "Snakefile"),
        # the test cluster runs jobs within seconds: poll early
        "--slurm-init-seconds-before-status-checks", "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    report = f"$ {' '.join(cmd)}\n{proc.stdout[-6000:]}\n{_tail_logs(tmp_path)}"
    assert proc.returncode != -9 and proc.returncode != 137, "snakemake hung (killed after 300 s)\n" + report
    assert proc.returncode == 0, report

    # every job went through sbatch, under the configured partition
    assert proc.stdout.count("has been submitted with SLURM jobid") == 3, report
    assert "localrule all" in proc.stdout

    cuda, job_id = (tmp_path / "gpu.txt").read_text().split()
    assert cuda != "none", "the gpu=1 job saw no CUDA_VISIBLE_DEVICES:\n" + report
    assert job_id != "none", "the gpu=1 job did not run inside a SLURM job:\n" + report
    assert (tmp_path / "summary.txt").read_text().split() == ["prepared", cuda, job_id]

    # one kept log per job: logs/slurm/rule_<rule>/<jobid>.log
    for rule in ("prepare", "gpu", "summarize"):
        logs = list((tmp_path / "logs" / "slurm" / f"rule_{rule}").glob("*.log"))
        assert len(logs) == 1, f"rule {rule}: {logs}\n{report}"
    assert (tmp_path / "logs" / "slurm" / "rule_gpu" / f"{job_id}.log").exists()

    # SLURM itself: the GPU job asked for a GPU and ran in the chosen partition
    # (finished jobs stay visible to squeue for MinJobAge seconds)
    shown = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", job_id, "-O", "Partition:|,tres-per-job:|"], capture_output=True, text=True
    ).stdout.strip()
    if shown:
        partition, gres = shown.split("|")[:2]
        assert "gpu" in gres, shown
        if env["LOSSGEOM_SLURM_PARTITION"]:
            assert partition == env["LOSSGEOM_SLURM_PARTITION"], shown
