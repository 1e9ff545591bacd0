"""Each geometry command's outputs appear whole or not at all: ``lossgeom geometry``, ``trajectory`` and
``base-spectrum`` write into a temporary directory beside ``--out`` and swap it in at the end
(:func:`lossgeom.fsutil.atomic_swap_dir`). A failure part-way (an exception, a base model of another
width, a file-size limit) leaves an earlier run's directory byte for byte as it was and no temporary
directory beside it; a first run that fails leaves no ``--out``; a run that succeeds leaves exactly its
own files (none of an earlier run's), the ones the workflow's rules declare.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REPO, random_adapter, tiny_qwen3
from test_geometry_trajectory import _study

from lossgeom.cli import main
from lossgeom.fsutil import replace_dir
from lossgeom.geometry import compare, spectrum, trajectory
from lossgeom.geometry.tables import SQUARE_METRICS

COMMANDS = ("geometry", "trajectory", "base-spectrum")
# the module whose write_table writes each command's tables, and the table it writes first
WRITER = {"geometry": compare, "trajectory": trajectory, "base-spectrum": spectrum}
FIRST_TABLE = {"geometry": "cosine_global.tsv", "trajectory": "paths.tsv", "base-spectrum": "modules.tsv"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A one-layer tiny Qwen3 base (and one of another width), three random LoRAs on its q_proj (one module
    each, so base-spectrum's summary outgrows its modules table), and a study of saved training steps."""
    root = tmp_path_factory.mktemp("inputs")
    tiny_qwen3(num_hidden_layers=1).save_pretrained(root / "base")
    tiny_qwen3(num_hidden_layers=1, hidden_size=48, head_dim=16).save_pretrained(root / "wide")
    labels = ("m/seed1", "m/seed2", "n/seed1")
    adapters = {
        label: random_adapter(root / "base", root / "adapters" / label, targets=("q_proj",), seed=i)
        for i, label in enumerate(labels)
    }
    study = _study(root / "study", np.random.default_rng(0), ["a/seed1", "a/seed2", "b/seed1"])
    return SimpleNamespace(root=root, adapters=adapters, study=study)


def argv(inputs, command: str, run: int, out: Path, *extra: str) -> list[str]:
    """The command line of ``command``'s first run (``run=1``: every adapter, top-k 2) or second (``run=2``:
    two adapters, top-k 3: every table differs from the first run's, so a table it overwrote shows)."""
    src = inputs.study if command == "trajectory" else inputs.adapters
    pairs = list(src.items())[: 3 if run == 1 else 2]
    args = [command, *(f"{label}={d}" for label, d in pairs), "--top-k", str(1 + run), "--out", str(out)]
    if command == "base-spectrum":
        args += ["--base-model", str(inputs.root / "base")]
    return args + list(extra)


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file below ``d`` (relative name -> bytes)."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def fail_at_second_write(monkeypatch, module) -> list[str]:
    """Make ``module.write_table`` fail as a full disk does at its second table; returns the tables tried."""
    tried, real = [], module.write_table

    def write_table(df, path, *args, **kw):
        tried.append(Path(path).name)
        if len(tried) == 2:
            raise OSError(errno.ENOSPC, "No space left on device (injected)", str(path))
        return real(df, path, *args, **kw)

    monkeypatch.setattr(module, "write_table", write_table)
    return tried


