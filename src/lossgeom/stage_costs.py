"""The device time of each model job of a study, from :mod:`lossgeom.cost_model`'s FLOPs and the config: the time
limit each job asks for (:func:`rule_minutes`, used by :mod:`lossgeom.resources`) and the GPU-hour table of
``lossgeom cost`` (:func:`gpu_hours`), one model for both.

Two scenarios. ``bound``: every completion at its token limit, every training row at ``max_length``, no
padding (a row at the limit is its batch's longest): what a time limit must cover. ``expected``: completions
of ``resources.mean_completion_tokens`` and prompts of ``mean_prompt_tokens`` (each at most its bound),
padded trainers wasting ``padding_fraction`` of their tokens. Prompts are bounded by ``training.max_length``
less ``rollouts.max_new_tokens`` (what a training row leaves them).

What each job does (the rules in workflow/rules/):
- ``rollouts``: prompts x ``k`` completions sampled by the teacher (an API teacher's: no device time);
- ``train``: steps x batch x grad_accum examples, each ``train_sequences`` rows through a LoRA training pass (with
  gradient checkpointing, TRL's default) and
  ``forward_sequences`` through a forward (the loss's ``cost_sequences``); a loss that samples its own
  completions (online GRPO) also decodes one per row, a step's rows in one batch;
- ``evaluate`` (one per model): greedy decoding of every test item, a forward of each prompt (its answer's
  cross-entropy), the CKA probes' forwards, ``behaviour.n`` samples of ``behaviour.limit`` items (twice when
  their temperature is not 1: the KL's samples are drawn at 1) and their scoring under the other model, and the
  held-out text's forwards (forgetting);
- ``lmc`` (one per pair): at each of ``alphas`` points, a forward of ``limit`` prompts and greedy decoding of
  ``accuracy_subset`` items.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .config import adapter_labels, api_rollouts, lmc_pairs, method_seeds, section
from .cost_model import Shape, decode_bytes, decode_flops, forward_flops, lora_train_flops, model_shape
from .errors import InputError
from .losses.pairwise import PairwiseLoss
from .methods import MethodSpec

# Rows of the hub datasets the shipped configs name (their dataset cards), so that jobs are sized before the
# data is downloaded; any other source is counted where it lies (a local file) or assumed (test_set_rows).
KNOWN_ROWS = {
    ("openai/gsm8k", "test"): 1319,
    ("openai/gsm8k", "train"): 7473,
    ("agentica-org/DeepScaleR-Preview-Dataset", "train"): 40315,
}
SIZED_RULES = ("rollouts", "train", "evaluate", "lmc")


@dataclass
class Work:
    """One job's compute. ``train``/``prefill``/``decode``: FLOPs of training passes, of forwards without
    gradients, of sampling; ``decode_bytes``: bytes decoding reads; ``train_token_flops``: FLOPs of one token
    of an SFT row at the job's length (turns a measured tokens/s into a FLOP rate)."""

    train: float = 0.0
    prefill: float = 0.0
    decode: float = 0.0
    decode_bytes: float = 0.0
    train_token_flops: float = 0.0

    def add(self, other: Work, times: float = 1.0) -> None:
        self.train += times * other.train
        self.prefill += times * other.prefill
        self.decode += times * other.decode
        self.decode_bytes += times * other.decode_bytes
        self.train_token_flops = max(self.train_token_flops, other.train_token_flops)

    def seconds(self, res: Mapping) -> float:
        """Device seconds: each kind at its rate (decoding: the slower of its FLOPs and its bytes)."""
        peak = res["gpu_peak_tflops"] * 1e12
        measured = res.get("train_tokens_per_second")
        train_rate = measured * self.train_token_flops if measured else peak * res["train_utilisation"]
        bandwidth = res["gpu_memory_tb_s"] * 1e12 * res["decode_bandwidth_utilisation"]
        decode = max(self.decode / (peak * res["prefill_utilisation"]), self.decode_bytes / bandwidth)
        return (
            (self.train / train_rate if self.train else 0.0)
            + self.prefill / (peak * res["prefill_utilisation"])
            + decode
        )


def source_rows(source: Mapping, config: Mapping) -> tuple[int, bool]:
    """(rows, counted) of a problem source before it is loaded: its ``limit``, the toy's split sizes, a local
    file's rows, :data:`KNOWN_ROWS`; else ``resources.test_set_rows`` with ``counted`` False (an assumption)."""
    rows = _known_rows(source, config)
    limit = source.get("limit")
    if rows is None:
        return (limit, True) if limit else (config["resources"]["test_set_rows"], False)
    return (min(rows, limit) if limit else rows), True


def _known_rows(source: Mapping, config: Mapping) -> int | None:
    name, split = str(source.get("source")), source.get("split") or "train"
    if name == "toy":
        toy = config["toy"]
        return {"train": toy["n_train"], "test": toy["n_test"], "heldout": toy.get("n_heldout")}.get(split)
    path = Path(name)
    if path.is_file() and path.suffix in (".jsonl", ".json", ".parquet", ".csv"):
        try:
            return _file_rows(path)
        except (ValueError, TypeError) as e:  # not UTF-8, not JSON, not parquet: the file's fault, named
            raise InputError(
                f"{path}: not a readable {path.suffix[1:]} problem file ({' '.join(str(e).split())[:200]})"
            ) from None
    return KNOWN_ROWS.get((name, split))


