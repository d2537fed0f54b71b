"""Exact N-input ddNTK statistics S and U of residual MLPs (pdlt.theory.residual_multi_ddii).

References:

* gamma = 0: the plain N-input steps of pdlt.theory.ddntk (same averages: round-off);
* one input, coinciding inputs, and the diagonal of distinct inputs: the one-input
  residual_ddntk_s / residual_ddntk_u of pdlt.theory.residual_ntk (independent code: pair
  expectations by the Mehler series instead of the N-input four-variable averages);
* positively collinear inputs of a ReLU network with C_b = 0 and lambda_b = 0: z(c x) = c z(x),
  gradients and Hessians in the weights scale by c in every network, so every entry of S is
  the one-input value times c_a0 c_a1 c_a2 c_a3 (the B attachments' input slots and Theta's);
* antipodal inputs x, -x of an odd activation with C_b = 0 and lambda_b = 0: z(-x) = -z(x),
  weight gradients and Hessians flip sign, so every entry is the one-input value times
  (-1)^(number of indices on -x): sigma'' is odd, so this checks the slots of every sigma''
  (U's NTK-dNTK correlation, S's sigma''^2 attachments);
* the exact symmetry S_{a0a1a2a3} = S_{a1a0a3a2}, U_{a0a1a2a3} = U_{a1a0a3a2} (transposing
  ``g^T Hs Hs g``), and U = 0 where sigma'' = 0 (ReLU, linear).

Tolerances: the one-input module is accurate to ~1e-13; the two-depth averages here use
pdlt.gaussian.expect_nd one rule up (measured <= 5e-9 relative at the rank-deficient
covariances of antipodal inputs, ~1e-15 on the diagonal); the engine's stated contract is
1e-8 relative, which the symmetry and antipodal checks use.
"""

import numpy as np
import pytest

import pdlt
from pdlt import MLP
from pdlt.theory.kernel import first_layer_kernel
from pdlt.theory.residual import residual_mlp
from pdlt.theory.residual_multi_ddii import residual_su_multi
from pdlt.theory.residual_ntk import residual_ddntk_s, residual_ddntk_u
from pdlt.theory.statistics import defined

X3 = np.array([[1.0, 0.2, -0.3], [0.3, -0.9, 0.5], [-0.6, 0.4, 0.8]])


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


def _one_input(m, x):
    K1 = float(first_layer_kernel(m, np.atleast_2d(x))[0][0, 0])
    return residual_ddntk_s(m, K1), residual_ddntk_u(m, K1)


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_gamma_zero_is_the_plain_recursion(act):
    """Unequal widths, C_b > 0, lambda_b > 0, three distinct inputs: the plain fold's S, U."""
    m = MLP(n0=3, widths=(8, 12, 6, 10), activation=act, C_W=1.1, C_b=0.1, lambda_b=0.5,
            lambda_W=1.3)
    o = residual_su_multi(m, X3)
    s = pdlt.statistics(m, X3, get=["S", "U"])
    assert _rel(o["S"], s.S) < 1e-12
    if act == "relu":
        assert not np.any(o["U"]) and not np.any(s.U)
    else:
        assert _rel(o["U"], s.U) < 1e-12


@pytest.mark.parametrize("act,depth,n", [("relu", 5, 3), ("tanh", 4, 3), ("gelu", 3, 2)])
def test_one_coinciding_and_diagonal_inputs_are_the_one_input_statistics(act, depth, n):
    """(GELU's four-variable averages cost ~10x tanh's: fewer inputs and layers.)"""
    m = residual_mlp(act, 0.5, n0=3, width=8, depth=depth, n_out=8, lambda_b=0.5)
    x = np.vstack([X3[:1], X3[:n]])                 # a copy of input 0, then the others
    o = residual_su_multi(m, x)
    for a in range(n + 1):
        s1, u1 = _one_input(m, x[a])
        assert _rel(o["S"][:, a, a, a, a], s1) < 1e-10, a
        if act == "relu":
            assert not np.any(o["U"]) and not np.any(u1)
        else:
            assert _rel(o["U"][:, a, a, a, a], u1) < 1e-10, a
    for k in ("S", "U"):                             # the copy is a copy, entry by entry
        t = o[k]
        assert np.array_equal(t[:, 1], t[:, 0])
        assert np.array_equal(t[:, :, :, :, 1], t[:, :, :, :, 0])
    one = residual_su_multi(m, X3[:1])
    s1, u1 = _one_input(m, X3[0])
    assert _rel(one["S"][:, 0, 0, 0, 0], s1) < 1e-10


@pytest.mark.parametrize("act", ["tanh", "gelu"])
def test_transpose_symmetry(act):
    m = residual_mlp(act, 0.6, n0=3, width=8, depth=3, n_out=8, lambda_b=0.5)
    o = residual_su_multi(m, X3 if act == "tanh" else X3[:2])
    for k in ("S", "U"):
        t = o[k]
        assert _rel(t.transpose(0, 2, 1, 4, 3), t) < 1e-8, k
    assert np.max(np.abs(o["U"] - o["U"][:, :, :, :, ::-1])) > 1e-3 * np.max(np.abs(o["U"]))


