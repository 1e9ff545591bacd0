"""The thread settings vLLM's CPU engine starts under (lossgeom.engines.cpu_threads), without vLLM: the core
choice against vLLM's own ``auto`` rule on made-up topologies, the variables under a workflow job's
environment, and a user's own binding kept."""

from __future__ import annotations

import pytest

from lossgeom.engines.cpu_threads import (
    BIND_VAR,
    THREAD_VARS,
    LogicalCPU,
    choose_cores,
    parse_core_list,
    plan,
    vllm_cpu_environment,
)

TWO_CORES = [LogicalCPU(0, 0, 0), LogicalCPU(1, 1, 0)]
WORKFLOW_2 = {k: "2" for k in THREAD_VARS}  # what Snakemake gives a job of threads: 2


def smt_two_nodes():
    """16 logical CPUs: 2 NUMA nodes x 4 cores x 2 hyperthreads (siblings i and i + 8, as Linux numbers them)."""
    return [LogicalCPU(i, i % 8, (i % 8) // 4) for i in range(16)]


def test_two_cores_under_the_workflow_bind_one_core_with_one_thread_everywhere():
    # vLLM's own auto rule on this machine: worker on core 0, core 1 reserved (its log: core ids=[0])
    got = plan(WORKFLOW_2, TWO_CORES)
    assert got[BIND_VAR] == "0"
    assert {k: got[k] for k in THREAD_VARS} == {k: "1" for k in THREAD_VARS}


def test_no_thread_variables_gives_vllms_auto_choice():
    assert plan({}, TWO_CORES)[BIND_VAR] == "0"
    # one logical CPU per physical core (the highest sibling, as vLLM's x86 rule), the first node, last reserved
    assert choose_cores(smt_two_nodes(), threads=99) == [8, 9, 10]


def test_the_jobs_threads_limit_the_cores():
    cpus = [LogicalCPU(i, i, 0) for i in range(16)]
    got = plan({**{k: "4" for k in THREAD_VARS}}, cpus)
    assert got[BIND_VAR] == "0,1,2" and got["MKL_NUM_THREADS"] == "3"
    assert choose_cores(cpus, threads=1) == [0]  # one thread: the worker keeps its core
    assert choose_cores(cpus, threads=4, reserved=0) == [0, 1, 2, 3]


@pytest.mark.parametrize("bad", ["0", "-3", "two", ""])
def test_unusable_omp_num_threads_means_all_allowed_cores(bad):
    assert plan({"OMP_NUM_THREADS": bad}, [LogicalCPU(i, i, 0) for i in range(4)])[BIND_VAR] == "0,1,2"


def test_a_users_binding_is_kept_and_the_variables_follow_it():
    got = plan({**WORKFLOW_2, BIND_VAR: "0-2,5"}, TWO_CORES)
    assert BIND_VAR not in got and got["MKL_NUM_THREADS"] == "4"
    got = plan({**WORKFLOW_2, BIND_VAR: "0-3|4-5"}, TWO_CORES)
    assert got["OMP_NUM_THREADS"] == "2"  # the smallest rank's list
    got = plan({"OMP_NUM_THREADS": "3", BIND_VAR: "nobind"}, TWO_CORES)
    assert BIND_VAR not in got and got["MKL_NUM_THREADS"] == "3"
    with pytest.raises(ValueError, match="VLLM_CPU_OMP_THREADS_BIND='0-x'"):
        plan({BIND_VAR: "0-x"}, TWO_CORES)
    assert parse_core_list("3, 0-1") == [3, 0, 1]


def test_the_callers_environment_is_restored():
    env = {"MKL_NUM_THREADS": "2", "PATH": "/bin"}
    with vllm_cpu_environment(env) as settings:
        assert env["MKL_NUM_THREADS"] == settings["MKL_NUM_THREADS"]
        assert BIND_VAR in env
    assert env == {"MKL_NUM_THREADS": "2", "PATH": "/bin"}
