"""Nearly-Gaussian distribution at O(1/n) (pdlt.theory.nearly_gaussian).

Checks: the density integrates to 1 and reproduces the cumulants K + G1/n and
kappa4 = 3V/n exactly (Edgeworth form); the action form agrees to O(1/n^2);
against exact deep linear densities the O(1/n) density error shrinks like 1/n^2.
"""

import numpy as np
import pytest

import pdlt
from pdlt.theory.linear import linear_density
from pdlt.theory.nearly_gaussian import NearlyGaussian, excess_kurtosis, nearly_gaussian


def test_single_input_cumulants():
    K, V, G1, n = 1.3, 4.0, -0.7, 50
    ng = NearlyGaussian(K, V, G1, n)
    z = np.linspace(-20, 20, 200001)
    p = ng.density(z)
    m = [np.trapezoid(p * z ** k, z) for k in (0, 2, 4)]
    k2 = K + G1 / n
    assert abs(m[0] - 1) < 1e-12
    assert abs(m[1] - k2) < 1e-12
    assert abs((m[2] - 3 * m[1] ** 2) - 3 * V / n) < 1e-11
    assert abs(ng.excess_kurtosis()[0] - 3 * V / n / k2 ** 2) < 1e-15
    assert abs(excess_kurtosis(K, V, n) - 3 * V / (n * K ** 2)) < 1e-15
    # action form agrees to O(1/n^2)
    pa = ng.density(z, form="action")
    assert np.max(np.abs(pa - p)) < 10 * (V / (n * K ** 2)) ** 2


def test_two_inputs_cumulants():
    mlp = pdlt.MLP(n0=3, width=30, depth=4, activation="tanh", C_W=1.0)
    x = np.array([[1.0, 0.3, -0.5], [0.2, -0.9, 0.7]])
    s = pdlt.statistics(mlp, x, get=("V", "G1"))
    ng = nearly_gaussian(s, 30)
    g = np.linspace(-7, 7, 561)
    Z = np.stack(np.meshgrid(g, g, indexing="ij"), -1)
    p = ng.density(Z)
    h = g[1] - g[0]
    w = np.ones_like(g); w[0] = w[-1] = 0.5
    W = np.outer(w, w) * h * h
    assert abs(np.sum(p * W) - 1) < 1e-6
    cov = np.array([[np.sum(p * Z[..., a] * Z[..., b] * W) for b in range(2)] for a in range(2)])
    np.testing.assert_allclose(cov, ng.kappa2, atol=1e-6)
    c4 = np.sum(p * Z[..., 0] ** 2 * Z[..., 1] ** 2 * W) - (cov[0, 0] * cov[1, 1] + 2 * cov[0, 1] ** 2)
    assert abs(c4 - ng.kappa4[0, 0, 1, 1]) < 1e-6


def test_deep_linear_density_error_is_second_order():
    errs = []
    for n in (20, 40, 80):
        mlp = pdlt.MLP(n0=1, width=n, depth=3, activation="linear")
        s = pdlt.statistics(mlp, K1=1.0, get=("V", "G1"))
        z = np.linspace(-6, 6, 241)
        exact = linear_density(z, mlp, 3)
        approx = nearly_gaussian(s, n).density(z)
        errs.append(np.max(np.abs(approx - exact)))
    # halving 1/n divides the O(1/n^2) residual by ~4
    assert errs[1] / errs[0] < 0.35 and errs[2] / errs[1] < 0.35, errs


def test_errors():
    with pytest.raises(ValueError, match="n"):
        NearlyGaussian(1.0, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="form"):
        NearlyGaussian(1.0, 1.0).density(0.0, form="x")
