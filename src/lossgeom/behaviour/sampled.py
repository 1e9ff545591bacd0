"""Sampled completions of one model (the base or one adapter): drawn, graded, and scored under the
model and the base, for pass@k and the KL to the base (:mod:`.estimators`); measured in the model's
evaluation job, on the engine it already holds.

Samples table (one per model, ``results/samples/{model}.parquet``), one row per completion:

* ``test_set``, ``id`` -- the item; ``sample`` -- 0..n-1 within (source, temperature, id);
* ``source`` -- ``"self"``: this model's own samples; ``"base"``: the base model's temperature-1
  samples (read from the base's table), scored here under this model for KL(base || this model);
* ``temperature`` -- of the draw (``top_p`` is the ``behaviour`` section's; the KL draws have none);
* ``completion`` (text), ``token_ids`` (the sampled ids, EOS included when the model stopped),
  ``n_tokens``, ``finish_reason``, ``correct`` (0/1 by the test set's grader);
* ``logp`` -- log-probability (nats, summed over the completion's tokens given the chat-formatted
  prompt) under *this* model; ``logp_base`` -- the same under the base. NaN on the pass@k draws at a
  temperature other than 1, which no KL reads;
* ``logp_sampler`` -- the same completion's log-probability as the sampler returned it with the sample
  (the decode path), for this model's own temperature-1 draws; NaN elsewhere and where the engine
  returns none.

Where the log-probabilities come from: both terms of every KL, ``logp`` and ``logp_base``, from the
engine's teacher-forced scoring path (:meth:`~lossgeom.engines.engine.Engine.score`), with the engine's
settings of the job: the two log-probabilities of a log-ratio are computed the same way. The sampler's own
(``logp_sampler``) are kept beside them as the path floor's material: the same model, the same tokens,
through the engine's two paths (decode and prefill). In float32 on a CPU they agree to ~1e-6 nats per
token; vLLM in bf16 is not batch-invariant and decodes and prefills with different kernels, so there the
gap can reach a small KL (the toy's DPO is ~1e-2 nats per token). ``kl.tsv`` reports it beside every
KL (``path_floor``, :func:`~lossgeom.behaviour.estimators.path_gap`).

The base's own table has no ``"base"`` rows, and its ``logp_base`` is its ``logp`` (its KL to itself is
exactly 0: one path).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.grading import get_grader
from ..data.prompting import prompt_ids
from ..engines.engine import Adapter, Engine, Sampling
from ..errors import InputError

SAMPLE_COLUMNS = [
    "test_set",
    "id",
    "source",
    "temperature",
    "sample",
    "completion",
    "token_ids",
    "n_tokens",
    "finish_reason",
    "correct",
    "logp",
    "logp_base",
    "logp_sampler",
]
KL_TEMPERATURE = 1.0  # the KL is between the models' own distributions
# the columns a samples table must have to be read back (a table written before logp_sampler existed is one)
SAMPLES_READ = [c for c in SAMPLE_COLUMNS if c != "logp_sampler"]
SAMPLES_WHAT = "a samples table of 'lossgeom evaluate --behaviour'"


def kl_draws(samples: pd.DataFrame, source: str = "self") -> pd.DataFrame:
    """The rows of a samples table that serve the KL: ``source``'s temperature-1 samples."""
    return samples[(samples["source"] == source) & (samples["temperature"] == KL_TEMPERATURE)]


def draw_samples(
    engine: Engine,
    problems: pd.DataFrame,
    golds: list,
    *,
    grader: str,
    template: str,
    sampling: Sampling,
    adapter: Adapter = None,
    desc: str = "sample",
) -> pd.DataFrame:
    """``sampling.n`` graded completions per problem (items whose gold is None are left out): rows with
    id, sample, completion, token_ids, n_tokens, finish_reason, correct, and logp_sampler: the summed
    log-probabilities of the sampling distribution when ``sampling.logprobs`` and the engine gives them,
    else NaN (see the module docstring)."""
    grade = get_grader(grader)
    items = [i for i, g in enumerate(golds) if g is not None]
    prompts = [prompt_ids(engine.tokenizer, problems["question"].iloc[i], template) for i in items]
    outs = engine.generate(prompts, sampling, adapter=adapter, desc=desc) if items else []
    rows = []
    for i, completions in zip(items, outs):
        for j, c in enumerate(completions):
            rows.append(
                {
                    "id": problems["id"].iloc[i],
                    "sample": j,
                    "completion": c.text,
                    "token_ids": list(c.token_ids),
                    "n_tokens": len(c.token_ids),
                    "finish_reason": c.finish_reason,
                    "correct": float(grade.grade(c.text, golds[i]).reward),
                    # the sampling distribution's log-probability (the model's own at temperature 1)
                    "logp_sampler": float(np.sum(c.logprobs)) if c.logprobs is not None else np.nan,
                }
            )
    return pd.DataFrame(
        rows,
        columns=["id", "sample", "completion", "token_ids", "n_tokens", "finish_reason", "correct", "logp_sampler"],
    )


