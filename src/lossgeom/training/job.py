"""One training job: one method, one seed, one attention-only LoRA adapter.

The paper's control, made sharper: for a given seed every method starts from the same LoRA init
(``torch.manual_seed(seed)`` immediately before ``peft.get_peft_model``) and sees its rows in the
same seeded order (``data_seed``: the seed, or ``training.data_seed`` when set, which separates the
data-order seed from the init seed). Only the loss and its view of the rollouts differ.

The NLL family trains on :class:`.trainers.OfflineLossTrainer`; DPO, IPO, SimPO, KTO and online GRPO
on TRL's own trainers (:mod:`.trl_methods`), with the same model, arguments, callbacks and outputs.

Outputs (``out_dir``, written atomically, so a failed job leaves nothing):

    adapter_config.json, adapter_model.safetensors   the adapter at ``analysis_step``
    step{N}/                                         the adapter at every other step in ``save_steps``
    metrics.tsv                                      loss, grad_norm, learning_rate, tokens_per_s per log step
                                                     (online GRPO adds reward, accuracy, answer_rate, ...)
    train_info.json                                  seeds, counts of rows/pairs/groups, spec, fingerprint

Checkpoints go to ``ckpt_dir`` (outside the output, so Snakemake does not delete them): a killed
job resumes from the last one when rerun, provided its fingerprint (spec, seed, rollouts, base)
matches; otherwise the stale checkpoints are discarded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from datasets import Dataset

from ..data.prompting import prompt_completion
from ..data.rollouts import read_rollouts
from ..fsutil import atomic_dir, file_sha256
from ..methods import MethodSpec
from ..modeling import load_model, load_tokenizer
from ..versions import stack
from .attention import padding_free_attention
from .trainers import FiniteGradCallback, MetricsCallback, OfflineLossTrainer, SaveAdapterCallback, metrics_table
from .trl_methods import trl_classes, trl_trainer
from .views import ViewError, build_view

log = logging.getLogger(__name__)


def fingerprint(spec: MethodSpec, seed: int, rollouts_path: Path, base_model: str) -> str:
    """What a checkpoint must match to be resumed: the method spec, seed, rollouts bytes, base model."""
    payload = json.dumps({"spec": spec.to_dict(), "seed": seed, "base": str(base_model)}, sort_keys=True)
    return hashlib.sha256((payload + file_sha256(rollouts_path)).encode()).hexdigest()[:16]


def tokenize_view(view: pd.DataFrame, tokenizer, template: str, max_length: int, counts: dict | None = None) -> Dataset:
    """Pre-tokenised rows for ``OfflineLossTrainer``: prompt + completion ids (EOS-terminated unless the
    view's ``eos`` is False: a truncated rollout under ``truncated: no_eos``), completion mask, row numbers.

    A row longer than ``max_length`` tokens is left out, never cut (cut, it would lose its EOS and its
    final answer and still be trained on as a whole answer); ``counts["over_max_length"]`` says how many.

    Held as Arrow arrays from the start (ids int32, mask int8: 5 bytes a token), never as Python lists of
    the whole view (~45 bytes a token: ~12 GB for a paper-sized table of 161k rows); only one row is a
    list at a time. The rows read back as the same Python ints (``benchmarks/bench_train_memory.py``)."""
    ids_parts, mask_parts, lengths = [], [], []
    keep = np.zeros(len(view), dtype=bool)
    for i, r in enumerate(view.itertuples(index=False)):
        ids, mask = prompt_completion(tokenizer, r.prompt, r.completion, template, None, eos=getattr(r, "eos", True))
        if max_length and len(ids) > max_length:
            continue
        keep[i] = True
        ids_parts.append(np.asarray(ids, dtype=np.int32))
        mask_parts.append(np.asarray(mask, dtype=np.int8))
        lengths.append(len(ids))
    if counts is not None:
        counts["over_max_length"] = int((~keep).sum())
    if not keep.any():
        raise ViewError(f"every one of the {len(view)} training rows is longer than max_length {max_length} tokens")
    view = view[keep]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Dataset(
        pa.table(
            {
                "input_ids": _list_array(offsets, ids_parts, np.int32),
                "completion_mask": _list_array(offsets, mask_parts, np.int8),
                "row_weight": pa.array(view["weight"].to_numpy(dtype=np.float64)),
                "row_reward": pa.array(view["reward"].to_numpy(dtype=np.float64)),
            }
        )
    )


LIST_OFFSET_LIMIT = np.iinfo(np.int32).max  # Arrow's list type has int32 offsets; beyond, large_list


def _list_array(offsets: np.ndarray, parts: list[np.ndarray], dtype) -> pa.Array:
    """One Arrow list column from per-row arrays: ``list`` (int32 offsets) while the values fit, else
    ``large_list``. The rows are moved into one buffer and released one by one, so the peak stays near
    one copy of the values (an ``np.empty`` buffer is resident only where written)."""
    values = np.empty(int(offsets[-1]), dtype=dtype)
    for i in range(len(parts)):
        values[offsets[i] : offsets[i + 1]] = parts[i]
        parts[i] = None
    values = pa.array(values)  # zero-copy: a numpy array without nulls
    if offsets[-1] <= LIST_OFFSET_LIMIT:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    return pa.LargeListArray.from_arrays(pa.array(offsets), values)


def _common_args(spec: MethodSpec, seed: int, ckpt_dir: Path) -> dict:
    return dict(
        output_dir=str(ckpt_dir),
        max_steps=spec.steps,
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.learning_rate,
        lr_scheduler_type=spec.lr_scheduler,
        warmup_steps=spec.warmup_ratio,  # a float < 1 is a ratio of max_steps in transformers 5
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        seed=seed,
        data_seed=spec.data_order_seed(seed),
        bf16=spec.precision == "bf16",
        logging_steps=1,
        save_strategy="steps",
        save_steps=spec.checkpoint_interval,
        save_total_limit=1,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        max_length=spec.max_length,
        remove_unused_columns=False,
    )


def offline_trainer(spec: MethodSpec, model, rows: Dataset, tokenizer, common_args: dict, callbacks=()):
    """The :class:`OfflineLossTrainer` of a loss this project trains on TRL's SFTTrainer, on tokenised
    ``rows`` (:func:`tokenize_view`): TRL's loss where the loss defers to it, padding-free where
    ``spec.padding_free``."""
    from trl import SFTConfig

    common = dict(common_args)
    if spec.padding_free:
        # TRL enforces max_length only by packing; tokenize_view has already left out every longer row
        common["max_length"] = None
        # each packed row attends within itself (flash attention's varlen kernels, or varlen_sdpa)
        model.get_base_model().set_attn_implementation(padding_free_attention())
    args = SFTConfig(
        **common,
        completion_only_loss=True,
        loss_type=spec.loss_def.sft_loss_type or "nll",  # TRL's loss where the loss defers to it
        padding_free=spec.padding_free,
    )
    return OfflineLossTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        processing_class=tokenizer,
        callbacks=list(callbacks),
        loss_spec=spec,
    )


def lora_model(base, spec: MethodSpec, seed: int):
    """Wrap ``base`` in the attention-only LoRA of ``spec.lora``, initialised from ``seed``."""
    from peft import LoraConfig, get_peft_model

    lc = spec.lora
    cfg = LoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=list(lc.target_modules),
        use_rslora=lc.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)  # the LoRA init (A ~ Kaiming uniform, B = 0) depends only on the seed
    return get_peft_model(base, cfg)


def last_checkpoint(ckpt_dir: Path, fp: str) -> str | None:
    """The newest resumable checkpoint in ``ckpt_dir`` whose fingerprint is ``fp``; stale ones are removed."""
    marker = ckpt_dir / "fingerprint.txt"
    if ckpt_dir.exists() and (not marker.exists() or marker.read_text().strip() != fp):
        log.warning("discarding checkpoints in %s: they belong to another configuration", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(fp)
    # The Trainer writes a checkpoint in place, trainer_state.json last: a job killed while writing one
    # leaves a partial directory that resuming would fail on ("Can't find a valid checkpoint").
    numbered = [
        (int(m[1]), p) for p in ckpt_dir.iterdir() if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
    ]
    for _, ckpt in sorted(numbered, reverse=True):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return str(ckpt)
        except (OSError, ValueError):
            log.warning("removing incomplete checkpoint %s (the job was killed while writing it)", ckpt)
            shutil.rmtree(ckpt)
    return None


def train_adapter(
    spec: MethodSpec,
    seed: int,
    rollouts_path: Path,
    base_model: str,
    out_dir: Path,
    ckpt_dir: Path,
    *,
    trust_remote_code=False,
    dtype="float32",
) -> dict:
    """Train one adapter as described in the module docstring; returns ``train_info``.

    Long because it is the job's sequence (view, model, trainer, resume, train, atomic write of every
    output) read top to bottom; each step is a call.
    """
    torch.set_num_threads(spec.threads)
    if spec.loss_def.trainer == "trl":
        trl_classes(spec)  # a TRL without this method's trainer stops here, in one line, before any work
    rollouts = read_rollouts(rollouts_path)
    data_seed = spec.data_order_seed(seed)
    view, counts = build_view(rollouts, spec, data_seed)
    log.info("method %s seed %d: %s", spec.method, seed, counts)
    tokenizer = load_tokenizer(base_model, trust_remote_code)
    rows = None
    if spec.loss_def.trainer != "trl":  # tokenised before the model is loaded: no device waits on it
        rows = tokenize_view(view, tokenizer, spec.prompt_template, spec.max_length, counts)
        log.info("%d rows longer than max_length %d left out", counts["over_max_length"], spec.max_length)
    model = lora_model(load_model(base_model, dtype, trust_remote_code), spec, seed)
    fp = fingerprint(spec, seed, Path(rollouts_path), base_model)
    resume = last_checkpoint(Path(ckpt_dir), fp)
    if resume:
        log.info("resuming from %s", resume)
    saves = Path(ckpt_dir) / "saved"
    callbacks = [FiniteGradCallback(), SaveAdapterCallback(spec.save_steps, saves), MetricsCallback()]
    if spec.loss_def.trainer == "trl":
        trainer = trl_trainer(spec, model, _common_args(spec, seed, Path(ckpt_dir)), view, tokenizer, callbacks)
    else:
        trainer = offline_trainer(spec, model, rows, tokenizer, _common_args(spec, seed, Path(ckpt_dir)), callbacks)
    trainer.train(resume_from_checkpoint=resume)
    info = {
        "method": spec.method,
        "loss": spec.loss,
        "seed": seed,
        "init_seed": seed,
        "data_seed": data_seed,
        "analysis_step": spec.analysis_step,
        "save_steps": list(spec.save_steps),
        "counts": counts,
        "base_model": str(base_model),
        "fingerprint": fp,
        "resumed_from": resume,
        "spec": spec.to_dict(),
        "versions": stack(),
    }
    with atomic_dir(out_dir) as tmp:
        analysis = saves / f"step{spec.analysis_step}"
        for f in analysis.iterdir():
            shutil.copy2(f, tmp / f.name)
        for step in spec.save_steps:
            if step != spec.analysis_step:
                shutil.copytree(saves / f"step{step}", tmp / f"step{step}")
        metrics_table(trainer.state.log_history).to_csv(tmp / "metrics.tsv", sep="\t", index=False, float_format="%.8g")
        (tmp / "train_info.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the job is done: its checkpoints are no longer needed
    return info
