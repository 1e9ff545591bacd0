"""The CKA activations keep a small LoRA delta's effect on a bf16 base (lossgeom.behaviour.activations).

A DPO adapter moves the weights by ~2e-4 of their norm; in bf16 most of that is rounded away and the
hidden-state change it causes is buried in rounding noise. Reference: the float64 forward of the exact
``W + scale * B @ A`` (merged by hand in float64) on the bf16 checkpoint's weights, minus the float64
base forward, per layer, pooled as the job pools.

Bound: measured on this model, the float32 path's change has 1 - cos <= 4e-6 and a norm within 6e-5 of
the reference at rel 1e-4 (float32 rounding of activations, ~6e-8 relative, against a change of ~2e-4
relative); every bf16 path measured (merged in bf16, unmerged fp32 LoRA on a bf16 forward, fp32 merge
cast back to bf16) has per-layer cosines below 0.15 at rel 1e-4 and below 0.5 at rel 1e-3. So
``COS = 0.999`` and a 1% norm tolerance leave the float32 path a margin of 250x and fail every bf16 path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lossgeom.behaviour import activations
from lossgeom.data.problemsets import load_problems
from lossgeom.engines.adapters import merge_adapter
from lossgeom.modeling import load_model, load_tokenizer

TEST_SET = {"source": "toy", "split": "test", "grader": "exact"}
N_PROBE, LAYERS, HIDDEN = 12, 3, 128
COS, NORM_TOL = 0.999, 0.01
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.fixture(scope="module")
def bf16_base(toy_world, tmp_path_factory):
    """A random 3-layer, hidden-128 Qwen3 saved in bfloat16 (config dtype bfloat16), as Qwen3-4B is."""
    from transformers import Qwen3ForCausalLM

    from lossgeom.toy.pretrain import qwen3_config

    tok = load_tokenizer(toy_world / "tokenizer")
    spec = {"hidden_size": HIDDEN, "num_layers": LAYERS, "num_attention_heads": 4, "num_key_value_heads": 2}
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(qwen3_config(spec, len(tok), tok)).to(torch.bfloat16)
    out = tmp_path_factory.mktemp("models") / "bf16_base"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def small_adapter(base_dir, out, rel: float, r: int = 8, seed: int = 1):
    """A PEFT LoRA on q/k/v/o whose delta per module has ||scale * B @ A||_F = rel * ||W||_F (W: the
    bf16 checkpoint's weight), A as PEFT initialises it and B random. Returns (adapter dir, {module path:
    float64 delta (d_out, d_in)}), the deltas recomputed from the float32 factors that were saved."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(TARGETS), lora_dropout=0.0)
    )
    g = torch.Generator().manual_seed(seed)
    deltas = {}
    with torch.no_grad():
        for name, mod in peft_model.named_modules():
            if not (hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {})):
                continue
            A, B, s = mod.lora_A["default"].weight, mod.lora_B["default"].weight, mod.scaling["default"]
            W = mod.base_layer.weight.double()
            B64 = torch.randn(B.shape, generator=g, dtype=torch.float64)
            B64 *= rel * W.norm() / (s * B64 @ A.double()).norm()
            B.copy_(B64)
            deltas[name.removeprefix("base_model.model.")] = s * B.double() @ A.double()
    peft_model.save_pretrained(str(out))
    return out, deltas


def pooled(model, base_dir, toy_world) -> np.ndarray:
    """The job's pooled hidden states (float64 copy of its float32 output), (LAYERS, N_PROBE, HIDDEN)."""
    problems = load_problems({**TEST_SET, "limit": N_PROBE}, toy_world)
    acts = activations.hidden_states(
        model, load_tokenizer(str(base_dir)), problems, template="{question}", pooling="completion_mean", batch_size=4
    )
    return acts.astype(np.float64)


