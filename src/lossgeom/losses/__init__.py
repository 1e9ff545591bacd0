"""The loss registry: one module per loss (its parameters, view and trainer hooks; see :mod:`.base`),
found here by name. Adding a loss is adding a module that defines ``LOSS`` (and its tests): the
registry, the config schema's method parameters (:func:`method_schema`), the method spec and the
trainers all read it from here.

The pure loss functions of the losses this project computes itself are in :mod:`.functions`
(re-exported here).
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Loss, LossParams, MethodSpecError
from .functions import kl_k3, offline_grpo_loss, rift_loss, weighted_nll

# modules of this package that are not losses
_NOT_LOSSES = {"base", "functions", "nll", "pairwise"}
# the order losses are listed in (the paper's six first); a new module not named here comes after them
_ORDER = ("sft", "rft", "dft", "rift", "offline_grpo", "dpo", "ipo", "simpo", "kto", "online_grpo")


def _discover() -> dict[str, Loss]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_LOSSES:
            continue
        loss = importlib.import_module(f"{__name__}.{info.name}").LOSS
        if loss.name in found:
            raise RuntimeError(f"loss {loss.name!r} is defined twice (modules {found[loss.name]} and {info.name})")
        found[loss.name] = loss
    rank = {name: i for i, name in enumerate(_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


LOSSES: dict[str, Loss] = _discover()


def get_loss(name: str, where: str = "") -> Loss:
    """The registered loss called ``name``; one line naming ``where`` and the known losses otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise MethodSpecError(
            f"{where + ': ' if where else ''}unknown loss {name!r}; expected one of {list(LOSSES)}"
        ) from None


def method_schema() -> dict[str, dict]:
    """The JSON-schema properties every loss's parameters add to a method entry (``methods.<m>``), from
    the parameters' declarations; a key two losses share must be declared alike (its description may
    differ: the first is kept)."""
    out: dict[str, dict] = {}
    for loss in LOSSES.values():
        for key, prop in loss.Params.schema().items():
            if key in out and {k: v for k, v in out[key].items() if k != "description"} != {
                k: v for k, v in prop.items() if k != "description"
            }:
                raise RuntimeError(f"loss parameter {key!r} is declared differently by two losses")
            out.setdefault(key, prop)
    return out


__all__ = [
    "LOSSES",
    "Loss",
    "LossParams",
    "MethodSpecError",
    "get_loss",
    "method_schema",
    "kl_k3",
    "offline_grpo_loss",
    "rift_loss",
    "weighted_nll",
]
