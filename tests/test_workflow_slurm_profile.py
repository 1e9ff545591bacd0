"""profiles/slurm/config.yaml's site switches, rendered as Snakemake renders the profile (yte), and the GPU
flags the SLURM plugin's own code makes of them: one GPU flag per job whichever way a cluster wants it,
no -A where a cluster forbids it, CPU jobs routed by a partition file."""

from __future__ import annotations

import types

import pytest
import yte
from conftest import REPO

from lossgeom.resources import GPU_RULES, MODEL_CPU_RULES

PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
SITE_VARS = (
    "LOSSGEOM_SLURM_PARTITION",
    "LOSSGEOM_SLURM_ACCOUNT",
    "LOSSGEOM_SLURM_NO_ACCOUNT",
    "LOSSGEOM_SLURM_GPU_FLAG",
    "LOSSGEOM_SLURM_PARTITIONS",
)


def render(monkeypatch, **env) -> dict:
    for k in SITE_VARS:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with open(PROFILE) as f:
        return yte.process_yaml(f, require_use_yte=True)


class _Resources(dict):
    __getattr__ = dict.get


def gpu_flags(profile: dict, rule: str) -> str:
    """The GPU part of the sbatch line the plugin builds for a job of ``rule`` (its resources: the rule's
    gpu=1 where it asks for a GPU, then the profile's set-resources over it, as Snakemake applies them)."""
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    res = _Resources(gpu=1 if rule in GPU_RULES else 0)
    res.update((profile.get("set-resources") or {}).get(rule, {}))
    return set_gres_string(types.SimpleNamespace(resources=res)).strip()


def test_by_default_a_gpu_job_asks_once_with_gpus_and_nothing_else_changes(monkeypatch):
    profile = render(monkeypatch)
    assert "set-resources" not in profile and "slurm-no-account" not in profile
    assert "slurm-partition-config" not in profile
    for rule in GPU_RULES:
        assert gpu_flags(profile, rule) == "--gpus=1"
    assert gpu_flags(profile, MODEL_CPU_RULES[0]) == ""


def test_a_gres_cluster_gets_one_gres_flag_per_gpu_job(monkeypatch):
    profile = render(monkeypatch, LOSSGEOM_SLURM_GPU_FLAG="gres")
    for rule in GPU_RULES:
        assert gpu_flags(profile, rule) == "--gres=gpu:1", rule
    assert gpu_flags(profile, MODEL_CPU_RULES[0]) == ""


@pytest.mark.parametrize("value, on", [("1", True), ("0", False), ("", False)])
def test_no_account_switch(monkeypatch, value, on):
    profile = render(monkeypatch, LOSSGEOM_SLURM_NO_ACCOUNT=value, LOSSGEOM_SLURM_ACCOUNT="proj")
    assert profile.get("slurm-no-account", False) is on


def test_a_partition_file_routes_the_jobs_in_place_of_one_partition(monkeypatch, tmp_path):
    one = render(monkeypatch, LOSSGEOM_SLURM_PARTITION="gpu")
    assert one["default-resources"]["slurm_partition"] == "'gpu'"  # quoted: Snakemake reads resource strings so
    routed = render(monkeypatch, LOSSGEOM_SLURM_PARTITION="gpu", LOSSGEOM_SLURM_PARTITIONS=str(tmp_path / "p.yaml"))
    assert routed["slurm-partition-config"] == str(tmp_path / "p.yaml")
    assert "slurm_partition" not in routed["default-resources"]


def test_the_profile_switches_are_plugin_settings():
    """The keys the profile may emit are settings of the installed plugin (--slurm-no-account, ...)."""
    from snakemake_executor_plugin_slurm import ExecutorSettings

    fields = set(ExecutorSettings.__dataclass_fields__)
    assert {"no_account", "partition_config", "jobname_prefix", "requeue"} <= fields
