"""Tests of lossgeom.lora.checkpoint: base weights read from the checkpoint's files equal the model's own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_qwen3

from lossgeom.lora.checkpoint import base_weights_of


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_base_weights_from_the_files_equal_those_of_the_loaded_model(tmp_path, dtype):
    model = tiny_qwen3(intermediate_size=48).to(
        dtype
    )  # bf16 as the paper's base is stored (read via torch), f32 as the toy's
    model.save_pretrained(tmp_path / "base")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"target_modules": ["q_proj", "o_proj"]}))
    got = base_weights_of(str(tmp_path / "base"), adapter)
    want = {
        name: m.weight.detach().double().numpy()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("q_proj", "o_proj")
    }
    assert sorted(got) == sorted(want) and len(got) == 4
    for name in want:
        assert got[name].dtype == np.float64 and np.array_equal(got[name], want[name]), name
    # a checkpoint without safetensors files: loaded through transformers (which refuses .bin: one clear error)
    (tmp_path / "base" / "model.safetensors").rename(tmp_path / "model.safetensors.away")
    try:
        base_weights_of(str(tmp_path / "base"), adapter)
    except ValueError as e:
        assert "cannot load the model" in str(e)
    else:
        raise AssertionError("a directory without weights loaded")
