"""SFT: the NLL of every rollout, correct or not (TRL's SFTTrainer loss, ``loss_type="nll"``)."""

from __future__ import annotations

from .rows import RowsLoss


class SFT(RowsLoss):
    name = "sft"
    sft_loss_type = "nll"


LOSS = SFT()
