"""The one-variable rule (pdlt.gaussian._rule) against closed forms.

Reference values: closed forms of shared/NOTATION.md (ReLU arc-cosine,
erf, sin, linear) and elementary moments. Tolerances: the engine's stated
accuracy (module docstring of pdlt.gaussian), 1e-10 relative or better,
written as multiples of machine epsilon where the claim is tighter.
"""

import math

import numpy as np
import pytest
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


def test_periodic_activation_huge_variance_bounded_memory():
    # without periodic=True the period is only a panel hint (callers pass it for integrands
    # such as z sigma(z)^2 that are not periodic): at K = 1e11 the panels (half a period
    # each, ~1e6 of them) are integrated in blocks of 2^22 nodes, so memory stays bounded;
    # <sin^2>_K = (1 - e^{-2K})/2 to the rule's round-off (~1e6 panels x eps ~ 1e-10)
    from pdlt.gaussian._rule import _BLOCK_NODES, _Q2, _T_RULE
    K = 1e11
    step = 0.5 * 2 * np.pi / np.sqrt(K)
    assert 2 * _T_RULE / step * _Q2 > _BLOCK_NODES          # the blocked path runs
    v = G.expect(lambda z: np.sin(z) ** 2, K, period=2 * np.pi)
    assert abs(v - 0.5) < 1e-10


@pytest.mark.parametrize("K", [1.0, 30.0, 79.0, 81.0, 1e3, 1e11, 1e100])
@pytest.mark.parametrize("m", [0.0, 0.7])
def test_periodic_average_any_variance(K, m):
    # <sin^2(m + z)>_K = (1 - e^{-2K} cos 2m) / 2: the quadrature below w^2 K / 2 = 40
    # (period 2 pi, K = 80), the period mean beyond; 1e-14 both sides of the switch
    exact = 0.5 * (1.0 - np.exp(-2.0 * K) * np.cos(2.0 * m))
    v = G.expect(lambda z: np.sin(z) ** 2, K, m, period=2 * np.pi, periodic=True)
    assert abs(v - exact) < 1e-14
    # a periodic f with all harmonics (analytic): exp(cos z), <.> = sum_k I_k(1) e^{-k^2 K/2} cos km
    from scipy.special import iv
    exact = sum((1 if k == 0 else 2) * iv(k, 1.0) * np.exp(-k * k * K / 2) * np.cos(k * m)
                for k in range(30))
    v = G.expect(lambda z: np.exp(np.cos(z)), K, m, period=2 * np.pi, periodic=True)
    assert abs(v - exact) < 1e-14 * exact


def test_periodic_average_cost_independent_of_variance():
    # at w^2 K / 2 >= 40 a periodic f averages to its period mean: memory and time do not
    # grow with K (the former panel rule needed ~sqrt(K) nodes: K = 1e16 was ~1e9 nodes)
    import tracemalloc
    calls = []

    def f(z):
        calls.append(np.size(z))
        return np.sin(z) ** 2

    tracemalloc.start()
    v = G.expect(f, np.array([1e6, 1e16, 1e200]), period=2 * np.pi, periodic=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.allclose(v, 0.5, rtol=0, atol=1e-15)
    assert sum(calls) <= 2 * 65536 and peak < 4e6


def test_periodic_average_rough_function_refused():
    # a period mean that the trapezoid rule cannot converge (a kink the caller did not
    # declare) is an error, not a number
    saw = lambda z: np.mod(z, 2 * np.pi) ** 0.5   # noqa: E731  (jump at the period's end)
    with pytest.raises(ArithmeticError, match="period mean"):
        G.expect(saw, 1e6, period=2 * np.pi, periodic=True)


@pytest.mark.parametrize("name", ["tanh", "gelu", "swish", "erf"])
def test_expect_against_mpmath(name):
    # stated accuracy of the one-variable rule (pdlt.gaussian._rule): 1e-14 relative to the
    # Cauchy-Schwarz scale <f^2>^(1/2); mpmath.quad at 25 digits is the reference
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 20
    f_mp = {"tanh": mp.tanh, "gelu": lambda z: z * mp.ncdf(z),
            "swish": lambda z: z / (1 + mp.exp(-z)), "erf": mp.erf}[name]
    act = pdlt.activation(name)
    powers = (2,) if name in ("tanh", "erf") else (1, 2)     # odd: <f> = 0 exactly
    for K in (1e-3, 1.0, 30.0):
        sd = mp.sqrt(K)
        for p in powers:
            ref = mp.quad(lambda u: f_mp(sd * u) ** p * mp.npdf(u), [-mp.inf, 0, mp.inf])
            cs = np.sqrt(G.expect(lambda z: act.sigma(z) ** (2 * p), K))   # a scale only
            got = G.expect(lambda z: act.sigma(z) ** p, K)
            assert abs(got - ref) <= 1e-14 * cs, (K, p, float(abs(got - ref) / cs))
