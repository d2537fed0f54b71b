"""Exact checks of the N-input NTK mean H1 of residual MLPs (pdlt.theory.residual_multi_mean).

Derivation: docs/derivations/residual_ntk_multi.md, section "H1 and kappa3 at N inputs (h39)".
Real networks: tests/experiment/test_residual_multi_mean_ensemble.py.

* gamma = 0 (unequal widths, C_b > 0, lambda_b != lambda_W): the plain N-input H1 of
  pdlt.theory.ntk_mean to round-off;
* the diagonal H1_aa of distinct inputs of different norms: the one-input
  residual_ntk_mean at K_aa (independent code: Mehler-series pair averages, one-input
  fields and forms), relu, tanh, gelu; copies of an input are copies;
* deep linear residual network: H1 = 0 at every layer (sigma' = 1 closes the averaged
  forward equation on E[H], and E[z z] = K);
* symmetry H1_ab = H1_ba, permutation equivariance;
* continuity off the diagonal (tanh): two inputs at distance eps give an off-diagonal
  entry within O(eps^2) of the mean of the two diagonal ones;
* the bilinear forms copied from residual_multi's F recursion read out F exactly, and
  have the structure the Stein step of the own term relies on.
"""

import warnings

import numpy as np
import pytest

import pdlt
from pdlt.theory.kernel import first_layer_kernel, kernel_fold
from pdlt.theory.residual_multi import residual_f_multi
from pdlt.theory.residual_multi_mean import residual_ntk_mean_multi
from pdlt.theory.residual_ntk import residual_ntk_mean

X2 = np.array([[1.0, 0.0], [0.78, 1.04]])                 # norms 1 and 1.3
X3 = np.array([[1.0, 0.0], [0.78, 1.04], [-0.5, 0.7]])


def _res(act, depth=5, **kw):
    kw = dict(dict(C_W=1.3, C_b=0.1, lambda_b=0.5, gamma=0.5), **kw)
    return pdlt.MLP(n0=2, width=8, depth=depth, activation=act, **kw)


@pytest.mark.parametrize("act", ["relu", pytest.param("tanh", marks=pytest.mark.slow),
                                 pytest.param("gelu", marks=pytest.mark.slow)])
def test_gamma_zero_is_the_plain_recursion(act):
    """gamma = 0, unequal widths, C_b > 0, lambda_b = 0.5: the plain fold's H1 (measured
    relu 1.4e-12, tanh 3.8e-13, gelu 7.9e-13 relative to max |H1|)."""
    m = pdlt.MLP(n0=2, widths=(8, 12, 6, 10), activation=act, C_W=1.4, C_b=0.1, lambda_b=0.5)
    x = X3 if act == "relu" else X2
    got = residual_ntk_mean_multi(m, x)
    want = pdlt.statistics(m, x, get="H1").H1
    assert np.max(np.abs(got - want)) <= 1e-11 * np.max(np.abs(want))


@pytest.mark.parametrize("act", ["relu", pytest.param("tanh", marks=pytest.mark.slow),
                                 pytest.param("gelu", marks=pytest.mark.slow)])
def test_diagonal_is_the_one_input_value(act):
    """H1_aa of distinct inputs (norms 1, 1.3) = residual_ntk_mean at K_aa (measured
    <= 5e-12 relative: the two codes' quadratures); depth 4 (slow: 5), gamma 0.5."""
    m = _res(act, depth=4 if act == "relu" else 5)
    h = residual_ntk_mean_multi(m, X2)
    for a in range(2):
        K1 = float(first_layer_kernel(m, X2[a:a + 1])[0][0, 0])
        one = residual_ntk_mean(m, K1)
        assert np.max(np.abs(h[:, a, a] - one)) <= 1e-10 * np.max(np.abs(one))
    assert np.all(h[:2] == 0.0) and np.all(np.abs(h[2:]) > 1e-3)


def test_copies_symmetry_and_permutations():
    """Repeated inputs are copies; H1 is symmetric and permutation equivariant."""
    m = _res("relu", depth=3)
    h = residual_ntk_mean_multi(m, X3)
    np.testing.assert_allclose(h, np.swapaxes(h, 1, 2), rtol=0, atol=1e-14 * np.abs(h).max())
    perm = [2, 0, 1]
    hp = residual_ntk_mean_multi(m, X3[perm])
    np.testing.assert_allclose(hp, h[:, perm][:, :, perm], rtol=1e-12,
                               atol=1e-12 * np.abs(h).max())
    hc = residual_ntk_mean_multi(m, X3[[0, 1, 0]])
    np.testing.assert_array_equal(hc[:, 0, 2], hc[:, 0, 0])
    # (the kernels of three and of two inputs differ in the last bit: rtol 1e-11)
    np.testing.assert_allclose(hc[:, :2, :2], residual_ntk_mean_multi(m, X3[:2]), rtol=1e-11)


