"""Tests of lossgeom.losses (the loss functions) against values worked out by hand from the docstring formulas.

The tiny batch: 2 rows x 3 tokens, token probabilities

    row 0: p = [0.5, 0.25, 0.1]   mask [1, 1, 0]   (-log p = ln2, 2 ln2, masked)
    row 1: p = [0.5, 0.5, 0.125]  mask [1, 1, 1]   (-log p = ln2, ln2, 3 ln2)

so num_tokens = 5, the row NLLs are 3 ln2 and 5 ln2, and the masked token (p = 0.1) must never count.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from lossgeom.losses import kl_k3, offline_grpo_loss, rift_loss, weighted_nll
from lossgeom.training.views import grpo_advantages

LN2 = math.log(2.0)
P = torch.tensor([[0.5, 0.25, 0.1], [0.5, 0.5, 0.125]], dtype=torch.float64)
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
N = 5


def _logp() -> torch.Tensor:
    return P.log().clone()


# ---------------------------------------------------------------- weighted NLL
def test_weighted_nll_by_hand():
    w = torch.tensor([2.0, -0.5], dtype=torch.float64)
    # (2 * 3 ln2 + (-0.5) * 5 ln2) / 5 = 0.7 ln2
    expected = (2.0 * 3 * LN2 - 0.5 * 5 * LN2) / 5
    assert weighted_nll(_logp(), MASK, w, N).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.7 * LN2)


def test_weighted_nll_unit_weights_is_masked_token_mean():
    ones = torch.ones(2, dtype=torch.float64)
    assert weighted_nll(_logp(), MASK, ones, N).item() == pytest.approx(8 * LN2 / 5, rel=1e-12)
    # num_tokens as a tensor (as TRL passes num_items_in_batch) gives the same
    assert weighted_nll(_logp(), MASK, ones, torch.tensor(5)).item() == pytest.approx(8 * LN2 / 5, rel=1e-12)


def test_weighted_nll_unit_weights_equals_cross_entropy_with_ignore_index():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (3, 4), generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float64)
    logp = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1) * mask
    ce = F.cross_entropy(logits.reshape(-1, 7), labels.masked_fill(mask == 0, -100).reshape(-1), ignore_index=-100)
    got = weighted_nll(logp, mask, torch.ones(3, dtype=torch.float64), mask.sum())
    assert got.item() == pytest.approx(ce.item(), rel=1e-12)


def test_weighted_nll_ignores_masked_tokens():
    logp = _logp()
    logp2 = logp.clone()
    logp2[0, 2] = -50.0
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)
    assert weighted_nll(logp, MASK, w, N).item() == weighted_nll(logp2, MASK, w, N).item()


# ---------------------------------------------------------------- RIFT
def test_rift_positive_then_negative_by_hand():
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    # row 0 positive: R+ * (ln2 + 2 ln2); row 1 negative: |R-| * (0.5 + 0.5 + 0.125)
    expected = (2.0 * 3 * LN2 + 0.2 * 1.125) / 5
    got = rift_loss(_logp(), MASK, rewards, positive_reward=2.0, negative_reward=-0.2, num_tokens=N)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_rift_negative_then_positive_by_hand():
    rewards = torch.tensor([0.0, 1.0], dtype=torch.float64)
    # row 0 negative: 0.2 * (0.5 + 0.25) (the masked 0.1 does not count); row 1 positive: 1 * 5 ln2
    expected = (0.2 * 0.75 + 1.0 * 5 * LN2) / 5
    got = rift_loss(_logp(), MASK, rewards, positive_reward=1.0, negative_reward=-0.2, num_tokens=N)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_rift_zero_negative_reward_ignores_negatives():
    rewards = torch.tensor([0.0, 1.0], dtype=torch.float64)
    got = rift_loss(_logp(), MASK, rewards, positive_reward=1.0, negative_reward=0.0, num_tokens=N)
    assert got.item() == pytest.approx(5 * LN2 / 5, rel=1e-12)


def test_rift_negative_term_bounded():
    # a negative token with p -> 0 costs -> 0 instead of running to -inf like R- * -log p
    logp = torch.tensor([[-1e4, -1e4]], dtype=torch.float64)
    got = rift_loss(logp, torch.ones(1, 2, dtype=torch.float64), torch.tensor([0.0]), 1.0, -0.2, 2)
    assert got.item() == pytest.approx(0.0, abs=1e-300)
    assert torch.isfinite(got)


def test_rift_gradient_wrt_logp_by_hand():
    logp = _logp().requires_grad_(True)
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    rift_loss(logp, MASK, rewards, 2.0, -0.2, N).backward()
    # positive tokens: d(R+ * -logp)/dlogp = -R+ / N; negative tokens: d(|R-| e^logp)/dlogp = |R-| p / N
    expected = torch.tensor(
        [[-2.0 / 5, -2.0 / 5, 0.0], [0.2 * 0.5 / 5, 0.2 * 0.5 / 5, 0.2 * 0.125 / 5]], dtype=torch.float64
    )
    torch.testing.assert_close(logp.grad, expected, rtol=1e-12, atol=1e-15)


def test_rift_step_lowers_negative_and_raises_positive_token_probs():
    torch.manual_seed(0)
    V = 5
    logits = torch.nn.Parameter(torch.randn(2, 3, V, dtype=torch.float64))
    labels = torch.tensor([[1, 3, 0], [4, 2, 2]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)

    def token_probs():
        return torch.softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)

    before = token_probs().detach().clone()
    logp = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    loss = rift_loss(logp, mask, torch.tensor([1.0, 0.0]), 1.0, -0.2, mask.sum())
    loss.backward()
    with torch.no_grad():
        logits -= 1.0 * logits.grad
    after = token_probs().detach()
    assert (after[0] > before[0]).all(), "the positive rollout's tokens must become more likely"
    assert (after[1, :2] < before[1, :2]).all(), "the negative rollout's tokens must become less likely"
    assert after[1, 2] == before[1, 2], "a masked token must not move"


# ---------------------------------------------------------------- offline GRPO
def test_grpo_equal_rewards_is_b_times_nll():
    adv = torch.tensor(grpo_advantages(pd.Series([1.0, 1.0]), pd.Series(["g", "g"]), bias=0.1, std_normalize=False))
    assert adv.tolist() == [0.1, 0.1]
    got = offline_grpo_loss(_logp(), MASK, adv, N)
    assert got.item() == pytest.approx(0.1 * 8 * LN2 / 5, rel=1e-12)


def test_grpo_mixed_group_by_hand():
    # group [1, 0], b = 0.1: A = [0.6, -0.4]; (0.6 * 3 ln2 - 0.4 * 5 ln2) / 5 = -0.04 ln2
    adv = torch.tensor(grpo_advantages(pd.Series([1.0, 0.0]), pd.Series(["g", "g"]), bias=0.1, std_normalize=False))
    torch.testing.assert_close(adv, torch.tensor([0.6, -0.4], dtype=torch.float64))
    assert offline_grpo_loss(_logp(), MASK, adv, N).item() == pytest.approx(-0.04 * LN2, rel=1e-10)


def test_kl_k3_by_hand_and_nonnegative():
    logp = torch.tensor([0.0, -1.0, -2.0], dtype=torch.float64) - 0.3
    ref = logp + torch.tensor([LN2, 0.0, -LN2], dtype=torch.float64)
    # d = ln2: 2 - ln2 - 1; d = 0: 0; d = -ln2: 0.5 + ln2 - 1
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor([1 - LN2, 0.0, LN2 - 0.5], dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    a, b = -torch.rand(100, generator=g) * 5, -torch.rand(100, generator=g) * 5
    assert (kl_k3(a, b) >= 0).all()


def test_grpo_kl_zero_when_ref_equals_policy():
    adv = torch.tensor([0.6, -0.4], dtype=torch.float64)
    plain = offline_grpo_loss(_logp(), MASK, adv, N)
    with_kl = offline_grpo_loss(_logp(), MASK, adv, N, ref_logp=_logp(), kl_coef=0.5)
    assert with_kl.item() == plain.item()


def test_grpo_kl_term_by_hand():
    adv = torch.tensor([0.6, -0.4], dtype=torch.float64)
    ref = _logp()
    ref[0, 0] += LN2  # k3 = 1 - ln2
    ref[1, 2] -= LN2  # k3 = ln2 - 0.5
    ref[0, 2] += 5.0  # masked: must not count
    plain = offline_grpo_loss(_logp(), MASK, adv, N)
    with_kl = offline_grpo_loss(_logp(), MASK, adv, N, ref_logp=ref, kl_coef=0.5)
    # 0.5 * ((1 - ln2) + (ln2 - 0.5)) / 5 = 0.05
    assert (with_kl - plain).item() == pytest.approx(0.05, rel=1e-10)
    assert with_kl.item() > plain.item()


def test_grpo_kl_needs_ref():
    with pytest.raises(ValueError, match="reference"):
        offline_grpo_loss(_logp(), MASK, torch.ones(2, dtype=torch.float64), N, ref_logp=None, kl_coef=0.1)
    # without a KL coefficient no reference is needed, and a given one is ignored
    ones = torch.ones(2, dtype=torch.float64)
    a = offline_grpo_loss(_logp(), MASK, ones, N)
    b = offline_grpo_loss(_logp(), MASK, ones, N, ref_logp=_logp() - 1.0, kl_coef=0.0)
    assert a.item() == b.item() == pytest.approx(8 * LN2 / 5)


# ---------------------------------------------------------------- DFT (TRL's formula)
TRL_DFT_LINE = "per_token_loss = per_token_loss * outputs.log_probs.exp().detach()"


def test_trl_sft_trainer_has_the_dft_formula():
    """DFT is not implemented in lossgeom: SFTConfig(loss_type="dft") uses TRL's SFTTrainer.compute_loss,
    which (trl 1.16.0, trl/trainer/sft_trainer.py, lines 1611-1617) does

        per_token_loss = -outputs.log_probs  # zero on ignored positions
        if self.args.loss_type == "dft":
            per_token_loss = per_token_loss * outputs.log_probs.exp().detach()
        ...
        loss = per_token_loss.sum() / torch.as_tensor(num_tokens).clamp(min=1)

    This test reads the file without importing trl, so it fails if TRL changes the formula that the
    test below reproduces."""
    spec = importlib.util.find_spec("trl")
    assert spec is not None and spec.submodule_search_locations
    src = (Path(list(spec.submodule_search_locations)[0]) / "trainer" / "sft_trainer.py").read_text()
    assert "per_token_loss = -outputs.log_probs" in src
    assert TRL_DFT_LINE in src
    assert "loss = per_token_loss.sum() / torch.as_tensor(num_tokens).clamp(min=1)" in src


def _trl_dft(logp: torch.Tensor, num_tokens) -> torch.Tensor:
    """TRL's DFT reduction, written out: -log p * sg(p), summed, over num_tokens (log p is 0 where ignored)."""
    per_token = -logp
    per_token = per_token * logp.exp().detach()
    return per_token.sum() / num_tokens


