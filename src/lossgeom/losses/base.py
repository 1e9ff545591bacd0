"""What a loss is to the rest of the project: its typed parameters and the hooks the stages call.

Every loss is one module of this package holding a :class:`LossParams` subclass (its parameters, with
their defaults and documentation, as TRL's ``XConfig`` classes) and a :class:`Loss` subclass (its view
of the rollouts and its trainer or loss function), instantiated once as the module's ``LOSS``; the
package's registry finds it by name. No view, trainer or job branches on a loss's name (only
:func:`lossgeom.config.claim_roles` names losses: the paper's six methods and its extra runs).

Two kinds of trainer (``Loss.trainer``):

- ``"offline"``: :class:`lossgeom.training.trainers.OfflineLossTrainer` on pre-tokenised rows with a
  per-row ``weight`` and ``reward``; either TRL's SFTTrainer computes the loss itself
  (``sft_loss_type``: ``"nll"`` or ``"dft"``) or :meth:`Loss.token_loss` does, from per-token
  log-probabilities.
- ``"trl"``: one of TRL's own trainers (``trl_trainers``: where TRL keeps its config and trainer
  classes), with :meth:`Loss.trl_args` and :meth:`Loss.dataset`.

This module imports nothing heavy: the workflow reads the registry when it validates a config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Mapping

from ..errors import InputError
from ..settings import Settings, setting


class ViewError(InputError):
    """The rollouts give a method nothing to train on; the message has the method and the counts."""


class MethodSpecError(InputError):
    """A method spec is incomplete or inconsistent; the message names the method and the key."""


# a loss parameter is declared as any setting is: its default, its JSON-schema and its doc
param = setting


@dataclass(frozen=True)
class LossParams(Settings):
    """A loss's own parameters (none for the base class). Fields are declared with :func:`param`."""

    def check(self, where: str) -> None:
        """Stop with a :class:`MethodSpecError` naming ``where`` when a value is out of its range
        (the schema checks a config; this checks a spec built by hand too)."""
        for f in dataclasses.fields(self):
            schema, value = f.metadata.get("schema", {}), getattr(self, f.name)
            if "enum" in schema and value not in schema["enum"]:
                raise MethodSpecError(f"{where}: {f.name} {value!r} is not one of {schema['enum']}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if "minimum" in schema and value < schema["minimum"]:
                    raise MethodSpecError(f"{where}: {f.name} {value!r} must be >= {schema['minimum']}")
                if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
                    raise MethodSpecError(f"{where}: {f.name} {value!r} must be > {schema['exclusiveMinimum']}")


class Loss:
    """One training loss (see the module docstring). Subclasses set the class attributes and override
    the hooks of their trainer kind."""

    name: ClassVar[str]
    Params: ClassVar[type[LossParams]] = LossParams
    trainer: ClassVar[str] = "offline"
    # offline losses TRL's SFTTrainer computes itself (its ``loss_type``); None: :meth:`token_loss`
    sft_loss_type: ClassVar[str | None] = None
    # (module, config class, trainer class) where TRL keeps this loss's trainer, in order of preference
    trl_trainers: ClassVar[tuple[tuple[str, str, str], ...]] = ()
    # parameters whose default (None) is the key of the same name in the config's rollouts section
    from_rollouts: ClassVar[tuple[str, ...]] = ()
    # whether a truncated rollout may be trained without EOS (``truncated: no_eos``): the losses whose
    # rows this project tokenises; TRL's trainers append EOS to every completion
    eos_optional: ClassVar[bool] = True
    # whether the view drops truncated rollouts under ``truncated: drop`` (online GRPO samples its own)
    reads_completions: ClassVar[bool] = True
    # what one example costs (lossgeom.cost_model, which sizes the train job's time limit): sequences through a
    # training pass, and sequences through a forward without gradients (a reference's log-probs); stated where set
    train_sequences: ClassVar[float] = 1.0
    forward_sequences: ClassVar[float] = 0.0

    # -- resolution --------------------------------------------------------------------------------
    def resolve(self, values: dict, config: Mapping) -> None:
        """Fill, in ``values`` (the method's resolved keys), the defaults taken from elsewhere in the
        config: ``from_rollouts`` keys left at None come from the rollouts section."""
        for key in self.from_rollouts:
            if values.get(key) is None:
                values[key] = config["rollouts"].get(key)

    def cost_sequences(self, spec) -> tuple[float, float]:
        """(sequences through a training pass, sequences through a forward) per example of ``spec``."""
        return self.train_sequences, self.forward_sequences

    def check_spec(self, spec, where: str) -> None:
        """Checks that need the shared settings too (e.g. a batch that must hold whole groups)."""

    # -- data ----------------------------------------------------------------------------------------
    def view(self, rollouts, rows, spec, seed: int, counts: dict):
        """The rows this loss trains on. ``rollouts``: the table (truncated rows already dropped where
        the spec says so); ``rows``: its prompt_id, prompt, completion, reward and eos columns; ``counts``
        (rollouts, correct, prompts, mixed_groups, ...) may be extended. Raises ``ViewError`` when empty."""
        raise NotImplementedError

    # -- offline trainer -------------------------------------------------------------------------------
    def token_loss(self, spec, model, inputs, logp, mask, weights, rewards, num_tokens, seq_idx=None):
        """The loss of one micro-batch from per-token log-probs ``logp`` and ``mask`` (batch, T), per-row
        ``weights`` and ``rewards`` (batch,), normalised by ``num_tokens`` (see :mod:`.functions`). A
        padding-free batch has batch 1, the weights and rewards per token (1, T) and ``seq_idx`` (1, T),
        the row of each token, all aligned with ``logp``."""
        raise NotImplementedError(f"loss {self.name!r} has no token loss")

    # -- TRL trainer -----------------------------------------------------------------------------------
    def trl_args(self, spec) -> dict:
        """This loss's keyword arguments of its TRL config class."""
        raise NotImplementedError(f"loss {self.name!r} is not trained by TRL")

    def dataset(self, view, tokenizer, template: str):
        """The view as the ``datasets.Dataset`` its TRL trainer reads."""
        raise NotImplementedError(f"loss {self.name!r} is not trained by TRL")

    def trainer_kwargs(self, spec, view, args: dict) -> dict:
        """Extra keyword arguments of the TRL trainer (e.g. reward functions); may adjust ``args``."""
        return {}
