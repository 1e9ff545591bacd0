"""RIFT (reward-informed fine-tuning): every rollout with its reward; the loss is
:func:`.functions.rift_loss`."""

from __future__ import annotations

from dataclasses import dataclass

from .base import LossParams, param
from .functions import rift_loss
from .rows import RowsLoss


@dataclass(frozen=True)
class RIFTParams(LossParams):
    positive_reward: float = param(1.0, {"type": "number"}, "RIFT's reward R+ of a correct rollout (weight on its NLL)")
    negative_reward: float = param(
        -0.2, {"type": "number"}, "RIFT's reward R- of an incorrect rollout (< 0: the linearised negative term)"
    )
    negative_prob: str = param(
        "token",
        {"enum": ["token", "sequence"]},
        "RIFT's negative term: per-token p_t (default) or the sequence probability p(y) (the RIFT paper's form)",
    )


class RIFT(RowsLoss):
    name = "rift"
    Params = RIFTParams

    def token_loss(self, spec, model, inputs, logp, mask, weights, rewards, num_tokens, seq_idx=None):
        p = spec.params
        return rift_loss(
            logp,
            mask,
            rewards.to(logp.device),
            p.positive_reward,
            p.negative_reward,
            num_tokens,
            p.negative_prob,
            seq_idx,
        )


LOSS = RIFT()
