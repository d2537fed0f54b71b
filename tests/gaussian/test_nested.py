"""Two variables by nested quadrature (pdlt.gaussian._nested.expect2).

Reference values: closed forms of shared/NOTATION.md (ReLU arc-cosine, erf,
sin, linear, GELU) and a Monte Carlo check of a smooth activation.
Tolerances: the stated accuracy (module docstring of pdlt.gaussian._nested),
relative to each expectation's Cauchy-Schwarz scale.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import pdlt
from pdlt import gaussian as G


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


def test_kinks_away_from_zero():
    """Kinks of f and g away from 0 (h52 found the widths of g's features shaped (B, 1)
    instead of (B, len(kinks_g)): a broadcasting error whenever g had a kink off 0).
    Against an independent adaptive quadrature split at the kinks (scipy.integrate.quad,
    the conditional density of z2 given z1)."""
    from scipy import integrate

    def f(z):
        return np.maximum(z - 0.4, 0.0)

    def g(z):
        return np.abs(z + 0.3)
    K11, K12, K22 = 1.0, 0.5, 1.2
    got = G.expect2(f, g, K11, K12, K22, kinks_f=(0.4,), kinks_g=(-0.3,))
    s2 = K22 - K12 ** 2 / K11

    def inner(z1):
        m = K12 / K11 * z1
        h = lambda z2: g(z2) * np.exp(-0.5 * (z2 - m) ** 2 / s2) / np.sqrt(2 * np.pi * s2)  # noqa: E731
        return sum(integrate.quad(h, a, b, epsabs=1e-14, epsrel=1e-13, limit=200)[0]
                   for a, b in ((m - 12 * np.sqrt(s2), -0.3), (-0.3, m + 12 * np.sqrt(s2)))
                   if b > a)
    ref = integrate.quad(lambda z1: f(z1) * inner(z1) * np.exp(-0.5 * z1 ** 2 / K11)
                         / np.sqrt(2 * np.pi * K11), 0.4, 12.0, epsabs=1e-14, epsrel=1e-13,
                         limit=200)[0]
    assert abs(got - ref) <= 1e-12 * abs(ref)
    # a batch, kinks of both at 0.4
    v = G.expect2(f, f, np.array([1.0, 2.0]), np.array([0.5, 0.3]), np.array([1.2, 1.0]),
                kinks_f=(0.4,), kinks_g=(0.4,))
    assert v.shape == (2,) and np.all(np.isfinite(v)) and np.all(v > 0)
