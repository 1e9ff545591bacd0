"""The methods trained by TRL's own trainers and losses (no copies here): the DPO family and online GRPO.

    loss          TRL trainer                  loss settings (from the method spec)
    dpo           DPOTrainer                   loss_type=[dpo_loss_type] (sigmoid), beta
    ipo           DPOTrainer                   loss_type=["ipo"], beta (= IPO's tau); TRL length-normalises
                                               the log-ratios (mean over completion tokens)
    simpo         CPOTrainer (experimental)    loss_type="simpo", cpo_alpha=0 (no NLL term: pure SimPO),
                                               beta, simpo_gamma; reference-free, mean log-prob per token
    kto           KTOTrainer                   loss_type="kto", beta, desirable_weight, undesirable_weight
    online_grpo   GRPOTrainer                  reward = the project's grader (:class:`GraderReward`);
                                               num_generations, max_completion_length, temperature,
                                               beta=kl_coef, scale_rewards, loss_type=grpo_loss_type

The model handed to every trainer is the job's PEFT model (:func:`lossgeom.training.job.lora_model`),
so every method of a seed starts from one LoRA init. The reference policy, where a loss has one
(DPO, IPO, KTO; online GRPO with kl_coef > 0), is the base model: TRL copies the initial adapter into
a frozen ``ref`` adapter, which equals the base because LoRA's B starts at zero. SimPO has none.
Pairs (DPO, IPO, SimPO) come from one pairing rule, :func:`lossgeom.training.views.dpo_pairs`.

Where TRL keeps a trainer (``trl`` or ``trl.experimental``) changes between releases; :func:`trl_classes`
looks in each place a release of :data:`TRL_RANGE` has it and stops with one line when none has.
"""

from __future__ import annotations

import importlib
import logging
import warnings

import pandas as pd
import torch
from datasets import Dataset

from ..data.grading import GoldError, get_grader
from ..data.prompting import prompt_string
from ..methods import MethodSpec, MethodSpecError

log = logging.getLogger(__name__)

# The TRL releases these trainers were checked against (pyproject.toml pins the same range).
TRL_RANGE = "trl>=1.0,<2"
# loss -> where TRL keeps (config, trainer), in order of preference. KTO was moved to trl.experimental
# for TRL 1.0 and promoted back to the stable API later (both paths exist in 1.16); CPO (SimPO) is
# experimental throughout 1.x.
TRL_TRAINERS: dict[str, list[tuple[str, str, str]]] = {
    "dpo": [("trl", "DPOConfig", "DPOTrainer")],
    "ipo": [("trl", "DPOConfig", "DPOTrainer")],
    "simpo": [("trl.experimental.cpo", "CPOConfig", "CPOTrainer")],
    "kto": [("trl", "KTOConfig", "KTOTrainer"), ("trl.experimental.kto", "KTOConfig", "KTOTrainer")],
    "online_grpo": [("trl", "GRPOConfig", "GRPOTrainer")],
}
TRL_LOSSES = tuple(TRL_TRAINERS)


def trl_classes(spec: MethodSpec) -> tuple[type, type]:
    """(config class, trainer class) of TRL for ``spec.loss``; a :class:`MethodSpecError` of one line
    naming the method, the trainer and the installed TRL when this TRL has none of them."""
    for module, config_name, trainer_name in TRL_TRAINERS[spec.loss]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # a deprecated-but-working import path is fine
                mod = importlib.import_module(module)
                return getattr(mod, config_name), getattr(mod, trainer_name)
        except (ImportError, AttributeError):
            continue
    try:
        version = importlib.import_module("trl").__version__
    except ImportError:
        version = "not installed"
    wanted = " or ".join(f"{m}.{t}" for m, _, t in TRL_TRAINERS[spec.loss])
    raise MethodSpecError(f"method {spec.method!r} ({spec.loss}): TRL's {wanted} is not available in the installed "
                          f"trl ({version}); install {TRL_RANGE}")


def trl_loss_args(spec: MethodSpec) -> dict:
    """The loss settings of ``spec`` as keyword arguments of its TRL config class (see the module table)."""
    # The reference (the base: the adapter disabled) is fixed, so its log-probs are computed once over
    # the pairs before training instead of at every step: the same numbers, a third less compute a step.
    if spec.loss in ("dpo", "ipo"):
        return {"beta": spec.beta, "loss_type": [spec.dpo_loss_type if spec.loss == "dpo" else "ipo"],
                "precompute_ref_log_probs": True}
    if spec.loss == "simpo":
        return {"beta": spec.beta, "loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": spec.simpo_gamma}
    if spec.loss == "kto":
        return {"beta": spec.beta, "loss_type": "kto", "desirable_weight": spec.desirable_weight,
                "undesirable_weight": spec.undesirable_weight, "precompute_ref_log_probs": True}
    if spec.loss == "online_grpo":
        use_vllm = spec.generation == "vllm" and torch.cuda.is_available()
        if spec.generation == "vllm" and not use_vllm:
            log.warning("method %s: generation 'vllm' asks for a GPU; none here, so TRL samples with generate()", spec.method)
        return {
            "num_generations": spec.num_generations,
            "max_completion_length": spec.max_new_tokens,
            "temperature": spec.temperature,
            "top_p": 1.0,
            "beta": spec.kl_coef,
            "scale_rewards": "group" if spec.std_normalize else "none",
            "loss_type": spec.grpo_loss_type,
            "use_vllm": use_vllm,
            **({"vllm_mode": "colocate"} if use_vllm else {}),
            "log_completions": False,
        }
    raise ValueError(f"loss {spec.loss!r} is not trained through TRL's own trainers")