def test_dft_value_by_hand():
    logp = _logp() * MASK  # TRL's log_probs are zero on ignored positions
    # row 0: 0.5 ln2 + 0.25 * 2 ln2 = ln2; row 1: 0.5 ln2 + 0.5 ln2 + 0.125 * 3 ln2 = 1.375 ln2
    assert _trl_dft(logp, N).item() == pytest.approx((1.0 + 1.375) * LN2 / 5, rel=1e-12)


def test_dft_weights_are_detached_probabilities():
    """grad(DFT) = sum_t p_t * grad(-log p_t): the token weight is the probability, held constant."""
    torch.manual_seed(0)
    V = 6
    logits = torch.randn(2, 3, V, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 5, 2], [1, 1, 3]])
    mask = MASK
    logp = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1) * mask
    (grad,) = torch.autograd.grad(_trl_dft(logp, N), logits, retain_graph=True)

    # d(-log p_y)/dz = softmax(z) - onehot(y); times p_y, masked, over N
    with torch.no_grad():
        sm = torch.softmax(logits, -1)
        p_y = sm.gather(-1, labels[..., None])
        expected = p_y * (sm - F.one_hot(labels, V).double()) * mask[..., None] / N
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)
    # ...which is not the plain NLL gradient (the weights matter)
    (nll_grad,) = torch.autograd.grad(-(logp * mask).sum() / N, logits, retain_graph=True)
    assert not torch.allclose(grad, nll_grad)
    # and equals weighted_nll's gradient when the per-token weight p is given as a constant
    p_const = logp.exp().detach()
    (via_weights,) = torch.autograd.grad((p_const * -logp * mask).sum() / N, logits)
    torch.testing.assert_close(grad, via_weights, rtol=1e-12, atol=1e-15)


