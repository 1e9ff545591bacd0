"""Linear mode connectivity: the straight path between two adapters' deltas, as one LoRA.

The point ``a`` of the path from adapter 1 to adapter 2 is ``(1 - a) dW1 + a dW2`` per module, itself a
LoRA of rank r1 + r2 (``lowrank.interpolate``): ``B = [(1-a) s1 B1 | a s2 B2]``, ``A = [A1; A2]``,
scale 1. Deltas are interpolated, never factors (factor interpolation depends on the gauge
B -> BG, A -> G^-1 A). ``LoraPath`` wraps the base model once in a PEFT LoRA of rank
max_m(r1 + r2) with scale 1 (lora_alpha = r) and rewrites its factors for each ``a``; modules of
smaller rank are zero-padded, which leaves B @ A unchanged. a = 0 is adapter 1, a = 1 adapter 2.

``barrier`` summarises a curve: the largest excess of the curve over the straight line between its
endpoints (for a loss; for an accuracy, the largest shortfall below it).
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry.adapters import LoraAdapter, canonical_module_name, check_compatible
from ..geometry.lowrank import interpolate


def alpha_grid(n: int) -> np.ndarray:
    """``n`` evenly spaced points in [0, 1], endpoints included (n >= 2)."""
    if n < 2:
        raise ValueError(f"an interpolation grid needs at least 2 points, got {n}")
    return np.linspace(0.0, 1.0, n)


def barrier(alphas, values, higher_is_better: bool = False) -> float:
    """max_a [curve(a) - ((1-a) curve(0) + a curve(1))] for a loss; the sign is flipped for an
    accuracy. 0 means the curve never rises above (falls below) the line; NaN if an endpoint is NaN."""
    a, v = np.asarray(alphas, float), np.asarray(values, float)
    order = np.argsort(a)
    a, v = a[order], v[order]
    if a[0] != 0.0 or a[-1] != 1.0:
        raise ValueError("the alpha grid must include both endpoints 0 and 1")
    line = (1 - a) * v[0] + a * v[-1]
    excess = (line - v) if higher_is_better else (v - line)
    return float(max(0.0, np.nanmax(excess))) if np.isfinite([v[0], v[-1]]).all() else float("nan")


class LoraPath:
    """A PEFT model whose adapter is set to any point of the path between two adapters."""

    def __init__(self, base_model, first: LoraAdapter, second: LoraAdapter):
        from peft import LoraConfig, get_peft_model

        check_compatible([first, second])
        self.first, self.second = first, second
        self.rank = max(first.modules[m].rank + second.modules[m].rank for m in first.modules)
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
            raise ValueError(f"the base model has no LoRA target for adapter module(s) {missing[:3]}; is it the adapters' base?")

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
