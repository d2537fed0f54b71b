"""Closed forms for Gaussian averages of trigonometric products (pdlt.gaussian._trig).

References: the general quadrature path of ``_multi`` (``_trig._TRIG = False``),
an independent tensor Gauss-Hermite rule in the eigenbasis of K (converged to
~1e-15 for sin at unit scale), mpmath at 40 digits (the two-variable closed
form ``e^{-(Kaa+Kbb)/2} sinh(Kab)`` and the four-variable exponential sum), and
exact limits at tiny and huge scales (Isserlis; period means; exactly
degenerate directions of rank-deficient covariances). Tolerances: the
contract of issue #15 (1e-8 of the Cauchy-Schwarz scale
``prod_k <|f_k|^d>^(1/d)``) against the quadrature path, and float64
round-off (a few eps of the scale, times the conditioning stated per test)
against the high-precision references.
"""

import math

import mpmath as mp
import numpy as np
import pytest

import pdlt
from pdlt.gaussian import _trig
from pdlt.gaussian._multi import expect_nd, quad_expectations
from pdlt.gaussian._rule import KernelNotPSDError, expect
from pdlt.gaussian._trig import TrigPoly, Z, trig_expect, trig_expect1, trig_form

CONTRACT = 1e-8
EPS = np.finfo(float).eps
SIN = pdlt.activation("sin")
S, P, Q = (trig_form(f) for f in (SIN.sigma, SIN.d1, SIN.d2))
X = trig_form(lambda z: z * SIN.d2(z))          # the "x" slot, z sigma''(z)

_CASES = {
    "ssss": [S, S, S, S], "ppss": [P, P, S, S], "ppsx": [P, P, S, X], "spqx": [S, P, Q, X],
    "s2ss": [S ** 2, S, S], "p2qs": [P ** 2, Q, S], "sss": [S, S, S], "s2s2": [S ** 2, S ** 2],
    "s3s": [S ** 3, S], "sp": [S, P], "xp": [X, P],
}


def _gram(rng, B, d, n0, scale=1.0):
    A = rng.standard_normal((B, d, n0))
    return scale * A @ np.swapaxes(A, 1, 2) / n0


def _cs_scale(fs, K):
    """``prod_k <|f_k|^d>^(1/d)`` by the one-variable quadrature rule (independent)."""
    d = len(fs)
    out = np.ones(K.shape[0])
    for k, f in enumerate(fs):
        g = f.numeric()
        out *= np.asarray(expect(lambda z: np.abs(g(z)) ** d, K[:, k, k], period=2 * np.pi)) ** (1 / d)
    return out


def _old(fs, K, accuracy="high"):
    """The general quadrature path (the closed form switched off)."""
    saved, _trig._TRIG = _trig._TRIG, False
    try:
        return expect_nd([f.numeric() for f in fs], K, accuracy=accuracy)
    finally:
        _trig._TRIG = saved


def _eigen_gh(fs, K, q):
    """Tensor Gauss-Hermite in the eigenbasis of K (q nodes per axis): independent of
    _multi's pivoted factor and rules."""
    x, w = np.polynomial.hermite_e.hermegauss(q)
    w = w / w.sum()
    out = np.empty(K.shape[0])
    d = K.shape[-1]
    grids = np.meshgrid(*([x] * d), indexing="ij")
    U = np.stack([g.ravel() for g in grids])                     # (d, q^d)
    W = np.prod(np.meshgrid(*([w] * d), indexing="ij"), axis=0).ravel()
    for b in range(K.shape[0]):
        lam, V = np.linalg.eigh(K[b])
        z = (V * np.sqrt(np.maximum(lam, 0)))[...] @ U
        vals = np.ones(U.shape[1])
        for k, f in enumerate(fs):
            vals = vals * f.evaluate(z[k])
        out[b] = vals @ W
    return out


# ---------------------------------------------------------------------------
# recognition
# ---------------------------------------------------------------------------