def test_rift_sequence_negative_by_hand():
    """negative_prob='sequence': |R-| * p(y) on each token of a wrong row, p(y) = prod_t p_t."""
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    got = rift_loss(
        _logp(), MASK, rewards, positive_reward=1.0, negative_reward=-0.2, num_tokens=N, negative_prob="sequence"
    )
    p_seq = 0.5 * 0.5 * 0.125  # row 2 has all three tokens in the mask
    expected = (-math.log(0.5) - math.log(0.25) + 3 * 0.2 * p_seq) / N
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # gradient on each token of the wrong row: |R-| * p(y) * (tokens in row) / N ... per token: |R-| p(y) * 3 / N
    logp = _logp().requires_grad_(True)
    rift_loss(logp, MASK, rewards, 1.0, -0.2, N, negative_prob="sequence").backward()
    assert logp.grad[1].tolist() == pytest.approx([3 * 0.2 * p_seq / N] * 3, rel=1e-12)
    with pytest.raises(ValueError, match="negative_prob"):
        rift_loss(_logp(), MASK, rewards, 1.0, -0.2, N, negative_prob="row")


def test_rift_sequence_and_token_agree_on_positives_only():
    rewards = torch.tensor([1.0, 1.0], dtype=torch.float64)
    a = rift_loss(_logp(), MASK, rewards, 1.0, -0.2, N, negative_prob="token")
    b = rift_loss(_logp(), MASK, rewards, 1.0, -0.2, N, negative_prob="sequence")
    assert float(a) == pytest.approx(float(b), rel=1e-12)


