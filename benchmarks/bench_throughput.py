"""Training throughput, padded against padding-free, beside TRL's SFTTrainer with its own padding-free
setting, on the same rows, and DPO's random batches against length-grouped ones, side by side in one run.

    python benchmarks/bench_throughput.py                            # toy shape, CPU, fp32
    python benchmarks/bench_throughput.py --shape qwen3-4b           # Qwen3-4B shape (random weights), GPU, bf16
    python benchmarks/bench_throughput.py --lengths-from results/rollouts/rollouts.parquet   # a table's lengths
    python benchmarks/bench_throughput.py --modes dpo-padded dpo-grouped --dpo-batches 3     # DPO only, shorter

Rows: completion lengths from the paper's distribution as ``benchmarks/bench_train_memory.py`` states it
(lognormal, median ~1.38k, sigma 0.6, cut to [16, 4,096]: a mean near 1.6k tokens), prompts of 40-160
tokens, random token ids; or the token lengths of a rollout table's completions (whitespace words).
Each mode trains the same LoRA (rank ``--rank`` on q/k/v/o) on the same batches in the same order:
``padded`` (this project's offline trainer, rows right-padded to the batch's longest), ``padding-free``
(the same trainer, ``training.padding_free``: rows concatenated, each attending within itself) and
``trl-padding-free`` (plain ``trl.SFTTrainer``, ``loss_type="nll"``, ``padding_free=True``, with the same
attention). ``--loss`` picks the loss of the first two (sft, rft, dft, rift, offline_grpo). Each mode runs
in a process of its own (a clean peak memory: CUDA's max allocated on a GPU, the process's peak RSS on a
CPU); a step is forward + backward of one batch (the optimiser's LoRA update is the same for all).

DPO (``dpo-padded``: ``training.group_by_length: false``, TRL's random batches; ``dpo-grouped``: the default,
:func:`lossgeom.training.trl_methods.group_pairs_by_length`): ``--dpo-pairs`` pairs (default 200 batches,
enough for transformers' megabatches of 50 batches to form, as on a paper-sized table), each a prompt and two
completions drawn independently from the distribution above (random digits: one token each, plus the chat
template's), through ``trl_trainer`` as a job builds it; the batches are those of the trainer's own training
dataloader over one epoch. The padding is counted over every batch of the epoch; ``--dpo-batches`` of them,
evenly spaced through the epoch, are timed (a step: policy forward + backward of the 2 x batch rows; TRL's
one-off reference pass is replaced by zeros, as it is not what is compared).

MFU (GPU only): FLOPs per real token of LoRA training (:func:`lossgeom.cost_model.lora_train_flops`, the
study's one FLOP model: forward, input gradients where autograd needs them, the adapter's weight gradients;
no recompute) over the peak bf16 dense FLOP/s of the device (``--peak-tflops``, else a table of known
devices). A measured rate goes into ``resources.train_tokens_per_second``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_memory import draw_lengths  # noqa: E402  (the one statement of the length distribution)
from bench_trainer import SHAPES, tokenizer  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SFT_MODES = ("padded", "padding-free", "trl-padding-free")
DPO_MODES = ("dpo-padded", "dpo-grouped")
MODES = SFT_MODES + DPO_MODES
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}  # bf16 dense


def rows(a, vocab: int) -> list[dict]:
    prompt, completion = draw_lengths(a.rows, a.lengths_from, seed=a.seed)
    g = np.random.default_rng(a.seed)
    out = []
    for i, (p, c) in enumerate(zip(prompt, completion)):
        out.append(
            {
                "input_ids": g.integers(10, vocab, size=p + c).tolist(),
                "completion_mask": [0] * int(p) + [1] * int(c),
                "row_weight": 1.0 if i % 2 else -0.15,
                "row_reward": float(i % 2),
            }
        )
    return out


def build(mode: str, a, cfg):
    """The model and trainer of one mode (random weights of the shape, seed 0; LoRA seed 42)."""
    from datasets import Dataset
    from transformers import Qwen3ForCausalLM
    from trl import SFTConfig, SFTTrainer

    from lossgeom.methods import LOSS_DEFAULTS, MethodSpec
    from lossgeom.training.attention import padding_free_attention
    from lossgeom.training.job import lora_model, offline_trainer

    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = Qwen3ForCausalLM(cfg).to(torch.bfloat16 if a.bf16 else torch.float32)
    loss = "sft" if mode == "trl-padding-free" else a.loss
    spec = MethodSpec.from_dict(
        {
            "method": loss,
            "loss": loss,
            "steps": 1,
            "save_steps": [1],
            "analysis_step": 1,
            "batch_size": a.batch_size,
            "learning_rate": 1e-5,
            "max_length": 8192,
            "padding_free": mode != "padded",
            "precision": "bf16" if a.bf16 else "fp32",
            **LOSS_DEFAULTS[loss],
            "lora": {"r": a.rank, "alpha": 2 * a.rank, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        }
    )
    model = lora_model(model, spec, seed=42)
    common = dict(
        output_dir=str(Path(a.tmp) / mode),
        max_steps=1,
        per_device_train_batch_size=a.batch_size,
        report_to=[],
        save_strategy="no",
        bf16=a.bf16,
        use_cpu=DEVICE == "cpu",
        remove_unused_columns=False,
        disable_tqdm=True,
        max_length=8192,
        gradient_checkpointing=a.gradient_checkpointing,
    )
    table = rows(a, cfg.vocab_size)
    if mode != "trl-padding-free":
        trainer = offline_trainer(spec, model, Dataset.from_list(table), tokenizer(), common)
    else:
        model.get_base_model().set_attn_implementation(padding_free_attention())
        args = SFTConfig(**{**common, "max_length": None}, completion_only_loss=True, padding_free=True)
        data = Dataset.from_list([{k: r[k] for k in ("input_ids", "completion_mask")} for r in table])
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer())
    return model, trainer, table


def flops_per_token(cfg, rank: int, lengths: np.ndarray) -> float:
    """LoRA training FLOPs per real token, averaged over the rows' lengths: lossgeom.cost_model's count of a
    training pass (tested against torch's FLOP counter), without gradient checkpointing's recompute (MFU counts
    the model's FLOPs, not the hardware's)."""
    from lossgeom.cost_model import Shape, lora_train_flops

    shape = Shape.from_hf(cfg.to_dict())
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    total = sum(lora_train_flops(shape, float(t), targets, rank, head_tokens=float(t) - 1) for t in lengths)
    return total / float(lengths.sum())


def run_mode(mode: str, a) -> dict:
    """One mode in this process: warm up on the first batch, time the rest, report tokens and peak memory."""
    from transformers import Qwen3Config

    cfg = Qwen3Config(**SHAPES[a.shape], max_position_embeddings=8192, tie_word_embeddings=a.shape == "toy")
    model, trainer, table = build(mode, a, cfg)
    collate = trainer.data_collator
    batches = [table[i : i + a.batch_size] for i in range(0, len(table), a.batch_size)]
    model.train()
    times, real, slots = [], 0, 0
    for i, rows_ in enumerate(batches):
        batch = collate([dict(r) for r in rows_])
        batch = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        if i == 0:
            if DEVICE == "cuda":
                torch.cuda.reset_peak_memory_stats()
            continue  # warm-up
        times.append(time.perf_counter() - t)
        real += sum(len(r["input_ids"]) for r in rows_)
        slots += int(batch["input_ids"].numel())
    peak = torch.cuda.max_memory_allocated() / 2**20 if DEVICE == "cuda" else None
    return {
        "mode": mode,
        "seconds": sum(times),
        "real_tokens": real,
        "slots": slots,
        "peak_mb": peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "flops_per_token": flops_per_token(cfg, a.rank, np.array([len(r["input_ids"]) for r in table])),
    }


def dpo_view(a) -> pd.DataFrame:
    """``a.dpo_pairs`` pairs: prompt and chosen lengths drawn as the rows are, rejected from the next seed
    (independent of chosen); random digits, one token each for the benchmark's tokenizer."""
    prompt, chosen = draw_lengths(a.dpo_pairs, a.lengths_from, seed=a.seed)
    _, rejected = draw_lengths(a.dpo_pairs, a.lengths_from, seed=a.seed + 1)
    g = np.random.default_rng(a.seed)

    def digits(n) -> str:
        return "".join(map(str, g.integers(0, 10, size=int(n))))

    return pd.DataFrame(
        {
            "prompt": [digits(n) for n in prompt],
            "chosen": [digits(n) for n in chosen],
            "rejected": [digits(n) for n in rejected],
        }
    )


def build_dpo(mode: str, a, cfg):
    """The model and DPO trainer of one DPO mode, as a job builds it (``trl_trainer``); random weights of the
    shape (seed 0), LoRA seed 42, data-order seed ``--seed``. TRL's one-off reference pass is skipped."""
    from transformers import Qwen3ForCausalLM
    from trl import DPOTrainer

    from lossgeom.methods import LOSS_DEFAULTS, MethodSpec
    from lossgeom.training.job import lora_model
    from lossgeom.training.trl_methods import trl_trainer

    def zero_reference(self, dataset, name, batch_size):
        # the reference log-probs only enter the loss, never the batch's shape: zeros keep the step the same
        zeros = [0.0] * len(dataset)
        return dataset.add_column("ref_chosen_logps", zeros).add_column("ref_rejected_logps", zeros)

    DPOTrainer._precompute_ref_logps = zero_reference
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = Qwen3ForCausalLM(cfg).to(torch.bfloat16 if a.bf16 else torch.float32)
    spec = MethodSpec.from_dict(
        {
            "method": "dpo",
            "loss": "dpo",
            "steps": 1,
            "save_steps": [1],
            "analysis_step": 1,
            "batch_size": a.batch_size,
            "learning_rate": 1e-5,
            "max_length": 8192,
            "group_by_length": mode == "dpo-grouped",
            "precision": "bf16" if a.bf16 else "fp32",
            **LOSS_DEFAULTS["dpo"],
            "lora": {"r": a.rank, "alpha": 2 * a.rank, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        }
    )
    model = lora_model(model, spec, seed=42)
    common = dict(
        output_dir=str(Path(a.tmp) / mode),
        max_steps=1,
        per_device_train_batch_size=a.batch_size,
        seed=a.seed,
        data_seed=a.seed,
        report_to=[],
        save_strategy="no",
        bf16=a.bf16,
        use_cpu=DEVICE == "cpu",
        remove_unused_columns=False,
        disable_tqdm=True,
        max_length=8192,
        gradient_checkpointing=a.gradient_checkpointing,
    )
    return model, trl_trainer(spec, model, common, dpo_view(a), tokenizer(), [])


def run_dpo_mode(mode: str, a) -> dict:
    """One DPO mode in this process: one epoch of the trainer's own training batches, the padding counted over
    all of them. The widest batch is run first, untimed (a warm-up, and the epoch's peak memory); then
    ``a.dpo_batches`` batches at the middles of equal stretches of the batches sorted by width are timed (a
    step's time depends mostly on its width), each the fastest of ``a.dpo_repeats`` runs, and the epoch's time
    is estimated as their mean times its batches."""
    from transformers import Qwen3Config

    cfg = Qwen3Config(**SHAPES[a.shape], max_position_embeddings=8192, tie_word_embeddings=a.shape == "toy")
    model, trainer = build_dpo(mode, a, cfg)
    batches = list(trainer.get_train_dataloader())  # one epoch, in the sampler's order
    masks = [b["attention_mask"] for b in batches]  # [prompt+chosen; prompt+rejected] of each batch's pairs
    by_width = np.argsort([m.shape[1] for m in masks], kind="stable")
    k = min(a.dpo_batches, len(batches))
    timed = by_width[((np.arange(k) + 0.5) * len(batches) / k).astype(int)]

    def step(batch) -> float:
        batch = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        trainer.compute_loss(model, batch).backward()
        model.zero_grad(set_to_none=True)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    model.train()
    step(batches[by_width[-1]])  # warm-up on the widest batch
    # the fastest of a few runs of each: what the step costs, without the stalls of a shared machine
    times = [min(step(batches[i]) for _ in range(a.dpo_repeats)) for i in timed]
    peak = torch.cuda.max_memory_allocated() / 2**20 if DEVICE == "cuda" else None
    rows = torch.cat([m.sum(1) for m in masks]).numpy()
    return {
        "mode": mode,
        "seconds": float(np.mean(times)) * len(batches),  # the epoch's, estimated
        "real_tokens": int(rows.sum()),
        "slots": sum(m.numel() for m in masks),
        "timed_real": sum(int(masks[i].sum()) for i in timed),
        "timed_slots": sum(masks[i].numel() for i in timed),
        "batches": len(batches),
        "timed": k,
        "peak_mb": peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "flops_per_token": flops_per_token(cfg, a.rank, rows),
    }


def mfu(rate: float, r: dict, peak: float | None) -> str:
    return f"{rate * r['flops_per_token'] / (peak * 1e12):.1%}" if DEVICE == "cuda" and peak else "n/a"


def report_sft(res: dict, peak: float | None) -> None:
    """The table of the padded / padding-free modes that ran, and the ratios between those present."""
    print(f"{'mode':<18}{'real tokens/s':>15}{'padding':>10}{'peak MB':>10}{'MFU':>8}")
    rate = {m: r["real_tokens"] / r["seconds"] for m, r in res.items()}
    for mode, r in res.items():
        pad = 1 - r["real_tokens"] / r["slots"]
        print(f"{mode:<18}{rate[mode]:>15,.0f}{pad:>10.1%}{r['peak_mb']:>10,.0f}{mfu(rate[mode], r, peak):>8}")
    first = next(iter(res.values()))
    print(f"FLOPs per real token (LoRA training, as stated above): {first['flops_per_token']:.3e}")
    if {"padding-free", "trl-padding-free"} <= res.keys():
        print(f"padding-free / TRL padding-free (real tokens/s): {rate['padding-free'] / rate['trl-padding-free']:.2f}")
    if {"padding-free", "padded"} <= res.keys():
        print(f"padding-free / padded (peak memory): {res['padding-free']['peak_mb'] / res['padded']['peak_mb']:.2f}")
    if "padded" in res:
        print(f"padding fraction (padded): {1 - res['padded']['real_tokens'] / res['padded']['slots']:.3f}")
    if {"padding-free", "padded"} <= res.keys():
        print(f"padding-free / padded (real tokens/s): {rate['padding-free'] / rate['padded']:.2f}")


def report_dpo(res: dict, a, peak: float | None) -> None:
    """The table of the DPO modes that ran (the epoch's real tokens over its estimated time; padding over the
    epoch and over the timed batches), and their ratios."""
    first = next(iter(res.values()))
    _, chosen = draw_lengths(a.dpo_pairs, a.lengths_from, seed=a.seed)  # as dpo_view draws them
    _, rejected = draw_lengths(a.dpo_pairs, a.lengths_from, seed=a.seed + 1)
    print(
        f"DPO: {a.dpo_pairs} pairs in {first['batches']} batches of {a.batch_size} pairs ({2 * a.batch_size} rows); "
        f"completion tokens mean {np.concatenate([chosen, rejected]).mean():.0f}; {first['timed']} batches timed "
        "(a systematic sample by width), the epoch's time estimated from them"
    )
    print(f"{'mode':<14}{'real tokens/s':>15}{'padding':>10}{'(timed)':>10}{'peak MB':>10}{'MFU':>8}")
    rate = {m: r["real_tokens"] / r["seconds"] for m, r in res.items()}
    pad = {m: 1 - r["real_tokens"] / r["slots"] for m, r in res.items()}
    for mode, r in res.items():
        timed = 1 - r["timed_real"] / r["timed_slots"]
        print(
            f"{mode:<14}{rate[mode]:>15,.0f}{pad[mode]:>10.1%}{timed:>10.1%}{r['peak_mb']:>10,.0f}"
            f"{mfu(rate[mode], r, peak):>8}"
        )
    if set(DPO_MODES) <= res.keys():
        print(f"padding fraction over the epoch (dpo-padded): {pad['dpo-padded']:.3f}")
        print(f"padding fraction over the epoch (dpo-grouped): {pad['dpo-grouped']:.3f}")
        slots = res["dpo-grouped"]["slots"] / res["dpo-padded"]["slots"]
        print(f"dpo-grouped / dpo-padded (token slots of an epoch): {slots:.2f}")
        print(
            f"dpo-grouped / dpo-padded (peak memory): {res['dpo-grouped']['peak_mb'] / res['dpo-padded']['peak_mb']:.2f}"
        )
        print(f"dpo-grouped / dpo-padded (real tokens/s): {rate['dpo-grouped'] / rate['dpo-padded']:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="toy")
    ap.add_argument("--loss", choices=["sft", "rft", "dft", "rift", "offline_grpo"], default="offline_grpo")
    ap.add_argument("--rows", type=int, default=None, help="rows in all (default: 9 batches, the first a warm-up)")
    ap.add_argument("--batch-size", type=int, default=8, help="rows of a batch; pairs of a DPO batch")
    ap.add_argument("--rank", type=int, default=None, help="LoRA rank (default: 8 toy, 32 qwen3-4b)")
    ap.add_argument("--lengths-from", default=None, help="a rollout table (parquet) whose completion lengths to use")
    ap.add_argument("--bf16", action="store_true", default=torch.cuda.is_available())
    ap.add_argument("--gradient-checkpointing", action="store_true", default=torch.cuda.is_available())
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 dense peak (MFU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="the modes run (default: all)")
    ap.add_argument("--dpo-pairs", type=int, default=None, help="DPO pairs in all (default: 200 batches)")
    ap.add_argument("--dpo-batches", type=int, default=8, help="DPO batches timed")
    ap.add_argument("--dpo-repeats", type=int, default=1, help="runs of each timed DPO batch (the fastest is kept)")
    ap.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default="/tmp/bench_throughput", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.rows = a.rows or 9 * a.batch_size
    a.dpo_pairs = a.dpo_pairs or 200 * a.batch_size
    a.rank = a.rank or (8 if a.shape == "toy" else 32)
    if a.one:
        print(json.dumps(run_dpo_mode(a.one, a) if a.one in DPO_MODES else run_mode(a.one, a)))
        return 0
    prompt, completion = draw_lengths(a.rows, a.lengths_from, seed=a.seed)
    device = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(
        f"shape {a.shape}, device {device}, {'bf16' if a.bf16 else 'fp32'}, LoRA rank {a.rank}; completion tokens "
        f"mean {completion.mean():.0f}, max {completion.max()}; prompt tokens mean {prompt.mean():.0f} (of {a.rows})"
    )
    if any(m in a.modes for m in SFT_MODES):
        print(f"loss {a.loss}: {a.rows} rows in batches of {a.batch_size} (the first a warm-up)")
    argv = sys.argv[1:]
    res = {}
    for mode in [m for m in MODES if m in a.modes]:
        done = subprocess.run([sys.executable, __file__, *argv, "--one", mode], capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        res[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    peak = a.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
    if any(m in res for m in SFT_MODES):
        report_sft({m: r for m, r in res.items() if m in SFT_MODES}, peak)
    if any(m in res for m in DPO_MODES):
        report_dpo({m: r for m, r in res.items() if m in DPO_MODES}, a, peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
