"""KTO on TRL's KTOTrainer: every rollout unpaired, correct ones desirable, incorrect ones not
(:func:`lossgeom.training.views.kto_rows`: a seeded order, since TRL's KL estimate pairs each prompt
with a neighbour's completion in the batch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .base import Loss, LossParams, ViewError, param


@dataclass(frozen=True)
class KTOParams(LossParams):
    beta: float = param(0.1, {"type": "number", "exclusiveMinimum": 0}, "KTO's beta")
    desirable_weight: float = param(
        1.0, {"type": "number", "exclusiveMinimum": 0}, "KTO's weight of correct (desirable) rollouts"
    )
    undesirable_weight: float = param(
        1.0, {"type": "number", "exclusiveMinimum": 0}, "KTO's weight of incorrect (undesirable) rollouts"
    )


def kto_rows(rollouts: pd.DataFrame, seed: int) -> pd.DataFrame:
    """KTO's unpaired rows: every rollout, ``label`` True for a correct one (reward 1), False otherwise,
    permuted by ``numpy.random.default_rng(seed)`` (TRL's KTOTrainer reads rows in order, because its KL
    estimate pairs each prompt with a neighbour's completion in the batch, so the data order is set
    here). Columns: prompt_id, prompt, completion, label."""
    rows = rollouts[["prompt_id", "prompt", "completion"]].reset_index(drop=True)
    rows["label"] = rollouts["reward"].to_numpy() == 1
    order = np.random.default_rng(seed).permutation(len(rows))
    return rows.iloc[order].reset_index(drop=True)


class KTO(Loss):
    name = "kto"
    Params = KTOParams
    trainer = "trl"
    eos_optional = False
    # each completion and a mismatched (KL) completion, both also through the frozen reference
    train_sequences, forward_sequences = 2.0, 2.0
    # moved to trl.experimental for TRL 1.0 and promoted back later (both paths exist in 1.16)
    trl_trainers = (("trl", "KTOConfig", "KTOTrainer"), ("trl.experimental.kto", "KTOConfig", "KTOTrainer"))

    def view(self, rollouts, rows, spec, seed, counts):
        view = kto_rows(rollouts, seed)
        counts["desirable"] = int(view["label"].sum())
        counts["undesirable"] = int((~view["label"]).sum())
        if counts["desirable"] == 0 or counts["undesirable"] == 0:
            kind = "correct (desirable)" if counts["desirable"] == 0 else "incorrect (undesirable)"
            raise ViewError(f"method {spec.method!r} (kto): no {kind} rollout; KTO needs both; counts {counts}")
        counts["rows"] = int(len(view))
        return view

    def trl_args(self, spec):
        p = spec.params
        return {
            "beta": p.beta,
            "loss_type": "kto",
            "desirable_weight": p.desirable_weight,
            "undesirable_weight": p.undesirable_weight,
            "precompute_ref_log_probs": True,
        }

    def dataset(self, view, tokenizer, template):
        from datasets import Dataset

        from ..data.prompting import prompt_string

        return Dataset.from_dict(
            {
                "prompt": [prompt_string(tokenizer, p, template) for p in view["prompt"]],
                "completion": view["completion"].tolist(),
                "label": [bool(x) for x in view["label"]],
            }
        )


LOSS = KTO()
