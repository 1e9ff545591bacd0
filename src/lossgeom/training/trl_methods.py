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

Batches of pairs (DPO, IPO, SimPO) are drawn from pairs of similar length where ``training.group_by_length``
(the default): :func:`group_pairs_by_length`. TRL 1.16 pads them otherwise: DPOTrainer turns its own
``padding_free`` off, and transformers' ``train_sampling_strategy="group_by_length"`` cannot read a pair's
length (see :func:`pair_lengths`).

Each loss's settings, dataset and extra trainer arguments are its module's (:mod:`lossgeom.losses`).
Where TRL keeps a trainer (``trl`` or ``trl.experimental``) changes between releases; :func:`trl_classes`
looks in each place a release of :data:`TRL_RANGE` has it and stops with one line when none has.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

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
    resume_the_trained_adapter(trainer)
    if spec.group_by_length:
        group_pairs_by_length(trainer)
    return trainer


def resume_the_trained_adapter(trainer) -> None:
    """Make ``trainer``'s resume load the trained adapter, not only the frozen reference beside it.

    TRL's DPO and KTO trainers keep the reference policy as a second, frozen PEFT adapter (``ref``), which
    PEFT saves in ``checkpoint-N/ref/``; the trained ``default`` adapter lies at the checkpoint's root.
    transformers 5's ``Trainer._load_from_checkpoint`` loads only the adapters in subfolders when there is any
    (trainer.py, "Load adapters following PR # 24096"), so a resumed DPO, IPO or KTO run went on from the
    untrained adapter (B = 0) with the restored optimiser state and step (tests/test_trl_methods.py). After
    transformers' load, the root's adapter is loaded into the active one as well."""
    original = trainer._load_from_checkpoint

    def load(resume_from_checkpoint, model=None):
        original(resume_from_checkpoint, model)
        peft_model = trainer.model if model is None else model
        root = Path(resume_from_checkpoint)
        subdirs = [p for p in root.iterdir() if p.is_dir() and (p / "adapter_config.json").is_file()]
        if subdirs and (root / "adapter_config.json").is_file() and hasattr(peft_model, "load_adapter"):
            active = peft_model.active_adapters[0]
            peft_model.load_adapter(str(root), active, is_trainable=True)
            peft_model.set_adapter(active)

    trainer._load_from_checkpoint = load


def pair_lengths(data, max_length: int | None) -> np.ndarray | None:
    """Tokens each pair of a preference dataset, as TRL's trainer has tokenised it, takes in a collated
    batch (int64, one per row): the length its rows are padded to, so a batch is as long as its longest pair.

    DPOTrainer (dpo, ipo): columns ``prompt_ids``, ``chosen_ids``, ``rejected_ids``; its collator stacks
    prompt+chosen and prompt+rejected of every pair in one batch of 2 x pairs rows, each cut at ``max_length``
    and padded to the longest, so a pair's length is ``min(max_length, prompt + max(chosen, rejected))``.
    The longer completion, not chosen + rejected: the shorter one is padded to the longer one either way.
    CPOTrainer (simpo): ``chosen_input_ids`` and ``rejected_input_ids`` (prompt included, already cut),
    padded to the longer of the two: ``max(chosen, rejected)``. None for any other layout (KTO's single
    completions, online GRPO's prompts).

    transformers cannot find these itself: without a ``length`` column its length-grouped sampler measures
    ``input_ids``, which neither trainer's dataset has (trainer.py ``_get_train_sampler``)."""
    import pyarrow.compute as pc

    def tokens(column: str) -> np.ndarray:
        # the Arrow column through the dataset's indices (a filtered dataset's rows), without a Python list
        return pc.list_value_length(data.with_format("arrow")[column]).to_numpy().astype(np.int64)

    columns = set(data.column_names)
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= columns:
        lengths = tokens("prompt_ids") + np.maximum(tokens("chosen_ids"), tokens("rejected_ids"))
        return np.minimum(lengths, max_length) if max_length else lengths
    if {"chosen_input_ids", "rejected_input_ids"} <= columns:
        return np.maximum(tokens("chosen_input_ids"), tokens("rejected_input_ids"))
    return None


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' :class:`LengthGroupedSampler` (each epoch: the rows permuted, cut into megabatches
    of ``min(50, rows // (4 batch_size))`` batches, each megabatch sorted by ``lengths``, longest first, and
    the longest row of all moved to the front, so a job that runs out of memory does so at its first step)
    with its permutation drawn from ``seed + epoch``.

    transformers' own draws from the global torch RNG (``generator=None`` in ``_get_train_sampler``):
    an order set by whatever used the RNG before, and one a job resumed in a later epoch does not replay.
    This one is a function of the data-order seed and the epoch, as accelerate's seedable random sampler
    (the Trainer's default) is; the Trainer calls :meth:`set_epoch` at each epoch, a resumed one too."""

    def __init__(self, lengths, batch_size: int, seed: int):
        super().__init__(batch_size, lengths=[int(n) for n in lengths])
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def group_pairs_by_length(trainer) -> bool:
    """Make ``trainer`` (a built TRL trainer) draw its training batches from pairs of similar length
    (:class:`SeededLengthGroupedSampler` on :func:`pair_lengths`, seeded by the data-order seed); False,
    and the trainer unchanged, when its dataset is not pairs (KTO, online GRPO).

    What changes is which pairs share a batch, not which pairs are trained on nor how often: each epoch
    is still a seeded shuffle of every pair, only regrouped within megabatches of up to 50 optimiser steps'
    pairs (so within each megabatch the steps go from long pairs to short ones, and the first step holds
    the longest pair). Every pair's loss is its own (no term mixes pairs), so only the batch-to-batch noise
    and the step a pair lands on differ from random batches, which is acceptable for the same reason a
    seeded shuffle is: the data order is a seeded nuisance, and it stays the data-order seed's. KTO keeps its sequential order: TRL pairs each
    of its completions with a neighbour's in the batch for the KL estimate, fixed when the data is prepared."""
    args = trainer.args
    lengths = pair_lengths(trainer.train_dataset, getattr(args, "max_length", None))  # GRPOConfig has none
    if lengths is None:
        return False
    seed = args.data_seed if args.data_seed is not None else args.seed
    # the sampler groups the rows of one optimiser step, as transformers' group_by_length does
    batch = args.train_batch_size * args.gradient_accumulation_steps
    # an instance attribute: Trainer.get_train_dataloader calls self._get_train_sampler(dataset)
    trainer._get_train_sampler = lambda train_dataset=None: SeededLengthGroupedSampler(lengths, batch, seed)
    return True
