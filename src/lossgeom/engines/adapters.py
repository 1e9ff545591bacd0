"""What an engine puts on top of its base model: an adapter directory, or a point of the straight path
between two adapters' deltas.

The point ``a`` of the path from adapter 1 to adapter 2 is ``(1 - a) dW1 + a dW2`` per module, itself a
LoRA of rank r1 + r2 (:func:`lossgeom.lora.lowrank.interpolate`): ``B = [(1-a) s1 B1 | a s2 B2]``,
``A = [A1; A2]``, scale 1. Deltas are interpolated, never factors (factor interpolation depends on the
gauge B -> BG, A -> G^-1 A). Two ways to put it on a model, exact to rounding and both rank
``R = max_m(r1 + r2)`` with ``lora_alpha = R`` (scale 1), modules of smaller rank zero-padded (which
leaves B @ A unchanged):

- :class:`LoraPath` (the ``hf`` engine): the base wrapped once in a PEFT LoRA whose factors are
  rewritten in place for each ``a``;
- :func:`save_path_point` (the ``vllm`` engine): a standard PEFT adapter directory per point, served
  as a LoRA request.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..fsutil import atomic_dir
from ..lora.adapters import (
    AdapterMismatchError,
    LoraAdapter,
    UnsupportedAdapterError,
    canonical_module_name,
    check_compatible,
    load_adapter,
)
from ..lora.lowrank import interpolate


def path_rank(first: LoraAdapter, second: LoraAdapter) -> int:
    """The rank of the LoRA that holds every point of the path: ``max_m(r1 + r2)``."""
    return max(first.modules[m].rank + second.modules[m].rank for m in first.modules)


def save_path_point(first: LoraAdapter, second: LoraAdapter, a: float, out_dir: Path) -> Path:
    """Write the path's point ``a`` as a PEFT LoRA directory (rank :func:`path_rank`, scale 1,
    float32 factors, the first adapter's config otherwise). Written atomically; returns ``out_dir``."""
    from safetensors.torch import save_file

    check_compatible([first, second])
    rank = path_rank(first, second)
    tensors = {}
    for key, m1 in first.modules.items():
        m2 = second.modules[key]
        B, A, _ = interpolate(m1.B, m1.A, m1.scale, m2.B, m2.A, m2.scale, float(a))
        r = B.shape[1]
        Bp = np.zeros((B.shape[0], rank), dtype=np.float32)
        Ap = np.zeros((rank, A.shape[1]), dtype=np.float32)
        Bp[:, :r], Ap[:r] = B, A
        prefix = f"base_model.model.{first.module_paths.get(key, 'model.' + key)}"
        tensors[f"{prefix}.lora_A.weight"] = torch.from_numpy(Ap)
        tensors[f"{prefix}.lora_B.weight"] = torch.from_numpy(Bp)
    config = {k: v for k, v in first.config.items() if k not in ("rank_pattern", "alpha_pattern", "use_rslora")}
    config.update(
        {
            "r": rank,
            "lora_alpha": rank,
            "use_rslora": False,
            "rank_pattern": {},
            "alpha_pattern": {},
            "lora_dropout": 0.0,
        }
    )
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return out_dir


class LoraPath:
    """A PEFT model whose adapter is set to any point of the path between two adapters."""

    def __init__(self, base_model, first: LoraAdapter, second: LoraAdapter):
        from peft import LoraConfig, get_peft_model

        check_compatible([first, second])
        self.first, self.second = first, second
        self.rank = path_rank(first, second)
        targets = sorted({name.rsplit(".", 1)[-1] for name in first.modules})
        config = LoraConfig(r=self.rank, lora_alpha=self.rank, lora_dropout=0.0, target_modules=targets, bias="none")
        self.model = get_peft_model(base_model, config)
        self.model.eval()
        self.layers = {}
        for name, module in self.model.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                key = canonical_module_name(name)
                if key in first.modules:
                    self.layers[key] = module
        missing = sorted(set(first.modules) - set(self.layers))
        if missing:
            raise AdapterMismatchError(
                f"the base model has no LoRA target for adapter module(s) {missing[:3]}; is it the adapters' base?"
            )

    @torch.no_grad()
    def set_alpha(self, a: float) -> None:
        """Set every module to (1 - a) dW1 + a dW2."""
        for key, layer in self.layers.items():
            m1, m2 = self.first.modules[key], self.second.modules[key]
            B, A, _ = interpolate(m1.B, m1.A, m1.scale, m2.B, m2.A, m2.scale, float(a))
            wB, wA = layer.lora_B["default"].weight, layer.lora_A["default"].weight
            wB.zero_()
            wA.zero_()
            r = B.shape[1]
            wB[:, :r] = torch.from_numpy(B).to(wB)
            wA[:r, :] = torch.from_numpy(A).to(wA)


def check_adapter_fits(adapter: LoraAdapter, model, base: str) -> None:
    """Raise one :class:`~lossgeom.lora.adapters.AdapterMismatchError` line when a loaded adapter
    (:class:`~lossgeom.lora.adapters.LoraAdapter`) adapts a module ``model`` lacks or one of
    another shape (an adapter of another base model), before PEFT fails with a size-mismatch traceback."""
    linear = {
        canonical_module_name(n): tuple(m.weight.shape)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    for name, delta in adapter.modules.items():
        found = linear.get(name)
        if found != delta.shape:
            what = "has no such linear module" if found is None else f"has (d_out, d_in) = {found}"
            raise AdapterMismatchError(
                f"{adapter.source}: adapter of base model {adapter.base_model_name_or_path!r} does not fit {base}: "
                f"module {name!r} is {delta.shape} in the adapter, the model {what}"
            )


def merge_adapter(model, adapter: Path, base: str):
    """``model`` with the PEFT adapter directory ``adapter`` merged into its weights. A LoRA adapter is
    read and checked first (:func:`~lossgeom.lora.adapters.load_adapter`, :func:`check_adapter_fits`),
    so a truncated file, a missing factor or an adapter of another base model stops with one line naming
    it; variants the geometry cannot read (DoRA, ...) are left to PEFT, which merges them."""
    from peft import PeftModel

    try:
        check_adapter_fits(load_adapter(adapter), model, base)
    except UnsupportedAdapterError:  # still a file PEFT must be able to read
        from safetensors import SafetensorError, safe_open

        weights = Path(adapter) / "adapter_model.safetensors"
        try:
            with safe_open(str(weights), framework="np"):
                pass
        except (SafetensorError, OSError) as e:
            raise AdapterMismatchError(f"{weights}: not a readable safetensors file ({e})") from None
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
