"""Generation throughput: Hugging Face ``generate`` (the ``hf`` engine) against vLLM (the ``vllm``
engine) on the same model, prompts and lengths, side by side in one run; prints the ratio.

    python benchmarks/bench_generation.py --shape toy                 # a random toy-size Qwen3 (CPU)
    python benchmarks/bench_generation.py --shape qwen3-4b --dtype bfloat16 --prompts 256 \\
        --prompt-len 256 --new-tokens 1024 --hf-batch 64              # Qwen3-4B's shape, random weights (GPU)
    python benchmarks/bench_generation.py --model path/to/model        # any local model directory

The model is built from a config alone (random weights, no download) unless ``--model`` names one.
Both engines decode greedily and ignore EOS, so each generates exactly ``prompts x new_tokens``
tokens; prompts are random token ids of ``--prompt-len``. Reported: engine start-up (s) and
generated tokens per second, each the best of ``--reps`` runs after a warm-up; the ratio is
vllm / hf tokens per second. HF decodes ``--hf-batch`` prompts per ``generate`` call (the ``hf``
engine's ``batch_size``); vLLM schedules all prompts at once (``max_num_seqs``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    # Qwen3-4B-Instruct-2507's config.json (architecture only)
    "qwen3-4b": dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=5_000_000.0,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    ),
    # the toy world's model family at the size vLLM's CPU attention supports (head_dim 32)
    "toy": dict(
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        vocab_size=400,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    ),
}


def build_model(shape: str, out: Path, dtype: str) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(**SHAPES[shape], bos_token_id=None, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("meta" if shape != "toy" else "cpu"):
        model = Qwen3ForCausalLM(cfg)
    if shape != "toy":  # materialise random weights directly in the target dtype
        model = model.to_empty(device="cpu").to(getattr(torch, dtype if dtype != "auto" else "bfloat16"))
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(str(out))
    return out


def bench_hf(model_dir, prompts, new_tokens, batch, dtype, reps):
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dt = {"auto": torch.bfloat16 if dev == "cuda" else torch.float32}.get(dtype) or getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dt).to(dev).eval()
    start = time.perf_counter() - t0

    def run():
        n = 0
        for i in range(0, len(prompts), batch):
            ids = torch.tensor(prompts[i : i + batch], device=dev)
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=False,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    pad_token_id=0,
                    eos_token_id=None,
                )
            n += (out.shape[1] - ids.shape[1]) * ids.shape[0]
        return n

    run_small = prompts[: min(batch, len(prompts))]
    with torch.no_grad():  # warm-up
        model.generate(
            input_ids=torch.tensor(run_small[:2], device=dev), max_new_tokens=4, do_sample=False, pad_token_id=0
        )
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        n = run()
        if dev == "cuda":
            torch.cuda.synchronize()
        best = max(best, n / (time.perf_counter() - t0))
    model = None  # free it before vLLM starts
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()
    return start, best


def bench_vllm(model_dir, prompts, new_tokens, dtype, reps, max_model_len):
    import torch
    from vllm import LLM, SamplingParams

    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    t0 = time.perf_counter()
    llm = LLM(
        model=str(model_dir),
        skip_tokenizer_init=True,
        dtype=dtype,
        max_model_len=max_model_len,
        seed=0,
        max_num_seqs=max(1, min(256, len(prompts))),
    )
    start = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True, detokenize=False)
    inputs = [{"prompt_token_ids": p} for p in prompts]
    llm.generate(inputs[:2], SamplingParams(temperature=0.0, max_tokens=4, detokenize=False), use_tqdm=False)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        outs = llm.generate(inputs, params, use_tqdm=False)
        n = sum(len(o.outputs[0].token_ids) for o in outs)
        best = max(best, n / (time.perf_counter() - t0))
    return start, best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="a local model directory (default: build --shape)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="toy")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--hf-batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    a = p.parse_args()
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = a.model or build_model(a.shape, Path(tmp) / "model", a.dtype)
        vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
        rng = np.random.default_rng(0)
        prompts = rng.integers(1, vocab, size=(a.prompts, a.prompt_len)).tolist()
        hf_start, hf_tps = bench_hf(model_dir, prompts, a.new_tokens, a.hf_batch, a.dtype, a.reps)
        if importlib.util.find_spec("vllm") is None:
            print("vllm: not installed, skipped (its columns are NaN)")
            v_start = v_tps = float("nan")
        else:
            v_start, v_tps = bench_vllm(
                model_dir, prompts, a.new_tokens, a.dtype, a.reps, a.prompt_len + a.new_tokens + 8
            )
    res = {
        "model": str(a.model or a.shape),
        "dtype": a.dtype,
        "prompts": a.prompts,
        "prompt_len": a.prompt_len,
        "new_tokens": a.new_tokens,
        "hf_batch": a.hf_batch,
        "hf_start_s": round(hf_start, 1),
        "hf_tokens_per_s": round(hf_tps, 1),
        "vllm_start_s": round(v_start, 1),
        "vllm_tokens_per_s": round(v_tps, 1),
        "ratio_vllm_over_hf": round(v_tps / hf_tps, 2),
    }
    print(f"model {res['model']} ({a.dtype}), {a.prompts} prompts x {a.prompt_len} tokens -> {a.new_tokens} new tokens")
    print(f"  hf   : start {hf_start:6.1f} s  {hf_tps:10.1f} tokens/s  (batch {a.hf_batch})")
    print(f"  vllm : start {v_start:6.1f} s  {v_tps:10.1f} tokens/s")
    print(f"  ratio vllm / hf tokens/s: {res['ratio_vllm_over_hf']:.2f}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # vLLM's engine processes can otherwise keep the interpreter from exiting
