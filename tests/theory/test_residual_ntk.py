"""Residual NTK statistics B, F (pdlt.theory.residual_ntk): exact references.

* gamma = 0: the history recursion must be the plain recursion of
  pdlt.theory.ntk (same floating-point inputs, different algebra): 1e-12.
* Layer 2 (layer 1 exactly Gaussian, its NTK deterministic): closed forms
  B = xi^4 C_W^2 <s'^4> Th^2 + 2 xi^2 g^2 C_W <s'^2> Th^2 and
  F = xi^4 C_W^2 Th <s^2 s'^2> + 2 xi^2 g^2 C_W Th <z s s'>, exact at any width.
* Linear networks: sigma' = 1, so every two-depth average factorizes and the
  closure recursion is exact; the history recursion must agree with it.
* Hand computation for a linear 3-layer network (module doctest).
"""

import math

import numpy as np
import pytest

import pdlt
from pdlt.theory.residual_ntk import residual_b_closure, residual_ntk_one_input


def ntk_fluctuation_flow(mlp, x=None, stats=tuple("ABDFPQRSTU"), **kw):
    return pdlt.statistics(mlp, x, get=("V",) + tuple(stats), **kw)


def finite_width_flow(mlp, x=None, **kw):
    return pdlt.statistics(mlp, x, get=("V", "G1"), **kw)
from pdlt.gaussian import expect

ACTS = ["relu", "tanh", "gelu", "sin"]


@pytest.mark.parametrize("act", ACTS)
def test_gamma_zero_is_the_plain_recursion(act):
    m = pdlt.MLP(n0=1, widths=(12, 16, 16, 9), activation=act, C_W=1.3, C_b=0.1,
                 lambda_b=0.5, lambda_W=0.8)
    r = residual_ntk_one_input(m, 0.9, stats=("A", "B", "D", "F", "V"))
    f = ntk_fluctuation_flow(m, K1=0.9, stats="ABDF")
    for k in ("A", "B", "D", "F", "V"):
        np.testing.assert_allclose(r[k], f[k], rtol=1e-12, atol=1e-14 * np.abs(f[k]).max())


@pytest.mark.parametrize("act", ACTS)
def test_layer_two_closed_form(act):
    g, x, CW, Cb, K1 = 0.6, 0.9, 0.8, 0.2, 0.7
    m = pdlt.MLP(n0=1, width=8, depth=3, n_out=8, activation=act, C_W=CW, C_b=Cb,
                 gamma=g, xi=x, lambda_b=0.3, lambda_W=1.1)
    a = m.activation
    Th = float(pdlt.flow(m, K1=K1).Theta[0])
    kw = dict(kinks=a.kinks)
    p2, p4 = (float(expect(lambda z, k=k: a.d1(z) ** k, K1, **kw)) for k in (2, 4))
    s2p2 = float(expect(lambda z: (a.sigma(z) * a.d1(z)) ** 2, K1, **kw))
    zsp = float(expect(lambda z: z * a.sigma(z) * a.d1(z), K1, **kw))
    r = residual_ntk_one_input(m, K1)
    B2 = x ** 4 * CW ** 2 * p4 * Th ** 2 + 2 * x * x * g * g * CW * p2 * Th ** 2
    F2 = x ** 4 * CW ** 2 * Th * s2p2 + 2 * x * x * g * g * CW * Th * zsp
    assert r["B"][1] == pytest.approx(B2, rel=1e-12)
    assert r["F"][1] == pytest.approx(F2, rel=1e-11)
    assert residual_b_closure(m, K1)[1] == pytest.approx(B2, rel=1e-12)


def test_linear_history_equals_closure():
    m = pdlt.MLP(n0=1, width=8, depth=7, n_out=8, activation="linear", C_W=0.6, C_b=0.1,
                 gamma=(0, 0.5, 0.7, 0.0, 0.9, 0.3, 0.6), lambda_b=0.4)
    np.testing.assert_allclose(residual_ntk_one_input(m, 1.3, stats="B")["B"],
                               residual_b_closure(m, 1.3), rtol=1e-13)


