"""GELU's pair path: the last two axes of its three- and four-variable averages in
closed form (``_zphi_pair``, ``_bvn``; issue #15, the N = 16 cost target).

References, each independent of the formula it checks: Owen's T (scipy) for the
bivariate normal CDF; one-dimensional adaptive quadrature (scipy) over the
first variable of the one-variable closed form (itself checked against
quadrature in ``test_multi_normal.py``) for the pair average; the one-axis
closed-form path at the "higher" rule for whole averages.
"""

import itertools
import math

import numpy as np
import pytest
from scipy import integrate

from pdlt import activation
from pdlt.gaussian import _multi
from pdlt.gaussian._multi import (_BVN_NODES, _PAIR_R_MAX, _bvn, _bvn_upper, _zphi_pair,
                                  entire_growth, expect_nd, normal_family, quad_expectations)

_EPS = np.finfo(float).eps
#: what the error estimate leaves out (module doc of pdlt.gaussian._multi): the
#: truncation of the trapezoid axes at |u| = 8, below 1e-11 of the Cauchy-Schwarz scale
#: for integrands growing like |z|^4 (measured 3.5e-13 for a <sigma^2 sigma sigma> of the
#: N > n0 test below, the same with 200 nodes and no pruning), and round-off
_UNESTIMATED = 1e-11
GELU = activation("gelu")
SIG = normal_family(GELU, "sigma")
GROWTH = entire_growth(GELU)


def _no_pair_path():
    """A context in which expect_nd takes the one-axis closed form (the old path)."""
    class _Ctx:
        def __enter__(self):
            self.keep = _multi._pair_kind
            _multi._pair_kind = lambda f: None

        def __exit__(self, *exc):
            _multi._pair_kind = self.keep
    return _Ctx()


@pytest.mark.parametrize("r", [0.0, 0.3, -0.3, 0.7, -0.7, 0.8, 0.9, -0.925, _PAIR_R_MAX])
def test_bvn_against_owens_t(r):
    # Sheppard's formula by Gauss-Legendre against Owen's T: both ~1e-16 absolute; the
    # bound is a few ulps of 1 (the CDF's scale), over |h|, |k| <= 9 and far tails
    rng = np.random.default_rng(1)
    h = np.concatenate([rng.uniform(-9, 9, 4000), [0.0, 0.0, 12.0, -12.0, 30.0, -30.0]])
    k = np.concatenate([rng.uniform(-9, 9, 4000), [0.0, 1e-3, -12.0, -12.0, 30.0, 3.0]])
    want = _bvn_upper(h, k, r, math.sqrt(1 - r * r))
    got = _bvn(h[None], k[None], np.array([[r]]))[0]
    assert np.max(np.abs(got - want)) <= 8 * _EPS, np.max(np.abs(got - want))


def test_bvn_node_table_is_needed():
    # one size less than the table fails the bound of test_bvn_against_owens_t at the
    # table's |r| bounds (measured 4e-10, 3e-15, 4e-14 at 0.7, 0.8, 0.925): every size
    # in the table is needed
    keep = _multi._BVN_NODES
    rng = np.random.default_rng(2)
    h, k = rng.uniform(-9, 9, (2, 1, 20000))
    try:
        for (bound, q), smaller in zip(keep[1:], (6, 12, 16)):
            _multi._BVN_NODES = ((bound, smaller),)
            want = _bvn_upper(h[0], k[0], bound, math.sqrt(1 - bound * bound))
            got = _bvn(h, k, np.array([[bound]]))[0]
            assert np.max(np.abs(got - want)) > 8 * _EPS, (bound, smaller)
    finally:
        _multi._BVN_NODES = keep
    assert _BVN_NODES[-1][0] == _PAIR_R_MAX


def _pair_reference(m1, m2, v1, v2, c12):
    """<g(X) g(Y)> by adaptive quadrature over X of g(X) E[g(Y) | X] (the 1-D closed form)."""
    if v1 == 0:
        return float(SIG(np.array(m1)) * SIG.inner(np.array([m2]), np.array([math.sqrt(v2)]))[0])
    sd = math.sqrt(v1)
    slope, rest = c12 / v1, max(v2 - c12 * c12 / v1, 0.0)

    def f(u):
        x = m1 + sd * u
        inner = SIG.inner(np.array([m2 + slope * sd * u]), np.array([math.sqrt(rest)]))[0]
        return float(SIG(np.array(x)) * inner) * math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    # the steps of g(x) at x = 0 and of E[g(Y) | x] where its mean crosses 0
    kinks = [u for u in (-m1 / sd, -m2 / (slope * sd) if slope else 99.0) if abs(u) < 12]
    return integrate.quad(f, -12, 12, points=kinks or None, epsabs=1e-15, epsrel=1e-14,
                          limit=400)[0]


