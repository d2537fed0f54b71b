"""Three and four piecewise monomials with an exactly collinear pair (``_merge_collinear``).

``det2(K_aa, K_bb, K_ab) <= 0``: ``z_b = c z_a`` and the pair is one piecewise monomial, so
the average has one variable fewer. Checked against closed forms that share no code with
the engine (orthant probabilities of theta products; ``E[relu(z)^n]`` when every variable
is collinear), and against the near-pair forms it replaces (``_MERGE_COLLINEAR = False``),
within their stated estimates. A wrong reflection for ``c < 0`` or a wrong power of ``|c|``
fails the closed-form checks by O(1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pdlt.gaussian import _multi
from pdlt.gaussian._multi import PiecewiseMonomial, det2, expect_nd

THETA, RELU = PiecewiseMonomial(1.0, 0.0, 0), PiecewiseMonomial(1.0, 0.0, 1)
LEAKY, LEAKY0 = PiecewiseMonomial(1.0, 0.2, 1), PiecewiseMonomial(1.0, 0.2, 0)
TOL = 1e-13     # closed forms: a few hundred ulps of O(1) values


def _collinear_K(d, a, b, c, seed):
    """K = A A^T with row b = c row a, c a power of 2 (so the pair is exactly degenerate)."""
    A = np.random.default_rng(seed).standard_normal((d, d - 1))
    A[b] = c * A[a]
    K = A @ A.T
    assert det2(K[a, a], K[b, b], K[a, b]) == 0.0
    return K


def _orthant3(K):
    """P(z_0 > 0, z_1 > 0, z_2 > 0) for z ~ N(0, K) of rank 3 (Sheppard)."""
    s = np.sqrt(np.diag(K))
    r = K / np.outer(s, s)
    return 0.125 + (math.asin(r[0, 1]) + math.asin(r[0, 2]) + math.asin(r[1, 2])) / (4 * math.pi)


@pytest.mark.parametrize("c", [2.0, 0.5, -2.0, -0.5])
@pytest.mark.parametrize("a,b", [(0, 1), (1, 3), (0, 3)])
def test_theta_products_are_orthant_probabilities(c, a, b):
    """``<theta^4>`` with z_b = c z_a: P(three variables > 0) for c > 0, and 0 for c < 0."""
    K = _collinear_K(4, a, b, c, seed=3 + a + 4 * b)
    got, est = expect_nd([THETA] * 4, K, return_error=True)
    rest = [k for k in range(4) if k != b]
    want = _orthant3(K[np.ix_(rest, rest)]) if c > 0 else 0.0
    assert abs(got - want) < TOL and est < 1e-12, (got, want, est)


@pytest.mark.parametrize("d", [3, 4])
@pytest.mark.parametrize("signs", [(1, 1, 1), (1, -1, 1), (-1, -1, 1)])
def test_all_collinear_relu_is_a_one_variable_moment(d, signs):
    """Every variable ``z_k = c_k g``: ``<prod f_k(c_k g)>`` is one monomial moment of g.
    ``relu(c g)`` is ``c relu(g)`` for c > 0 and ``|c| relu(-g)`` for c < 0, so the product
    vanishes unless all signs agree; then it is ``prod |c_k| E[relu(g)^d]``, half of
    ``E|g|^d``: ``(d - 1)!! K^(d/2) / 2`` (even d), ``K^(d/2) 2^((d-1)/2) ((d-1)/2)! /
    sqrt(2 pi)`` (odd d)."""
    cs = np.array([1.0, 2.0, 0.5, 4.0][:d]) * np.array(list(signs) + [1] * (d - 3))
    Kg = 1.7
    K = Kg * np.outer(cs, cs)
    got = expect_nd([RELU] * d, K)
    if np.all(cs > 0) or np.all(cs < 0):
        m = (math.prod(range(d - 1, 0, -2)) * Kg ** (d / 2) / 2 if d % 2 == 0 else
             Kg ** (d / 2) * 2 ** ((d - 1) / 2) * math.factorial((d - 1) // 2)
             / math.sqrt(2 * math.pi))
        want = np.prod(np.abs(cs)) * m
    else:
        want = 0.0
    assert abs(got - want) < TOL * max(1.0, abs(want)), (got, want)


@pytest.mark.parametrize("fs", [[RELU] * 4, [THETA, RELU, THETA, RELU], [LEAKY, LEAKY0] * 2,
                                [LEAKY] * 3, [THETA, LEAKY, RELU]])
@pytest.mark.parametrize("c", [2.0, -0.5, 1.0])
def test_agrees_with_the_near_pair_forms(fs, c):
    """The forms the merge replaces (uniform in rho, slow on degenerate K) agree within
    their own estimates plus the merge's."""
    d = len(fs)
    K = _collinear_K(d, 0, d - 1, c, seed=11 + d)
    scale = math.sqrt(math.prod(float(expect_nd([f * f], K[np.ix_([k], [k])]))
                                for k, f in enumerate(fs)))
    got, est = expect_nd(fs, K, return_error=True)
    _multi._MERGE_COLLINEAR = False
    try:
        old, old_est = expect_nd(fs, K, return_error=True)
    finally:
        _multi._MERGE_COLLINEAR = True
    assert abs(got - old) <= old_est + est + 16 * np.finfo(float).eps * scale, (got, old)
    assert est < 1e-11 * scale


def test_roundoff_indefinite_pair_is_merged():
    """A pair with ``K_ab^2`` above ``K_aa K_bb`` by round-off (det2 < 0: collinear inputs
    whose ratio is not a power of 2) is merged like an exact one: the same value as with the
    off-diagonal rounded to the degenerate one, to round-off."""
    A = np.random.default_rng(5).standard_normal((4, 3))
    A[1] = 0.7 * A[0]
    K = A @ A.T
    K[0, 1] = K[1, 0] = np.nextafter(math.sqrt(K[0, 0] * K[1, 1]), np.inf)
    assert det2(K[0, 0], K[1, 1], K[0, 1]) < 0.0
    got = expect_nd([RELU] * 4, K)
    Kd = K.copy()
    Kd[0, 1] = Kd[1, 0] = math.sqrt(K[0, 0] * K[1, 1])
    want = expect_nd([RELU] * 4, Kd)
    assert abs(got - want) < 1e-13 * abs(want), (got, want)
