"""The method spec: everything one training job depends on, typed, frozen and validated in one place.

A method entry of the config (``methods.<name>``) names a loss and may override the optimisation
keys of ``training``; :meth:`MethodSpec.from_config` resolves it (method keys over ``training``
over the built-in defaults below) together with the LoRA recipe, the save schedule and the prompt
template. The train rule passes :meth:`MethodSpec.to_json` to ``lossgeom train --spec``, which
rebuilds it with :meth:`MethodSpec.from_dict`; both ways go through the same checks
(``__post_init__``), so a spec that reaches a trainer is whole and consistent.

Precedence and defaults are part of the study's record: ``train_info.json`` stores
:meth:`MethodSpec.to_dict`, and the checkpoint fingerprint hashes it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

from .losses import LOSSES as LOSS_REGISTRY
from .losses import Loss, LossParams, MethodSpecError, get_loss
from .settings import LoraSettings, ModelSettings, TrainingSettings

# Keys of ``training`` a method entry may override (a method with fewer ``steps``, such as online
# GRPO, sets its own ``save_steps`` and ``analysis_step`` too).
OPTIM_KEYS = (
    "learning_rate",
    "steps",
    "batch_size",
    "grad_accum",
    "warmup_ratio",
    "weight_decay",
    "save_steps",
    "analysis_step",
    "checkpoint_every",
    "truncated",
    "padding_free",
    "group_by_length",
)
TRUNCATED_POLICIES = tuple(TrainingSettings.schema()["truncated"]["enum"])
# Per loss: its own parameters and their built-in defaults, from the loss registry (one module per
# loss: lossgeom.losses); the names, in the registry's order, kept here for other modules.
LOSS_NAMES = tuple(LOSS_REGISTRY)
LOSS_DEFAULTS: dict[str, dict[str, Any]] = {name: loss.Params.defaults() for name, loss in LOSS_REGISTRY.items()}
LOSS_KEYS = {name: loss.Params.keys() for name, loss in LOSS_REGISTRY.items()}
ALL_LOSS_KEYS = tuple(dict.fromkeys(k for keys in LOSS_KEYS.values() for k in keys))
# The keys of ``training`` and ``lora`` a config may leave out, with their defaults (their one place:
# lossgeom.settings), and the keys a method entry may override.
TRAINING_DEFAULTS: dict[str, Any] = TrainingSettings.defaults()
LORA_DEFAULTS: dict[str, Any] = LoraSettings.defaults()
_T = TRAINING_DEFAULTS


@dataclass(frozen=True)
class LoraSpec:
    """The LoRA recipe shared by every method: ``dW = s B A`` with ``s = alpha / r`` (rsLoRA:
    ``alpha / sqrt(r)``) on ``target_modules``; ``B`` starts at zero, ``A`` from the seed."""

    target_modules: tuple[str, ...]
    r: int
    alpha: float
    dropout: float = LORA_DEFAULTS["dropout"]
    use_rslora: bool = LORA_DEFAULTS["use_rslora"]

    def to_dict(self) -> dict:
        return {
            "target_modules": list(self.target_modules),
            "r": self.r,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "use_rslora": self.use_rslora,
        }


@dataclass(frozen=True)
class MethodSpec:
    """One method's resolved training spec: the shared training and LoRA settings and the loss's own
    parameters (``params``, the loss's :class:`~lossgeom.losses.base.LossParams`).

    Attributes:
        method: the config's name for it (``"dpo_lrmatched"``); loss: one of :data:`LOSS_NAMES`.
        lora: the LoRA recipe. prompt_template: ``str.format`` template with ``{question}``.
        steps: optimiser steps; save_steps: sorted steps whose adapters are kept (always holding
            ``analysis_step``, the step every later stage reads); checkpoint_every: steps between
            resumable checkpoints (``None``: a quarter of ``steps``).
        batch_size, grad_accum: rows per device step and steps accumulated per optimiser step.
        learning_rate (peak), lr_scheduler, warmup_ratio (fraction of ``steps``), weight_decay,
        max_grad_norm, max_length (tokens of prompt + completion), precision (``fp32`` | ``bf16``),
        threads (CPU threads for torch). padding_free: rows concatenated without padding (the offline
            trainer only; see the training settings). group_by_length: batches of pairs of similar length
            (TRL's pairwise trainers only; see the training settings). truncated: what training does with
            a rollout cut at the token limit (``finish_reason == "length"``): ``drop`` it (the default) or train it
            without EOS (``no_eos``: losses whose ``eos_optional`` is set, those whose rows this
            project tokenises), so the student never learns to stop mid-derivation.
        data_seed: the data-order seed for every seed of this method (``None``: the job's seed).
        params: the loss's parameters, documented where its module declares them
            (``lossgeom/losses/<loss>.py``).

    The serialised form (:meth:`to_dict`) is flat: the shared keys and the loss's parameters side by side,
    as a config's method entry writes them.
    """

    method: str
    loss: str
    lora: LoraSpec
    steps: int
    save_steps: tuple[int, ...]
    analysis_step: int
    batch_size: int
    learning_rate: float
    params: LossParams
    grad_accum: int = _T["grad_accum"]
    lr_scheduler: str = _T["lr_scheduler"]
    warmup_ratio: float = _T["warmup_ratio"]
    weight_decay: float = _T["weight_decay"]
    max_grad_norm: float = _T["max_grad_norm"]
    max_length: int = _T["max_length"]
    precision: str = _T["precision"]
    data_seed: int | None = _T["data_seed"]
    threads: int = _T["threads"]
    truncated: str = _T["truncated"]
    padding_free: bool = _T["padding_free"]
    group_by_length: bool = _T["group_by_length"]
    checkpoint_every: int | None = _T["checkpoint_every"]
    prompt_template: str = ModelSettings.defaults()["prompt_template"]

    def __post_init__(self):
        where = f"method {self.method!r}"
        loss = get_loss(self.loss, where)
        if type(self.params) is not loss.Params:
            raise MethodSpecError(
                f"{where}: params of loss {self.loss!r} must be {loss.Params.__name__}, "
                f"got {type(self.params).__name__}"
            )
        unset = [k for k, v in dataclasses.asdict(self.params).items() if v is None]
        if unset:
            raise MethodSpecError(f"{where}: loss {self.loss!r} needs {unset[0]!r}")
        self.params.check(where)
        loss.check_spec(self, where)
        if self.truncated not in TRUNCATED_POLICIES:
            raise MethodSpecError(f"{where}: truncated {self.truncated!r} is not one of {list(TRUNCATED_POLICIES)}")
        if self.truncated == "no_eos" and not loss.eos_optional:
            raise MethodSpecError(
                f"{where}: truncated 'no_eos' does not apply to loss {self.loss!r} (TRL's trainer "
                f"appends EOS to every completion); set methods.{self.method}.truncated: drop"
            )
        if self.precision not in ("fp32", "bf16"):
            raise MethodSpecError(f"{where}: precision {self.precision!r} is not 'fp32' or 'bf16'")
        if list(self.save_steps) != sorted(set(self.save_steps)) or self.analysis_step not in self.save_steps:
            raise MethodSpecError(
                f"{where}: save_steps {list(self.save_steps)} must be sorted, unique and hold "
                f"analysis_step {self.analysis_step}"
            )
        if self.save_steps[-1] > self.steps:
            raise MethodSpecError(
                f"{where}: training.analysis_step/save_steps value {self.save_steps[-1]} exceeds "
                f"methods.{self.method} steps {self.steps}; set methods.{self.method}.save_steps and "
                "analysis_step for a shorter method"
            )

    # -- derived ---------------------------------------------------------------------------------
    @property
    def loss_def(self) -> Loss:
        """The registered loss this spec trains (its view and trainer hooks)."""
        return LOSS_REGISTRY[self.loss]

    @property
    def checkpoint_interval(self) -> int:
        """Steps between resumable checkpoints."""
        return self.checkpoint_every if self.checkpoint_every is not None else max(1, self.steps // 4)

    def data_order_seed(self, seed: int) -> int:
        """The seed of the data order for a job of ``seed`` (the init seed is always ``seed``)."""
        return self.data_seed if self.data_seed is not None else seed

    def with_data_seed(self, data_seed: int) -> "MethodSpec":
        """This spec with the data-order seed fixed to ``data_seed`` (a data-order replicate)."""
        return dataclasses.replace(self, data_seed=int(data_seed))

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping, method: str) -> "MethodSpec":
        """Resolve ``config['methods'][method]`` (see the module docstring); the config is not changed."""
        if method not in config["methods"]:
            raise MethodSpecError(f"method {method!r} is not in the config's methods {sorted(config['methods'])}")
        entry = config["methods"][method]
        name = entry.get("loss")
        if name not in LOSS_REGISTRY:
            raise MethodSpecError(f"methods.{method}.loss {name!r} is not one of {list(LOSS_NAMES)}")
        loss = LOSS_REGISTRY[name]
        allowed = {"loss", "description", "seeds", *OPTIM_KEYS, *loss.Params.keys()}
        extra = sorted(set(entry) - allowed)
        if extra:
            raise MethodSpecError(
                f"methods.{method}.{extra[0]} does not apply to loss {name!r}; allowed: {sorted(allowed)}"
            )
        values = {**TRAINING_DEFAULTS, **config["training"], **loss.Params.defaults()}
        values.update({k: v for k, v in entry.items() if k not in ("description", "seeds")})  # not training settings
        loss.resolve(values, config)
        values["method"] = method
        values["lora"] = {**LORA_DEFAULTS, **config["lora"]}
        values["save_steps"] = sorted(set(values["save_steps"]) | {values["analysis_step"]})
        values["prompt_template"] = ModelSettings.filled(config["model"])["prompt_template"]
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, d: Mapping) -> "MethodSpec":
        """Rebuild a spec from :meth:`to_dict` (e.g. the JSON the train rule passes): the shared keys and
        the loss's parameters, flat."""
        where = f"method {d.get('method', '?')!r}"
        loss = get_loss(d.get("loss"), where)
        shared = {f.name for f in dataclasses.fields(cls)} - {"params"}
        unknown = sorted(set(d) - shared - set(loss.Params.keys()))
        if unknown:
            if unknown[0] in ALL_LOSS_KEYS:
                raise MethodSpecError(
                    f"{where}: {unknown[0]!r} does not apply to loss {loss.name!r}; its keys: "
                    f"{list(loss.Params.keys())}"
                )
            raise MethodSpecError(f"{where}: unknown spec key {unknown[0]!r}")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.name not in d and f.name != "params"
        )
        if missing:
            raise MethodSpecError(f"{where}: spec lacks {missing[0]!r}")
        values = {k: v for k, v in d.items() if k in shared}
        lora = values["lora"]
        if not isinstance(lora, LoraSpec):
            lora_fields = {f.name for f in dataclasses.fields(LoraSpec)}
            bad = sorted(set(lora) - lora_fields)
            if bad:
                raise MethodSpecError(f"{where}: unknown lora key {bad[0]!r}")
            lora = LoraSpec(**{**lora, "target_modules": tuple(lora["target_modules"])})
        values["lora"] = lora
        values["save_steps"] = tuple(values["save_steps"])
        absent = [k for k in loss.Params.keys() if k not in d]  # the serialised form holds every parameter
        if absent:
            raise MethodSpecError(f"{where}: loss {loss.name!r} needs {absent[0]!r}")
        values["params"] = loss.Params(**{k: d[k] for k in loss.Params.keys()})
        return cls(**values)

    def to_dict(self) -> dict:
        """A flat JSON-able dict: the shared keys, this loss's own parameters, ``lora`` as a dict;
        ``checkpoint_every`` only when set."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "params" or (f.name == "checkpoint_every" and v is None):
                continue
            out[f.name] = v
        out.update(dataclasses.asdict(self.params))
        out["lora"] = self.lora.to_dict()
        out["save_steps"] = list(self.save_steps)
        return out

    def to_json(self) -> str:
        """Compact, key-sorted JSON: a stable rule param (Snakemake reruns a job when it changes)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
