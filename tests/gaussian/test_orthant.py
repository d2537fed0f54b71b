"""The orthant closed form for ReLU-family products (pdlt.gaussian._orthant).

References: exact orthant probabilities (equicorrelated, factorized), an
independent polar integral for rank-2 covariances (scipy.integrate.quad
between the kinks), and the split Gauss-Legendre path of ``_multi`` (the
general path the closed form replaces), compared to the 1e-8 contract of
issue #15 relative to the Cauchy-Schwarz scale ``prod_k <|f_k|^d>^(1/d)``.
"""

import math

import numpy as np
import pytest
from scipy import integrate, special

import pdlt.gaussian._multi as multi
from pdlt import activation
from pdlt.gaussian._multi import PiecewiseMonomial as PM
from pdlt.gaussian._multi import _factor, _split_path, expect_nd, quad_expectations
from pdlt.gaussian._orthant import orthant_expect, orthant_probability

CONTRACT = 1e-8


def _cs_scale(fs, K):
    """``prod_k <|f_k|^d>^(1/d)`` (B,) from the absolute Gaussian moments."""
    d = len(fs)
    out = np.ones(K.shape[0])
    for k, f in enumerate(fs):
        m = f.n * d
        absmom = 2.0 ** (m / 2) * special.gamma((m + 1) / 2) / math.sqrt(math.pi)
        out *= (max(abs(f.cp), abs(f.cm)) ** d * absmom * K[:, k, k] ** (m / 2)) ** (1 / d)
    return out


def _gram(rng, B, d, n0):
    X = rng.standard_normal((B, d, n0))
    return X, X @ np.swapaxes(X, 1, 2) / n0


def test_p4_exact_values():
    # equicorrelated rho = 1/2: P = 1/(d+1); two independent pairs: a product of
    # Sheppard's 1/4 + asin(rho)/(2 pi); one independent variable: P3 / 2.
    # Stated accuracy of the P4 integral: 1e-12 (module doc); float64 round-off ~1e-16
    R = np.full((1, 4, 4), 0.5) + 0.5 * np.eye(4)
    p, e = orthant_probability(R, return_error=True)
    assert abs(p[0] - 0.2) < 1e-12 and e[0] < 1e-12
    a, b = 0.83, -0.61
    R = np.eye(4)[None].copy()
    R[0, 0, 1] = R[0, 1, 0] = a
    R[0, 2, 3] = R[0, 3, 2] = b
    want = (0.25 + math.asin(a) / (2 * math.pi)) * (0.25 + math.asin(b) / (2 * math.pi))
    assert abs(orthant_probability(R)[0] - want) < 1e-12
    R3 = np.array([[1.0, 0.3, -0.7], [0.3, 1.0, 0.2], [-0.7, 0.2, 1.0]])
    R = np.eye(4)[None].copy()
    R[0, :3, :3] = R3
    p3 = orthant_probability(R3[None])[0]
    assert abs(orthant_probability(R)[0] - p3 / 2) < 1e-12
    # the check can fail: Sheppard's terms alone (no Plackett integral) miss 1/5 by far
    eq = np.full((4, 4), 0.5) + 0.5 * np.eye(4)
    sheppard = 1 / 16 + 6 * math.asin(0.5) / (8 * math.pi)
    assert abs(sheppard - 0.2) > 1e3 * 1e-12
    assert abs(orthant_probability(eq[None])[0] - sheppard) > 1e3 * 1e-12


_CASES = {
    "relu ssss": [PM(1, 0, 1)] * 4,
    "relu s2ss": [PM(1, 0, 2), PM(1, 0, 1), PM(1, 0, 1)],
    "relu s3s": [PM(1, 0, 3), PM(1, 0, 1)],
    "relu s2s2": [PM(1, 0, 2), PM(1, 0, 2)],
    "relu ppss": [PM(1, 0, 0), PM(1, 0, 0), PM(1, 0, 1), PM(1, 0, 1)],
    "relu sss": [PM(1, 0, 1)] * 3,
    "leaky ssss": [PM(1, 0.1, 1)] * 4,
    "abs ssss": [PM(1, -1, 1)] * 4,
    "leaky pssp": [PM(1, 0.2, 0), PM(1, 0.2, 1), PM(1, 0.2, 1), PM(1, 0.2, 0)],
}


