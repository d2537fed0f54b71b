"""Residual MLPs: recursions, criticality, vertex slope and r* vs gamma (theory only).

Exact references: the deep linear residual network (K' = (xi^2 C_W + gamma^2) K
exactly; V by its closed-form recursion), the identity "gamma = 0, xi != 1 is
the plain MLP with C_b, C_W, lambda scaled by xi^2", and the closed-form
slopes of pdlt.theory.residual (checked against the recursion run to large
depth). Ensemble checks are in tests/experiment/test_residual_ensemble.py.
"""

import math

import numpy as np
import pytest

import pdlt
from pdlt import MLP
from pdlt.theory.criticality import NoCriticalPointError
from pdlt.theory.information import optimal_aspect_ratio
from pdlt.theory.statistics import flow
from pdlt.theory.residual import (residual_criticality, residual_mlp, residual_vertex_slope,
                                  three_point_vertex_slope)
from pdlt.theory._averages import OneVariableTable

from one_input_oracles import residual_metric, residual_vertex  # tests/theory, on sys.path


def finite_width_flow(mlp, x=None, **kw):
    get = ("chi_parallel", "chi_perp", "V", "G1") + (("kappa3",) if x is None and mlp.is_residual else ())
    return pdlt.statistics(mlp, x, get=get, **kw)


def vertex_step_single(act, K, V, C_W, ratio=1.0, *, gamma=0.0, xi=1.0):
    return residual_vertex(OneVariableTable(act, K), K, V, C_W, ratio, gamma, xi)


def metric_step_single(act, K, V, G1, C_W, ratio=1.0, *, gamma=0.0, xi=1.0):
    return residual_metric(OneVariableTable(act, K), V, G1, C_W, ratio, gamma, xi)

EPS = np.finfo(float).eps
X2 = np.array([[1.0, 0.3], [-0.5, 0.8], [0.2, -1.1]])


# ---------------------------------------------------------------------------
# the MLP's residual hyperparameters
# ---------------------------------------------------------------------------

def test_scalar_gamma_applies_to_equal_width_layers_only():
    m = MLP(n0=3, width=8, depth=4, gamma=0.5, xi=0.9)
    assert m.gamma == (0.0, 0.5, 0.5, 0.0) and m.xi == (1.0, 0.9, 0.9, 1.0)
    assert m.is_residual and not MLP(n0=3, width=8, depth=4).is_residual
    assert MLP(n0=8, width=8, depth=3, n_out=8, gamma=0.3).gamma == (0.0, 0.3, 0.3)
    # with_ keeps the scalar rule when the depth changes
    assert m.with_(depth=6).gamma == (0.0,) + (0.5,) * 4 + (0.0,)
    assert m.with_(C_W=2.0) == MLP(n0=3, width=8, depth=4, gamma=0.5, xi=0.9, C_W=2.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(gamma=[0.5, 0.5, 0.0]), r"layer 1 has no residual connection"),
    (dict(gamma=[0.0, 0.5, 0.5]), r"needs equal widths n_2 == n_3; got 8 and 1"),
    (dict(xi=[2.0, 1.0, 1.0]), r"fold a first-layer scale into C_b and C_W"),
    (dict(xi=0.0), r"xi must be > 0"),
    (dict(gamma=float("nan")), r"gamma must be finite"),
    (dict(gamma=[0.1, 0.2]), r"one value per layer"),
])
def test_bad_residual_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLP(n0=2, width=8, depth=3, **kwargs)


# ---------------------------------------------------------------------------
# recursions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["tanh", "relu", "gelu"])
def test_xi_alone_is_a_rescaled_plain_mlp(act):
    """gamma = 0: z' = xi [b + W sigma] is the plain layer with C_b, C_W, lambda times xi^2."""
    xi = 0.8
    res = MLP(n0=2, width=16, depth=4, activation=act, C_b=0.1, C_W=1.3, xi=xi)
    s = [1.0, xi * xi, xi * xi, 1.0]
    plain = MLP(n0=2, width=16, depth=4, activation=act, C_b=[0.1 * f for f in s],
                C_W=[1.3 * f for f in s], lambda_b=s, lambda_W=s)
    a, b = flow(res, X2), flow(plain, X2)
    np.testing.assert_allclose(a.K, b.K, rtol=1e-13)
    np.testing.assert_allclose(a.Theta, b.Theta, rtol=1e-13)
    fa, fb = finite_width_flow(res, K1=0.7), finite_width_flow(plain, K1=0.7)
    np.testing.assert_allclose(fa["V"], fb["V"], rtol=1e-12)
    np.testing.assert_allclose(fa["G1"], fb["G1"], rtol=1e-12, atol=1e-15)