def _random_cases(rng):
    """Random (m1, m2, v1, v2, c12) with |r| <= _PAIR_R_MAX, variances ~0.04 .. 4e4."""
    out = []
    for sc in (0.2, 1.0, 2.0, 10.0, 100.0):
        while len(out) < 6 * (1 + (0.2, 1.0, 2.0, 10.0, 100.0).index(sc)):
            A = rng.normal(size=(2, 2)) * sc
            S = A @ A.T
            if abs(S[0, 1]) <= _PAIR_R_MAX * math.sqrt((S[0, 0] + 1) * (S[1, 1] + 1)):
                out.append((*(rng.normal(size=2) * 2 * sc), S[0, 0], S[1, 1], S[0, 1]))
    return out


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
def test_zphi_pair_against_quadrature():
    # every regime: uncorrelated, correlated both signs, singular (rank 1 and 0), large
    # and far-negative means; bound from float64 round-off of the largest term
    # (~(|m| + sd)^2) and the reference's 1e-14
    rng = np.random.default_rng(4)
    cases = [(0.3, -0.7, 1.0, 2.0, 0.0), (1.2, 0.4, 1.5, 0.8, 0.9), (-0.5, 2.0, 2.0, 3.0, -2.1),
             (3.0, -4.0, 0.5, 0.5, 0.5), (0.0, 0.0, 1.0, 1.0, 1.0), (-6.0, -5.0, 1.0, 2.0, 0.7),
             (5.0, 6.0, 4.0, 9.0, 5.0), (1.0, -1.0, 0.0, 2.0, 0.0), (0.5, 0.2, 0.0, 0.0, 0.0),
             (2.0, 1.0, 9.0, 9.0, 8.0)]
    cases += _random_cases(rng)
    for m1, m2, v1, v2, c in cases:
        r = c / math.sqrt((v1 + 1) * (v2 + 1))
        assert abs(r) <= _PAIR_R_MAX
        got = float(_zphi_pair(np.array([[m1]]), np.array([[m2]]), np.array([[v1]]),
                               np.array([[v2]]), np.array([[c]]))[0, 0])
        want = _pair_reference(m1, m2, v1, v2, c)
        scale = (abs(m1) + math.sqrt(v1) + 1) * (abs(m2) + math.sqrt(v2) + 1)
        assert abs(got - want) <= 1e-14 * scale, (m1, m2, v1, v2, c, got, want)


def _cs_scale(fs, K):
    d = len(fs)
    return np.prod([float(expect_nd([lambda z, f=f: np.abs(f(z)) ** d], [[k]])) ** (1.0 / d)
                    for f, k in zip(fs, np.diag(K))])


def _covs(rng, d, scale, rank, n):
    out = []
    for _ in range(n):
        A = rng.normal(size=(d, rank))
        out.append(scale * (A @ A.T / rank + (0.05 * np.eye(d) if rank == d else 0.0)))
    return np.array(out)


@pytest.mark.parametrize("pattern", [(1, 1, 1, 1), (2, 1, 1), (1, 1, 2)])
@pytest.mark.parametrize("scale,rank", [(0.3, None), (1.0, None), (3.0, None), (1.0, 3),
                                        (1.0, 2)])
def test_pair_path_against_the_one_axis_path(pattern, scale, rank):
    # the default rule with the pair in closed form against the one-axis closed form at
    # "higher": within the 1e-8 contract of each entry's Cauchy-Schwarz scale, and the
    # error estimate bounds the error (up to what it leaves out, _UNESTIMATED)
    d = len(pattern)
    rng = np.random.default_rng(10 * d + int(10 * scale) + (rank or 0))
    K = _covs(rng, d, scale, rank or d, 6)
    fs = [SIG if p == 1 else _multi._power(SIG, p) for p in pattern]
    choice = _multi._pair_choice(fs, K, "default", GROWTH, 1)[1]
    assert np.all(choice >= 0)                        # the pair path is taken
    got, est = expect_nd(fs, K, return_error=True, growth=GROWTH, gh_up=1)
    with _no_pair_path():
        ref = expect_nd(fs, K, accuracy="higher", growth=GROWTH, gh_up=1)
    for g, e, w, Kb in zip(got, est, ref, K):
        cs = _cs_scale(fs, Kb)
        assert abs(g - w) < 1e-8 * cs, (g, w, cs)
        assert abs(g - w) <= e + _UNESTIMATED * cs, (abs(g - w) / cs, e / cs)


