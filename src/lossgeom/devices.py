"""One GPU per job on a workstation.

Snakemake caps how many GPU jobs run at once (``resources: gpu=N`` in
profiles/default) but does not say *which* GPU a job should use, and it does
not set ``CUDA_VISIBLE_DEVICES``.  :func:`claim_gpu` does: it takes a
non-blocking ``flock`` on ``<lock_dir>/gpu<i>.lock`` for the first free index
``i`` and sets ``CUDA_VISIBLE_DEVICES=i`` for this process, so eight training
jobs on an 8-GPU box land on eight different devices.  The lock belongs to the
open file, so it is released when the ``with`` block ends *or* when the
process dies, however it dies.

Call it before anything initialises CUDA (before the first ``torch.cuda``
call, model ``.to("cuda")``, etc.)::

    with claim_gpu():
        train(...)

For a shell command::

    python -m lossgeom.devices -- python train.py ...

Under SLURM (``SLURM_JOB_ID`` set) the scheduler has already picked the
device and set ``CUDA_VISIBLE_DEVICES``; :func:`claim_gpu` then does nothing.
It also does nothing on a machine without GPUs.

Environment:
    LOSSGEOM_NUM_GPUS       number of GPUs (default: count of ``nvidia-smi -L``)
    LOSSGEOM_GPU_LOCK_DIR   where the lock files live (default:
                            ``<system temp dir>/lossgeom-gpu-locks``); all jobs
                            sharing the GPUs must use the same directory.
    CUDA_VISIBLE_DEVICES    if set outside SLURM (e.g. ``2,3``), only these
                            devices are handed out.
    LOSSGEOM_GPU_CLAIMED    set by a claim (with CUDA_VISIBLE_DEVICES); nested
                            claims and child processes then reuse that device.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError

__all__ = [
    "claim_gpu",
    "count_gpus",
    "default_lock_dir",
    "granted_gpus",
    "NoCudaError",
    "require_cuda_if_granted",
    "under_slurm",
]

log = logging.getLogger(__name__)

ENV_NUM_GPUS = "LOSSGEOM_NUM_GPUS"
ENV_LOCK_DIR = "LOSSGEOM_GPU_LOCK_DIR"
# set next to CUDA_VISIBLE_DEVICES by a claim, so that nested claims and child
# processes reuse the claimed device instead of waiting for their own lock
ENV_CLAIMED = "LOSSGEOM_GPU_CLAIMED"
_SLURM_JOB_VARS = ("SLURM_JOB_ID", "SLURM_JOBID")
# Set to "cpu" to run a job on the CPU although a GPU was granted (a test cluster whose GPUs are placeholders)
ENV_DEVICE = "LOSSGEOM_DEVICE"
_SLURM_GPU_VARS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")


def under_slurm() -> bool:
    """True inside a SLURM job, where SLURM assigns the GPUs."""
    return any(os.environ.get(v) for v in _SLURM_JOB_VARS)


def count_gpus() -> int:
    """Number of GPUs: ``$LOSSGEOM_NUM_GPUS``, else ``nvidia-smi -L``, else 0.

    Does not touch CUDA (no torch import), so it is safe to call before
    ``CUDA_VISIBLE_DEVICES`` is set.
    """
    env = os.environ.get(ENV_NUM_GPUS, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise InputError(f"{ENV_NUM_GPUS} must be an integer, got {env!r}") from None
        if n < 0:
            raise InputError(f"{ENV_NUM_GPUS} must be >= 0, got {n}")
        return n
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if out.returncode != 0:
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def default_lock_dir() -> Path:
    """``$LOSSGEOM_GPU_LOCK_DIR`` or ``<system temp dir>/lossgeom-gpu-locks``."""
    env = os.environ.get(ENV_LOCK_DIR)
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / "lossgeom-gpu-locks"


def _ensure_dir(path: Path) -> None:
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        # shared by all users of the machine, like /tmp itself
        os.chmod(path, 0o1777)


def _open_lock(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        # a file another user created: flock works on a read-only fd too
        fd = os.open(path, os.O_RDONLY)
    return fd


def _try_lock(path: Path) -> int | None:
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _candidates(n_visible: int | None) -> list[str]:
    """Device ids to hand out, as CUDA_VISIBLE_DEVICES entries."""
    preset = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if preset:
        ids = [d.strip() for d in preset.split(",") if d.strip()]
        if n_visible is not None:
            ids = ids[:n_visible]
        return ids
    n = count_gpus() if n_visible is None else n_visible
    return [str(i) for i in range(n)]


def _warn_if_cuda_initialised() -> None:
    torch = sys.modules.get("torch")  # never import torch here
    cuda = getattr(torch, "cuda", None) if torch is not None else None
    try:
        initialised = bool(cuda is not None and cuda.is_initialized())
    except Exception:  # pragma: no cover - exotic torch builds
        initialised = False
    if initialised:
        log.warning(
            "claim_gpu() called after CUDA was initialised; CUDA_VISIBLE_DEVICES "
            "no longer has an effect in this process"
        )


def _acquire(ids: list[str], lock_dir: Path, poll_interval: float, timeout: float | None) -> tuple[int, str]:
    """Lock the first free device of ``ids``; wait while all are taken."""
    _ensure_dir(lock_dir)
    start = time.monotonic()
    warned = False
    while True:
        for dev in ids:
            fd = _try_lock(lock_dir / f"gpu{dev}.lock")
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                return fd, dev
        waited = time.monotonic() - start
        if timeout is not None and waited >= timeout:
            raise TimeoutError(
                f"all {len(ids)} GPUs ({','.join(ids)}) stayed busy for {waited:.0f} s (locks in {lock_dir})"
            )
        if not warned:
            log.warning(
                "all %d GPUs (%s) are in use by other jobs; waiting for one to free up (locks in %s)",
                len(ids),
                ",".join(ids),
                lock_dir,
            )
            warned = True
        time.sleep(poll_interval)


def _already_claimed() -> str | None:
    """The device this process (or a parent) already holds, if any."""
    claimed = os.environ.get(ENV_CLAIMED)
    if claimed and claimed == os.environ.get("CUDA_VISIBLE_DEVICES"):
        return claimed
    return None


def _plan(n_visible: int | None) -> list[str]:
    """Devices to choose from; empty when nothing should be claimed."""
    if under_slurm():
        log.info(
            "inside SLURM job %s: keeping CUDA_VISIBLE_DEVICES=%s",
            os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID"),
            os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
        )
        return []
    ids = _candidates(n_visible)
    if not ids:
        log.info("no GPU on this machine: running without claiming one")
    return ids


@contextlib.contextmanager
def claim_gpu(
    n_visible: int | None = None,
    lock_dir: str | os.PathLike[str] | None = None,
    *,
    poll_interval: float = 5.0,
    timeout: float | None = None,
) -> Iterator[str | None]:
    """Hold one GPU for the duration of the ``with`` block.

    Yields the claimed device id (the value put into ``CUDA_VISIBLE_DEVICES``),
    or ``None`` when nothing was claimed: inside a SLURM job (SLURM already
    set ``CUDA_VISIBLE_DEVICES``, which is kept) or when there is no GPU.
    Re-entrant: inside a claim (also in a child process of the claimer) it
    yields the device already held, without taking another lock.

    n_visible:     how many GPUs to choose from (default: :func:`count_gpus`,
                   or the entries of a preset ``CUDA_VISIBLE_DEVICES``).
    lock_dir:      directory of the ``gpu<i>.lock`` files (default:
                   :func:`default_lock_dir`).
    poll_interval: seconds between tries while all GPUs are busy.
    timeout:       give up with ``TimeoutError`` after this many seconds of
                   waiting (default: wait forever).
    """
    held = _already_claimed()
    if held is not None:
        yield held
        return
    ids = _plan(n_visible)
    if not ids:
        yield None
        return
    _warn_if_cuda_initialised()
    lock_path = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    fd, claimed = _acquire(ids, lock_path, poll_interval, timeout)
    previous = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", ENV_CLAIMED)}
    os.environ["CUDA_VISIBLE_DEVICES"] = os.environ[ENV_CLAIMED] = claimed
    log.info("claimed GPU %s (CUDA_VISIBLE_DEVICES=%s)", claimed, claimed)
    try:
        yield claimed
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.close(fd)  # releases the flock
        log.info("released GPU %s", claimed)


def main(argv: list[str] | None = None) -> int:
    """``python -m lossgeom.devices -- CMD [ARGS...]``: run CMD on a free GPU.

    CMD replaces this process (exec) and inherits the locked file, so the GPU
    stays claimed exactly as long as CMD runs.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m lossgeom.devices -- CMD [ARGS...]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="lossgeom.devices: %(message)s")
    ids = [] if _already_claimed() else _plan(None)
    if ids:
        fd, claimed = _acquire(ids, default_lock_dir(), 5.0, None)
        os.set_inheritable(fd, True)  # the lock survives exec
        os.environ["CUDA_VISIBLE_DEVICES"] = os.environ[ENV_CLAIMED] = claimed
        log.info("claimed GPU %s for %s", claimed, args[0])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(args[0], args)
    return 127  # pragma: no cover - execvp does not return


