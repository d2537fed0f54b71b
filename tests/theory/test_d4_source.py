"""The fourth-derivative source of G1 and H1 for a pair of distinct inputs (issue #15).

``LayerAverages.d4_source`` forms ``(1/8) sum V <d^4 (f_a f_b)>`` (f = sigma for G1,
sigma' for H1). Smooth activations and the ReLU family (in closed form) take the Stein
form (``<f^(k)_a f^(4-k)_b>`` by Stein's lemma along the rows of K, no ``K^{-1}``);
other kinked ones (elu) the Hermite form (pair moments contracted with ``K^{-1}`` four
times, relative loss ~(1 - rho^2)^-2) or the coinciding limit, whichever has the
smaller error estimate; ``pdlt.statistics`` carries
the estimates into ``integration_error`` and warns above 1e-8 of an entry's scale.

References, independent of the library's formulation:

* smooth: ``<f^(k)(z_a) f^(4-k)(z_b)>`` by a direct 2-D trapezoid rule (h = 0.08 on
  [-11, 11]^2: exponentially convergent for these analytic integrands, ~1e-14; h = 0.05
  agrees, see benchmarks/d4_source_accuracy.py) of the exact derivatives (sympy);
* ReLU family: the Hermite form in 32-digit arithmetic (mpmath) on exact angular moments.

Each comparison is shown able to fail: the former Hermite-only path (forced here) is
rejected by the same tolerance.
"""

import functools
import itertools
import warnings

import numpy as np
import pytest

import pdlt
from pdlt.theory import _averages
from pdlt.theory._averages import (LayerAverages, OneVariableTable, _hermite_patterns,
                                   third_derivative)

sp = pytest.importorskip("sympy")
_Z = sp.Symbol("z")
_EXPR = {"tanh": sp.tanh(_Z), "swish": _Z / (1 + sp.exp(-_Z)),
         "gelu": _Z * (1 + sp.erf(_Z / sp.sqrt(2))) / 2}
KAA, KBB = 1.1, 0.9


@functools.lru_cache(None)
def _deriv(name, n):
    return sp.lambdify(_Z, sp.diff(_EXPR[name], _Z, n), ["scipy", "numpy"])


def _direct(name, Kaa, Kbb, Kab, of, h=0.08, L=11.0):
    """``<f^(k)(z_a) f^(4-k)(z_b)>``, k = 0..4, by the direct 2-D trapezoid rule."""
    o = 0 if of == "s" else 1
    x = np.arange(-L, L + h / 2, h)
    w = h * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
    X, Y = np.meshgrid(x, x, indexing="ij")
    Wt = np.outer(w, w)
    za = np.sqrt(Kaa) * X
    zb = Kab / np.sqrt(Kaa) * X + np.sqrt(max(Kbb - Kab ** 2 / Kaa, 0.0)) * Y
    return np.array([np.sum(Wt * _deriv(name, o + k)(za) * _deriv(name, o + 4 - k)(zb))
                     for k in range(5)])


def _avg(act, K):
    return LayerAverages(act, K, OneVariableTable(act, np.diag(K).copy()).at(slice(None)))


def _kernel(om):
    Kab = (1 - om) * np.sqrt(KAA * KBB)
    return np.array([[KAA, Kab], [Kab, KBB]])


@pytest.mark.parametrize("name", ["tanh", "swish", "gelu"])
def test_stein_terms_match_direct_quadrature(name):
    # every <f^(k)_a f^(4-k)_b> of sigma and sigma' within its own estimate, and the
    # estimate within 1e-11 of the scale, at 1 - rho = 1e-1 .. 1e-5 (measured: <= 8e-14
    # actual, 1e-12 estimated); the Hermite form fails the same check from 1e-3 on
    act = pdlt.activation(name)
    for om in (1e-1, 1e-3, 1e-5):
        K = _kernel(om)
        avg = _avg(act, K)
        for of in "sp":
            T, dT = avg._stein_terms(of)
            ref = _direct(name, KAA, KBB, K[0, 1], of)
            scale = np.max(np.abs(ref))
            err = np.abs(T[:, 0, 1] - ref)
            assert np.all(err <= dT[:, 0, 1]), (om, of, err, dT[:, 0, 1])
            assert np.max(dT[:, 0, 1]) <= 1e-11 * scale, (om, of)
            if om <= 1e-3:
                mm = {k: np.array([v[0, 1]]) for k, v in avg._pair_moments(of).items()}
                det = np.array([KAA * KBB - K[0, 1] ** 2])
                Th, _ = _hermite_patterns(np.array([KAA]), np.array([KBB]), np.array([K[0, 1]]),
                                          det, mm, np.array([1e-13]))
                assert np.max(np.abs(Th[:, 0] - ref)) > 1e-4 * scale


