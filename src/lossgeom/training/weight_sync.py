"""The policy's weights sent to TRL's colocated vLLM, built out of place, so the frozen base never moves.

Why (read in TRL 1.16, ``trl/generation/vllm_generation.py``, ``VLLMGeneration._iter_named_params``): for a
PEFT model every ``sync_weights`` (each step online GRPO samples) calls ``model.merge_adapter()``, reads the
merged weights, then ``model.unmerge_adapter()``. PEFT merges and unmerges in place in the base weight's
dtype (``peft/tuners/lora/layer.py``: ``base_layer.weight.data += delta`` then ``-= delta``), so in bf16 each
round trip leaves the rounding of ``(W + d) - d`` in ``W``; it compounds over syncs (TRL issue #6688 measured
the drift growing while fp32 stays flat). Over 600 steps the "frozen" base is no longer the base, and online
GRPO's delta, its KL and forgetting would be measured against a base it was not trained from.

:func:`merged_params` yields what TRL's own iteration yields (the same names, in the same order, the same
values as PEFT's first merge: ``W + delta`` rounded once to W's dtype, where PEFT's ``get_delta_weight`` is the
delta), computed in new tensors; :func:`keep_base_exact` puts it in place of TRL's iteration on a trainer.
Sharded models (FSDP) keep TRL's own path: their jobs span several GPUs, which no rule asks for yet.
"""

from __future__ import annotations

import logging
from typing import Iterator

import torch

log = logging.getLogger(__name__)


def _lora_deltas(model) -> dict[str, torch.Tensor]:
    """``{"<module>.base_layer.weight": delta}`` for every LoRA layer with an active adapter (PEFT's own
    ``get_delta_weight``: ``scaling * B @ A``, in the base weight's dtype, transposed for fan_in_fan_out)."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or module.disable_adapters or module.merged:
            continue
        delta = None
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                d = module.get_delta_weight(adapter)
                delta = d if delta is None else delta + d
        if delta is not None:
            deltas[f"{name}.base_layer.weight"] = delta
    return deltas


def merged_params(model, fix_name=lambda name, extra_prefixes=None: name) -> Iterator[tuple[str, torch.Tensor]]:
    """(vLLM name, weight) of every parameter of the PEFT ``model`` as merged with its active adapter, with
    no write to the model: a LoRA-wrapped weight is ``(W.float() + delta.float()).to(W.dtype)``, a new tensor
    (the value PEFT's in-place ``W += delta`` gives on its first merge); every other parameter is yielded
    as it is. Names and order as TRL's ``_iter_named_params`` (``fix_name`` is its ``_fix_param_name_to_vllm``)."""
    deltas = _lora_deltas(model)
    for name, param in model.named_parameters():
        if model.prefix in name or "original_module" in name:  # the adapter's own tensors; a replaced module
            continue
        data = param.data
        if name in deltas:
            data = (data.float() + deltas[name].float()).to(data.dtype)
        vname = name.removeprefix("base_model.model.").replace(".base_layer", "")
        yield fix_name(vname, extra_prefixes=["modules_to_save.default."]), data


def keep_base_exact(trainer) -> bool:
    """Make ``trainer``'s vLLM weight sync (TRL's ``VLLMGeneration``) build merged weights out of place.
    Returns whether it did (False: no vLLM generation, not a PEFT model, or a sharded model)."""
    from peft import PeftModel

    gen = getattr(trainer, "vllm_generation", None)
    if gen is None or not isinstance(gen.model, PeftModel):
        return False
    if gen._dist.is_fsdp:
        log.warning("online GRPO with FSDP: TRL merges the adapter in place for each weight sync (bf16 drift)")
        return False

    def iter_named_params():
        model = gen.model
        with gen._dist.gather_params(list(model.parameters())):  # a no-op unless DeepSpeed ZeRO-3
            yield from merged_params(model, gen._fix_param_name_to_vllm)

    gen._iter_named_params = iter_named_params
    return True
