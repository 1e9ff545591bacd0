"""What a model does on a problem set: greedy pass@1 per item, and per-item cross-entropies, through
any generation engine (:mod:`lossgeom.generation`) with an optional adapter.

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

from ..data.grading import extract_hash_answer, get_grader
from ..data.prompting import prompt_completion, prompt_ids
from ..generation.engine import Adapter, Engine, Sampling


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


def greedy_pass_at_1(
    engine: Engine, problems: pd.DataFrame, *, grader: str, template: str, max_new_tokens: int,
    adapter: Adapter = None, desc: str = "evaluate",
) -> pd.DataFrame:
    """Greedy decoding, one completion per problem, graded. Returns one row per problem with
    id, correct (0/1, or NaN where the gold cannot be parsed), extracted, completion, gold_ok."""
    grade = get_grader(grader)
    prompts = [prompt_ids(engine.tokenizer, q, template) for q in problems["question"]]
    outs = engine.generate(prompts, Sampling(max_new_tokens=max_new_tokens), adapter=adapter, desc=desc)
    rows = []
    for (_, p), (c,) in zip(problems.iterrows(), outs):
        try:
            extracted, reward = grade(c.text, p["answer"])
            correct, gold_ok = reward, True
        except ValueError:  # the gold answer cannot be parsed: counted and reported, not graded
            extracted, correct, gold_ok = None, math.nan, False
        rows.append({"id": p["id"], "correct": correct, "extracted": extracted, "completion": c.text, "gold_ok": gold_ok})
    return pd.DataFrame(rows)


def continuation_ce(engine: Engine, problems: pd.DataFrame, continuations: list[str | None], *, template: str,
                    add_eos: bool, adapter: Adapter = None) -> np.ndarray:
    """Mean per-token cross-entropy (nats) of each continuation right after its prompt; NaN where None.

    Returns float64 (n_problems,); only continuation tokens count.
    """
    out = np.full(len(problems), np.nan)
    items = [i for i, c in enumerate(continuations) if c]
    if not items:
        return out
    seqs, masks = [], []
    for i in items:
        ids_i, mask_i = prompt_completion(engine.tokenizer, problems["question"].iloc[i], continuations[i], template, eos=add_eos)
        seqs.append(ids_i)
        masks.append(mask_i)
    out[items] = engine.score(seqs, masks, adapter=adapter)
    return out


def cross_entropies(engine: Engine, problems: pd.DataFrame, *, template: str, adapter: Adapter = None) -> pd.DataFrame:
    """Per-item ``answer_ce`` and ``solution_ce`` (nats/token), see the module docstring."""
    answers = [f"#### {gold_answer_text(a)}" for a in problems["answer"]]
    solutions = [reference_solution(r) for _, r in problems.iterrows()]
    return pd.DataFrame(
        {
            "id": problems["id"].to_numpy(),
            "answer_ce": continuation_ce(engine, problems, answers, template=template, add_eos=False, adapter=adapter),
            "solution_ce": continuation_ce(engine, problems, solutions, template=template, add_eos=True, adapter=adapter),
        }
    )