def test_third_derivatives():
    # closed forms of the named smooth activations against central differences of d2
    # (Richardson, ~1e-10 here); the difference fallback of a user activation; kinked: None
    z = np.linspace(-6, 6, 241)
    for name in ("tanh", "sigmoid", "softplus", "swish", "gelu", "erf", "sin"):
        act = pdlt.activation(name)
        h = 1e-3
        fd = (act.d2(z - 2 * h) - 8 * act.d2(z - h) + 8 * act.d2(z + h)
              - act.d2(z + 2 * h)) / (12 * h)
        assert np.max(np.abs(third_derivative(act)(z) - fd)) < 1e-9, name
    assert np.allclose(third_derivative(pdlt.activation("monomial", p=3))(z), 6.0)
    user = pdlt.Activation.from_callable(np.tanh, d1=lambda z: 1 - np.tanh(z) ** 2,
                                         d2=lambda z: -2 * np.tanh(z) * (1 - np.tanh(z) ** 2),
                                         name="mytanh")
    t3 = third_derivative(pdlt.activation("tanh"))(z)
    assert np.max(np.abs(third_derivative(user)(z) - t3)) < 1e-9
    assert third_derivative(pdlt.activation("relu")) is None
    assert third_derivative(pdlt.activation("elu")) is None


def _fold(act, eps, monkeypatch=None, force_hermite=False, reference=False, get=("G1",)):
    """The brief's reproduction: swish-like MLP at criticality, x1 = x0 + eps noise."""
    rng = np.random.default_rng(0)
    c = pdlt.criticality(act)
    m = pdlt.MLP(n0=3, width=32, depth=6, activation=act, C_b=c.C_b, C_W=c.C_W)
    x = rng.normal(size=(2, 3))
    x[1] = x[0] + eps * x[1]
    if force_hermite:
        monkeypatch.setattr(LayerAverages, "_stein_applies", lambda self, of: False)
    if reference:
        def ref_terms(self, of):
            T = np.zeros((5, 2, 2))
            t = _direct(act, self.diag[0], self.diag[1], self.K[0, 1], of)
            T[:, 0, 1], T[:, 1, 0] = t, t[::-1]
            return T, np.zeros_like(T)
        monkeypatch.setattr(LayerAverages, "_stein_terms", ref_terms)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = pdlt.statistics(m, x, get=list(get))
    return s, [str(i.message) for i in w if "estimated error" in str(i.message)]


def _rel(X):
    """|X_01| error scale: the largest entry of the 2x2 block (the diagonal sets it)."""
    return np.max(np.abs(X), axis=(1, 2))


def test_nearly_coinciding_swish_g1_matches_reference(monkeypatch):
    # issue #15's reproduction (1 - rho = 3e-4 .. 6e-5): G1 and H1 within 1e-8 of their
    # scale of the fold whose sources come from direct quadrature, with no warning;
    # main's Hermite form (forced) misses by O(1) and now warns
    new, wn = _fold("swish", 0.05, get=("G1", "H1"))
    with monkeypatch.context() as mp:
        ref, _ = _fold("swish", 0.05, mp, reference=True, get=("G1", "H1"))
    with monkeypatch.context() as mp:
        old, wo = _fold("swish", 0.05, mp, force_hermite=True, get=("G1", "H1"))
    assert not wn
    for k in ("G1", "H1"):
        scale = _rel(ref[k])[2:]
        assert np.all(np.abs(new[k] - ref[k])[2:, 0, 1] <= 1e-8 * scale), k
        assert np.max(np.abs(old[k] - ref[k])[2:, 0, 1] / scale) > 1e-2, k
    assert wo and "1 - rho" in wo[0] and "inputs 0 and 1" in wo[0]
    assert np.max(old.integration_error) > 1e-3


def _mp_relu_source(K, V, of, si=(1.0, 0.0)):
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 32
    deg = 1 if of == "s" else 0
    Kaa, Kbb, Kab = (mp.mpf(float(v)) for v in (K[0, 0], K[1, 1], K[0, 1]))
    sa, sb = mp.sqrt(Kaa), mp.sqrt(Kbb)
    phi = mp.acos(Kab / (sa * sb))
    cp, cm = mp.mpf(si[0]), mp.mpf(si[1])
    tail = phi + 3 * mp.pi / 2                  # kinks of both factors on [0, 2 pi]
    cuts = sorted({mp.mpf(0), mp.pi / 2, 3 * mp.pi / 2, 2 * mp.pi, phi + mp.pi / 2,
                   tail - 2 * mp.pi if tail > 2 * mp.pi else tail})

    def g(u, k):
        return (cp if u > 0 else cm) * u ** k
    mm = {}
    for i, j in itertools.product(range(5), repeat=2):
        if i + j in (0, 2, 4):
            m, n = i + deg, j + deg
            ang = mp.quad(lambda a: g(mp.cos(a), m) * g(mp.cos(a - phi), n), cuts) / (2 * mp.pi)
            mm[(i, j)] = (2 ** (mp.mpf(m + n) / 2) * mp.gamma(1 + mp.mpf(m + n) / 2)
                          * sa ** m * sb ** n * ang)
    det = Kaa * Kbb - Kab ** 2
    Lam = [[Kbb / det, -Kab / det], [-Kab / det, Kaa / det]]

    def ey(idx):
        tot = mp.mpf(0)
        for c in itertools.product((0, 1), repeat=len(idx)):
            coef = mp.mpf(1)
            for b, cc in zip(idx, c):
                coef *= Lam[b][cc]
            tot += coef * mm[(c.count(0), len(idx) - c.count(0))]
        return tot
    W = (V + np.swapaxes(V, 1, 2) + np.swapaxes(V, 1, 3)) / 3.0
    pairs = (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2)))
    tot = mp.mpf(0)
    for b in itertools.product((0, 1), repeat=4):
        t = ey(b)
        for p1, p2 in pairs:
            l1, l2 = Lam[b[p1[0]]][b[p1[1]]], Lam[b[p2[0]]][b[p2[1]]]
            t += (l1 * l2 * mm[(0, 0)] - ey((b[p1[0]], b[p1[1]])) * l2
                  - ey((b[p2[0]], b[p2[1]])) * l1)
        tot += mp.mpf(float(W[b])) * t
    return float(tot / 8)