# ---------------------------------------------------------------- the registry's discovery rule
def test_the_registry_holds_every_module_with_loss_and_nothing_else():
    import pkgutil

    import lossgeom.losses as package
    from lossgeom.losses import LOSSES

    with_loss = {
        importlib.import_module(f"lossgeom.losses.{info.name}").LOSS.name
        for info in pkgutil.iter_modules(package.__path__)
        if hasattr(importlib.import_module(f"lossgeom.losses.{info.name}"), "LOSS")
    }
    assert set(LOSSES) == with_loss
    assert list(LOSSES)[:6] == ["sft", "rft", "dft", "rift", "offline_grpo", "dpo"]
    for shared in ("base", "functions", "rows", "pairwise"):
        assert not hasattr(importlib.import_module(f"lossgeom.losses.{shared}"), "LOSS")


def _package(tmp_path, monkeypatch, modules: dict[str, str], tag: str = "") -> tuple[str, list[str]]:
    """A throwaway package of loss modules (name -> source) on sys.path: (its name, its __path__)."""
    name = f"scratch_losses_{tmp_path.name.replace('-', '_')}{tag}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, [str(root)]


_HEAD = "from lossgeom.losses.rows import RowsLoss\n\n\n"


def test_discovery_registers_loss_modules_and_skips_shared_ones(tmp_path, monkeypatch):
    from lossgeom.losses import _discover

    package, path = _package(
        tmp_path,
        monkeypatch,
        {
            "shared": _HEAD + "class Weighted(RowsLoss):\n    pass\n",
            "mine": _HEAD + "class Mine(RowsLoss):\n    name = 'mine'\n\n\nLOSS = Mine()\n",
        },
    )
    assert list(_discover(package, path)) == ["mine"]


def test_discovery_stops_at_a_loss_module_whose_loss_is_misspelt(tmp_path, monkeypatch):
    from lossgeom.losses import _discover

    package, path = _package(
        tmp_path, monkeypatch, {"mine": _HEAD + "class Mine(RowsLoss):\n    name = 'mine'\n\n\nLOSSS = Mine()\n"}
    )
    with pytest.raises(RuntimeError, match=r"defines the loss class\(es\) \[.Mine.\] but no LOSS"):
        _discover(package, path)


def test_discovery_stops_at_a_loss_that_is_not_a_loss_or_is_defined_twice(tmp_path, monkeypatch):
    from lossgeom.losses import _discover

    package, path = _package(tmp_path, monkeypatch, {"odd": "LOSS = 'sft'\n"})
    with pytest.raises(RuntimeError, match="not an instance of a Loss subclass"):
        _discover(package, path)

    source = _HEAD + "class Mine(RowsLoss):\n    name = 'mine'\n\n\nLOSS = Mine()\n"
    package, path = _package(tmp_path, monkeypatch, {"one": source, "two": source}, tag="_twice")
    with pytest.raises(RuntimeError, match=r"loss 'mine' is defined twice \(modules one and two\)"):
        _discover(package, path)
