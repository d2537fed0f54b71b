"""Exact N-input V and G1 of residual MLPs (pdlt.theory.residual_multi): exact references.

* gamma = 0: the plain N-input recursions of pdlt.theory.vertex (same averages: round-off);
* one input, coinciding inputs, and the diagonal of distinct inputs: the one-input module
  pdlt.theory.residual_ntk.residual_vertex_metric (independent code: pair expectations and
  Stein forms instead of the N-input fields, four-variable averages and M operator);
* positively collinear inputs of a ReLU-family network with C_b = 0: z(c x) = c z(x) in every
  network, so every entry (off-diagonal ones included) is the one-input value times
  c_a c_b (c_c c_d): an exact check of the pair fields, their responses and dressing;
* the deep linear residual network: V' = (xi^4 C_W^2 + 2 xi^2 gamma^2 C_W)(K_ac K_bd + K_ad K_bc)
  + chi^2 V (Wick; equal widths), G1 = 0.

Tolerances: the one-input module is accurate to ~1e-13; the N-input two-depth averages use
pdlt.gaussian._multi.expect_nd one rule up for <= 3 variables (measured ~1e-12 against the
one-input module) and the default rule for four (the kinked split path is stated within
4e-10 of the Cauchy-Schwarz scale, which the fold carries at that relative size).
"""

import numpy as np
import pytest

import pdlt
from pdlt import MLP
from pdlt.theory.residual import residual_mlp
from pdlt.theory.residual_multi import (residual_ad_multi, residual_b_multi, residual_f_multi,
                                       residual_vertex_metric_multi)
from pdlt.theory.residual_ntk import (residual_ntk_one_input, residual_statistics,
                                      residual_vertex_metric)
from pdlt.theory.statistics import NAMES, defined

X3 = np.array([[1.0, 0.2, -0.3], [0.3, -0.9, 0.5], [-0.6, 0.4, 0.8]])


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


def _one_input_x(m, K1):
    """An input (1, n0) whose first-layer kernel is K1."""
    x = np.zeros((1, m.n0))
    x[0, 0] = np.sqrt((K1 - m.C_b[0]) * m.n0 / m.C_W[0])
    return x


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_gamma_zero_is_the_plain_recursion(act):
    """Unequal widths, C_b > 0, three distinct inputs: the plain fold's V and G1 (round-off)."""
    m = MLP(n0=3, widths=(8, 12, 6), activation=act, C_W=1.4, C_b=0.1)
    o = residual_vertex_metric_multi(m, X3)
    s = pdlt.statistics(m, X3, get=["V", "G1"])
    assert _rel(o["V"], s.V) < 1e-12
    assert _rel(o["G1"], s.G1) < 1e-12


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_one_and_coinciding_inputs_are_the_one_input_statistics(act):
    m = residual_mlp(act, 0.5, n0=2, width=8, depth=5, n_out=8)
    ref = residual_vertex_metric(m, 0.8)
    x = _one_input_x(m, 0.8)
    one = residual_vertex_metric_multi(m, x)
    assert _rel(one["V"][:, 0, 0, 0, 0], ref["V"]) < 1e-10
    assert _rel(one["G1"][:, 0, 0], ref["G1"]) < 1e-10
    many = residual_vertex_metric_multi(m, np.repeat(x, 3, axis=0))
    # (the kernel fold of three copies may differ from one input's in the last bit)
    np.testing.assert_allclose(many["V"], np.broadcast_to(one["V"], many["V"].shape),
                               rtol=1e-13, atol=0)
    np.testing.assert_allclose(many["G1"], np.broadcast_to(one["G1"], many["G1"].shape),
                               rtol=1e-13, atol=0)


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_diagonal_of_distinct_inputs_is_the_one_input_statistics(act):
    """One input's marginal does not know about the others: V_(aa)(aa), G1_aa exactly."""
    m = residual_mlp(act, 0.5, n0=3, width=8, depth=4, n_out=8).with_(C_b=0.1)
    o = residual_vertex_metric_multi(m, X3)
    K1 = pdlt.statistics(m, X3).K[0]
    for a in range(3):
        ref = residual_vertex_metric(m, float(K1[a, a]))
        assert _rel(o["V"][:, a, a, a, a], ref["V"]) < 1e-10
        assert _rel(o["G1"][:, a, a], ref["G1"]) < 1e-10
    V = o["V"]
    assert np.array_equal(V, V.transpose(0, 2, 1, 3, 4))
    assert np.allclose(V, V.transpose(0, 3, 4, 1, 2), rtol=1e-13, atol=1e-15 * np.max(abs(V)))


