"""End to end: the Snakemake DAG on a tiny config, through the same rules and CLI as the real study."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO

TINY = REPO / "tests" / "data" / "tiny_config.yaml"
LABELS = [f"{m}/seed{s}" for m in ("sft", "rft", "dft", "rift", "grpo", "dpo") for s in (1, 2)]


def snakemake(workdir: Path, *args: str, configfile: Path = TINY, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def write_rollouts(workdir: Path) -> None:
    """Correct (gold) and incorrect (perturbed answer) rollouts for the tiny toy world's first prompts."""
    from lossgeom.toy.problems import generate_splits

    cfg = yaml.safe_load(TINY.read_text())["toy"]
    train, _ = generate_splits(cfg["seed"], cfg["n_train"], cfg["n_test"])
    with open(workdir / "rollouts.jsonl", "w") as f:
        for p in train[:8]:
            for k in range(4):
                answer = p.answer if k in (0, 3) else p.answer + k
                completion = p.solution.rsplit("####", 1)[0] + f"#### {answer}"
                f.write(json.dumps({"prompt_id": p.id, "prompt": p.question, "completion": completion,
                                    "reward": int(answer == p.answer), "gold": str(p.answer)}) + "\n")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("study")
    write_rollouts(workdir)
    run = snakemake(workdir, "--cores", "2")
    assert run.returncode == 0, run.stderr[-4000:]
    return workdir


@pytest.mark.slow
def test_tiny_study_writes_the_results_contract(study):
    res = study / "results"
    for label in LABELS:
        method, seed = label.split("/")
        adapter = res / "adapters" / method / seed
        assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
        assert (adapter / "step4" / "adapter_model.safetensors").exists()
    cos = pd.read_csv(res / "geometry" / "cosine_global.tsv", sep="\t", index_col=0)
    assert list(cos.index) == LABELS and list(cos.columns) == LABELS
    assert (abs(cos.values.diagonal() - 1) < 1e-9).all()
    assert (abs(cos.values - cos.values.T) < 1e-12).all()
    assert (res / "figures" / "cosine_global.png").stat().st_size > 10_000
    # every rule wrote a log and a benchmark
    assert (res / "logs" / "train" / "dpo" / "seed2.log").exists()
    assert (res / "benchmarks" / "train" / "dpo" / "seed2.tsv").exists()


@pytest.mark.slow
def test_immediate_rerun_schedules_nothing(study):
    run = snakemake(study, "-n")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Nothing to be done" in run.stdout + run.stderr


def test_bad_config_stops_with_one_line_naming_the_key(tmp_path):
    bad = yaml.safe_load(TINY.read_text())
    bad["training"]["lr"] = 0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    run = snakemake(tmp_path, "-n", configfile=path, timeout=120)
    assert run.returncode != 0
    assert "config error: unknown key training.lr" in run.stderr
    assert not (tmp_path / "results").exists()


def test_unknown_method_loss_is_a_config_error(tmp_path):
    bad = yaml.safe_load(TINY.read_text())
    bad["methods"]["ppo"] = {"loss": "ppo"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    run = snakemake(tmp_path, "-n", configfile=path, timeout=120)
    assert run.returncode != 0
    assert "methods.ppo.loss: 'ppo' is not one of" in run.stderr
