"""Entropy, mutual information and the optimal aspect ratio (pdlt.theory.information).

Exact references: Gaussian closed forms; the O(1/n^2) entropy of one input
(-m(m+2)/16 (V/(nK^2))^2, from ||kappa4||^2/48 with kappa4 = 3V/n); the
scale-mixture series against the exact mixture information by quadrature
(lognormal mixing, the law of the scale-invariant class at fixed L/n).
The moments the pieces are built from are checked against ensembles in
tests/experiment/test_residual_ensemble.py.
"""

import math

import numpy as np
import pytest

from pdlt.theory.information import (gaussian_entropy, gaussian_mutual_information,
                                     nearly_gaussian_entropy, nearly_gaussian_mutual_information,
                                     optimal_aspect_ratio, optimal_aspect_ratio_from_slope,
                                     optimal_vertex, scale_mixture_mi_series,
                                     scale_mixture_mutual_information)

EPS = np.finfo(float).eps


def test_gaussian_closed_forms():
    assert gaussian_entropy(2.0) == pytest.approx(0.5 * math.log(2 * math.pi * math.e * 2.0),
                                                  rel=4 * EPS)
    K = np.array([[2.0, 0.6], [0.6, 1.0]])
    rho2 = 0.36 / 2.0
    assert gaussian_mutual_information(K, [0], [1]) == pytest.approx(-0.5 * math.log(1 - rho2),
                                                                     rel=1e-14)
    assert gaussian_entropy(K, neurons=3) == pytest.approx(3 * 0.5 * math.log(
        (2 * math.pi * math.e) ** 2 * np.linalg.det(K)), rel=1e-14)
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        gaussian_entropy(np.ones((2, 2)))
    with pytest.raises(ValueError, match="disjoint"):
        gaussian_mutual_information(K, [0], [0, 1])


@pytest.mark.parametrize("m", [1, 2, 5])
def test_single_input_entropy_and_mi(m):
    K, V, n = 1.5, 3.0, 40.0
    k2 = V / (n * K * K)
    S = nearly_gaussian_entropy(K, V, n, neurons=m)
    assert S - gaussian_entropy(K, m) == pytest.approx(-m * (m + 2) / 16 * k2 ** 2, rel=1e-12)
    # G1 moves the entropy at O(1/n) through kappa2 = K + G1/n only
    S_g = nearly_gaussian_entropy(K, V, n, G1=0.8, neurons=m)
    assert S_g - S == pytest.approx(0.5 * m * math.log(1 + 0.8 / (n * K)), rel=1e-12)
    assert nearly_gaussian_mutual_information(K, V, n, m, 2) == pytest.approx(
        m * 2 * k2 ** 2 / 8, rel=1e-12)


def test_independent_inputs_add():
    """Diagonal K and V living on (aa)(aa) only: the O(1/n^2) corrections add up per input."""
    Kd, Vd, n = np.array([1.0, 2.5]), np.array([2.0, 7.0]), 30.0
    V = np.zeros((2,) * 4)
    for a in range(2):
        V[a, a, a, a] = Vd[a]
    S = nearly_gaussian_entropy(np.diag(Kd), V, n, neurons=3)
    want = sum(nearly_gaussian_entropy(Kd[a], Vd[a], n, neurons=3) for a in range(2))
    assert S == pytest.approx(want, rel=1e-13)


def _lognormal(s, nodes=80):
    y, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    G = np.exp(-s / 2 + math.sqrt(s) * y)
    k2 = float(np.sum(w * G ** 2) / np.sum(w * G) ** 2 - 1)
    return G, w, k2


def test_quadrature_converges():
    G, w, _ = _lognormal(0.05)
    for mA, mB in ((1, 1), (2, 3)):
        a = scale_mixture_mutual_information(G, w, mA, mB)
        b = scale_mixture_mutual_information(G, w, mA, mB, points=8001)
        assert abs(a - b) < 1e-13


def test_deterministic_variance_shares_no_information():
    assert abs(scale_mixture_mutual_information([2.0], None, 2, 3)) < 1e-13


@pytest.mark.parametrize("mA,mB", [(1, 1), (2, 3), (1, 4)])
def test_series_against_exact_mixture(mA, mB):
    """I = mA mB [k2^2/8 - (3(mA+mB)+20) k2^3/48] + O(k2^4), no k2 k3 term (lognormal has
    k3 ~ 3 k2^2): the k2^3 coefficient extracted from the exact I tends to the series' one
    linearly in k2, and the remainder scales like k2^4."""
    want = -(3 * (mA + mB) + 20) / 48
    coef, rem = [], []
    for s in (0.02, 0.01, 0.005):
        G, w, k2 = _lognormal(s)
        I = scale_mixture_mutual_information(G, w, mA, mB)
        coef.append((I / (mA * mB) - k2 ** 2 / 8) / k2 ** 3)
        rem.append((I - scale_mixture_mi_series(k2, mA, mB)) / k2 ** 4)
    # Richardson: the coefficient error halves with s
    extrap = 2 * coef[2] - coef[1]
    assert extrap == pytest.approx(want, rel=0.02)
    assert rem[2] == pytest.approx(rem[1], rel=0.15)   # O(k2^4) remainder


def test_optimal_vertex_maximizes_the_series():
    for nL in (1, 2, 10):
        k = optimal_vertex(nL)
        assert k == pytest.approx(4 / (20 + 3 * nL), rel=4 * EPS)
        h = 1e-4
        I = lambda x: scale_mixture_mi_series(x, 1, nL - 1) if nL > 1 else x ** 2 / 8 - 23 * x ** 3 / 48  # noqa: E731
        assert I(k) > I(k - h) and I(k) > I(k + h)


def test_optimal_aspect_ratio_closed_forms():
    assert optimal_aspect_ratio("relu") == pytest.approx(4 / (23 * 5), rel=1e-12)
    assert optimal_aspect_ratio("linear", n_out=2) == pytest.approx(4 / (26 * 2), rel=1e-12)
    assert optimal_aspect_ratio("tanh", n_out=10) == pytest.approx(4 / (50 * 2 / 3), rel=1e-12)
    assert optimal_aspect_ratio_from_slope(0.0) == math.inf
    with pytest.raises(ValueError, match="n_out must be a positive integer"):
        optimal_vertex(0)
