"""elu's innermost axis in closed form (pdlt.gaussian._exppw).

The closed form against adaptive quadrature (scipy) on one axis, and expect_nd's
elu averages against the all-quadrature split path (``_exppw._EXP = False``) and a
nested scipy reference, to 1e-12 of the Cauchy-Schwarz scale.
"""

import numpy as np
import pytest
from scipy import integrate

import pdlt
from pdlt.gaussian import _exppw
from pdlt.gaussian._exppw import ExpPiecewise, exp_family, exp_inner, exp_monomial
from pdlt.gaussian._multi import expect_nd, normal_family

ACT = pdlt.activation("elu")
S, P, Q = (exp_family(ACT, k) for k in ("sigma", "d1", "d2"))
FUNCS = {"s": S, "p": P, "s2": S ** 2, "s4": S ** 4, "sp": S * P, "zq": Q.times_z(),
         "dd": 2.0 * (P ** 2 + S * Q)}


def _quad1(f, m, l):
    """``<f(m + l u)>`` and ``<f(m + l u)^2>^(1/2)`` by adaptive quadrature, split at kinks."""
    pts = sorted({-12.0, 12.0, *[(t - m) / l for t in f.kinks if abs((t - m) / l) < 12]})
    dens = lambda u: np.exp(-0.5 * u * u) / np.sqrt(2 * np.pi)  # noqa: E731
    val = sum(integrate.quad(lambda u: float(f.formula(np.array([m + l * u]))[0]) * dens(u),
                             a, b, epsabs=0, epsrel=2e-14, limit=200)[0]
              for a, b in zip(pts[:-1], pts[1:]))
    sq = sum(integrate.quad(lambda u: float(f.formula(np.array([m + l * u]))[0]) ** 2 * dens(u),
                            a, b, epsabs=0, epsrel=1e-12, limit=200)[0]
             for a, b in zip(pts[:-1], pts[1:]))
    return val, np.sqrt(sq)


def test_named_elu_slots_are_recognized_and_call_the_activation():
    z = np.linspace(-5, 5, 101)
    for slot, f in zip(("sigma", "d1", "d2"), (S, P, Q)):
        assert isinstance(f, ExpPiecewise)
        assert np.array_equal(f(z), getattr(ACT, slot)(z))          # bitwise: fn itself
        assert np.allclose(f.formula(z), f(z), rtol=0, atol=1e-15)
    assert isinstance(normal_family(ACT, "sigma"), ExpPiecewise)
    # alpha is read from the parameters
    a2 = pdlt.activation("elu", alpha=0.5)
    f2 = exp_family(a2, "sigma")
    assert np.allclose(f2.formula(z), a2.sigma(z), rtol=0, atol=1e-15)


def test_a_user_function_named_elu_keeps_quadrature():
    other = pdlt.Activation("elu", lambda z: np.maximum(z, 0.0), lambda z: (z > 0) * 1.0,
                            lambda z: 0.0 * z, kinks=(0.0,), parameters={"alpha": 1.0})
    assert exp_family(other, "sigma") is None
    assert exp_monomial(other, abs, 1, 1, 1) is abs


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_inner_axis_equals_adaptive_quadrature(name):
    f = FUNCS[name]
    # means on either side, near and far from the kink, narrow and wide axes (c >= 4
    # takes Gauss-Laguerre, c < 4 the recursion); variances >= _EXP_MIN_VAR (below,
    # expect_nd keeps the split path: alpha (e^z - 1) as two terms loses ~eps absolute)
    cases = [(0.3, 1.0), (-2.0, 0.5), (5.0, 3.0), (-6.0, 2.0), (1.0, 8.0), (-0.3, 0.25),
             (2.5, 0.3)]
    m = np.array([[c[0]] for c in cases])
    l = np.array([[c[1]] for c in cases])
    got = exp_inner([f], m, l)
    for k, (mk, lk) in enumerate(cases):
        ref, scale = _quad1(f, mk, lk)
        assert abs(got[k] - ref) <= 1e-12 * scale, (name, mk, lk, got[k], ref)
    # and a wrong closed form fails the same comparison: alpha off by 1e-6
    g = ExpPiecewise(f.fn, f.kinks, [[(k, c * (1 + 1e-6) if k[1] else c) for k, c in p]
                                     for p in f.pieces])
    if any(k[1] for p in f.pieces for k, _ in p):
        bad = exp_inner([g], m[:1], l[:1])[0]
        ref, scale = _quad1(f, *cases[0])
        assert abs(bad - ref) > 1e-12 * scale