def test_history_differs_from_closure_for_relu():
    """The two-depth term: B^(3) - closure = 2 C_W chi_perp beta_1 arcsin(g)/(2 pi) (ReLU, K = K*)."""
    g = 0.7
    m = pdlt.theory.residual.residual_mlp("relu", g, width=8, depth=3, n_out=8, lambda_b=0.5)
    Th1 = float(pdlt.flow(m, K1=1.0).Theta[0])
    CW = m.C_W[1]
    beta1 = g * g * CW * Th1 ** 2
    want = 2 * CW * 1.0 * beta1 * math.asin(g) / (2 * math.pi)
    diff = residual_ntk_one_input(m, 1.0, stats="B")["B"][2] - residual_b_closure(m, 1.0)[2]
    assert diff == pytest.approx(want, rel=1e-9)


def test_refuses_statistics_not_derived():
    m = pdlt.MLP(n0=1, width=8, depth=3, n_out=8, gamma=0.5)
    with pytest.raises(NotImplementedError, match=r"\[.R.\].*this function: A, B, D, F"):
        residual_ntk_one_input(m, 1.0, stats=("R", "B"))
    with pytest.raises(ValueError, match="K1 must be"):
        residual_ntk_one_input(m, -1.0)


def test_linear_vertex_is_the_closed_form():
    """Linear residual nets: no two-depth terms beyond z^2, so the field-covariance V must
    equal pdlt.theory.vertex's (checked there against the deep linear closed form)."""
    m = pdlt.MLP(n0=1, width=8, depth=6, n_out=8, activation="linear", C_W=0.7, C_b=0.2,
                 gamma=(0, 0.5, 0.8, 0.3, 0.6, 0.9), xi=1.1)
    np.testing.assert_allclose(residual_ntk_one_input(m, 1.2, stats="V")["V"],
                               finite_width_flow(m, K1=1.2)["V"], rtol=1e-12)


@pytest.mark.parametrize("act", ACTS)
def test_vertex_metric_gamma_zero_is_the_plain_recursion(act):
    """residual_vertex_metric at gamma = 0 (unequal widths): the plain V, G1 of vertex.py."""
    from pdlt.theory.residual_ntk import residual_vertex_metric
    m = pdlt.MLP(n0=1, widths=(12, 16, 16, 9), activation=act, C_W=1.3, C_b=0.1)
    r, f = residual_vertex_metric(m, 0.9), finite_width_flow(m, K1=0.9)
    for k in ("V", "G1"):
        scale = max(np.abs(f[k]).max(), np.abs(f["V"]).max())
        np.testing.assert_allclose(r[k], f[k], rtol=1e-12, atol=1e-14 * scale)


def _relu_v3_direct(g, CW):
    th = math.acos(g)
    two = (3 * math.sin(th) * math.cos(th) + (math.pi - th) * (1 + 2 * math.cos(th) ** 2)) / (
        2 * math.pi) - 0.25                        # Cov(relu(z2)^2, relu(z1)^2), rho = g
    var_s2, cov_s2_z2, dK = 1.25, 1.0, 0.5        # Var(relu^2), Cov(relu^2, z^2), d<relu^2>/dK
    V2 = CW ** 2 * var_s2 + 4 * g * g * CW * 0.5   # layer 2 (exact)
    cross_ss = CW ** 2 * var_s2 * dK ** 2 + 2 * CW * dK * two
    cross_sz = CW ** 2 * var_s2 * dK + CW * (dK * g * g * cov_s2_z2 + two)
    return CW ** 2 * (var_s2 + cross_ss) + 2 * g * g * CW * (cov_s2_z2 + cross_sz) + g ** 4 * V2


def test_relu_vertex_layer_three_direct():
    """V^(3), ReLU, gamma = 0.5 (K = 1), by the direct conditional formula
    V/n = xi^4 Var(G2) + 2 xi^2 g^2 Cov(G2, z2^2) + g^4 V^(2)/n, with the exact
    two-depth covariance Cov(sigma^2(z^(2)), sigma^2(z^(1))) (arc-cosine kernel of
    degree 2): 8.6179, where the three-point truncation of pdlt.theory.vertex gives 8.5574.
    finite_width_flow serves the same (exact) value."""
    g, CW = 0.5, 1.5
    m = pdlt.theory.residual.residual_mlp("relu", g, width=8, depth=3, n_out=8)
    V3 = _relu_v3_direct(g, CW)
    assert V3 == pytest.approx(8.6179, abs=5e-5)
    assert residual_ntk_one_input(m, 1.0, stats="V")["V"][2] == pytest.approx(V3, rel=1e-10)
    assert finite_width_flow(m, K1=1.0)["V"][2] == pytest.approx(V3, rel=1e-10)


