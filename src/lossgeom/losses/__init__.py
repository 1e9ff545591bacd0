"""The loss registry: one module per loss (its parameters, view and trainer hooks; see :mod:`.base`),
found here by name. Adding a loss is adding a module that defines ``LOSS`` (and its tests): the
registry, the config schema's method parameters (:func:`method_schema`), the method spec and the
trainers all read it from here.

The rule (:mod:`lossgeom.registry`, shared with the measures): a module of this package is a loss exactly
when it defines ``LOSS``, an instance of a :class:`Loss` subclass with a ``name``. Every module is imported;
one without ``LOSS`` holds what losses share (:mod:`.base`, :mod:`.functions`, :class:`.rows.RowsLoss`,
:class:`.pairwise.PairwiseLoss`). A module that defines a named ``Loss`` subclass but no ``LOSS`` (a loss
whose ``LOSS`` is misspelt) and a ``LOSS`` that is not a named loss stop the import, as does one name in two
modules.

The pure loss functions of the losses this project computes itself are in :mod:`.functions`
(re-exported here).
"""

from __future__ import annotations

from ..registry import discover
from .base import Loss, LossParams, MethodSpecError
from .functions import kl_k3, offline_grpo_loss, rift_loss, weighted_nll

# the order losses are listed in (the paper's six first); a new module not named here comes after them
_ORDER = ("sft", "rft", "dft", "rift", "offline_grpo", "dpo", "ipo", "simpo", "kto", "online_grpo")


def _discover(package: str, path) -> dict[str, Loss]:
    """The losses of ``package`` (its ``__path__``: ``path``) by the rule of the module docstring
    (:func:`lossgeom.registry.discover`), in :data:`_ORDER`."""
    found = discover(package, path, "LOSS", Loss)
    rank = {name: i for i, name in enumerate(_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


LOSSES: dict[str, Loss] = _discover(__name__, __path__)


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
