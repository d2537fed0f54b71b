"""Residual ddNTK statistics R, S, T, U (pdlt.theory.residual_ntk): exact references.

* gamma = 0 (unequal widths): the history recursions are the book's plain steps
  (pdlt.theory.ddntk via pdlt.statistics of the same plain MLP): 1e-12.
* Layer 2 (layer 1 Gaussian, its NTK deterministic, its Hessian zero): closed forms
  U = xi^4 C_W^2 Th^3 <q^2 p^2> and
  S = xi^4 C_W^2 Th^3 <q^2 p^2> + xi^2 g^2 C_W Th^3 <q^2> + lambda_W xi^2 Th^2
  (xi^2 C_W <p^4> + g^2 <p^2>), T = xi^4 Th (C_W^2 Th^2 <q^2 p^2> + 2 lambda_W C_W Th
  <q s p^2> + lambda_W^2 <s^2 p^2>), R = xi^4 C_W Th^2 <g p^2> + xi^2 g^2 Th^2 <g> with
  g = C_W Th t + lambda_W q s, t = sigma''' sigma', exact at any width (q = sigma'',
  p = sigma'; sigma''' here by central differences of sigma'', independent of the code's
  Stein form).
* sigma'' = 0 pointwise (ReLU, linear): U = 0 at every layer; S keeps its lambda_W
  terms, R = 0. Linear networks: every two-depth average factorizes (p = 1), so the
  closure is exact.
* The two-depth terms: tanh's closure drops U's NTK-dNTK correlation entirely
  (<sigma'' sigma'> = 0 for odd sigma); the history value is larger by ~15 % at
  layer 4, gamma = 0.7 (ensembles: tests/experiment/test_residual_ntk_ensemble.py).
"""

import numpy as np
import pytest

import pdlt
from pdlt.gaussian import expect
from pdlt.theory.residual import residual_mlp
from pdlt.theory.residual_ntk import (residual_ddntk_r, residual_ddntk_s, residual_ddntk_t,
                                     residual_ddntk_u)

FUNCS = {"R": residual_ddntk_r, "S": residual_ddntk_s, "T": residual_ddntk_t,
         "U": residual_ddntk_u}


@pytest.mark.parametrize("stat", ["R", "S", "T", "U"])
@pytest.mark.parametrize("act", ["tanh", "gelu", "sin", "relu", "linear"])
def test_gamma_zero_is_the_plain_recursion(stat, act):
    m = pdlt.MLP(n0=1, widths=(12, 16, 16, 9, 9), activation=act, C_W=1.3, C_b=0.1,
                 lambda_b=0.5, lambda_W=0.8)
    want = np.ravel(pdlt.statistics(m, K1=0.9, get=(stat,))[stat])
    got = FUNCS[stat](m, 0.9)
    assert np.abs(want).max() > 0 or stat in "RU"
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("act", ["tanh", "gelu", "sin", "relu"])
def test_layer_two_closed_form(act):
    g, x, CW, Cb, K1, lW = 0.6, 0.9, 0.8, 0.2, 0.7, 1.1
    m = pdlt.MLP(n0=1, width=8, depth=3, n_out=8, activation=act, C_W=CW, C_b=Cb,
                 gamma=g, xi=x, lambda_b=0.3, lambda_W=lW)
    a = m.activation
    Th = float(pdlt.flow(m, K1=K1).Theta[0])
    kw = dict(kinks=a.kinks)
    q2p2 = float(expect(lambda z: (a.d2(z) * a.d1(z)) ** 2, K1, **kw))
    q2 = float(expect(lambda z: a.d2(z) ** 2, K1, **kw))
    p4 = float(expect(lambda z: a.d1(z) ** 4, K1, **kw))
    p2 = float(expect(lambda z: a.d1(z) ** 2, K1, **kw))
    qsp2 = float(expect(lambda z: a.d2(z) * a.sigma(z) * a.d1(z) ** 2, K1, **kw))
    s2p2 = float(expect(lambda z: (a.sigma(z) * a.d1(z)) ** 2, K1, **kw))
    u = x ** 4 * CW ** 2 * Th ** 3 * q2p2
    s = u + x * x * g * g * CW * Th ** 3 * q2 + lW * x * x * Th ** 2 * (x * x * CW * p4
                                                                      + g * g * p2)
    assert residual_ddntk_u(m, K1)[1] == pytest.approx(u, rel=1e-11, abs=1e-14)
    assert residual_ddntk_s(m, K1)[1] == pytest.approx(s, rel=1e-11)
    t = x ** 4 * Th * (CW ** 2 * Th ** 2 * q2p2 + 2 * lW * CW * Th * qsp2 + lW ** 2 * s2p2)
    assert residual_ddntk_t(m, K1)[1] == pytest.approx(t, rel=1e-11)
    h = 1e-4
    d3 = lambda z: (a.d2(z + h) - a.d2(z - h)) / (2 * h)      # noqa: E731  (O(h^2) = 1e-8)
    gfun = lambda z: CW * Th * d3(z) * a.d1(z) + lW * a.d2(z) * a.sigma(z)  # noqa: E731
    gp2 = float(expect(lambda z: gfun(z) * a.d1(z) ** 2, K1, **kw))
    gm = float(expect(gfun, K1, **kw))
    rr = x ** 4 * CW * Th ** 2 * gp2 + x * x * g * g * Th ** 2 * gm
    assert residual_ddntk_r(m, K1)[1] == pytest.approx(rr, rel=1e-7, abs=1e-12)


