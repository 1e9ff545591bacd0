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

from .errors import InputError


def _sibling(path: Path) -> Path:
    """A unique temporary name beside ``path`` (same filesystem, so the final rename is atomic)."""
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"


def _umask() -> int:
    """The process's umask, read without setting it (``os.umask`` would, racing other threads' files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


@contextlib.contextmanager
def atomic_path(path: Path | str):
    """Yield a temporary file path beside ``path``; rename it to ``path`` on success, delete it on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path)  # not mkstemp: its 0600 mode would survive the rename
    try:
        yield Path(tmp)
        if os.path.isfile(tmp):  # some writers create their file 0600 (safetensors' save_file): the umask's mode
            os.chmod(tmp, 0o666 & ~_umask())
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
        replace_dir(tmp, path)  # the old one renamed aside, not deleted first: a failure keeps it
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_files():
    """Yield ``stage``: ``stage(path)`` gives a temporary path beside ``path`` to write instead; when the block
    ends without error every staged file is renamed to its path, and on any error none is (the targets keep
    their old contents, the temporary files are deleted). For a command whose several outputs share a
    directory with other files (the accuracy statistics beside the models' evaluations), where a directory swap cannot
    serve. The renames are atomic one by one: only a kill between two of them leaves a mix."""
    staged: list[tuple[Path, Path]] = []

    def stage(path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _sibling(path)
        staged.append((tmp.with_name(tmp.name + path.suffix), path))  # the suffix kept: it picks the format
        return staged[-1][0]

    try:
        yield stage
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


# The files a directory of tables holds (what atomic_swap_dir may delete when it replaces one).
TABLE_SUFFIXES = (".tsv", ".json")


def check_replaceable(path: Path | str, suffixes=TABLE_SUFFIXES, keep=()) -> None:
    """Stop (``ValueError``) unless replacing the directory ``path`` whole (:func:`atomic_swap_dir`) deletes
    no more than an earlier run's outputs: ``path`` is absent, or a directory holding only plain files whose
    names end in one of ``suffixes``; and none of ``keep`` (directories a run writes and a later run reads,
    as a cache; ``None`` entries are skipped) lies inside it, where the replacement would delete it.

    Why: a command that used to add its files to ``--out`` now replaces ``--out``; given ``.`` or a home
    directory it would otherwise delete everything there. Called before any work, so a refusal is quick.
    """
    path = Path(os.path.realpath(path))
    for k in keep:
        if k is not None and Path(os.path.realpath(k)).is_relative_to(path):
            raise InputError(f"{k} lies inside {path}, which is replaced as a whole: give a directory outside it")
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise InputError(f"{path}: not a directory")
    other = sorted(
        e.name + ("/" if e.is_dir() else "")
        for e in os.scandir(path)
        if not (e.is_file(follow_symlinks=False) and e.name.endswith(tuple(suffixes)))
    )
    if other:
        more = f" and {len(other) - 3} more" if len(other) > 3 else ""
        raise InputError(
            f"{path} holds {', '.join(other[:3])}{more}: not this command's outputs ({'/'.join(suffixes)} files),"
            " and its outputs replace the directory as a whole; give a new or empty output directory"
        )


def replace_dir(new: Path | str, path: Path | str) -> None:
    """Move the directory ``new`` to ``path`` (on one filesystem), replacing whatever ``path`` held as a
    unit: the old one is renamed aside, ``new`` renamed in, then the old one deleted.

    If renaming ``new`` in fails, the old one is renamed back (``new`` stays where it was, for the caller
    to delete). Between the two renames ``path`` is briefly absent: a process killed exactly there leaves
    the old contents beside it as ``.{name}.{pid}.{hex}.old``. An old copy that cannot be deleted is left
    there too: ``path`` already holds the new one.
    """
    new, path = Path(new), Path(path)
    old = None
    if os.path.lexists(path):
        old = _sibling(path).with_suffix(".old")
        os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        if old is not None:
            os.rename(old, path)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_swap_dir(path: Path | str, suffixes=TABLE_SUFFIXES, keep=()):
    """Yield a new temporary directory beside ``path``; when the block ends without error it takes
    ``path``'s place as a unit (:func:`replace_dir`).

    So ``path`` holds either exactly the files the block wrote, or, after any error in the block (an
    exception, a full disk, a file-size limit), its previous contents untouched (or still does not
    exist); the temporary directory is deleted either way. :func:`check_replaceable` (``suffixes``,
    ``keep``) runs first. ``path`` is followed through symbolic links: the directory a link points to is
    replaced, beside itself, and the link kept. Unlike :func:`atomic_dir`, an old ``path`` stays whole
    until the new one is complete (``atomic_dir`` deletes it first, then renames).
    """
    path = Path(os.path.realpath(path))
    check_replaceable(path, suffixes, keep)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path)
    tmp.mkdir()  # not mkdtemp: its 0700 mode would survive the rename
    try:
        yield tmp
        replace_dir(tmp, path)
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


def arrays_digest(arrays, *context: str) -> str:
    """SHA-256 (hex) of named arrays, for a cache to prove its content when read back.

    Hashed in order: each ``context`` string (what the arrays must belong to, e.g. a format, its
    version and the key the cache is stored under), then for each name in sorted order a JSON line
    ``[name, dtype.str, shape]`` (``dtype.str`` carries byte order, kind and item size) and the
    array's C-order bytes. Any one flipped bit, a renamed, reshaped or retyped array changes it.

    Args: arrays: name -> ``np.ndarray`` (any shape, dtype without Python objects).
    Cost: one pass over the bytes (about 1.7 GB/s on an x86 core with SHA extensions), no copy for
    C-contiguous arrays.
    """
    import json

    import numpy as np

    h = hashlib.sha256()
    for c in context:
        h.update(json.dumps(c).encode() + b"\n")  # JSON-quoted: no context string can run into the next
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode() + b"\n")
        h.update(a)  # the buffer of a C-contiguous array: its bytes, without a copy
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


def read_parquet_or(path: Path, error: type[ValueError], columns=None, required=(), what: str = "a table"):
    """``pd.read_parquet``; a file that is not parquet (or is truncated), or lacks one of the ``required``
    columns (then it is not ``what``, e.g. "a samples table of 'lossgeom evaluate'"), stops with one line
    naming it."""
    import pandas as pd
    import pyarrow as pa

    if not Path(path).exists():
        raise error(f"{path} does not exist (check the path, or run the job that writes it)")
    try:
        df = pd.read_parquet(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise error(f"{path}: not a readable parquet file ({' '.join(str(e).split())[:200]})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise error(f"{path}: not {what} (no column(s) {missing})")
    return df


def read_tsv_or(path: Path, error: type[ValueError], columns=(), what: str = "a readable TSV table", **read_kw):
    """``pd.read_csv(path, sep="\t", **read_kw)``; a file that is not a readable table (not UTF-8, torn, empty)
    or lacks one of ``columns`` stops with one line naming it and what it should be (``what``)."""
    import pandas as pd

    try:
        df = pd.read_csv(path, sep="\t", **read_kw)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise error(f"{path}: not {what} ({' '.join(str(e).split())[:200]})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise error(f"{path}: not {what} (no column(s) {missing})")
    return df
