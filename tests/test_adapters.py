"""Reading PEFT LoRA directories: scales (rsLoRA, rank/alpha patterns), validation, real PEFT output."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_qwen3
from safetensors.torch import save_file

from lossgeom.lora.adapters import (
    AdapterMismatchError,
    adapter_fingerprint,
    canonical_module_name,
    check_compatible,
    layer_of,
    load_adapter,
)

SHAPES = {"q_proj": (12, 8), "k_proj": (4, 8), "v_proj": (4, 8), "o_proj": (8, 12)}  # (d_out, d_in)


def write_fake_adapter(
    path,
    *,
    r=4,
    alpha=8,
    layers=2,
    shapes=SHAPES,
    base="tiny/base",
    seed=0,
    ranks=None,
    drop=None,
    config_extra=None,
    dtype=torch.float32,
    extra_tensors=None,
):
    """A PEFT-format LoRA directory; ``ranks``: module suffix -> rank override (written to the file)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for m, (d_out, d_in) in shapes.items():
            rr = (ranks or {}).get(m, r)
            p = f"base_model.model.model.layers.{layer}.self_attn.{m}"
            tensors[f"{p}.lora_A.weight"] = torch.randn(rr, d_in, generator=g).to(dtype)
            tensors[f"{p}.lora_B.weight"] = torch.randn(d_out, rr, generator=g).to(dtype)
    for k in drop or ():
        del tensors[k]
    tensors.update(extra_tensors or {})
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    cfg = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted(shapes),
        "base_model_name_or_path": base,
        "use_rslora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    cfg.update(config_extra or {})
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path


def test_names_and_layers():
    assert canonical_module_name("model.layers.3.self_attn.q_proj") == "layers.3.self_attn.q_proj"
    assert canonical_module_name("transformer.h.11.attn.c_attn") == "h.11.attn.c_attn"
    assert canonical_module_name("lm_head") == "lm_head"
    assert layer_of("layers.3.self_attn.q_proj") == 3 and layer_of("lm_head") is None


def test_load_basic(tmp_path):
    d = write_fake_adapter(tmp_path / "a", dtype=torch.bfloat16)
    ad = load_adapter(d)
    assert len(ad.modules) == 8
    assert list(ad.modules)[:4] == [f"layers.0.self_attn.{m}" for m in sorted(SHAPES)]
    m = ad.modules["layers.1.self_attn.q_proj"]
    assert m.layer == 1 and m.B.shape == (12, 4) and m.A.shape == (4, 8) and m.shape == (12, 8)
    assert m.B.dtype == np.float64 and m.scale == pytest.approx(2.0)
    assert ad.base_model_name_or_path == "tiny/base" and ad.target_modules == tuple(sorted(SHAPES))
    # grouped storage: the module's factors are views of one stacked array per shape
    g = ad.groups[(12, 8, 4)]
    assert g.B.shape == (2, 12, 4) and np.shares_memory(g.B, m.B)
    assert len(adapter_fingerprint(d)) == 64


def test_rslora_and_patterns(tmp_path):
    d = write_fake_adapter(tmp_path / "rs", r=4, alpha=8, config_extra={"use_rslora": True, "r": 16})
    with pytest.raises(AdapterMismatchError, match="rank 4 in the weights but 16"):
        load_adapter(d)
    d = write_fake_adapter(tmp_path / "rs2", r=4, alpha=8, config_extra={"use_rslora": True})
    assert load_adapter(d).modules["layers.0.self_attn.k_proj"].scale == pytest.approx(8 / math.sqrt(4))
    d = write_fake_adapter(
        tmp_path / "pat",
        r=4,
        alpha=8,
        ranks={"q_proj": 6},
        config_extra={"rank_pattern": {"q_proj": 6}, "alpha_pattern": {"layers.1.self_attn.k_proj": 32}},
    )
    ad = load_adapter(d)
    assert ad.modules["layers.0.self_attn.q_proj"].rank == 6
    assert ad.modules["layers.0.self_attn.q_proj"].scale == pytest.approx(8 / 6)
    assert ad.modules["layers.1.self_attn.k_proj"].scale == pytest.approx(32 / 4)
    assert ad.modules["layers.0.self_attn.k_proj"].scale == pytest.approx(8 / 4)