def _file_rows(path: Path) -> int:
    """The rows of a local problem file (.jsonl, .json, .parquet or .csv)."""
    if path.suffix == ".jsonl":
        return sum(1 for line in path.open(encoding="utf-8") if line.strip())
    if path.suffix == ".json":
        return len(json.loads(path.read_text(encoding="utf-8")))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return max(0, sum(1 for _ in path.open(encoding="utf-8")) - 1)


def lengths(config: Mapping, limit: int, bound: bool) -> tuple[float, float]:
    """(prompt, completion) tokens of a sequence whose completion is cut at ``limit``, in one scenario."""
    res = config["resources"]
    prompt = max(1, config["training"]["max_length"] - config["rollouts"]["max_new_tokens"])
    if bound:
        return prompt, limit
    return min(prompt, res["mean_prompt_tokens"] or prompt), min(limit, res["mean_completion_tokens"] or limit)


def sampling(shape: Shape, prompt: float, new: float, batch: int) -> Work:
    """One sampled completion of ``new`` tokens in a batch of ``batch``."""
    return Work(decode=decode_flops(shape, prompt, new), decode_bytes=decode_bytes(shape, prompt, new, batch))


def train_work(config: Mapping, method: str, bound: bool) -> Work:
    """One training job of ``method`` (any seed)."""
    spec = MethodSpec.from_config(config, method)
    shape, loss = model_shape(config), spec.loss_def
    examples = spec.steps * spec.batch_size * spec.grad_accum
    limit = spec.max_length if loss.reads_completions else spec.params.max_new_tokens
    prompt, completion = lengths(config, limit, bound)
    tokens = min(spec.max_length, prompt + completion) if loss.reads_completions else prompt + completion
    trained, forwards = loss.cost_sequences(spec)
    padded = not (loss.trainer == "offline" and spec.padding_free)
    res = config["resources"]
    grouped = spec.group_by_length and isinstance(loss, PairwiseLoss)  # lossgeom.training.trl_methods groups them
    fraction = res["grouped_padding_fraction"] if grouped else res["padding_fraction"]
    waste = 1.0 if bound or not padded else 1.0 / (1.0 - fraction)
    targets, rank = spec.lora.target_modules, spec.lora.r
    # every trainer runs with TRL's default gradient checkpointing (trl/trainer/base_config.py: on); the loss's
    # positions (a next token) through the LM head
    row = lora_train_flops(shape, tokens, targets, rank, checkpointing=True, head_tokens=tokens - 1)
    work = Work(
        train=examples * waste * (trained * row + forwards * forward_flops(shape, tokens)),
        train_token_flops=row / tokens,
    )
    if not loss.reads_completions:  # it samples its own: a step's rows decoded together
        work.add(sampling(shape, prompt, completion, spec.batch_size * spec.grad_accum), examples)
    return work


def evaluate_work(config: Mapping, bound: bool) -> Work:
    """One evaluation job (the base's or an adapter's: the same work)."""
    shape, ev = model_shape(config), config["evaluation"]
    work = Work()
    prompt, new = lengths(config, ev["max_new_tokens"], bound)
    for ts in config["test_sets"].values():
        rows, _ = source_rows(ts, config)
        work.add(sampling(shape, prompt, new, ev["batch_size"]), rows)
        work.add(Work(prefill=forward_flops(shape, prompt)), rows)  # the gold answer's cross-entropy
    cka = section(config, "cka")
    work.add(Work(prefill=forward_flops(shape, prompt + new)), cka["n_probe"])
    beh = section(config, "behaviour")
    prompt, new = lengths(config, beh["max_new_tokens"] or ev["max_new_tokens"], bound)
    draws = beh["limit"] * beh["n"] * (1 if beh["temperature"] == 1 else 2)
    work.add(sampling(shape, prompt, new, ev["batch_size"]), draws)
    work.add(Work(prefill=forward_flops(shape, prompt + new)), beh["limit"] * beh["n"])  # scored by the other model
    if config.get("forgetting", {}).get("source"):
        fg = section(config, "forgetting")
        work.add(Work(prefill=forward_flops(shape, fg["max_length"])), fg["limit"])
    return work


def lmc_work(config: Mapping, bound: bool) -> Work:
    """One connectivity sweep (any pair)."""
    shape, lmc, ev = model_shape(config), section(config, "lmc"), config["evaluation"]
    prompt, new = lengths(config, ev["max_new_tokens"], bound)
    point = Work(prefill=lmc["limit"] * forward_flops(shape, prompt))
    point.add(sampling(shape, prompt, new, ev["batch_size"]), lmc["accuracy_subset"])
    work = Work()
    work.add(point, lmc["alphas"])
    return work