def test_gamma_zero_is_the_plain_code_path_bit_for_bit():
    m = MLP(n0=2, width=16, depth=5, activation="tanh", C_b=0.1, C_W=1.3)
    explicit = MLP(n0=2, width=16, depth=5, activation="tanh", C_b=0.1, C_W=1.3,
                   gamma=[0.0] * 5, xi=[1.0] * 5)
    for a, b in ((flow(m, X2), flow(explicit, X2)),
                 (finite_width_flow(m, K1=0.9), finite_width_flow(explicit, K1=0.9))):
        for name in ("K", "Theta", "chi_parallel", "chi_perp"):
            assert np.array_equal(a[name], b[name])
    assert finite_width_flow(m, K1=0.9).kappa3 is None


@pytest.mark.parametrize("gamma,xi", [(0.6, 1.0), (0.9, 0.5), (-0.4, 1.2)])
def test_deep_linear_residual_closed_form(gamma, xi):
    """sigma = z, C_b = 0: z' = (xi W + gamma) z. K' = (xi^2 C_W + gamma^2) K exactly, and
    V' = 2 xi^4 C_W^2 K^2 + 4 xi^2 gamma^2 C_W K^2 + chi^2 V (Wick, equal widths)."""
    C_W, L = 0.7, 8
    m = MLP(n0=1, width=32, depth=L, n_out=32, activation="linear", C_W=C_W, gamma=gamma,
            xi=xi, lambda_b=0.3, lambda_W=1.1)
    f = finite_width_flow(m, K1=1.3)
    chi = xi * xi * C_W + gamma * gamma
    K, V, Th = [1.3], [0.0], [0.3 + 1.1 * 1.3 / C_W]
    for _ in range(L - 1):
        V.append(2 * xi ** 4 * C_W ** 2 * K[-1] ** 2 + 4 * xi * xi * gamma ** 2 * C_W * K[-1] ** 2
                 + chi ** 2 * V[-1])
        Th.append(xi * xi * (0.3 + 1.1 * K[-1] + C_W * Th[-1]) + gamma ** 2 * Th[-1])
        K.append(chi * K[-1])
    np.testing.assert_allclose(f.K, K, rtol=1e-13)
    np.testing.assert_allclose(f["V"], V, rtol=1e-12)
    np.testing.assert_allclose(f.Theta, Th, rtol=1e-13)
    np.testing.assert_allclose(f.chi_perp[:-1], chi, rtol=1e-13)
    assert np.all(f["kappa3"] == 0)     # odd activation: no three-point function


def _truncated_single(m, K1):
    """The single-input residual recursion without the two-depth terms beyond kappa3
    (one_input_oracles.residual_vertex / residual_metric): what the N-input residual flow
    computed before pdlt.theory.residual_multi)."""
    f = flow(m, K1=K1)
    V, G1 = [0.0], [0.0]
    for l in range(1, m.depth):
        kw = dict(gamma=m.gamma[l], xi=m.xi[l])
        V.append(vertex_step_single(m.activation, f.K[l - 1], V[-1], m.C_W[l], **kw))
        G1.append(metric_step_single(m.activation, f.K[l - 1], V[-2], G1[-1], m.C_W[l], **kw))
    return np.array(V), np.array(G1)