class GraderReward:
    """Online GRPO's reward function in TRL's interface: the project's grader on each sampled completion.

    Called by GRPOTrainer with ``completions`` (list[str], the decoded samples without special tokens,
    K per prompt), ``gold`` (list[str], the dataset column repeated alongside) and ``log_metric``;
    returns the rewards, list[float] in {0, 1}, exactly ``grade(completion, gold).reward``. Logs
    ``accuracy`` (fraction of samples graded correct: with a 0/1 grader the mean reward) and
    ``answer_rate`` (fraction with a parsable final answer) for each step's metrics row.
    """

    def __init__(self, grader: str):
        self.grader = grader
        self.grade = get_grader(grader)
        self._golds: dict[str, object] = {}  # gold text -> parsed gold: each gold is parsed once per job
        self.__name__ = "grader"  # TRL names the reward's metrics columns after it

    def _gold(self, gold: str):
        if gold not in self._golds:
            self._golds[gold] = self.grade.parse_gold(gold)
        return self._golds[gold]

    def read_golds(self, view: pd.DataFrame, method: str) -> None:
        """Parse every gold of the online view (prompt_id, gold) now; one that the grader cannot read
        stops the job here with the prompt and the method named (a ``MethodSpecError``)."""
        for pid, g in zip(view["prompt_id"], view["gold"]):
            try:
                self._gold(g)
            except GoldError as e:
                raise MethodSpecError(f"method {method!r} (online_grpo): prompt {pid!r}: {e}") from None

    def __call__(self, prompts, completions, gold, log_metric=None, **kwargs) -> list[float]:
        graded = [self.grade.grade(c if isinstance(c, str) else c[-1]["content"], self._gold(g))
                  for c, g in zip(completions, gold)]
        rewards = [float(g.reward) for g in graded]
        if log_metric is not None and rewards:
            log_metric("accuracy", sum(rewards) / len(rewards))
            log_metric("answer_rate", sum(g.answer is not None for g in graded) / len(graded))
        return rewards


def pairs_dataset(view: pd.DataFrame, tokenizer, template: str) -> Dataset:
    """DPO/IPO/SimPO rows in TRL's standard format: chat-formatted prompt text, chosen and rejected
    completions (TRL appends the EOS token, as ``completion_ids`` does for the NLL family)."""
    return Dataset.from_dict(
        {
            "prompt": [prompt_string(tokenizer, p, template) for p in view["prompt"]],
            "chosen": view["chosen"].tolist(),
            "rejected": view["rejected"].tolist(),
        }
    )


def unpaired_dataset(view: pd.DataFrame, tokenizer, template: str) -> Dataset:
    """KTO rows in TRL's unpaired format: chat-formatted prompt, completion, label (True: desirable)."""
    return Dataset.from_dict(
        {
            "prompt": [prompt_string(tokenizer, p, template) for p in view["prompt"]],
            "completion": view["completion"].tolist(),
            "label": [bool(x) for x in view["label"]],
        }
    )


def prompts_dataset(view: pd.DataFrame, tokenizer, template: str) -> Dataset:
    """Online GRPO rows: chat-formatted prompt text (as every stage prompts) and the gold answer."""
    return Dataset.from_dict(
        {"prompt": [prompt_string(tokenizer, p, template) for p in view["prompt"]], "gold": view["gold"].astype(str).tolist()}
    )


def trl_trainer(spec: MethodSpec, model, common_args: dict, view: pd.DataFrame, tokenizer, callbacks):
    """The TRL trainer of ``spec`` on the PEFT ``model``, with the job's shared training arguments
    (``common_args``: schedule, seeds, checkpoints) plus :func:`trl_loss_args`."""
    config_cls, trainer_cls = trl_classes(spec)
    args = dict(common_args)
    if spec.loss == "online_grpo":
        # Sampling (prompt order and completions) follows the data-order seed: the init seed has done
        # its work in lora_model before the trainer exists, so a data-order replicate shares the init.
        args["seed"] = args["data_seed"]
        args.pop("max_length")  # prompt and completion lengths: the prompts' own and max_completion_length
    config = config_cls(**args, **trl_loss_args(spec))
    template = spec.prompt_template
    if spec.loss in ("dpo", "ipo", "simpo"):
        data = pairs_dataset(view, tokenizer, template)
    elif spec.loss == "kto":
        data = unpaired_dataset(view, tokenizer, template)
    else:
        data = prompts_dataset(view, tokenizer, template)
    kwargs = dict(model=model, args=config, train_dataset=data, processing_class=tokenizer, callbacks=callbacks)
    if spec.loss == "online_grpo":
        reward = GraderReward(spec.grader)
        reward.read_golds(view, spec.method)  # every gold read before the first step, not at step N
        kwargs["reward_funcs"] = [reward]
    try:
        return trainer_cls(**kwargs)
    except ImportError as e:  # e.g. generation 'vllm' on a GPU without vLLM installed
        raise MethodSpecError(f"method {spec.method!r} ({spec.loss}): {' '.join(str(e).split())}") from None
