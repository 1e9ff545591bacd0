"""Sampling rollouts with Hugging Face ``generate``: K graded completions per prompt, with the
sampler's per-token log-probabilities (the table of :mod:`lossgeom.data.rollouts`)."""

from __future__ import annotations

import math

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.grading import get_grader
from ..data.prompting import prompt_ids
from ..data.rollouts import ROLLOUT_COLUMNS


@torch.no_grad()
def sample_rollouts(
    model,
    tokenizer,
    problems: pd.DataFrame,
    *,
    k: int,
    temperature: float,
    max_new_tokens: int,
    grader: str,
    template: str = "{question}",
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    source: str = "",
) -> pd.DataFrame:
    """Sample ``k`` completions per problem in batches of ``batch_size`` prompts, grade them, and
    return the rollout table. Deterministic for a fixed seed on CPU (each batch reseeds)."""
    grade = get_grader(grader)
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    rows = []
    eos = tokenizer.eos_token_id
    n_batches = math.ceil(len(problems) / batch_size)
    for b in tqdm(range(n_batches), desc="rollouts", unit="batch"):
        chunk = problems.iloc[b * batch_size : (b + 1) * batch_size]
        enc = tokenizer.pad(
            {"input_ids": [prompt_ids(tokenizer, q, template) for q in chunk["question"]]}, return_tensors="pt"
        ).to(device)
        torch.manual_seed(seed * 1_000_003 + b)
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=k,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
            return_dict_in_generate=True,
            output_scores=True,
        )
        gen = out.sequences[:, enc["input_ids"].shape[1] :]
        # Log-probs under the (temperature-scaled, renormalised) sampling distribution.
        scores = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).float().cpu()
        for i in range(gen.shape[0]):
            p = chunk.iloc[i // k]
            ids = gen[i].tolist()
            n = ids.index(eos) + 1 if eos in ids else len(ids)  # keep EOS, drop padding after it
            text = tokenizer.decode(ids[: n - 1 if eos in ids else n], skip_special_tokens=True)
            answer, reward = grade(text, p["answer"])
            rows.append(
                {
                    "prompt_id": p["id"],
                    "prompt": p["question"],
                    "completion": text,
                    "gold": p["answer"],
                    "answer": answer,
                    "reward": reward,
                    "sample_index": i % k,
                    "logprobs": [round(float(x), 6) for x in scores[i, :n]],
                    "completion_ids": ids[:n],
                    "source": source,
                }
            )
    return pd.DataFrame(rows, columns=ROLLOUT_COLUMNS)