def test_pair_path_falls_back_above_the_correlation_bound():
    # two strongly correlated wide GELU inputs: |r| > _PAIR_R_MAX for the only pair,
    # so the average takes the one-axis path, bit for bit
    K = np.array([[0.5, 0.1, 0.1], [0.1, 30.0, 29.5], [0.1, 29.5, 30.0]])
    fs = [_multi._power(SIG, 2), SIG, SIG]
    assert _multi._pair_choice(fs, K[None], "default", GROWTH, 1)[1][0] == -1
    got = expect_nd(fs, K, return_error=True, growth=GROWTH, gh_up=1)
    with _no_pair_path():
        old = expect_nd(fs, K, return_error=True, growth=GROWTH, gh_up=1)
    assert got[0] == old[0] and got[1] == old[1]


@pytest.mark.parametrize("name", ["tanh", "erf", "swish"])
def test_other_activations_do_not_take_the_pair_path(name):
    # only GELU's sigma (z Phi) has the pair form: erf's sigma (also a NormalFamily) and
    # the rest give bitwise the values of the path without it
    act = activation(name)
    K = _covs(np.random.default_rng(0), 4, 1.0, 4, 3)
    fs = [normal_family(act, "sigma")] * 4
    g = entire_growth(act)
    got = expect_nd(fs, K, return_error=True, growth=g, gh_up=1)
    with _no_pair_path():
        old = expect_nd(fs, K, return_error=True, growth=g, gh_up=1)
    np.testing.assert_array_equal(got[0], old[0])
    np.testing.assert_array_equal(got[1], old[1])


def test_quad_expectations_gelu_n_gt_n0_within_estimate():
    # every entry of quad_expectations (N = 6 inputs in 2 dims: rank-3 kernel, the
    # N > n0 case) against the one-axis path at "higher", entry by entry
    x = np.random.default_rng(3).standard_normal((6, 2))
    K = 0.3 + 1.1 * x @ x.T / 2
    T, E = quad_expectations(GELU, K, return_error=True)
    with _no_pair_path():
        R = quad_expectations(GELU, K, accuracy="higher")
    # the 1-variable scale of each entry: prod_k <|sigma|^4>_k^(1/4) over the four slots
    m4 = np.array([float(expect_nd([lambda z: np.abs(GELU.sigma(z)) ** 4], [[k]]))
                   for k in np.diag(K)]) ** 0.25
    for q in itertools.combinations_with_replacement(range(6), 4):
        cs = np.prod(m4[list(q)])
        assert abs(T[q] - R[q]) < 1e-8 * cs, q
        assert abs(T[q] - R[q]) <= E[q] + _UNESTIMATED * cs, (q, T[q] - R[q], E[q])


def test_gelu_ntk_tensor_with_sigma_pair():
    # a derivative-slot average with two sigma slots (<s s p p>, four distinct inputs,
    # the NTK tensors' case) takes the pair path with the sigma' slots on the outer axes
    p = normal_family(GELU, "d1")
    K = _covs(np.random.default_rng(7), 4, 1.5, 4, 4)
    fs = [SIG, p, SIG, p]
    assert np.all(_multi._pair_choice(fs, K, "high", GROWTH, None)[1] >= 0)
    got, est = expect_nd(fs, K, accuracy="high", return_error=True, growth=GROWTH)
    with _no_pair_path():
        ref = expect_nd(fs, K, accuracy="higher", growth=GROWTH)
    for g, e, w, Kb in zip(got, est, ref, K):
        cs = _cs_scale(fs, Kb)
        assert abs(g - w) < 1e-9 * cs and abs(g - w) <= e + _UNESTIMATED * cs, (g - w, e, cs)


def test_zphi_pair_reduces_to_the_product_when_uncorrelated():
    # c12 = 0: the average factorizes into two one-variable closed forms (exactly the
    # same formula family; equal to round-off)
    rng = np.random.default_rng(8)
    m1, m2 = rng.normal(size=(2, 3, 50)) * 3
    v1, v2 = np.abs(rng.normal(size=(2, 3, 1))) * 2
    got = _zphi_pair(m1, m2, v1, v2, np.zeros((3, 1)))
    want = SIG.inner(m1, np.sqrt(v1)) * SIG.inner(m2, np.sqrt(v2))
    np.testing.assert_allclose(got, want, rtol=0,
                               atol=16 * _EPS * np.max((np.abs(m1) + 2) * (np.abs(m2) + 2)))