@pytest.mark.parametrize("name,omegas", [("relu", (1e-1, 1e-3, 1e-5)),
                                          ("leaky_relu(0.2)", (1e-4,))])
def test_relu_family_source_matches_40_digits(name, omegas, monkeypatch):
    # the ReLU family's closed-form Stein terms (distributional sigma'' = C delta):
    # within their estimate of the Hermite form in 40 digits, the estimate within 1e-9
    # of the scale at 1 - rho = 1e-1 .. 1e-5 (measured: errors <= 2e-12, estimates
    # 1e-13 .. 5.4e-10, growing like eps / (1 - rho^2)); the float64 Hermite form
    # (main's; forced) fails the same check at 1e-3 (3e-4 measured) and is flagged
    act = pdlt.activation(name)
    V = 1.0 + 0.1 * np.cos(np.arange(16.0)).reshape(2, 2, 2, 2)
    V = V + V.transpose(1, 0, 2, 3)
    V = V + V.transpose(0, 1, 3, 2)
    V = V + V.transpose(2, 3, 0, 1)
    for om in omegas:
        K = _kernel(om)
        avg = _avg(act, K)
        for of in "sp":
            Q = avg.d4_source(V, of)
            ref = _mp_relu_source(K, V, of, act.scale_invariant)
            est, scale = avg.d4_error[of][0, 1], max(abs(ref), abs(Q[0, 0]), abs(Q[1, 1]))
            assert avg.d4_method[of][0, 1] == "stein"
            assert abs(Q[0, 1] - ref) <= est <= 1e-9 * scale, (om, of)
    if name != "relu":
        return
    with monkeypatch.context() as mp:
        mp.setattr(LayerAverages, "_stein_applies", lambda self, of: False)
        K = _kernel(1e-3)
        avg = _avg(act, K)
        Q = avg.d4_source(V, "s")
        ref = _mp_relu_source(K, V, "s", act.scale_invariant)
        assert abs(Q[0, 1] - ref) > 1e-5 * abs(ref)
        assert abs(Q[0, 1] - ref) <= avg.d4_error["s"][0, 1]


def test_relu_reproduction_and_kinked_warning(monkeypatch):
    # the issue's reproduction with relu (1 - rho = 5e-4): G1's off-diagonal is a source
    # of ~1e-7 left after cancelling O(1) terms, so even exact T_k leave ~1e-8 of it
    # (the estimate, 1.5e-6, flags it); main's Hermite form (forced) is off by O(1)
    # relative (~1e-2 absolute: 40-digit check in benchmarks/README.md) and its
    # estimate says so. elu (kinked, no closed form) now takes the Stein form with its
    # kinks' delta functions (test_d4_source_elu.py) and is silent; forced onto the
    # Hermite form it warns at 1 - rho ~ 1e-3, naming the pair
    s, w = _fold("relu", 0.05)
    with monkeypatch.context() as mp:
        old, wo = _fold("relu", 0.05, mp, force_hermite=True)
    assert wo and "inputs 0 and 1" in wo[0] and "1 - rho = 5." in wo[0]
    err_new, err_old = np.max(s.integration_error), np.max(old.integration_error)
    assert err_new < 1e-10 and err_old > 1e-4
    assert np.max(np.abs(old.G1 - s.G1)) > 1e3 * err_new
    assert np.max(np.abs(old.G1 - s.G1)) <= err_old
    e, we = _fold("elu", 0.02)
    assert not we
    with monkeypatch.context() as mp:
        eh, we = _fold("elu", 0.02, mp, force_hermite=True)
    assert we and "inputs 0 and 1" in we[0] and "1 - rho" in we[0]
    assert np.max(eh.integration_error) > 1e-8 * np.max(np.abs(eh.G1))


def test_linear_source_is_exactly_zero():
    act = pdlt.activation("linear")
    avg = _avg(act, _kernel(1e-6))
    Q = avg.d4_source(np.ones((2, 2, 2, 2)), "s")
    assert not np.any(Q) and not np.any(avg.d4_error["s"])