def rollouts_work(config: Mapping, bound: bool) -> Work:
    """The rollouts job: the teacher's samples (none on a device for an API teacher or imported rollouts)."""
    if config["rollouts"]["import"] or api_rollouts(config):
        return Work()
    ro = config["rollouts"]
    rows, _ = source_rows(config["prompts"], config)
    shape = model_shape(config, "teacher")
    prompt, new = lengths(config, ro["max_new_tokens"], bound)
    work = Work()
    work.add(sampling(shape, prompt, new, ro["batch_size"]), rows * ro["k"])
    return work


def job_work(config: Mapping, rule: str, method: str | None = None, bound: bool = True) -> Work:
    """The work of one job of ``rule`` (one of :data:`SIZED_RULES`; ``method``: a training job's)."""
    if rule == "train":
        return train_work(config, method, bound)
    return {"rollouts": rollouts_work, "evaluate": evaluate_work, "lmc": lmc_work}[rule](config, bound)


def rule_minutes(config: Mapping, rule: str, method: str | None = None) -> int | None:
    """A job's time limit, minutes: its bound's device time x ``runtime_margin`` + ``runtime_overhead``, at most
    ``max_runtime``; None where the model's shape is unknown (the caller falls back to ``gpu_job_runtime``)."""
    if rule not in SIZED_RULES or model_shape(config, "teacher" if rule == "rollouts" else "base") is None:
        return None
    if rule == "rollouts" and rollouts_work(config, True).decode == 0:
        return None  # an API teacher or imported rollouts: no device (lossgeom.resources sizes it)
    res = config["resources"]
    minutes = job_work(config, rule, method).seconds(res) / 60 * res["runtime_margin"] + res["runtime_overhead"]
    return min(res["max_runtime"], math.ceil(minutes))


def gpu_hours(config: Mapping) -> list[dict]:
    """One row per stage (training: per method): jobs, each job's time limit, and GPU-hours of all its jobs in
    both scenarios; the last row their total."""
    res, rows = config["resources"], []

    def row(stage: str, rule: str, jobs: int, method: str | None = None) -> None:
        hours = [jobs * job_work(config, rule, method, bound).seconds(res) / 3600 for bound in (False, True)]
        rows.append(
            {
                "stage": stage,
                "jobs": jobs,
                "limit_min": rule_minutes(config, rule, method),
                "expected_gpu_h": hours[0],
                "bound_gpu_h": hours[1],
            }
        )

    teacher = "API teacher" if rollouts_work(config, True).decode == 0 else "local teacher"
    row(f"rollouts ({teacher})", "rollouts", 1)
    labels = adapter_labels(config)
    for method in config["methods"]:
        jobs = len(method_seeds(config, method))
        if jobs:
            row(f"train {method}", "train", jobs, method)
    row("evaluate (one per model)", "evaluate", 1 + len(labels))
    row("lmc (one per pair)", "lmc", len(lmc_pairs(config)))
    rows.append(
        {
            "stage": "all",
            "jobs": sum(r["jobs"] for r in rows),
            "limit_min": None,
            "expected_gpu_h": sum(r["expected_gpu_h"] for r in rows),
            "bound_gpu_h": sum(r["bound_gpu_h"] for r in rows),
        }
    )
    return rows


def gpu_hours_markdown(config: Mapping) -> str:
    """:func:`gpu_hours` as a markdown table, under a line stating the rates and lengths it assumes (the
    table in docs/CLUSTER.md is this, for config/paper.yaml)."""
    res = config["resources"]
    measured = res.get("train_tokens_per_second")
    train = (
        f"training at a MEASURED {measured:,.0f} tokens/s"
        if measured
        else (f"training at {res['train_utilisation']:.0%} of it (assumed)")
    )
    prompt, completion = (
        f"{v:,.0f}" if v else None for v in (res["mean_prompt_tokens"], res["mean_completion_tokens"])
    )
    lines = [
        f"One GPU of {res['gpu_peak_tflops']:,.0f} TFLOP/s and {res['gpu_memory_tb_s']} TB/s; {train}, forwards at "
        f"{res['prefill_utilisation']:.0%} (assumed), decoding at {res['decode_bandwidth_utilisation']:.0%} of the "
        f"bandwidth (assumed). Expected: prompts of {prompt or 'their bound of'} and completions of "
        f"{completion or 'their limit of'} tokens, padded trainers {res['padding_fraction']:.0%} padding (pairs "
        f"grouped by length: {res['grouped_padding_fraction']:.0%}), gradient checkpointing; bound: every "
        "completion at its limit.",
        "",
        "| stage | jobs | time limit a job | GPU-h expected | GPU-h bound |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in gpu_hours(config):
        limit = "" if r["limit_min"] is None else f"{r['limit_min'] / 60:.1f} h"
        lines.append(f"| {r['stage']} | {r['jobs']} | {limit} | {r['expected_gpu_h']:.1f} | {r['bound_gpu_h']:.1f} |")
    sources = [config["prompts"], *config["test_sets"].values()]
    assumed = [str(src["source"]) for src in sources if not source_rows(src, config)[1]]
    if assumed:  # sized by resources.test_set_rows, not by their own rows
        lines += ["", f"Rows ASSUMED ({res['test_set_rows']:,} each; give a `limit`): {', '.join(assumed)}."]
    return "\n".join(lines) + "\n"
