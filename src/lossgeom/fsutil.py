"""Atomic writes: nothing half-written is ever left at a result path.

Every writer creates its output under a temporary sibling name and renames it into place only
when it is complete, so a killed job, an exception or a bad input leaves either the previous
complete result or nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path


def _sibling(path: Path) -> Path:
    """A unique temporary name beside ``path`` (same filesystem, so the final rename is atomic)."""
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"


@contextlib.contextmanager
def atomic_path(path: Path | str):
    """Yield a temporary file path beside ``path``; rename it to ``path`` on success, delete it on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path)  # not mkstemp: its 0600 mode would survive the rename
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path | str):
    """Yield a temporary directory beside ``path``; it replaces ``path`` (whole) on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path)
    tmp.mkdir()  # not mkdtemp: its 0700 mode would survive the rename
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(*paths: Path | str, names: bool = False) -> str:
    """SHA-256 (hex) of the files' bytes, streamed; with ``names``, each file's name is hashed first."""
    h = hashlib.sha256()
    for path in paths:
        if names:
            h.update(Path(path).name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def write_text(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_table(df, path: Path | str, index: bool = False) -> None:
    """Write a pandas DataFrame as TSV (``.tsv``; NaN as ``nan``) or parquet (``.parquet``) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=index)
        else:
            df.to_csv(tmp, sep="\t", index=index, float_format="%.10g", na_rep="nan")


def read_utf8_lines(path: Path, error: type[ValueError]) -> list[str]:
    """The lines of a text file; a byte sequence that is not UTF-8 stops with its line number."""
    lines = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise error(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None
    return lines


def read_parquet_or(path: Path, error: type[ValueError], columns=None):
    """``pd.read_parquet``; a file that is not parquet (or is truncated) stops with one line naming it."""
    import pandas as pd
    import pyarrow as pa

    try:
        return pd.read_parquet(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise error(f"{path}: not a readable parquet file ({' '.join(str(e).split())[:200]})") from None