def test_deep_linear_is_zero():
    """sigma linear: H1 = 0 at every layer (every term carries a derivative of sigma' or
    the vanishing G1); the scale is n Theta ~ 10."""
    m = _res("linear", depth=3, C_W=1.0 - 0.25)
    h = residual_ntk_mean_multi(m, X2)
    assert np.max(np.abs(h)) <= 1e-12


def test_off_diagonal_is_continuous():
    """tanh, inputs (1, 0.2) and (1, 0.2 + eps): H1_ab is a smooth symmetric function of
    the two inputs, so gap = H1_12 - (H1_11 + H1_22)/2 = O(eps^2). Measured at layers 3, 4:
    halving eps from 0.1 to 0.05 divides the gap by 3.8 (4 + O(eps)); a wrong weight on an
    off-diagonal term (an O(1) change of H1_12 that does not vanish with eps) would not.
    (Below eps ~ 0.03 the Stein form of the two-depth second derivatives loses accuracy
    like (1 - rho^2)^-2: derivation, section h39.)"""
    m = _res("tanh", depth=4)
    gaps = []
    for eps in (0.1, 0.05):
        x = np.array([[1.0, 0.2], [1.0, 0.2 + eps]])
        h = residual_ntk_mean_multi(m, x)[2:]
        gaps.append(h[:, 0, 1] - 0.5 * (h[:, 0, 0] + h[:, 1, 1]))
    ratio = gaps[0] / gaps[1]
    assert np.all((3.3 < ratio) & (ratio < 4.5)), ratio


@pytest.mark.parametrize("act", ["relu", pytest.param("gelu", marks=pytest.mark.slow)])
def test_forms_read_out_F(act):
    """The bilinear forms (residual_multi's F recursion, every layer kept, the increment
    features as G^+ w) read out residual_f_multi's F (round-off), and pair an increment U_m only with itself,
    another increment, or an older S_p (p < m): the structure the own term's Stein step
    uses."""
    from pdlt.theory.residual_multi import _coefficients, _f_forms, _layer_tables, _neuron
    m = _res(act, depth=4)
    K, Th = first_layer_kernel(m, X2)
    Ks, Ths, _, _ = kernel_fold(m, K, Th, susceptibilities=False)
    L, N = Ks.shape[0], 2
    _, avg = _layer_tables(m, Ks, "default")
    a = _coefficients(m)
    varw = np.empty((L, N, N))
    varw[0] = Ks[0]
    for q in range(1, L):
        varw[q] = m.C_b[q] + m.C_W[q] * avg[q - 1].S
    C = np.einsum("lq,mq,qab->lmab", a, a, varw)
    nr = _neuron(m, Ks, "default")
    assert np.array_equal(nr.varw, varw) and np.array_equal(nr.C, C)
    Ms = [None] + list(_f_forms(m, nr, Ths, "default"))
    Fw = residual_f_multi(m, Ks=Ks, Thetas=Ths)
    nU = L * N
    for l in range(1, L):
        v = np.zeros((N, Ms[l].shape[-1]))
        for q in range(l + 1):
            # the forms carry the increments as G^+ w (_Neuron.proj): E[G^+ w z] = a P
            v[:, q * N:(q + 1) * N] = a[l, q] * nr.proj[q].T
        for p in range(l):
            J = np.zeros((N, N, N))
            D1, _, O = avg[p].Mss
            for aa in range(N):
                for c in range(N):
                    if aa == c:
                        J[aa, aa, aa] = D1[aa, aa]
                    else:
                        J[aa, c, aa], J[aa, c, c] = 2.0 * D1[aa, c], O[aa, c]
            v[:, nU + p * N * N:nU + (p + 1) * N * N] = np.einsum(
                "yf,ecf->yce", C[l, p], J).reshape(N, N * N)
        got = np.einsum("ya,xuab,wb->xyuw", v, Ms[l], v)
        np.testing.assert_allclose(got, Fw[l], rtol=1e-12, atol=1e-12 * np.abs(Fw[l]).max())
        big = np.abs(Ms[l]).max()
        Mx = np.abs(Ms[l]).max(axis=(0, 1))
        assert Mx[nU:, nU:].max() <= 1e-14 * big                  # no S-S entries
        for q in range(L):
            for p in range(q, L):                                 # U_q - S_p needs p < q
                blk = Mx[q * N:(q + 1) * N, nU + p * N * N:nU + (p + 1) * N * N]
                assert blk.max() <= 1e-14 * big