@pytest.mark.parametrize("act", ["relu", "leaky_relu(0.2)"])
def test_collinear_inputs_of_a_homogeneous_network(act):
    """C_b = 0, ReLU family: z(c x) = c z(x) for c > 0 in every network, so the N-input
    statistics of x, 2x, x/2 are the one-input ones times the scales: every entry, also the
    off-diagonal ones (pair fields, their responses, the dressing, the sigma'' = jump delta
    of the G1 own term)."""
    m = MLP(n0=2, width=8, depth=4, activation=act, C_W=1.5, C_b=0.0, gamma=0.5,
            xi=0.9)
    c = np.array([1.0, 2.0, 0.5])
    x = c[:, None] * np.array([0.6, 0.8])[None, :]
    o = residual_vertex_metric_multi(m, x)
    ref = residual_vertex_metric(m, float(pdlt.statistics(m, x).K[0][0, 0]))
    V = ref["V"][:, None, None, None, None] * np.einsum("a,b,c,d->abcd", c, c, c, c)
    G = ref["G1"][:, None, None] * np.outer(c, c)
    assert _rel(o["V"], V) < 2e-9
    assert _rel(o["G1"], G) < 2e-9


@pytest.mark.parametrize("gamma,xi", [(0.6, 1.0), (-0.4, 1.2)])
def test_deep_linear_residual_closed_form(gamma, xi):
    C_W, L = 0.7, 6
    m = MLP(n0=3, width=16, depth=L, n_out=16, activation="linear", C_W=C_W, C_b=0.0,
            gamma=gamma, xi=xi)
    o = residual_vertex_metric_multi(m, X3)
    chi = xi * xi * C_W + gamma * gamma
    K = C_W * X3 @ X3.T / 3
    V = np.zeros((3,) * 4)
    for l in range(L):
        np.testing.assert_allclose(o["V"][l], V, rtol=1e-12, atol=1e-13 * np.max(np.abs(V)))
        KK = np.einsum("ac,bd->abcd", K, K) + np.einsum("ad,bc->abcd", K, K)
        V = (xi ** 4 * C_W ** 2 + 2 * xi * xi * gamma ** 2 * C_W) * KK + chi ** 2 * V
        K = chi * K
    assert np.max(np.abs(o["G1"])) < 1e-13 * np.max(np.abs(o["V"]))


def test_permuting_inputs_permutes_the_statistics():
    m = residual_mlp("tanh", 0.6, n0=3, width=8, depth=4, n_out=8)
    o = residual_vertex_metric_multi(m, X3)
    p = [2, 0, 1]
    q = residual_vertex_metric_multi(m, X3[p])
    np.testing.assert_allclose(q["V"], o["V"][np.ix_(range(4), p, p, p, p)], rtol=1e-12,
                               atol=1e-14)
    np.testing.assert_allclose(q["G1"], o["G1"][np.ix_(range(4), p, p)], rtol=1e-12,
                               atol=1e-14)


def test_statistics_serves_it_and_the_truncation_is_gone():
    """pdlt.statistics serves the exact N-input V, G1 for any activation; for tanh the old
    three-point truncation differed by ~0.3 % (V) and ~4 % (G1) at gamma = 0.5."""
    m = MLP(n0=3, width=8, depth=4, activation="tanh", C_W=0.7, C_b=0.1, gamma=0.5)
    s = pdlt.statistics(m, X3, get=["V", "G1"])
    o = residual_vertex_metric_multi(m, X3)
    assert np.array_equal(s.V, o["V"]) and np.array_equal(s.G1, o["G1"])
    relu = m.with_(activation="relu", C_W=1.5)
    assert {"V", "G1"} <= set(defined(relu, 2))
    s = pdlt.statistics(relu, X3[:2], get="all")
    assert s.V.shape == (4, 2, 2, 2, 2)
    assert defined(relu, 2) == defined(relu.with_(gamma=0.0), 2)    # every N-input statistic
    with pytest.raises(ValueError, match="exactly one"):
        residual_vertex_metric_multi(m)
    with pytest.raises(ValueError, match="accuracy"):
        residual_vertex_metric_multi(m, X3, accuracy="best")


