"""Crash points: a job killed with SIGKILL mid-way, then rerun, ends as if it had never been killed.

Each job runs the real CLI in a subprocess with one function wrapped so that at a chosen call it
touches a marker file and waits; the test then sends SIGKILL (no handler, no cleanup runs), checks
that nothing was left at the output path, reruns the plain command and compares with an uninterrupted
run:

- training (killed after the step-4 checkpoint): resumes from it; the adapters are byte-identical;
- evaluation (killed between generation and the cross-entropies) and an LMC sweep (killed after the
  second point): not resumable, rerun from the start; the tables are byte-identical;
- API-teacher rollouts (killed with 3 of 6 requests answered): the rerun asks the endpoint only for the
  3 requests not in the journal, and the table is byte-identical.

A SIGKILL of Snakemake itself leaves its lock behind; docs/CLUSTER.md ("Reruns: what is stale") says what to do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, method_spec, random_adapter

pytestmark = pytest.mark.slow  # about 1.5 min on 2 cores: 12 subprocesses that each import torch

# Runs `lossgeom <argv>` with target (module:Attr.path) wrapped: its n-th call returns, touches the marker
# and then blocks until the process is killed.
HOOK = r"""
import importlib, sys, time
target, nth, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
module, _, attr = target.partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for p in path:
    owner = getattr(owner, p)
original, calls = getattr(owner, name), [0]

def hooked(*a, **k):
    result = original(*a, **k)
    calls[0] += 1
    if calls[0] == nth:
        open(marker, "w").close()
        time.sleep(3600)
    return result