def test_relu_metric_layer_three_closed_form():
    """G1^(3), ReLU, K = 1: <(relu^2)''''> = 0, so only the neuron's own past enters,
    G1^(3) = (C_W^2 / 2) Cov(relu(z1)^2, 2 theta(z2)) with E[x^2 1{x>0, y>0}] =
    1/4 + (arcsin rho + rho sqrt(1 - rho^2)) / (2 pi), rho = gamma:
    G1^(3) = (C_W^2 / 2)(arcsin g + g sqrt(1 - g^2)) / pi (gamma = 0.5: 0.34256; the
    three-point truncation gives 0.35810)."""
    for g in (0.5, 0.8):
        CW = 2 * (1 - g * g)
        m = pdlt.theory.residual.residual_mlp("relu", g, width=8, depth=3, n_out=8)
        want = CW * CW / 2 * (math.asin(g) + g * math.sqrt(1 - g * g)) / math.pi
        assert finite_width_flow(m, K1=1.0)["G1"][2] == pytest.approx(want, rel=1e-10)


@pytest.mark.slow
def test_relu_metric_monte_carlo():
    """G1^(3), G1^(4) of real residual ReLU networks (gamma = 0.5; widths 16, 32, 64, 2e6
    networks each, Rao-Blackwellized, docs/derivations/residual_g1_mc.py; ~3 min): exact
    within 3 se; the three-point truncation and x0.5 / x2 rejected at > 4 se; resolution
    4 se / G1 < 3 %."""
    import importlib.util
    import pathlib
    import sys
    path = pathlib.Path(__file__).parents[2] / "docs" / "derivations" / "residual_g1_mc.py"
    spec = importlib.util.spec_from_file_location("residual_g1_mc", path)
    mc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mc)
    argv, sys.argv = sys.argv, ["x", "0.5", "2e6"]
    try:
        rows = mc.main()
    finally:
        sys.argv = argv
    for r in rows:
        assert 4 * r["se"] / r["exact"] < 0.03
        assert abs(r["G1"] - r["exact"]) < 3 * r["se"]
        for bad in (r["truncation"], 0.5 * r["exact"], 2 * r["exact"]):
            assert abs(r["G1"] - bad) > 4 * r["se"]


def test_ntk_fluctuation_flow_serves_what_is_derived():
    m = pdlt.MLP(n0=1, width=8, depth=4, n_out=8, activation="tanh", C_W=0.8, gamma=0.5)
    f = ntk_fluctuation_flow(m, K1=1.0, stats=("A", "B", "D", "F"))
    r = residual_ntk_one_input(m, 1.0)
    for k in "ABDF":
        np.testing.assert_array_equal(f[k], r[k])
    full = ntk_fluctuation_flow(m, K1=1.0)            # one input: every statistic is served
    assert all(np.all(np.isfinite(full[k])) for k in "ABDFPQRSTU")
    assert set("ABDFPQRSTU") <= set(pdlt.theory.statistics.defined(m, 2))   # N inputs too


def test_slopes_reduce_to_the_plain_ones_and_exceed_the_three_point_form():
    from pdlt.theory.ntk_criticality import ntk_slopes
    from pdlt.theory.residual import residual_vertex_slope, three_point_vertex_slope
    from pdlt.theory.residual import residual_slopes
    s0 = residual_slopes("relu", 0.0, depth=40)
    plain = ntk_slopes("relu")
    assert s0["nu_V"] == pytest.approx(5.0, rel=1e-12)
    for k in "ABDF":       # Richardson at depth 40: O(1/L^2) ~ 1e-3
        assert s0[k] == pytest.approx(plain[k], rel=2e-3)
    s = residual_slopes("relu", 0.5, depth=24)
    assert s["nu_V"] == pytest.approx(6.49631, rel=1e-5)   # converged (geometric) by l ~ 20
    assert s["nu_V"] == residual_vertex_slope("relu", 0.5)
    assert s["nu_V"] > three_point_vertex_slope("relu", 0.5) * 1.005


