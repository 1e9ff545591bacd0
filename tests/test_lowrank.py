"""Identities of the low-rank maths and agreement with dense numpy/scipy on small shapes."""

import math

import numpy as np
import pytest
import scipy.linalg as sl

from lossgeom.lora import lowrank as lr

TOL = 1e-8


def _factors(rng, d_out=13, d_in=9, r=4):
    return rng.standard_normal((d_out, r)), rng.standard_normal((r, d_in))


def _dense(B, A, s):
    return s * B @ A


def _orth(rng, n, k):
    return np.linalg.qr(rng.standard_normal((n, k)))[0]


def test_inner_and_norm_match_dense():
    rng = np.random.default_rng(0)
    B1, A1 = _factors(rng, r=3)
    B2, A2 = _factors(rng, r=5)  # ranks may differ
    W1, W2 = _dense(B1, A1, 0.7), _dense(B2, A2, -1.3)
    assert lr.frobenius_inner(B1, A1, 0.7, B2, A2, -1.3) == pytest.approx(np.sum(W1 * W2), rel=TOL)
    assert lr.frobenius_norm(B1, A1, 0.7) == pytest.approx(np.linalg.norm(W1), rel=TOL)
    c = np.sum(W1 * W2) / np.linalg.norm(W1) / np.linalg.norm(W2)
    assert lr.cosine(B1, A1, 0.7, B2, A2, -1.3) == pytest.approx(c, abs=TOL)


def test_self_cosine_is_one_and_scale_gauge_invariance():
    rng = np.random.default_rng(1)
    B, A = _factors(rng)
    assert lr.cosine(B, A, 2.0, B, A, 2.0) == pytest.approx(1.0, abs=1e-12)
    assert lr.cosine(B, A, 2.0, B, A, 17.0) == pytest.approx(1.0, abs=1e-12)  # scale
    G = rng.standard_normal((4, 4)) + 3 * np.eye(4)  # invertible gauge
    Bg, Ag = B @ G, np.linalg.solve(G, A)
    assert lr.cosine(B, A, 1.0, Bg, Ag, 1.0) == pytest.approx(1.0, abs=1e-12)
    B2, A2 = _factors(rng)
    assert lr.cosine(B, A, 1.0, B2, A2, 1.0) == pytest.approx(lr.cosine(Bg, Ag, 5.0, B2, A2, 0.1), abs=1e-12)
    s1 = lr.thin_svd(B, A, 1.5)
    s2 = lr.thin_svd(Bg, Ag, 1.5)
    np.testing.assert_allclose(s1.S, s2.S, rtol=1e-10)
    np.testing.assert_allclose(lr.principal_angles(s1.U, s2.U), 0.0, atol=1e-10)


def test_thin_svd_matches_dense():
    rng = np.random.default_rng(2)
    B, A = _factors(rng, d_out=17, d_in=11, r=5)
    svd = lr.thin_svd(B, A, 0.25)
    W = _dense(B, A, 0.25)
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    assert svd.U.shape == (17, 5) and svd.S.shape == (5,) and svd.V.shape == (11, 5)
    np.testing.assert_allclose(svd.S, S[:5], rtol=TOL, atol=1e-12)
    np.testing.assert_allclose(svd.U @ np.diag(svd.S) @ svd.V.T, W, atol=1e-12)
    np.testing.assert_allclose(np.abs(np.sum(svd.U * U[:, :5], axis=0)), 1.0, atol=TOL)  # up to sign
    np.testing.assert_allclose(np.abs(np.sum(svd.V * Vt[:5].T, axis=0)), 1.0, atol=TOL)
    np.testing.assert_allclose(svd.U.T @ svd.U, np.eye(5), atol=1e-12)


def test_effective_and_stable_rank():
    assert lr.effective_rank([3.0, 3.0, 3.0, 3.0]) == pytest.approx(4.0)
    assert lr.effective_rank([5.0, 0.0, 0.0]) == pytest.approx(1.0)
    s = np.array([4.0, 2.0, 1.0, 1.0])
    p = s / s.sum()
    assert lr.effective_rank(s) == pytest.approx(math.exp(-np.sum(p * np.log(p))))
    assert lr.stable_rank(s) == pytest.approx(np.sum(s**2) / 16.0)
    assert np.isnan(lr.effective_rank([0.0, 0.0])) and np.isnan(lr.stable_rank([0.0, 0.0]))
    np.testing.assert_allclose(lr.effective_rank(np.array([[1.0, 1.0], [1.0, 0.0]])), [2.0, 1.0])


def test_principal_angles_constructed():
    # span{e0, e1, e2} vs span{cos t_i e_i + sin t_i e_{i+3}}: angles exactly t_i
    n = 8
    e = np.eye(n)
    t = np.array([1e-9, 0.3, np.deg2rad(80.0)])
    Q1 = e[:, :3]
    Q2 = np.stack([np.cos(t[i]) * e[:, i] + np.sin(t[i]) * e[:, i + 3] for i in range(3)], axis=1)
    ang = lr.principal_angles(Q1, Q2)
    np.testing.assert_allclose(ang, t, rtol=1e-12, atol=1e-15)  # 1e-9 kept by the sine formula
    np.testing.assert_allclose(lr.principal_angles(Q2, Q1), t, rtol=1e-12, atol=1e-15)
    # scipy 1.17 mixes up its mask in this mixed case and returns 0 for the 1e-9 angle
    assert np.min(sl.subspace_angles(Q1, Q2)) < 1e-12
    assert lr.principal_angles(Q1, Q1[:, ::-1]) == pytest.approx([0, 0, 0], abs=1e-15)