def test_two_variables_on_one_axis():
    # rank-deficient inner axis: a product of two variables with slopes of both signs
    for f, g in [(S, S ** 2), (P, Q.times_z()), (S * P, S)]:
        for m1, l1, m2, l2 in [(0.3, 1.0, -0.5, -0.7), (1.0, 2.0, 2.0, 2.0),
                               (-1.0, 1.0, 1.0, -3.0)]:
            got = exp_inner([f, g], np.array([[m1, m2]]), np.array([[l1, l2]]))[0]
            dens = lambda u: np.exp(-0.5 * u * u) / np.sqrt(2 * np.pi)  # noqa: E731
            fu = lambda u: (f.formula(np.array([m1 + l1 * u]))[0]  # noqa: E731
                            * g.formula(np.array([m2 + l2 * u]))[0])
            pts = sorted([-12.0, 12.0, -m1 / l1, -m2 / l2])
            ref = sum(integrate.quad(lambda u: fu(u) * dens(u), a, b, epsrel=2e-14, epsabs=0,
                                     limit=200)[0] for a, b in zip(pts[:-1], pts[1:]))
            sc = np.sqrt(sum(integrate.quad(lambda u: fu(u) ** 2 * dens(u), a, b, epsrel=1e-12,
                                            limit=200)[0] for a, b in zip(pts[:-1], pts[1:])))
            assert abs(got - ref) <= 1e-12 * sc


def _scale(fs, K):
    rng = np.random.default_rng(1)
    d = len(fs)
    z = rng.standard_normal((200000, d)) * np.sqrt(np.diag(K))
    return np.prod([np.mean(np.abs(f.formula(z[:, i])) ** d) ** (1 / d) for i, f in enumerate(fs)])


def test_two_variable_average_equals_nested_scipy():
    K = np.array([[1.3, 0.7], [0.7, 0.9]])
    fs = [S ** 2, P]
    # "high": the outer axis' rule at "default" is 2.9e-10 off here (both paths)
    got = float(expect_nd(fs, K, kinks=(0.0,), accuracy="high"))
    s1 = np.sqrt(K[0, 0])
    b = K[1, 0] / K[0, 0]
    sc = np.sqrt(K[1, 1] - K[1, 0] ** 2 / K[0, 0])
    dens = lambda u: np.exp(-0.5 * u * u) / np.sqrt(2 * np.pi)  # noqa: E731

    def inner(z1):
        m = b * z1
        pts = sorted([-12.0, 12.0, -m / sc])
        return sum(integrate.quad(lambda u: P.formula(np.array([m + sc * u]))[0] * dens(u),
                                  a, c, epsrel=2e-14, epsabs=0)[0]
                   for a, c in zip(pts[:-1], pts[1:]))
    # outer axis: Gauss-Legendre on each side of the kink (the inner average is smooth)
    x, w = np.polynomial.legendre.leggauss(60)
    ref = 0.0
    for a, c in ((-12.0, 0.0), (0.0, 12.0)):
        u = 0.5 * (a + c) + 0.5 * (c - a) * x
        ref += 0.5 * (c - a) * sum(wk * fs[0].formula(np.array([s1 * uk]))[0] * inner(s1 * uk)
                                   * dens(uk) for uk, wk in zip(u, w))
    assert abs(got - ref) <= 1e-12 * _scale(fs, K)


def _covs(d):
    rng = np.random.default_rng(d)
    A = rng.standard_normal((d, d))
    C = np.full((d, d), 0.999)
    np.fill_diagonal(C, 1.0)
    R = rng.standard_normal((d, 2))
    return {"random": A @ A.T / d + 0.2 * np.eye(d), "rho 0.999": 1.7 * C, "rank 2": R @ R.T}


@pytest.mark.parametrize("d", [2, 3])
def test_expect_nd_equals_the_split_path(d, monkeypatch):
    fs = {2: [S, S ** 2], 3: [S, P, S ** 2]}[d]
    for name, K in _covs(d).items():
        new = float(expect_nd(fs, K, kinks=(0.0,), accuracy="high"))
        monkeypatch.setattr(_exppw, "_EXP", False)
        old = float(expect_nd(fs, K, kinks=(0.0,), accuracy="high"))
        monkeypatch.setattr(_exppw, "_EXP", True)
        assert abs(new - old) <= 1e-12 * _scale(fs, K), (d, name, new, old)


