"""Resource errors of a command restated as one line (``lossgeom.cli.main`` prints them): a GPU out of memory
(the rule, the batch size in effect and the config key to lower: :class:`OutOfMemory`), and a disk that is
full, over quota or a file-size limit, or a path the job may not write (:func:`disk_error_line`)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from .measures.accuracy import EvaluationSettings
from .measures.activations import CkaSettings
from .settings import RolloutsSettings

# the OSErrors that are the machine's, not the program's: each named with its path and what to do
DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than the process may write (ulimit -f)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
}


def out_of_memory_line(a) -> str:
    """The one line for a GPU out-of-memory error: the rule, the batch size in effect, the key to lower."""
    spec = getattr(a, "spec", None) or {}
    if a.command == "train":
        key = (
            f"training.batch_size (or methods.{spec.get('method', '<method>')}.batch_size; raise training.grad_accum "
            "to keep the effective batch)"
        )
        batch = spec.get("batch_size")
    elif a.command == "toy-model":
        key, batch = f"toy.models.{a.out.name}.batch_size", spec.get("batch_size")
    elif a.command == "rollouts":
        key, batch = (
            "rollouts.batch_size (with the vllm backend: generation.vllm.gpu_memory_utilization or max_num_seqs)",
            RolloutsSettings.filled(spec)["batch_size"],
        )
    elif a.command == "evaluate":  # its spec's measures: the engine's batch, and the activations' own
        measures = spec.get("measures", {}) if isinstance(spec, dict) else {}
        batch = EvaluationSettings.filled(measures.get("accuracy"))["batch_size"]
        key = "evaluation.batch_size"
        if "activations" in measures:
            probes = CkaSettings.filled(measures["activations"])["batch_size"]
            key += f" (or cka.batch_size, {probes}, where the CKA probes' activations ran out)"
    else:  # lmc
        evaluation = spec.get("evaluation", {}) if isinstance(spec, dict) else {}
        key, batch = "evaluation.batch_size", EvaluationSettings.filled(evaluation)["batch_size"]
    rule = a.command.replace("-", "_")  # the Snakemake rule that runs this subcommand
    return (
        f"GPU out of memory in {rule} (lossgeom {a.command}) at batch size {batch}: lower {key} in the config and rerun"
    )


def oom_errors() -> tuple[type[BaseException], ...]:
    """torch's out-of-memory exceptions (``torch.OutOfMemoryError``, and ``torch.cuda``'s name for it)."""
    import torch

    return tuple({getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)} - {None})


class OutOfMemory(Exception):
    """A GPU out-of-memory error, restated as one line (:func:`out_of_memory_line`)."""


def disk_error_line(e: OSError) -> str | None:
    """One line for an OSError of :data:`DISK_ERRNOS`: the path, what happened, and the free space of its
    file system (for a full disk or quota); None for any other OSError (a bug keeps its traceback)."""
    what = DISK_ERRNOS.get(e.errno)
    if what is None:
        return None
    path = e.filename or "(a file being written)"
    line = f"{path}: {e.strerror or what} ({what})" if e.strerror and e.strerror.lower() != what else f"{path}: {what}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and e.filename:
        existing = next((p for p in (Path(e.filename), *Path(e.filename).parents) if p.exists()), None)
        if existing is not None:
            free = shutil.disk_usage(existing).free
            line += f" ({free / 2**20:,.0f} MB free there); free some space or point the output elsewhere"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        line += "; write the outputs where this user may"
    return line