@pytest.mark.parametrize("act,C_W,N", [("tanh", 0.7, 3), ("gelu", 1.5, 2)])
def test_off_diagonal_metric_two_routes(act, C_W, N):
    """Smooth sigma: the G1 own term's two-depth second derivatives taken directly
    (sigma', sigma'') and by Stein's lemma along the part of z^(l) independent of z^(m)
    (moments E[g F z_i z_j], no derivative) agree off the diagonal too (no exact closed
    form there for smooth sigma; the collinear test covers the ReLU family). Stein loses
    ~(1 - rho^2)^-2 of the four-variable rule's accuracy: measured 3.5e-8 (tanh), 4e-10
    (GELU) relative at depth 5."""
    from pdlt.theory.residual_multi import _vertex_metric_multi
    m = MLP(n0=3, width=8, depth=4, activation=act, C_W=C_W, C_b=0.1, gamma=0.6)
    Ks = pdlt.statistics(m, X3[:N]).K
    a = _vertex_metric_multi(m, Ks, "default")
    b = _vertex_metric_multi(m, Ks, "default", stein=True)
    assert np.array_equal(a["V"], b["V"])
    assert _rel(b["G1"], a["G1"]) < 2e-7
    assert np.max(np.abs(a["G1"][:, 0, 1])) > 0.02 * np.max(np.abs(a["G1"]))   # not trivial


def test_mixed_hyperparameters_diagonal():
    """Per-layer gamma with plain layers inside (their two-depth covariances vanish), per-layer
    xi, C_W, and a plain output layer of another width: the diagonal is still the one-input
    V, G1 (measured 3e-12 with GELU)."""
    m = MLP(n0=3, width=8, depth=6, n_out=2, activation="tanh", C_W=(1.5, 1.2, 1.6, 1.1, 1.3, 1.4),
            C_b=0.1, gamma=(0, 0.6, 0, 0.8, 0.5, 0), xi=(1, 0.9, 1, 1.1, 0.8, 1))
    o = residual_vertex_metric_multi(m, X3[:2])
    K1 = pdlt.statistics(m, X3[:2]).K[0]
    for a in range(2):
        ref = residual_vertex_metric(m, float(K1[a, a]))
        assert _rel(o["V"][:, a, a, a, a], ref["V"]) < 1e-10
        assert _rel(o["G1"][:, a, a], ref["G1"]) < 1e-10


# ---------------------------------------------------------------------------
# B at N inputs (pdlt.theory.residual_multi.residual_b_multi)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_b_gamma_zero_is_the_plain_recursion(act):
    """Unequal widths, C_b > 0, three distinct inputs: the plain fold's B (round-off)."""
    m = MLP(n0=3, widths=(8, 12, 6), activation=act, C_W=1.4, C_b=0.1)
    assert _rel(residual_b_multi(m, X3), pdlt.statistics(m, X3, get=["B"]).B) < 1e-12


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_b_diagonal_and_coinciding_inputs_are_the_one_input_b(act):
    """B_(aa)(aa) of three distinct inputs is the one-input B at K_aa (history sums with
    the two-depth averages at N inputs); three copies of one input are copies."""
    m = residual_mlp(act, 0.5, n0=3, width=8, depth=5, n_out=8).with_(C_b=0.1)
    o = residual_b_multi(m, X3)
    K1 = pdlt.statistics(m, X3).K[0]
    for a in range(3):
        ref = residual_ntk_one_input(m, float(K1[a, a]), stats="B")["B"]
        assert _rel(o[:, a, a, a, a], ref) < 1e-10
    assert np.array_equal(o, o.transpose(0, 3, 4, 1, 2))      # (a1a2) <-> (a3a4): i <-> k
    assert np.array_equal(o, o.transpose(0, 2, 1, 4, 3))
    x = X3[:1]
    one = residual_b_multi(m, x)
    many = residual_b_multi(m, np.repeat(x, 3, axis=0))
    np.testing.assert_allclose(many, np.broadcast_to(one, many.shape), rtol=1e-13, atol=0)


