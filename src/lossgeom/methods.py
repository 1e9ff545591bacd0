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

# Keys of ``training`` a method entry may override (a method with fewer ``steps``, such as online
# GRPO, sets its own ``save_steps`` and ``analysis_step`` too).
OPTIM_KEYS = ("learning_rate", "steps", "batch_size", "grad_accum", "warmup_ratio", "weight_decay",
              "save_steps", "analysis_step", "checkpoint_every", "truncated")
# Losses whose rows this project tokenises itself (EOS appended by lossgeom.data.prompting), so a
# truncated rollout can be trained without EOS; TRL's trainers append EOS to every completion.
OWN_TOKENISED_LOSSES = ("sft", "rft", "dft", "rift", "offline_grpo")
TRUNCATED_POLICIES = ("drop", "no_eos")
# Per loss: its own parameters and their built-in defaults (the losses' documentation: README).
LOSS_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {},
    "rft": {},
    "dft": {},
    "rift": {"positive_reward": 1.0, "negative_reward": -0.2, "negative_prob": "token"},
    "offline_grpo": {"bias": 0.1, "std_normalize": False, "kl_coef": 0.0, "all_wrong": "zero"},
    "dpo": {"beta": 0.1, "dpo_loss_type": "sigmoid", "pairs_per_prompt": 1},
    # The contrastive family, each on TRL's own trainer (README, "The contrastive family"): IPO is
    # DPOTrainer(loss_type="ipo"); SimPO is CPOTrainer(loss_type="simpo", cpo_alpha=0); KTO is KTOTrainer.
    "ipo": {"beta": 0.1, "pairs_per_prompt": 1},
    "simpo": {"beta": 2.0, "simpo_gamma": 1.0, "pairs_per_prompt": 1},
    "kto": {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
    # Online GRPO on TRL's GRPOTrainer. ``None``: taken from the config's rollout section
    # (:data:`FROM_ROLLOUTS`), so the online samples share the offline rollouts' length, temperature
    # and grader unless the method says otherwise; ``generation`` from ``generation.stages.training``.
    "online_grpo": {"num_generations": 4, "max_new_tokens": None, "temperature": None, "grader": None,
                    "kl_coef": 0.0, "std_normalize": True, "grpo_loss_type": "dapo", "generation": None},
}
# Loss parameters whose default is the rollout section's key of the same name.
FROM_ROLLOUTS = ("max_new_tokens", "temperature", "grader")
# Losses trained on (chosen, rejected) pairs of one prompt by the seeded rule of ``views.dpo_pairs``.
PAIRWISE_LOSSES = ("dpo", "ipo", "simpo")
LOSSES = tuple(LOSS_DEFAULTS)
LOSS_KEYS = {loss: tuple(d) for loss, d in LOSS_DEFAULTS.items()}
ALL_LOSS_KEYS = tuple(dict.fromkeys(k for d in LOSS_DEFAULTS.values() for k in d))
TRAINING_DEFAULTS: dict[str, Any] = {
    "grad_accum": 1,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.05,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "max_length": 1024,
    "precision": "fp32",
    "data_seed": None,
    "threads": 1,
    "truncated": "drop",
}
LORA_DEFAULTS = {"dropout": 0.0, "use_rslora": False}


class MethodSpecError(ValueError):
    """A method spec is incomplete or inconsistent; the message names the method and the key."""


@dataclass(frozen=True)
class LoraSpec:
    """The LoRA recipe shared by every method: ``dW = s B A`` with ``s = alpha / r`` (rsLoRA:
    ``alpha / sqrt(r)``) on ``target_modules``; ``B`` starts at zero, ``A`` from the seed."""

    target_modules: tuple[str, ...]
    r: int
    alpha: float
    dropout: float = 0.0
    use_rslora: bool = False

    def to_dict(self) -> dict:
        return {"target_modules": list(self.target_modules), "r": self.r, "alpha": self.alpha,
                "dropout": self.dropout, "use_rslora": self.use_rslora}