def test_served_by_statistics_and_errors():
    m = _res("relu", depth=3)
    np.testing.assert_array_equal(pdlt.statistics(m, X2, get="H1").H1,
                                  residual_ntk_mean_multi(m, X2))
    from pdlt.theory.statistics import defined
    assert "H1" in defined(m, 2)
    with pytest.raises(TypeError, match="pdlt.MLP"):
        residual_ntk_mean_multi("relu", X2)
    with pytest.raises(ValueError, match="give either x"):
        residual_ntk_mean_multi(m)
    with pytest.raises(ValueError, match="accuracy"):
        residual_ntk_mean_multi(m, X2, accuracy="best")
    with pytest.raises(ValueError, match="shape"):
        residual_ntk_mean_multi(m, Ks=np.ones((2, 2, 2)), Thetas=np.ones((2, 2, 2)))


# ---------------------------------------------------------------------------
# kappa3 (pdlt.theory.residual_multi_mean.residual_kappa3_multi)
# ---------------------------------------------------------------------------

from pdlt.theory.residual_multi_mean import residual_kappa3_multi   # noqa: E402


@pytest.mark.parametrize("act", ["relu", "gelu", "softplus"])
def test_kappa3_diagonal_is_the_one_input_closure(act):
    """kappa3_aaa of three distinct inputs (norms 1, 1.3, 0.86) = the one-input kappa3 of
    pdlt.statistics (the fold's three_point_step, independent code) at K_aa: measured
    <= 7e-15 relative; every layer of a residual output (n_out = width)."""
    m = _res(act, n_out=8)
    k = residual_kappa3_multi(m, X3)
    for a in range(3):
        K1 = float(first_layer_kernel(m, X3[a:a + 1])[0][0, 0])
        one = np.ravel(pdlt.statistics(m, K1=K1, get="kappa3").kappa3)
        assert np.max(np.abs(k[:, a, a, a] - one)) <= 1e-12 * np.max(np.abs(one))
    assert np.all(np.abs(k[2:]) > 1e-3)
    np.testing.assert_array_equal(k, np.swapaxes(k, 1, 2))          # symmetric in (a, b)


def test_kappa3_collinear_relu_scales():
    """ReLU with C_b = 0 at x, 2x, x/2: z(c x) = c z(x) in every network, so
    kappa3_abc = c_a c_b c_c kappa3(x) in every entry (off-diagonal included; measured
    ~1e-15 relative)."""
    m = pdlt.MLP(n0=2, width=8, depth=5, n_out=8, activation="relu", C_W=1.5, C_b=0.0,
                 gamma=0.5)
    c = np.array([1.0, 2.0, 0.5])
    x = c[:, None] * np.array([[0.6, 0.8]])
    k = residual_kappa3_multi(m, x)
    K1 = float(first_layer_kernel(m, x[:1])[0][0, 0])
    one = np.ravel(pdlt.statistics(m, K1=K1, get="kappa3").kappa3)
    want = one[:, None, None, None] * np.einsum("a,b,c->abc", c, c, c)
    assert np.max(np.abs(k - want)) <= 1e-12 * np.max(np.abs(want))


def test_kappa3_vanishes_for_odd_sigma_and_plain_layers():
    """Odd sigma: exactly 0; gamma = 0 (plain network): 0; a plain output layer: 0 there."""
    x = X3
    assert not np.any(residual_kappa3_multi(_res("tanh", n_out=8), x))
    assert not np.any(residual_kappa3_multi(_res("relu", gamma=0.0), x))
    k = residual_kappa3_multi(_res("relu", n_out=1), x)
    assert not np.any(k[-1]) and np.any(k[-2])


def test_kappa3_served_by_statistics():
    m = _res("gelu", depth=3, n_out=8)
    np.testing.assert_array_equal(pdlt.statistics(m, X2, get="kappa3").kappa3,
                                  residual_kappa3_multi(m, X2))
    hc = residual_kappa3_multi(m, X2[[0, 1, 0]])
    np.testing.assert_array_equal(hc[:, 2, 1, 2], hc[:, 0, 1, 0])
    with pytest.raises(ValueError, match="exactly one of x"):
        residual_kappa3_multi(m)