def float64_model(base_dir, deltas=None):
    """The bf16 checkpoint in float64 (exact), with ``W + delta`` added by hand in float64."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float64)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, delta in (deltas or {}).items():
            modules[name].weight += delta.to(modules[name].weight.device)
    return model


def change_vs_reference(change, reference):
    """Per layer: (cosine, norm ratio) of the flattened (N_PROBE * HIDDEN) change to the reference."""
    out = []
    for got, ref in zip(change, reference):
        got, ref = got.ravel(), ref.ravel()
        out.append((got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref)), np.linalg.norm(got) / np.linalg.norm(ref)))
    return np.array(out)


@pytest.fixture(scope="module")
def setting(bf16_base, toy_world, tmp_path_factory):
    """Adapters at rel 1e-4 and 1e-3 with their float64 reference changes, and the float64 base acts."""
    root = tmp_path_factory.mktemp("small_adapters")
    base64 = pooled(float64_model(bf16_base), bf16_base, toy_world)
    cases = {}
    for rel in (1e-4, 1e-3):
        adapter, deltas = small_adapter(bf16_base, root / f"rel{rel:g}", rel)
        cases[rel] = (adapter, pooled(float64_model(bf16_base, deltas), bf16_base, toy_world) - base64)
    return {"base": bf16_base, "world": toy_world, "cases": cases, "base64": base64}


def _bf16_merged(base, adapter):  # the old path: the config's bf16, PEFT merge in bf16
    model = load_model(str(base), "bfloat16")
    return merge_adapter(model, adapter, str(base)) if adapter is not None else model


def _bf16_unmerged(base, adapter):  # PEFT's unmerged LoRA, fp32 factors on a bf16 forward
    from peft import PeftModel

    model = load_model(str(base), "bfloat16")
    return PeftModel.from_pretrained(model, str(adapter)) if adapter is not None else model


@pytest.mark.parametrize("rel", [1e-4, 1e-3])
def test_float32_path_keeps_the_change_of_a_small_delta(setting, rel):
    base, world = setting["base"], setting["world"]
    adapter, reference = setting["cases"][rel]
    tuned_model = activations.activation_model(str(base), adapter, dtype="bfloat16")
    assert {p.dtype for p in tuned_model.parameters()} == {torch.float32}
    change = pooled(tuned_model, base, world) - pooled(
        activations.activation_model(str(base), None, dtype="bfloat16"), base, world
    )
    # the reference change is the expected size: ~rel (at least rel / 2) of the activations' norm
    assert all(np.linalg.norm(r) > 0.5 * rel * np.linalg.norm(b) for r, b in zip(reference, setting["base64"]))
    stats = change_vs_reference(change, reference)
    assert stats[:, 0].min() > COS, stats
    assert np.abs(stats[:, 1] - 1).max() < NORM_TOL, stats


@pytest.mark.parametrize("rel", [1e-4, 1e-3])
@pytest.mark.parametrize("path", [_bf16_merged, _bf16_unmerged], ids=["bf16-merged", "bf16-unmerged-fp32-lora"])
def test_bf16_paths_fail_the_bound(setting, rel, path):
    """The old path (and the unmerged alternative) fail the bound the float32 path passes, so the test
    above can fail: at rel 1e-4 the change is mostly bf16 rounding noise."""
    base, world = setting["base"], setting["world"]
    adapter, reference = setting["cases"][rel]
    with torch.no_grad():
        change = pooled(path(base, adapter), base, world) - pooled(path(base, None), base, world)
    stats = change_vs_reference(change, reference)
    assert stats[:, 0].max() < COS, stats
    assert stats[:, 0].max() < 0.7, stats  # measured: < 0.15 at 1e-4, < 0.5 at 1e-3


def test_extract_activations_of_a_bf16_base_end_to_end(setting, tmp_path):
    """The CLI's job on the bf16 checkpoint with ``dtype="bfloat16"``: the npz of the adapter differs
    from the base's by the float64 reference change (direction and size), per layer."""
    base, world = setting["base"], setting["world"]
    adapter, reference = setting["cases"][1e-4]
    kw = dict(n_probe=N_PROBE, pooling="completion_mean", template="{question}", batch_size=4, dtype="bfloat16")
    for name, ad in (("base", None), ("dpo", adapter)):
        arrays = activations.extract_activations(str(base), ad, TEST_SET, world, **kw)
        activations.write_activations(arrays, tmp_path / f"{name}.npz")
    with np.load(tmp_path / "base.npz") as zb, np.load(tmp_path / "dpo.npz") as zt:
        assert zb["acts"].dtype == np.float32 and zb["acts"].shape == (LAYERS, N_PROBE, HIDDEN)
        assert (zb["ids"] == zt["ids"]).all()
        change = zt["acts"].astype(np.float64) - zb["acts"].astype(np.float64)
    stats = change_vs_reference(change, reference)
    assert stats[:, 0].min() > COS, stats
    assert np.abs(stats[:, 1] - 1).max() < NORM_TOL, stats
    # the expected amount: about 1e-4 .. 1e-3 of the activations' norm (rel 1e-4 of the weights)
    size = np.linalg.norm(change.reshape(LAYERS, -1), axis=1) / np.linalg.norm(
        setting["base64"].reshape(LAYERS, -1), axis=1
    )
    assert ((5e-5 < size) & (size < 1e-3)).all(), size


def test_float32_matmul_precision_is_restored():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        with activations.full_float32_matmul():
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
