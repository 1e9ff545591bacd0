"""SimPO on TRL's (experimental) CPOTrainer: ``loss_type="simpo"``, ``cpo_alpha=0`` (no NLL term: pure
SimPO), ``beta``, ``simpo_gamma``; reference-free, the mean log-prob per token."""

from __future__ import annotations

from dataclasses import dataclass

from .base import LossParams, param
from .pairwise import PairwiseLoss


@dataclass(frozen=True)
class SimPOParams(LossParams):
    beta: float = param(2.0, {"type": "number", "exclusiveMinimum": 0}, "SimPO's beta")
    simpo_gamma: float = param(
        1.0, {"type": "number", "minimum": 0}, "SimPO's target reward margin gamma (TRL's simpo_gamma)"
    )
    pairs_per_prompt: int = param(1, {"type": "integer", "minimum": 1}, "pairs kept per prompt (the pairing rule)")


class SimPO(PairwiseLoss):
    name = "simpo"
    Params = SimPOParams
    trl_trainers = (("trl.experimental.cpo", "CPOConfig", "CPOTrainer"),)
    train_sequences, forward_sequences = 2.0, 0.0  # chosen + rejected, reference-free

    def trl_args(self, spec):
        return {
            "beta": spec.params.beta,
            "loss_type": "simpo",
            "cpo_alpha": 0.0,
            "simpo_gamma": spec.params.simpo_gamma,
        }


LOSS = SimPO()
