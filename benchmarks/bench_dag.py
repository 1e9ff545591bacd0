"""Dry-run DAG of the paper's full grid: how long Snakemake takes to build it, and how many jobs.

    python benchmarks/bench_dag.py

The grid: config/paper.yaml's six losses x three learning rates (5e-7, 5e-6, 5e-5) x two seeds, plus
the LR-matched DPO, with every pair of adapters compared (geometry, and an LMC sweep per pair).
Target: the dry run builds in at most 10 s. Prints the wall time of `snakemake -n` (process start
included) and the job counts per rule.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LEARNING_RATES = {"5e-7": 5e-7, "5e-6": 5e-6, "5e-5": 5e-5}


def grid_config() -> dict:
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    methods = {}
    for name, entry in config["methods"].items():
        if name == "dpo_lrmatched":
            continue
        for tag, lr in LEARNING_RATES.items():
            methods[f"{name}_lr{tag.replace('-', 'm')}"] = {**entry, "learning_rate": lr}
    methods["dpo_lrmatched"] = config["methods"]["dpo_lrmatched"]
    config["methods"] = methods
    config["lmc"]["pairs"] = "all"
    return config


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.yaml"
        path.write_text(yaml.safe_dump(grid_config(), sort_keys=False))
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            tmp,
            "--configfile",
            str(path),
            "--quiet",
            "rules",
            "--workflow-profile",
            "none",
            "--cores",
            "1",
        ]
        start = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
    if run.returncode != 0:
        print(run.stdout[-3000:], run.stderr[-3000:])
        return 1
    text = run.stdout + run.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", text, flags=re.M))
    total = counts.pop("total", "?")
    print(f"paper grid: {len(grid_config()['methods'])} methods x 2 seeds")
    for rule, n in counts.items():
        print(f"  {rule:<20}{n:>6}")
    print(f"jobs: {total}; dry-run DAG build: {elapsed:.2f} s (target <= 10 s): {'OK' if elapsed <= 10 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
