"""lossgeom.devices.claim_gpu: one GPU per process on a workstation, via flock."""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import subprocess
import sys
import time

import pytest

from lossgeom.devices import claim_gpu, count_gpus

CTX = mp.get_context("spawn")  # separate interpreters, like separate jobs
TIMEOUT = 30


def _holder(lock_dir, report, release):
    """Claim a GPU, report (pid, device, CUDA_VISIBLE_DEVICES), hold until told."""
    with claim_gpu(lock_dir=lock_dir, poll_interval=0.05) as dev:
        report.put((os.getpid(), dev, os.environ.get("CUDA_VISIBLE_DEVICES")))
        release.wait(TIMEOUT)


def _get(q, timeout=TIMEOUT):
    return q.get(timeout=timeout)


@pytest.fixture
def two_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv("LOSSGEOM_NUM_GPUS", "2")
    monkeypatch.setenv("LOSSGEOM_GPU_LOCK_DIR", str(tmp_path / "locks"))
    for var in ("SLURM_JOB_ID", "SLURM_JOBID", "CUDA_VISIBLE_DEVICES", "LOSSGEOM_GPU_CLAIMED"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "locks"


@pytest.mark.heavy
def test_two_processes_get_different_gpus_and_a_third_waits(two_gpus):
    lock_dir = str(two_gpus)
    report = CTX.Queue()
    releases = [CTX.Event() for _ in range(3)]
    procs = [CTX.Process(target=_holder, args=(lock_dir, report, releases[i])) for i in range(3)]
    try:
        procs[0].start()
        procs[1].start()
        first = dict((pid, (dev, cvd)) for pid, dev, cvd in (_get(report), _get(report)))
        devs = sorted(dev for dev, _ in first.values())
        assert devs == ["0", "1"]
        # the environment variable is what torch will see
        assert all(dev == cvd for dev, cvd in first.values())

        procs[2].start()
        time.sleep(1.5)  # plenty for the third to start and find both GPUs taken
        assert report.empty(), "third process got a GPU while both were held"

        # release the holder of GPU 1: the waiting process must get exactly that one
        holder_of_1 = next(i for i in (0, 1) if first[procs[i].pid][0] == "1")
        releases[holder_of_1].set()
        procs[holder_of_1].join(TIMEOUT)
        pid, dev, cvd = _get(report)
        assert pid == procs[2].pid
        assert (dev, cvd) == ("1", "1")
    finally:
        for ev in releases:
            ev.set()
        for p in procs:
            p.join(TIMEOUT)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)


@pytest.mark.heavy
def test_lock_is_released_when_the_holder_is_killed(two_gpus):
    lock_dir = str(two_gpus)
    report = CTX.Queue()
    # one Event per process: an Event a SIGKILLed process was waiting on must
    # never be set again (multiprocessing's Condition would wait for it forever)
    releases = [CTX.Event() for _ in range(3)]
    procs = [CTX.Process(target=_holder, args=(lock_dir, report, releases[i])) for i in range(3)]
    holders, waiter = procs[:2], procs[2]
    try:
        for p in holders:
            p.start()
        got = {_get(report)[0] for _ in holders}
        assert got == {p.pid for p in holders}
        waiter.start()
        time.sleep(1.5)
        assert report.empty()
        holders[0].kill()  # SIGKILL: no cleanup code runs, the kernel drops the flock
        holders[0].join(TIMEOUT)
        pid, dev, _ = _get(report)
        assert pid == waiter.pid and dev in {"0", "1"}
    finally:
        for p, ev in zip(procs, releases):
            if p.exitcode is None and p.pid is not None and p is not holders[0]:
                ev.set()
        for p in procs:
            if p.pid is not None:
                p.join(TIMEOUT)
                if p.is_alive():
                    p.kill()


