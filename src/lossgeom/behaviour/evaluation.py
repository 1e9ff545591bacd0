"""What a model does on a problem set: greedy pass@1 per item, and per-item cross-entropies.

Shared by the evaluation jobs (base and every adapter), the connectivity sweeps (every point of a
path) and nothing else, so an endpoint of a sweep is measured exactly like the adapter itself.

Cross-entropies are in nats per token, averaged over the tokens of a continuation placed right
after the chat-formatted prompt:

- ``answer_ce``: the paper's metric, the gold final-answer continuation ``"#### <answer>"``. Short,
  so it is sensitive to the answer's length and tokenisation.
- ``solution_ce``: a full correct reference solution (the gold worked solution, EOS included);
  longer and length-robust. NaN where the problem set has no worked solution.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.grading import extract_hash_answer, get_grader
from ..data.prompting import prompt_completion, prompt_ids, right_padded


def gold_answer_text(gold: str) -> str:
    """The final answer of a gold field: the text after ``####`` when present, else the field itself."""
    return extract_hash_answer(gold) or gold.strip()


def reference_solution(row) -> str | None:
    """A worked solution for ``solution_ce``: the ``solution`` column, or a gold answer that is itself one."""
    sol = row.get("solution")
    if isinstance(sol, str) and sol:
        return sol
    gold = row["answer"]
    return gold if "####" in gold and "\n" in gold else None


@torch.no_grad()
def greedy_pass_at_1(
    model, tokenizer, problems: pd.DataFrame, *, grader: str, template: str, max_new_tokens: int, batch_size: int,
    desc: str = "evaluate",
) -> pd.DataFrame:
    """Greedy decoding, one completion per problem, graded. Returns one row per problem with
    id, correct (0/1, or NaN where the gold cannot be parsed), extracted, completion, gold_ok."""
    grade = get_grader(grader)
    model.eval()
    tokenizer.padding_side = "left"
    dev = next(model.parameters()).device
    rows = []
    for start in tqdm(range(0, len(problems), batch_size), desc=desc, unit="batch"):
        chunk = problems.iloc[start : start + batch_size]
        enc = tokenizer.pad({"input_ids": [prompt_ids(tokenizer, q, template) for q in chunk["question"]]}, return_tensors="pt").to(dev)
        out = model.generate(
            **enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for (_, p), text in zip(chunk.iterrows(), texts):
            try:
                extracted, reward = grade(text, p["answer"])
                correct, gold_ok = reward, True
            except ValueError:  # the gold answer cannot be parsed: counted and reported, not graded
                extracted, correct, gold_ok = None, math.nan, False
            rows.append({"id": p["id"], "correct": correct, "extracted": extracted, "completion": text, "gold_ok": gold_ok})
    return pd.DataFrame(rows)


@torch.no_grad()
def continuation_ce(model, tokenizer, problems: pd.DataFrame, continuations: list[str | None], *, template: str, batch_size: int, add_eos: bool) -> np.ndarray:
    """Mean per-token cross-entropy (nats) of each continuation right after its prompt; NaN where None.

    Returns float64 (n_problems,). Sequences are right-padded; only continuation tokens count.
    """
    model.eval()
    dev = next(model.parameters()).device
    out = np.full(len(problems), np.nan)
    items = [i for i, c in enumerate(continuations) if c]
    pad = tokenizer.pad_token_id
    for start in range(0, len(items), batch_size):
        idx = items[start : start + batch_size]
        seqs, masks = [], []
        for i in idx:
            ids_i, mask_i = prompt_completion(tokenizer, problems["question"].iloc[i], continuations[i], template, eos=add_eos)
            seqs.append(ids_i)
            masks.append(mask_i)
        ids, attn = right_padded(seqs, pad, dev)
        cmask = right_padded(masks, 0, dev)[0].float()
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        m = cmask[:, 1:]
        ce = -(logp * m).sum(1) / m.sum(1).clamp(min=1)
        out[idx] = ce.cpu().double().numpy()
    return out


def cross_entropies(model, tokenizer, problems: pd.DataFrame, *, template: str, batch_size: int) -> pd.DataFrame:
    """Per-item ``answer_ce`` and ``solution_ce`` (nats/token), see the module docstring."""
    answers = [f"#### {gold_answer_text(a)}" for a in problems["answer"]]
    solutions = [reference_solution(r) for _, r in problems.iterrows()]
    return pd.DataFrame(
        {
            "id": problems["id"].to_numpy(),
            "answer_ce": continuation_ce(model, tokenizer, problems, answers, template=template, batch_size=batch_size, add_eos=False),
            "solution_ce": continuation_ce(model, tokenizer, problems, solutions, template=template, batch_size=batch_size, add_eos=True),
        }
    )

