"""The ``lossgeom`` command-line tool: one subcommand per workflow stage.

Every Snakemake rule calls exactly one of these, and a user can run any stage by hand with the same
arguments. Structured arguments (a method's spec, a problem source) are passed as JSON strings: the
rules pass narrow slices of the config, so a change to one slice reruns only the jobs that read it.
Errors in the input (:class:`lossgeom.errors.InputError`, a missing input file, a GPU out of memory, a full
disk) end the command with one line on stderr (``lossgeom: error: ...``) and exit 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys

from .cli_checks import check_arguments
from .cli_oom import OutOfMemory, disk_error_line, oom_errors, out_of_memory_line
from .cli_parser import GPU_COMMANDS, MODEL_COMMANDS, build_parser
from .devices import NoCudaError
from .errors import InputError

__all__ = ["GPU_COMMANDS", "MODEL_COMMANDS", "build_parser", "main"]

log = logging.getLogger("lossgeom")


def _run(a) -> None:
    """Run the subcommand: a GPU command on a device of its own; a model command logs its stack, and records it
    in ``--versions-out`` when done (:func:`lossgeom.versions.write_record`)."""
    from .versions import stack_line, write_record

    if a.command in MODEL_COMMANDS:
        log.info("stack: %s", stack_line())  # each job's log says what it ran on
    if a.command in GPU_COMMANDS:
        from .devices import claim_gpu, require_cuda_if_granted

        with claim_gpu():  # one GPU per job on a workstation; a no-op under SLURM or without GPUs
            require_cuda_if_granted(a.command)  # given a GPU and no CUDA: stop now, not at the time limit
            try:
                a.func(a)
            except oom_errors() as e:
                raise OutOfMemory(out_of_memory_line(a)) from e
    else:
        a.func(a)
    if getattr(a, "versions_out", None) is not None:
        write_record(a.versions_out, a.command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if hasattr(a, "threads"):
        import torch

        torch.set_num_threads(a.threads)
    try:
        check_arguments(a)  # a value the config's schema would refuse: one line, before any work
        _run(a)
    except OutOfMemory as e:
        # A CUDA out-of-memory, restated with the rule, the batch size and the key: one line, no traceback.
        if a.verbose:
            raise
        print(f"lossgeom: error: {e}", file=sys.stderr)
        return 2
    except NoCudaError as e:
        # given a GPU, no CUDA: one line naming the fix, before any work
        print(f"lossgeom: error: {e}", file=sys.stderr)
        return 2
    except (InputError, FileNotFoundError) as e:
        # Input errors (files, configs, adapters, caches, endpoints, settings, a missing input path): one line
        # naming it and what to do, no traceback. Any other exception, a plain ValueError or FloatingPointError
        # included, is a bug and keeps its traceback.
        if a.verbose:
            raise
        line = str(e)
        if isinstance(e, FileNotFoundError) and e.filename is not None:  # the OS's own: the path, and what to do
            line = f"{e.filename}: no such file or directory (check the path, or run the job that writes it)"
        print(f"lossgeom: error: {line}", file=sys.stderr)
        return 2
    except OSError as e:
        # a full disk, a quota, a file-size limit, no permission: the machine's, named with the path
        line = disk_error_line(e)
        if line is None or a.verbose:
            raise  # any other OSError is a bug: its traceback
        print(f"lossgeom: error: {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
