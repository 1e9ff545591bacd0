"""DFT: every rollout, each token's NLL scaled by its detached probability (TRL's ``loss_type="dft"``)."""

from __future__ import annotations

from .rows import RowsLoss


class DFT(RowsLoss):
    name = "dft"
    sft_loss_type = "dft"


LOSS = DFT()