@pytest.mark.parametrize("k1,k2", [(3, 3), (2, 4), (4, 2)])
def test_principal_angles_match_scipy(k1, k2):
    rng = np.random.default_rng(3)
    for _ in range(5):
        Q1, Q2 = _orth(rng, 12, k1), _orth(rng, 12, k2)
        ours = lr.principal_angles(Q1, Q2)
        ref = np.sort(sl.subspace_angles(Q1, Q2))
        np.testing.assert_allclose(ours, ref, atol=TOL)
    # all-small angles (the sine path everywhere, where scipy's mask is right)
    Q1 = _orth(rng, 12, 3)
    Q2 = np.linalg.qr(Q1 + 1e-4 * rng.standard_normal((12, 3)))[0]
    np.testing.assert_allclose(lr.principal_angles(Q1, Q2), np.sort(sl.subspace_angles(Q1, Q2)), rtol=1e-8)


def test_orthogonal_fraction():
    rng = np.random.default_rng(4)
    Ba, Aa = _factors(rng)
    Bb, Ab = _factors(rng)
    Wa, Wb = _dense(Ba, Aa, 2.0), _dense(Bb, Ab, 0.5)
    proj = np.sum(Wa * Wb) / np.sum(Wa * Wa) * Wa
    dense = np.linalg.norm(Wb - proj) / np.linalg.norm(Wb)
    c = lr.cosine(Ba, Aa, 2.0, Bb, Ab, 0.5)
    assert lr.orthogonal_fraction(Ba, Aa, 2.0, Bb, Ab, 0.5) == pytest.approx(dense, abs=TOL)
    assert lr.orthogonal_fraction(Ba, Aa, 2.0, Bb, Ab, 0.5) == pytest.approx(math.sqrt(1 - c * c), abs=1e-14)
    assert lr.orthogonal_fraction(Ba, Aa, 1.0, Ba, Aa, 3.0) == pytest.approx(0.0, abs=1e-7)


def test_interpolate_is_exact():
    rng = np.random.default_rng(5)
    B1, A1 = _factors(rng, r=3)
    B2, A2 = _factors(rng, r=6)
    for a in (0.0, 0.3, 1.0, 1.7):
        B, A, s = lr.interpolate(B1, A1, 0.5, B2, A2, 2.0, a)
        assert B.shape == (13, 9) and A.shape == (9, 9) and s == 1.0
        np.testing.assert_allclose(s * B @ A, (1 - a) * _dense(B1, A1, 0.5) + a * _dense(B2, A2, 2.0), atol=1e-12)


def test_random_references_exact_values():
    assert lr.expected_abs_cosine_random(2) == pytest.approx(2 / math.pi)
    assert lr.expected_abs_cosine_random(3) == pytest.approx(0.5)
    assert lr.expected_sine_random(2) == pytest.approx(2 / math.pi)
    assert lr.expected_sine_random(3) == pytest.approx(math.pi / 4)
    n = 10**8  # large-n asymptotics
    assert lr.expected_abs_cosine_random(n) == pytest.approx(math.sqrt(2 / (math.pi * n)), rel=1e-6)
    rng = np.random.default_rng(6)
    u = rng.standard_normal((20000, 20))
    v = rng.standard_normal((20000, 20))
    c = np.sum(u * v, 1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
    assert np.mean(np.abs(c)) == pytest.approx(lr.expected_abs_cosine_random(20), abs=0.005)
    assert np.mean(np.sqrt(1 - c**2)) == pytest.approx(lr.expected_sine_random(20), abs=0.005)


@pytest.mark.heavy
def test_random_principal_angles_monte_carlo():
    k, n = 3, 30
    mean, sem = lr.random_principal_angles(k, k, n, n_samples=4000, seed=1)
    assert mean.shape == (k,) and np.all(np.diff(mean) > 0)
    # same law as sampling bases in R^n directly
    rng = np.random.default_rng(2)
    direct = np.array([lr.principal_angles(_orth(rng, n, k), _orth(rng, n, k)) for _ in range(3000)])
    tol = 5 * (sem + direct.std(0) / np.sqrt(3000))
    assert np.all(np.abs(mean - direct.mean(0)) < tol), (mean, direct.mean(0), tol)
    # E sum cos^2 = k1 k2 / n exactly
    assert lr.expected_sum_cos2_random(2, 5, 40) == pytest.approx(0.25)
    cos2 = [np.sum(np.cos(lr.principal_angles(_orth(rng, 40, 2), _orth(rng, 40, 5))) ** 2) for _ in range(4000)]
    assert np.mean(cos2) == pytest.approx(0.25, abs=0.02)
    mean_again, _ = lr.random_principal_angles(k, k, n, n_samples=4000, seed=1)
    np.testing.assert_array_equal(mean, mean_again)  # fixed seed: deterministic