def _pair_reference_p(m1, m2, v1, v2, c12):
    """<g'(X) g'(Y)> by adaptive quadrature over X of g'(X) E[g'(Y) | X]."""
    p = normal_family(GELU, "d1")
    sd = math.sqrt(v1)
    slope, rest = c12 / v1, max(v2 - c12 * c12 / v1, 0.0)

    def f(u):
        inner = p.inner(np.array([m2 + slope * sd * u]), np.array([math.sqrt(rest)]))[0]
        return float(p(np.array(m1 + sd * u)) * inner) * math.exp(-0.5 * u * u) \
            / math.sqrt(2 * math.pi)
    # the steps of g(x) at x = 0 and of E[g(Y) | x] where its mean crosses 0
    kinks = [u for u in (-m1 / sd, -m2 / (slope * sd) if slope else 99.0) if abs(u) < 12]
    return integrate.quad(f, -12, 12, points=kinks or None, epsabs=1e-15, epsrel=1e-14,
                          limit=400)[0]


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
def test_zphi_pair_derivative_kind_against_quadrature():
    rng = np.random.default_rng(6)
    cases = [(0.3, -0.7, 1.0, 2.0, 0.0), (1.2, 0.4, 1.5, 0.8, 0.9), (-0.5, 2.0, 2.0, 3.0, -2.1),
             (-6.0, -5.0, 1.0, 2.0, 0.7), (5.0, 6.0, 4.0, 9.0, 5.0), (2.0, 1.0, 9.0, 9.0, 8.0)]
    cases += _random_cases(rng)
    for m1, m2, v1, v2, c in cases:
        got = float(_zphi_pair(np.array([[m1]]), np.array([[m2]]), np.array([[v1]]),
                               np.array([[v2]]), np.array([[c]]), "p")[0, 0])
        want = _pair_reference_p(m1, m2, v1, v2, c)
        # sigma' is bounded: the terms are O(1) times powers of the standardized means
        scale = (1 + abs(m1) / math.sqrt(v1 + 1)) * (1 + abs(m2) / math.sqrt(v2 + 1))
        assert abs(got - want) <= 1e-14 * scale, (m1, m2, v1, v2, c, got, want)
    with pytest.raises(ValueError, match="kind"):
        _zphi_pair(np.zeros((1, 1)), np.zeros((1, 1)), np.ones((1, 1)), np.ones((1, 1)),
                   np.zeros((1, 1)), "q")


@pytest.mark.parametrize("slots", ["pppp", "qqpp", "xppp"])
def test_derivative_pair_path_against_the_one_axis_path(slots):
    # the NTK tensors' four-distinct-input averages with two sigma' slots, at their rule
    # ("high", one up from the default), against the one-axis path at "higher"
    base = {"p": normal_family(GELU, "d1"), "q": normal_family(GELU, "d2"),
            "x": lambda z: z * GELU.d2(z)}
    fs = [base[c] for c in slots]
    K = _covs(np.random.default_rng(len(slots) + ord(slots[0])), 4, 1.5, 4, 4)
    assert np.all(_multi._pair_choice(fs, K, "high", GROWTH, None)[1] >= 0)
    got, est = expect_nd(fs, K, accuracy="high", return_error=True, growth=GROWTH)
    with _no_pair_path():
        ref = expect_nd(fs, K, accuracy="higher", growth=GROWTH)
    for g, e, w, Kb in zip(got, est, ref, K):
        cs = _cs_scale(fs, Kb)
        assert abs(g - w) < 1e-9 * cs and abs(g - w) <= e + _UNESTIMATED * cs, (g - w, e, cs)


def test_pair_path_at_large_variances():
    # variances ~100: the pair path's default against its own outer rule at 640
    # trapezoid nodes per axis without pruning (the closed form itself is checked at
    # such scales against quadrature above): within the estimate, and the estimate
    # within the contract. (The one-axis path is capped by its point budget here: 4.7e-6
    # and 1.7e-3 of the scale off at "highest" for sigma and sigma' averages.)
    rng = np.random.default_rng(11)
    p = normal_family(GELU, "d1")
    for fs in ([SIG] * 4, [_multi._power(SIG, 2), SIG, SIG], [p] * 4):
        K = _covs(rng, len(fs), 100.0, len(fs), 3)
        pairs, choice, o, Lo, S2, codes = _multi._pair_choice(fs, K, "default", GROWTH, 1)
        assert np.all(choice >= 0)
        got, est = expect_nd(fs, K, return_error=True, growth=GROWTH, gh_up=1)
        fine = _multi._pair_sum(fs, pairs, choice, o, Lo, S2, np.full_like(codes, -640), 0.0)
        for g, e, w, Kb in zip(got, est, fine, K):
            cs = _cs_scale(fs, Kb)
            assert abs(g - w) <= e + _UNESTIMATED * cs and e < 1e-8 * cs, (g - w, e, cs)


