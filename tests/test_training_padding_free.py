"""Padding-free training (training.padding_free): for every loss this project trains on TRL's SFTTrainer,
the loss and every LoRA gradient of a batch are the padded batch's, to 1e-6 in float32; the batch holds
no padding token; and a short run ends in the same adapter within float tolerance."""

from __future__ import annotations

import pytest
import torch
from conftest import method_spec
from safetensors.torch import load_file

from lossgeom.data.rollouts import read_rollouts
from lossgeom.modeling import load_model, load_tokenizer
from lossgeom.training.job import _common_args, lora_model, offline_trainer, tokenize_view, train_adapter
from lossgeom.training.views import build_view

# (loss, parameters): every loss of the offline trainer, and the loss settings that change its maths
CASES = [
    ("sft", {}),
    ("rft", {}),
    ("dft", {}),
    ("rift", {}),
    ("rift", {"negative_prob": "sequence"}),
    ("offline_grpo", {}),
    ("offline_grpo", {"kl_coef": 0.1, "std_normalize": True}),
]
ROWS = 6  # rows of one micro-batch, of different lengths


def _loss_and_grads(loss, params, padding_free, tiny_base, tiny_rollouts, tmp_path):
    """The loss of one batch of the view's first rows and the gradient of every trainable parameter."""
    spec = method_spec(loss, padding_free=padding_free, **params)
    view, _ = build_view(read_rollouts(tiny_rollouts), spec, 1)
    tokenizer = load_tokenizer(str(tiny_base))
    model = lora_model(load_model(str(tiny_base)), spec, 1)
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B = 0 at init would hide how the adapter enters the attention
            p.data = 0.05 * torch.randn(p.shape, generator=gen)
    rows = tokenize_view(view, tokenizer, spec.prompt_template, spec.max_length)
    trainer = offline_trainer(spec, model, rows, tokenizer, _common_args(spec, 1, tmp_path / f"c{padding_free}"))
    examples = [dict(trainer.train_dataset[i]) for i in range(ROWS)]
    batch = trainer.data_collator(examples)
    model.train()
    value = trainer.compute_loss(model, batch)
    value.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(value), grads, batch, [len(e["input_ids"]) for e in examples]


@pytest.mark.parametrize(
    ("loss", "params"), CASES, ids=[f"{loss}{'-' + '-'.join(p) if p else ''}" for loss, p in CASES]
)
def test_padding_free_loss_and_gradients_equal_the_padded_ones(loss, params, tiny_base, tiny_rollouts, tmp_path):
    padded, g_padded, pb, lengths = _loss_and_grads(loss, params, False, tiny_base, tiny_rollouts, tmp_path)
    free, g_free, fb, _ = _loss_and_grads(loss, params, True, tiny_base, tiny_rollouts, tmp_path)
    assert len(set(lengths)) > 1, "the rows must differ in length for padding to matter"
    # the padded batch has padding; the padding-free one is one row of exactly the rows' tokens
    assert pb["input_ids"].shape == (ROWS, max(lengths)) and int(pb["attention_mask"].sum()) == sum(lengths)
    assert fb["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in fb
    assert free == pytest.approx(padded, abs=1e-6, rel=1e-6)
    assert g_free.keys() == g_padded.keys() and g_free
    for name in g_padded:
        scale = max(1.0, float(g_padded[name].abs().max()))
        assert float((g_free[name] - g_padded[name]).abs().max()) <= 1e-6 * scale, name
    assert any(float(g.abs().max()) > 0 for g in g_padded.values())  # not a comparison of zeros


@pytest.mark.heavy
@pytest.mark.parametrize("loss", ["sft", "rift", "offline_grpo"])
def test_a_padding_free_run_ends_in_the_padded_run_s_adapter(loss, tiny_base, tiny_rollouts, tmp_path):
    """Six optimiser steps of the tiny study's recipe, padded and padding-free, in float32: the same
    adapter to float tolerance (only the summation order of the attention differs)."""
    out = {}
    for padding_free in (False, True):
        spec = method_spec(loss, padding_free=padding_free)
        d = tmp_path / str(padding_free)
        train_adapter(spec, 1, tiny_rollouts, str(tiny_base), d / "out", d / "ckpt")
        out[padding_free] = load_file(str(d / "out" / "adapter_model.safetensors"))
    assert out[True].keys() == out[False].keys()
    for name, tensor in out[False].items():
        assert torch.allclose(out[True][name], tensor, rtol=1e-4, atol=1e-6), name
