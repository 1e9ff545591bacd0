"""The one trainer of the offline losses (``Loss.trainer == "offline"``: SFT, RFT, DFT, RIFT, Offline
GRPO), built on TRL's SFTTrainer, and the callbacks every training job uses (TRL's own trainers,
for DPO and the rest, get the same callbacks).

``OfflineLossTrainer`` takes pre-tokenised rows (input_ids, completion_mask) plus two per-row
numbers, ``row_weight`` (GRPO advantage; 1 otherwise) and ``row_reward`` (0/1). A loss with an
``sft_loss_type`` (SFT, RFT: ``"nll"``; DFT: ``"dft"``) defers to TRL's own ``compute_loss``; the
others (RIFT, Offline GRPO) run one fused forward (TRL's fused LM head: per-token log-probs without
materialising the logits) and their registered ``token_loss`` (:mod:`lossgeom.losses`).
"""

from __future__ import annotations

import json
import math
import time

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from ..errors import InputError

ROW_FIELDS = ("row_weight", "row_reward")
# what a NonFiniteError's line says to do
NON_FINITE_FIX = "lower the method's learning_rate (or check its loss parameters) and rerun"


class NonFiniteError(InputError, FloatingPointError):
    """The loss or a gradient became NaN/inf; the job stops and writes no adapter. An input error (the fix is
    a setting: a lower learning rate, another dtype), so the CLI prints it as one line; still a
    FloatingPointError for callers that catch that."""


class RowFieldsCollator:
    """Wraps TRL's collator: collates the token fields as TRL does and adds the per-row numbers as float
    tensors: shape (batch,) for a padded batch; for a padding-free one (TRL's collator concatenates the
    rows into one, with ``seq_idx`` (1, N) the row of each token) each row's number on each of its
    tokens, shape (1, N), so the losses weigh tokens the same way either way."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples):
        extra = {
            f: torch.tensor([float(e.pop(f)) for e in examples], dtype=torch.float32)
            for f in ROW_FIELDS
            if f in examples[0]
        }
        batch = self.inner(examples)
        if "seq_idx" in batch:
            rows = batch["seq_idx"][0].long()
            extra = {f: v[rows][None] for f, v in extra.items()}
        batch.update(extra)
        return batch


class OfflineLossTrainer(SFTTrainer):
    """SFTTrainer with the offline losses of this study; ``loss_spec`` is the method's
    :class:`~lossgeom.methods.MethodSpec`."""

    def __init__(self, *args, loss_spec, **kwargs):
        self.loss_spec = loss_spec
        super().__init__(*args, **kwargs)
        self.data_collator = RowFieldsCollator(self.data_collator)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *ROW_FIELDS]))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weights = inputs.pop("row_weight")
        rewards = inputs.pop("row_reward")
        loss_def = self.loss_spec.loss_def
        if loss_def.sft_loss_type is not None:  # TRL's own loss (SFTConfig.loss_type, set by the job)
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        else:
            inputs["use_cache"] = False
            outputs = model(**inputs, fused_lm_head=True)
            mask = outputs.label_mask.to(outputs.log_probs.dtype)
            num_tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
            num_tokens = torch.as_tensor(num_tokens, device=mask.device).clamp(min=1)
            logp = outputs.log_probs
            seq_idx = None
            if weights.dim() == 2:  # padding-free: per input token; the log-probs are of each next token
                shift = weights.shape[1] - logp.shape[1]
                weights, rewards, seq_idx = weights[:, shift:], rewards[:, shift:], inputs["seq_idx"][:, shift:]
            loss = loss_def.token_loss(self.loss_spec, model, inputs, logp, mask, weights, rewards, num_tokens, seq_idx)
            if self.model.training:
                self._metrics["train"]["mean_logp"].append(float((logp * mask).sum() / mask.sum().clamp(min=1)))
            loss = (loss, outputs) if return_outputs else loss
        check_finite(loss[0] if isinstance(loss, tuple) else loss, "loss")
        return loss


def check_finite(value: torch.Tensor, what: str) -> None:
    if not torch.isfinite(value).all():
        raise NonFiniteError(
            f"non-finite {what} ({value.detach().float().cpu().tolist()}); training stopped, no adapter written; "
            + NON_FINITE_FIX
        )


class FiniteGradCallback(TrainerCallback):
    """Stops training when any gradient is NaN/inf, before the optimiser applies it."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for name, p in model.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                raise NonFiniteError(
                    f"non-finite gradient in {name} at step {state.global_step + 1}; no adapter written; "
                    + NON_FINITE_FIX
                )


class SaveAdapterCallback(TrainerCallback):
    """Saves the trained adapter (PEFT format) at each step in ``steps`` into ``out_root/step{N}``.

    Only the ``default`` adapter is saved: TRL's DPOTrainer adds a frozen copy of the initial adapter
    named ``ref`` as its reference, which equals the base model because LoRA's B starts at zero.
    """

    def __init__(self, steps, out_root):
        self.steps = set(steps)
        self.out_root = out_root

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            out = self.out_root / f"step{state.global_step}"
            model.save_pretrained(str(out), selected_adapters=["default"])
            # PEFT writes target_modules from a set, in an order that changes with the process's hash
            # seed: sorted, the same run gives the same bytes (a resumed job included).
            path = out / "adapter_config.json"
            config = json.loads(path.read_text())
            if isinstance(config.get("target_modules"), list):
                config["target_modules"] = sorted(config["target_modules"])
                path.write_text(json.dumps(config, indent=2, sort_keys=True))


class MetricsCallback(TrainerCallback):
    """Adds ``tokens_per_s`` (completion+prompt tokens since the previous log row, per second) to each
    training row of ``state.log_history``, which a resumed run restores from its checkpoint."""

    def __init__(self):
        self._last = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not state.log_history:
            return
        now = time.perf_counter()
        tokens = logs.get("num_tokens")
        if self._last is not None and tokens is not None and now > self._last[0]:
            state.log_history[-1]["tokens_per_s"] = (float(tokens) - float(self._last[1])) / (now - self._last[0])
        self._last = (now, tokens) if tokens is not None else None


METRIC_COLUMNS = ["step", "loss", "grad_norm", "learning_rate", "num_tokens", "tokens_per_s"]


def metrics_table(log_history: list[dict]):
    """One row per training log step: the ``METRIC_COLUMNS`` first, then loss-specific extras."""
    import pandas as pd

    rows = [r for r in log_history if "loss" in r]
    df = pd.DataFrame(rows)
    for c in METRIC_COLUMNS:
        if c not in df:
            df[c] = math.nan
    extras = [c for c in df.columns if c not in METRIC_COLUMNS and c not in ("epoch",)]
    return df[METRIC_COLUMNS + extras]
