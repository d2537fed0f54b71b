"""Two nearly collinear inputs (``pdlt.gaussian._collinear``): the fast case equals the general path.

Reference: ``pair_expectations(..., method="quadrature")`` (nested quadrature,
error below 1e-13 relative, ``pdlt.gaussian._nested``), and the general
``method="series"`` path (Mehler series, else nested quadrature) that
``"auto"`` took before. Both promise an absolute error at most
``rtol * S_ab``, ``S_ab = sqrt(<f_a^2> <g_b^2>)``; the fast case is asserted
at 1e-13 of ``S_ab`` (ten times below the contract's default rtol = 1e-12).
A check that could fail: the same comparison rejects the inner average
dropped (the conditional mean only, an error ``s^2/2 <f g''>``) and a kernel
with twice the conditional variance.
"""

import math

import numpy as np
import pytest

import pdlt
from pdlt import gaussian as G
from pdlt.gaussian import _collinear, _pairs
from pdlt.theory._averages import Integrands

TOL = 1e-13
TERMS = (("sigma", "sigma"), ("d1", "d1"), ("sigma", "d1"), ("d2", "sigma"))


def _user(exact):
    """A user's activation, with exact derivatives or finite differences."""
    def f(z):
        return np.tanh(z) + 0.1 * z
    if not exact:
        return pdlt.activation(f)

    def d1(z):
        return 1.1 - np.tanh(z) ** 2

    def d2(z):
        t = np.tanh(z)
        return -2.0 * t * (1.0 - t * t)
    return pdlt.Activation.from_callable(f, d1, d2, name="mine")


ACTS = ["tanh", "swish", "gelu", "softplus", "sigmoid", "erf"]


def _kernel(Kaa, Kbb, s, sign=1.0):
    """2x2 kernel with variances Kaa, Kbb and conditional spread s of z_b given z_a."""
    Kab = sign * math.sqrt(Kaa * (Kbb - s * s))
    return np.array([[Kaa, Kab], [Kab, Kbb]])


CASES = [(1.0, 1.0, 1e-2), (12.5, 12.5, 3e-3), (12.5, 12.5, 1e-6), (0.3, 2.0, 1e-4),
         (4.0, 0.05, 1e-3), (100.0, 90.0, 5e-3)]


def _scale(act, K, fa, fb):
    ea = G.expect(lambda z: getattr(act, fa)(z) ** 2, np.diag(K))
    eb = G.expect(lambda z: getattr(act, fb)(z) ** 2, np.diag(K))
    return np.sqrt(np.outer(ea, eb))


def _worst(act, K, got, ref, terms=TERMS):
    return max(float(np.max(np.abs(got[t] - ref[t]) / _scale(act, K, *t))) for t in terms)


@pytest.mark.parametrize("name", ACTS + ["user", "user-fd"])
def test_equals_nested_quadrature(name):
    act = _user(name == "user") if name.startswith("user") else pdlt.activation(name)
    # finite-difference derivatives carry their own ~1e-11 (sigma') and 1e-9 (sigma'')
    # pointwise error, which two rules sample differently: sigma itself only
    terms = TERMS[:1] if name == "user-fd" else TERMS
    worst = 0.0
    for Kaa, Kbb, s in CASES:
        for sign in (1.0, -1.0):
            K = _kernel(Kaa, Kbb, s, sign)
            _, diag, _, _ = _pairs._validate_kernel(K)
            got = _collinear.collinear_pairs(act, K, diag, terms, 1e-12)
            assert got is not None
            ref = G.pair_expectations(act, K, terms, method="quadrature")
            worst = max(worst, _worst(act, K, got, ref, terms))
    assert worst <= TOL, worst


