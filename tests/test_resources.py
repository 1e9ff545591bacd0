"""Tests of lossgeom.resources: what every rule asks SLURM for, through the command docs/CLUSTER.md gives."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from lossgeom.config import load, with_defaults
from lossgeom.labels import Label
from lossgeom.methods import MethodSpec
from lossgeom.resources import (
    CONDA_ENV,
    CONDA_ENV_VLLM,
    GPU_RULES,
    MODEL_CPU_RULES,
    api_rollouts,
    attempt_memory,
    conda_env,
    rule_resources,
    rule_threads,
    uses_vllm,
)
from lossgeom.stage_costs import rule_minutes

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
PAPER = ROOT / "config" / "paper.yaml"
# the cluster command of docs/CLUSTER.md ("SLURM", "The paper's protocol"), as written there (a dry run added)
CLUSTER_COMMAND = ["snakemake", "--workflow-profile", "profiles/slurm", "--configfile", "config/paper.yaml"]


def _no_gpu_env() -> dict:
    """No GPU visible: no CUDA device and no nvidia-smi on PATH (a login node)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSGEOM_")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not (Path(p) / "nvidia-smi").exists())
    return env


def _dry_run_jobs(tmp_path, *extra) -> list[dict]:
    """Every job of a dry run of the documented command: rule, wildcards, resources (ints), shell command."""
    out = subprocess.run(
        [*CLUSTER_COMMAND, "-n", "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"), *extra],
        cwd=ROOT,
        env=_no_gpu_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n\[[A-Z][a-z]{2} [A-Z][a-z]{2} .*?\]\n", out.stdout + out.stderr):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if not rule or not res or rule.group(1) == "all":
            continue
        resources = dict(kv.split("=", 1) for kv in res.group(1).split(", "))
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        threads = re.search(r"--threads (\d+)", block)
        jobs.append(
            {
                "rule": rule.group(1),
                "wildcards": dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")) if wildcards else {},
                "resources": {k: int(v) for k, v in resources.items() if v.isdigit()},
                "threads": int(threads.group(1)) if threads else None,
            }
        )
    return jobs


@pytest.fixture(scope="module")
def paper() -> dict:
    return with_defaults(load(PAPER, SCHEMA))


@pytest.fixture(scope="module")
def paper_jobs(tmp_path_factory) -> list[dict]:
    return _dry_run_jobs(tmp_path_factory.mktemp("paper"))


@pytest.mark.heavy
def test_every_gpu_rule_of_the_paper_asks_for_a_gpu_and_paper_sized_limits(paper, paper_jobs):
    """The documented command on a login node without GPUs: every job that runs a model asks for one GPU
    (the API teacher's rollouts for none), a training job for the time its steps need and the memory of
    the paper's table, the rest for the config's sizes."""
    by_rule = {}
    for job in paper_jobs:
        by_rule.setdefault(job["rule"], []).append(job)
    assert {"train", "evaluate", "lmc", "rollouts"} <= set(by_rule)
    res = paper["resources"]
    for job in (j for j in paper_jobs if j["rule"] in GPU_RULES and j["rule"] != "rollouts"):
        assert job["resources"]["gpu"] == 1, job
    (rollouts,) = by_rule["rollouts"]
    assert api_rollouts(paper) and rollouts["resources"]["gpu"] == 0
    for job in by_rule["train"]:
        spec = MethodSpec.from_config(paper, Label.parse(job["wildcards"]["label"]).method)
        assert job["resources"]["runtime"] == rule_minutes(paper, "train", spec.method)
        assert job["resources"]["mem_mb"] == res["train_mem_mb"] == 64000
        # the paper's adapter: 1,500 steps of 32 rows, every row at 4,608 tokens: 3.6-10.5 GPU-hours in the FLOP
        # model; asked for more than that and at most the partition's limit (a longer run resumes on retry)
        assert 3.6 * 60 * res["runtime_margin"] <= job["resources"]["runtime"] <= res["max_runtime"]
    for rule in ("evaluate", "lmc"):
        for job in by_rule[rule]:
            assert job["resources"]["mem_mb"] == 32000, job
            assert job["resources"]["runtime"] == rule_minutes(paper, rule) > res["runtime_overhead"], job
    # the base spectrum holds the base model's weights and their SVDs on the host: a model job's memory, no GPU
    (spectrum,) = by_rule["base_spectrum"]
    assert spectrum["resources"].get("gpu", 0) == 0
    assert (spectrum["resources"]["mem_mb"], spectrum["resources"]["runtime"]) == (32000, 480)
    # so does geometry with base_alignment (the base's attention weights in float64, ~7.5 GB; the rule is then
    # not a local one: the SLURM study test sees it local without base_alignment)
    (geometry,) = by_rule["geometry"]
    assert paper["geometry"]["base_alignment"]
    assert (geometry["resources"]["mem_mb"], geometry["resources"].get("gpu", 0)) == (32000, 0)
    for job in (j for j in paper_jobs if j["rule"] not in (*GPU_RULES, *MODEL_CPU_RULES, "geometry")):
        assert job["resources"].get("gpu", 0) == 0 and job["resources"]["mem_mb"] == res["cpu_job_mem_mb"]