def run_with_file_size_limit(args: list[str], limit: int) -> subprocess.CompletedProcess:
    """``lossgeom <args>`` in a process that may write no file past ``limit`` bytes (``RLIMIT_FSIZE``):
    the write that would cross it fails with EFBIG ("File too large")."""

    def limit_writes():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so the write fails instead of the signal killing it
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}  # its only writes: the tables
    cmd = [sys.executable, "-m", "lossgeom.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=limit_writes, timeout=300)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_failure_part_way_leaves_the_previous_outputs_byte_for_byte(inputs, tmp_path, monkeypatch, command):
    out = tmp_path / "out"
    assert main(argv(inputs, command, 1, out)) == 0
    before = snapshot(out)
    tried = fail_at_second_write(monkeypatch, WRITER[command])
    assert main(argv(inputs, command, 2, out)) == 2  # a full disk: one line naming the file (lossgeom.cli_oom)
    assert tried[0] == FIRST_TABLE[command] and len(tried) == 2  # one table was written before the failure
    assert snapshot(out) == before
    assert os.listdir(tmp_path) == ["out"]  # no temporary directory beside it


@pytest.mark.heavy
@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_size_limit_leaves_the_previous_outputs_byte_for_byte(inputs, tmp_path, command):
    # the second run's file sizes, from a run of its own: the limit stops its largest file, not its first
    probe = tmp_path / "probe"
    assert main(argv(inputs, command, 2, probe)) == 0
    sizes = {p.name: p.stat().st_size for p in probe.iterdir()}
    largest = max(sizes, key=sizes.get)
    assert sizes[FIRST_TABLE[command]] < sizes[largest], sizes
    out = tmp_path / "results" / "out"
    assert main(argv(inputs, command, 1, out)) == 0
    before = snapshot(out)
    proc = run_with_file_size_limit(argv(inputs, command, 2, out), sizes[largest] - 1)
    assert proc.returncode == 2 and "File too large" in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("lossgeom: error:") and "Traceback" not in proc.stderr
    assert snapshot(out) == before
    assert os.listdir(out.parent) == ["out"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_first_run_that_fails_leaves_no_out(inputs, tmp_path, monkeypatch, command):
    fail_at_second_write(monkeypatch, WRITER[command])
    assert main(argv(inputs, command, 1, tmp_path / "out")) == 2
    assert os.listdir(tmp_path) == []


def test_geometry_with_a_base_model_of_another_width_keeps_the_old_tables(inputs, tmp_path, capsys):
    """The base's shapes are checked after every other table is written: the old ones stay, all of them."""
    out = tmp_path / "out"
    assert main(argv(inputs, "geometry", 1, out)) == 0
    before = snapshot(out)
    assert main(argv(inputs, "geometry", 2, out, "--base-model", str(inputs.root / "wide"))) == 2
    assert "expected shape" in capsys.readouterr().err
    assert snapshot(out) == before and os.listdir(tmp_path) == ["out"]


def test_a_rerun_replaces_the_directory_as_a_unit(inputs, tmp_path):
    """A run with a base model writes base_alignment.tsv; a rerun without one leaves none behind."""
    out = tmp_path / "out"
    assert main(argv(inputs, "geometry", 1, out, "--base-model", str(inputs.root / "base"))) == 0
    assert (out / "base_alignment.tsv").is_file()
    assert main(argv(inputs, "geometry", 2, out)) == 0
    assert not (out / "base_alignment.tsv").exists()
    assert b"n/seed1" not in (out / "cosine_global.tsv").read_bytes()  # the second run's two adapters only


@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_holding_other_files_is_refused_before_any_work(inputs, tmp_path, capsys, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    (out / "old.tsv").write_text("a\tb\n")
    assert main(argv(inputs, command, 1, out)) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "old.tsv" not in err
    assert snapshot(out) == {"notes.txt": b"mine\n", "old.tsv": b"a\tb\n"}
    assert main(argv(inputs, command, 1, tmp_path / "new", "--cache-dir", str(tmp_path / "new" / "cache"))) == 2
    assert "lies inside" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_an_out_that_is_a_symlink_keeps_the_link(inputs, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    assert main(argv(inputs, "trajectory", 1, tmp_path / "link")) == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "paths.tsv").is_file()
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]


def test_the_outputs_are_the_files_the_rules_declare(inputs, tmp_path):
    """Into an empty directory (Snakemake makes each output's directory before a job), each command writes
    exactly what workflow/rules/geometry.smk declares: nothing missing, nothing undeclared."""
    rules = (REPO / "workflow" / "rules" / "geometry.smk").read_text()
    listed = re.search(r"GEOMETRY_TABLES = \[\*SQUARE_METRICS, ([^\]]*)\]", rules).group(1)
    declared = {
        "geometry": [*SQUARE_METRICS, *re.findall(r'"(\w+)"', listed)],
        "trajectory": list(trajectory.TRAJECTORY_TABLES),
        "base-spectrum": list(spectrum.SPECTRUM_TABLES),
    }
    for command, tables in declared.items():
        rule_dir = command.replace("-", "_")
        # each table declared by name, or by a comprehension over the list
        each = f'f"{{RESULTS}}/{rule_dir}/{{name}}.tsv" for name in '
        assert each in rules or all(f'f"{{RESULTS}}/{rule_dir}/{t}.tsv"' in rules for t in tables), command
        assert f'settings=f"{{RESULTS}}/{rule_dir}/settings.json"' in rules
        out = tmp_path / rule_dir
        out.mkdir()
        assert main(argv(inputs, command, 1, out)) == 0
        assert sorted(os.listdir(out)) == sorted([f"{t}.tsv" for t in tables] + ["settings.json"]), command


def test_replace_dir_puts_the_old_directory_back_when_the_new_one_cannot_move_in(tmp_path, monkeypatch):
    old, new = tmp_path / "out", tmp_path / "new"
    old.mkdir()
    (old / "a.tsv").write_text("old")
    new.mkdir()
    (new / "a.tsv").write_text("new")
    real = os.rename

    def rename(src, dst):
        if Path(src) == new:
            raise OSError(errno.EXDEV, "Invalid cross-device link (injected)")
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="injected"):
        replace_dir(new, old)
    assert (old / "a.tsv").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["new", "out"]
    monkeypatch.setattr(os, "rename", real)
    replace_dir(new, old)
    assert (old / "a.tsv").read_text() == "new" and os.listdir(tmp_path) == ["out"]