@dataclass(frozen=True)
class MethodSpec:
    """One method's resolved training spec.

    Attributes:
        method: the config's name for it (``"dpo_lrmatched"``); loss: one of :data:`LOSSES`.
        lora: the LoRA recipe. prompt_template: ``str.format`` template with ``{question}``.
        steps: optimiser steps; save_steps: sorted steps whose adapters are kept (always holding
            ``analysis_step``, the step every later stage reads); checkpoint_every: steps between
            resumable checkpoints (``None``: a quarter of ``steps``).
        batch_size, grad_accum: rows per device step and steps accumulated per optimiser step.
        learning_rate (peak), lr_scheduler, warmup_ratio (fraction of ``steps``), weight_decay,
        max_grad_norm, max_length (tokens of prompt + completion), precision (``fp32`` | ``bf16``),
        threads (CPU threads for torch). truncated: what training does with a rollout cut at the
            token limit (``finish_reason == "length"``): ``drop`` it (the default) or train it
            without EOS (``no_eos``: the losses of :data:`OWN_TOKENISED_LOSSES` only), so the
            student never learns to stop mid-derivation.
        data_seed: the data-order seed for every seed of this method (``None``: the job's seed).
        positive_reward, negative_reward: RIFT's rewards; negative_prob: ``token`` | ``sequence``,
        the probability in RIFT's negative term (see :func:`lossgeom.training.losses.rift_loss`).
        bias, std_normalize, kl_coef: offline GRPO's advantage bias ``b``, group-std normalisation
        and k3-KL coefficient; all_wrong: ``zero`` | ``bias``, the advantage of a group whose
        rollouts are all wrong (see :func:`lossgeom.training.views.grpo_advantages`). beta,
        dpo_loss_type, pairs_per_prompt: DPO's (``beta`` and ``pairs_per_prompt`` also IPO's and
        SimPO's; ``beta`` KTO's). simpo_gamma: SimPO's target margin (in nats of the length-normalised
        log-likelihood difference, before ``beta``). desirable_weight, undesirable_weight: KTO's
        weights of correct / incorrect rollouts.
        num_generations (K samples per prompt), max_new_tokens, temperature, grader (``exact`` |
        ``math_verify``), kl_coef (TRL's ``beta``: KL to the base), std_normalize (divide advantages
        by the group's reward std: TRL's ``scale_rewards="group"``, else ``"none"``), grpo_loss_type
        (TRL's GRPO ``loss_type``), generation (``hf`` | ``vllm``; vLLM only where CUDA is): online
        GRPO's. Parameters of other losses are ``None``.
    """

    method: str
    loss: str
    lora: LoraSpec
    steps: int
    save_steps: tuple[int, ...]
    analysis_step: int
    batch_size: int
    learning_rate: float
    grad_accum: int = 1
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 1024
    precision: str = "fp32"
    data_seed: int | None = None
    threads: int = 1
    truncated: str = "drop"
    checkpoint_every: int | None = None
    prompt_template: str = "{question}"
    positive_reward: float | None = None
    negative_reward: float | None = None
    negative_prob: str | None = None
    bias: float | None = None
    std_normalize: bool | None = None
    kl_coef: float | None = None
    all_wrong: str | None = None
    beta: float | None = None
    dpo_loss_type: str | None = None
    pairs_per_prompt: int | None = None
    simpo_gamma: float | None = None
    desirable_weight: float | None = None
    undesirable_weight: float | None = None
    num_generations: int | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    grader: str | None = None
    grpo_loss_type: str | None = None
    generation: str | None = None

    def __post_init__(self):
        where = f"method {self.method!r}"
        if self.loss not in LOSS_DEFAULTS:
            raise MethodSpecError(f"{where}: unknown loss {self.loss!r}; expected one of {list(LOSSES)}")
        own = LOSS_KEYS[self.loss]
        for key in ALL_LOSS_KEYS:
            value = getattr(self, key)
            if key in own and value is None:
                raise MethodSpecError(f"{where}: loss {self.loss!r} needs {key!r}")
            if key not in own and value is not None:
                raise MethodSpecError(f"{where}: {key!r} does not apply to loss {self.loss!r}; its keys: {list(own)}")
        if self.negative_prob is not None and self.negative_prob not in ("token", "sequence"):
            raise MethodSpecError(f"{where}: negative_prob {self.negative_prob!r} is not 'token' or 'sequence'")
        if self.all_wrong is not None and self.all_wrong not in ("zero", "bias"):
            raise MethodSpecError(f"{where}: all_wrong {self.all_wrong!r} is not 'zero' or 'bias'")
        if self.grader is not None and self.grader not in ("exact", "math_verify"):
            raise MethodSpecError(f"{where}: grader {self.grader!r} is not 'exact' or 'math_verify'")
        if self.generation is not None and self.generation not in ("hf", "vllm"):
            raise MethodSpecError(f"{where}: generation {self.generation!r} is not 'hf' or 'vllm'")
        if self.num_generations is not None:
            if self.num_generations < 2:
                raise MethodSpecError(f"{where}: num_generations {self.num_generations} must be >= 2 (a group needs two samples)")
            if (self.batch_size * self.grad_accum) % self.num_generations:
                raise MethodSpecError(f"{where}: batch_size x grad_accum = {self.batch_size * self.grad_accum} completions per "
                                      f"step must be a multiple of num_generations {self.num_generations}")
        if self.truncated not in TRUNCATED_POLICIES:
            raise MethodSpecError(f"{where}: truncated {self.truncated!r} is not one of {list(TRUNCATED_POLICIES)}")
        if self.truncated == "no_eos" and self.loss not in OWN_TOKENISED_LOSSES + ("online_grpo",):
            raise MethodSpecError(f"{where}: truncated 'no_eos' does not apply to loss {self.loss!r} (TRL's trainer "
                                  f"appends EOS to every completion); set methods.{self.method}.truncated: drop")
        if self.precision not in ("fp32", "bf16"):
            raise MethodSpecError(f"{where}: precision {self.precision!r} is not 'fp32' or 'bf16'")
        if list(self.save_steps) != sorted(set(self.save_steps)) or self.analysis_step not in self.save_steps:
            raise MethodSpecError(f"{where}: save_steps {list(self.save_steps)} must be sorted, unique and hold "
                                  f"analysis_step {self.analysis_step}")
        if self.save_steps[-1] > self.steps:
            raise MethodSpecError(f"{where}: training.analysis_step/save_steps value {self.save_steps[-1]} exceeds "
                                  f"methods.{self.method} steps {self.steps}; set methods.{self.method}.save_steps and "
                                  "analysis_step for a shorter method")

    # -- derived ---------------------------------------------------------------------------------
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
        loss = entry.get("loss")
        if loss not in LOSS_DEFAULTS:
            raise MethodSpecError(f"methods.{method}.loss {loss!r} is not one of {list(LOSSES)}")
        allowed = {"loss", "description", "seeds", *OPTIM_KEYS, *LOSS_KEYS[loss]}
        extra = sorted(set(entry) - allowed)
        if extra:
            raise MethodSpecError(f"methods.{method}.{extra[0]} does not apply to loss {loss!r}; "
                                  f"allowed: {sorted(allowed)}")
        values = {**TRAINING_DEFAULTS, **config["training"], **LOSS_DEFAULTS[loss]}
        values.update({k: v for k, v in entry.items() if k not in ("description", "seeds")})  # not training settings
        for key in FROM_ROLLOUTS:
            if key in values and values[key] is None:
                values[key] = config["rollouts"].get(key, "exact" if key == "grader" else None)
        if "generation" in values and values["generation"] is None:
            gen = config.get("generation", {})
            values["generation"] = gen.get("stages", {}).get("training", gen.get("backend", "hf"))
            if values["generation"] not in ("hf", "vllm"):  # an API teacher's backend: sampling here is local
                values["generation"] = "hf"
        values["method"] = method
        values["lora"] = {**LORA_DEFAULTS, **config["lora"]}
        values["save_steps"] = sorted(set(values["save_steps"]) | {values["analysis_step"]})
        values["prompt_template"] = config["model"].get("prompt_template", "{question}")
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, d: Mapping) -> "MethodSpec":
        """Rebuild a spec from :meth:`to_dict` (e.g. the JSON the train rule passes)."""
        where = f"method {d.get('method', '?')!r}"
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise MethodSpecError(f"{where}: unknown spec key {unknown[0]!r}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in d)
        if missing:
            raise MethodSpecError(f"{where}: spec lacks {missing[0]!r}")
        values = dict(d)
        lora = values["lora"]
        if not isinstance(lora, LoraSpec):
            lora_fields = {f.name for f in dataclasses.fields(LoraSpec)}
            bad = sorted(set(lora) - lora_fields)
            if bad:
                raise MethodSpecError(f"{where}: unknown lora key {bad[0]!r}")
            lora = LoraSpec(**{**lora, "target_modules": tuple(lora["target_modules"])})
        values["lora"] = lora
        values["save_steps"] = tuple(values["save_steps"])
        return cls(**values)

    def to_dict(self) -> dict:
        """A flat JSON-able dict: the training keys, this loss's own parameters (not the other
        losses' ``None``), ``lora`` as a dict; ``checkpoint_every`` only when set."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if (f.name in ALL_LOSS_KEYS or f.name == "checkpoint_every") and v is None:
                continue
            out[f.name] = v
        out["lora"] = self.lora.to_dict()
        out["save_steps"] = list(self.save_steps)
        return out

    def to_json(self) -> str:
        """Compact, key-sorted JSON: a stable rule param (Snakemake reruns a job when it changes)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
