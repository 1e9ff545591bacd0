"""Offline GRPO (KRAFTON AI 2025): every rollout weighted by its group advantage
(:func:`grpo_advantages`), optionally with a k3 KL to the base."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .base import LossParams, ViewError, param
from .functions import offline_grpo_loss
from .rows import RowsLoss


@dataclass(frozen=True)
class OfflineGRPOParams(LossParams):
    bias: float = param(0.1, {"type": "number"}, "the advantage bias b added to every row's centred reward")
    std_normalize: bool = param(False, {"type": "boolean"}, "divide the centred rewards by the group's std")
    kl_coef: float = param(0.0, {"type": "number", "minimum": 0}, "coefficient of the k3 KL to the base (0: none)")
    all_wrong: str = param(
        "zero",
        {"enum": ["zero", "bias"]},
        "advantage of a group whose rollouts are all wrong: zero (default, as the KRAFTON code) or the bias b",
    )


def grpo_advantages(
    rewards: pd.Series, groups: pd.Series, bias: float, std_normalize: bool, all_wrong: str = "bias"
) -> np.ndarray:
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


class OfflineGRPO(RowsLoss):
    name = "offline_grpo"
    Params = OfflineGRPOParams

    def select(self, rows, spec, counts):
        if counts["mixed_groups"] == 0:
            raise ViewError(
                f"method {spec.method!r} (offline_grpo): no prompt has both correct and incorrect "
                f"rollouts; counts {counts}"
            )
        p = spec.params
        view = rows.copy()
        view["weight"] = grpo_advantages(view["reward"], view["prompt_id"], p.bias, p.std_normalize, p.all_wrong)
        counts["all_wrong_groups"] = int((rows.groupby("prompt_id")["reward"].mean() == 0).sum())
        return view

    def token_loss(self, spec, model, inputs, logp, mask, weights, rewards, num_tokens, seq_idx=None):
        import torch

        ref_logp = None
        if spec.params.kl_coef > 0:
            with torch.no_grad(), model.disable_adapter():
                ref_logp = model(**inputs, fused_lm_head=True).log_probs
        return offline_grpo_loss(logp, mask, weights.to(logp.device), num_tokens, ref_logp, spec.params.kl_coef)


LOSS = OfflineGRPO()