def test_no_curvature():
    """ReLU, linear: U = 0 at every layer; S > 0 from the lambda_W terms; linear: the
    closure is exact (sigma' = 1). Deep linear S by the same recursion with every
    average replaced by its value (p = 1, q = 0): beta's and s's features collapse."""
    for act in ("relu", "linear"):
        m = residual_mlp(act, 0.5, width=8, depth=6, n_out=8)
        assert np.all(residual_ddntk_u(m, 1.0) == 0.0)
        assert np.all(residual_ddntk_r(m, 1.0) == 0.0)
        assert np.all(residual_ddntk_s(m, 1.0)[1:] > 0.0)
    m = residual_mlp("linear", 0.6, width=8, depth=6, n_out=8, lambda_b=0.5)
    np.testing.assert_allclose(residual_ddntk_s(m, 1.0),
                               residual_ddntk_s(m, 1.0, closure=True), rtol=1e-12)
    # deep linear, by hand: p = 1, q = 0, n E[H_ab^2] = B for a != b (B from pdlt.statistics)
    st = pdlt.statistics(m, K1=1.0, get=("B",))
    Th, B = np.ravel(st.Theta), np.ravel(st.B)
    CW, g, lW = m.C_W[1], 0.6, 1.0
    S = 0.0
    for l in range(5):
        chi = CW + g * g
        S = (lW * (CW * (Th[l] ** 2 + B[l]) + g * g * (Th[l] ** 2 + B[l]))
             + chi * chi * S)
        assert residual_ddntk_s(m, 1.0)[l + 1] == pytest.approx(S, rel=1e-12)


def test_history_terms():
    """Layer 2 has no history; beyond, the two-depth averages move U for tanh (the closure
    drops the NTK-dNTK correlation since <sigma'' sigma'> = 0) and S for gelu."""
    m = residual_mlp("tanh", 0.7, width=16, depth=4, n_out=16, lambda_b=0.5)
    ex, cl = residual_ddntk_u(m, 1.0), residual_ddntk_u(m, 1.0, closure=True)
    assert ex[1] == pytest.approx(cl[1], rel=1e-12)
    assert ex[3] > 1.1 * cl[3] > 0
    ex, cl = residual_ddntk_t(m, 1.0), residual_ddntk_t(m, 1.0, closure=True)
    assert ex[1] == pytest.approx(cl[1], rel=1e-12)
    assert ex[3] > 1.1 * cl[3] > 0
    m = residual_mlp("gelu", 0.7, width=16, depth=4, n_out=16, lambda_b=0.5)
    ex, cl = residual_ddntk_s(m, 1.0), residual_ddntk_s(m, 1.0, closure=True)
    assert ex[1] == pytest.approx(cl[1], rel=1e-12)
    assert abs(ex[3] - cl[3]) > 0.01 * abs(ex[3])


def test_closure_is_exact_for_plain_mlps():
    """Preactivations at different depths of a plain MLP are independent: closure = history
    (1e-10: the pair quadrature's stated absolute error summed over layers)."""
    m = pdlt.MLP(n0=1, widths=(12, 16, 16, 9, 9), activation="gelu", C_W=1.3, C_b=0.1,
                 lambda_b=0.5, lambda_W=0.8)
    for f in FUNCS.values():
        np.testing.assert_allclose(f(m, 0.9, closure=True), f(m, 0.9), rtol=1e-10)


def test_served_by_statistics():
    m = residual_mlp("tanh", 0.5, width=16, depth=5, n_out=16)
    st = pdlt.statistics(m, K1=1.0, get=("R", "S", "T", "U", "B"))
    for k, f in FUNCS.items():
        np.testing.assert_array_equal(np.ravel(st[k]), f(m, 1.0))
    assert set("RSTU") <= set(pdlt.theory.statistics.defined(m))
    assert set("RSTU") <= set(pdlt.theory.statistics.defined(m, 2))    # N inputs too
    elu = residual_mlp("elu", 0.5, width=8, depth=3, n_out=8)      # sigma'' jumps at 0
    assert "R" not in pdlt.theory.statistics.defined(elu)
    with pytest.raises(ValueError, match="sigma'' that jumps"):
        residual_ddntk_r(elu, 1.0)
    with pytest.raises(ValueError, match="K1 must be"):
        residual_ddntk_s(m, 0.0)
    with pytest.raises(ValueError, match="K1 must be"):
        residual_ddntk_u(m, float("nan"))
    with pytest.raises(ValueError, match="K1 must be"):
        residual_ddntk_t(m, "1")
