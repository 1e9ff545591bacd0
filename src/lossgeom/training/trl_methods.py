"""The methods trained by TRL's own trainers and losses (no copies here): the DPO family and online GRPO.

    loss          TRL trainer                  loss settings (from the method spec)
    dpo           DPOTrainer                   loss_type=[dpo_loss_type] (sigmoid), beta
    ipo           DPOTrainer                   loss_type=["ipo"], beta (= IPO's tau); TRL length-normalises
                                               the log-ratios (mean over completion tokens)
    simpo         CPOTrainer (experimental)    loss_type="simpo", cpo_alpha=0 (no NLL term: pure SimPO),
                                               beta, simpo_gamma; reference-free, mean log-prob per token
    kto           KTOTrainer                   loss_type="kto", beta, desirable_weight, undesirable_weight
    online_grpo   GRPOTrainer                  reward = the project's grader (:class:`lossgeom.losses.online_grpo.GraderReward`);
                                               num_generations, max_completion_length, temperature,
                                               beta=kl_coef, scale_rewards, loss_type=grpo_loss_type

The model handed to every trainer is the job's PEFT model (:func:`lossgeom.training.job.lora_model`),
so every method of a seed starts from one LoRA init. Online GRPO's colocated vLLM gets the policy's weights
built out of place (:mod:`lossgeom.training.weight_sync`: TRL merges the adapter in place, which moves a
bf16 base a little at every sync). The reference policy, where a loss has one
(DPO, IPO, KTO; online GRPO with kl_coef > 0), is the base model: TRL copies the initial adapter into
a frozen ``ref`` adapter, which equals the base because LoRA's B starts at zero. SimPO has none.
Pairs (DPO, IPO, SimPO) come from one pairing rule, :func:`lossgeom.training.views.dpo_pairs`.

Each loss's settings, dataset and extra trainer arguments are its module's (:mod:`lossgeom.losses`).
Where TRL keeps a trainer (``trl`` or ``trl.experimental``) changes between releases; :func:`trl_classes`
looks in each place a release of :data:`TRL_RANGE` has it and stops with one line when none has.
"""

from __future__ import annotations

import importlib
import warnings

import pandas as pd

from ..losses import MethodSpecError

# The TRL releases these trainers were checked against (pyproject.toml pins the same range).
TRL_RANGE = "trl>=1.16,<2"


def trl_classes(spec) -> tuple[type, type]:
    """(config class, trainer class) of TRL for ``spec.loss`` (where its loss module says TRL keeps
    them, ``Loss.trl_trainers``); a :class:`MethodSpecError` of one line naming the method, the trainer
    and the installed TRL when this TRL has none of them."""
    places = spec.loss_def.trl_trainers
    for module, config_name, trainer_name in places:
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
    wanted = " or ".join(f"{m}.{t}" for m, _, t in places)
    raise MethodSpecError(
        f"method {spec.method!r} ({spec.loss}): TRL's {wanted} is not available in the installed "
        f"trl ({version}); install {TRL_RANGE}"
    )


def trl_trainer(spec, model, common_args: dict, view: pd.DataFrame, tokenizer, callbacks):
    """The TRL trainer of ``spec`` (a :class:`~lossgeom.methods.MethodSpec`) on the PEFT ``model``, with the
    job's shared training arguments (``common_args``: schedule, seeds, checkpoints) plus the loss's own
    (``Loss.trl_args``), its dataset (``Loss.dataset``) and extra trainer arguments (``Loss.trainer_kwargs``)."""
    loss = spec.loss_def
    config_cls, trainer_cls = trl_classes(spec)
    args = dict(common_args)
    extra = loss.trainer_kwargs(spec, view, args)
    config = config_cls(**args, **loss.trl_args(spec))
    data = loss.dataset(view, tokenizer, spec.prompt_template)
    kwargs = dict(
        model=model, args=config, train_dataset=data, processing_class=tokenizer, callbacks=callbacks, **extra
    )
    try:
        trainer = trainer_cls(**kwargs)
    except ImportError as e:  # e.g. generation 'vllm' on a GPU without vLLM installed
        raise MethodSpecError(f"method {spec.method!r} ({spec.loss}): {' '.join(str(e).split())}") from None
    from .weight_sync import keep_base_exact

    # online GRPO with colocated vLLM: weights synced out of place, so the bf16 base cannot drift
    keep_base_exact(trainer)
    return trainer
