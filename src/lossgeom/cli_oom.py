"""A GPU out-of-memory error in a model command, restated as one line: the rule, the batch size in effect and
the config key to lower (``lossgeom.cli.main`` catches :class:`OutOfMemory`)."""

from __future__ import annotations

from .settings import RolloutsSettings


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
    else:
        key = {"evaluate": "evaluation.batch_size", "lmc": "evaluation.batch_size", "activations": "cka.batch_size"}[
            a.command
        ]
        batch = a.batch_size
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