@pytest.mark.parametrize("act,C_W", [("tanh", 0.7), ("relu", 1.5)])
def test_multi_input_diagonal_matches_single_input(act, C_W):
    """The N-input residual flow is exact (pdlt.theory.residual_multi, any activation): its
    diagonal equals the exact single-input V, G1; the three-point truncation it used before
    (odd sigma only) differs at layer 3 (p >= 4 Hermite terms). More in test_residual_multi.py."""
    m = MLP(n0=2, width=16, depth=4, activation=act, C_W=C_W, C_b=0.1, gamma=0.5)
    f2 = finite_width_flow(m, X2[:2])
    for a in range(2):
        exact = finite_width_flow(m, K1=f2.K[0, a, a])
        np.testing.assert_allclose(f2["V"][:, a, a, a, a], exact["V"], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(f2["G1"][:, a, a], exact["G1"], rtol=1e-10, atol=1e-14)
        V, _ = _truncated_single(m, f2.K[0, a, a])
        assert abs(exact["V"][2] / V[2] - 1) > 1e-3     # the truncation is visible at layer 3
    V = f2["V"][-1]
    np.testing.assert_allclose(V, V.transpose(1, 0, 2, 3), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(V, V.transpose(2, 3, 0, 1), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------
# criticality and the vertex slope
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["relu", "tanh", "gelu", "leaky_relu(0.2)"])
@pytest.mark.parametrize("gamma", [0.3, 0.8])
def test_residual_criticality_keeps_the_kernel_critical(act, gamma):
    plain = pdlt.criticality(act)
    rc = residual_criticality(act, gamma)
    assert math.isclose(rc.C_W, (1 - gamma ** 2) * plain.C_W, rel_tol=4 * EPS)
    assert math.isclose(rc.C_b, (1 - gamma ** 2) * plain.C_b, rel_tol=4 * EPS, abs_tol=0.0)
    K1 = plain.K_star or 1.0
    if plain.K_star == 0:
        K1 = 0.01
    f = flow(residual_mlp(act, gamma, width=64, depth=6, n_out=64), K1=K1)
    if plain.K_star != 0:   # a fixed point with chi_par = chi_perp = 1
        np.testing.assert_allclose(f.K, K1, rtol=1e-10)
        np.testing.assert_allclose(f.chi_parallel, 1.0, rtol=1e-9)
        np.testing.assert_allclose(f.chi_perp, 1.0, rtol=1e-9)
    else:                   # K* = 0: chi -> 1 as K -> 0
        assert np.all(np.diff(f.K) < 0)
        np.testing.assert_allclose(f.chi_perp, 1.0, atol=0.05)


def test_three_point_slope_closed_form():
    for g in (-0.5, 0.0, 0.3, 0.6, 0.95):
        want = (1 - g * g) * (5 - g * g + 16 / math.pi * g * (1 + g))
        assert math.isclose(three_point_vertex_slope("relu", g), want, rel_tol=1e-12)


def test_exact_slope_reference_values():
    """gamma = 0: the plain slope; linear: 2 (1 - gamma^4) (no two-depth terms survive);
    K* = 0: (2/3)(1 - gamma^4); ReLU: the exact V's increment (6.4963 at gamma = 0.5, where
    the three-point closed form gives 6.4273)."""
    assert residual_vertex_slope("relu", 0.0) == 5.0
    assert residual_vertex_slope("linear", 0.5) == pytest.approx(2 * (1 - 0.5 ** 4), rel=1e-12)
    assert residual_vertex_slope("tanh", 0.5) == pytest.approx(2 / 3 * (1 - 0.5 ** 4), rel=1e-12)
    assert residual_vertex_slope("relu", 0.5) == pytest.approx(6.4963125440, rel=1e-9)
    assert three_point_vertex_slope("relu", 0.5) == pytest.approx(6.4272889757, rel=1e-9)
    with pytest.raises(ValueError, match="gamma"):
        residual_vertex_slope("relu", 0.995)


@pytest.mark.parametrize("act,gamma", [("relu", 0.5), ("relu", -0.5), ("gelu", 0.5),
                                       ("leaky_relu(0.2)", 0.7), ("relu", 0.9)])
def test_slope_matches_the_flow_at_depth(act, gamma):
    """K* > 0: finite_width_flow's (exact) V grows by nu K*^2 per layer once the two-depth
    terms have converged (ratio gamma): the raw last increment at depth L equals the
    Aitken-extrapolated slope to ~gamma^L."""
    crit = pdlt.criticality(act)
    K1 = crit.K_star or 1.0
    L = 120 if gamma == 0.9 else 60
    f = finite_width_flow(residual_mlp(act, gamma, width=100, depth=L, n_out=100), K1=K1)
    est = (f["V"][-1] - f["V"][-2]) / f.K[-1] ** 2
    assert est == pytest.approx(residual_vertex_slope(act, gamma), rel=1e-9 + 30 * abs(gamma) ** L)


def test_k_star_zero_slope():
    """tanh: the truncated recursion (one_input_oracles.residual_vertex) gives V/(K^2 l) -> (2/3)(1 - gamma^4)
    with O(log l / l) corrections (1e-2 at l = 4000); the exact V differs from it by two-depth
    terms that vanish as K -> 0 (relative difference ~K: checked at two K)."""
    L = 4000
    m = residual_mlp("tanh", 0.5, width=100, depth=L, n_out=100)
    K = flow(m, K1=1.0).K
    V = 0.0
    for l in range(1, L):
        V = vertex_step_single(m.activation, K[l - 1], V, m.C_W[l], gamma=0.5)
    assert V / K[-1] ** 2 / L == pytest.approx(2 / 3 * (1 - 0.5 ** 4), rel=1e-2)
    rel = []
    for K1 in (0.2, 0.05):
        m = residual_mlp("tanh", 0.5, width=100, depth=12, n_out=100)
        exact = finite_width_flow(m, K1=K1)["V"][-1]
        V, kk = 0.0, flow(m, K1=K1).K
        for l in range(1, 12):
            V = vertex_step_single(m.activation, kk[l - 1], V, m.C_W[l], gamma=0.5)
        rel.append(abs(exact / V - 1))
    assert rel[1] < rel[0] / 3


def test_no_criticality_at_unit_residual_strength():
    with pytest.raises(NoCriticalPointError, match=r"\|gamma\| < 1"):
        residual_criticality("relu", 1.0)
    with pytest.raises(NoCriticalPointError):
        residual_vertex_slope("tanh", -1.2)


@pytest.mark.parametrize("act", ["tanh", "linear"])
def test_optimal_aspect_ratio_diverges_as_gamma_to_one(act):
    r = [optimal_aspect_ratio(act, gamma=g) for g in (0.9, 0.99, 0.999)]
    assert all(np.isfinite(r)) and r[0] < r[1] < r[2]
    assert r[2] > 50 * optimal_aspect_ratio(act)
    # nu ~ (1 - gamma^2) c as gamma -> 1: r* (1 - gamma) tends to a constant
    assert r[2] * 0.001 == pytest.approx(r[1] * 0.01, rel=0.02)


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_optimal_aspect_ratio_grows_towards_gamma_one(act):
    """Exact slope (|gamma| <= 0.993): r* grows with gamma, ~(1 - gamma) nu -> constant."""
    r = [optimal_aspect_ratio(act, gamma=g) for g in (0.8, 0.9, 0.95)]
    assert r[0] < r[1] < r[2] and r[2] > 3 * optimal_aspect_ratio(act)   # 3.6x at 0.95


# ---------------------------------------------------------------------------
# the output-layer convention (issue 17): only residual layers are scaled
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_plain_output_layer_keeps_the_plain_critical_point(act):
    """With n_out = 1 the output layer is plain: it must map K* to K* (not (1-g^2) K*)."""
    plain = pdlt.criticality(act)
    rc = residual_criticality(act, 0.5)
    assert (rc.plain_C_b, rc.plain_C_W) == (plain.C_b, plain.C_W)
    m = residual_mlp(act, 0.5, width=8, depth=5)
    assert m.C_W == (plain.C_W, rc.C_W, rc.C_W, rc.C_W, plain.C_W)
    assert m.C_b == (plain.C_b, rc.C_b, rc.C_b, rc.C_b, plain.C_b)
    K1 = plain.K_star or 1.0
    np.testing.assert_allclose(flow(m, K1=K1).K, K1, rtol=1e-10)
    # n_out = width: the output layer is residual and scaled
    assert residual_mlp(act, 0.5, width=8, depth=3, n_out=8).C_W == (plain.C_W, rc.C_W, rc.C_W)


def test_diagnose_agrees_with_the_convention():
    from pdlt.theory.diagnosis import diagnose_architecture as diagnose
    d = diagnose(pdlt.activation("relu"), depth=6, width=64, residual=0.5)
    assert d["K_L"] == pytest.approx(1.0, rel=1e-12)          # was 0.75 before the convention
    assert d["critical_C_W"] == 1.5 and d["plain_layer_C_W"] == 2.0
    # the residual NTK slopes (not the plain network's) and the exact vertex slope
    from pdlt.theory.ntk_criticality import ntk_slopes
    assert set(d["ntk_slopes"]) == set("ABDFPQRSTU")
    assert d["ntk_slopes"]["B"] < 0.6 < ntk_slopes("relu")["B"]      # 0.535 vs 2/3
    assert d["vertex_slope"] == pytest.approx(6.4963, rel=1e-4)
    t = diagnose(pdlt.activation("tanh"), depth=6, width=64, residual=0.5)
    assert set(t["ntk_slopes"]) == set("ABDFPQRSTU")          # K*=0: fitted, with errors
    assert set(t["ntk_slope_errors"]) == set("ABDFPQRSTU")