def _pair_reference_sp(m1, m2, v1, v2, c12):
    """<g(X) g'(Y)> by adaptive quadrature over X of g(X) E[g'(Y) | X]."""
    p = normal_family(GELU, "d1")
    sd = math.sqrt(v1)
    slope, rest = c12 / v1, max(v2 - c12 * c12 / v1, 0.0)

    def f(u):
        inner = p.inner(np.array([m2 + slope * sd * u]), np.array([math.sqrt(rest)]))[0]
        return float(SIG(np.array(m1 + sd * u)) * inner) * math.exp(-0.5 * u * u) \
            / math.sqrt(2 * math.pi)
    kinks = [u for u in (-m1 / sd, -m2 / (slope * sd) if slope else 99.0) if abs(u) < 12]
    return integrate.quad(f, -12, 12, points=kinks or None, epsabs=1e-15, epsrel=1e-14,
                          limit=400)[0]


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
def test_zphi_pair_mixed_kind_against_quadrature():
    rng = np.random.default_rng(9)
    cases = [(0.3, -0.7, 1.0, 2.0, 0.0), (1.2, 0.4, 1.5, 0.8, 0.9), (-0.5, 2.0, 2.0, 3.0, -2.1),
             (-6.0, -5.0, 1.0, 2.0, 0.7), (5.0, 6.0, 4.0, 9.0, 5.0), (2.0, 1.0, 9.0, 9.0, 8.0)]
    cases += _random_cases(rng)
    for m1, m2, v1, v2, c in cases:
        got = float(_zphi_pair(np.array([[m1]]), np.array([[m2]]), np.array([[v1]]),
                               np.array([[v2]]), np.array([[c]]), "sp")[0, 0])
        want = _pair_reference_sp(m1, m2, v1, v2, c)
        # sigma grows like |x|, sigma' is bounded
        scale = (abs(m1) + math.sqrt(v1) + 1) * (1 + abs(m2) / math.sqrt(v2 + 1))
        assert abs(got - want) <= 1e-14 * scale, (m1, m2, v1, v2, c, got, want)
    # uncorrelated: the product of the one-variable closed forms
    m1, m2 = rng.normal(size=(2, 3, 40)) * 3
    v1, v2 = np.abs(rng.normal(size=(2, 3, 1))) * 2
    got = _zphi_pair(m1, m2, v1, v2, np.zeros((3, 1)), "sp")
    want = SIG.inner(m1, np.sqrt(v1)) * normal_family(GELU, "d1").inner(m2, np.sqrt(v2))
    np.testing.assert_allclose(got, want, rtol=0, atol=16 * _EPS * np.max(np.abs(m1) + 2))


@pytest.mark.parametrize("sig", [("ps", "p", "s"), ("s", "q", "p"), ("pq", "s", "p")])
def test_mixed_pair_path_against_the_one_axis_path(sig):
    # the NTK tensors' merged three-variable averages with one sigma and one sigma' slot
    # (e.g. <(sigma' sigma)_a sigma'_b sigma_c>), at the rule of those averages
    base = {"s": SIG, "p": normal_family(GELU, "d1"), "q": normal_family(GELU, "d2")}
    fs = [base[nm] if len(nm) == 1 else
          (lambda names: lambda z: np.prod([base[n](z) for n in names], axis=0))(nm)
          for nm in sig]
    K = _covs(np.random.default_rng(len(sig[0]) + 3 * len(sig[1])), 3, 1.5, 3, 4)
    pairs, choice = _multi._pair_choice(fs, K, "default", GROWTH, None)[:2]
    assert np.all(choice >= 0) and all(fs[i] is SIG for i, j in pairs)
    got, est = expect_nd(fs, K, return_error=True, growth=GROWTH)
    with _no_pair_path():
        ref = expect_nd(fs, K, accuracy="higher", growth=GROWTH)
    for g, e, w, Kb in zip(got, est, ref, K):
        cs = _cs_scale(fs, Kb)
        assert abs(g - w) < 1e-9 * cs and abs(g - w) <= e + _UNESTIMATED * cs, (g - w, e, cs)