def test_recognizes_sin_and_its_products():
    assert S.terms == {(0, 1.0): -0.5j, (0, -1.0): 0.5j}
    assert P.terms == {(0, 1.0): 0.5, (0, -1.0): 0.5}
    z = np.linspace(-30.0, 30.0, 301)
    for f, want in [(S ** 2, np.sin(z) ** 2), (P * Q, -np.cos(z) * np.sin(z)),
                    (X, -z * np.sin(z)), (S.derivative(3), -np.cos(z)),
                    ((S * S).derivative(4), -8 * np.cos(2 * z))]:
        assert np.max(np.abs(f.evaluate(z) - want)) < 1e-12 * max(1.0, np.max(np.abs(want)))
    # functions the engine builds: merged slots, powers, z times slots
    t = trig_form(lambda z: np.prod([SIN.sigma(z), SIN.d1(z), SIN.d1(z)], axis=0))
    assert t is not None and t.terms == (S * P * P).terms
    assert trig_form(lambda z: np.sin(2.0 * z + 0.5)) is not None
    # numeric calls give the wrapped function's own values
    assert trig_form(SIN.sigma)(np.array([0.3]))[0] == np.sin(0.3)


@pytest.mark.parametrize("f", [np.tanh, lambda z: np.abs(np.sin(z)), lambda z: np.maximum(np.sin(z), 0),
                               lambda z: np.sin(z) + 1e-9 * z ** 2 * (np.asarray(z, float) > 0),
                               lambda z: np.sin(np.sin(z)), lambda z: float(z)])
def test_rejects_what_is_not_a_trig_polynomial(f):
    assert trig_form(f) is None


def test_gelu_tanh_relu_keep_their_paths():
    for name in ("tanh", "gelu", "relu"):
        act = pdlt.activation(name)
        assert trig_form(act.sigma) is None or act.period is None
        assert _trig.as_trig([act.sigma], act.period) == [act.sigma]


# ---------------------------------------------------------------------------
# against the quadrature path and an independent rule
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(_CASES))
@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_equals_quadrature_path(name, scale):
    # full rank, variances ~0.5 and ~2: equal to the contract (the quadrature path's own
    # error at "high" is ~1e-12 here); the closed form's round-off bound is a few eps
    fs = _CASES[name]
    K = _gram(np.random.default_rng(3), 4, len(fs), len(fs) + 2, scale)
    got, err, ok = trig_expect(fs, K, return_error=True)
    assert ok.mean() >= 0.5
    ref = _old(fs, K)
    cs = _cs_scale(fs, K)
    assert np.all(np.abs(got - ref) < CONTRACT * cs), np.max(np.abs(got - ref) / cs)
    assert np.all(err[ok] < 1e-12 * cs[ok])
    # the comparison resolves 1e-7 of the scale: a slightly wrong covariance fails it
    # (averages that vanish by parity, e.g. <sin cos>, are 0 for every K)
    if np.max(np.abs(ref) / cs) > 1e-3:
        wrong, _, _ = trig_expect(fs, K * 1.001)
        assert not np.all(np.abs(wrong - ref) < CONTRACT * cs)
    else:
        assert np.all(got == 0.0)


@pytest.mark.parametrize("name", ["ssss", "spqx", "s2ss", "s3s"])
def test_against_eigenbasis_gauss_hermite(name):
    # an independent rule (eigen factor, 40 nodes per axis; 24 for four variables:
    # converged to ~1e-15 at unit scale) to a few eps of the scale
    fs = _CASES[name]
    K = _gram(np.random.default_rng(9), 3, len(fs), len(fs) + 1, 0.7)
    got, _, ok = trig_expect(fs, K)
    want = _eigen_gh(fs, K, 24 if len(fs) == 4 else 40)
    cs = _cs_scale(fs, K)
    assert np.all(np.abs(got - want) < 1e-13 * cs), np.max(np.abs(got - want) / cs)


def test_rank_deficient_equals_quadrature_path():
    # N > n0: 4 x 4 covariances of inputs in 2 and 3 dimensions (rank 2, 3) and exactly
    # coinciding or opposite variables; the quadrature path integrates on the support
    rng = np.random.default_rng(5)
    for n0 in (2, 3):
        K = _gram(rng, 6, 4, n0, 1.5)
        for fs in (_CASES["ssss"], _CASES["ppsx"], _CASES["spqx"]):
            got, _, ok = trig_expect(fs, K)
            cs = _cs_scale(fs, K)
            assert np.all(np.abs(got - _old(fs, K)) < CONTRACT * cs)
            # through expect_nd (the hook)
            assert np.all(np.abs(expect_nd(fs, K) - _old(fs, K)) < CONTRACT * cs)
    v = np.array([1.0, -1.0, 1.0, 2.0])
    K = 0.8 * np.outer(v, v)[None] + 0.3 * np.diag([1.0, 1.0, 0.0, 0.0])[None]
    fs = _CASES["ssss"]
    assert abs(trig_expect(fs, K)[0][0] - _old(fs, K)[0]) < CONTRACT * _cs_scale(fs, K)[0]