@pytest.mark.parametrize("name", list(_CASES))
def test_full_rank_equals_split_path(name):
    # the closed form against the general (split Gauss-Legendre) path at "high":
    # equal to the contract, 1e-8 of the Cauchy-Schwarz scale
    fs = _CASES[name]
    rng = np.random.default_rng(7)
    _, K = _gram(rng, 12, len(fs), 6)
    got, est, ok = orthant_expect(fs, K, return_error=True)
    assert ok.all()
    order, L = _factor(K)
    ref, ref_err = _split_path(fs, order, L, (0.0,), "high", True, exact_inner=True)
    scale = _cs_scale(fs, K)
    assert np.all(np.abs(got - ref) < CONTRACT * scale)
    assert np.all(est < 1e-10 * scale)
    # the same comparison rejects a result off by 1e-7 of the scale
    assert not np.all(np.abs(got + 1e-7 * scale - ref) < CONTRACT * scale)


def _polar_reference(fs, X):
    """``<prod f_k(x_k . u)>`` for u ~ N(0, I_2): the radial part in closed form
    (``<r^D>`` of chi_2) and the angle by adaptive quadrature between the kinks."""
    D = sum(f.n for f in fs)
    r_mom = 2.0 ** (D / 2) * math.gamma(1 + D / 2)
    br = sorted({(math.atan2(-x[0], x[1]) + s) % (2 * math.pi) for x in X for s in (0, math.pi)})
    br = [0.0] + br + [2 * math.pi]

    def g(t):
        z = X @ np.array([math.cos(t), math.sin(t)])
        return float(np.prod([f(np.array([v]))[0] for f, v in zip(fs, z)]))
    tot = sum(integrate.quad(g, a, b, epsabs=1e-15, epsrel=1e-13)[0] for a, b in zip(br[:-1], br[1:]))
    return tot / (2 * math.pi) * r_mom


@pytest.mark.parametrize("name", ["relu ssss", "relu ppss", "relu s2ss", "leaky pssp", "abs ssss"])
def test_rank_two_against_polar_reference(name):
    # inputs in 2 dimensions: the 4 x 4 (3 x 3) covariances have rank 2 (the cone
    # path); independent reference to ~1e-13, tolerance the contract
    fs = _CASES[name]
    rng = np.random.default_rng(11)
    X, K = _gram(rng, 12, len(fs), 2)
    got, est, ok = orthant_expect(fs, K, return_error=True)
    assert ok.all()
    want = np.array([_polar_reference(fs, X[b] / math.sqrt(2)) for b in range(len(K))])
    scale = _cs_scale(fs, K)
    assert np.all(np.abs(got - want) < CONTRACT * scale), np.max(np.abs(got - want) / scale)
    assert np.all(np.abs(got - want) <= est + 1e-12 * scale)


@pytest.mark.parametrize("name", ["relu ssss", "leaky ssss"])
def test_rank_three_equals_split_path(name):
    # inputs in 3 dimensions (the benchmark's first layer): rank-3 4 x 4 covariances.
    # (Rank-2 three-variable relu^2 relu relu is checked against the polar reference
    # above: there the split path at "high" is itself off by up to 1.6e-8 of the scale.)
    fs = _CASES[name]
    rng = np.random.default_rng(5)
    _, K = _gram(rng, 12, len(fs), 3)
    got, est, ok = orthant_expect(fs, K, return_error=True)
    assert ok.mean() > 0.9
    order, L = _factor(K[ok])
    ref, _ = _split_path(fs, order, L, (0.0,), "high", True, exact_inner=True)
    scale = _cs_scale(fs, K[ok])
    assert np.all(np.abs(got[ok] - ref) < CONTRACT * scale)


