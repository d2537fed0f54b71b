"""Four graded variables (four distinct directions) at large variance: the 2-D table.

:func:`pdlt.gaussian._graded.expect_graded` integrates the last two of four graded
variables as one 2-D table of their conditional means. Reference, no pdlt code:
``erf(z) = E_e[sign(z + e)]`` with ``e ~ N(0, 1/2)`` independent, so
``<erf(z_1) .. erf(z_4)>_K = <sign(y_1) .. sign(y_4)>`` with ``y ~ N(0, K + I/2)``, and by
Price's theorem along ``S(t) = D + t (S - D)`` (``D`` the diagonal: independent signs,
average 0)

    d/dt <prod sign y> = sum_(i<j) S_ij 4 p_ij(0, 0) (2/pi) arcsin(rho_(kl | ij))

(``p_ij`` the density of ``(y_i, y_j)``, ``rho_(kl | ij)`` the correlation of the other
two given ``y_i = y_j = 0``): Plackett's reduction to a 1-D integral of elementary
functions, by ``scipy.integrate.quad`` (its own error ~1e-16). Checked once here on a
block-diagonal covariance (a product of two arcsine laws); against Genz's
``scipy.stats.multivariate_normal.cdf`` it agreed to 7e-11 (Genz's accuracy,
``benchmarks/README.md``).
"""

from itertools import combinations

import numpy as np
import pytest
from scipy import integrate, special

from pdlt.gaussian import _graded
from pdlt.gaussian._graded import expect_graded, graded_axes
from pdlt.gaussian._multi import expect_nd
from pdlt.theory._capped import _cs_scale

EPS = np.finfo(float).eps


def _sign4(S):
    """<sign(y_1) .. sign(y_4)>, y ~ N(0, S), and quad's error bound."""
    S = np.asarray(S, dtype=float)
    off = S - np.diag(np.diag(S))

    def rate(t):
        St = np.diag(np.diag(S)) + t * off
        out = 0.0
        for i, j in combinations(range(4), 2):
            k, l = [m for m in range(4) if m not in (i, j)]
            B = St[np.ix_([i, j], [i, j])]
            p0 = 1.0 / (2.0 * np.pi * np.sqrt(B[0, 0] * B[1, 1] - B[0, 1] ** 2))
            A = St[np.ix_([k, l], [i, j])]
            C = St[np.ix_([k, l], [k, l])] - A @ np.linalg.solve(B, A.T)
            rho = C[0, 1] / np.sqrt(C[0, 0] * C[1, 1])
            out += off[i, j] * 4.0 * p0 * (2.0 / np.pi) * np.arcsin(rho)
        return out

    return integrate.quad(rate, 0.0, 1.0, epsabs=1e-15, epsrel=1e-13, limit=200)


def _directions(seed, K):
    x = np.random.default_rng(seed).standard_normal((4, 4))
    G = x @ x.T / 4
    return K * G / np.max(np.diag(G))


def _tol(C, resolution):
    # the rule's stated accuracy (1e-13 of scale; |erf| <= 1, the scale is ~1) plus the
    # covariance's float64 rounding (d eps sqrt(K), the residual modules' own term) plus
    # the reference's
    return 1e-13 + 4 * EPS * np.sqrt(np.max(np.diag(C))) + resolution


def test_the_reference_on_a_product_of_arcsine_laws():
    S = np.zeros((4, 4))
    S[:2, :2] = [[2.0, 0.7], [0.7, 1.0]]
    S[2:, 2:] = [[1.0, -0.3], [-0.3, 3.0]]
    exact = (2 / np.pi * np.arcsin(0.7 / np.sqrt(2))) * (2 / np.pi * np.arcsin(-0.3 / np.sqrt(3)))
    assert abs(_sign4(S)[0] - exact) < 1e-15


@pytest.mark.parametrize("K", [30.0, 1e4])
def test_erf_four_directions_against_the_orthant_form(K):
    C = _directions(2, K)
    assert graded_axes(C[None])[0] == 2                  # the 2-D table, not three axes
    ref, res = _sign4(C + 0.5 * np.eye(4))
    val, est = expect_graded([special.erf] * 4, C, return_error=True)
    tol = _tol(C, res)
    assert abs(val - ref) < tol, (val, ref, tol)
    assert abs(val * (1.0 + 10.0 * tol) - ref) > tol     # the comparison bites
    assert est < 1e-10                                    # the lower rule: resolved
    if K >= 1e4:                                          # the capped rule is rejected
        old = expect_nd([special.erf] * 4, C, accuracy="high")
        assert abs(old - ref) > 100.0 * tol


def test_a_coarser_table_is_rejected_and_estimated(monkeypatch):
    # a table of degree 9 (10 points a panel, each variable) misses by ~1e-11 .. 1e-10:
    # the same comparison rejects it, and its lower rule (degree 7) says so
    C = _directions(2, 1e4)
    ref, res = _sign4(C + 0.5 * np.eye(4))
    monkeypatch.setattr(_graded, "_CHEB2", 10)
    monkeypatch.setattr(_graded, "_LOWER_CHEB2", 8)
    val, est = expect_graded([special.erf] * 4, C, return_error=True)
    assert abs(val - ref) > _tol(C, res)
    assert est > abs(val - ref)