def test_indefinite_covariance_still_refused():
    K = np.array([[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(KernelNotPSDError, match="not positive semi-definite"):
        expect_nd([S, S], K)


# ---------------------------------------------------------------------------
# extreme scales: high precision and exact limits
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("s", [1e-12, 1e-6, 1e-2, 1.0, 30.0, 1e3, 1e6, 1e12])
def test_two_variables_against_mpmath(s):
    # <sin a sin b> = e^{-(Kaa+Kbb)/2} sinh(Kab), <cos a cos b> = e^{-(Kaa+Kbb)/2} cosh(Kab),
    # at 40 digits, for correlations 0.3 and 0.999; expect_nd (closed form or its
    # small-variance quadrature) to 1e-12 of the Cauchy-Schwarz scale sqrt<sin^2>...
    mp.mp.dps = 40
    for rho in (0.3, 0.999):
        K = s * np.array([[[1.0, rho * 1.3], [rho * 1.3, 1.69]]])
        a, b, c = (mp.mpf(float(v)) for v in (K[0, 0, 0], K[0, 0, 1], K[0, 1, 1]))
        for fs, ref, sc in (([S, S], mp.exp(-(a + c) / 2) * mp.sinh(b),
                             mp.sqrt((1 - mp.exp(-2 * a)) * (1 - mp.exp(-2 * c))) / 2),
                            ([P, P], mp.exp(-(a + c) / 2) * mp.cosh(b),
                             mp.sqrt((1 + mp.exp(-2 * a)) * (1 + mp.exp(-2 * c))) / 2)):
            got = float(expect_nd(fs, K)[0])
            assert np.isfinite(got)
            assert abs(got - float(ref)) <= 1e-12 * float(sc), (got, float(ref))


def _mp_sum(fs, K):
    """The exponential sum of the module doc at 40 digits (pure trig fs)."""
    mp.mp.dps = 40
    Km = mp.matrix([[mp.mpf(float(v)) for v in row] for row in K])
    import itertools
    tot = mp.mpc(0)
    for combo in itertools.product(*[list(f.terms.items()) for f in fs]):
        k = [t[0][1] for t in combo]
        c = mp.mpc(1)
        for t in combo:
            c *= mp.mpc(t[1].real, t[1].imag)
        q = sum(k[i] * k[j] * Km[i, j] for i in range(len(k)) for j in range(len(k)))
        tot += c * mp.exp(-q / 2)
    return float(mp.re(tot))


@pytest.mark.parametrize("s", [0.3, 3.0, 1e2, 1e6, 1e12])
def test_four_variables_against_mpmath_sum(s):
    # the same sum at 40 digits: float64 evaluation within a few eps of the scale
    # plus the conditioning of exp(-q/2) in q (the bound trig_expect returns)
    K = _gram(np.random.default_rng(2), 3, 4, 6, s)
    for fs in (_CASES["ssss"], _CASES["ppss"], _CASES["s2ss"]):
        Kd = K[:, :len(fs), :len(fs)]
        got, err, ok = trig_expect(fs, Kd, return_error=True)
        want = np.array([_mp_sum(fs, Kb) for Kb in Kd])
        assert np.all(np.abs(got - want) <= err + 4 * EPS), np.abs(got - want)


def test_huge_scale_limits():
    # |x| = 1e6 (K = 1e12): full-rank averages tend to products of period means;
    # exactly degenerate directions keep their value: z_c = z_a + z_b gives
    # <sin a sin b cos c> = <sin a cos a sin b cos b> - <sin^2 a sin^2 b> = -1/4,
    # z_b = z_a gives <sin^4> = 3/8, z_b = -z_a gives <sin a sin b> = -1/2
    x = 1e6 * np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    K = x @ x.T
    assert expect_nd([S, S, P], K[None, :3, :3])[0] == pytest.approx(-0.25, abs=1e-15)
    assert expect_nd([S ** 2, S ** 2], K[None, :2, :2])[0] == pytest.approx(0.25, abs=1e-15)
    assert expect_nd([S, S, S, S], K[None])[0] == pytest.approx(0.0, abs=1e-15)
    assert expect_nd([P ** 2, P ** 2], K[None, :2, :2])[0] == pytest.approx(0.25, abs=1e-15)
    Kdup = np.full((1, 2, 2), 1e12)
    assert expect_nd([S ** 2, S ** 2], Kdup)[0] == pytest.approx(3 / 8, abs=1e-15)
    assert expect_nd([S, S], Kdup * np.array([[1, -1], [-1, 1]]))[0] == pytest.approx(-0.5, abs=1e-15)
    # z sigma'' slot at huge scale: <z sin z cos z'> -> 0 for independent; <(z sin z)^2> -> K/2
    assert abs(expect_nd([X, P], K[None, :2, :2])[0]) < 1e-15
    assert trig_expect1(X * X, np.array([1e12]))[0] == pytest.approx(0.5e12, rel=1e-14)


@pytest.mark.parametrize("s", [1e-12, 1e-8, 1e-4])
def test_tiny_scale_limits(s):
    # K = s K0: <sin a sin b sin c sin d> = Isserlis(K) (1 + O(s)), <sin^2 a sin b sin c>
    # = (Kaa Kbc + 2 Kab Kac)(1 + O(s)); the small-variance covariances go to quadrature,
    # the result relative to the leading order within O(s) + 1e-10
    K0 = _gram(np.random.default_rng(4), 4, 4, 6)
    K = s * K0
    # (relative to the Cauchy-Schwarz scale: the leading order itself may cancel)
    got = expect_nd(_CASES["ssss"], K)
    iss = K[:, 0, 1] * K[:, 2, 3] + K[:, 0, 2] * K[:, 1, 3] + K[:, 0, 3] * K[:, 1, 2]
    cs = _cs_scale(_CASES["ssss"], K)
    assert np.all(np.abs(got - iss) < (10 * s + 1e-10) * cs)
    got3 = expect_nd(_CASES["s2ss"], K[:, :3, :3])
    lead = K[:, 0, 0] * K[:, 1, 2] + 2 * K[:, 0, 1] * K[:, 0, 2]
    cs3 = _cs_scale(_CASES["s2ss"], K[:, :3, :3])
    assert np.all(np.abs(got3 - lead) < (10 * s + 1e-10) * cs3)
    # and the check resolves the next order: 2x the leading order fails it
    assert not np.all(np.abs(got - 2 * iss) < (10 * s + 1e-10) * cs)
    # one variable: the heat series, exact at any scale
    k = np.array([s])
    assert trig_expect1(S ** 4, k)[0] == pytest.approx(3 * s * s, rel=10 * s + 1e-14)
    assert trig_expect1(S ** 2, k)[0] == pytest.approx(-0.5 * math.expm1(-2 * s), rel=1e-14)


def test_small_variance_falls_back_to_quadrature():
    # a product of four sines at K ~ 1e-3 is O(1e-6) while its terms are O(1): not ok,
    # and expect_nd then returns the quadrature path's value
    K = _gram(np.random.default_rng(6), 3, 4, 6, 1e-3)
    _, _, ok = trig_expect(_CASES["ssss"], K)
    assert not ok.any()
    got, ref = expect_nd(_CASES["ssss"], K, accuracy="high"), _old(_CASES["ssss"], K)
    assert np.all(np.abs(got - ref) <= 1e-14 * _cs_scale(_CASES["ssss"], K))
    # (the closed form there is off by far more than that: the check can fail)
    closed, _, _ = trig_expect(_CASES["ssss"], K)
    assert not np.all(np.abs(closed - ref) <= 1e-14 * _cs_scale(_CASES["ssss"], K))


def test_heat_series_meets_sum():
    # at k_max^2 K = 2 the one-variable heat series and the exponential sum agree
    for f in (S ** 4, X * X, P * Q, (S * S).derivative(4), S ** 3 * X):
        k = 2.0 / f.kmax ** 2
        a = _trig._heat_series(f, np.array([k]))[0]
        b = _trig._sum_terms([f], np.array([[[k]]]))[0][0]
        assert abs(a - b) < 1e-14 * max(1.0, abs(b))


# ---------------------------------------------------------------------------
# the statistics of a sin network use it
# ---------------------------------------------------------------------------

def _inputs(N, K1, seed=0):
    x = np.random.default_rng(seed).standard_normal((N, 3))
    return x * np.sqrt(3 * K1) / np.linalg.norm(x, axis=1, keepdims=True)


NAMES = ("V", "G1", "A", "B", "D", "F", "P", "Q", "R", "S", "T", "U", "H1")


def test_statistics_equal_the_quadrature_path(monkeypatch):
    # every N-input statistic of a sin MLP with the closed forms against the general
    # path at "high" (K1 = 1: both well inside their accuracy), to 1e-9 of each
    # statistic's largest entry
    mlp = pdlt.MLP(n0=3, width=32, depth=3, activation="sin", C_W=1.0, C_b=0.1)
    x = _inputs(3, 1.0)
    new = pdlt.statistics(mlp, x, get="all")
    monkeypatch.setattr(_trig, "_TRIG", False)
    old = pdlt.statistics(mlp, x, get="all", accuracy="high")
    for n in NAMES:
        sc = np.max(np.abs(old[n]))
        assert np.max(np.abs(new[n] - old[n])) <= 1e-9 * sc, n


def test_statistics_at_huge_norm_are_the_period_limits():
    # |x|^2 / n0 = 1e12: layer 1 sin(z) of distinct inputs are independent with
    # <sin^2> = 1/2, <sin^4> = 3/8, so at layer 2 (C_W = 1, width n1 = 32)
    # V_aaaa = <sin^4> - <sin^2>^2 = 1/8 and V_aabb = 0 exactly; all finite
    mlp = pdlt.MLP(n0=3, width=32, depth=3, activation="sin", C_W=1.0, C_b=0.0)
    st = pdlt.statistics(mlp, _inputs(3, 1e12), get="all")
    for n in NAMES:
        assert np.all(np.isfinite(st[n])), n
    V2 = st.V[1]
    assert V2[0, 0, 0, 0] == pytest.approx(0.125, rel=1e-12)
    assert abs(V2[0, 0, 1, 1]) < 1e-14
    assert st.K[1, 0, 0] == pytest.approx(0.5, rel=1e-12)


def test_residual_statistics_equal_the_quadrature_path(monkeypatch):
    # residual sin MLPs reach the closed forms through expect (one variable),
    # expect_nd (their own integrands, recognized) and pair_expectations: one input
    # and two inputs against the general path at "high", to 1e-9 of each scale
    mlp = pdlt.MLP(n0=3, width=32, depth=3, activation="sin", C_W=1.0, C_b=0.1, gamma=0.5)
    x = np.random.default_rng(0).standard_normal((2, 3))
    new = [pdlt.statistics(mlp, K1=1.0, get="all"), pdlt.statistics(mlp, x, get="all")]
    monkeypatch.setattr(_trig, "_TRIG", False)
    old = [pdlt.statistics(mlp, K1=1.0, get="all", accuracy="high"),
           pdlt.statistics(mlp, x, get="all", accuracy="high")]
    for a, b in zip(new, old):
        for n in NAMES:
            if getattr(b, n) is None:
                continue
            sc = np.max(np.abs(getattr(b, n)))
            assert np.max(np.abs(getattr(a, n) - getattr(b, n))) <= 1e-9 * sc, n


def test_residual_statistics_at_huge_norm_are_finite():
    mlp = pdlt.MLP(n0=3, width=32, depth=3, activation="sin", C_W=1.0, C_b=0.0, gamma=0.5)
    # H1 of three inputs (its three- and four-variable averages of sin on the capped
    # Gauss-Hermite rule, ~40 s) is left to two inputs, whose H1 takes the same averages
    for st in (pdlt.statistics(mlp, K1=1e12, get="all"),
               pdlt.statistics(mlp, _inputs(2, 1e12), get="all"),
               pdlt.statistics(mlp, _inputs(3, 1e12), get=[n for n in NAMES if n != "H1"])):
        for n in NAMES:
            if getattr(st, n) is not None:
                assert np.all(np.isfinite(getattr(st, n))), n


def test_an_unresolved_source_of_a_smooth_activation_says_why():
    # sin at K1 = 1e12: G1's fourth-derivative source is not resolved in float64
    # (estimate inf). The warning must not blame kinks and nearly coinciding inputs (the
    # kinked activations' reason, which it gave before session 17: 1 - rho = 0.28 here)
    mlp = pdlt.MLP(n0=3, width=32, depth=3, activation="sin", C_W=1.0, C_b=0.0, gamma=0.5)
    with pytest.warns(RuntimeWarning, match="not resolved in float64") as rec:
        pdlt.statistics(mlp, _inputs(2, 1e12), get=["G1"])
    assert not any("kinked" in str(r.message) for r in rec)
