"""What a model does on a problem set: greedy pass@1 per item, and per-item cross-entropies, through
any generation engine (:mod:`lossgeom.engines`) with an optional adapter.

Shared by the evaluation jobs (base and every adapter), the connectivity sweeps (every point of a
path) and nothing else, so an endpoint of a sweep is measured exactly like the adapter itself.

Cross-entropies are in nats per token, averaged over the tokens of a continuation placed right
after the chat-formatted prompt:

- ``answer_ce``: the paper's metric, the gold final answer written as the prompt asks for it
  (:func:`lossgeom.data.prompting.answer_template`: ``"\\boxed{<answer>}"`` for a prompt that asks for a
  box, as paper.yaml's does, else GSM8K's ``"#### <answer>"``; the config's ``model.answer_template``
  overrides it). Short, so it is sensitive to the answer's length and tokenisation.
- ``solution_ce``: a full correct reference solution (the gold worked solution, EOS included);
  longer and length-robust. NaN where the problem set has no worked solution.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..data.grading import extract_hash_answer, get_grader
from ..data.prompting import answer_template, answer_text, prompt_completion, prompt_ids
from ..engines.engine import Adapter, Engine, Sampling


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
    engine: Engine,
    problems: pd.DataFrame,
    *,
    grader: str,
    template: str,
    max_new_tokens: int,
    adapter: Adapter = None,
    desc: str = "evaluate",
    golds: list | None = None,
) -> pd.DataFrame:
    """Greedy decoding, one completion per problem, graded against ``golds`` (the grader's parsed gold
    answers, :func:`~lossgeom.data.problemsets.parse_golds`; parsed here, stopping on an unreadable one,
    when not given). Items whose gold is None (left out by ``unparsable_gold: drop``) are not generated.
    Returns one row per problem with id, correct (0/1, NaN where left out), extracted, completion,
    finish_reason, grade_note, gold_ok."""
    grade = get_grader(grader)
    if golds is None:
        golds = [grade.parse_gold(a) for a in problems["answer"]]
    items = [i for i, g in enumerate(golds) if g is not None]
    prompts = [prompt_ids(engine.tokenizer, problems["question"].iloc[i], template) for i in items]
    outs = (
        engine.generate(prompts, Sampling(max_new_tokens=max_new_tokens), adapter=adapter, desc=desc) if items else []
    )
    rows = [
        {
            "id": pid,
            "correct": math.nan,
            "extracted": None,
            "completion": None,
            "finish_reason": None,
            "grade_note": "gold not readable",
            "gold_ok": False,
        }
        for pid in problems["id"]
    ]
    for i, (c,) in zip(items, outs):
        g = grade.grade(c.text, golds[i])
        rows[i].update(
            correct=g.reward,
            extracted=g.answer,
            completion=c.text,
            finish_reason=c.finish_reason,
            grade_note=g.note,
            gold_ok=True,
        )
    return pd.DataFrame(rows)


def continuation_ce(
    engine: Engine,
    problems: pd.DataFrame,
    continuations: list[str | None],
    *,
    template: str,
    add_eos: bool,
    adapter: Adapter = None,
) -> np.ndarray:
    """Mean per-token cross-entropy (nats) of each continuation right after its prompt; NaN where None.

    Returns float64 (n_problems,); only continuation tokens count.
    """
    out = np.full(len(problems), np.nan)
    items = [i for i, c in enumerate(continuations) if c]
    if not items:
        return out
    seqs, masks = [], []
    for i in items:
        ids_i, mask_i = prompt_completion(
            engine.tokenizer, problems["question"].iloc[i], continuations[i], template, eos=add_eos
        )
        seqs.append(ids_i)
        masks.append(mask_i)
    out[items] = engine.score(seqs, masks, adapter=adapter)
    return out


def cross_entropies(
    engine: Engine, problems: pd.DataFrame, *, template: str, adapter: Adapter = None, answer_format: str | None = None
) -> pd.DataFrame:
    """Per-item ``answer_ce`` and ``solution_ce`` (nats/token), see the module docstring. ``answer_format``:
    how the gold answer is written (``{answer}`` in it; None: what ``template`` asks for)."""
    fmt = answer_template(template, answer_format)
    answers = [answer_text(gold_answer_text(a), fmt) for a in problems["answer"]]
    solutions = [reference_solution(r) for _, r in problems.iterrows()]
    return pd.DataFrame(
        {
            "id": problems["id"].to_numpy(),
            "answer_ce": continuation_ce(engine, problems, answers, template=template, add_eos=False, adapter=adapter),
            "solution_ce": continuation_ce(
                engine, problems, solutions, template=template, add_eos=True, adapter=adapter
            ),
        }
    )