# ---------------------------------------------------------------------------
# H1: the NTK mean at order 1/n (pdlt.theory.residual_ntk.residual_ntk_mean)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_ntk_mean_gamma_zero_is_the_plain_recursion(act):
    """gamma = 0 (unequal widths): the fields + bilinear-form algebra must give the plain
    H1 of pdlt.theory.ntk_mean (same Gaussian averages, different algebra; 1e-12 of the
    largest H1, float64 round-off over ~10 terms)."""
    from pdlt.theory.residual_ntk import residual_ntk_mean
    m = pdlt.MLP(n0=1, widths=(12, 16, 16, 9, 9), activation=act, C_W=1.3, C_b=0.1,
                 lambda_b=0.5, lambda_W=0.8)
    r = residual_ntk_mean(m, 0.9)
    f = np.ravel(pdlt.statistics(m, K1=0.9, get=("H1",)).H1)
    scale = max(np.abs(f).max(), float(np.max(pdlt.flow(m, K1=0.9).Theta)))
    np.testing.assert_allclose(r, f, rtol=1e-12, atol=1e-12 * scale)


def test_ntk_mean_deep_linear_vanishes():
    """Deep linear residual network, closed form H1 = 0 at every layer and width: with
    sigma' = 1 the averaged forward equation E[H'] = xi^2 [lambda_b + lambda_W E[z^2]
    + C_W E[H]] + gamma^2 E[H] is exact, and so is E[z'^2] = xi^2 (C_b + C_W E[z^2])
    + gamma^2 E[z^2] (an increment is uncorrelated with the past), so E[z^2] = K and
    E[H] = Theta exactly. Every term of the general recursion (fields, dressing,
    bilinear form) must cancel to round-off: 1e-12 of n Theta."""
    from pdlt.theory.residual_ntk import residual_ntk_mean
    m = pdlt.MLP(n0=1, width=8, depth=7, n_out=8, activation="linear", C_W=0.6, C_b=0.1,
                 gamma=(0, 0.5, 0.7, 0.0, 0.9, 0.3, 0.6), xi=1.1, lambda_b=0.4,
                 lambda_W=1.3)
    h = residual_ntk_mean(m, 1.3)
    Th = pdlt.flow(m, K1=1.3).Theta
    assert np.all(np.abs(h) <= 1e-12 * 8 * np.max(Th))


