"""The tests' own process helpers (tests/subprocesses.py): a Snakemake run out of time names its running
jobs, their logs and the finished jobs' seconds; a server outlives no test process, however it ends."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from subprocesses import run_snakemake

pytestmark = pytest.mark.heavy  # every test here starts processes

SNAKEFILE = """
rule all:
    input: "fast.txt", "slow.txt"
rule fast:
    output: "fast.txt"
    log: "logs/fast.log"
    shell: "sleep 1; touch {output}; echo fast-done > {log}"
rule slow:
    output: "slow.txt"
    log: "logs/slow.log"
    shell: "echo slow-started-step-1 > {log}; sleep 120; touch {output}"
"""


def test_a_run_out_of_time_names_its_running_jobs_and_the_finished_jobs_seconds(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "Snakefile").write_text(SNAKEFILE)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(work / "Snakefile"), "--directory", str(work), "--cores", "2"]
    t0 = time.time()
    with pytest.raises(pytest.fail.Exception) as failed:
        run_snakemake(cmd, workdir=work, timeout=8)
    msg = str(failed.value)
    assert "ran out of its 8 s" in msg
    assert "1 of 2 started jobs finished, 0 failed, 1 running" in msg
    assert "running: slow, jobid" in msg and "logs/slow.log, last lines:" in msg and "slow-started-step-1" in msg
    assert "s  fast" in msg  # the finished job with its seconds
    assert time.time() - t0 < 60  # the sleeping job was stopped with its Snakemake
    (work / "fast.txt").unlink()
    ok = run_snakemake([*cmd, "fast.txt"], workdir=work, timeout=120)
    assert ok.returncode == 0 and "Finished jobid" in ok.stderr


def test_a_server_ends_when_the_test_process_is_killed(tmp_path):
    pid_file = tmp_path / "server.pid"
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {tests_dir!r})
        from subprocesses import start_server
        p = start_server(["sleep", "300"])
        open({str(pid_file)!r}, "w").write(str(p.pid))
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: as a CI time-out ends a test run
        """
    )
    subprocess.run([sys.executable, "-c", script], timeout=60)
    pid = int(pid_file.read_text())
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    pytest.fail(f"the server {pid} outlived the killed test process")
