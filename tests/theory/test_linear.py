"""Deep linear networks, exact at any width (pdlt.theory.linear).

References: the chi-square product representation (module doc): moments in
closed form; (1 + 2/n)^(l-1) from shared/NOTATION.md; the large-depth limit
exp(m(m-1) L/n); and a numpy Monte Carlo of real deep linear networks.
"""

import math

import numpy as np
import pytest

import pdlt
from conftest import powered
from pdlt.theory.linear import (large_depth_density, large_depth_moments, linear_density,
                                linear_kurtosis, linear_moments)


def _mlp(widths, C_W=1.0):
    return pdlt.MLP(n0=2, widths=widths, activation="linear", C_W=C_W)


def test_notation_kurtosis_equal_widths():
    n, L = 8, 7
    k = linear_kurtosis(_mlp([n] * (L - 1)), K1=1.3)
    np.testing.assert_allclose(k, (1 + 2 / n) ** np.arange(L), rtol=1e-14)


def test_moments_closed_form_and_cw():
    mlp = _mlp([3, 5], C_W=[1.0, 2.0, 0.5])
    m = linear_moments(mlp, (1, 2, 3), K1=0.7)
    K = 0.7 * np.array([1.0, 2.0, 1.0])
    np.testing.assert_allclose(m[:, 0], K, rtol=1e-15)
    # layer 3: z^6 -> 15 K^3 (1+2/3)(1+4/3)(1+2/5)(1+4/5)
    want = 15 * K[2] ** 3 * (1 + 2 / 3) * (1 + 4 / 3) * (1 + 2 / 5) * (1 + 4 / 5)
    assert abs(m[2, 2] / want - 1) < 1e-14


@pytest.mark.parametrize("widths", [[2, 3], [4, 4, 4], [50, 10, 30, 7]])
def test_density_moments(widths):
    mlp = _mlp(widths)
    L = mlp.depth
    # log grid in |z|: the density has an integrable log singularity at 0 for n_k = 2
    s = np.linspace(-40, 5, 30001)
    z = np.exp(s)
    p = linear_density(z, mlp, L, K1=0.7)
    exact = linear_moments(mlp, (0, 1, 2, 3), K1=0.7)[L - 1]
    num = np.array([2 * np.trapezoid(p * z ** (2 * k + 1), s) for k in range(4)])
    # stated in linear_density's docstring: relative error < 1e-6 up to z^6
    np.testing.assert_allclose(num, exact, rtol=1e-6)


def test_layer2_density_is_variance_gamma():
    # one hidden layer of width n: z = sqrt(K X/n) u -> Bessel-K density
    from scipy import special
    n, K = 6, 1.2
    mlp = _mlp([n])
    z = np.array([0.1, 0.5, 1.0, 2.5, 4.0])
    a = n / 2
    c = math.sqrt(n / K)
    want = (c ** (a + 0.5) * np.abs(z) ** (a - 0.5) * special.kv(a - 0.5, c * np.abs(z))
            / (math.sqrt(math.pi) * special.gamma(a) * 2 ** (a - 0.5)))
    np.testing.assert_allclose(linear_density(z, mlp, 2, K1=K), want, rtol=1e-8)


def test_large_depth_limit():
    r = 0.4
    for n in [200, 2000]:
        L = int(r * n)
        m = linear_moments(_mlp([n] * L), (1, 2, 3))[-1]
        lim = large_depth_moments(L / n, (1, 2, 3))
        # corrections O(L/n^2) = O(r/n)
        assert np.all(np.abs(m / lim - 1) < 40 * r / n)
    z = np.linspace(-60, 60, 300001)
    p = large_depth_density(z, r)
    got = [np.trapezoid(p * z ** (2 * k), z) for k in (0, 1, 2)]
    # stated in large_depth_density's docstring: < 1e-6 up to z^4 at ratio <= 0.5
    np.testing.assert_allclose(got, large_depth_moments(r, (0, 1, 2)), rtol=1e-6)


def test_monte_carlo_deep_linear():
    rng = np.random.default_rng(0)
    widths, M = [4, 3, 5], 40000
    mlp = _mlp(widths)
    x = np.array([1.0, -0.5])
    K1 = float(x @ x / 2)
    h = np.broadcast_to(x, (M, 2))
    ns = [2, *widths, 1]
    for l in range(len(ns) - 1):
        W = rng.normal(size=(M, ns[l + 1], ns[l])) / math.sqrt(ns[l])
        h = np.einsum("mij,mj->mi", W, h)
    z = h[:, 0]
    exact = linear_moments(mlp, (1, 2), K1=K1)[-1]
    for k, e in zip((2, 4), exact):
        v = z ** k
        se = v.std() / math.sqrt(M)
        # exact theory, no allowance; the same comparison rejects it x0, x0.5 and x2
        powered(e, v.mean(), se, label=f"deep linear <z^{k}>")


def test_errors():
    with pytest.raises(ValueError, match="linear"):
        linear_moments(pdlt.MLP(n0=1, width=3, depth=2, activation="relu"))
    with pytest.raises(ValueError, match="C_b = 0"):
        linear_moments(pdlt.MLP(n0=1, width=3, depth=2, activation="linear", C_b=0.1))
    with pytest.raises(ValueError, match="layer"):
        linear_density(0.0, _mlp([3]), 5)
    with pytest.raises(ValueError, match="ratio"):
        large_depth_moments(-1.0)
