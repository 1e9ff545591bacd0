"""Train the toy world's base and teacher models from scratch.

Both are ``Qwen3ForCausalLM`` (the paper's family, so LoRA targets the same q/k/v/o projections as
Qwen3-4B), built from a small ``Qwen3Config`` and trained with TRL's ``SFTTrainer`` on the gold
worked solutions of the toy training split, loss on completion tokens only. Each model's rows are drawn
from a mixture of row kinds (``style``; :func:`style_mixture`): a solution style of :mod:`.problems`
(``direct``, ``terse``, ``verbose``), optionally after a question that ends with the model's ``cue``.
The default student is ``{direct: 0.2, verbose+cue: 0.8}``: it writes the chain of thought when cued
and answers at once when not, as a base model that reasons only when told to. The teacher is trained
on the chain of thought alone, wider, so it reasons unasked; distillation from its rollouts is what
teaches the student to reason by default.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from datasets import Dataset
from transformers import Qwen3Config, Qwen3ForCausalLM

from ..data.prompting import prompt_completion
from ..errors import InputError
from ..fsutil import atomic_dir
from ..settings import ToyModelSettings
from .shipped import write_key

log = logging.getLogger(__name__)


def qwen3_config(spec: dict, vocab_size: int, tokenizer) -> Qwen3Config:
    """A Qwen3 config from the ``toy.models.<name>`` entry: hidden_size, layers, heads, kv_heads,
    head_dim (default ``hidden_size / heads``; Qwen3 allows ``heads * head_dim != hidden_size``), mlp_ratio."""
    spec = ToyModelSettings.filled(spec)
    hidden, heads = spec["hidden_size"], spec["num_attention_heads"]
    if spec["head_dim"] is None and hidden % heads:
        raise InputError(
            f"toy model hidden_size {hidden} is not divisible by num_attention_heads {heads}; set head_dim"
        )
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=int(spec["mlp_ratio"] * hidden),
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=spec["num_key_value_heads"],
        head_dim=spec["head_dim"] or hidden // heads,
        max_position_embeddings=spec["max_position_embeddings"],
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )


CUED = "+cue"  # a row kind "verbose+cue": the style, with the model's cue appended to the question


def cued(question: str, cue: str | None) -> str:
    """``question`` with ``cue`` appended (a space between), or unchanged when there is no cue."""
    return f"{question} {cue}" if cue else question


def style_mixture(style, n: int, seed: int) -> list[str]:
    """The row kind of each of ``n`` training problems: a style name, or a style with ``+cue``.

    ``style`` is one kind (every problem in it) or a mapping ``{kind: weight}``: each problem draws
    its kind independently with those weights from a stream seeded by ``seed``, so the assignment is
    a pure function of the config.
    """
    if isinstance(style, str):
        return [style] * n
    names, weights = list(style), [float(w) for w in style.values()]
    if not names or min(weights) < 0 or sum(weights) <= 0:
        raise InputError(f"toy model style mixture needs non-negative weights with a positive sum, got {style}")
    return random.Random(seed).choices(names, weights=weights, k=n)


def solution_dataset(
    tokenizer, problems, template: str, style="terse", seed: int = 0, cue: str | None = None
) -> Dataset:
    """Pre-tokenised SFT rows (input_ids, completion_mask) of the gold solutions, each problem of the
    kind :func:`style_mixture` draws: the solution in that kind's style, and for a ``+cue`` kind the
    question followed by ``cue`` (``"Think step by step."``), so the model learns to write that style
    when asked to."""
    kinds = style_mixture(style, len(problems), seed)
    if cue is None and any(k.endswith(CUED) for k in kinds):
        raise InputError(f"toy model style mixture {style} has cued rows but the model has no cue")
    pairs = [
        prompt_completion(
            tokenizer,
            cued(p.question, cue if k.endswith(CUED) else None),
            p.solution_in(k.removesuffix(CUED)),
            template,
        )
        for p, k in zip(problems, kinds)
    ]
    return Dataset.from_dict({"input_ids": [i for i, _ in pairs], "completion_mask": [m for _, m in pairs]})


def pretrain(
    spec: dict, tokenizer, problems, template: str, out_dir: Path, seed: int, threads: int = 1, key: dict | None = None
) -> dict:
    """Train one toy model from scratch and save it (model + tokenizer) to ``out_dir``.

    ``spec`` keys: hidden_size, num_layers, num_attention_heads, num_key_value_heads, steps,
    batch_size, learning_rate and the optional keys of :class:`~lossgeom.settings.ToyModelSettings` (head_dim,
    mlp_ratio, warmup_ratio, ``style``: a row kind or a mixture, and ``cue``), at their defaults when missing. Returns the final train loss
    and parameter count. Deterministic for a fixed seed and thread count on CPU. ``key``: what the model was
    trained for (:func:`lossgeom.toy.shipped.model_key`), recorded beside it so that it can be shipped.
    """
    from trl import SFTConfig, SFTTrainer

    spec = ToyModelSettings.filled(spec)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    model = Qwen3ForCausalLM(qwen3_config(spec, len(tokenizer), tokenizer))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("toy model: %d parameters, %d layers, hidden %d", n_params, spec["num_layers"], spec["hidden_size"])
    with atomic_dir(out_dir) as tmp:
        args = SFTConfig(
            output_dir=str(tmp / "_trainer"),
            max_steps=spec["steps"],
            per_device_train_batch_size=spec["batch_size"],
            learning_rate=spec["learning_rate"],
            lr_scheduler_type="cosine",
            warmup_steps=spec["warmup_ratio"],
            weight_decay=0.01,
            max_grad_norm=1.0,
            seed=seed,
            data_seed=seed,
            logging_steps=max(1, spec["steps"] // 20),
            save_strategy="no",
            report_to=[],
            completion_only_loss=True,
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            dataloader_num_workers=0,
            disable_tqdm=False,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=solution_dataset(tokenizer, problems, template, spec["style"], seed, spec["cue"]),
            processing_class=tokenizer,
        )
        result = trainer.train()
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if key is not None:
            write_key(tmp, key)
        import shutil

        shutil.rmtree(tmp / "_trainer", ignore_errors=True)
    return {"train_loss": float(result.training_loss), "parameters": int(n_params)}