def _h1_layer3_delta(mlp, K1, nodes=120):
    """H1^(3) by the delta method on the exact conditional mean given layer 1.

    Given layer 1 (n i.i.d. N(0, K1) preactivations, H^(1) = Theta1 * 1), Gaussian
    conditioning of layer 2's rows on the increments gives E[H^(3) | layer 1] exactly
    (pdlt.report.residual.residual_ntk_mean_measure, last two steps):
    xi^2 [lambda_b + lambda_W mean_j A0_j + C_W mean_j E_j] + gamma^2 Theta2, with
    E_j = B(S, P) F0(z_j; S) + C_W^2 xi^2 Theta1 Q F2_j / (n G^2)
    + 2 xi gamma C_W Theta1 F1_j s_j p_j / (n G), functions of z_j and of the empirical
    means S = mean s^2, P = mean p^2 (which include z_j). Expanding in S - <s^2>, P - <p^2>
    to O(1/n) (the neuron's own term and the variance of the means) and integrating by
    nested Gauss-Hermite (smooth activations only) gives H1^(3): no fields, no dressing,
    no bilinear forms, no two-depth series.
    """
    act = mlp.activation
    Cb, CW, lb, lW, xi, ga = (np.asarray(v, float) for v in
                              (mlp.C_b, mlp.C_W, mlp.lambda_b, mlp.lambda_W, mlp.xi, mlp.gamma))
    Th1 = float(pdlt.flow(mlp, K1=K1).Theta[0])
    e, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    z = math.sqrt(K1) * e                       # outer: a layer-1 preactivation
    s, p = act.sigma(z), act.d1(z)
    Ez = lambda f: float(f @ w)                 # noqa: E731
    mu, pi = Ez(s * s), Ez(p * p)
    vs, csp, Q = Ez((s * s - mu) ** 2), Ez((s * s - mu) * (p * p - pi)), Ez(s * s * p * p)
    G0 = Cb[1] + CW[1] * mu
    t = xi[1] ** 2 * G0
    y = ga[1] * z[:, None] + math.sqrt(t) * e[None, :]
    inner = lambda f: f @ w                     # noqa: E731  (over the increment, per z)
    He2, He4 = e * e - 1, e ** 4 - 6 * e * e + 3
    dS = xi[1] ** 2 * CW[1]                     # d t / d S; d/dt <f> = <f He2>/(2t), ...
    s2, p2 = act.sigma(y) ** 2, act.d1(y) ** 2
    dA0, d2A0 = dS * inner(s2 * He2) / (2 * t), dS ** 2 * inner(s2 * He4) / (4 * t * t)
    F0 = inner(p2)
    dF0, d2F0 = dS * inner(p2 * He2) / (2 * t), dS ** 2 * inner(p2 * He4) / (4 * t * t)
    F1 = math.sqrt(t) * inner(p2 * e) / xi[1]
    F2 = t * inner(p2 * He2) / xi[1] ** 2
    a0 = Ez(dA0 * (s * s - mu)) + 0.5 * Ez(d2A0) * vs
    B = xi[1] ** 2 * (lb[1] + lW[1] * mu + CW[1] * Th1 * pi) + ga[1] ** 2 * Th1
    c = xi[1] ** 2 * CW[1] * Th1
    e1 = (Ez((lW[1] * xi[1] ** 2 * F0 + B * dF0) * (s * s - mu)) + c * Ez(F0 * (p * p - pi))
          + 0.5 * (2 * lW[1] * xi[1] ** 2 * Ez(dF0) + B * Ez(d2F0)) * vs + c * Ez(dF0) * csp
          + xi[1] ** 2 * CW[1] ** 2 * Th1 * Q * Ez(F2) / G0 ** 2
          + 2 * xi[1] * ga[1] * CW[1] * Th1 * Ez(F1 * s * p) / G0)
    return xi[2] ** 2 * (lW[2] * a0 + CW[2] * e1)


@pytest.mark.parametrize("act", ["tanh", "gelu", "sin"])
@pytest.mark.parametrize("g", [0.3, 0.7])
def test_ntk_mean_layer_three_by_the_delta_method(act, g):
    """H1^(3) two independent ways: the general recursion and the delta method on the exact
    conditional mean (_h1_layer3_delta). The reference's 120 x 120 Gauss-Hermite rule is
    accurate to ~1e-11 for these entire (tanh: strip-analytic) integrands; 1e-9 relative.
    (The plain H1 at gamma = 0 is checked above; here the own-past terms are nonzero.)"""
    from pdlt.theory.residual_ntk import residual_ntk_mean
    m = pdlt.MLP(n0=1, width=8, depth=3, n_out=8, activation=act, C_W=0.8, C_b=0.2,
                 gamma=g, xi=0.9, lambda_b=0.3, lambda_W=1.1)
    want = _h1_layer3_delta(m, 0.7)
    assert abs(want) > 0.01
    assert residual_ntk_mean(m, 0.7)[2] == pytest.approx(want, rel=1e-9)


def test_ntk_mean_is_served_by_statistics():
    from pdlt.theory.residual_ntk import residual_ntk_mean
    m = pdlt.theory.residual.residual_mlp("relu", 0.5, width=16, depth=5, n_out=16)
    st = pdlt.statistics(m, K1=1.0, get=("Theta", "H1"))
    np.testing.assert_array_equal(np.ravel(st.H1), residual_ntk_mean(m, 1.0))
    assert st.H1[2] > 0.1                       # ReLU: zero for plain MLPs, not here
    assert "H1" in pdlt.theory.statistics.defined(m)
    assert "R" in pdlt.theory.statistics.defined(m)
    m2 = m.with_(n0=2)                                               # N inputs too
    two = pdlt.statistics(m2, np.array([[1.0, 0.0], [0.6, 0.8]]), get=("H1",))
    assert two.H1.shape == (5, 2, 2) and np.all(np.isfinite(two.H1))
    with pytest.raises(ValueError, match="K1 must be"):
        residual_ntk_mean(m, 0.0)