def test_derived_integrands_and_the_general_series_path():
    # the order-1/n averages ask for z sigma'(z), sigma'' ...; "auto" (fast) vs "series"
    act = pdlt.activation("swish")
    fns = Integrands(act, s=act.sigma, p=act.d1, zp=lambda z: z * act.d1(z), q=act.d2)
    terms = (("zp", "s"), ("q", "q"), ("q", "s"), ("p", "p"))
    for Kaa, Kbb, s in CASES:
        K = _kernel(Kaa, Kbb, s)
        fast = G.pair_expectations(fns, K, terms, rtol=1e-13)
        series = G.pair_expectations(fns, K, terms, rtol=1e-13, method="series")
        quad = G.pair_expectations(fns, K, terms, method="quadrature")
        assert _worst(fns, K, fast, quad, terms) <= TOL
        # the general path itself within its own contract (rtol 1e-13) of the reference
        assert _worst(fns, K, series, quad, terms) <= 2e-13
        for t in terms:       # the diagonal is the general path's, to the bit
            assert np.array_equal(np.diag(fast[t]), np.diag(series[t]))


def test_the_comparison_rejects_wrong_values():
    act = pdlt.activation("swish")
    K = _kernel(12.5, 12.5, 5e-3)
    _, diag, _, _ = _pairs._validate_kernel(K)
    ref = G.pair_expectations(act, K, TERMS, method="quadrature")
    # no inner average (z_b at its conditional mean): off by s^2/2 <f g''> ~ 1e-6
    u, w = G._fixed_rule()
    sd = math.sqrt(K[0, 0])
    no_inner = {t: ref[t].copy() for t in TERMS}
    for fa, fb in TERMS:
        no_inner[(fa, fb)][0, 1] = (getattr(act, fa)(sd * u)
                                    * getattr(act, fb)(K[0, 1] / sd * u)) @ w
    assert _worst(act, K, no_inner, ref) > 1e3 * TOL
    # twice the conditional variance
    K2 = _kernel(12.5, 12.5, math.sqrt(2) * 5e-3)
    wrong = _collinear.collinear_pairs(act, K2, diag, TERMS, 1e-12)
    assert _worst(act, K, wrong, ref) > 1e3 * TOL


def test_coincident_inputs_give_the_diagonal():
    act = pdlt.activation("swish")
    K = np.full((2, 2), 10.885)
    e = G.pair_expectations(act, K, TERMS[:2])
    for t in TERMS[:2]:
        assert e[t][0, 1] == e[t][1, 0] == e[t][0, 0] == e[t][1, 1]
    # K_ab above sqrt(K_aa K_bb) by round-off (the PSD check allows 64 eps): clipped
    K[0, 1] = K[1, 0] = 10.885 * (1 + 8 * np.finfo(float).eps)
    e2 = G.pair_expectations(act, K, TERMS[:2])
    for t in TERMS[:2]:
        assert np.array_equal(e2[t], e[t])
    # unequal variances, coincident: z_b = sqrt(K_bb / K_aa) z_a exactly
    K = np.array([[2.0, math.sqrt(2.0 * 3.0)], [math.sqrt(2.0 * 3.0), 3.0]])
    _, diag, _, _ = _pairs._validate_kernel(K)
    got = _collinear.collinear_pairs(act, K, diag, TERMS, 1e-12)
    ref = G.pair_expectations(act, K, TERMS, method="quadrature")
    assert _worst(act, K, got, ref) <= TOL