@pytest.mark.heavy
def test_the_gpu_hour_table_counts_the_jobs_of_the_dag(paper, paper_jobs):
    """lossgeom cost's jobs per stage are the dry run's (the paper's 36 connectivity sweeps, 17 evaluations...)."""
    from lossgeom.stage_costs import gpu_hours

    counted = {}
    for job in paper_jobs:
        key = job["rule"]
        if key == "train":
            key = f"train {Label.parse(job['wildcards']['label']).method}"
        counted[key] = counted.get(key, 0) + 1
    table = {r["stage"].split(" (")[0]: r["jobs"] for r in gpu_hours(paper)[:-1]}
    assert table == {k: counted[k] for k in table}
    assert table["lmc"] == 36 and table["evaluate"] == 17


@pytest.mark.heavy
def test_geometry_from_the_factors_alone_stays_a_small_aggregate(tmp_path):
    override = tmp_path / "no_base_alignment.yaml"
    override.write_text("geometry:\n  base_alignment: false\n")
    jobs = _dry_run_jobs(tmp_path, "--configfile", str(PAPER), str(override))
    (geometry,) = [j for j in jobs if j["rule"] == "geometry"]
    assert geometry["resources"]["mem_mb"] == 4000 and geometry["resources"]["runtime"] == 30


@pytest.mark.heavy
def test_the_paper_s_vllm_jobs_get_several_cpus(paper, tmp_path):
    """A dry run caps threads at its one core (Snakemake's cli.py); with cores to spare, the vLLM jobs
    ask for vllm_threads and training for training.threads (SLURM's --cpus-per-task)."""
    jobs = _dry_run_jobs(tmp_path, "--cores", "256")
    threads = {}
    for job in jobs:
        key = job["rule"]
        if key == "train":  # online GRPO samples with vLLM (the paper's backend: vllm) as it trains
            key = "train_online" if job["wildcards"]["label"].startswith("online_grpo/") else "train"
        threads.setdefault(key, set()).add(job["threads"])
    assert threads["evaluate"] == threads["lmc"] == threads["train_online"] == {8}
    assert threads["train"] == {4}


@pytest.mark.heavy
def test_a_profile_overrides_one_rule_s_resources(tmp_path):
    """As the SLURM plugin documents: set-resources (here on the command line) wins over the rule's."""
    jobs = _dry_run_jobs(tmp_path, "--set-resources", "train:runtime=2880", "train:mem_mb=120000")
    train = [j for j in jobs if j["rule"] == "train"]
    assert train and all(j["resources"]["runtime"] == 2880 and j["resources"]["mem_mb"] == 120000 for j in train)


def test_memory_grows_with_the_attempt():
    assert [attempt_memory(16000, a, 1.5) for a in (1, 2, 3)] == [16000, 24000, 36000]
    assert attempt_memory(16000, 0, 1.5) == 16000


def test_which_jobs_run_vllm(paper):
    assert uses_vllm(paper, "evaluate") and uses_vllm(paper, "lmc") and not uses_vllm(paper, "rollouts")
    assert uses_vllm(paper, "train", "online_grpo") and not uses_vllm(paper, "train", "sft")
    assert rule_threads(paper, "train", "online_grpo") == 8 and rule_threads(paper, "train", "sft") == 4
    off = copy.deepcopy(paper)
    off["generation"]["stages"]["training"] = "hf"
    assert not uses_vllm(off, "train", "online_grpo") and rule_threads(off, "train", "online_grpo") == 4


