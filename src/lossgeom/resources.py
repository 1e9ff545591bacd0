"""What each rule asks a scheduler (or the local machine) for, sized from the config: one place.

Every rule's ``threads`` and ``resources`` come from :func:`rule_threads` and :func:`rule_resources` (the
rule files unpack them, :file:`workflow/rules/common.smk`); a profile overrides any rule with
``set-resources`` / ``set-threads``, as the SLURM executor plugin documents. Units: ``mem_mb`` in MB of
host memory, ``runtime`` in minutes of wall time, ``gpu`` in devices (the SLURM plugin submits
``gpu=1`` as ``--gpus=1``; locally ``profiles/default`` caps their sum at the GPUs present).

A model job's time limit is its estimated device time (:func:`lossgeom.stage_costs.rule_minutes`, from the
FLOP model of :mod:`lossgeom.cost_model`), capped at ``resources.max_runtime``: a training job stopped at its
limit resumes from its last checkpoint when the profile retries it, so a limit below the whole run costs one
restart, not the run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

from .config import api_rollouts, generation_backend
from .methods import MethodSpec
from .stage_costs import rule_minutes

# The rules that run a model; they ask for a GPU (the rest are cheap aggregates and figures).
GPU_RULES = ("toy_model", "rollouts", "train", "evaluate", "lmc")
# CPU rules that hold the base model's weights on the host (and SVDs of each module): sized as a model job
# (gpu_job_mem_mb, gpu_job_runtime), with no GPU; so is geometry with geometry.base_alignment (a submitted
# job then, not a local one: workflow/rules/geometry.smk)
MODEL_CPU_RULES = ("base_spectrum",)
# generation stage of a rule (lossgeom.config.generation_backend), where it has one
GENERATION_STAGE = {"rollouts": "rollouts", "evaluate": "evaluation", "lmc": "lmc", "train": "training"}


def uses_vllm(config: Mapping, rule: str, method: str | None = None) -> bool:
    """Whether a job of ``rule`` (training: of ``method``) runs vLLM: its stage's backend is vllm (for
    training, only online GRPO generates)."""
    stage = GENERATION_STAGE.get(rule)
    if stage is None or generation_backend(config, stage) != "vllm":
        return False
    # a loss that reads no rollout completions samples its own (online GRPO)
    return rule != "train" or not MethodSpec.from_config(config, method).loss_def.reads_completions


# the conda environments of --sdm conda, relative to the repository root
CONDA_ENV, CONDA_ENV_VLLM = "envs/lossgeom.yaml", "envs/lossgeom-vllm.yaml"


def conda_env(config: Mapping, rule: str, method: str | None = None) -> str:
    """The conda environment file of a job (``--sdm conda``): the vLLM one where the job runs vLLM."""
    return CONDA_ENV_VLLM if uses_vllm(config, rule, method) else CONDA_ENV


def rule_threads(config: Mapping, rule: str, method: str | None = None) -> int:
    """CPUs of a job (Snakemake ``threads``; the SLURM plugin's ``--cpus-per-task``)."""
    res = config["resources"]
    own = config["training"]["threads"] if rule == "train" else 1
    return max(own, res["vllm_threads"]) if uses_vllm(config, rule, method) else own


def rule_resources(config: Mapping, rule: str, method: str | None = None) -> dict[str, int]:
    """``mem_mb`` (first attempt), ``runtime`` and ``gpu`` of a job of ``rule`` (``method``: a training job's).

    ``config`` is the filled config (:func:`lossgeom.config.with_defaults`)."""
    res = config["resources"]
    if rule == "rollouts" and api_rollouts(config):
        # an API teacher: requests over the network for hours or days, no model; a local rule (see rollouts.smk)
        return {"mem_mb": res["cpu_job_mem_mb"], "runtime": res["max_runtime"], "gpu": 0}
    if rule in GPU_RULES:
        mem = res["train_mem_mb"] if rule == "train" else res["gpu_job_mem_mb"]
        return {"mem_mb": mem, "runtime": rule_minutes(config, rule, method) or res["gpu_job_runtime"], "gpu": 1}
    if rule in MODEL_CPU_RULES or (rule == "geometry" and config["geometry"]["base_alignment"]):
        return {"mem_mb": res["gpu_job_mem_mb"], "runtime": res["gpu_job_runtime"], "gpu": 0}
    return {"mem_mb": res["cpu_job_mem_mb"], "runtime": res["cpu_job_runtime"], "gpu": 0}


def attempt_memory(
    mem_mb: int, attempt: int, growth: float, memory_kills: int | None = None, cap: int | None = None
) -> int:
    """Host memory of the ``attempt``-th try (1 = first): ``mem_mb x growth^k``, at most ``cap`` MB (never below
    ``mem_mb``), where ``k`` is ``memory_kills``, the earlier tries that were killed for memory
    (:func:`memory_kills`), so a job stopped at its time limit or by a bug is retried with what it had; with
    ``memory_kills`` None (unknown), every earlier try counts."""
    k = max(1, attempt) - 1 if memory_kills is None else min(memory_kills, max(1, attempt) - 1)
    mem = math.ceil(mem_mb * growth**k)
    return max(mem_mb, min(mem, cap)) if cap else mem


# What SLURM writes into a job's log when the job's cgroup ran out of memory (slurmstepd: "Detected 1 oom_kill
# event in StepId=..." since SLURM 19; older: "Exceeded job memory limit"; the job state OUT_OF_MEMORY).
MEMORY_KILL_MARKERS = ("oom_kill event", "oom-kill", "OUT_OF_MEMORY", "Exceeded job memory limit")


def slurm_job_logs(logdir: Path, rule: str, wildcards: Mapping[str, str]) -> list[Path]:
    """The SLURM plugin's log files of one job's tries: ``<logdir>/rule_<rule>/<wildcards>/<slurm id>.log``,
    the wildcards' values joined by ``_`` with ``/`` as ``_`` (the plugin's ``get_job_wildcards``)."""
    key = "_".join(str(v) for v in wildcards.values()).replace("/", "_")
    folder = Path(logdir) / f"rule_{rule}" / key
    return sorted(folder.glob("*.log")) if folder.is_dir() else []


def memory_kills(logs: list[Path]) -> int:
    """How many of ``logs`` (one per try) say the try was killed for memory (:data:`MEMORY_KILL_MARKERS`)."""
    n = 0
    for log in logs:
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        n += any(m in text for m in MEMORY_KILL_MARKERS)
    return n
