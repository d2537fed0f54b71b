"""Exact N-input P and Q of residual MLPs (pdlt.theory.residual_multi_dntk): exact references.

* gamma = 0: the plain N-input steps of pdlt.theory.dntk (same averages: round-off);
* the diagonal P_aaaa, Q_aaaa of distinct inputs, one input and coinciding inputs: the
  one-input module pdlt.theory.residual_ntk (residual_dntk_p, residual_dntk_q: independent
  code, scalar forms and pair expectations instead of slot tensors and expect_nd);
* positively collinear inputs of a ReLU-family network (C_b = lambda_b = 0): z(c x) = c z(x)
  and dH scales as c_a0 c_a1 c_a2 in every network, so every entry is the one-input value
  times c_a0 c_a1 c_a2 c_a3 (P = 0: sigma'' = 0 pointwise);
* antipodal inputs of an odd activation (C_b = lambda_b = 0): z(-x) = -z(x) in every
  network, so the entries of x and -x are copies up to the sign (-1)^(number of slots on
  -x): a check of the off-diagonal slot bookkeeping with sigma'' terms;
* the deep linear residual network: P = 0 and Q isotropic under rotations of the inputs;
* layer 2 in closed form (exact at any width), symmetries, and what pdlt.statistics serves.

Tolerances: the one-input module and the same-depth averages are accurate to ~1e-13; the
two-depth averages use expect_nd one rule up for <= 3 variables; four-variable ones (only
off the diagonal) follow the chosen rule ("high": measured 4e-10 on the degenerate
antipodal covariances, "default": 2e-7 there, 5e-8 on ordinary ones).
"""

import numpy as np
import pytest

import pdlt
from pdlt import MLP
from pdlt.gaussian import expect_nd
from pdlt.theory.residual import residual_mlp
from pdlt.theory.residual_multi_dntk import (residual_dntk_multi, residual_dntk_p_multi,
                                            residual_dntk_q_multi)
from pdlt.theory.residual_ntk import residual_dntk_p, residual_dntk_q
from pdlt.theory.statistics import defined

X3 = np.array([[1.0, 0.2, -0.3], [0.3, -0.9, 0.5], [-0.6, 0.4, 0.8]])


def _rel(a, b, scale=None):
    scale = np.max(np.abs(b)) if scale is None else scale
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / scale)


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_gamma_zero_is_the_plain_recursion(act):
    """Unequal widths, C_b > 0, lambda_b != lambda_W, three distinct inputs: the plain
    fold's P and Q (measured 1e-15; ReLU's P is 0 in both)."""
    m = MLP(n0=3, widths=(8, 12, 6, 10), activation=act, C_W=1.4, C_b=0.1, lambda_b=0.5)
    o = residual_dntk_multi(m, X3)
    s = pdlt.statistics(m, X3, get=["P", "Q"])
    scale = np.max(np.abs(s.Q))
    assert _rel(o["P"], s.P, scale) < 1e-12 and _rel(o["Q"], s.Q) < 1e-12
    assert (np.max(np.abs(s.P)) > 0.1 * scale) == (act != "relu")


@pytest.mark.parametrize("act, N", [("relu", 3), ("tanh", 3), ("gelu", 2)])
def test_diagonal_and_coinciding_inputs_are_the_one_input_statistics(act, N):
    """P_aaaa, Q_aaaa of distinct inputs are the one-input P, Q at K_aa (measured 4e-15,
    GELU's Q 1e-13); one input is the one-input value; three copies of it are copies."""
    m = residual_mlp(act, 0.5, n0=3, width=8, depth=4, n_out=8).with_(C_b=0.1)
    o = residual_dntk_multi(m, X3[:N])
    K1 = pdlt.statistics(m, X3[:N]).K[0]
    for a in range(N):
        ref_q = residual_dntk_q(m, float(K1[a, a]))
        ref_p = residual_dntk_p(m, float(K1[a, a]))
        assert _rel(o["Q"][:, a, a, a, a], ref_q) < 1e-10
        assert _rel(o["P"][:, a, a, a, a], ref_p, np.max(np.abs(ref_q))) < 1e-10
    one = residual_dntk_multi(m, X3[:1])
    many = residual_dntk_multi(m, np.repeat(X3[:1], 3, axis=0))
    for k in "PQ":
        np.testing.assert_allclose(many[k], np.broadcast_to(one[k], many[k].shape),
                                   rtol=1e-13, atol=1e-15 * np.max(np.abs(one["Q"])))


