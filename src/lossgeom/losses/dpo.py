"""DPO on TRL's DPOTrainer (``loss_type=[dpo_loss_type]``, ``beta``); the reference is the base."""

from __future__ import annotations

from dataclasses import dataclass

from .base import LossParams, param
from .pairwise import PairwiseLoss

DPO_LOSS_TYPES = [
    "sigmoid",
    "ipo",
    "hinge",
    "robust",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_pair",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
]


@dataclass(frozen=True)
class DPOParams(LossParams):
    beta: float = param(0.1, {"type": "number", "exclusiveMinimum": 0}, "DPO's inverse temperature beta")
    dpo_loss_type: str = param("sigmoid", {"enum": DPO_LOSS_TYPES}, "TRL's DPO loss_type")
    pairs_per_prompt: int = param(1, {"type": "integer", "minimum": 1}, "pairs kept per prompt (the pairing rule)")


class DPO(PairwiseLoss):
    name = "dpo"
    Params = DPOParams
    trl_trainers = (("trl", "DPOConfig", "DPOTrainer"),)

    def trl_args(self, spec):
        # The reference (the base: the adapter disabled) is fixed, so its log-probs are computed once over
        # the pairs before training instead of at every step: the same numbers, a third less compute a step.
        return {"beta": spec.params.beta, "loss_type": [spec.params.dpo_loss_type], "precompute_ref_log_probs": True}


LOSS = DPO()
