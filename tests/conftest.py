"""Shared fixtures: a tiny toy world, a tiny random Qwen3 base model and hand-made rollouts.

Everything is built once per test session in a temporary directory and takes a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def tiny_qwen3(**overrides):
    """A randomly initialised ``Qwen3ForCausalLM`` of a few thousand parameters (``torch.manual_seed(0)``),
    attention projections named as in Qwen3-4B; ``overrides`` change its ``Qwen3Config`` fields."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    fields = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config(**{**fields, **overrides}))


@pytest.fixture(autouse=True)
def _placeholder_gpus_run_on_the_cpu(request, monkeypatch):
    """The test SLURM cluster's GPUs are placeholders (/dev/null, scripts/slurm-local.sh), so its GPU jobs
    run on the CPU: LOSSGEOM_DEVICE=cpu, which sbatch --export=ALL carries into them (lossgeom.devices)."""
    if request.node.get_closest_marker("slurm"):
        monkeypatch.setenv("LOSSGEOM_DEVICE", "cpu")


TINY_TOY = {
    "seed": 0,
    "n_train": 200,
    "n_test": 20,
    "tokenizer_vocab": 320,
    "models": {},
}


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory) -> Path:
    from lossgeom.toy.world import build_world

    out = tmp_path_factory.mktemp("toy") / "world"
    build_world(TINY_TOY, out)
    return out


@pytest.fixture(scope="session")
def tiny_base(toy_world, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Qwen3 with the toy tokenizer, saved like any hub model."""
    import torch
    from transformers import Qwen3ForCausalLM

    from lossgeom.modeling import load_tokenizer
    from lossgeom.toy.pretrain import qwen3_config

    tok = load_tokenizer(toy_world / "tokenizer")
    spec = {"hidden_size": 32, "num_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(qwen3_config(spec, len(tok), tok))
    out = tmp_path_factory.mktemp("models") / "base"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_rollouts(toy_world, tmp_path_factory) -> Path:
    """K=4 rollouts for 8 prompts: gold solutions (correct) and perturbed ones (incorrect), mixed groups."""
    from lossgeom.toy.world import read_split

    rows = []
    for p in read_split(toy_world, "train")[:8]:
        for k in range(4):
            correct = k % 2 == 0 if p.answer % 2 else k == 0
            answer = p.answer if correct else p.answer + k + 1
            completion = p.solution.rsplit("####", 1)[0] + f"#### {answer}"
            rows.append(
                {
                    "prompt_id": p.id,
                    "prompt": p.question,
                    "completion": completion,
                    "gold": str(p.answer),
                    "answer": str(answer),
                    "reward": float(correct),
                    "sample_index": k,
                    "logprobs": [],
                    "source": "test",
                }
            )
    out = tmp_path_factory.mktemp("rollouts") / "rollouts.parquet"
    pd.DataFrame(rows).to_parquet(out)
    return out


def method_spec(loss: str, method: str = "m", **overrides):
    """A resolved MethodSpec for a tiny training run (what the train rule passes as --spec), through
    the same JSON round trip as the rule."""
    from lossgeom import config as cfg
    from lossgeom.methods import MethodSpec

    config = {
        "seeds": [1],
        "model": {"base": "x"},
        "prompts": {"source": "x"},
        "test_sets": {"t": {"source": "x"}},
        "rollouts": {"k": 4, "temperature": 1.0, "max_new_tokens": 8},
        "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "r": 4, "alpha": 8},
        "training": {
            "steps": 6,
            "save_steps": [3, 6],
            "analysis_step": 3,
            "batch_size": 4,
            "learning_rate": 1e-2,
            "checkpoint_every": 2,
            "max_length": 128,
        },
        "methods": {method: {"loss": loss, **overrides}},
    }
    cfg.validate(config, SCHEMA)
    return MethodSpec.from_dict(json.loads(MethodSpec.from_config(config, method).to_json()))


def kill_then_resume(monkeypatch, spec, seed: int, rollouts, base, out: Path, ckpt: Path, step: int = 5) -> dict:
    """Train ``spec`` until the adapter of ``step`` is saved, kill the job there (a KeyboardInterrupt, as
    a preemption), check it wrote no output, then rerun it to the end; returns the rerun's train_info."""
    from lossgeom.training import trainers
    from lossgeom.training.job import train_adapter

    original = trainers.SaveAdapterCallback.on_step_end

    def die(self, args, state, control, **kw):
        original(self, args, state, control, **kw)
        if state.global_step == step:
            raise KeyboardInterrupt("simulated preemption")

    monkeypatch.setattr(trainers.SaveAdapterCallback, "on_step_end", die)
    with pytest.raises(KeyboardInterrupt):
        train_adapter(spec, seed, rollouts, str(base), out, ckpt)
    assert not Path(out).exists()
    monkeypatch.setattr(trainers.SaveAdapterCallback, "on_step_end", original)
    return train_adapter(spec, seed, rollouts, str(base), out, ckpt)


@pytest.fixture(scope="session")
def two_adapters(tiny_base, tiny_rollouts, tmp_path_factory):
    from lossgeom.training.job import train_adapter

    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for loss in ("sft", "rift"):
        train_adapter(method_spec(loss), 1, tiny_rollouts, str(tiny_base), root / loss, root / f"{loss}.ckpt")
        out[loss] = root / loss
    return out


def random_adapter(
    model_dir_or_model, out: Path, targets=("q_proj", "k_proj", "v_proj", "o_proj"), r: int = 4, seed: int = 0
) -> Path:
    """A PEFT LoRA with random (non-zero) A and B on a tiny model, saved like a trained one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = model_dir_or_model
    if isinstance(model, (str, Path)):
        model = AutoModelForCausalLM.from_pretrained(str(model))
    torch.manual_seed(seed)
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False)
    )
    peft_model.save_pretrained(str(out))
    return out
