"""Rollouts: K graded completions per prompt from a local engine or an API teacher, as the table of
:mod:`lossgeom.data.rollouts`.

The sampler is an :class:`~.engine.Engine` (``hf``, ``vllm``: prompts are the chat-formatted token ids
every stage uses) or an :class:`~.openai_api.ApiTeacher` (``openai``: the user message, formatted by
the endpoint's chat template; no token ids). Each completion is graded against the problem's gold
answer by the configured grader.
"""

from __future__ import annotations

import pandas as pd

from ..data.grading import get_grader
from ..data.prompting import prompt_ids, prompt_text
from ..data.rollouts import ROLLOUT_COLUMNS, ROLLOUT_META
from ..engines.engine import Completion, Engine, Sampling
from ..errors import InputError


def sample_completions(
    sampler, problems: pd.DataFrame, sampling: Sampling, *, template: str, journal=None, desc: str = "rollouts"
) -> list[list[Completion]]:
    """``sampling.n`` completions per problem, in problem order, from either kind of sampler."""
    if isinstance(sampler, Engine):
        prompts = [prompt_ids(sampler.tokenizer, q, template) for q in problems["question"]]
        return sampler.generate(prompts, sampling, desc=desc)
    if journal is None:
        raise InputError("an API teacher needs a journal (where completed requests are kept across restarts)")
    contents = [prompt_text(q, template) for q in problems["question"]]
    return sampler.sample(contents, sampling, journal, seed_base=sampling.seed or 0, desc=desc)


def rollout_table(
    problems: pd.DataFrame, completions: list[list[Completion]], *, grader: str, source: str, golds: list | None = None
) -> pd.DataFrame:
    """Grade every completion and lay the rows out as the rollout table (``ROLLOUT_COLUMNS``).

    ``golds``: the problems' gold answers as parsed by the grader (:func:`~lossgeom.data.problemsets.parse_golds`,
    done once before sampling); parsed here when not given. Grading never raises: a completion the grader
    cannot handle gets reward 0 and its reason in ``grade_note``."""
    grade = get_grader(grader)
    if golds is None:
        golds = [grade.parse_gold(a) for a in problems["answer"]]
    rows = []
    for (_, p), gold, comps in zip(problems.iterrows(), golds, completions):
        for k, c in enumerate(comps):
            answer, reward, note = grade.grade(c.text, gold)
            rows.append(
                {
                    "prompt_id": p["id"],
                    "prompt": p["question"],
                    "completion": c.text,
                    "gold": p["answer"],
                    "answer": answer,
                    "reward": reward,
                    "sample_index": k,
                    "logprobs": c.logprobs,
                    "completion_ids": c.token_ids,
                    "source": source,
                    "finish_reason": c.finish_reason,
                    "grade_note": note,
                    **{m: c.meta.get(m) for m in ROLLOUT_META},
                }
            )
    return pd.DataFrame(rows, columns=ROLLOUT_COLUMNS)


def rollout_sampling(*, k: int, temperature: float, max_new_tokens: int, top_p: float = 1.0, seed: int = 0) -> Sampling:
    """How rollouts are decoded: ``k`` samples per prompt, with the sampler's log-probabilities (also
    what an API teacher's journal fingerprints, so the two can never disagree)."""
    return Sampling(max_new_tokens=max_new_tokens, n=k, temperature=temperature, top_p=top_p, seed=seed, logprobs=True)


def sample_rollouts(
    sampler,
    problems: pd.DataFrame,
    *,
    k: int,
    temperature: float,
    max_new_tokens: int,
    grader: str,
    template: str = "{question}",
    top_p: float = 1.0,
    seed: int = 0,
    source: str = "",
    journal=None,
    golds: list | None = None,
) -> pd.DataFrame:
    """Sample ``k`` completions per problem, grade them (against ``golds``, see :func:`rollout_table`), and
    return the rollout table. Deterministic
    for a fixed seed with the ``hf`` engine on CPU and with ``vllm`` (per-request seeds)."""
    sampling = rollout_sampling(k=k, temperature=temperature, max_new_tokens=max_new_tokens, top_p=top_p, seed=seed)
    completions = sample_completions(sampler, problems, sampling, template=template, journal=journal)
    return rollout_table(problems, completions, grader=grader, source=source, golds=golds)
