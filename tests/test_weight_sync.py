"""Online GRPO's weight sync to the colocated vLLM (lossgeom.training.weight_sync) against TRL's and PEFT's own
code, in bf16 on the CPU: PEFT's in-place merge/unmerge moves the base (the failure, shown so the test can
fail); the out-of-place sync yields TRL's names and PEFT's merged values and leaves the base bit-identical."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_qwen3

from lossgeom.training.weight_sync import keep_base_exact, merged_params

SYNCS = 20


def bf16_peft_model(targets=("q_proj", "k_proj", "v_proj", "o_proj"), seed=0):
    from peft import LoraConfig, get_peft_model

    model = tiny_qwen3(hidden_size=64, intermediate_size=128, vocab_size=96).to(torch.bfloat16)
    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # a trained adapter's size: the delta is a few % of W
    return peft


def base_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


def trl_generation(model):
    """TRL's VLLMGeneration without an engine: the attributes its ``_iter_named_params`` reads."""
    from accelerate import Accelerator
    from trl.generation.vllm_generation import DistributedBackend, VLLMGeneration

    gen = VLLMGeneration.__new__(VLLMGeneration)
    gen.model = model
    gen.accelerator = Accelerator(cpu=True)
    gen._dist = DistributedBackend(gen.accelerator)
    return gen


def test_peft_in_place_round_trips_move_a_bf16_base():
    model = bf16_peft_model()
    before = base_weights(model)
    for _ in range(SYNCS):
        model.merge_adapter()
        model.unmerge_adapter()
    moved = [n for n, w in base_weights(model).items() if not torch.equal(w, before[n])]
    assert moved, "PEFT's merge/unmerge left every bf16 base weight unchanged (the drift this module avoids)"
    assert all(".base_layer." in n for n in moved)  # the LoRA-wrapped weights, and only those


@pytest.mark.parametrize("targets", [("q_proj", "k_proj", "v_proj", "o_proj"), ("q_proj", "gate_proj", "down_proj")])
def test_out_of_place_sync_is_trls_first_sync_and_leaves_the_base_exact(targets):
    model = bf16_peft_model(targets)
    before = base_weights(model)
    # TRL's own iteration, once, on a copy: its names and PEFT's merged values
    reference = trl_generation(copy.deepcopy(model))
    want = [(n, t.clone()) for n, t in reference._iter_named_params()]
    for _ in range(SYNCS):
        got = list(merged_params(model, reference._fix_param_name_to_vllm))
    assert [n for n, _ in got] == [n for n, _ in want]
    for (name, a), (_, b) in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for n, w in base_weights(model).items():
        assert torch.equal(w, before[n]), f"{n} moved"


def test_keep_base_exact_replaces_trls_sync_on_a_trainer():
    model = bf16_peft_model()
    before = base_weights(model)
    gen = trl_generation(model)

    class Trainer:
        vllm_generation = gen

    assert keep_base_exact(Trainer())
    for _ in range(SYNCS):
        merged = dict(gen._iter_named_params())
    for n, w in base_weights(model).items():
        assert torch.equal(w, before[n]), f"{n} moved under the trainer's sync"
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[name], before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])

    class NoVLLM:
        pass

    assert not keep_base_exact(NoVLLM())
