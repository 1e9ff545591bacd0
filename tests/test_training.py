"""Training jobs: every loss trains end to end, the seed controls init and data order, a killed job
resumes to the same adapter, and bad runs leave nothing behind."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import kill_then_resume, method_spec
from safetensors.torch import load_file

from lossgeom.training import trainers
from lossgeom.training.job import lora_model, train_adapter
from lossgeom.training.views import ViewError

LOSSES = ["sft", "rft", "dft", "rift", "offline_grpo", "dpo"]


def _train(tmp_path, spec, tiny_base, tiny_rollouts, seed=1, name="a"):
    out, ckpt = tmp_path / name / "adapter", tmp_path / name / "ckpt"
    info = train_adapter(spec, seed, tiny_rollouts, str(tiny_base), out, ckpt)
    return out, info


def _tensors(path):
    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.heavy
@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_and_writes_the_results_contract(tmp_path, tiny_base, tiny_rollouts, loss):
    spec = method_spec(loss)
    out, info = _train(tmp_path, spec, tiny_base, tiny_rollouts)
    assert (out / "adapter_config.json").exists() and (out / "step6" / "adapter_model.safetensors").exists()
    assert not (out / "step3").exists()  # the analysis step is the top-level adapter
    assert not any("ref" in p.name for p in out.rglob("*"))  # DPO's reference copy is not saved
    tensors = _tensors(out)
    assert len(tensors) == 2 * 4 * 2  # A and B for q/k/v/o in 2 layers
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in tensors.items())
    metrics = (out / "metrics.tsv").read_text().splitlines()
    assert metrics[0].split("\t")[:6] == ["step", "loss", "grad_norm", "learning_rate", "num_tokens", "tokens_per_s"]
    assert len(metrics) == 1 + 6
    saved = json.loads((out / "train_info.json").read_text())
    assert saved["seed"] == 1 and saved["counts"] == info["counts"]
    assert saved["versions"]["torch"] == torch.__version__ and saved["versions"]["trl"]  # the stack it ran on
    assert ("pairs" in info["counts"]) == (loss == "dpo")


@pytest.mark.heavy
def test_same_seed_same_adapter_and_seed_matters(tmp_path, tiny_base, tiny_rollouts):
    spec = method_spec("sft")
    a, _ = _train(tmp_path, spec, tiny_base, tiny_rollouts, seed=1, name="a")
    b, _ = _train(tmp_path, spec, tiny_base, tiny_rollouts, seed=1, name="b")
    c, _ = _train(tmp_path, spec, tiny_base, tiny_rollouts, seed=2, name="c")
    ta, tb, tc = _tensors(a), _tensors(b), _tensors(c)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert not all(torch.equal(ta[k], tc[k]) for k in ta)


def test_lora_init_depends_only_on_the_seed(tiny_base):
    from lossgeom.modeling import load_model

    def a_matrices(loss, seed):
        model = lora_model(load_model(str(tiny_base)), method_spec(loss), seed)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    sft, dpo, other = a_matrices("sft", 7), a_matrices("dpo", 7), a_matrices("sft", 8)
    assert sft.keys() == dpo.keys()
    assert all(torch.equal(sft[k], dpo[k]) for k in sft)
    assert not any(torch.equal(sft[k], other[k]) for k in sft)


@pytest.mark.heavy
def test_killed_job_resumes_to_the_same_adapter(tmp_path, tiny_base, tiny_rollouts, monkeypatch):
    spec = method_spec("rift")
    full, _ = _train(tmp_path, spec, tiny_base, tiny_rollouts, name="full")

    out, ckpt = tmp_path / "killed" / "adapter", tmp_path / "killed" / "ckpt"
    info = kill_then_resume(monkeypatch, spec, 1, tiny_rollouts, tiny_base, out, ckpt)
    assert info["resumed_from"].endswith("checkpoint-4")
    for sub in ("", "step6"):
        ta, tb = _tensors(full / sub), _tensors(out / sub)
        for k in ta:
            torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=1e-7)
    assert not ckpt.exists()


@pytest.mark.heavy
def test_stale_checkpoints_of_another_config_are_not_resumed(tmp_path, tiny_base, tiny_rollouts, monkeypatch):
    original = trainers.SaveAdapterCallback.on_step_end

    def die(self, args, state, control, **kw):
        if state.global_step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainers.SaveAdapterCallback, "on_step_end", die)
    out, ckpt = tmp_path / "x" / "adapter", tmp_path / "x" / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        train_adapter(method_spec("sft"), 1, tiny_rollouts, str(tiny_base), out, ckpt)
    monkeypatch.setattr(trainers.SaveAdapterCallback, "on_step_end", original)
    info = train_adapter(method_spec("sft", learning_rate=5e-3), 1, tiny_rollouts, str(tiny_base), out, ckpt)
    assert info["resumed_from"] is None


@pytest.mark.heavy
@pytest.mark.parametrize(
    "bad, what",
    [
        # NaN in both branches: the loss itself is NaN.
        ({"positive_reward": float("nan"), "negative_reward": float("nan")}, "non-finite loss"),
        # NaN only in the branch torch.where does not select for wrong rows: the loss of a batch can be
        # finite while 0 * NaN poisons the gradient.
        ({"positive_reward": float("nan")}, "non-finite (loss|gradient)"),
    ],
)
def test_non_finite_loss_or_gradient_stops_without_adapter(tmp_path, tiny_base, tiny_rollouts, bad, what):
    spec = method_spec("rift")
    spec = dataclasses.replace(spec, params=dataclasses.replace(spec.params, **bad))
    out = tmp_path / "nan" / "adapter"
    with pytest.raises(trainers.NonFiniteError, match=what):
        train_adapter(spec, 1, tiny_rollouts, str(tiny_base), out, tmp_path / "nan" / "ckpt")
    assert not out.exists()


def test_empty_view_stops_with_method_and_counts(tmp_path, tiny_base, tiny_rollouts):
    import pandas as pd

    df = pd.read_parquet(tiny_rollouts)
    df["reward"] = 0.0
    path = tmp_path / "wrong.parquet"
    df.to_parquet(path)
    with pytest.raises(ViewError, match=r"'m' \(rft\).*'correct': 0"):
        train_adapter(method_spec("rft"), 1, path, str(tiny_base), tmp_path / "o", tmp_path / "c")


@pytest.mark.heavy
@pytest.mark.parametrize("loss", ["rift", "dpo"])
def test_bf16_path_of_the_paper_config_trains(tmp_path, tiny_base, tiny_rollouts, loss):
    """config/paper.yaml trains in bf16 with bfloat16 weights; the same path runs on a CPU."""
    spec = dataclasses.replace(method_spec(loss), precision="bf16")
    out = tmp_path / "bf16" / "adapter"
    train_adapter(spec, 1, tiny_rollouts, str(tiny_base), out, tmp_path / "bf16" / "ckpt", dtype="bfloat16")
    assert any(v.abs().sum() > 0 for k, v in _tensors(out).items() if k.endswith("lora_B.weight"))


def test_a_checkpoint_killed_while_written_is_not_resumed(tmp_path):
    """The Trainer writes a checkpoint in place, trainer_state.json last; a SIGKILL in between leaves a
    partial directory, which is removed so that the job resumes from the previous complete one."""
    from lossgeom.training.job import last_checkpoint

    ckpt = tmp_path / "ckpt"
    assert last_checkpoint(ckpt, "fp") is None
    (ckpt / "checkpoint-2").mkdir()
    (ckpt / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (ckpt / "checkpoint-10").mkdir()
    (ckpt / "checkpoint-10" / "README.md").write_text("partial")
    (ckpt / "checkpoint-4").mkdir()
    (ckpt / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')  # torn while written
    assert last_checkpoint(ckpt, "fp") == str(ckpt / "checkpoint-2")
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint-2", "fingerprint.txt"]
