"""Criticality and universality classes (pdlt.theory.criticality).

Reference values and where they come from:
- ReLU (0, 2), leaky ReLU 2/(1 + a^2), linear (0, 1): book §5.2, closed form.
- tanh, sin: C_W = 1/sigma'(0)^2 = 1; erf: sigma'(0) = 2/sqrt(pi) so C_W = pi/4
  (book §5.3.3); a1 = sigma_3/sigma_1 + (3/4)(sigma_2/sigma_1)^2.
- GELU: <sigma sigma''>_K = 0 reduces to K^2 - 3K - 2 = 0, K* = (3 + sqrt 17)/2
  (the solver reproduces it to 1e-14; derivation by Gaussian integrals of
  z Phi(z) phi(z) polynomials).
- C_W, C_b of GELU and SWISH: checked against scipy.integrate.quad
  (adaptive Gauss-Kronrod, epsrel 1e-13), a method independent of the engine.
"""

import math

import numpy as np
import pytest
from scipy import integrate, special

import pdlt
from pdlt.activations import ActivationError
from pdlt.theory import criticality as C
from pdlt.theory._kernel_map import moments

EPS = np.finfo(float).eps

EXPECTED = [
    # name, class, C_b, C_W (None: checked elsewhere)
    ("relu", "scale-invariant", 0.0, 2.0),
    ("leaky_relu(0.1)", "scale-invariant", 0.0, 2.0 / 1.01),
    ("leaky_relu(-0.5)", "scale-invariant", 0.0, 2.0 / 1.25),
    ("linear", "scale-invariant", 0.0, 1.0),
    ("tanh", "K*=0", 0.0, 1.0),
    ("sin", "K*=0", 0.0, 1.0),
    ("erf", "K*=0", 0.0, math.pi / 4),
    ("elu", "K*=0", 0.0, 1.0),
    ("gelu", "half-stable", None, None),
    ("swish", "half-stable", None, None),
    ("sigmoid", "none", None, None),
    ("softplus", "none", None, None),
    ("monomial(2)", "none", None, None),
    ("monomial(3)", "none", None, None),
]


@pytest.mark.parametrize("name, cls, C_b, C_W", EXPECTED)
def test_class_and_critical_point(name, cls, C_b, C_W):
    res = C.criticality(name)
    assert res.universality_class == cls
    if cls == "none":
        assert res.C_W is None and res.C_b is None
        assert len(res.reason) > 40
        with pytest.raises(C.NoCriticalPointError, match="no critical"):
            C.require_critical(name)
        return
    assert abs(res.chi_parallel - 1) < 1e-10 and abs(res.chi_perp - 1) < 1e-10
    if C_W is not None:
        assert res.C_W == pytest.approx(C_W, rel=1e-12)
        assert res.C_b == pytest.approx(C_b, abs=1e-14)
    assert res.solutions[0].C_W == res.C_W


def _quad(f, K):
    """<f(z)>_K by adaptive quadrature (independent of the engine)."""
    s = math.sqrt(K)
    g = lambda u: f(s * u) * math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)  # noqa: E731
    return sum(integrate.quad(g, a, b, epsabs=0, epsrel=1e-13, limit=200)[0]
               for a, b in ((-14, 0), (0, 14)))


def _gelu(z):
    return z * special.ndtr(z)


def _swish(z):
    return z * special.expit(z)


@pytest.mark.parametrize("name, fn", [("gelu", _gelu), ("swish", _swish)])
def test_half_stable_point_against_independent_quadrature(name, fn):
    res = C.criticality(name)
    K = res.K_star
    act = pdlt.activation(name)
    # the defining equations, by adaptive quadrature: chi_perp = 1, K* = f(K*)
    D = _quad(lambda z: float(act.d1(np.array(z))) ** 2, K)
    S = _quad(lambda z: fn(z) ** 2, K)
    assert res.C_W * D == pytest.approx(1.0, abs=1e-11)
    assert res.C_b + res.C_W * S == pytest.approx(K, rel=1e-11)
    # <sigma sigma''>_{K*} = 0 relative to the size of its terms
    H = _quad(lambda z: fn(z) * float(act.d2(np.array(z))), K)
    assert abs(H) < 1e-11 * D
    assert res.C_b > 0


def test_gelu_closed_form_K_star():
    # K^2 - 3K - 2 = 0  (<z Phi(z) (2 - z^2) phi(z)>_K = 0)
    assert C.criticality("gelu").K_star == pytest.approx((3 + math.sqrt(17)) / 2, rel=1e-13)


def test_known_digits_and_sides():
    g, s = C.criticality("gelu"), C.criticality("swish")
    # values of this solver, confirmed by the quadrature test above
    assert g.C_W == pytest.approx(1.983058257437547, rel=1e-12)
    assert s.K_star == pytest.approx(14.320173618025963, rel=1e-11)
    assert s.C_W == pytest.approx(1.9880046782694918, rel=1e-11)
    assert g.asymptotics.side == "above" and s.asymptotics.side == "below"
    # the repelling K* = 0 solution is listed after the physical one
    assert g.solutions[-1].K_star == 0.0 and g.solutions[-1].stability == "repels"