# ---------------------------------------------------------------------------
# P: the dNTK-preactivation correlation (pdlt.theory.residual_ntk.residual_dntk_p)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("stat,act", [("P", "tanh"), ("P", "gelu"), ("P", "sin"),
                                      ("Q", "tanh"), ("Q", "gelu"), ("Q", "sin"), ("Q", "relu")])
def test_dntk_gamma_zero_is_the_plain_recursion(stat, act):
    """gamma = 0, unequal widths: P's bilinear-form and Q's linear-form recursions are the
    book's (dntk.py), 1e-12."""
    from pdlt.theory.residual_ntk import residual_dntk_p, residual_dntk_q
    m = pdlt.MLP(n0=1, widths=(12, 16, 16, 9, 9), activation=act, C_W=1.3, C_b=0.1,
                 lambda_b=0.5, lambda_W=0.8)
    f = np.ravel(pdlt.statistics(m, K1=0.9, get=(stat,))[stat])
    got = (residual_dntk_p if stat == "P" else residual_dntk_q)(m, 0.9)
    np.testing.assert_allclose(got, f, rtol=1e-12, atol=1e-12 * np.abs(f).max())


@pytest.mark.parametrize("act", ["tanh", "gelu", "sin"])
def test_dntk_p_layer_two_closed_form(act):
    """Layer 2, exact at any width (layer 1 Gaussian, H^(1) = Theta1 1, dH^(1) = 0):
    P = xi^4 C_W^2 Theta1^2 <q s p^2> + xi^2 gamma^2 C_W Theta1^2 <q s>, q = sigma''."""
    from pdlt.theory.residual_ntk import residual_dntk_p
    g, x, CW, Cb, K1 = 0.6, 0.9, 0.8, 0.2, 0.7
    m = pdlt.MLP(n0=1, width=8, depth=3, n_out=8, activation=act, C_W=CW, C_b=Cb,
                 gamma=g, xi=x, lambda_b=0.3, lambda_W=1.1)
    a = m.activation
    Th = float(pdlt.flow(m, K1=K1).Theta[0])
    qsp2 = float(expect(lambda z: a.d2(z) * a.sigma(z) * a.d1(z) ** 2, K1))
    qs = float(expect(lambda z: a.d2(z) * a.sigma(z), K1))
    want = x ** 4 * CW ** 2 * Th ** 2 * qsp2 + x * x * g * g * CW * Th ** 2 * qs
    assert residual_dntk_p(m, K1)[1] == pytest.approx(want, rel=1e-11)


def test_dntk_p_vanishes_without_curvature_and_differs_from_the_closure():
    """ReLU and linear: sigma'' = 0 (pointwise), so P = 0 at every layer. GELU at
    gamma = 0.7: the two-depth averages move P^(4) by ~30 % against the closure."""
    from pdlt.theory.residual_ntk import residual_dntk_p
    for act in ("relu", "linear"):
        m = pdlt.theory.residual.residual_mlp(act, 0.5, width=8, depth=5, n_out=8)
        assert np.all(residual_dntk_p(m, 1.0) == 0.0)
    m = pdlt.theory.residual.residual_mlp("gelu", 0.7, width=8, depth=4, n_out=8)
    K1 = pdlt.criticality("gelu").K_star
    ex, cl = residual_dntk_p(m, K1), residual_dntk_p(m, K1, closure=True)
    assert ex[1] == pytest.approx(cl[1], rel=1e-12)          # layer 2: no history yet
    assert abs(ex[3] - cl[3]) > 0.2 * abs(ex[3])


