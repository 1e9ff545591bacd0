"""Method views: which rollouts each loss trains on, and with which per-row numbers.

Every method reads the same rollout table; only the view differs:

    sft, dft       every rollout, correct or not
    rft            correct rollouts only (rejection-sampling fine-tuning)
    rift           every rollout with its reward (positives and negatives are weighted differently)
    offline_grpo   every rollout with its group advantage A_i = r_i - mean_group(r) + b
                   (group = the K rollouts of one prompt; optionally divided by the group's std);
                   a group whose rollouts are all wrong gets A = 0 (``all_wrong: zero``, as the
                   KRAFTON code, whose bias is for all-correct groups only) or b (``bias``)
    dpo, ipo,      (chosen = correct, rejected = incorrect) pairs of the same prompt, one pairing
    simpo          rule for the three (:func:`dpo_pairs`)
    kto            every rollout, unpaired: correct ones desirable (label True), incorrect ones
                   undesirable (False), in a seeded order (TRL's KTO reads its rows sequentially)
    online_grpo    the rollout table's prompts with their gold answers (one row per prompt): the
                   completions are sampled during training and graded by the rollouts' grader

An empty view stops with the method name and the counts (``ViewError``): RFT without a correct
rollout, GRPO without a prompt whose group is mixed, DPO/IPO/SimPO without a pair, KTO without a
correct or without an incorrect rollout, online GRPO without a prompt that has a gold answer.

Each view is its loss's (``Loss.view`` in :mod:`lossgeom.losses`, with the helpers it uses, re-exported
here); this module does what every view shares (:func:`build_view`): rows whose grade failed, rollouts cut
at the token limit (reward 0, whole groups for group statistics), and the counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.rollouts import grade_failed_mask, truncated_mask
from ..losses.base import ViewError
from ..losses.kto import kto_rows
from ..losses.offline_grpo import grpo_advantages
from ..losses.online_grpo import online_prompts
from ..losses.pairwise import dpo_pairs

__all__ = [
    "ViewError",
    "build_view",
    "dpo_pairs",
    "grade_failed_mask",
    "grpo_advantages",
    "kto_rows",
    "online_prompts",
    "truncated_mask",
]


def build_view(rollouts: pd.DataFrame, spec, seed: int) -> tuple[pd.DataFrame, dict]:
    """The rows ``spec.loss`` trains on (its registered view, ``spec.loss_def.view``), and the counts to log.

    What every view shares, in this order:

    1. Rows whose grade failed (:func:`grade_failed_mask`) are left out of every view and of every
       group statistic, and counted (``grade_failed``): a timeout is not a wrong answer.
    2. A rollout cut at the token limit (:func:`truncated_mask`) never counts as correct: its reward is 0
       in every view, and it stays in its group for the group statistics (offline GRPO's baseline and
       std, ``mixed_groups``), so a prompt with one correct and three cut completions reads as 1 of 4,
       not as all correct. Under ``spec.truncated == "drop"`` it is then left out of the training rows
       (for the rows views after the view's group statistics; for the pair, KTO and online views before
       they pair or order rows); under ``no_eos`` it is trained on without EOS.

    Returns (view, counts). For the NLL family the view has columns prompt_id, prompt, completion,
    reward, eos (append EOS: False for a truncated row under ``no_eos``), weight (the per-row
    advantage for GRPO and 1 otherwise); for DPO, IPO and SimPO it has prompt_id, prompt, chosen,
    rejected; for KTO prompt_id, prompt, completion, label; for online GRPO prompt_id, prompt, gold.
    ``seed`` drives the pairing rule and KTO's row order. ``spec`` is a
    :class:`lossgeom.methods.MethodSpec`. ``counts`` holds the table's rows, the grade failures, the
    truncated rows and the policy, the correct rows, prompts and mixed groups (whole groups), and what
    the view adds (its training rows, pairs, ...).
    """
    loss = spec.loss_def
    failed = grade_failed_mask(rollouts)
    rollouts = rollouts[~failed].reset_index(drop=True)
    cut = truncated_mask(rollouts)
    rollouts = rollouts.assign(reward=np.where(cut, 0.0, rollouts["reward"].to_numpy(dtype=float)))
    per_prompt = rollouts.groupby("prompt_id")["reward"].mean()
    counts = {
        "grade_failed": int(failed.sum()),
        "truncated": int(cut.sum()),
        "truncated_policy": spec.truncated,
        "rollouts": int(len(rollouts)),
        "correct": int((rollouts["reward"] == 1).sum()),
        "prompts": int(len(per_prompt)),
        "mixed_groups": int(((per_prompt > 0) & (per_prompt < 1)).sum()),
    }
    drop = spec.truncated == "drop" and loss.reads_completions
    # eos: whether the completion ends with EOS in training (False only for a truncated row kept by no_eos)
    rows = rollouts[["prompt_id", "prompt", "completion", "reward"]].reset_index(drop=True).assign(eos=~cut, cut=cut)
    kept = rollouts[~cut].reset_index(drop=True) if drop else rollouts
    view = loss.view(kept, rows, spec, seed, counts)
    if "cut" in view:  # a rows view (the NLL family): its group statistics saw whole groups
        if drop:
            view = view[~view["cut"]].reset_index(drop=True)
            if view.empty:
                raise ViewError(
                    f"method {spec.method!r} ({loss.name}): every row it would train on was cut at the token "
                    f"limit; counts {counts}"
                )
            counts["rows"] = int(len(view))
        view = view.drop(columns="cut")
    return view, counts
