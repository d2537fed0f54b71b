"""N-input NTK statistics A..U (pdlt.theory.ntk, dntk, ddntk): exact forms, operators, symmetries.

One input against the hand-written one-input lines and coinciding inputs:
tests/theory/test_statistics.py; here also the dNTK and ddNTK steps at
coinciding inputs without merging (the N-input operators at rho = 1).

Deep linear closed forms (derived by hand from the module's recursions,
independently of the code): sigma(z) = z, C_b = 0, C_W = 1, equal widths, so
K^(l) = K1, Theta_m = m Theta1 with Theta1 = lambda_b + lambda_W x.x/n0, and
with ``P4 = K13 K24 + K14 K23``:
A_l = lambda_W^2 sum_{m<l} m^2 P4, B_l[a1,a2,a3,a4] = sum_{m<l} m^2 Theta1_13 Theta1_24,
D_l = lambda_W l (l-1)/2 P4, F_l[a1,a2,a3,a4] = sum_{m<l} m Theta1_13 K1_24.
"""

import numpy as np
import pytest

import pdlt
from pdlt import gaussian
from pdlt.activations import activation
from pdlt.gaussian._multi import expect_nd
from pdlt.theory._averages import LayerAverages, OneVariableTable, Integrands, apply_M
from pdlt.theory.kernel import LayerHyper
from pdlt.theory.statistics import layer_step

from one_input_oracles import ddntk, dntk  # tests/theory, on sys.path

X3 = np.array([[1.0, 0.2], [-0.3, 1.1], [0.7, -0.9]])


def ntk_fluctuation_flow(mlp, x=None, stats=None, **kw):
    return pdlt.statistics(mlp, x, get=stats or list("ABDFPQRSTU"), **kw)


def averages(act, K):
    K = np.asarray(K, dtype=float)
    return LayerAverages(act, K, OneVariableTable(act, np.diag(K).copy()))


def coinciding(act, N, k, th, vals, names, hp, merge, accuracy="high"):
    """One layer step at N copies of one input (merged, or the full N-input path)."""
    state = {n: np.full((N,) * 4, v) for n, v in vals.items()}
    return layer_step(act, np.full((N, N), k), np.full((N, N), th), state, names, hp,
                      merge=merge, accuracy=accuracy)[0]


