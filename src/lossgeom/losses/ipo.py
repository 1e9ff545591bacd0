"""IPO on TRL's DPOTrainer (``loss_type=["ipo"]``, ``beta`` = IPO's tau; TRL length-normalises the
log-ratios: mean over completion tokens)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import LossParams, param
from .pairwise import PairwiseLoss


@dataclass(frozen=True)
class IPOParams(LossParams):
    beta: float = param(0.1, {"type": "number", "exclusiveMinimum": 0}, "IPO's tau (TRL's beta)")
    pairs_per_prompt: int = param(1, {"type": "integer", "minimum": 1}, "pairs kept per prompt (the pairing rule)")


class IPO(PairwiseLoss):
    name = "ipo"
    Params = IPOParams
    trl_trainers = (("trl", "DPOConfig", "DPOTrainer"),)

    def trl_args(self, spec):
        return {"beta": spec.params.beta, "loss_type": ["ipo"], "precompute_ref_log_probs": True}


LOSS = IPO()
