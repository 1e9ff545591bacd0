#!/usr/bin/env python
"""Inputs for config/rehearsal.yaml: the paper's protocol in miniature, on the paper's code paths.

    python scripts/rehearsal.py prepare rehearsal/        # models (hub layout) and data files
    python scripts/rehearsal.py serve rehearsal/ --port 8011   # the API teacher: vllm serve, foreground
    LOSSGEOM_REHEARSAL_KEY=sk-rehearsal snakemake --cores 2 --configfile config/rehearsal.yaml

``prepare`` writes, under the directory:

    models/base, models/teacher   Qwen3 models trained from scratch on toy problems, saved as a hub
                                  checkpoint (config.json, model.safetensors, tokenizer files), so the
                                  workflow loads them as it loads Qwen3-4B (head_dim 32: vLLM's CPU
                                  attention serves it)
    data/deepscaler.jsonl         DeepScaleR-shaped prompts: problem, answer, solution
    data/gsm8k_test.parquet       GSM8K-shaped test set: question, answer ("<worked solution>\\n#### n")
    data/aime.jsonl               AIME-shaped test set, n = 30: problem, answer (no worked solution)

``serve`` runs ``vllm serve`` of the teacher on 127.0.0.1 under the model name and API key the config
names, as DeepSeek's endpoint stands in the paper's protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

WORLD = {
    "seed": 11,
    "n_train": 1500,
    "n_test": 60,
    "tokenizer_vocab": 400,
    "max_operand": 9,
    "max_start": 15,
    "models": {},
}
MODELS = {
    "base": {
        "hidden_size": 64,
        "num_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "steps": 120,
        "batch_size": 32,
        "learning_rate": 3e-3,
        "max_position_embeddings": 512,
    },
    "teacher": {
        "hidden_size": 64,
        "num_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "steps": 300,
        "batch_size": 32,
        "learning_rate": 3e-3,
        "max_position_embeddings": 512,
    },
}
SERVED_NAME = "rehearsal-teacher"
KEY_ENV = "LOSSGEOM_REHEARSAL_KEY"


def prepare(out: Path, threads: int = 2) -> None:
    import pandas as pd

    from lossgeom.modeling import load_tokenizer
    from lossgeom.toy.pretrain import pretrain
    from lossgeom.toy.world import build_world, read_split

    world = out / "world"
    if not world.exists():
        build_world(WORLD, world)
    tok = load_tokenizer(world / "tokenizer")
    train, test = read_split(world, "train"), read_split(world, "test")
    for i, (name, spec) in enumerate(MODELS.items()):
        if not (out / "models" / name).exists():
            pretrain(spec, tok, train, "{question}", out / "models" / name, seed=100 + i, threads=threads)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    prompts = train[-200:]  # problems the models trained on least recently; DeepScaleR's fields
    with open(data / "deepscaler.jsonl", "w") as f:
        for p in prompts:
            f.write(json.dumps({"problem": p.question, "answer": str(p.answer), "solution": p.solution}) + "\n")
    pd.DataFrame({"question": [p.question for p in test[:30]], "answer": [p.solution for p in test[:30]]}).to_parquet(
        data / "gsm8k_test.parquet"
    )
    with open(data / "aime.jsonl", "w") as f:
        for p in test[30:60]:
            f.write(json.dumps({"problem": p.question, "answer": str(p.answer)}) + "\n")
    print(f"rehearsal inputs in {out}")


def serve_command(out: Path, port: int) -> list[str]:
    """The server's command line; it reads the key it requires from $VLLM_API_KEY (not argv, which
    other users of the host can read)."""
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(out / "models" / "teacher"),
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--enforce-eager",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("prepare", help="train the models and write the data files")
    sp.add_argument("out", type=Path)
    sp.add_argument("--threads", type=int, default=2)
    sp = sub.add_parser("serve", help="vllm serve of the teacher (foreground)")
    sp.add_argument("out", type=Path)
    sp.add_argument("--port", type=int, default=8011)
    a = p.parse_args()
    if a.cmd == "prepare":
        prepare(a.out, a.threads)
    else:
        key = os.environ.get(KEY_ENV)
        if not key:
            sys.exit(f"rehearsal.py: set ${KEY_ENV} (the key the server will require and the workflow will send)")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ["VLLM_API_KEY"] = key
        os.execv(sys.executable, serve_command(a.out, a.port))


if __name__ == "__main__":
    main()