def test_dntk_p_is_served_by_statistics():
    """P and Q are served for one input (ensemble-checked: tests/experiment/
    test_residual_ntk_ensemble.py); N inputs still raise."""
    from pdlt.theory.residual_ntk import residual_dntk_p
    m = pdlt.theory.residual.residual_mlp("tanh", 0.5, width=16, depth=5, n_out=16)
    st = pdlt.statistics(m, K1=1.0, get=("P", "B"))
    np.testing.assert_array_equal(np.ravel(st.P), residual_dntk_p(m, 1.0))
    assert st.P[3] < -0.1
    assert "P" in pdlt.theory.statistics.defined(m)
    assert "P" in pdlt.theory.statistics.defined(m, 2)           # N inputs: h40


# ---------------------------------------------------------------------------
# Q (pdlt.theory.residual_ntk.residual_dntk_q)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["tanh", "gelu", "sin", "relu"])
def test_dntk_q_layer_two_closed_form(act):
    """Layer 2, exact at any width: Q = xi^2 C_W Theta1^2 (xi^2 C_W <q s p^2> + gamma^2 <q p z>)
    + lambda_W xi^2 Theta1 (xi^2 C_W <s^2 p^2> + gamma^2 <z s p>)."""
    from pdlt.theory.residual_ntk import residual_dntk_q
    g, x, CW, Cb, K1, lW = 0.6, 0.9, 0.8, 0.2, 0.7, 1.1
    m = pdlt.MLP(n0=1, width=8, depth=3, n_out=8, activation=act, C_W=CW, C_b=Cb,
                 gamma=g, xi=x, lambda_b=0.3, lambda_W=lW)
    a = m.activation
    Th = float(pdlt.flow(m, K1=K1).Theta[0])
    kw = dict(kinks=a.kinks)
    qsp2 = float(expect(lambda z: a.d2(z) * a.sigma(z) * a.d1(z) ** 2, K1, **kw))
    qpz = float(expect(lambda z: a.d2(z) * a.d1(z) * z, K1, **kw))
    s2p2 = float(expect(lambda z: (a.sigma(z) * a.d1(z)) ** 2, K1, **kw))
    zsp = float(expect(lambda z: z * a.sigma(z) * a.d1(z), K1, **kw))
    want = (x * x * CW * Th ** 2 * (x * x * CW * qsp2 + g * g * qpz)
            + lW * x * x * Th * (x * x * CW * s2p2 + g * g * zsp))
    assert residual_dntk_q(m, K1)[1] == pytest.approx(want, rel=1e-11)


def test_dntk_q_is_served_by_statistics():
    from pdlt.theory.residual_ntk import residual_dntk_q
    m = pdlt.theory.residual.residual_mlp("gelu", 0.7, width=16, depth=5, n_out=16)
    st = pdlt.statistics(m, K1=1.0, get=("P", "Q"))
    np.testing.assert_array_equal(np.ravel(st.Q), residual_dntk_q(m, 1.0))
    assert "Q" in pdlt.theory.statistics.defined(m)
    with pytest.raises(ValueError, match="K1 must be"):
        residual_dntk_q(m, -1.0)


def test_dntk_q_closure():
    """The closure (two-depth averages replaced by products) is exact for a plain MLP
    (preactivations at different depths are independent; 1e-10: the pair quadrature's
    stated 1e-13 absolute error, summed over layers) and, at layer 2, for any residual
    MLP; GELU at gamma = 0.7 it is ~17 % off at layer 4 (the ensembles reject it)."""
    from pdlt.theory.residual_ntk import residual_dntk_q
    m = pdlt.MLP(n0=1, widths=(12, 16, 16, 9, 9), activation="gelu", C_W=1.3, C_b=0.1,
                 lambda_b=0.5, lambda_W=0.8)
    np.testing.assert_allclose(residual_dntk_q(m, 0.9, closure=True), residual_dntk_q(m, 0.9),
                               rtol=1e-10)
    m = pdlt.theory.residual.residual_mlp("gelu", 0.7, width=8, depth=4, n_out=8)
    ex, cl = residual_dntk_q(m, 1.0), residual_dntk_q(m, 1.0, closure=True)
    assert ex[1] == pytest.approx(cl[1], rel=1e-12)
    assert abs(ex[3] - cl[3]) > 0.1 * abs(ex[3])
