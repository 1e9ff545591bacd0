"""Every model-running job records the library versions it ran with in a declared output of its rule, and the
versions rule gathers every such record (a dry run of the default toy study, which has a job of each kind)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO

from lossgeom.resources import GPU_RULES, MODEL_CPU_RULES

pytestmark = pytest.mark.heavy  # a Snakemake dry run in a subprocess

MODEL_RULES = (*GPU_RULES, *MODEL_CPU_RULES)  # the rules that run a model or hold its weights


def dry_run_jobs(workdir) -> list[dict]:
    """Every job of a dry run (``-n -p``) of the default config: rule, inputs, outputs, shell command."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "-n", "-p"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n\[[A-Z][a-z]{2} [A-Z][a-z]{2} .*?\]\n", run.stdout + run.stderr):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not rule or rule.group(1) == "all":
            continue
        files = {k: re.search(rf"^\s+{k}: (.*)$", block, re.M) for k in ("input", "output")}
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append(
            {"rule": rule.group(1), "shell": shell.group(1) if shell else ""}
            | {k: m.group(1).split(", ") if m else [] for k, m in files.items()}
        )
    return jobs


def test_each_model_job_records_its_stack_in_a_declared_output_that_the_versions_table_reads(tmp_path):
    jobs = dry_run_jobs(tmp_path)
    assert set(MODEL_RULES) <= {job["rule"] for job in jobs}  # the default study runs a job of each
    records = []
    for job in (j for j in jobs if j["rule"] in MODEL_RULES):
        (record,) = [p for p in job["output"] if p.startswith("results/versions/") and p.endswith(".json")]
        assert f"--versions-out {record} " in job["shell"], job
        records.append(record)
    (table,) = [j for j in jobs if j["rule"] == "versions"]
    assert table["output"] == ["results/versions.tsv", "results/versions.html"]
    assert sorted(table["input"]) == sorted(records) and len(set(records)) == len(records)
    # each record is named by its job in the table: rule/job=record
    assert "train/sft/seed42=results/versions/train/sft/seed42.json" in table["shell"]
    assert "lmc/sft/seed42/sft/seed123=results/versions/lmc/sft/seed42/sft/seed123.json" in table["shell"]