def test_mixed_hyperparameters_diagonal():
    """Per-layer gamma with plain layers inside (their two-depth tables are skipped: the
    plain layer's step zeroes every older feature), per-layer xi, C_W, lambda_W."""
    m = MLP(n0=3, width=8, depth=6, n_out=2, activation="tanh",
            C_W=(1.5, 1.2, 1.6, 1.1, 1.3, 1.4), C_b=0.1, gamma=(0, 0.6, 0, 0.8, 0.5, 0),
            xi=(1, 0.9, 1, 1.1, 0.8, 1), lambda_W=(1.0, 0.7, 1.3, 1.1, 0.9, 1.2), lambda_b=0.3)
    o = residual_dntk_multi(m, X3[:2])
    K1 = pdlt.statistics(m, X3[:2]).K[0]
    for a in range(2):
        assert _rel(o["P"][:, a, a, a, a], residual_dntk_p(m, float(K1[a, a]))) < 1e-10
        assert _rel(o["Q"][:, a, a, a, a], residual_dntk_q(m, float(K1[a, a]))) < 1e-10


@pytest.mark.parametrize("act", ["relu", "leaky_relu(0.2)"])
def test_collinear_inputs_of_a_homogeneous_network(act):
    """C_b = 0, lambda_b = 0, ReLU family: x, 2x, x/2 give the one-input Q times
    c_a0 c_a1 c_a2 c_a3 in every entry (measured 4e-15, 4e-14; the increment covariance is
    singular: only its range projector enters); P = 0; lambda_b = 1 breaks the scaling and
    the same comparison sees it (0.5)."""
    c = np.array([1.0, 2.0, 0.5])
    x = c[:, None] * np.array([0.6, 0.8])[None, :]
    cccc = np.einsum("a,b,c,d->abcd", c, c, c, c)
    for lb, ok in ((0.0, True), (1.0, False)):
        m = MLP(n0=2, width=8, depth=4, activation=act, C_W=1.5, C_b=0.0, gamma=0.5, xi=0.9,
                lambda_b=lb)
        ref = residual_dntk_q(m, float(pdlt.statistics(m, x).K[0][0, 0]))
        o = residual_dntk_multi(m, x)
        err = _rel(o["Q"], ref[:, None, None, None, None] * cccc)
        assert (err < 1e-10) if ok else (err > 0.1)
        assert np.all(o["P"] == 0.0)


def test_antipodal_inputs_of_an_odd_network():
    """tanh, C_b = 0, lambda_b = 0, inputs x0, x1, -x0: z(-x) = -z(x) in every network, so
    P and Q with a slot on -x0 are those with x0 there times -1 per such slot (measured
    3e-10 and 4e-10 at accuracy "high"; the kernel and the increment covariance are
    singular). lambda_b = 0.5 breaks the symmetry (bias derivatives do not flip) and the
    comparison sees it (1.3)."""
    X = np.array([X3[0], X3[1], -X3[0]])
    sign = np.array([1.0, 1.0, -1.0])
    s4 = np.einsum("a,b,c,d->abcd", sign, sign, sign, sign)
    same = np.array([0, 1, 0])
    for lb, ok in ((0.0, True), (0.5, False)):
        m = MLP(n0=3, width=8, depth=4, activation="tanh", C_W=0.9, C_b=0.0, gamma=0.6,
                xi=0.8, lambda_b=lb)
        o = residual_dntk_multi(m, X, accuracy="high")
        for k in "PQ":
            ref = o[k][np.ix_(range(4), same, same, same, same)] * s4
            err = _rel(o[k], ref)
            assert (err < 1e-8) if ok else (err > 0.1)


def test_deep_linear_residual_is_isotropic():
    """sigma linear, C_b = lambda_b = 0: dH_{a0a1a2} z_{a3} is a polynomial of degree one in
    each input, and the network's law is invariant under rotations of the input space, so
    Q = alpha G01 G23 + beta G02 G13 + delta G03 G12 (G = x x^T) in every entry (three
    numbers for 81 entries; measured: the fit exact to 2e-15). Moreover alpha = delta = 0:
    in ``dH_{jjk;a0a1a2}`` the twice-differentiated ``z_{j;a0}`` shares one weight's input
    contraction with ``z_{k;a2}`` (``x_a0 . x_a2``), and the other derivative leaves
    ``z_{j;a1}``-like factors that pair with ``z_{k;a3}`` (a two-layer linear network shows
    it in one line); measured |alpha|, |delta| <= 3e-16 beta. P = 0 (sigma'' = 0)."""
    m = MLP(n0=3, width=16, depth=5, n_out=16, activation="linear", C_W=0.7, C_b=0.0,
            gamma=0.6, xi=1.1, lambda_b=0.0, lambda_W=1.3)
    o = residual_dntk_multi(m, X3)
    assert np.all(o["P"] == 0.0)
    G = X3 @ X3.T
    basis = np.stack([np.einsum("ab,cd->abcd", G, G).ravel(),
                      np.einsum("ac,bd->abcd", G, G).ravel(),
                      np.einsum("ad,bc->abcd", G, G).ravel()], axis=1)
    for l in range(1, m.depth):
        T = o["Q"][l].ravel()
        coef, *_ = np.linalg.lstsq(basis, T, rcond=None)
        assert np.max(np.abs(basis @ coef - T)) < 1e-13 * np.max(np.abs(T))
        assert coef[1] > 0 and max(abs(coef[0]), abs(coef[2])) < 1e-13 * coef[1]


