"""Atomic writes: results appear whole or not at all, with the usual (umask) permissions."""

from __future__ import annotations

import os
import stat

import pytest

from lossgeom.fsutil import atomic_dir, atomic_path, file_sha256


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_results_get_umask_permissions_not_private_temp_ones(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "a").write_text("y")
    finally:
        os.umask(umask)
    assert _mode(tmp_path / "f.txt") == 0o644
    assert _mode(tmp_path / "d") == 0o755


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "a").write_text("half")
            raise RuntimeError
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "f") as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_file_sha256_streams_and_names_matter(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    assert file_sha256(a) == file_sha256(b)
    assert file_sha256(a, names=True) != file_sha256(b, names=True)


def test_atomic_files_renames_every_staged_file_or_none(tmp_path):
    import pandas as pd

    from lossgeom.fsutil import atomic_files, write_table

    df = pd.DataFrame({"a": [1, 2]})
    old = tmp_path / "old.tsv"
    old.write_text("old\n")
    with atomic_files() as stage:
        write_table(df, stage(tmp_path / "t.parquet"))  # the format follows the target's suffix
        write_table(df, stage(old))
    assert pd.read_parquet(tmp_path / "t.parquet").equals(df) and old.read_text().startswith("a\n")
    old.write_text("old\n")
    try:
        with atomic_files() as stage:
            write_table(df, stage(old))
            write_table(df, stage(tmp_path / "second.tsv"))
            raise OSError(28, "No space left on device (injected)")
    except OSError:
        pass
    assert old.read_text() == "old\n" and not (tmp_path / "second.tsv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.tsv", "t.parquet"]  # no temporary file left


def test_a_file_written_0600_gets_the_umask_s_mode(tmp_path):
    """safetensors' save_file creates its file 0600: a factor cache in a shared results/cache was unreadable to
    the group. Through atomic_path it gets what the umask allows, as any other file."""
    import os
    import stat

    import numpy as np
    from safetensors.numpy import save_file

    from lossgeom.fsutil import _umask, atomic_path

    out = tmp_path / "cache.safetensors"
    with atomic_path(out) as tmp:
        save_file({"x": np.zeros(3)}, str(tmp))
        assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o600  # what safetensors made
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~_umask()