@pytest.mark.parametrize("act", ["relu", "leaky_relu(0.2)"])
def test_b_collinear_inputs_of_a_homogeneous_network(act):
    """C_b = 0, lambda_b = 0, ReLU family: H(c_a x, c_b x) = c_a c_b H(x, x) in every
    network, so B of x, 2x, x/2 is the one-input B times c_a1 c_a2 c_a3 c_a4, every entry
    (the Theta_{a1a3} Theta_{a2a4} slots of the sources and attachments). With lambda_b = 1
    the bias NTK breaks the scaling, and the comparison sees it."""
    c = np.array([1.0, 2.0, 0.5])
    x = c[:, None] * np.array([0.6, 0.8])[None, :]
    cccc = np.einsum("a,b,c,d->abcd", c, c, c, c)
    for lb, ok in ((0.0, True), (1.0, False)):
        m = MLP(n0=2, width=8, depth=5, activation=act, C_W=1.5, C_b=0.0, gamma=0.5, xi=0.9,
                lambda_b=lb)
        ref = residual_ntk_one_input(m, float(pdlt.statistics(m, x).K[0][0, 0]), stats="B")["B"]
        err = _rel(residual_b_multi(m, x), ref[:, None, None, None, None] * cccc)
        assert (err < 1e-10) if ok else (err > 0.1)


def test_b_deep_linear_residual_closed_form():
    """sigma linear, C_b = 0, lambda_b = 0: Theta = theta_l x x^T / n0, and every two-depth
    average is 1, so B = b_l Theta_a1a3 Theta_a2a4 / theta_l^2 with the one-input scalar
    recursion b' = xi^4 C_W^2 th^2 + chi^2 b + 2 xi^2 C_W chi h,
    h' = gamma^2 chi h + xi^2 gamma^2 C_W th^2, B = b + 2 h (attachments h, each averaged
    with <sigma'^2> = 1)."""
    gamma, xi, C_W, L = 0.6, 1.1, 0.7, 6
    m = MLP(n0=3, width=16, depth=L, n_out=16, activation="linear", C_W=C_W, C_b=0.0,
            gamma=gamma, xi=xi, lambda_b=0.0)
    o = residual_b_multi(m, X3)
    G = X3 @ X3.T / 3
    chi = xi * xi * C_W + gamma * gamma
    # K = k G, Theta = th G: k' = chi k, th' = xi^2 lambda_W k + chi th (lambda_W = 1)
    k, th, b, h = C_W, 1.0, 0.0, 0.0
    np.testing.assert_allclose(o[0], 0.0, rtol=0, atol=0)
    for l in range(1, L):
        b, h = (xi ** 4 * C_W ** 2 * th ** 2 + chi * chi * b + 2 * xi * xi * C_W * chi * h,
                gamma ** 2 * chi * h + xi * xi * gamma ** 2 * C_W * th ** 2)
        k, th = chi * k, xi * xi * k + chi * th
        want = (b + 2 * h) * np.einsum("ac,bd->abcd", G, G)
        np.testing.assert_allclose(o[l], want, rtol=1e-12, atol=0)


def test_statistics_serves_b_and_f_at_n_inputs():
    m = residual_mlp("relu", 0.5, n0=3, width=8, depth=4, n_out=8)
    s = pdlt.statistics(m, X3[:2], get=["B", "F"])
    assert np.array_equal(s.B, residual_b_multi(m, X3[:2]))
    assert np.array_equal(s.F, residual_f_multi(m, X3[:2]))
    assert {"B", "F"} <= set(defined(m, 2))
    assert defined(m, 2) == defined(m.with_(gamma=0.0), 2)      # every N-input statistic
    with pytest.raises(ValueError, match="both Ks and Thetas"):
        residual_b_multi(m, Ks=s.K)
    with pytest.raises(ValueError, match="both Ks and Thetas"):
        residual_f_multi(m, Ks=s.K)