def test_four_variables_rank_deficient_equals_the_split_path(monkeypatch):
    fs = [S, S, P, Q.times_z()]
    K = _covs(4)["rank 2"]
    new = float(expect_nd(fs, K, kinks=(0.0,), accuracy="high"))
    monkeypatch.setattr(_exppw, "_EXP", False)
    old = float(expect_nd(fs, K, kinks=(0.0,), accuracy="high"))
    assert abs(new - old) <= 1e-12 * _scale(fs, K)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["random", "rho 0.999"])
def test_four_variables_full_rank_equals_the_split_path(name, monkeypatch):
    # ~1 min each for the split path at "high" (the cost this module removes)
    fs = [S, S, P, Q.times_z()]
    K = _covs(4)[name]
    new = float(expect_nd(fs, K, kinks=(0.0,), accuracy="high"))
    monkeypatch.setattr(_exppw, "_EXP", False)
    old = float(expect_nd(fs, K, kinks=(0.0,), accuracy="high"))
    assert abs(new - old) <= 1e-12 * _scale(fs, K)


def test_small_variances_keep_the_split_path(monkeypatch):
    # below _EXP_MIN_VAR alpha (e^z - 1) as two terms would lose ~eps / var^(p/2)
    K = 1e-6 * np.array([[1.0, 0.5], [0.5, 1.0]])
    new = float(expect_nd([S, S], K, kinks=(0.0,)))
    monkeypatch.setattr(_exppw, "_EXP", False)
    old = float(expect_nd([S, S], K, kinks=(0.0,)))
    assert new == old


def test_four_small_variances_split_path_in_bounded_memory():
    # four elu variables below _EXP_MIN_VAR take the all-quadrature split path: ~(22 panels
    # x 6 nodes)^4 = 3e8 points at "default", built at once ~10 GB (statistics() on four
    # inputs of norm 2e-5 raised MemoryError, issue #15); now in blocks of ~_CHUNK points
    import tracemalloc

    from pdlt.gaussian import _multi
    A = np.random.default_rng(0).normal(size=(4, 4))
    K = 1e-8 * (A @ A.T / 4 + 0.2 * np.eye(4))
    tracemalloc.start()
    try:
        v = float(expect_nd([S] * 4, K, kinks=(0.0,)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    per_axis = (len(_multi._SPLIT_RULES["default"][0]) - 1 + 3 * 4) * _multi._SPLIT_RULES[
        "default"][1]
    assert per_axis ** 4 > 10 * _multi._CHUNK           # the case does need the blocks
    assert peak < 1e9
    # elu(z) = z + O(z^2) for z < 0: at variance 1e-8 the average is Isserlis' value to
    # O(sd) ~ 1e-4 (measured 1.7e-4; "high" agrees with "default" to 2.9e-10)
    iss = K[0, 1] * K[2, 3] + K[0, 2] * K[1, 3] + K[0, 3] * K[1, 2]
    assert abs(v - iss) <= 5e-4 * abs(iss)


def test_split_path_blocks_sum_to_the_unblocked_sum(monkeypatch):
    # the blocks only reorder the sum: a three-variable small-variance average with blocks
    # of 2^12 points equals the one-block sum to round-off (~1e6 terms)
    from pdlt.gaussian import _multi
    A = np.random.default_rng(1).normal(size=(3, 3))
    K = 1e-4 * (A @ A.T / 3 + 0.2 * np.eye(3))
    fs = [S, P, S ** 2]
    whole = float(expect_nd(fs, K, kinks=(0.0,), accuracy="fast"))
    calls = []
    block = _multi._split_block
    monkeypatch.setattr(_multi, "_split_block", lambda *a: (calls.append(a[-3].shape[1]),
                                                           block(*a))[1])
    monkeypatch.setattr(_multi, "_CHUNK", 2 ** 12)
    blocked = float(expect_nd(fs, K, kinks=(0.0,), accuracy="fast"))
    assert len(calls) > 10                                # many blocks
    assert abs(blocked - whole) <= 1e-13 * _scale(fs, K)