setattr(owner, name, hooked)
from lossgeom.cli import main
sys.exit(main(sys.argv[4:]))
"""

TIMEOUT = 300


def run(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "lossgeom.cli", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_at(argv: list[str], target: str, nth: int, tmp: Path, env: dict | None = None, ready=None) -> str:
    """Start the hooked command; SIGKILL it once ``ready()`` holds (default: the marker exists)."""
    marker = tmp / f"marker-{time.monotonic_ns()}"
    log = tmp / f"killed-{time.monotonic_ns()}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOOK, target, str(nth), str(marker), *argv],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + TIMEOUT
        try:
            while not (ready() if ready else marker.exists()):
                assert proc.poll() is None, (
                    f"exited ({proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}"
                )
                assert time.monotonic() < deadline, "kill point not reached in time"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return log.read_text()


def leftovers(out: Path) -> list[Path]:
    """The output itself or a temporary sibling of it (``.name.pid.uuid.tmp``)."""
    parent = out.parent
    return (
        [p for p in parent.iterdir() if p.name == out.name or p.name.startswith(f".{out.name}.")]
        if parent.exists()
        else []
    )


@pytest.fixture(scope="module")
def adapters(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("crash-adapters")
    return random_adapter(tiny_base, root / "a", seed=1), random_adapter(tiny_base, root / "b", seed=2)


def test_training_killed_after_a_checkpoint_resumes_to_the_same_bytes(tiny_base, tiny_rollouts, tmp_path):
    spec = method_spec("rift").to_json()  # 6 steps, adapters saved at 3 and 6, checkpoints every 2 steps

    def argv(name):
        return [
            "train",
            "--spec",
            spec,
            "--seed",
            "1",
            "--rollouts",
            str(tiny_rollouts),
            "--base",
            str(tiny_base),
            "--out",
            str(tmp_path / name / "adapter"),
            "--checkpoints",
            str(tmp_path / name / "ckpt"),
        ]

    run(argv("full"))
    kill_at(argv("killed"), "lossgeom.training.trainers:SaveAdapterCallback.on_step_end", 5, tmp_path)
    out, ckpt = tmp_path / "killed" / "adapter", tmp_path / "killed" / "ckpt"
    assert not leftovers(out)
    assert (ckpt / "checkpoint-4").is_dir()
    rerun = run(argv("killed"))
    assert "resuming from" in rerun.stderr and "checkpoint-4" in rerun.stderr
    for sub in ("", "step6"):
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            assert (out / sub / name).read_bytes() == (tmp_path / "full" / "adapter" / sub / name).read_bytes(), (
                f"{sub}/{name}"
            )
    assert json.loads((out / "train_info.json").read_text())["resumed_from"].endswith("checkpoint-4")
    assert not ckpt.exists()


def test_evaluation_killed_mid_way_reruns_to_the_same_bytes(toy_world, tiny_base, adapters, tmp_path):
    def argv(out):
        spec = {
            "model": {"prompt_template": "{question}", "answer_template": "#### {answer}", "dtype": "float32",
                      "trust_remote_code": False},
            "test_sets": {"toy": {"source": "toy", "split": "test"}},
            "measures": {"accuracy": {"max_new_tokens": 8, "batch_size": 8}},
        }  # fmt: skip
        argv = ["evaluate", "--spec", json.dumps(spec), "--base", str(tiny_base), "--adapter", str(adapters[0])]
        return argv + ["--toy-dir", str(toy_world), "--outputs", f"accuracy={out}"]

    full, killed = tmp_path / "full" / "eval.parquet", tmp_path / "killed" / "eval.parquet"
    run(argv(full))
    kill_at(argv(killed), "lossgeom.behaviour.evaluation:cross_entropies", 1, tmp_path)
    assert not leftovers(killed)
    run(argv(killed))
    assert killed.read_bytes() == full.read_bytes()


def test_lmc_sweep_killed_mid_way_reruns_to_the_same_bytes(toy_world, tiny_base, adapters, tmp_path):
    def argv(out):
        spec = {
            "model": {"prompt_template": "{question}", "answer_template": "#### {answer}", "dtype": "float32",
                      "trust_remote_code": False},
            "test_set": {"source": "toy", "split": "test"},
            "lmc": {"alphas": 3, "limit": 6, "accuracy_subset": 4},
            "evaluation": {"max_new_tokens": 6},
        }  # fmt: skip
        argv = ["lmc", "--spec", json.dumps(spec), "--base", str(tiny_base), "--first", f"a={adapters[0]}"]
        return argv + ["--second", f"b={adapters[1]}", "--toy-dir", str(toy_world), "--out", str(out)]

    full, killed = tmp_path / "full" / "sweep.tsv", tmp_path / "killed" / "sweep.tsv"
    run(argv(full))
    kill_at(argv(killed), "lossgeom.behaviour.connectivity:greedy_pass_at_1", 2, tmp_path)  # after alpha 0.5
    assert not leftovers(killed)
    run(argv(killed))
    assert killed.read_bytes() == full.read_bytes()
    assert len(pd.read_csv(killed, sep="\t")) == 3 * 3


def test_api_teacher_rollouts_killed_mid_way_ask_only_for_the_rest(tmp_path):
    from test_openai_api import KEY, PROBLEMS, Script, make_handler

    script, gate = Script(), threading.Event()
    hold = {"after": None, "seen": 0}  # requests beyond hold["after"] wait at the gate
    handler = make_handler(script)

    class Gated(handler):
        def do_POST(self):
            with script.lock:
                n, hold["seen"] = hold["seen"], hold["seen"] + 1
            if hold["after"] is not None and n >= hold["after"]:
                gate.wait(timeout=TIMEOUT)
            super().do_POST()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Gated)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    problems = tmp_path / "problems.jsonl"
    problems.write_text(
        "".join(
            json.dumps({"id": i, "question": q, "answer": a}) + "\n" for i, q, a in PROBLEMS.itertuples(index=False)
        )
    )
    gen = {
        "backend": "openai",
        "openai": {
            "base_url": url,
            "model": "teacher",
            "api_key_env": "LOSSGEOM_TEST_KEY",
            "max_concurrency": 1,
            "max_retries": 0,
            "timeout_s": 60,
        },
    }
    env = {"LOSSGEOM_TEST_KEY": KEY}

    def argv(name):
        return [
            "rollouts",
            "--model",
            "unused",
            "--problems",
            json.dumps({"source": str(problems)}),
            "--spec",
            json.dumps({"k": 2, "temperature": 1.0, "max_new_tokens": 16, "seed": 5}),
            "--generation",
            json.dumps(gen),
            "--journal",
            str(tmp_path / name / "journal.jsonl"),
            "--out",
            str(tmp_path / name / "rollouts.parquet"),
        ]

    gate.set()
    try:
        run(argv("full"), env)
        assert len(script.requests) == 6
        journal = tmp_path / "killed" / "journal.jsonl"
        script.requests, hold["seen"], hold["after"] = [], 0, 3  # the fourth request of the next run is held
        gate.clear()

        def three_journalled():
            return journal.exists() and len(journal.read_text().splitlines()) >= 1 + 3

        kill_at(argv("killed"), "lossgeom.cli:main", 10**9, tmp_path, env, ready=three_journalled)
        assert len(journal.read_text().splitlines()) == 1 + 3
        assert not leftovers(tmp_path / "killed" / "rollouts.parquet")
        answered = {(r["body"]["messages"][0]["content"], r["body"]["seed"]) for r in script.requests}
        assert len(answered) == 3
        hold["after"] = None
        gate.set()  # the held request now reaches the script (its answer goes nowhere)
        deadline = time.monotonic() + 30
        while len(script.requests) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        script.requests = []
        run(argv("killed"), env)
        asked = {(r["body"]["messages"][0]["content"], r["body"]["seed"]) for r in script.requests}
        assert len(script.requests) == 3 and not asked & answered  # only what the journal lacked
        assert not journal.exists()
        killed, full = tmp_path / "killed" / "rollouts.parquet", tmp_path / "full" / "rollouts.parquet"
        pd.testing.assert_frame_equal(pd.read_parquet(killed), pd.read_parquet(full))
        assert killed.read_bytes() == full.read_bytes()
    finally:
        gate.set()
        httpd.shutdown()
        httpd.server_close()


def test_study_killed_mid_training_reruns_after_unlock_to_the_same_adapter(tmp_path):
    """kill -9 of the whole study (Snakemake and its job, one process group) mid-training: the rerun
    stops on Snakemake's stale lock; `snakemake --unlock`, then the same command resumes the job from
    its checkpoint (the profile's rerun-incomplete) to the adapter an uninterrupted study writes."""
    from test_workflow import snakemake, with_config, write_rollouts

    config = with_config(
        tmp_path, lambda c: c["training"].update(steps=40, save_steps=[20, 40], analysis_step=20, checkpoint_every=10)
    )
    target = "results/adapters/sft/seed1"
    full, killed = tmp_path / "full", tmp_path / "killed"
    for workdir in (full, killed):
        workdir.mkdir()
        write_rollouts(workdir)
    run = snakemake(full, "--cores", "1", target, configfile=config)
    assert run.returncode == 0, run.stderr[-3000:]

    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(killed),
        "--configfile",
        str(config),
        "--cores",
        "1",
        target,
    ]
    checkpoint = killed / "results" / "checkpoints" / "sft" / "seed1" / "checkpoint-10"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    try:
        while not checkpoint.is_dir():
            assert proc.poll() is None, "the study ended before the kill point"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole study: Snakemake and the training job
        proc.wait(timeout=60)
    assert not (killed / target).exists()

    locked = snakemake(killed, "--cores", "1", target, configfile=config)
    assert locked.returncode != 0 and "Directory cannot be locked" in locked.stderr
    unlock = snakemake(killed, "--unlock", configfile=config)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    rerun = snakemake(killed, "--cores", "1", target, configfile=config)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (killed / "results" / "logs" / "train" / "sft" / "seed1.log").read_text()
    # killed once checkpoint-10 appeared: complete, it is resumed; still being written, it is removed
    assert "resuming from" in log or "removing incomplete checkpoint" in log
    for sub in ("", "step40"):
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            assert (killed / target / sub / name).read_bytes() == (full / target / sub / name).read_bytes(), (
                f"{sub}/{name}"
            )