# ---------------------------------------------------------------------------
# F at N inputs (pdlt.theory.residual_multi.residual_f_multi)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_f_gamma_zero_is_the_plain_recursion(act):
    """Unequal widths, C_b > 0, three distinct inputs: the plain fold's F (round-off)."""
    m = MLP(n0=3, widths=(8, 12, 6), activation=act, C_W=1.4, C_b=0.1)
    assert _rel(residual_f_multi(m, X3), pdlt.statistics(m, X3, get=["F"]).F) < 1e-12


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_f_diagonal_and_coinciding_inputs_are_the_one_input_f(act):
    """F_(aa)(aa) of three distinct inputs is the one-input F at K_aa (the bilinear forms
    over N-input features, the matrix-valued Stein identities and G^-1); three copies of
    one input are copies; F[a1, a3, a2, a4] = F[a2, a4, a1, a3] (i <-> k)."""
    m = residual_mlp(act, 0.5, n0=3, width=8, depth=4, n_out=8).with_(C_b=0.1)
    o = residual_f_multi(m, X3)
    K1 = pdlt.statistics(m, X3).K[0]
    for a in range(3):
        ref = residual_ntk_one_input(m, float(K1[a, a]), stats="F")["F"]
        assert _rel(o[:, a, a, a, a], ref) < 1e-10
    np.testing.assert_allclose(o, o.transpose(0, 3, 4, 1, 2), rtol=1e-12,
                               atol=1e-14 * np.max(np.abs(o)))
    x = X3[:1]
    one = residual_f_multi(m, x)
    many = residual_f_multi(m, np.repeat(x, 3, axis=0))
    np.testing.assert_allclose(many, np.broadcast_to(one, many.shape), rtol=1e-13, atol=0)


# (exactly collinear kinked pairs are merged into one variable, gaussian._multi.
# _merge_collinear: ~0.1 s; the near-pair form they took after h58 made this 25-110 s)
@pytest.mark.parametrize("act", ["relu", "leaky_relu(0.2)"])
def test_f_collinear_inputs_of_a_homogeneous_network(act):
    """C_b = 0, lambda_b = 0, ReLU family: H scales as c_a c_b, z as c, so F of x, 2x, x/2
    is the one-input F times c_a1 c_a2 c_a3 c_a4 (the increment covariance G is singular
    here: its pseudo-inverse); lambda_b = 1 breaks the scaling and the comparison sees it."""
    c = np.array([1.0, 2.0, 0.5])
    x = c[:, None] * np.array([0.6, 0.8])[None, :]
    cccc = np.einsum("a,b,c,d->abcd", c, c, c, c)
    for lb, ok in ((0.0, True), (1.0, False)):
        m = MLP(n0=2, width=8, depth=5, activation=act, C_W=1.5, C_b=0.0, gamma=0.5, xi=0.9,
                lambda_b=lb)
        ref = residual_ntk_one_input(m, float(pdlt.statistics(m, x).K[0][0, 0]), stats="F")["F"]
        err = _rel(residual_f_multi(m, x), ref[:, None, None, None, None] * cccc)
        assert (err < 1e-10) if ok else (err > 0.1)


# ---------------------------------------------------------------------------
# A and D at N inputs (pdlt.theory.residual_multi.residual_ad_multi)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_ad_gamma_zero_is_the_plain_recursion(act):
    """Unequal widths, C_b > 0, lambda_b != lambda_W, three distinct inputs: the plain
    fold's A and D (round-off)."""
    m = MLP(n0=3, widths=(8, 12, 6, 10), activation=act, C_W=1.4, C_b=0.1, lambda_b=0.5)
    o = residual_ad_multi(m, X3)
    s = pdlt.statistics(m, X3, get=["A", "D"])
    assert _rel(o["A"], s.A) < 1e-12 and _rel(o["D"], s.D) < 1e-12


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_ad_diagonal_and_coinciding_inputs_are_the_one_input_ad(act):
    """A_(aa)(aa), D_(aa)(aa) of three distinct inputs are the one-input A, D at K_aa
    (pdlt.theory.residual_ntk: S and P fields, pair expectations; here pair fields and
    up-to-four-variable averages); three copies of one input are copies; A is symmetric
    under (a1a2) <-> (a3a4) and both under a1 <-> a2."""
    m = residual_mlp(act, 0.5, n0=3, width=8, depth=5, n_out=8).with_(C_b=0.1, lambda_b=0.5)
    o = residual_ad_multi(m, X3)
    K1 = pdlt.statistics(m, X3).K[0]
    for a in range(3):
        ref = residual_statistics(m, float(K1[a, a]), ["A", "D"])
        for k in ("A", "D"):
            assert _rel(o[k][:, a, a, a, a], ref[k]) < 1e-10
    A, D = o["A"], o["D"]
    np.testing.assert_allclose(A, A.transpose(0, 3, 4, 1, 2), rtol=1e-12,
                               atol=1e-13 * np.max(np.abs(A)))
    for T in (A, D):
        assert np.array_equal(T, T.transpose(0, 2, 1, 3, 4))
        assert np.array_equal(T, T.transpose(0, 1, 2, 4, 3))
    x = X3[:1]
    one = residual_ad_multi(m, x)
    many = residual_ad_multi(m, np.repeat(x, 3, axis=0))
    for k in ("A", "D"):
        np.testing.assert_allclose(many[k], np.broadcast_to(one[k], many[k].shape), rtol=1e-13,
                                   atol=0)