def test_errors_name_directory_and_problem(tmp_path):
    with pytest.raises(AdapterMismatchError, match="missing adapter_config.json"):
        (tmp_path / "empty").mkdir()
        load_adapter(tmp_path / "empty")
    d = write_fake_adapter(tmp_path / "nob")
    (d / "adapter_model.safetensors").unlink()
    (d / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(AdapterMismatchError, match=r"nob.*pickles are not loaded"):
        load_adapter(d)
    p = "base_model.model.model.layers.1.self_attn.v_proj"
    d = write_fake_adapter(tmp_path / "noB", drop=[f"{p}.lora_B.weight"])
    with pytest.raises(AdapterMismatchError, match=r"layers.1.self_attn.v_proj.*no lora_B"):
        load_adapter(d)
    d = write_fake_adapter(tmp_path / "shape", extra_tensors={f"{p}.lora_A.weight": torch.zeros(5, 8)})
    with pytest.raises(AdapterMismatchError, match=r"shape mismatch"):
        load_adapter(d)
    d = write_fake_adapter(tmp_path / "dora", config_extra={"use_dora": True})
    with pytest.raises(AdapterMismatchError, match="DoRA"):
        load_adapter(d)
    d = write_fake_adapter(tmp_path / "full", extra_tensors={"base_model.model.lm_head.weight": torch.zeros(3, 3)})
    with pytest.raises(AdapterMismatchError, match="lm_head.weight.*not a LoRA factor"):
        load_adapter(d)


def test_check_compatible(tmp_path):
    a = load_adapter(write_fake_adapter(tmp_path / "a"))
    check_compatible([a, load_adapter(write_fake_adapter(tmp_path / "r8", r=8, seed=1))])  # ranks may differ
    b = load_adapter(write_fake_adapter(tmp_path / "b", base="other/base"))
    with pytest.raises(
        AdapterMismatchError, match=r"/b vs reference .*/a: different base models.*'tiny/base'.*'other/base'"
    ):
        check_compatible([a, b])
    c = load_adapter(write_fake_adapter(tmp_path / "c", shapes={k: v for k, v in SHAPES.items() if k != "o_proj"}))
    with pytest.raises(AdapterMismatchError, match="different target_modules"):
        check_compatible([a, c])
    d = load_adapter(write_fake_adapter(tmp_path / "d", layers=3))
    with pytest.raises(AdapterMismatchError, match=r"different adapted modules.*extra \['layers.2"):
        check_compatible([a, d])
    e = load_adapter(write_fake_adapter(tmp_path / "e", shapes={**SHAPES, "k_proj": (6, 8)}))
    with pytest.raises(
        AdapterMismatchError, match=r"module 'layers.0.self_attn.k_proj'.*expected .* \(4, 8\), found \(6, 8\)"
    ):
        check_compatible([a, e])


@pytest.mark.parametrize("rslora", [False, True])
def test_real_peft_adapter_round_trip(tmp_path, rslora):
    from peft import LoraConfig, get_peft_model

    model = tiny_qwen3()
    lcfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        use_rslora=rslora,
        rank_pattern={} if rslora else {"layers.1.self_attn.v_proj": 2},
        alpha_pattern={} if rslora else {"o_proj": 16},
    )
    pm = get_peft_model(model, lcfg)
    pm.save_pretrained(tmp_path / "peft")
    ad = load_adapter(tmp_path / "peft")
    assert len(ad.modules) == 8
    for name, mod in pm.named_modules():
        if not hasattr(mod, "get_delta_weight") or not hasattr(mod, "lora_A"):
            continue
        short = canonical_module_name(name.removeprefix("base_model.model."))
        m = ad.modules[short]
        assert m.scale == pytest.approx(mod.scaling["default"])
        want = mod.get_delta_weight("default").detach().double().numpy()
        np.testing.assert_allclose(m.scale * m.B @ m.A, want, rtol=1e-6, atol=1e-7)
    assert ad.modules["layers.0.self_attn.q_proj"].shape == (32, 32)
    assert ad.modules["layers.0.self_attn.k_proj"].shape == (16, 32)
    if not rslora:
        assert ad.modules["layers.1.self_attn.v_proj"].rank == 2
