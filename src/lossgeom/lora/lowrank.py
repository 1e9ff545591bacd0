"""Exact linear algebra on LoRA factors, never forming the dense update.

A LoRA update of one linear layer is ``dW = s * B @ A`` with ``B`` of shape ``(d_out, r)``,
``A`` of shape ``(r, d_in)`` and a scalar scale ``s`` (``alpha / r``, or ``alpha / sqrt(r)`` with
rsLoRA). Every function here works on the factors in float64 and costs ``O((d_out + d_in) r^2)``;
none forms a ``d_out x d_in`` matrix.

Conventions used throughout
---------------------------
* Inner products and norms are Frobenius: ``<X, Y> = trace(X^T Y)``.
* "Left" singular vectors live in the output space (``R^d_out``), "right" ones in the input space.
* Angles returned by :func:`principal_angles` and :func:`random_principal_angles` are in
  **radians**, sorted **ascending** (the first one is the smallest, "top-1" angle). Note that
  ``scipy.linalg.subspace_angles`` returns them descending.
* Singular values are sorted descending.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import gammaln

__all__ = [
    "ThinSVD",
    "as_float64",
    "frobenius_inner",
    "frobenius_norm",
    "cosine",
    "thin_svd",
    "effective_rank",
    "stable_rank",
    "principal_angles",
    "orthogonal_fraction",
    "orthogonal_fraction_from_cosine",
    "interpolate",
    "expected_abs_cosine_random",
    "expected_sine_random",
    "expected_sum_cos2_random",
    "random_principal_angles",
]

# cos^2 >= 1/2 (angle <= 45 degrees): use the sine formula, as scipy.linalg.subspace_angles does
# (Knyazev & Argentati 2002): arccos is ill-conditioned near 0, arcsin near pi/2.
SINE_FORMULA_COS2 = 0.5


def as_float64(x) -> np.ndarray:
    """Return ``x`` as a float64 numpy array (no copy when it already is one)."""
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Inner products, norms, cosines
# --------------------------------------------------------------------------------------------


def frobenius_inner(B1, A1, s1: float, B2, A2, s2: float) -> float:
    """Frobenius inner product ``<s1 B1 A1, s2 B2 A2>`` from the factors.

    Uses ``trace(A1^T B1^T B2 A2) = trace((B1^T B2)(A2 A1^T))``: two small products of shapes
    ``(r1, r2)``, cost ``O((d_out + d_in) r1 r2)``.

    Args:
        B1: ``(d_out, r1)``; A1: ``(r1, d_in)``; s1: scale of the first update.
        B2: ``(d_out, r2)``; A2: ``(r2, d_in)``; s2: scale of the second update.
    """
    B1, A1, B2, A2 = map(as_float64, (B1, A1, B2, A2))
    gb = B1.T @ B2  # (r1, r2)
    ga = A1 @ A2.T  # (r1, r2); trace(X Y^T) = sum(X * Y)
    return float(s1) * float(s2) * float(np.sum(gb * ga))


def frobenius_norm(B, A, s: float = 1.0) -> float:
    """``||s B A||_F`` from the factors (``B``: ``(d_out, r)``, ``A``: ``(r, d_in)``)."""
    return float(np.sqrt(max(frobenius_inner(B, A, s, B, A, s), 0.0)))


def cosine(B1, A1, s1: float, B2, A2, s2: float) -> float:
    """Cosine ``<dW1, dW2> / (||dW1|| ||dW2||)`` of two LoRA updates in the Frobenius space.

    Invariant to the scales' magnitudes (not their signs) and to the gauge ``B -> B G``,
    ``A -> G^{-1} A``. Returns ``nan`` when either update is zero.
    """
    ip = frobenius_inner(B1, A1, s1, B2, A2, s2)
    n1 = frobenius_norm(B1, A1, s1)
    n2 = frobenius_norm(B2, A2, s2)
    if n1 == 0.0 or n2 == 0.0:
        return float("nan")
    return float(np.clip(ip / (n1 * n2), -1.0, 1.0))


def orthogonal_fraction_from_cosine(cos) -> np.ndarray | float:
    """``||dW_b - P_a dW_b||_F / ||dW_b||_F = sqrt(1 - cos^2)`` for ``P_a`` the projection onto
    the direction of ``dW_a``. Written as ``sqrt((1 - c)(1 + c))`` to avoid forming ``c^2``."""
    c = np.clip(np.asarray(cos, dtype=np.float64), -1.0, 1.0)
    out = np.sqrt((1.0 - c) * (1.0 + c))
    return float(out) if out.ndim == 0 else out


def orthogonal_fraction(Ba, Aa, sa: float, Bb, Ab, sb: float) -> float:
    """Orthogonal fraction of ``dW_b`` off the direction of ``dW_a``.

    ``||dW_b - P_a dW_b||_F / ||dW_b||_F`` with ``P_a X = <X, dW_a> dW_a / ||dW_a||^2`` (the
    projection onto the line spanned by ``dW_a`` in the Frobenius inner-product space). It equals
    ``sqrt(1 - cos^2)`` and is therefore symmetric in ``a`` and ``b``. 0 = same direction,
    1 = orthogonal.
    """
    return orthogonal_fraction_from_cosine(cosine(Ba, Aa, sa, Bb, Ab, sb))


# --------------------------------------------------------------------------------------------
# Thin SVD and rank summaries
# --------------------------------------------------------------------------------------------


class ThinSVD(NamedTuple):
    """Thin SVD ``dW = U @ diag(S) @ V.T``.

    U: ``(d_out, k)`` orthonormal columns (left / output singular vectors).
    S: ``(k,)`` singular values, descending, >= 0.
    V: ``(d_in, k)`` orthonormal columns (right / input singular vectors). Note: ``V``, not ``Vt``.
    ``k = min(r, d_out, d_in)``.
    """

    U: np.ndarray
    S: np.ndarray
    V: np.ndarray


def thin_svd(B, A, scale: float = 1.0) -> ThinSVD:
    """Thin SVD of ``scale * B @ A`` from its factors (Householder QR + small core SVD).

    ``B = Qb Rb`` and ``A^T = Qa Ra`` (reduced QR), so ``s B A = Qb (s Rb Ra^T) Qa^T``; the
    ``r x r`` core ``s Rb Ra^T = W diag(S) Z^T`` gives ``U = Qb W``, ``V = Qa Z``.
    Cost ``O((d_out + d_in) r^2 + r^3)``; backward stable for any conditioning of ``B`` and ``A``.

    Args:
        B: ``(d_out, r)``. A: ``(r, d_in)``. scale: the LoRA scale ``s``.
    Returns:
        :class:`ThinSVD` with ``k = min(r, d_out, d_in)`` components.
    """
    B = as_float64(B)
    A = as_float64(A)
    if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(f"thin_svd: need B (d_out, r) and A (r, d_in); got {B.shape} and {A.shape}")
    qb, rb = np.linalg.qr(B)  # (d_out, kb), (kb, r)
    qa, ra = np.linalg.qr(A.T)  # (d_in, ka), (ka, r)
    core = float(scale) * (rb @ ra.T)  # (kb, ka)
    w, s, zt = np.linalg.svd(core, full_matrices=False)
    return ThinSVD(U=qb @ w, S=s, V=qa @ zt.T)


def effective_rank(S) -> float:
    """Effective rank ``exp(H(p))`` with ``p_i = s_i / sum_j s_j`` (Roy & Vetterli 2007).

    ``H(p) = -sum_i p_i log p_i`` (natural log, ``0 log 0 = 0``) is the Shannon entropy of the
    singular values normalised to sum 1 (singular values, not their squares). Ranges from 1 (one
    direction) to the number of non-zero singular values (all equal). ``nan`` for a zero matrix.

    Args:
        S: ``(..., k)`` singular values; the reduction is over the last axis.
    """
    S = np.abs(as_float64(S))
    tot = S.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = S / tot
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        out = np.exp(-plogp.sum(axis=-1))
    out = np.where(tot[..., 0] > 0, out, np.nan)
    return float(out) if out.ndim == 0 else out


def stable_rank(S) -> float:
    """Stable rank ``||dW||_F^2 / s_1^2 = sum_i s_i^2 / max_i s_i^2`` (``nan`` for a zero matrix).

    Args:
        S: ``(..., k)`` singular values; the reduction is over the last axis.
    """
    S = as_float64(S)
    s1 = np.max(np.abs(S), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(s1 > 0, np.sum(S * S, axis=-1) / (s1 * s1), np.nan)
    return float(out) if out.ndim == 0 else out


# --------------------------------------------------------------------------------------------
# Principal angles
# --------------------------------------------------------------------------------------------


def principal_angles(Q1, Q2) -> np.ndarray:
    """Principal angles between the column spaces of two orthonormal bases, in radians, ascending.

    The algorithm is the one of ``scipy.linalg.subspace_angles`` (Knyazev & Argentati 2002):
    cosines ``c_i`` are the singular values of ``Q1^T Q2``; sines are the singular values of the
    residual ``Q2 - Q1 (Q1^T Q2)`` (of the larger basis off the smaller one); an angle with
    ``c_i^2 >= 1/2`` is taken from its sine (accurate for small angles), the others from
    ``arccos`` (accurate for large ones).

    One deliberate difference: scipy 1.17 applies the ``c^2 >= 1/2`` mask, computed in the order of
    descending cosines, to arrays in the order of descending angles, so when small and large angles
    mix it takes the small ones from ``arccos`` (e.g. it returns 0 for an angle of 1e-9 that sits
    beside an angle of 80 degrees). Here each angle is taken from the formula that is accurate for
    it. Where all angles are on the same side of 45 degrees the two agree to rounding.

    Args:
        Q1: ``(n, k1)`` with orthonormal columns. Q2: ``(n, k2)`` with orthonormal columns.
    Returns:
        ``(min(k1, k2),)`` angles in radians in ``[0, pi/2]``, ascending (smallest first).
    """
    Q1 = as_float64(Q1)
    Q2 = as_float64(Q2)
    if Q1.ndim != 2 or Q2.ndim != 2 or Q1.shape[0] != Q2.shape[0]:
        raise ValueError(f"principal_angles: bases must be (n, k); got {Q1.shape} and {Q2.shape}")
    k = min(Q1.shape[1], Q2.shape[1])
    if k == 0:
        return np.zeros(0)
    if Q1.shape[1] < Q2.shape[1]:  # residual of the larger basis off the smaller one, as scipy
        Q1, Q2 = Q2, Q1
    cross = Q1.T @ Q2  # (k1, k2), k1 >= k2
    cos = np.clip(np.linalg.svd(cross, compute_uv=False), -1.0, 1.0)  # descending, length k
    use_sine = cos**2 >= SINE_FORMULA_COS2
    angles = np.arccos(cos)  # ascending angles
    if use_sine.any():
        resid = Q2 - Q1 @ cross  # (n, k2)
        sin = np.clip(np.linalg.svd(resid, compute_uv=False), -1.0, 1.0)  # descending sines
        from_sine = np.arcsin(sin[::-1])  # ascending angles
        angles = np.where(use_sine, from_sine, angles)
    return np.sort(angles)


# --------------------------------------------------------------------------------------------
# Interpolation
# --------------------------------------------------------------------------------------------


def interpolate(B1, A1, s1: float, B2, A2, s2: float, a: float) -> tuple[np.ndarray, np.ndarray, float]:
    """``(1 - a) dW1 + a dW2`` as one LoRA of rank ``r1 + r2`` (exact, gauge-free).

    ``B = [(1 - a) s1 B1 | a s2 B2]`` (``(d_out, r1 + r2)``), ``A = [A1; A2]``
    (``(r1 + r2, d_in)``), scale 1. Interpolating deltas, never factors: factor-wise interpolation
    depends on the gauge ``B -> B G, A -> G^{-1} A`` and is not a point on the segment.

    Returns:
        ``(B, A, 1.0)``.
    """
    B1, A1, B2, A2 = map(as_float64, (B1, A1, B2, A2))
    B = np.concatenate([(1.0 - a) * float(s1) * B1, a * float(s2) * B2], axis=1)
    A = np.concatenate([A1, A2], axis=0)
    return B, A, 1.0


# --------------------------------------------------------------------------------------------
# Reference values for unrelated (random) directions and subspaces
# --------------------------------------------------------------------------------------------


def expected_abs_cosine_random(n) -> float:
    """Exact ``E|<u, u'>|`` for independent uniform random unit vectors in ``R^n`` (n >= 2).

    ``Gamma(n/2) / (sqrt(pi) Gamma((n+1)/2))``, about ``sqrt(2 / (pi n))`` for large ``n``. This is
    the chance level of a cosine (global, per layer or per module, with ``n`` the number of
    weights compared) and of the top-1 singular vector agreement ``|<u1, u1'>|`` (``n = d``).
    """
    n = np.asarray(n, dtype=np.float64)
    out = np.exp(gammaln(n / 2) - gammaln((n + 1) / 2) - 0.5 * np.log(np.pi))
    return float(out) if out.ndim == 0 else out


def expected_sine_random(n) -> float:
    """Exact ``E sqrt(1 - <u, u'>^2)`` for independent uniform random unit vectors in ``R^n``.

    ``Gamma(n/2)^2 / (Gamma((n+1)/2) Gamma((n-1)/2))`` (from ``<u,u'>^2 ~ Beta(1/2, (n-1)/2)``).
    The chance level of the orthogonal fraction; ``1 - 1/(4n) + O(n^-2)``.
    """
    n = np.asarray(n, dtype=np.float64)
    out = np.exp(2 * gammaln(n / 2) - gammaln((n + 1) / 2) - gammaln((n - 1) / 2))
    return float(out) if out.ndim == 0 else out


def expected_sum_cos2_random(k1: int, k2: int, n: int) -> float:
    """Exact ``E sum_i cos^2(theta_i) = k1 k2 / n`` for a uniformly random ``k1``-dim subspace and
    any fixed ``k2``-dim subspace of ``R^n`` (``E trace(P1 P2) = trace(P2) k1 / n``)."""
    return float(k1) * float(k2) / float(n)


def random_principal_angles(
    k1: int, k2: int, n: int, n_samples: int = 4000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Monte-Carlo mean of the sorted principal angles between random subspaces (radians).

    The subspaces are a uniformly random ``k1``-dim subspace and a fixed ``k2``-dim one of
    ``R^n`` (by rotation invariance the same as two independent random ones). There is no simple
    closed form for the expected individual angles, so they are estimated with a fixed seed
    (deterministic). The cost does not grow with ``n``: with ``X ~ N(0, 1)^{n x k1}`` split into
    its first ``k2`` rows ``X1`` and the rest ``X2``, the squared cosines are the eigenvalues of
    ``(W1 + W2)^{-1} W1`` with ``W1 = X1^T X1`` and ``W2 = X2^T X2 ~ Wishart_k1(n - k2, I)``,
    which is drawn with the Bartlett decomposition in ``O(k1^2)``. Standard errors at the defaults
    are about 0.01-0.05 degrees for the sizes of the paper (k = 10, n = 1024..4096).

    Args:
        k1, k2: subspace dimensions (>= 1). n: ambient dimension (>= k1 + k2 for the fast path;
            smaller ``n`` falls back to sampling bases in ``R^n`` directly).
        n_samples: Monte-Carlo draws. seed: seed of ``numpy.random.default_rng``.
    Returns:
        ``(mean, sem)``: arrays of shape ``(min(k1, k2),)``: mean angle of each rank (ascending,
        element 0 = expected smallest "top-1" angle, element -1 = expected largest "worst" angle)
        and its Monte-Carlo standard error, in radians.
    """
    k1, k2, n = int(k1), int(k2), int(n)
    if min(k1, k2) < 1 or n < max(k1, k2):
        raise ValueError(f"random_principal_angles: need 1 <= k1, k2 <= n; got {k1}, {k2}, {n}")
    rng = np.random.default_rng(seed)
    k = min(k1, k2)
    if n - k2 >= k1:
        x1 = rng.standard_normal((n_samples, k2, k1))
        w1 = np.swapaxes(x1, 1, 2) @ x1  # (S, k1, k1)
        # Bartlett: W2 = L L^T, L lower triangular, L_ii^2 ~ chi2(m - i) (i = 0..k1-1), L_ij ~ N(0,1)
        m = n - k2
        L = np.tril(rng.standard_normal((n_samples, k1, k1)), -1)
        dof = m - np.arange(k1)
        idx = np.arange(k1)
        L[:, idx, idx] = np.sqrt(rng.chisquare(dof, size=(n_samples, k1)))
        w2 = L @ np.swapaxes(L, 1, 2)
        c = np.linalg.cholesky(w1 + w2)  # (W1 + W2) = C C^T
        ci = np.linalg.inv(c)
        m_sym = ci @ w1 @ np.swapaxes(ci, 1, 2)  # C^-1 W1 C^-T, same eigenvalues
        cos2 = np.linalg.eigvalsh(m_sym)[:, ::-1][:, :k]  # descending squared cosines
    else:  # tiny ambient dimension: sample orthonormal bases directly
        q1 = np.linalg.qr(rng.standard_normal((n_samples, n, k1)))[0]
        cos2 = np.linalg.svd(q1[:, :k2, :], compute_uv=False)[:, :k] ** 2
    ang = np.arccos(np.sqrt(np.clip(cos2, 0.0, 1.0)))  # ascending per draw
    return ang.mean(axis=0), ang.std(axis=0, ddof=1) / np.sqrt(n_samples)