def test_layer_two_closed_form():
    """Layer 2 is exact at any width: P = xi^4 C_W^2 Th01 Th02 <q0 p1 p2 s3>
    + xi^2 g^2 C_W Th01 Th02 <q0 s3>, Q = xi^4 C_W^2 Th01 Th02 <q0 p1 p2 s3>
    + lW xi^4 C_W Th02 <p0 s1 p2 s3> + xi^2 g^2 C_W Th01 Th02 <q0 p1 z3>
    + lW xi^2 g^2 Th02 <p0 s1 z3> (averages at K^(1), here by expect_nd from scratch;
    measured 2e-11, 9e-12)."""
    m = MLP(n0=3, width=8, depth=2, activation="tanh", C_W=1.1, C_b=0.2, gamma=0.6, xi=0.9,
            lambda_b=0.4, lambda_W=1.3)
    x = X3[:2]
    st = pdlt.statistics(m, x)
    K, Th = st.K[0], st.Theta[0]
    o = residual_dntk_multi(m, x)
    act = m.activation
    f = {"s": act.sigma, "p": act.d1, "q": act.d2, "z": lambda z: z}
    cw, g, xi, lw = m.C_W[1], m.gamma[1], m.xi[1], m.lambda_W[1]

    def avg(kinds, idx):
        """<prod f_kind(z_idx)>, factors on one input merged into one function."""
        by = {}
        for k, i in zip(kinds, idx):
            by.setdefault(i, []).append(f[k])
        ins = list(by)
        fs = [(lambda fl: lambda z: np.prod([h(z) for h in fl], axis=0))(by[i]) for i in ins]
        return float(expect_nd(fs, K[np.ix_(ins, ins)], accuracy="high"))

    for t in np.ndindex(2, 2, 2, 2):
        a0, a1, a2, a3 = t
        th = Th[a0, a1] * Th[a0, a2]
        qpps = avg("qpps", [a0, a1, a2, a3])
        P = xi ** 4 * cw ** 2 * th * qpps + xi ** 2 * g * g * cw * th * avg("qs", [a0, a3])
        Q = (xi ** 4 * cw ** 2 * th * qpps + lw * xi ** 4 * cw * Th[a0, a2]
             * avg("psps", [a0, a1, a2, a3]) + xi ** 2 * g * g * cw * th
             * avg("qpz", [a0, a1, a3]) + lw * xi ** 2 * g * g * Th[a0, a2]
             * avg("psz", [a0, a1, a3]))
        assert abs(o["P"][1][t] - P) < 1e-10 * np.max(np.abs(o["P"][1]))
        assert abs(o["Q"][1][t] - Q) < 1e-10 * np.max(np.abs(o["Q"][1]))


def test_symmetries():
    """P_{a0a1a2a3} = P_{a0a2a1a3} (dH is symmetric in its last two slots and both sit on
    neuron k), and permuting the inputs permutes every index."""
    m = residual_mlp("tanh", 0.5, n0=3, width=8, depth=3, n_out=8).with_(C_b=0.1)
    o = residual_dntk_multi(m, X3)
    np.testing.assert_allclose(o["P"], o["P"].transpose(0, 1, 3, 2, 4), rtol=0,
                               atol=1e-12 * np.max(np.abs(o["P"])))
    perm = np.array([2, 0, 1])
    op = residual_dntk_multi(m, X3[perm])
    for k in "PQ":
        ref = o[k][np.ix_(range(3), perm, perm, perm, perm)]
        assert _rel(op[k], ref) < 1e-12
    assert np.max(np.abs(o["Q"] - o["Q"].transpose(0, 1, 3, 2, 4))) > 1e-3 * np.max(
        np.abs(o["Q"]))                                           # Q has no such symmetry


def test_statistics_serves_p_and_q_at_n_inputs():
    m = residual_mlp("tanh", 0.5, n0=3, width=8, depth=4, n_out=8)
    s = pdlt.statistics(m, X3[:2], get=["P", "Q"])
    assert np.array_equal(s.P, residual_dntk_p_multi(m, X3[:2]))
    assert np.array_equal(s.Q, residual_dntk_q_multi(m, X3[:2]))
    assert {"P", "Q"} <= set(defined(m, 2))
    with pytest.raises(ValueError, match="stats must name 'P' and/or 'Q'"):
        residual_dntk_multi(m, X3[:2], stats=("R",))
    with pytest.raises(ValueError, match="both Ks and Thetas"):
        residual_dntk_multi(m, Ks=s.K)
    with pytest.raises(ValueError, match="accuracy"):
        residual_dntk_multi(m, X3[:2], accuracy="best")
