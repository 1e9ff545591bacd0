"""What DPO, IPO and SimPO share: (chosen correct, rejected incorrect) pairs of one prompt by one
seeded rule (:func:`lossgeom.training.views.dpo_pairs`), in TRL's standard prompt/chosen/rejected
format (TRL appends the EOS token to both completions)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .base import Loss, ViewError


def dpo_pairs(rollouts: pd.DataFrame, pairs_per_prompt: int, seed: int) -> pd.DataFrame:
    """Pairs (chosen correct, rejected incorrect) of one prompt, by a seeded rule.

    For each prompt with at least one correct and one incorrect rollout, the correct and the incorrect
    rollouts are each shuffled with ``numpy.random.default_rng(seed)`` (one generator, prompts in
    order of first appearance) and zipped; the first ``pairs_per_prompt`` pairs are kept, so no
    rollout appears in two pairs of a prompt. Columns: prompt_id, prompt, chosen, rejected.
    """
    rng = np.random.default_rng(seed)
    out = []
    for pid, group in rollouts.groupby("prompt_id", sort=False):
        good = group.loc[group["reward"] == 1, "completion"].tolist()
        bad = group.loc[group["reward"] == 0, "completion"].tolist()
        if not good or not bad:
            continue
        good = [good[i] for i in rng.permutation(len(good))]
        bad = [bad[i] for i in rng.permutation(len(bad))]
        prompt = group["prompt"].iloc[0]
        for chosen, rejected in list(zip(good, bad))[:pairs_per_prompt]:
            out.append({"prompt_id": pid, "prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pd.DataFrame(out, columns=["prompt_id", "prompt", "chosen", "rejected"])


class PairwiseLoss(Loss):
    trainer = "trl"
    eos_optional = False
    # chosen + rejected through the policy each step, and TRL 1.16's one-off reference pass
    # (precompute_ref_log_probs: DPOTrainer._precompute_ref_logps runs both sequences of every pair of the
    # dataset through the base) over a dataset of at most the pairs trained on (the paper's: <= 40k pairs for
    # 1,500 x 32; again on every resume): a bound
    train_sequences, forward_sequences = 2.0, 2.0

    def view(self, rollouts, rows, spec, seed, counts):
        view = dpo_pairs(rollouts, spec.params.pairs_per_prompt, seed)
        counts["pairs"] = int(len(view))
        if view.empty:
            raise ViewError(
                f"method {spec.method!r} ({self.name}): no (correct, incorrect) pair in the rollouts; counts {counts}"
            )
        return view

    def dataset(self, view, tokenizer, template):
        from datasets import Dataset

        from ..data.prompting import prompt_string

        return Dataset.from_dict(
            {
                "prompt": [prompt_string(tokenizer, p, template) for p in view["prompt"]],
                "chosen": view["chosen"].tolist(),
                "rejected": view["rejected"].tolist(),
            }
        )