# ---------------------------------------------------------------------------
# the mixed vertex C^(l,L) and hebbian_kernel_shift for residual MLPs
# ---------------------------------------------------------------------------

from pdlt.theory.residual_multi_mean import residual_mixed_vertex   # noqa: E402


def _plain_mixed_vertex(m, x):
    """The plain recursion of hebbian_kernel_shift (C^(l,l), then C_W M per layer)."""
    from pdlt.theory.vertex import apply_M, kernel_derivative_operator
    fw = pdlt.statistics(m, x, get=("V", "G1"))
    L = m.depth
    ops = {lp: kernel_derivative_operator(m.activation, fw.K[lp - 1]) for lp in range(1, L)}
    out = []
    for l in range(1, L):
        K, V = fw.K[l - 1], fw.V[l - 1]
        C = (np.einsum("ac,bd->abcd", K, K) + np.einsum("ad,bc->abcd", K, K)) / m.widths[l] \
            + V / m.widths[l - 1]
        for lp in range(l, L):
            C = m.C_W[lp] * np.moveaxis(apply_M(ops[lp], np.moveaxis(C, (2, 3), (0, 1))),
                                        (0, 1), (2, 3))
        out.append(C)
    return np.array(out)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_mixed_vertex_gamma_zero_is_the_plain_recursion(act):
    """gamma = 0, unequal widths, three inputs: the plain C^(l,L) of hebbian_kernel_shift at
    every hidden layer (measured relu 4e-16, tanh 3e-13 relative): the own term c(Phi) on
    layer l's own field reproduces the (K K + K K)/n_l term."""
    m = pdlt.MLP(n0=2, widths=(8, 12, 6, 10, 1), activation=act, C_W=1.4, C_b=0.1)
    got, want = residual_mixed_vertex(m, X3), _plain_mixed_vertex(m, X3)
    assert np.max(np.abs(got - want)) <= 1e-11 * np.max(np.abs(want))


def test_hebbian_kernel_shift_residual():
    """Residual hidden layers with a plain output: served, symmetric, continuous in gamma
    (gamma = 1e-7 within 1e-5 of the plain shift); a residual output with non-odd sigma is
    served with its linear three-point term (h48; tests/learning/test_finite_bayes_residual.py),
    which targets summing to zero over the output neurons switch off."""
    from pdlt.learning.finite_bayes import hebbian_kernel_shift
    XA, YA, XB = np.array([[1.0, 0.0], [0.6, 0.8]]), np.array([1.0, -0.5]), np.array([[0.2, 0.9]])
    kw = dict(n0=2, width=16, depth=3, activation="relu", C_W=1.5, C_b=0.1, n_out=1)
    h0 = hebbian_kernel_shift(pdlt.MLP(**kw), XA, YA, XB, noise=0.3)
    h1 = hebbian_kernel_shift(pdlt.MLP(**kw, gamma=1e-7), XA, YA, XB, noise=0.3)
    np.testing.assert_allclose(h1.shift, h0.shift, rtol=1e-5, atol=1e-5 * np.abs(h0.shift).max())
    h = hebbian_kernel_shift(pdlt.MLP(**kw, gamma=0.5), XA, YA, XB, noise=0.3)
    np.testing.assert_allclose(h.shift, np.swapaxes(h.shift, 1, 2), atol=1e-14)
    assert np.max(np.abs(h.shift - h0.shift)) > 0.05 * np.max(np.abs(h0.shift))
    res_out = pdlt.MLP(**dict(kw, n_out=16, gamma=0.5))
    y = np.ones((2, 16))
    y[:, 8:] = -1.0           # sum_k alpha_k = 0: no linear term, the shift is even in y
    hp = hebbian_kernel_shift(res_out, XA, y, XB, noise=0.3)
    hm = hebbian_kernel_shift(res_out, XA, -y, XB, noise=0.3)
    np.testing.assert_allclose(hp.shift, hm.shift, atol=1e-14)
    y[:, 8:] = 1.0
    hp = hebbian_kernel_shift(res_out, XA, y, XB, noise=0.3)
    hm = hebbian_kernel_shift(res_out, XA, -y, XB, noise=0.3)
    assert np.max(np.abs(hp.shift - hm.shift)) > 1e-2


