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
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..methods import PAIRWISE_LOSSES, MethodSpec


class ViewError(ValueError):
    """The rollouts give a method nothing to train on; the message has the method and the counts."""


def grpo_advantages(rewards: pd.Series, groups: pd.Series, bias: float, std_normalize: bool,
                    all_wrong: str = "bias") -> np.ndarray:
    """A_i = (r_i - mean_g(r)) [/ (std_g(r) + 1e-4)] + b, with g the group (prompt) of row i.

    ``std_g`` is the population std of the group's rewards (0 for a uniform group, so the epsilon
    keeps uniform groups at exactly ``b``). ``all_wrong``: the advantage of a group whose rewards
    are all 0: ``bias`` keeps the formula (A = b, so with b > 0 wrong traces are trained on with a
    positive weight), ``zero`` sets A = 0 (the rows stay in the batch and add nothing), as the
    KRAFTON code does: its bias term is for all-correct groups. Returns float64 of the rows' length.
    """
    if all_wrong not in ("zero", "bias"):
        raise ValueError(f"grpo_advantages: all_wrong must be 'zero' or 'bias', got {all_wrong!r}")
    r = rewards.astype(float)
    mean = r.groupby(groups).transform("mean")
    centred = r - mean
    if std_normalize:
        std = r.groupby(groups).transform(lambda x: x.std(ddof=0))
        centred = centred / (std + 1e-4)
    adv = centred + bias
    if all_wrong == "zero":
        adv = adv.where(r.groupby(groups).transform("max") > 0, 0.0)
    return adv.to_numpy(dtype=float)


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


def kto_rows(rollouts: pd.DataFrame, seed: int) -> pd.DataFrame:
    """KTO's unpaired rows: every rollout, ``label`` True for a correct one (reward 1), False otherwise,
    permuted by ``numpy.random.default_rng(seed)`` (TRL's KTOTrainer reads rows in order, because its KL
    estimate pairs each prompt with a neighbour's completion in the batch, so the data order is set
    here). Columns: prompt_id, prompt, completion, label."""
    rows = rollouts[["prompt_id", "prompt", "completion"]].reset_index(drop=True)
    rows["label"] = (rollouts["reward"].to_numpy() == 1)
    order = np.random.default_rng(seed).permutation(len(rows))
    return rows.iloc[order].reset_index(drop=True)


def online_prompts(rollouts: pd.DataFrame) -> pd.DataFrame:
    """One row per prompt of the rollout table (first appearance order) with its gold answer:
    columns prompt_id, prompt, gold. Rows without a gold answer are dropped (an imported table may
    lack them: such a prompt cannot be graded)."""
    first = rollouts.drop_duplicates("prompt_id")[["prompt_id", "prompt", "gold"]]
    first = first[first["gold"].fillna("").astype(str).str.strip() != ""]
    return first.reset_index(drop=True)


def truncated_mask(rollouts: pd.DataFrame) -> np.ndarray:
    """Rows cut at the sampler's token limit (``finish_reason == "length"``); a table without the column
    (imported, or written before it existed) has none. Bool of the rows' length."""
    if "finish_reason" not in rollouts:
        return np.zeros(len(rollouts), dtype=bool)
    return (rollouts["finish_reason"] == "length").to_numpy(dtype=bool)


def build_view(rollouts: pd.DataFrame, spec: MethodSpec, seed: int) -> tuple[pd.DataFrame, dict]:
    """The rows ``spec.loss`` trains on, and the counts to log.

    Rollouts cut at the token limit are dropped first (``spec.truncated == "drop"``), or kept to be
    trained without EOS (``no_eos``); ``counts`` says how many there were and which policy applied.

    Returns (view, counts). For the NLL family the view has columns prompt_id, prompt, completion,
    reward, weight (``weight`` is the per-row advantage for GRPO and 1 otherwise), eos (append EOS:
    False for a truncated row under ``no_eos``); for DPO, IPO and
    SimPO it has prompt_id, prompt, chosen, rejected; for KTO prompt_id, prompt, completion, label;
    for online GRPO prompt_id, prompt, gold. ``seed`` drives the pairing rule and KTO's row order.
    """
    loss, method = spec.loss, spec.method
    cut = truncated_mask(rollouts)
    truncated = {"truncated": int(cut.sum()), "truncated_policy": spec.truncated}
    if spec.truncated == "drop" and loss != "online_grpo":  # online GRPO samples its own completions
        rollouts = rollouts[~cut].reset_index(drop=True)
        cut = np.zeros(len(rollouts), dtype=bool)
    per_prompt = rollouts.groupby("prompt_id")["reward"].mean()
    counts = {
        **truncated,
        "rollouts": int(len(rollouts)),
        "correct": int((rollouts["reward"] == 1).sum()),
        "prompts": int(len(per_prompt)),
        "mixed_groups": int(((per_prompt > 0) & (per_prompt < 1)).sum()),
    }
    # eos: whether the completion ends with EOS in training (False only for a truncated row kept by no_eos)
    base = rollouts[["prompt_id", "prompt", "completion", "reward"]].reset_index(drop=True).assign(eos=~cut)
    if loss in PAIRWISE_LOSSES:
        view = dpo_pairs(rollouts, spec.pairs_per_prompt, seed)
        counts["pairs"] = int(len(view))
        if view.empty:
            raise ViewError(f"method {method!r} ({loss}): no (correct, incorrect) pair in the rollouts; counts {counts}")
        return view, counts
    if loss == "kto":
        view = kto_rows(rollouts, seed)
        counts["desirable"] = int(view["label"].sum())
        counts["undesirable"] = int((~view["label"]).sum())
        if counts["desirable"] == 0 or counts["undesirable"] == 0:
            kind = "correct (desirable)" if counts["desirable"] == 0 else "incorrect (undesirable)"
            raise ViewError(f"method {method!r} (kto): no {kind} rollout; KTO needs both; counts {counts}")
        counts["rows"] = int(len(view))
        return view, counts
    if loss == "online_grpo":
        view = online_prompts(rollouts)
        counts["rows"] = int(len(view))
        if view.empty:
            raise ViewError(f"method {method!r} (online_grpo): no prompt with a gold answer to grade against "
                            f"(column 'gold' empty); counts {counts}")
        return view, counts
    if loss == "rft":
        view = base[base["reward"] == 1].reset_index(drop=True)
        if view.empty:
            raise ViewError(f"method {method!r} (rft): no correct rollout to train on; counts {counts}")
    elif loss in ("sft", "dft", "rift"):
        view = base
    elif loss == "offline_grpo":
        if counts["mixed_groups"] == 0:
            raise ViewError(f"method {method!r} (offline_grpo): no prompt has both correct and incorrect rollouts; counts {counts}")
        view = base.copy()
        view["weight"] = grpo_advantages(view["reward"], view["prompt_id"], spec.bias, spec.std_normalize,
                                         spec.all_wrong or "bias")
        counts["all_wrong_groups"] = int((per_prompt == 0).sum())
    else:
        raise ValueError(f"unknown loss {loss!r}")
    if "weight" not in view:
        view = view.assign(weight=1.0)
    if view.empty:
        raise ViewError(f"method {method!r} ({loss}): no rollout to train on; counts {counts}")
    counts["rows"] = int(len(view))
    return view, counts
