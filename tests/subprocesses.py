"""Processes the tests start: Snakemake runs that report what was running when they run out of time, and
servers that end with the test run however it ends.

- :func:`run_snakemake` runs a Snakemake command line with its output in files (so that nothing is lost
  when it is killed) and, past its time limit, ends its process group and fails the test with what a
  reader needs: the jobs still running (rule, wildcards, for how long, the tail of each job's own log),
  the seconds each finished job took (from Snakemake's own ``[timestamp]`` lines, 1 s resolution), and
  the tail of Snakemake's output.
- :func:`start_server` starts a process that gets SIGTERM when the test process dies (Linux
  ``PR_SET_PDEATHSIG``), so a test run killed from outside (a CI time-out, SIGKILL) leaves no server on
  its port; a normal end still stops it in the test's ``finally``.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

# Snakemake 9's job lines on stderr: "[Mon Dec  7 13:17:32 2026]\nlocalrule b:\n    output: ...\n    jobid: 1"
_STARTED = re.compile(
    r"^\[(?P<ts>[^\]\n]+)\]\n(?:local)?(?:rule|checkpoint) (?P<rule>\w+):\n(?P<body>(?:    .*\n?)*)", re.M
)
_FINISHED = re.compile(r"^\[(?P<ts>[^\]\n]+)\]\nFinished jobid: (?P<id>\d+)", re.M)
_ERROR = re.compile(r"^Error in rule \w+:\n(?:    .*\n)*?    jobid: (?P<id>\d+)", re.M)
_TS = "%a %b %d %H:%M:%S %Y"


def _field(body: str, name: str) -> str | None:
    m = re.search(rf"^    {name}: (.*)$", body, re.M)
    return m.group(1).strip() if m else None


def _when(ts: str) -> datetime | None:
    try:
        return datetime.strptime(" ".join(ts.split()), _TS)
    except ValueError:
        return None


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as e:
        return [f"({path}: {e.strerror})"]


def jobs_report(log_text: str, workdir: Path, now: datetime, log_lines: int = 15) -> str:
    """What Snakemake's job lines in ``log_text`` say: the jobs still running (with their own logs' tails,
    paths relative to ``workdir``) and the finished ones, longest first."""
    jobs = {}
    for m in _STARTED.finditer(log_text):
        body = m.group("body")
        jid = _field(body, "jobid")
        if jid is not None:
            jobs[jid] = dict(rule=m.group("rule"), start=_when(m.group("ts")), body=body)
    finished = {m.group("id"): _when(m.group("ts")) for m in _FINISHED.finditer(log_text)}
    failed = {m.group("id") for m in _ERROR.finditer(log_text)}
    out = []

    def name(j):
        wc = _field(j["body"], "wildcards")
        return f"{j['rule']}" + (f" ({wc})" if wc else "")

    running = [(jid, j) for jid, j in jobs.items() if jid not in finished and jid not in failed]
    out.append(f"{len(finished)} of {len(jobs)} started jobs finished, {len(failed)} failed, {len(running)} running")
    for jid, j in running:
        since = f"for {(now - j['start']).total_seconds():.0f} s" if j["start"] else "since ?"
        out.append(f"  running: {name(j)}, jobid {jid}, {since}")
        for log in (_field(j["body"], "log") or "").split(","):
            log = log.replace("(check log file(s) for error details)", "").strip()
            if log:
                out.append(f"    {log}, last lines:")
                out += [f"      {line}" for line in _tail(workdir / log, log_lines)]
    took = sorted(
        ((finished[jid] - j["start"]).total_seconds(), name(j))
        for jid, j in jobs.items()
        if jid in finished and j["start"] and finished[jid]
    )[::-1]
    if took:
        out.append(f"  finished jobs, seconds each (total {sum(t for t, _ in took):.0f} job-s):")
        out += [f"    {t:6.0f} s  {n}" for t, n in took]
    return "\n".join(out)


def run_snakemake(
    cmd: list[str], *, workdir: Path, timeout: float, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)`` for a Snakemake command line
    whose ``--directory`` is ``workdir``; past ``timeout`` the test fails with :func:`jobs_report`."""
    out_dir = Path(workdir).parent
    out_path = out_dir / f".{Path(workdir).name}.snakemake.stdout"
    err_path = out_dir / f".{Path(workdir).name}.snakemake.stderr"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, cwd=cwd, start_new_session=True)
        t0 = time.time()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # the report first: stopping the run turns its running jobs into errors
            text = err_path.read_text(errors="replace") + out_path.read_text(errors="replace")
            report = jobs_report(text, Path(workdir), datetime.now())
            _end_group(proc)
            tail = "\n".join(f"  {line}" for line in text.splitlines()[-40:])
            pytest.fail(
                f"snakemake ran out of its {timeout:.0f} s ({time.time() - t0:.0f} s) and was stopped:\n{report}\n"
                f"Snakemake's output, last lines:\n{tail}",
                pytrace=False,
            )
        except BaseException:  # an interrupted test run: no Snakemake left behind
            _end_group(proc)
            raise
    return subprocess.CompletedProcess(
        cmd, rc, out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    )


def _end_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the process group (Snakemake passes it to its jobs), SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# resolved here, in the parent: between fork and exec the child only calls it (no dlopen in a forked child
# of a process with threads)
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_server(cmd: list[str], **popen) -> subprocess.Popen:
    """``subprocess.Popen(cmd, start_new_session=True, **popen)`` whose process gets SIGTERM when this
    process dies, however it dies. Stop it with ``os.killpg(p.pid, SIGTERM)`` in the test's ``finally``."""
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, **popen)