def test_ill_conditioned_covariance_falls_back_to_split_path():
    # smallest correlation eigenvalue between 1e-10 and 1e-6: neither closed form
    # applies; expect_nd gives exactly the split path's value one rule up there, and
    # the difference from the rule asked for as its estimate
    rng = np.random.default_rng(2)
    _, K2 = _gram(rng, 1, 2, 6)
    T = np.array([[1, 0], [0, 1], [0.5, -0.3]])
    K = T @ K2[0] @ T.T + 1e-8 * np.diag([0, 0, 1.0])
    fs = [PM(1, 0, 1)] * 3
    _, _, ok = orthant_expect(fs, K[None])
    assert not ok[0]
    order, L = _factor(K[None])
    want, _ = _split_path(fs, order, L, (0.0,), "high", False, exact_inner=True)
    lo, _ = _split_path(fs, order, L, (0.0,), "default", False, exact_inner=True)
    got, est = expect_nd(fs, K, return_error=True)
    assert got == want[0] and est == abs(want[0] - lo[0])


def test_quad_expectations_relu_first_layer_matches_split_high():
    # 7 inputs in 3 dimensions (rank-deficient quadruples) and the next layer's
    # full-rank kernel: every entry within the contract of the split path at "high"
    relu = activation("relu")
    x = np.random.default_rng(0).standard_normal((7, 3))
    K1 = 2.0 * x @ x.T / 3
    for K in (K1, K1 + 0.3 * np.diag(np.diag(K1))):
        got, est = quad_expectations(relu, K, return_error=True)
        multi._ORTHANT = False
        try:
            ref = quad_expectations(relu, K, accuracy="high")
        finally:
            multi._ORTHANT = True
        sd = np.sqrt(np.diag(K))
        scale = 1.5 * np.einsum("a,b,c,d->abcd", sd, sd, sd, sd)   # <relu^4>^(1/4) per slot
        assert np.all(np.abs(got - ref) < CONTRACT * scale)
        assert np.max(est / scale) < 1e-9


def test_collinear_inputs_exact():
    # z2 = +-2 z1 (collinear inputs with C_b = 0): <relu relu> = 2 <relu^2> = K11 or 0,
    # <1{z1 > 0} z2 1{z2 > 0}> = 2 sqrt(K11 / (2 pi)) or 0; float64 round-off only
    K = np.array([[[1.3, 2.6], [2.6, 5.2]], [[1.3, -2.6], [-2.6, 5.2]]])
    got, _, ok = orthant_expect([PM(1, 0, 1)] * 2, K)
    assert ok.all() and np.allclose(got, [1.3, 0.0], rtol=1e-14, atol=1e-14)
    got, _, ok = orthant_expect([PM(1, 0, 0), PM(1, 0, 1)], K)
    want = [2 * math.sqrt(1.3 / (2 * math.pi)), 0.0]
    assert ok.all() and np.allclose(got, want, rtol=1e-14, atol=1e-14)


def test_cross3_bit_identical_to_numpy_cross():
    """``_cone_moment``'s 3-vector cross product (h66: without np.cross's per-call
    overhead) is np.cross bit for bit, on vectors spanning 1e-5 .. 1e5; a product with a
    swapped sign is told apart."""
    from pdlt.gaussian._orthant import _cross3
    rng = np.random.default_rng(5)
    for _ in range(2000):
        a = rng.standard_normal(3) * 10.0 ** rng.uniform(-5, 5, 3)
        b = rng.standard_normal(3) * 10.0 ** rng.uniform(-5, 5, 3)
        assert np.array_equal(_cross3(a, b), np.cross(a, b))
        assert not np.array_equal(_cross3(b, a), np.cross(a, b))