def test_deep_linear_closed_forms():
    L, lb, lw = 6, 0.5, 1.5
    mlp = pdlt.MLP(n0=2, width=16, depth=L, activation="linear", C_W=1.0, C_b=0.0,
                   lambda_b=lb, lambda_W=lw)
    f = ntk_fluctuation_flow(mlp, X3)
    K1 = X3 @ X3.T / 2
    T1 = lb + lw * K1
    P4 = np.einsum("ac,bd->abcd", K1, K1) + np.einsum("ad,bc->abcd", K1, K1)
    TT = np.einsum("ac,bd->abcd", T1, T1)
    TK = np.einsum("ac,bd->abcd", T1, K1)
    for l in range(1, L + 1):
        s2, s1 = sum(m * m for m in range(1, l)), sum(range(1, l))
        np.testing.assert_allclose(f["A"][l - 1], lw ** 2 * s2 * P4, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f["B"][l - 1], s2 * TT, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f["D"][l - 1], lw * l * (l - 1) / 2 * P4, rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_allclose(f["F"][l - 1], s1 * TK, rtol=1e-12, atol=1e-12)


def _kernel(name):
    mlp = pdlt.MLP(n0=2, width=8, depth=2, activation=name, C_W=1.5, C_b=0.1)
    return pdlt.flow(mlp, X3).K[1]


def _pair(act, K, f, g):
    sh = Integrands(act, f=f, g=g)
    return gaussian.pair_expectations(sh, K, (("f", "g"),), rtol=1e-13)[("f", "g")]


@pytest.mark.parametrize("name", ["tanh", "relu", "gelu"])
def test_derivative_operators_against_finite_differences(name):
    """sum_b M_{(a1a2)(b1b2)} X_b = d/dt <F_a1a2>_{K + t X} for F = s s and p p."""
    act = activation(name)
    K = _kernel(name)
    X = np.array([[0.3, -0.1, 0.2], [-0.1, 0.5, 0.05], [0.2, 0.05, -0.2]])
    avg = averages(act, K)
    h = 1e-4
    for op, f in ((avg.Mss, act.sigma), (avg.Mpp, act.d1)):
        fd = (_pair(act, K + h * X, f, f) - _pair(act, K - h * X, f, f)) / (2 * h)
        np.testing.assert_allclose(apply_M(op, X), fd, rtol=2e-6, atol=2e-7)


def test_relu_pp_derivative_closed_form():
    """ReLU: d<p_a p_b>/dK_ab = 1 / (2 pi sqrt(K_aa K_bb) sin psi) (Hermite form, kinked path)."""
    K = _kernel("relu")
    Dd, Do = averages(activation("relu"), K)._hermite_pp()
    d = np.sqrt(np.diag(K))
    cos = K / np.outer(d, d)
    sin = np.sqrt(1 - np.minimum(cos, 1) ** 2)
    off = ~np.eye(3, dtype=bool)
    sin[~off] = 1.0
    np.testing.assert_allclose(Do[off], (1 / (2 * np.pi * np.outer(d, d) * sin))[off], rtol=1e-6)
    # d/dK_aa of (pi - psi)/(2 pi) = -cos psi / (4 pi K_aa sin psi)
    np.testing.assert_allclose(Dd[off], (-cos / (4 * np.pi * np.diag(K)[:, None] * sin))[off],
                               rtol=1e-6)


@pytest.mark.parametrize("name", ["tanh", "relu"])
def test_first_derivative_G_by_integration_by_parts(name):
    """<z_c p_a1 s_a2> = sum_b K_cb G_{(a1a2)b} with G_{(a1a2)b} = <d_b (p_a1 s_a2)>."""
    act = activation(name)
    K = _kernel(name)
    G = averages(act, K).G
    N = 3
    p, s = act.d1, act.sigma
    for a1 in range(N):
        for a2 in range(N):
            for c in range(N):
                if a1 == a2:
                    fs, idx = ([lambda z: p(z) * s(z), lambda z: z], [a1, c])
                else:
                    fs, idx = ([p, s, lambda z: z], [a1, a2, c])
                Ks = K[np.ix_(idx, idx)]
                lhs = float(expect_nd(fs, Ks, kinks=act.kinks, accuracy="high"))
                np.testing.assert_allclose(lhs, K[c] @ G[a1, a2], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["relu", "tanh", "gelu"])
def test_index_symmetries(name):
    mlp = pdlt.MLP(n0=2, width=16, depth=4, activation=name, C_W=1.5, C_b=0.1,
                   lambda_b=0.5, lambda_W=1.5)
    f = ntk_fluctuation_flow(mlp, X3)
    A, B, D, F = (f[s][-1] for s in "ABDF")

    def same(T, perm):
        np.testing.assert_allclose(T, np.transpose(T, perm), rtol=1e-12, atol=1e-14)
    for perm in ((1, 0, 2, 3), (0, 1, 3, 2), (2, 3, 0, 1)):
        same(A, perm)
    same(B, (2, 3, 0, 1))
    same(B, (1, 0, 3, 2))
    assert not np.allclose(B, np.transpose(B, (1, 0, 2, 3)))   # not a1 <-> a2 alone
    same(D, (1, 0, 2, 3))
    same(D, (0, 1, 3, 2))
    same(F, (2, 3, 0, 1))
    for s in "ABDF":
        assert np.all(f[s][0] == 0)


def test_stats_selection_and_unknown_names():
    mlp = pdlt.MLP(n0=2, width=8, depth=3, activation="tanh")
    f = ntk_fluctuation_flow(mlp, X3, stats=["A", "R"])
    assert {"A", "R"} <= set(f.computed()) and f.S is None
    with pytest.raises(ValueError, match="get"):
        ntk_fluctuation_flow(mlp, X3, stats=["Z"])
    f = ntk_fluctuation_flow(mlp, X3, stats=["B"])
    assert f.B is not None and f.A is None


@pytest.mark.parametrize("name,merge,tol", [
    ("relu", True, 1e-12), ("tanh", True, 1e-12), ("gelu", True, 1e-12), ("erf", True, 1e-12),
    ("gelu", False, 1e-10), ("linear", False, 1e-12), ("relu", False, 1e-7),
    ("tanh", False, 1e-4)])
def test_dntk_coinciding_inputs_reduce_to_single_input(name, merge, tol):
    act = activation(name)
    k, th, B, F, P, Q = 0.8, 1.3, 0.3, 0.25, 0.15, -0.35
    ref = dntk(OneVariableTable(act, k), th, B, F, P, Q, 1.7, 0.6, 1.3)
    out = coinciding(act, 3 if merge else 2, k, th, dict(B=B, F=F, P=P, Q=Q), "PQ",
                     LayerHyper(0.0, 1.7, 0.0, 0.6, ratio=1.3), merge)
    for s, r in zip("PQ", ref):
        np.testing.assert_allclose(out[s], r, rtol=tol, atol=tol)


def test_dntk_deep_linear_closed_forms():
    L, lb, lw = 6, 0.5, 1.5
    mlp = pdlt.MLP(n0=2, width=16, depth=L, activation="linear", C_W=1.0, C_b=0.0,
                   lambda_b=lb, lambda_W=lw)
    f = ntk_fluctuation_flow(mlp, X3, stats=["P", "Q"])
    K1 = X3 @ X3.T / 2
    T1 = lb + lw * K1
    TK = np.einsum("ac,bd->abcd", T1, K1)        # Theta1_{a0a2} K1_{a1a3}
    for l in range(1, L + 1):
        np.testing.assert_allclose(f["P"][l - 1], 0.0, atol=1e-12)
        c = lw * sum(m * (m + 1) / 2 for m in range(1, l))
        np.testing.assert_allclose(f["Q"][l - 1], c * TK, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["tanh", "gelu"])
def test_dntk_symmetry_and_single_input_x(name):
    mlp = pdlt.MLP(n0=2, width=16, depth=4, activation=name, C_W=1.5, C_b=0.1,
                   lambda_b=0.5, lambda_W=1.5)
    f = ntk_fluctuation_flow(mlp, X3)
    P, Q = f["P"][-1], f["Q"][-1]
    np.testing.assert_allclose(P, np.transpose(P, (0, 2, 1, 3)), rtol=1e-12, atol=1e-14)
    assert np.max(np.abs(P)) > 0 and np.max(np.abs(Q)) > 0
    x = X3[:1]
    a = ntk_fluctuation_flow(mlp, x)
    b = ntk_fluctuation_flow(mlp, K1=0.1 + 1.5 * float(x[0] @ x[0]) / 2)
    for s in "PQ":
        np.testing.assert_allclose(a[s].reshape(-1), b[s], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------
# ddNTK tensors R, S, T, U
# ---------------------------------------------------------------------------

DD_VALS = dict(B=0.3, F=0.25, P=0.15, Q=-0.35, R=0.2, S=-0.1, T=0.4, U=0.05)


def _dd_coinciding(name, N, merge, C_W, accuracy="high"):
    act = activation(name)
    k, th = 0.8, 1.3
    ref = ddntk(OneVariableTable(act, k), th, *DD_VALS.values(), C_W, 0.6, 1.3)
    out = coinciding(act, N, k, th, DD_VALS, "RSTU", LayerHyper(0.0, C_W, 0.0, 0.6, ratio=1.3),
                     merge, accuracy)
    return out, dict(zip("RSTU", ref))


@pytest.mark.parametrize("name,merge,tol", [
    ("relu", True, 1e-12), ("tanh", True, 1e-12), ("gelu", True, 1e-12), ("erf", True, 1e-12),
    ("swish", True, 1e-12), ("linear", True, 1e-12),
    ("gelu", False, 1e-8), ("linear", False, 1e-12), ("relu", False, 1e-7),
    ("tanh", False, 2e-3)])
def test_ddntk_coinciding_inputs_reduce_to_single_input(name, merge, tol):
    """With C_W = 1 (see the S note below) every tensor entry equals the one-input value.

    Without merging, the four-variable rule at rho = 1 limits the accuracy
    (tanh's sech^8-type integrands: ~1e-3 for R at "high", see
    pdlt.gaussian._multi; gelu ~1e-9).
    """
    out, ref = _dd_coinciding(name, 3 if merge else 2, merge, 1.0)
    for s in "RSTU":
        np.testing.assert_allclose(out[s], ref[s], rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["relu", "tanh", "gelu", "erf", "swish", "linear"])
def test_ddntk_coinciding_inputs_reduce_to_single_input_any_C_W(name):
    """C_W != 1: R, S, T, U equal the one-input lines; S also equals the line written out
    here, whose B-propagation term is C_W^2 Theta <q^2> <p^2> B (four layer-(l+1)
    weights; an earlier one-input copy had chi_perp C_W^2 = C_W^3 there, equal only at
    C_W = 1, refuted by a C_W = 3 ensemble)."""
    C_W, lW, r, k, th = 1.7, 0.6, 1.3, 0.8, 1.3
    out, ref = _dd_coinciding(name, 3, True, C_W)
    for s in "RSTU":
        np.testing.assert_allclose(out[s], ref[s], rtol=1e-12, atol=1e-12)
    t = OneVariableTable(activation(name), k)
    B, S, pp = DD_VALS["B"], DD_VALS["S"], t["pp"]
    S_ref = (C_W ** 2 * th ** 3 * t["qqpp"] + lW * C_W * th ** 2 * t["pppp"]
             + r * (C_W ** 2 * th * t["qq"] * pp * B + C_W ** 2 * pp ** 2 * S
                    + lW * C_W * pp ** 2 * B))
    np.testing.assert_allclose(out["S"], S_ref, rtol=1e-12, atol=1e-12)


def test_ddntk_deep_linear_closed_forms():
    """sigma(z) = z, C_b = 0, C_W = 1, equal widths; Theta_m = m Theta1 and (hand-derived
    from the module's recursions with q = 0, p = 1, Phi_{(ac)b} = lambda_W delta_bc):
    R = U = 0, S_l = lambda_W Theta1_02 Theta1_13 sum_{m<l} (m^2 + sum_{k<m} k^2),
    T_l = lambda_W^2 Theta1_01 K1_23 sum_{m<l} (m + m(m-1)/2 + 2 sum_{k<m} k(k+1)/2)."""
    L, lb, lw = 6, 0.5, 1.5
    mlp = pdlt.MLP(n0=2, width=16, depth=L, activation="linear", C_W=1.0, C_b=0.0,
                   lambda_b=lb, lambda_W=lw)
    f = ntk_fluctuation_flow(mlp, X3, stats=["R", "S", "T", "U"])
    K1 = X3 @ X3.T / 2
    T1 = lb + lw * K1
    S_shape = np.einsum("ac,bd->abcd", T1, T1)          # Theta1_{a0a2} Theta1_{a1a3}
    T_shape = np.einsum("ab,cd->abcd", T1, K1)          # Theta1_{a0a1} K1_{a2a3}
    for l in range(1, L + 1):
        cs = sum(m * m + sum(k * k for k in range(1, m)) for m in range(1, l))
        ct = sum(m + m * (m - 1) / 2 + 2 * sum(k * (k + 1) / 2 for k in range(1, m))
                 for m in range(1, l))
        np.testing.assert_allclose(f["R"][l - 1], 0.0, atol=1e-12)
        np.testing.assert_allclose(f["U"][l - 1], 0.0, atol=1e-12)
        np.testing.assert_allclose(f["S"][l - 1], lw * cs * S_shape, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f["T"][l - 1], lw ** 2 * ct * T_shape, rtol=1e-12,
                                   atol=1e-12)


@pytest.mark.parametrize("name", ["tanh", "gelu", "relu"])
def test_ddntk_symmetries_and_single_input_x(name):
    """R_{a0a1a2a3} = R_{a0a1a3a2} (mu2 <-> mu3 in ddIH); S, T, U are invariant under the
    simultaneous swap a0 <-> a1, a2 <-> a3 (mu2 <-> mu3 in ddIIH with i0 <-> i1, i2 <-> i3)."""
    mlp = pdlt.MLP(n0=2, width=16, depth=4, activation=name, C_W=1.5, C_b=0.1,
                   lambda_b=0.5, lambda_W=1.5)
    f = ntk_fluctuation_flow(mlp, X3, stats=["R", "S", "T", "U"])
    R, S, T, U = (f[s][-1] for s in "RSTU")

    def same(X, perm):
        np.testing.assert_allclose(X, np.transpose(X, perm), rtol=1e-12, atol=1e-14)
    same(R, (0, 1, 3, 2))
    for X in (S, T, U):
        same(X, (1, 0, 3, 2))
    assert not np.allclose(T, np.transpose(T, (1, 0, 2, 3)))
    assert not np.allclose(S, np.transpose(S, (0, 1, 3, 2)))
    for s in "RSTU":
        assert np.all(f[s][0] == 0)
    if name != "relu":
        assert all(np.max(np.abs(X)) > 0 for X in (R, S, T, U))
    x = X3[:1]
    a = ntk_fluctuation_flow(mlp, x, stats=["R", "T", "U"])
    b = ntk_fluctuation_flow(mlp, K1=0.1 + 1.5 * float(x[0] @ x[0]) / 2)
    for s in "RTU":
        np.testing.assert_allclose(a[s].reshape(-1), b[s], rtol=1e-9, atol=1e-12)


def test_ddntk_relu_R_U_vanish_and_elu_R_refused():
    mlp = pdlt.MLP(n0=2, width=16, depth=4, activation="relu", C_W=2.0, lambda_b=0.3)
    f = ntk_fluctuation_flow(mlp, X3, stats=["R", "U"])
    assert np.all(f["R"][-1] == 0) and np.all(f["U"][-1] == 0)
    elu = pdlt.MLP(n0=2, width=8, depth=3, activation="elu", C_W=1.0, C_b=0.1)
    with pytest.raises(ValueError, match="jumps"):
        ntk_fluctuation_flow(elu, X3, stats=["R"])
    g = ntk_fluctuation_flow(elu, X3[:2], stats=["S", "T", "U"])
    assert np.all(np.isfinite(g["T"][-1]))


@pytest.mark.slow
@pytest.mark.parametrize("act,C_W", [("tanh", 1.5), ("gelu", 1.8)])
def test_multi_input_ddntk_vs_ensemble(act, C_W):
    """R, S, T, U for two inputs against real networks (C_b = 0.1, widths 4 and 8, depth 3,
    M = 1000; method of tests/experiment/test_ntk_multi_ensemble.py: Richardson
    extrapolation 2 m(2n) - m(n) within 4 se plus a quarter of the half-shift allowance for
    the O(1/n^2) rest). Needs torch (/tmp/venv); 33-38 s each on a loaded 2-core machine.
    Measured max z over all entries of layers 2, 3: tanh 0.74 (R), 0.55 (S), 1.63 (T),
    1.13 (U); gelu 1.44, 0.75, 1.07, 1.22. The index orders matter: S and T read with
    a0 <-> a1 or a2 <-> a3 swapped fail by z = 206, 29 (tanh) and 134, 20 (gelu)."""
    pytest.importorskip("torch")
    from pdlt.experiment import Ensemble

    x = X3[:2]
    stats = ["R", "S", "T", "U"]

    def mlp(n):
        return pdlt.MLP(n0=2, width=n, depth=3, n_out=n, activation=act, C_W=C_W,
                        C_b=0.1, lambda_b=0.5, lambda_W=1.5)
    m1 = Ensemble(mlp(4), networks=1000, seed=11).measure(x, stats=stats, progress=False)
    m2 = Ensemble(mlp(8), networks=1000, seed=11).measure(x, stats=stats, progress=False)
    th = ntk_fluctuation_flow(mlp(4), x, stats=stats)
    wrong = {"S": (0, 2, 1, 3, 4), "T": (0, 1, 2, 4, 3)}
    for s in stats:
        a, b = m1[s], m2[s]
        ext = 2 * np.asarray(b.mean) - np.asarray(a.mean)
        se = np.sqrt(4 * np.asarray(b.stderr) ** 2 + np.asarray(a.stderr) ** 2)
        allowance = 0.5 * np.abs(np.asarray(b.mean) - np.asarray(a.mean))
        tol = se + allowance / 4 + 1e-12
        z = np.abs(ext - th[s])[1:] / tol[1:]
        assert z.max() < 4, f"{act} {s}: max z per layer {z.reshape(2, -1).max(1)}"
        if s in wrong:
            assert (np.abs(ext - np.transpose(th[s], wrong[s])) / tol)[1:].max() > 8
