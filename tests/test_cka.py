"""Tests of lossgeom.behaviour.cka against direct (slow) formulas and known properties."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from lossgeom.behaviour.cka import _use_gram, cka_matrix, debiased_linear_cka, linear_cka


def _reference_cka(X, Y):
    """Textbook HSIC form with the centring matrix H = I - 11'/n."""
    n = X.shape[0]
    H = np.eye(n) - 1.0 / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L))


def _hsic_u(K, L):
    """Song et al. (2012) unbiased HSIC, written out literally."""
    n = K.shape[0]
    K, L = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return (
        np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (one @ K @ L @ one)
    ) / (n * (n - 3))


def _reference_debiased(X, Y):
    # deliberately *uncentred* Grams: the U-statistic is translation invariant, so this also
    # checks that centring inside debiased_linear_cka does not change the estimator
    K, L = X @ X.T, Y @ Y.T
    return _hsic_u(K, L) / np.sqrt(_hsic_u(K, K) * _hsic_u(L, L))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# shapes exercising both the feature form (n >> d) and the Gram form (n << d)
SHAPES = [(60, 5, 7), (12, 40, 30), (30, 30, 3)]


@pytest.mark.parametrize("n, d1, d2", SHAPES)
def test_matches_reference_formulas(rng, n, d1, d2):
    X = rng.normal(size=(n, d1)) + 3.0  # offset: centring must be handled internally
    Y = X[:, :1] @ rng.normal(size=(1, d2)) + rng.normal(size=(n, d2))
    assert linear_cka(X, Y) == pytest.approx(_reference_cka(X, Y), rel=1e-10)
    assert debiased_linear_cka(X, Y) == pytest.approx(_reference_debiased(X, Y), rel=1e-8)


def test_gram_choice_by_shape():
    assert _use_gram(100, 2560, 2560)  # paper: 100 prompts, hidden size 2560
    assert not _use_gram(10_000, 16, 16)


@pytest.mark.parametrize("n, d1, d2", SHAPES)
@pytest.mark.parametrize("fn", [linear_cka, debiased_linear_cka])
def test_self_similarity_symmetry_and_invariances(rng, fn, n, d1, d2):
    X = rng.normal(size=(n, d1))
    Y = np.tanh(X @ rng.normal(size=(d1, d2))) + 0.5 * rng.normal(size=(n, d2))
    assert fn(X, X) == pytest.approx(1.0, abs=1e-12)
    value = fn(X, Y)
    assert fn(Y, X) == pytest.approx(value, rel=1e-12)
    Q1, Q2 = ortho_group.rvs(d1, random_state=1), ortho_group.rvs(d2, random_state=2)
    assert fn(X @ Q1, Y @ Q2) == pytest.approx(value, rel=1e-9)
    assert fn(7.5 * X, 0.01 * Y) == pytest.approx(value, rel=1e-9)
    assert fn(X + 100.0, Y - 3.0) == pytest.approx(value, rel=1e-7)


def test_independent_data_biased_small_when_n_large(rng):
    # For independent Gaussians E CKA ~ sqrt(d1 d2 / ((n + d1)(n + d2))) = 10/1010 ~ 0.0099 here
    X, Y = rng.normal(size=(2000, 10)), rng.normal(size=(2000, 10))
    expected = np.sqrt(100.0 / (2010.0 * 2010.0))
    assert 0.5 * expected < linear_cka(X, Y) < 2.0 * expected
    assert abs(debiased_linear_cka(X, Y)) < 0.01


def test_debiasing_removes_high_dimensional_inflation(rng):
    # n << d: biased CKA of independent data is ~ sqrt(d^2/(n+d)^2) = 500/550 ~ 0.91
    X, Y = rng.normal(size=(50, 500)), rng.normal(size=(50, 500))
    assert linear_cka(X, Y) > 0.85
    assert abs(debiased_linear_cka(X, Y)) < 0.05


def test_errors_and_degenerate(rng):
    with pytest.raises(ValueError, match="same number of examples"):
        linear_cka(rng.normal(size=(10, 3)), rng.normal(size=(11, 3)))
    with pytest.raises(ValueError, match="same number of examples"):
        debiased_linear_cka(rng.normal(size=(10, 3)), rng.normal(size=(11, 3)))
    with pytest.raises(ValueError):
        linear_cka(rng.normal(size=10), rng.normal(size=10))
    with pytest.raises(ValueError, match="at least 4"):
        debiased_linear_cka(rng.normal(size=(3, 2)), rng.normal(size=(3, 2)))
    assert np.isnan(linear_cka(np.ones((10, 3)), rng.normal(size=(10, 3))))


def test_cka_matrix(rng):
    n_layers, n = 3, 20
    base = rng.normal(size=(n_layers, n, 8))
    acts = {
        "sft": base,
        "rift": base @ ortho_group.rvs(8, random_state=3) * 2.0,  # same geometry
        "dpo": rng.normal(size=(n_layers, n, 6)),  # different width, unrelated
    }
    df = cka_matrix(acts)
    assert list(df.columns) == ["model_a", "model_b", "layer", "cka", "cka_debiased"]
    assert len(df) == n_layers * 3 * 4 // 2
    pairs = set(zip(df.model_a, df.model_b))
    assert pairs == {("sft", "sft"), ("sft", "rift"), ("sft", "dpo"), ("rift", "rift"), ("rift", "dpo"), ("dpo", "dpo")}
    self_rows = df[df.model_a == df.model_b]
    np.testing.assert_allclose(self_rows[["cka", "cka_debiased"]], 1.0, atol=1e-12)
    sr = df[(df.model_a == "sft") & (df.model_b == "rift")]
    np.testing.assert_allclose(sr["cka"], 1.0, atol=1e-10)
    row = df[(df.model_a == "sft") & (df.model_b == "dpo") & (df.layer == 1)].iloc[0]
    assert row.cka == pytest.approx(linear_cka(acts["sft"][1], acts["dpo"][1]), rel=1e-12)
    assert row.cka_debiased == pytest.approx(debiased_linear_cka(acts["sft"][1], acts["dpo"][1]), rel=1e-10)


def test_cka_matrix_rejects_mismatch(rng):
    with pytest.raises(ValueError, match="'b'"):
        cka_matrix({"a": rng.normal(size=(2, 10, 3)), "b": rng.normal(size=(2, 11, 3))})
    with pytest.raises(ValueError, match="'b'"):
        cka_matrix({"a": rng.normal(size=(2, 10, 3)), "b": rng.normal(size=(3, 10, 3))})
    with pytest.raises(ValueError):
        cka_matrix({"a": rng.normal(size=(10, 3))})
