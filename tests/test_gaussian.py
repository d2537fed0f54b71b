"""The one- and two-variable integration rules against closed forms.

Reference values: closed forms of shared/NOTATION.md (ReLU arc-cosine,
erf, sin, linear) and elementary moments. Tolerances: the engine's stated
accuracy (module docstring of pdlt.gaussian), 1e-10 relative or better,
written as multiples of machine epsilon where the claim is tighter.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import special

import pdlt
from pdlt import gaussian as G

from conftest import EPS

KS = [1e-8, 1e-4, 0.01, 0.3, 1.0, 3.0, 30.0, 1e3, 1e5, 1e8]


@pytest.mark.parametrize("K", KS)
def test_expect_one_variable_closed_forms(K):
    # E[relu(z)^2] = K/2; E[erf(z)^2] = (2/pi) asin(2K/(1+2K)); E[z^4] = 3K^2
    assert G.expect(lambda z: np.maximum(z, 0) ** 2, K) == pytest.approx(K / 2, rel=50 * EPS)
    ref = 2 / math.pi * math.asin(2 * K / (1 + 2 * K))
    assert G.expect(lambda z: special.erf(z) ** 2, K) == pytest.approx(ref, rel=1e-13)
    assert G.expect(lambda z: z**4, K) == pytest.approx(3 * K * K, rel=1e-13)
    # oscillatory: E[sin^2] = (1 - exp(-2K))/2 with the period-aware rule
    ref_sin = 0.5 * (1 - math.exp(-2 * K)) if K < 700 else 0.5
    val = G.expect(lambda z: np.sin(z) ** 2, K, period=2 * math.pi)
    assert val == pytest.approx(ref_sin, rel=1e-12)


def test_expect_mean_and_kinks_and_zero_variance():
    # E[relu(m + sqrt(K) u)] = m Phi(m/s) + s phi(m/s)
    m, K = 0.7, 2.0
    s = math.sqrt(K)
    ref = m * special.ndtr(m / s) + s * math.exp(-0.5 * (m / s) ** 2) / math.sqrt(2 * math.pi)
    assert G.expect(lambda z: np.maximum(z, 0), K, mean=m) == pytest.approx(ref, rel=1e-13)
    # a kink away from the origin: E[max(z - 1, 0)] split at 1
    c = 1.0
    ref = -c * special.ndtr(-c / s) + s * math.exp(-0.5 * (c / s) ** 2) / math.sqrt(2 * math.pi)
    got = G.expect(lambda z: np.maximum(z - c, 0), K, kinks=(c,))
    assert got == pytest.approx(ref, rel=1e-13)
    assert G.expect(np.cos, 0.0) == 1.0
    np.testing.assert_allclose(G.expect(lambda z: z * z, np.array([[1.0, 2.0]])), [[1.0, 2.0]],
                               rtol=1e-14)


def test_expect_rejects_negative_variance():
    with pytest.raises(ValueError, match="K must be >= 0"):
        G.expect(np.tanh, -1.0)
    with pytest.raises(ValueError, match="NaN"):
        G.expect(np.tanh, np.nan)


RHOS = [0.0, 0.3, -0.7, 0.99, -0.999999, 1 - 1e-12, 1.0]
VARS = [(1.0, 1.0), (0.3, 2.0), (1e-4, 1e4), (50.0, 60.0)]


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "erf", "linear", "gelu"])
@pytest.mark.parametrize("K11,K22", VARS)
def test_expect2_against_closed_forms(name, K11, K22):
    act = pdlt.activation(name)
    worst = 0.0
    for rho in RHOS:
        K12 = rho * math.sqrt(K11 * K22)
        for fa, fb in (("sigma", "sigma"), ("d1", "d1")):
            f, g = getattr(act, fa), getattr(act, fb)
            ref = G.closed_form_pair(act, fa, fb, K11, K12, K22)
            val = G.expect2(f, g, K11, K12, K22, kinks_f=act.kinks, kinks_g=act.kinks)
            scale = math.sqrt(G.expect(lambda z: f(z) ** 2, K11) * G.expect(lambda z: g(z) ** 2, K22))
            worst = max(worst, abs(val - ref) / scale)
    # error relative to the Cauchy-Schwarz scale; the arcsin in the closed
    # forms is itself ill-conditioned as |rho| -> 1 (1e-11 at 1 - 1e-12)
    assert worst < 1e-10


def test_expect2_sin_closed_form():
    K11, K22 = 0.8, 2.5
    for rho in (0.0, 0.5, -0.9, 0.999999):
        K12 = rho * math.sqrt(K11 * K22)
        ref = math.exp(-(K11 + K22) / 2) * math.sinh(K12)
        got = G.expect2(np.sin, np.sin, K11, K12, K22)
        assert abs(got - ref) < 1e-13


@settings(max_examples=25, deadline=None)
@given(st.floats(1e-3, 1e2), st.floats(1e-3, 1e2), st.floats(-1.0, 1.0))
def test_expect2_random_covariances_relu_and_erf(K11, K22, rho):
    K12 = rho * math.sqrt(K11 * K22)
    for name in ("relu", "erf"):
        act = pdlt.activation(name)
        ref = G.closed_form_pair(act, "sigma", "sigma", K11, K12, K22)
        got = G.expect2(act.sigma, act.sigma, K11, K12, K22, kinks_f=act.kinks, kinks_g=act.kinks)
        scale = math.sqrt(G.expect(lambda z: act.sigma(z) ** 2, K11)
                          * G.expect(lambda z: act.sigma(z) ** 2, K22))
        assert abs(got - ref) <= 1e-11 * scale


def test_expect2_symmetric_in_its_arguments():
    tanh = pdlt.activation("tanh")
    a = G.expect2(tanh.sigma, tanh.d1, 0.5, 0.3, 1.7)
    b = G.expect2(tanh.d1, tanh.sigma, 1.7, 0.3, 0.5)
    assert a == pytest.approx(b, rel=1e-13)


def test_expect2_rejects_non_psd():
    with pytest.raises(G.KernelNotPSDError, match="not positive semi-definite"):
        G.expect2(np.tanh, np.tanh, 1.0, 1.5, 1.0)


def test_expect2_monte_carlo_tanh(rng):
    """Plain numpy sampling of a smooth activation: within 4 standard errors."""
    K11, K12, K22 = 0.9, 0.5, 1.6
    L = np.linalg.cholesky([[K11, K12], [K12, K22]])
    z = rng.standard_normal((400_000, 2)) @ L.T
    prod = np.tanh(z[:, 0]) * np.tanh(z[:, 1])
    mc, se = prod.mean(), prod.std(ddof=1) / math.sqrt(len(prod))
    got = G.expect2(np.tanh, np.tanh, K11, K12, K22)
    assert abs(mc - got) < 4 * se


def test_hermite_coefficients_parseval_and_mehler():
    # Parseval: sum c_k^2 = <f^2>; Mehler reproduces the erf closed form
    erf = pdlt.activation("erf")
    K = np.array([0.5, 2.0])
    c, n2 = G.hermite_coefficients(erf.sigma, K)
    np.testing.assert_allclose((c * c).sum(1), n2, rtol=1e-12)
    rho = 0.6
    series = np.sum(rho ** np.arange(c.shape[1]) * c[0] * c[1])
    K12 = rho * math.sqrt(K[0] * K[1])
    ref = G.closed_form_pair(erf, "sigma", "sigma", K[0], K12, K[1])
    assert series == pytest.approx(ref, rel=1e-13)


def test_periodic_activation_huge_variance_bounded_memory():
    # sin at K = 1e11: the panels (half a period each, ~1e6 of them) are integrated in
    # blocks of 2^22 nodes; <sin^2>_K = (1 - e^{-2K})/2 to the rule's round-off
    # (~1e6 panels x eps ~ 1e-10 accumulated)
    from pdlt.gaussian._core import _BLOCK_NODES, _Q2, _T_RULE
    K = 1e11
    step = 0.5 * 2 * np.pi / np.sqrt(K)
    assert 2 * _T_RULE / step * _Q2 > _BLOCK_NODES          # the blocked path runs
    v = G.expect(lambda z: np.sin(z) ** 2, K, period=2 * np.pi)
    assert abs(v - 0.5) < 1e-10
