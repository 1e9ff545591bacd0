"""RFT (rejection-sampling fine-tuning): the NLL of the correct rollouts only."""

from __future__ import annotations

from .base import ViewError
from .rows import RowsLoss


class RFT(RowsLoss):
    name = "rft"
    sft_loss_type = "nll"

    def select(self, rows, spec, counts):
        view = rows[rows["reward"] == 1].reset_index(drop=True)
        if view.empty:
            raise ViewError(f"method {spec.method!r} (rft): no correct rollout to train on; counts {counts}")
        return view


LOSS = RFT()