def _hold(path):
    """Take a GPU lock by hand, as another job would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


@pytest.mark.heavy
def test_sets_and_restores_env_and_is_reentrant(two_gpus):
    with claim_gpu(lock_dir=two_gpus) as a:
        assert a == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        # a nested claim (or one in a child process) reuses the held device
        with claim_gpu(lock_dir=two_gpus) as b:
            assert b == "0"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        child = subprocess.run(
            [sys.executable, "-c", "from lossgeom.devices import claim_gpu\nwith claim_gpu(timeout=1) as d: print(d)"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert child.stdout.strip() == "0", child.stderr
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert "LOSSGEOM_GPU_CLAIMED" not in os.environ


def test_skips_busy_gpus_and_times_out_when_all_busy(two_gpus):
    with _hold(two_gpus / "gpu0.lock"):
        with claim_gpu(lock_dir=two_gpus) as dev:
            assert dev == "1"
        with _hold(two_gpus / "gpu1.lock"):
            with pytest.raises(TimeoutError):
                with claim_gpu(lock_dir=two_gpus, poll_interval=0.05, timeout=0.3):
                    pass


def test_no_gpu_is_a_no_op(monkeypatch, tmp_path):
    monkeypatch.setenv("LOSSGEOM_NUM_GPUS", "0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOBID", raising=False)
    monkeypatch.delenv("LOSSGEOM_GPU_CLAIMED", raising=False)
    assert count_gpus() == 0
    with claim_gpu(lock_dir=tmp_path / "locks") as dev:
        assert dev is None
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not (tmp_path / "locks").exists()


def test_inside_slurm_keeps_slurms_device(two_gpus, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with claim_gpu(lock_dir=two_gpus) as dev:
        assert dev is None
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert not two_gpus.exists()


def test_preset_visible_devices_restrict_the_choice(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    with claim_gpu(lock_dir=two_gpus) as a:
        assert a == "5"
    with _hold(two_gpus / "gpu5.lock"), claim_gpu(lock_dir=two_gpus) as b:
        assert b == "7"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,7"


@pytest.mark.heavy
def test_command_wrapper_holds_the_gpu_while_the_command_runs(two_gpus):
    cmd = [sys.executable, "-m", "lossgeom.devices", "--"]
    show = "echo $CUDA_VISIBLE_DEVICES"
    # a command that holds GPU 0 for a while, then one started meanwhile
    slow = subprocess.Popen([*cmd, "sh", "-c", f"{show}; sleep 3"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        fast = subprocess.run([*cmd, "sh", "-c", show], capture_output=True, text=True, timeout=TIMEOUT)
        assert fast.returncode == 0, fast.stderr
        out, _ = slow.communicate(timeout=TIMEOUT)
    finally:
        if slow.poll() is None:
            slow.kill()
    assert out.strip() == "0"
    assert fast.stdout.strip() == "1"


# -- a job given a GPU that sees no CUDA device stops at once (issue 30) -------------------------------------
@pytest.mark.parametrize(
    "env, granted",
    [
        ({}, None),
        ({"CUDA_VISIBLE_DEVICES": ""}, None),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, None),
        ({"SLURM_GPUS_ON_NODE": "0"}, None),
        ({"CUDA_VISIBLE_DEVICES": "0"}, "CUDA_VISIBLE_DEVICES=0"),
        ({"SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}, "SLURM_JOB_GPUS=2,3"),
        ({"SLURM_GPUS_ON_NODE": "1"}, "SLURM_GPUS_ON_NODE=1"),
    ],
)
def test_what_says_a_gpu_was_granted(env, granted):
    from lossgeom.devices import granted_gpus

    assert granted_gpus(env) == granted


@pytest.mark.heavy
def test_a_gpu_job_on_a_cpu_build_stops_in_one_line_before_any_work(tmp_path):
    """`lossgeom train` given a GPU (SLURM's CUDA_VISIBLE_DEVICES) with this CPU-only torch: one line naming
    the grant, the build and the fix, exit 2, before it reads its (missing) inputs; LOSSGEOM_DEVICE=cpu runs on."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cmd = [sys.executable, "-m", "lossgeom.cli", "train", "--spec", "{}", "--seed", "1"]
    cmd += ["--rollouts", str(tmp_path / "missing.parquet"), "--base", str(tmp_path / "base")]
    cmd += ["--out", str(tmp_path / "out"), "--checkpoints", str(tmp_path / "ckpt")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOSSGEOM_"))}
    env.update(SLURM_JOB_ID="7", CUDA_VISIBLE_DEVICES="0")
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in run.stderr.splitlines() if " INFO " not in line]  # claim_gpu's log line aside
    assert run.returncode == 2, run.stderr
    assert len(lines) == 1 and "was given a GPU (CUDA_VISIBLE_DEVICES=0) but sees no CUDA device" in lines[0]
    assert "CPU build" in lines[0] and "CONDA_OVERRIDE_CUDA" in lines[0] and "LOSSGEOM_DEVICE=cpu" in lines[0]
    env["LOSSGEOM_DEVICE"] = "cpu"
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "given a GPU" not in run.stderr  # on to its own input errors