# (exactly collinear kinked pairs are merged into one variable, gaussian._multi.
# _merge_collinear: ~0.1 s; the near-pair form they took after h58 made this 180 s)
def test_relu_collinear_inputs_scale_exactly():
    """(Slow since h58: the exactly collinear pairs, 1 - rho^2 at round-off, now take the
    near-pair four-variable form, ~0.35 s per average on these rank-deficient covariances,
    178 s for this depth-5 fold against ~1 s on the orthant cone form before; open in #15.)
    ``x, 2x, x/2``, C_b = 0, lambda_b = 0: every entry of S is the one-input S times
    ``c_a0 c_a1 c_a2 c_a3``; U = 0 (sigma'' = 0). With lambda_b = 1 the bias gradients break
    the scaling, and the same comparison fails (the check can fail)."""
    c = np.array([1.0, 2.0, 0.5])
    x = c[:, None] * np.array([[0.6, -0.8]])
    cccc = np.einsum("a,b,c,d->abcd", c, c, c, c)
    for lb, ok in ((0.0, True), (1.0, False)):
        m = residual_mlp("relu", 0.5, n0=2, width=8, depth=5, n_out=8, C_b=0.0, lambda_b=lb)
        o = residual_su_multi(m, x)
        s1, _ = _one_input(m, x[0])
        err = _rel(o["S"], s1[:, None, None, None, None] * cccc)
        assert (err < 1e-10) if ok else (err > 1e-3), (lb, err)
        assert not np.any(o["U"])


@pytest.mark.parametrize("act", ["tanh", "erf"])
def test_odd_activation_antipodal_inputs_flip_signs_exactly(act):
    """``x, -x``, odd sigma, C_b = 0, lambda_b = 0: entry = one-input value times
    ``(-1)^(a0 + a1 + a2 + a3)``; lambda_b = 1 (even bias gradients) breaks it, and the
    same comparison fails. At ``accuracy="high"``: the rank-deficient covariances of x, -x
    are the hard case of the quadrature (tanh: the default same-depth rule is 3e-8 off in
    U^(2) there, "high" <= 1.5e-9; erf's closed-form innermost axes ~1e-13)."""
    x = np.array([[0.6, 0.8], [-0.6, -0.8]])
    sign = np.array([(-1.0) ** sum(i) for i in np.ndindex(2, 2, 2, 2)]).reshape((2,) * 4)
    for lb, ok in ((0.0, True), (1.0, False)):
        m = residual_mlp(act, 0.5, n0=2, width=8, depth=4, n_out=8, C_b=0.0, lambda_b=lb)
        o = residual_su_multi(m, x, accuracy="high")
        s1, u1 = _one_input(m, x[0])
        for k, one in (("S", s1), ("U", u1)):
            err = _rel(o[k], one[:, None, None, None, None] * sign)
            assert (err < 1e-8) if ok else (err > 1e-3), (k, lb, err)


def test_linear_u_vanishes_and_closure_is_exact():
    """sigma' = 1: U = 0 and every two-depth average is a product (closure exact)."""
    m = residual_mlp("linear", 0.5, n0=3, width=8, depth=4, n_out=8, lambda_b=0.5)
    o, c = residual_su_multi(m, X3[:2]), residual_su_multi(m, X3[:2], closure=True)
    assert not np.any(o["U"])
    assert _rel(c["S"], o["S"]) < 1e-13


def test_two_depth_terms_matter_for_u():
    """tanh at gamma = 0.7: the closure (two-depth averages -> products) drops most of U's
    NTK-dNTK term (odd sigma: <sigma'' sigma'> = 0 on the diagonal) and moves U^(4) by
    ~5 %, S by less; both are still the same at layer 2 (no history yet)."""
    m = residual_mlp("tanh", 0.7, n0=3, width=8, depth=4, n_out=8, lambda_b=0.5)
    x = X3[:2]
    o, c = residual_su_multi(m, x), residual_su_multi(m, x, closure=True)
    assert _rel(c["U"][1], o["U"][1]) < 1e-12 and _rel(c["S"][1], o["S"][1]) < 1e-12
    assert _rel(c["U"][3], o["U"][3]) > 0.02
    assert _rel(c["S"][3], o["S"][3]) > 1e-3


def test_statistics_serves_s_and_u_at_n_inputs():
    m = residual_mlp("tanh", 0.5, n0=3, width=8, depth=3, n_out=8, lambda_b=0.5)
    s = pdlt.statistics(m, X3[:2], get=["S", "U"])
    o = residual_su_multi(m, X3[:2])
    assert np.array_equal(s.S, o["S"]) and np.array_equal(s.U, o["U"])
    assert s.S.shape == (3, 2, 2, 2, 2)
    assert defined(m, 2) == defined(m.with_(gamma=0.0), 2)       # every statistic
    with pytest.raises(ValueError, match="both Ks and Thetas"):
        residual_su_multi(m, Ks=s.K)
    with pytest.raises(ValueError, match="accuracy must be"):
        residual_su_multi(m, X3[:2], accuracy="best")
    with pytest.raises(TypeError, match="closure must be True or False"):
        residual_su_multi(m, X3[:2], closure="yes")
    with pytest.raises(TypeError, match="mlp must be a pdlt.MLP"):
        residual_su_multi("tanh", X3[:2])