def test_toy_resources_and_an_imported_table(tmp_path):
    toy = with_defaults(load(ROOT / "config" / "config.yaml", SCHEMA))
    assert rule_resources(toy, "rollouts")["gpu"] == 1 and not api_rollouts(toy)
    # the toy measures base alignment too: geometry is sized as a model job (on a workstation all run locally)
    assert rule_resources(toy, "geometry") == {"mem_mb": 16000, "runtime": 240, "gpu": 0}
    toy["geometry"]["base_alignment"] = False
    assert rule_resources(toy, "geometry") == {"mem_mb": 4000, "runtime": 30, "gpu": 0}
    imported = yaml.safe_load(PAPER.read_text())
    imported["rollouts"]["import"] = "rollouts.jsonl"
    del imported["generation"]["stages"]["rollouts"]
    assert not api_rollouts(with_defaults(imported))


def test_only_the_working_slurm_command_is_documented():
    """`--profile profiles/slurm` also loads profiles/default, whose GPU cap is 0 on a login node, so every
    GPU job would ask for none: no file documents it without `--workflow-profile none`."""
    bad = []
    docs = [ROOT / "README.md", ROOT / "CHANGELOG.md", *ROOT.glob("docs/**/*.md")]
    for path in [*docs, *ROOT.glob("config/*.yaml"), *ROOT.glob("profiles/**/*"), ROOT / "Snakefile"]:
        if path.is_file():
            for line in path.read_text().splitlines():
                if re.search(r"(^|\s)--profile profiles/slurm", line) and "--workflow-profile none" not in line:
                    if "alone is not enough" not in line and "on its own" not in line:
                        bad.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert bad == []


def test_jobs_that_run_vllm_get_the_vllm_conda_env(paper):
    assert conda_env(paper, "evaluate") == conda_env(paper, "lmc") == CONDA_ENV_VLLM
    assert conda_env(paper, "train", "online_grpo") == CONDA_ENV_VLLM  # TRL's colocated vLLM
    assert conda_env(paper, "train", "sft") == conda_env(paper, "rollouts") == conda_env(paper, "cka") == CONDA_ENV
    assert (ROOT / CONDA_ENV).is_file() and (ROOT / CONDA_ENV_VLLM).is_file()


# -- memory grows only after a memory kill (issue 30) ----------------------------------------------------------
def test_only_the_tries_killed_for_memory_grow_it_up_to_the_cap():
    assert [attempt_memory(16000, a, 1.5, memory_kills=0) for a in (1, 2, 3)] == [16000] * 3  # time limits
    assert [attempt_memory(16000, a, 1.5, memory_kills=1) for a in (1, 2, 3)] == [16000, 24000, 24000]
    assert attempt_memory(16000, 3, 1.5, memory_kills=2, cap=30000) == 30000
    assert attempt_memory(16000, 3, 1.5, memory_kills=2, cap=8000) == 16000  # never below the first try's


def test_memory_kills_are_read_from_the_plugins_log_of_each_try(tmp_path):
    import types

    from snakemake.iocontainers import Wildcards
    from snakemake_executor_plugin_slurm.utils import get_job_wildcards

    from lossgeom.resources import memory_kills, slurm_job_logs

    wildcards = Wildcards(fromdict={"label": "dpo/seed42"})
    # the folder the plugin writes the job's logs to (its own get_job_wildcards)
    folder = tmp_path / "rule_train" / get_job_wildcards(types.SimpleNamespace(wildcards=wildcards))
    folder.mkdir(parents=True)
    (folder / "101.log").write_text("step 300\nslurmstepd: error: *** JOB 101 CANCELLED AT ... DUE TO TIME LIMIT ***\n")
    (folder / "102.log").write_text(
        "slurmstepd: error: Detected 1 oom_kill event in StepId=102.0. Some of the step tasks have been OOM Killed.\n"
    )
    logs = slurm_job_logs(tmp_path, "train", dict(wildcards.items()))
    assert [p.name for p in logs] == ["101.log", "102.log"]
    assert memory_kills(logs) == 1
    assert slurm_job_logs(tmp_path, "evaluate", {"model": "base"}) == []