def test_near_coinciding_inputs_warn():
    """Two distinct inputs of a kinked activation with 1 - rho^2 < 1e-3 at some layer: A and
    H1 are not resolved there; pdlt.statistics says so, naming them (plain and residual)."""
    x = np.array([[1.0, 0.2], [1.0, 0.2 + 1e-5]])
    for gamma in (0.5, 0.0):
        m = pdlt.MLP(n0=2, width=8, depth=3, activation="relu", C_W=1.3, C_b=0.1, gamma=gamma)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pdlt.statistics(m, x, get=["A", "H1"])
        said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        # from the estimates (h54): the rounding spread names A (and, residual, H1);
        # a plain MLP's H1 is named by its fourth-derivative source's estimate
        assert [w for w in said if w.startswith("A[") and "inputs 0 and 1 nearly coincide" in w]
        assert [w for w in said if w.startswith(("H1[", "H1 of inputs 0 and 1"))], said
    # smooth activations are resolved there: no such warning
    m = pdlt.MLP(n0=2, width=8, depth=3, activation="tanh", C_W=1.3, C_b=0.1, gamma=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdlt.statistics(m, x, get=["A", "H1"])
    assert not [w for w in caught if "nearly coincide" in str(w.message)]


def test_kernel_only_entry_points_validate():
    """kappa3 and the mixed vertex take x or Ks (no Thetas); bad shapes and types named."""
    m = _res("relu", depth=3, n_out=8)
    K, Th = first_layer_kernel(m, X2)
    Ks = kernel_fold(m, K, Th, susceptibilities=False)[0]
    np.testing.assert_array_equal(residual_kappa3_multi(m, Ks=Ks), residual_kappa3_multi(m, X2))
    np.testing.assert_array_equal(residual_mixed_vertex(m, Ks=Ks), residual_mixed_vertex(m, X2))
    for f in (residual_kappa3_multi, residual_mixed_vertex):
        with pytest.raises(ValueError, match="exactly one of x"):
            f(m, X2, Ks=Ks)
        with pytest.raises(ValueError, match="Ks must have shape"):
            f(m, Ks=Ks[:2])
        with pytest.raises(TypeError, match="pdlt.MLP"):
            f(None, X2)
        with pytest.raises(ValueError, match="accuracy"):
            f(m, X2, accuracy="best")
        with pytest.raises(ValueError, match="accuracy"):
            f(m, Ks=Ks, accuracy="best")


def test_direct_derivatives_match_the_stein_form(monkeypatch):
    """Smooth activations differentiate F's factors in ``_stein_moments`` (no Lam, whose
    conditioning goes like (1 - rho^2)^-1 per derivative); where the Stein form (every
    activation's route before) is well conditioned the two agree, which checks the
    derivative formulas (1 % more in the first or second derivatives moves H1 by 3 % or
    4 %)."""
    import pdlt.theory.residual_multi_mean as rmm
    m = pdlt.MLP(n0=2, width=32, depth=4, activation="tanh", C_b=0.1, C_W=1.0, gamma=0.6,
                 xi=0.8)
    far = np.array([[1.0, 0.3], [1.0, 0.6]])

    def h1(x, stein):
        monkeypatch.setattr(rmm, "_STEIN_ONLY", stein)
        return residual_ntk_mean_multi(m, x, accuracy="high")
    d, s = h1(far, False), h1(far, True)
    assert np.max(np.abs(d - s)) <= 1e-10 * np.max(np.abs(s))


def test_F_and_H1_stay_resolved_for_nearly_coinciding_inputs():
    """The forms carry the increments as G^+ w (``_Neuron.proj``): G nearly singular for
    nearly coinciding inputs no longer amplifies the quadrature errors (before: F default
    against "high" 0.5, H1 0.8 of scale at 1 - rho^2 = 6e-9; tanh, depth 4)."""
    m = pdlt.MLP(n0=2, width=32, depth=4, activation="tanh", C_b=0.1, C_W=1.0, gamma=0.6,
                 xi=0.8)
    x = np.array([[1.0, 0.3], [1.0, 0.3 + 1e-4]])
    s = pdlt.statistics(m, x, get=["F", "H1"], error=True)
    for k in ("F", "H1"):
        assert np.max(s.error[k][-1]) <= 1e-11 * np.max(np.abs(s[k][-1])), k
    # and the coinciding limit is approached continuously (O(1 - rho) apart)
    assert abs(s.H1[-1, 0, 1] - s.H1[-1, 0, 0]) <= 1e-4 * abs(s.H1[-1, 0, 0])