USER = [
    ("tanh", np.tanh),
    ("erf", special.erf),
    ("sin", np.sin),
    ("gelu", _gelu),
    ("swish", _swish),
    ("relu", lambda z: np.maximum(z, 0.0)),
    ("leaky_relu(0.2)", lambda z: np.where(z > 0, z, 0.2 * z)),
    ("linear", lambda z: 1.0 * z),
    ("elu", lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0.0)))),
    ("sigmoid", special.expit),
    ("softplus", lambda z: np.logaddexp(0.0, z)),
]


@pytest.mark.parametrize("name, fn", USER)
def test_user_callable_matches_named(name, fn):
    a, b = C.criticality(name), C.criticality(fn)
    assert a.universality_class == b.universality_class
    for key in ("C_b", "C_W", "K_star"):
        va, vb = getattr(a, key), getattr(b, key)
        if va is None:
            assert vb is None
        else:
            assert vb == pytest.approx(va, rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("name", ["tanh", "gelu", "swish", "sigmoid", "softplus", "erf"])
def test_chis_against_finite_differences_of_the_map(name):
    C_b, C_W = 0.3, 1.7
    for K in (0.2, 1.0, 4.0):
        h = 1e-3 * K
        f = lambda k: C.kernel_map(name, k, C_b, C_W)  # noqa: E731
        # 4th-order central difference: truncation ~ h^4 f^(5), rounding ~ eps K / h
        fd = (-f(K + 2 * h) + 8 * f(K + h) - 8 * f(K - h) + f(K - 2 * h)) / (12 * h)
        assert C.chi_parallel(name, K, C_W) == pytest.approx(fd, rel=1e-9)
        # chi_perp: d<sigma(z_a) sigma(z_b)>/dK_ab at coinciding inputs = <sigma'^2>
        act = pdlt.activation(name)
        e = pdlt.gaussian.pair_expectations(
            act, np.array([[K, K - h], [K - h, K]]), (("sigma", "sigma"),))[("sigma", "sigma")]
        e2 = pdlt.gaussian.pair_expectations(
            act, np.array([[K, K - 2 * h], [K - 2 * h, K]]), (("sigma", "sigma"),))[("sigma", "sigma")]
        # one-sided 2nd-order difference in K12 at K12 = K
        d = (3 * C.kernel_map(name, K, 0, 1) - 4 * e[0, 1] - (-e2[0, 1])) / (2 * h)
        assert C.chi_perp(name, K, C_W) == pytest.approx(C_W * d, rel=2e-5)


def test_chi_parallel_identity_used_by_the_solver():
    # C_W <sigma'^2 + sigma sigma''> == C_W <sigma^2 (z^2 - K)>/(2K^2)
    for name in ("tanh", "gelu", "swish", "sin"):
        act = pdlt.activation(name)
        for K in (0.1, 2.0, 30.0):
            S, Z2, _ = moments(act, np.array(K))
            assert (Z2 - S) / (2 * K) == pytest.approx(C.chi_parallel(name, K), rel=1e-12)


# --- asymptotics against the flow to depth >= 1000 -------------------------

def _flow(name, res, K1, depth):
    mlp = pdlt.MLP(n0=1, width=1, depth=depth, activation=name, C_b=res.C_b, C_W=res.C_W)
    return pdlt.flow(mlp, K1=K1)


@pytest.mark.parametrize("name, a", [("tanh", 2.0), ("erf", 2.0), ("sin", 1.0)])
def test_K_star_zero_power_law(name, a):
    res = C.criticality(name)
    asym = res.asymptotics
    assert asym.exponent == -1 and asym.amplitude == pytest.approx(1 / a, rel=1e-12)
    co = asym.coefficients
    A, B = co["A"], co["B"]
    c = B / A ** 2
    f = _flow(name, res, 1.0, 2000)
    K = f.K
    l = np.arange(1, len(K) + 1)
    y = -A * K
    # local law: 1/y_{l+1} - 1/y_l = 1 + (1 - c) y_l + O(y^2); the O(y^2)
    # bound 2 (1 + |c|)^2 y^2 is the size of the neglected next term
    inc = 1 / y[1:] - 1 / y[:-1]
    sel = slice(99, None)
    resid = inc[sel] - 1 - (1 - c) * y[:-1][sel]
    assert np.all(np.abs(resid) <= 2 * (1 + abs(c)) ** 2 * y[:-1][sel] ** 2)
    # global law: l K^(l) -> 1/a, with |1/(l y) - 1| <= (|1-c|(log l + 1) + |1/y_100 - 100| + 1)/l
    for L in (1000, 2000):
        bound = (abs(1 - c) * (math.log(L) + 1) + abs(1 / y[99] - 100) + 1) / L
        assert abs(1 / (L * y[L - 1]) - 1) <= bound
        assert abs(L * K[L - 1] * a - 1) < 0.01
    # susceptibilities: l (1 - chi) -> p, corrections O(log l / l)
    for chi, p in ((f.chi_parallel, asym.p_parallel), (f.chi_perp, asym.p_perp)):
        assert abs(2000 * (1 - chi[-1]) - p) < 4 * (1 + abs(c)) * math.log(2000) / 2000 * p + 1e-3


def test_taylor_coefficients_of_K_star_zero_class():
    # tanh: sigma_1 = 1, sigma_3 = -2 -> a1 = -2, b1 = sigma_3/sigma_1 = -2, p_perp = 1
    co = C.criticality("tanh").asymptotics.coefficients
    assert co["a1"] == -2.0 and co["b1"] == -2.0
    assert co["a2"] == pytest.approx(17 / 3, rel=1e-6)  # 15 (sigma_5/60 + sigma_3^2/36), sigma_5 = 16


def test_elu_kink_law():
    # ELU: <sigma^2> = K - sqrt(2/pi) K^(3/2) + ..., so K^(l) ~ 4/(a^2 l^2) = 2 pi / l^2
    res = C.criticality("elu")
    asym = res.asymptotics
    assert asym.exponent == -2
    assert asym.amplitude == pytest.approx(2 * math.pi, rel=1e-9)
    co = asym.coefficients
    ah, A = co["a_half"], co["A"]
    f = _flow("elu", res, 1.0, 1500)
    K = f.K
    t = K ** -0.5
    # 1/sqrt(K) grows by -a/2 + (3a^2/8 - A/2) sqrt(K) + O(K) per layer
    inc = t[1:] - t[:-1]
    pred = -ah / 2 + (3 * ah ** 2 / 8 - A / 2) * np.sqrt(K[:-1])
    assert np.all(np.abs(inc - pred)[99:] <= 4 * (1 + abs(ah) + abs(A)) ** 2 * K[:-1][99:])
    assert 1500 ** 2 * K[-1] / asym.amplitude == pytest.approx(1, abs=0.01)
    l = 1500
    assert l * (1 - f.chi_parallel[-1]) == pytest.approx(3, abs=0.02)
    assert l * (1 - f.chi_perp[-1]) == pytest.approx(2, abs=0.02)


@pytest.mark.parametrize("name", ["gelu", "swish"])
def test_half_stable_law(name):
    res = C.criticality(name)
    asym = res.asymptotics
    co = asym.coefficients
    A, B = co["A"], co["B"]
    c = B / A ** 2
    # start on the attracting side, inside the quadratic regime |Delta| << |A/B|
    sgn = 1.0 if asym.side == "above" else -1.0
    K1 = res.K_star + sgn * 0.01 * abs(A / B)
    f = _flow(name, res, K1, 1200)
    D = f.K - res.K_star
    assert np.all(np.sign(D) == sgn) and np.all(np.diff(np.abs(D)) < 0)
    y = -A * D
    # block increments of 1/y over 100 layers: 1 + (1 - c) <y> + O((c y)^2)
    for l0 in (100, 600, 1099):
        blk = (1 / y[l0 + 100] - 1 / y[l0]) / 100
        ybar = y[l0:l0 + 100].mean()
        assert abs(blk - 1 - (1 - c) * ybar) <= 2 * (1 + abs(c)) ** 2 * ybar ** 2 + 1e-6
    # from the other side the flow moves away from K*
    g = _flow(name, res, res.K_star - sgn * 0.01 * abs(A / B), 1000)
    assert np.all(np.diff(np.abs(g.K - res.K_star)) > 0)


def test_scale_invariant_every_K_fixed():
    for name in ("relu", "leaky_relu(0.3)", "linear"):
        res = C.criticality(name)
        for K1 in (0.1, 1.0, 7.0):
            K = _flow(name, res, K1, 1000).K
            assert np.max(np.abs(K - K1)) <= 1e3 * EPS * K1


# --- errors --------------------------------------------------------------

def test_bad_activations():
    with pytest.raises(ActivationError, match="callable"):
        C.criticality(42)
    with pytest.raises(ActivationError, match="non-finite"):
        C.criticality(lambda z: np.where(z > 1, np.nan, z))
    with pytest.raises(ActivationError, match="non-finite"):
        C.criticality(lambda z: np.exp(z ** 2 / 4))
    with pytest.raises(ActivationError, match="non-finite"):
        C.criticality(lambda z: np.where(np.abs(z) > 9, np.inf, np.tanh(z)))
    with pytest.raises(ValueError, match="C_W"):
        C.chi_perp("tanh", 1.0, C_W=-1)
    with pytest.raises(ValueError, match="K"):
        C.kernel_map("tanh", -1.0, 0, 1)