def test_applies_only_where_valid():
    swish = pdlt.activation("swish")
    K = _kernel(1.0, 1.0, 1e-3)
    diag = np.diag(K).copy()
    assert _collinear.collinear_pairs(swish, _kernel(1.0, 1.0, 2e-2), diag, TERMS, 1e-12) is None
    for name in ("relu", "elu", "sin"):      # kinks, or a period
        assert _collinear.collinear_pairs(pdlt.activation(name), K, diag, TERMS, 1e-12) is None
    # an rtol the fixed rule (error < 1e-14) could not guarantee: the general path
    assert _collinear.collinear_pairs(swish, K, diag, TERMS, 1e-14) is None
    assert _collinear.collinear_pairs(swish, K, diag, TERMS, 1e-13) is not None
    big = _kernel(2.0 ** 17, 2.0 ** 17, 1e-3)
    assert _collinear.collinear_pairs(swish, big, np.diag(big).copy(), TERMS, 1e-12) is None
    # N = 2 only, and only for method="auto": "series" is the general path itself
    calls = []
    orig = _pairs.collinear_pairs
    try:
        _pairs.collinear_pairs = lambda *a: calls.append(1) or orig(*a)
        G.pair_expectations(swish, K, TERMS[:2], method="series")
        G.pair_expectations(swish, np.kron(np.eye(2), K) + 0.0, TERMS[:2])
        assert not calls
        G.pair_expectations(swish, K, TERMS[:2])
        assert calls
    finally:
        _pairs.collinear_pairs = orig


def test_gauss_hermite_order():
    # n! s^(2n) <= 1e-3 rtol: two nodes for s <= 1e-4 at rtol 1e-12, more for wider spreads
    assert _collinear._nodes(0.0, 1e-12) == 2
    assert _collinear._nodes(1e-4, 1e-12) == 2
    assert _collinear._nodes(1e-2, 1e-12) == 5
    for s in (1e-5, 1e-3, 1e-2):
        n = _collinear._nodes(s, 1e-13)
        assert math.factorial(n) * s ** (2 * n) <= 1e-16


def test_two_input_kernel_fold_equals_the_reference(monkeypatch):
    """Two-input kernel flow (swish, critical) that is collinear from the first layer.

    Inputs at an angle of 5e-3: s ~ 5e-3 at layer 1, 1 - rho ~ 1e-7 after 100
    layers, every layer on the fast case. Reference: every pair by nested
    quadrature (``method="quadrature"``, below 1e-13 per expectation), which the
    general path would also take for most of these layers (the series stalls).
    Each layer's pair averages carry at most ~1e-13 of their scale from either
    side; K and Theta accumulate it with gains <= 1 (critical): asserted
    ``L x 1e-13`` relative, and the same check rejects the fast case with its
    inner average dropped (a one-node rule: the conditional mean only).
    """
    from pdlt.network import MLP
    from pdlt.theory import kernel as kernel_mod

    L = 100
    c = pdlt.criticality("swish")
    ref = MLP(n0=2, width=100, depth=L, n_out=1, activation="swish", C_b=c.C_b, C_W=c.C_W)
    th = 5e-3
    x = math.sqrt(2 * (1.0 - c.C_b) / c.C_W) * np.array([[1.0, 0.0],
                                                          [math.cos(th), math.sin(th)]])
    K0, T0 = kernel_mod.first_layer(ref, x)

    def fold():
        K, T, _, _ = kernel_mod.kernel_fold(ref, K0, T0, susceptibilities=False)
        return K, T

    def rel(a, b):
        return max(float(np.max(np.abs(a[0] - b[0]) / np.abs(b[0]))),
                   float(np.max(np.abs(a[1] - b[1]) / np.abs(b[1]))))

    calls = []
    with monkeypatch.context() as m:
        orig = _pairs.collinear_pairs
        m.setattr(_pairs, "collinear_pairs", lambda *a: calls.append(1) or orig(*a))
        fast = fold()
    assert len(calls) == L - 1                       # every layer on the fast case
    with monkeypatch.context() as m:
        pe = G.pair_expectations
        m.setattr(kernel_mod.gaussian, "pair_expectations",
                  lambda act, K, terms, rtol: pe(act, K, terms, method="quadrature"))
        quad = fold()
    assert 1 - quad[0][-1, 0, 1] / quad[0][-1, 0, 0] < 1e-6
    assert rel(fast, quad) <= L * 1e-13
    with monkeypatch.context() as m:
        m.setattr(_collinear, "_nodes", lambda s, rtol: 1)
        midpoint = fold()
    assert rel(midpoint, quad) > 1e3 * L * 1e-13