def test_ad_deep_linear_residual_is_isotropic_wick():
    """sigma linear, C_b = 0, lambda_b = 0: H_{ii;ab} = x_a^T Q_i x_b and z_{j;a} z_{j;b} =
    x_a^T Z_j x_b with (Q_i, Z_j) invariant under rotations of the input space, so A and D
    are alpha G_12 G_34 + beta (G_13 G_24 + G_14 G_23) (G = x x^T) in every entry; the
    fields' pair bookkeeping (off-diagonal pairs, their responses and own covariances)
    must produce this form. Measured: alpha = 0 (Wick), beta > 0, the fit exact to
    round-off. (The ReLU collinear scaling used for B and F is not available here:
    d<sigma' sigma'>/dK_ab diverges as 1/sin(psi) at collinear inputs, so the N-input
    A, D of the ReLU family are 0 x inf there, in the plain fold too.)"""
    m = MLP(n0=3, width=16, depth=5, n_out=16, activation="linear", C_W=0.7, C_b=0.0,
            gamma=0.6, xi=1.1, lambda_b=0.0)
    o = residual_ad_multi(m, X3)
    G = X3 @ X3.T
    e1 = np.einsum("ab,cd->abcd", G, G).ravel()
    e2 = (np.einsum("ac,bd->abcd", G, G) + np.einsum("ad,bc->abcd", G, G)).ravel()
    basis = np.stack([e1, e2], axis=1)
    for k in ("A", "D"):
        for l in range(1, m.depth):
            T = o[k][l].ravel()
            (alpha, beta), *_ = np.linalg.lstsq(basis, T, rcond=None)
            assert np.max(np.abs(basis @ (alpha, beta) - T)) < 1e-13 * np.max(np.abs(T))
            assert abs(alpha) < 1e-13 * beta and beta > 0


def test_statistics_serves_a_and_d_at_n_inputs():
    m = residual_mlp("tanh", 0.5, n0=3, width=8, depth=4, n_out=8)
    s = pdlt.statistics(m, X3[:2], get=["A", "D"])
    o = residual_ad_multi(m, X3[:2])
    assert np.array_equal(s.A, o["A"]) and np.array_equal(s.D, o["D"])
    assert {"A", "B", "D", "F"} <= set(defined(m, 2))
    assert defined(m, 2) == defined(m.with_(gamma=0.0), 2)      # every N-input statistic
    with pytest.raises(ValueError, match="both Ks and Thetas"):
        residual_ad_multi(m, Ks=s.K)


def test_collinear_kinked_inputs_raise_instead_of_looping():
    """A bias-free residual ReLU network at inputs x, 0.7 x: the field response is NaN
    (relu's infinite d<sigma'sigma'>/drho at rho = 1), which made the nilpotent doubling
    of _stein_lyapunov loop forever; now a FloatingPointError names the cause and fix."""
    m = residual_mlp("relu", 0.5, width=16, depth=4, n_out=16, n0=1)
    for get in ("A", "H1"):
        with pytest.raises(FloatingPointError, match="collinear.*C_b > 0"):
            pdlt.statistics(m, np.array([[1.0], [0.7]]), get=get)