def test_three_variables_and_collinear_pairs_do_not_take_the_table(monkeypatch):
    # the 2-D table acts only on four graded variables: three variables and a collinear
    # pair (a Gauss-Hermite axis) are bit-identical with it switched off
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 3))
    C3 = 1e3 * x @ x.T / np.max(np.diag(x @ x.T))
    y = np.vstack([x[:2], x[0] * (1 + 1e-6), x[1] * (1 + 1e-6)])
    C4 = 1e3 * y @ y.T / np.max(np.diag(y @ y.T))
    assert graded_axes(C4[None])[0] <= 2
    fs3 = [np.tanh, lambda z: np.tanh(z) ** 2, lambda z: z * special.ndtr(z)]
    fs4 = [np.tanh, np.tanh, lambda z: z * special.ndtr(z), np.tanh]
    new = [expect_graded(fs3, C3, return_error=True), expect_graded(fs4, C4, return_error=True)]
    monkeypatch.setattr(_graded, "_TABLE2", False)
    old = [expect_graded(fs3, C3, return_error=True), expect_graded(fs4, C4, return_error=True)]
    for a, b in zip(new, old):
        assert a[0] == b[0] and a[1] == b[1]


def _check(C, fs=None):
    ref, res = _sign4(C + 0.5 * np.eye(4))
    val, est = expect_graded(fs or [special.erf] * 4, C, return_error=True)
    tol = _tol(C, res)
    assert abs(val - ref) < tol, (val, ref, tol)
    assert est < 1e-10
    return val, ref, tol


@pytest.mark.parametrize("eps", [0.1, 0.03])
def test_nearly_dependent_directions_take_the_sheared_table(eps):
    # four directions nearly linearly dependent (x4 = x1 + x2 + x3 + eps w): every pair is
    # highly correlated given the other two (rho ~ 10-11: the ridge where the last two
    # transitions meet is 10x narrower than the panels of an unsheared table); the sheared
    # table takes them (before: three graded axes point by point, ~40-60 s)
    rng = np.random.default_rng(11)
    v, w = rng.standard_normal((3, 4)), rng.standard_normal(4)
    x = np.vstack([v, v.sum(0) + eps * w])
    C = 1e4 * x @ x.T / np.max(np.diag(x @ x.T))
    assert graded_axes(C[None])[0] == 2
    _check(C)


@pytest.mark.parametrize("K", [30.0, 1e4, 1e6])
def test_four_inputs_in_three_dimensions(K, monkeypatch):
    # N > n0 without a bias: rank 3, the fourth variable a combination of the first three
    # (c = 0 in the table, rho = |b| up to ~45 at K = 1e6). The ridge t = z3 - (b / a) z2 is
    # then sharp (width 1) and must be graded on the outer axes too: without it the same
    # comparison fails at K = 1e6 (4e-7 off)
    x = np.random.default_rng(0).standard_normal((4, 3))
    C = K * x @ x.T / np.max(np.diag(x @ x.T))
    assert np.linalg.matrix_rank(x @ x.T) == 3 and graded_axes(C[None])[0] == 2
    val, ref, tol = _check(C)
    if K >= 1e6:
        monkeypatch.setattr(_graded, "_RIDGE", False)
        assert abs(expect_graded([special.erf] * 4, C) - ref) > 100.0 * tol


def test_the_table_does_not_depend_on_which_pair_goes_last(monkeypatch):
    # tanh, swish, gelu and tanh' (linear and flat asymptotes; no closed form): the least
    # oblique pair (the rule) and the pivoted order (another pair, another shear and other
    # panels in both regions of the table) agree within their estimates
    fs = [np.tanh, lambda z: z * special.expit(z), lambda z: z * special.ndtr(z),
          lambda z: 1.0 - np.tanh(z) ** 2]
    C = _directions(4, 1e4)
    v1, e1 = expect_graded(fs, C, return_error=True)
    pair = _graded._last_pair
    monkeypatch.setattr(_graded, "_last_pair", lambda L: ([0, 1, 2, 3], L))
    v2, e2 = expect_graded(fs, C, return_error=True)
    scale = _cs_scale(fs, C[None])[0]                   # ~1.6e3: |swish| |gelu| ~ sqrt(K)
    assert pair(_graded._factor(C[None])[1][0])[0] != [0, 1, 2, 3]   # another pair indeed
    assert abs(v1 - v2) <= e1 + e2 + 1e-13 * scale, (v1, v2, e1, e2)
    assert max(e1, e2) < 1e-10 * scale


def test_the_table_weight_grows_with_rho():
    # the budgets' cost of a 2-D table (its shared rules have ~rho times the nodes):
    # measured 0.3 s at rho < 50, 4.8 s at 447, 51 s at 4475 (rank 3, K = 1e8, 1e10)
    x = np.random.default_rng(0).standard_normal((4, 3))
    C = [K * x @ x.T / np.max(np.diag(x @ x.T)) for K in (30.0, 1e8, 1e10)]
    w = _graded.table_weight(np.array(C))
    assert w[0] == 1.0 and 8.0 < w[1] < 10.0 and 80.0 < w[2] < 100.0, w

