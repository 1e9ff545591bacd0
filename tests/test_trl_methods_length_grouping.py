"""Length-grouped batches of pairs (training.group_by_length) for the pairwise losses on TRL's trainers:
the sampler a built trainer trains with groups pairs by the length TRL's collator pads them to, its batches
carry far less padding than random ones, its order is the data-order seed's and replays on a resume, and
the setting off (or a loss that is not pairs) leaves TRL's own sampler."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import kill_then_resume, method_spec
from safetensors.torch import load_file
from torch.utils.data import RandomSampler, SequentialSampler
from transformers.trainer_pt_utils import LengthGroupedSampler

from lossgeom.modeling import load_model, load_tokenizer
from lossgeom.training import trl_methods
from lossgeom.training.job import _common_args, lora_model, train_adapter
from lossgeom.training.views import build_view

PAIRWISE = ["dpo", "ipo", "simpo"]


@pytest.fixture(scope="module")
def skewed_rollouts(tmp_path_factory) -> str:
    """96 prompts, each with one correct and one incorrect rollout (one pair), of skewed lengths: a
    lognormal length scale per prompt (some problems take long solutions), each completion within 20% of it,
    from 4 to ~100 tokens after a prompt of ~25 (the tiny recipe's max_length is 128)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(96):
        scale = float(np.clip(rng.lognormal(np.log(12), 0.8), 1, 40))
        for k, correct in enumerate((True, False)):
            words = int(round(scale * rng.uniform(0.8, 1.2)))
            answer = 3 if correct else 4
            rows.append(
                {
                    "prompt_id": f"p{i}",
                    "prompt": f"What is 1 + {i % 9}?",
                    "completion": " ".join(["1"] * words) + f" #### {answer}",
                    "gold": "3",
                    "answer": str(answer),
                    "reward": float(correct),
                    "sample_index": k,
                    "logprobs": [],
                    "source": "test",
                }
            )
    out = tmp_path_factory.mktemp("skewed") / "rollouts.parquet"
    pd.DataFrame(rows).to_parquet(out)
    return str(out)


def _trainer(tmp_path, base, rollouts, loss, seed=1, data_seed=None, **overrides):
    """The TRL trainer ``train_adapter`` would build (not trained); ``data_seed`` as ``training.data_seed``."""
    spec = method_spec(loss, **overrides)
    if data_seed is not None:
        spec = spec.with_data_seed(data_seed)
    view, _ = build_view(pd.read_parquet(rollouts), spec, 1)  # the same pairs whatever the seeds
    tok = load_tokenizer(str(base))
    model = lora_model(load_model(str(base)), spec, seed)
    args = _common_args(spec, seed, tmp_path / f"ckpt{seed}-{data_seed}")
    return spec, trl_methods.trl_trainer(spec, model, args, view, tok, [])


def _sampler(trainer):
    """The sampler of the dataloader the Trainer trains with (one process: a plain batch sampler over it)."""
    return trainer.get_train_dataloader().batch_sampler.sampler


def _padding(trainer) -> float:
    """Padded share of the token slots over one epoch of the trainer's own training batches."""
    real = slots = 0
    for batch in trainer.get_train_dataloader():
        if "attention_mask" in batch:  # DPOTrainer: [prompt+chosen; prompt+rejected] in one tensor
            masks = [batch["attention_mask"]]
        else:  # CPOTrainer: chosen and rejected padded apart, then both to the longer (concatenated_inputs)
            masks = [batch["chosen_attention_mask"], batch["rejected_attention_mask"]]
        width = max(m.shape[1] for m in masks)
        real += sum(int(m.sum()) for m in masks)
        slots += sum(m.shape[0] for m in masks) * width
    return 1 - real / slots


def _expected_lengths(trainer, max_length: int) -> list[int]:
    """A pair's padded length from the trainer's dataset, row by row in Python (independent of pair_lengths)."""
    out = []
    for row in trainer.train_dataset:
        if "chosen_ids" in row:
            out.append(min(max_length, len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))))
        else:
            out.append(max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"])))
    return out


@pytest.mark.heavy
@pytest.mark.parametrize("loss", PAIRWISE)
def test_a_pairwise_trainer_batches_pairs_of_similar_length(tmp_path, tiny_base, skewed_rollouts, loss):
    """By default the built trainer samples with a length-grouped sampler on each pair's padded length (the
    width TRL's collator gives the pair alone), and an epoch of its batches holds every pair once with far
    less padding than the random batches of group_by_length: false."""
    spec, trainer = _trainer(tmp_path, tiny_base, skewed_rollouts, loss)
    sampler = _sampler(trainer)
    assert isinstance(sampler, LengthGroupedSampler)
    assert spec.group_by_length is True  # the default
    assert sampler.lengths == _expected_lengths(trainer, spec.max_length)
    for i in (0, 1, 2):  # a pair collated alone is exactly as wide as its length
        batch = trainer.data_collator([trainer.train_dataset[i]])
        width = max(v.shape[1] for k, v in batch.items() if k.endswith("input_ids"))
        assert width == sampler.lengths[i]
    assert len(set(sampler.lengths)) > 20, "the pairs must differ in length for grouping to matter"
    assert sorted(sampler) == list(range(len(trainer.train_dataset)))  # every pair once an epoch

    _, random = _trainer(tmp_path, tiny_base, skewed_rollouts, loss, group_by_length=False)
    grouped, padded = _padding(trainer), _padding(random)
    assert padded > 0.2 and grouped < 0.5 * padded, (grouped, padded)


@pytest.mark.heavy
def test_group_by_length_off_leaves_the_trainer_s_random_sampler(tmp_path, tiny_base, skewed_rollouts):
    for loss in PAIRWISE:
        _, trainer = _trainer(tmp_path, tiny_base, skewed_rollouts, loss, group_by_length=False)
        assert "_get_train_sampler" not in vars(trainer), loss  # the Trainer's own method, untouched
        sampler = _sampler(trainer)
        assert isinstance(sampler, RandomSampler) and not isinstance(sampler, LengthGroupedSampler), loss


def test_kto_keeps_its_sequential_order(tmp_path, tiny_base, tiny_rollouts):
    """KTO's KL estimate pairs each completion with its neighbour's in the batch, fixed when TRL prepares the
    data: its rows are never regrouped, whatever the setting."""
    _, trainer = _trainer(tmp_path, tiny_base, tiny_rollouts, "kto")
    assert isinstance(_sampler(trainer), SequentialSampler)
    assert trl_methods.pair_lengths(trainer.train_dataset, 128) is None


@pytest.mark.heavy
def test_the_grouped_order_is_the_data_order_seed_s(tmp_path, tiny_base, skewed_rollouts):
    """The same data-order seed gives the same batches whatever the init seed; another data-order seed or
    another epoch gives other batches (transformers' own sampler would draw from the global RNG instead)."""

    def order(seed, data_seed, epoch=0):
        _, trainer = _trainer(tmp_path, tiny_base, skewed_rollouts, "dpo", seed=seed, data_seed=data_seed)
        sampler = _sampler(trainer)
        sampler.set_epoch(epoch)
        torch.manual_seed(1234)  # the global RNG plays no part
        return list(sampler)

    first = order(1, 5)
    assert order(2, 5) == first
    assert order(1, 6) != first
    assert order(1, 5, epoch=1) != first


@pytest.mark.heavy
def test_a_length_grouped_run_resumes_mid_epoch_to_the_same_adapter(tmp_path, tiny_base, tiny_rollouts, monkeypatch):
    """Killed after step 5 with checkpoints every 3 steps, the job resumes from step 3, in the middle of its
    second epoch (8 pairs, 4 a batch): that epoch's grouped order replays and step 6's adapter is the
    uninterrupted run's (with transformers' sampler on the global RNG, the resumed epoch is regrouped).

    SimPO (CPOTrainer): the sampler is the same for DPO and IPO, but a DPOTrainer resumes its policy from
    the initial adapter whatever the order (transformers' Trainer._load_from_checkpoint loads only the
    adapters in subfolders once TRL's frozen ``ref`` adapter is saved in one), so it cannot be compared."""
    spec = method_spec("simpo", checkpoint_every=3)
    assert spec.group_by_length
    full = tmp_path / "full"
    train_adapter(spec, 1, tiny_rollouts, str(tiny_base), full, tmp_path / "full.ckpt")
    out = tmp_path / "killed"
    info = kill_then_resume(monkeypatch, spec, 1, tiny_rollouts, tiny_base, out, tmp_path / "killed.ckpt")
    assert info["resumed_from"].endswith("checkpoint-3")
    # step 6, trained after the resume (the top-level adapter is analysis_step 3's, trained before the kill)
    ta, tb = (load_file(str(d / "step6" / "adapter_model.safetensors")) for d in (full, out))
    assert any(v.abs().sum() > 0 for k, v in ta.items() if k.endswith("lora_B.weight"))
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=1e-7)