class NoCudaError(RuntimeError):
    """A job given a GPU sees no CUDA device (:func:`require_cuda_if_granted`); the message is one line."""


def granted_gpus(environ=None) -> str | None:
    """What says this job was given a GPU, as ``"VAR=value"``, or ``None``: SLURM's GPU variables, or a
    ``CUDA_VISIBLE_DEVICES`` naming a device (set by SLURM for ``--gpus``, by :func:`claim_gpu` on a
    workstation whose ``nvidia-smi`` lists GPUs, or by the user); ``""`` and ``-1`` name none."""
    environ = os.environ if environ is None else environ
    for var in _SLURM_GPU_VARS:
        value = environ.get(var, "").strip()
        if value and value not in ("0", "(null)"):
            return f"{var}={value}"
    visible = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible and visible not in ("-1", "NoDevFiles"):
        return f"CUDA_VISIBLE_DEVICES={visible}"
    return None


def require_cuda_if_granted(command: str, environ=None) -> None:
    """Stop at once, in one line, when this job was given a GPU (:func:`granted_gpus`) and torch sees no
    CUDA device: the job would otherwise train on the CPU inside a GPU allocation until its time limit
    (a CPU build of torch, e.g. conda-forge's on a login node without GPUs). ``LOSSGEOM_DEVICE=cpu``
    lets it run on the CPU all the same. Raises :class:`NoCudaError` (the CLI prints its line, exit 2)."""
    environ = os.environ if environ is None else environ
    granted = granted_gpus(environ)
    if granted is None or environ.get(ENV_DEVICE, "").strip().lower() == "cpu":
        return
    import torch

    if torch.cuda.is_available():
        return
    if torch.version.cuda is None:
        why = (
            f"torch {torch.__version__} is a CPU build: install a CUDA build (pip: `pip install torch "
            "--index-url https://download.pytorch.org/whl/cu126`; snakemake --sdm conda: build the environment "
            "with CONDA_OVERRIDE_CUDA=12.6 set, so conda-forge solves pytorch's CUDA build on a node without GPUs)"
        )
    else:
        why = (
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable device: check the node's "
            "driver (nvidia-smi) and that CUDA_VISIBLE_DEVICES names a device of this node"
        )
    raise NoCudaError(
        f"lossgeom {command} was given a GPU ({granted}) but sees no CUDA device: {why}; "
        f"set {ENV_DEVICE}=cpu to run it on the CPU anyway"
    )


if __name__ == "__main__":
    sys.exit(main())