def completion_logp(
    engine: Engine, questions: pd.Series, samples: pd.DataFrame, *, template: str, adapter: Adapter = None
) -> np.ndarray:
    """log P(completion | prompt) in nats, summed over each sample's ``token_ids``, under ``adapter``
    (None: the base): float64 ``(len(samples),)``. ``questions`` maps an item id to its question."""
    if samples.empty:
        return np.zeros(0)
    # one chat-formatted prompt per item, not per sample (n samples share it)
    prompts = {pid: prompt_ids(engine.tokenizer, questions[pid], template) for pid in dict.fromkeys(samples["id"])}
    seqs, masks = [], []
    for pid, ids in zip(samples["id"], samples["token_ids"]):
        p = prompts[pid]
        ids = [int(t) for t in ids]
        seqs.append(p + ids)
        masks.append([0] * len(p) + [1] * len(ids))
    # scored in order of length, so a batch pads to its own longest (samples' lengths vary 10x)
    order = np.argsort([len(x) for x in seqs], kind="stable")
    nll = np.empty(len(seqs))
    nll[order] = engine.score([seqs[i] for i in order], [masks[i] for i in order], adapter=adapter)
    n = np.array([len(t) for t in samples["token_ids"]], dtype=np.float64)
    return -nll * n  # the engine gives the mean NLL per scored token


def own_samples(
    engine: Engine,
    problems: pd.DataFrame,
    golds: list,
    *,
    spec: dict,
    grader: str,
    template: str,
    max_new_tokens: int,
    adapter: Adapter = None,
    desc: str = "sample",
) -> pd.DataFrame:
    """This model's own rows of its samples table (``source`` "self"; no ``logp_base`` yet): n per item at
    ``spec``'s temperature and top-p, and n more at temperature 1 unless those are the same draw; the
    temperature-1 rows with their ``logp`` under this model by the scoring path and ``logp_sampler`` as
    the sampler gave it (module docstring)."""
    questions = problems.set_index("id")["question"]
    draws = [(spec["temperature"], spec["top_p"])]
    if draws[0] != (KL_TEMPERATURE, 1.0):
        draws.append((KL_TEMPERATURE, 1.0))
    frames = []
    for temperature, top_p in draws:
        kl_draw = (temperature, top_p) == (KL_TEMPERATURE, 1.0)
        sampling = Sampling(
            max_new_tokens=max_new_tokens,
            n=spec["n"],
            temperature=temperature,
            top_p=top_p,
            seed=spec["seed"],
            logprobs=kl_draw,
        )
        s = draw_samples(
            engine,
            problems,
            golds,
            grader=grader,
            template=template,
            sampling=sampling,
            adapter=adapter,
            desc=f"{desc} T={temperature:g}",
        )
        frames.append(s.assign(source="self", temperature=temperature, logp_base=np.nan))
    own = pd.concat(frames, ignore_index=True)
    kl = own["temperature"] == KL_TEMPERATURE
    own.loc[~kl, "logp_sampler"] = np.nan  # no KL reads them
    own["logp"] = np.nan
    # the scoring path, as every other log-probability of a KL (module docstring)
    own.loc[kl, "logp"] = completion_logp(engine, questions, own.loc[kl], template=template, adapter=adapter)
    return own


def sample_model(
    engine: Engine,
    problems: pd.DataFrame,
    golds: list,
    *,
    test_set: str,
    spec: dict,
    grader: str,
    template: str,
    max_new_tokens: int,
    adapter: Adapter = None,
    base_samples: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The samples table of one model on one test set (module docstring), from a filled ``behaviour``
    section ``spec``: its own samples (:func:`own_samples`) with the base's log-probabilities of the
    temperature-1 ones, and, for an adapter, ``base_samples`` (the base's table) scored under it.

    Engine calls are ordered so that a merging engine switches models once: everything under this
    model first, then the base's scores of this model's samples.
    """
    if adapter is not None and base_samples is None:
        raise ValueError("an adapter's samples need the base's samples table (for KL(base || adapter))")
    questions = problems.set_index("id")["question"]
    own = own_samples(
        engine,
        problems,
        golds,
        spec=spec,
        grader=grader,
        template=template,
        max_new_tokens=max_new_tokens,
        adapter=adapter,
        desc=f"sample {test_set}",
    )
    kl_rows = own.index[own["temperature"] == KL_TEMPERATURE]
    parts = [own]
    if adapter is None:
        own.loc[kl_rows, "logp_base"] = own.loc[kl_rows, "logp"]
    else:
        base = kl_draws(base_samples[base_samples["test_set"] == test_set]).drop(columns="test_set")
        unknown = sorted(set(base["id"]) - set(questions.index))
        if unknown or base.empty:
            raise InputError(
                f"the base's samples do not match test set {test_set!r} as sampled here "
                f"({'item ' + repr(unknown[0]) + ' is not in it' if unknown else 'no temperature-1 samples'}); "
                "rerun the base's evaluation"
            )
        logp = completion_logp(engine, questions, base, template=template, adapter=adapter)
        parts.append(base.assign(source="base", logp=logp, logp_sampler=np.nan))  # the base's, in its own table
        # last: the base's scores of this model's samples (a merging engine loads the base once, here)
        own.loc[kl_rows, "logp_base"] = completion_logp(engine, questions, own.loc[kl_rows], template=template)
    out = pd.concat(parts, ignore_index=True).assign(test_set=test_set)
    out["correct"] = out["correct"].astype(float)
    return out[SAMPLE_COLUMNS]
