"""Step time of the custom-loss trainer against TRL's plain SFT, on the same batches, in one run.

    python benchmarks/bench_trainer.py                      # toy shapes, CPU
    python benchmarks/bench_trainer.py --shape qwen3-4b     # Qwen3-4B shapes (random weights), GPU, bf16

For each loss it trains the same LoRA (same seed, same rows, same order) for ``--steps`` steps and
reports the median step time after ``--warmup`` steps, and the ratio to plain ``trl.SFTTrainer``
(``loss_type="nll"``). Target: every ratio <= 1.10. The losses are interleaved over ``--repeats``
rounds so drift in machine load hits all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, TrainerCallback

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = {
    # Qwen3-4B: 36 layers, hidden 2560, 32 query / 8 kv heads of 128, MLP 9728, vocab 151936.
    "qwen3-4b": dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
    ),
    "toy": dict(
        hidden_size=96,
        intermediate_size=288,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        vocab_size=400,
    ),
}


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_begin(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)


def make_rows(n, prompt_len, completion_len, vocab, seed=0):
    import pandas as pd

    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(10, vocab, (prompt_len + completion_len,), generator=g).tolist()
        rows.append(
            {
                "input_ids": ids,
                "completion_mask": [0] * prompt_len + [1] * completion_len,
                "row_weight": 1.0 if i % 2 else -0.15,
                "row_reward": float(i % 2),
            }
        )
    return pd.DataFrame(rows)


def tokenizer():
    """Any tokenizer with a pad token: the rows are pre-tokenised, the trainers only need padding."""
    from lossgeom.toy.tokenizer import build_tokenizer

    return build_tokenizer(["1 + 2 = 3", "Ava has 7 pens."], vocab_size=300)


def run(loss, base_state, cfg, rows, a, out_dir):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from lossgeom.methods import LOSS_DEFAULTS, MethodSpec
    from lossgeom.training.job import lora_model
    from lossgeom.training.trainers import OfflineLossTrainer

    dtype = torch.bfloat16 if a.bf16 else torch.float32
    with torch.device(DEVICE):  # random init of 4B weights on one CPU thread takes ~30 s a model
        model = Qwen3ForCausalLM(cfg).to(dtype)
    model.load_state_dict(base_state)
    name = "sft" if loss == "trl-sft" else loss
    spec = MethodSpec.from_dict(
        {
            "method": name,
            "loss": name,
            "steps": a.steps,
            "save_steps": [a.steps],
            "analysis_step": a.steps,
            "batch_size": a.batch_size,
            "learning_rate": 1e-5,
            **LOSS_DEFAULTS[name],
            "lora": {"r": a.rank, "alpha": 2 * a.rank, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        }
    )
    model = lora_model(model, spec, seed=42)
    if torch.cuda.is_available():
        model = model.cuda()
    timer = StepTimer()
    args = SFTConfig(
        output_dir=str(out_dir),
        max_steps=a.steps,
        per_device_train_batch_size=a.batch_size,
        learning_rate=1e-5,
        report_to=[],
        save_strategy="no",
        logging_steps=10_000,
        seed=42,
        data_seed=42,
        bf16=a.bf16,
        use_cpu=not torch.cuda.is_available(),
        completion_only_loss=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        max_length=None,
        gradient_checkpointing=a.gradient_checkpointing,
    )
    data = Dataset.from_pandas(rows)
    if loss == "trl-sft":
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=data.remove_columns(["row_weight", "row_reward"]),
            processing_class=TOKENIZER,
            callbacks=[timer],
        )
    else:
        trainer = OfflineLossTrainer(
            model=model, args=args, train_dataset=data, processing_class=TOKENIZER, callbacks=[timer], loss_spec=spec
        )
    trainer.train()
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return timer.times[a.warmup :]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="toy")
    p.add_argument("--layers", type=int, default=None, help="override the number of layers (to fit memory)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--completion-len", type=int, default=192)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--bf16", action="store_true", default=torch.cuda.is_available())
    p.add_argument("--gradient-checkpointing", action="store_true")
    a = p.parse_args()
    global TOKENIZER
    TOKENIZER = tokenizer()
    shape = dict(SHAPES[a.shape])
    if a.layers:
        shape["num_hidden_layers"] = a.layers
    cfg = Qwen3Config(**shape, max_position_embeddings=4096, tie_word_embeddings=a.shape == "toy")
    torch.manual_seed(0)
    with torch.device(DEVICE):
        base_state = Qwen3ForCausalLM(cfg).to(torch.bfloat16 if a.bf16 else torch.float32).state_dict()
    rows = make_rows(a.batch_size * a.steps, a.prompt_len, a.completion_len, shape["vocab_size"])
    losses = ["trl-sft", "sft", "rift", "offline_grpo", "dft"]
    times = {l: [] for l in losses}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for loss in losses:
                times[loss] += run(loss, base_state, cfg, rows, a, Path(tmp) / f"{loss}{r}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"shape={a.shape} layers={shape['num_hidden_layers']} device={device} bf16={a.bf16} "
        f"batch={a.batch_size} tokens/row={a.prompt_len + a.completion_len} rank={a.rank}"
    )
    ref = statistics.median(times["trl-sft"])
    print(f"{'loss':<14}{'median step (s)':>18}{'ratio to TRL SFT':>20}")
    for loss in losses:
        med = statistics.median(times[loss])
        print(f"{loss:<14}{med:>18.4f}{med / ref:>20.3f}")
    worst = max(statistics.median(times[l]) / ref for l in losses)
    print(f"worst ratio {worst:.3f} (target <= 1.10): {'OK' if worst <= 1.10 else 'MISSED'}")


if __name__ == "__main__":
    main()
