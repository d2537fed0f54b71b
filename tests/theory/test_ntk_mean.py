"""The NTK mean at order 1/n (H1): exact cases, reductions and the step against its definition.

Theory: :mod:`pdlt.theory.ntk_mean`. Ensemble tests:
``tests/experiment/test_ntk_mean_ensemble.py``.

Reference values and why the tolerances are what they are:

* deep linear network: ``E[z z] = K`` exactly at any width and ``sigma' = 1``,
  so ``E[H'] = lambda_b + lambda_W E[zz] + C_W E[H]`` is the infinite-width
  recursion exactly and ``H1 = 0`` (module docstring). Computed H1 is a sum of
  Gaussian averages each exact to ~1e-14 relative (:func:`pdlt.gaussian.expect`)
  that cancel: tolerance ``1e-12 max|Theta|``.
* ReLU family, one input, any ``C_b, C_W``: ``<s^2>_K`` is linear and
  ``<p^2>_K`` constant in K, so every K-derivative in the step vanishes and
  ``H1 = 0`` (for ReLU exactly at any width: flipping the incoming weights and
  bias of neuron j flips z_j and leaves H_jj unchanged, so
  ``E[1{z_j > 0} H_jj] = E[H_jj] / 2``). Same tolerance.
* N inputs: the diagonal equals the one-input value at ``K1 = K^(1)_aa``
  (the same one-variable rules: 1e-12 relative); coinciding inputs give an
  off-diagonal equal to the diagonal within the accuracy of the upstream
  four-variable expectations of V, D, F (< 1e-5 relative,
  :mod:`pdlt.gaussian._multi`).
* The N-input step against its definition evaluated by finite differences of
  the pair expectations (``d<f>/dK`` along G1 and along the D, F cumulant,
  ``(1/8) V <d^4 f>`` as second differences along V's eigen-directions):
  central differences with step h have error ``O(h^2)`` plus ``rtol / h^2``
  from the 1e-13 pair expectations; h = 2e-3 and a Richardson step give
  ~1e-8; tolerance 1e-6 of the scale.
"""

import numpy as np
import pytest

import pdlt
from pdlt import gaussian
from pdlt.activations import activation
from pdlt.theory._averages import LayerAverages, OneVariableTable
from pdlt.theory.kernel import LayerHyper
from pdlt.theory.ntk_mean import ntk_mean_step

from one_input_oracles import ntk_mean as ntk_mean_one_input  # tests/theory, on sys.path


def ntk_mean_correction(mlp, x=None, **kw):
    return pdlt.statistics(mlp, x, get="H1", **kw).H1


def step(act, K, Th, H1, G1, V, D, F, C_W, lambda_W, ratio):
    """The N-input H1 step at one layer (hyperparameters of layer l+1)."""
    K = np.asarray(K, dtype=float)
    avg = LayerAverages(act, K, OneVariableTable(act, np.diag(K).copy()))
    st = dict(K=K, Theta=np.asarray(Th, float), H1=np.asarray(H1, float),
              G1=np.asarray(G1, float), V=V, D=D, F=F)
    return ntk_mean_step(avg, st, LayerHyper(0.0, C_W, 0.0, lambda_W, ratio=ratio))

X3 = np.array([[1.0, 0.3, -0.5], [0.2, -0.9, 0.7], [-0.6, 0.4, 0.9]])


def _mlp(act, depth=5, widths=None, **kw):
    base = dict(C_b=0.1, C_W=1.3, lambda_b=0.7, lambda_W=1.4)
    base.update(kw)
    if widths is None:
        return pdlt.MLP(n0=3, width=16, depth=depth, n_out=4, activation=act, **base)
    return pdlt.MLP(n0=3, widths=widths, n_out=4, activation=act, **base)


# ---------------------------------------------------------------------------
# exact cases
# ---------------------------------------------------------------------------

LINEAR_CASES = [
    dict(C_b=0.0, C_W=1.0, lambda_b=0.0, lambda_W=1.0),
    dict(C_b=0.3, C_W=(1.2, 0.8, 1.5, 0.9, 1.1), lambda_b=(0.5, 0.1, 0.2, 0.0, 0.3),
         lambda_W=(1.0, 2.0, 0.5, 1.5, 0.7)),
]


@pytest.mark.parametrize("kw", LINEAR_CASES)
def test_deep_linear_has_no_mean_shift(kw):
    mlp = _mlp("linear", widths=(8, 20, 5, 12), **kw)
    theta = pdlt.flow(mlp, K1=0.9).Theta
    h1 = ntk_mean_correction(mlp, K1=0.9)
    assert h1.shape == (5,)
    assert np.all(np.abs(h1) <= 1e-12 * np.max(np.abs(theta))), h1
    th = pdlt.flow(mlp, X3).Theta
    H1 = ntk_mean_correction(mlp, X3)
    assert H1.shape == (5, 3, 3)
    assert np.all(np.abs(H1) <= 1e-12 * np.max(np.abs(th))), H1


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
@pytest.mark.parametrize("kw", [dict(C_b=0.0, C_W=2.0), dict(C_b=0.4, C_W=1.3)])
def test_relu_family_single_input_has_no_mean_shift(act, kw):
    mlp = _mlp(act, widths=(8, 20, 5, 12), **kw)
    theta = pdlt.flow(mlp, K1=1.7).Theta
    h1 = ntk_mean_correction(mlp, K1=1.7)
    assert np.all(np.abs(h1) <= 1e-12 * np.max(np.abs(theta))), h1


def test_relu_two_distinct_inputs_do_shift():
    # the off-diagonal d<p_a p_b>/dK_ab != 0 makes H1_12 nonzero at layer 3 on
    mlp = _mlp("relu", depth=4, C_b=0.0, C_W=2.0)
    H1 = ntk_mean_correction(mlp, X3[:2])
    assert np.all(H1[:2] == 0)
    assert abs(H1[2, 0, 1]) > 1e-3 and abs(H1[3, 0, 1]) > abs(H1[2, 0, 1])
    assert np.all(np.abs(np.diagonal(H1, axis1=1, axis2=2)) < 1e-12 * np.max(np.abs(H1)))


@pytest.mark.parametrize("act", ["tanh", "gelu", "swish", "erf", "relu"])
def test_layers_one_and_two_vanish(act):
    mlp = _mlp(act, depth=4)
    assert np.all(ntk_mean_correction(mlp, K1=1.0)[:2] == 0)
    assert np.all(ntk_mean_correction(mlp, X3)[:2] == 0)
    assert np.all(ntk_mean_correction(mlp.with_(depth=2), X3) == 0)


# ---------------------------------------------------------------------------
# reductions, symmetry, widths
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["tanh", "gelu", "relu", "swish", "sin"])
def test_n_input_diagonal_is_the_single_input_value(act):
    mlp = _mlp(act, depth=4, widths=(16, 8, 24))
    H1 = ntk_mean_correction(mlp, X3)
    f = pdlt.flow(mlp, X3)
    K1 = f.K[0]
    for a in range(3):
        single = ntk_mean_correction(mlp, K1=K1[a, a])
        # relative to Theta: for ReLU both are round-off around an exact 0
        np.testing.assert_allclose(H1[:, a, a], single, rtol=1e-12,
                                   atol=1e-12 * np.max(np.abs(f.Theta)))


@pytest.mark.parametrize("act", ["tanh", "gelu", "relu"])
def test_symmetric_and_coinciding_inputs(act):
    x = np.vstack([X3[:2], X3[:1]])                      # input 3 == input 1
    # accuracy="high": with "default" the four-variable expectations behind V, D, F
    # (< 1e-5 relative) leave up to 4e-4 of max|H1| between the copies for tanh, whose
    # K rows agree only to 3e-13 (Mehler series) so the copies are not merged
    H1 = ntk_mean_correction(_mlp(act, depth=4), x, accuracy="high")
    scale = np.max(np.abs(H1))
    # the two triangles sum the same terms in another order: equal to round-off
    np.testing.assert_allclose(H1, np.transpose(H1, (0, 2, 1)), rtol=0, atol=1e-13 * scale)
    assert scale > 1e-3
    np.testing.assert_allclose(H1[:, 0, 2], H1[:, 0, 0], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(H1[:, 1, 2], H1[:, 1, 0], rtol=0, atol=1e-5 * scale)


def test_width_ratio_scales_the_step():
    act = activation("tanh")
    args = (0.8, [[1.7]], [[0.3]], [[-0.2]], np.full((1,) * 4, 1.1), np.full((1,) * 4, 0.4),
            np.full((1,) * 4, 0.25), 1.2, 0.9)
    h = step(act, [[args[0]]], *args[1:], ratio=1.0)
    assert step(act, [[args[0]]], *args[1:], ratio=2.5) == pytest.approx(2.5 * h, rel=1e-15)
    # in a flow: H1^(3) = (n_2/n_1) [layer-2 statistics, all normalized by n_1],
    # so doubling n_2 doubles H1^(3) (normalized by n_2) and nothing else there
    mlp_a = _mlp("tanh", widths=(16, 16, 16))
    mlp_b = _mlp("tanh", widths=(16, 32, 16))
    ha, hb = ntk_mean_correction(mlp_a, K1=1.0), ntk_mean_correction(mlp_b, K1=1.0)
    assert hb[2] == pytest.approx(2.0 * ha[2], rel=1e-12)


@pytest.mark.parametrize("name", ["gelu", "relu", "sin"])
def test_vectorized_terms_equal_scalar_calls(name):
    """One table over many kernels (all layers at once) equals one table per kernel."""
    act = activation(name)
    Ks = np.array([0.3, 1.0, 2.5])
    vec = OneVariableTable(act, Ks)
    for i, k in enumerate(Ks):
        one = OneVariableTable(act, float(k))
        for key in ("dss", "dpp", "pp", "d4ss", "d4pp", "ssss", "sspp", "qspp"):
            assert vec[key][i] == pytest.approx(float(one[key]), rel=1e-14, abs=1e-16), key


# ---------------------------------------------------------------------------
# the N-input step against its definition, by finite differences
# ---------------------------------------------------------------------------

def _pair(act, K, term):
    return gaussian.pair_expectations(act, K, (term,), rtol=1e-13)[term]


def _d1(fn, K, Y, h):
    """d/de fn(K + e Y) at 0: central differences with one Richardson step."""
    def c(s):
        return (fn(K + s * Y) - fn(K - s * Y)) / (2 * s)
    return (4 * c(h / 2) - c(h)) / 3


def _d2(fn, K, Y, h):
    """d^2/de^2 fn(K + e Y) at 0, likewise."""
    f0 = fn(K)

    def c(s):
        return (fn(K + s * Y) - 2 * f0 + fn(K - s * Y)) / (s * s)
    return (4 * c(h / 2) - c(h)) / 3


def _random_tensors(rng, N):
    G1 = rng.normal(size=(N, N))
    G1 = G1 + G1.T
    H1 = rng.normal(size=(N, N))
    H1 = H1 + H1.T
    # V symmetric under a1<->a2, a3<->a4 and (a1a2)<->(a3a4); a small PSD-ish scale
    V = rng.normal(size=(N,) * 4)
    V = V + V.transpose(1, 0, 2, 3)
    V = V + V.transpose(0, 1, 3, 2)
    V = 0.1 * (V + V.transpose(2, 3, 0, 1))
    D = rng.normal(size=(N,) * 4)
    D = D + D.transpose(1, 0, 2, 3)
    D = D + D.transpose(0, 1, 3, 2)
    F = rng.normal(size=(N,) * 4)
    F = F + F.transpose(2, 3, 0, 1)
    return G1, H1, V, D, F


@pytest.mark.parametrize("act_name", ["tanh", "relu", "gelu"])
def test_step_equals_its_definition_by_finite_differences(act_name):
    act = activation(act_name)
    rng = np.random.default_rng(7)
    N = 2
    K = np.array([[1.1, 0.35], [0.35, 0.8]])
    Th = np.array([[1.5, 0.6], [0.6, 1.3]])
    G1, H1, V, D, F = _random_tensors(rng, N)
    C_W, lam_W, r = 1.4, 0.9, 1.5
    got = step(act, K, Th, H1, G1, V, D, F, C_W, lam_W, r)

    def ss(Kp):
        return _pair(act, Kp, ("sigma", "sigma"))

    def pp(Kp):
        return _pair(act, Kp, ("d1", "d1"))
    h = 2e-3
    # (1/8) sum V <d^4 f> = sum_k w_k (1/2) d^2/de^2 <f>_{K + e S_k}, V = sum_k w_k S_k (x) S_k
    w, vecs = np.linalg.eigh(V.reshape(N * N, N * N))
    src_s, src_p = np.zeros((N, N)), np.zeros((N, N))
    for wk, v in zip(w, vecs.T):
        if abs(wk) < 1e-12:
            continue
        S = v.reshape(N, N)
        assert np.allclose(S, S.T)
        src_s += wk * 0.5 * _d2(ss, K, S, h)
        src_p += wk * 0.5 * _d2(pp, K, S, h)
    d_ss = _d1(ss, K, G1, h) + src_s
    d_pp = _d1(pp, K, G1, h) + src_p
    # Cov(p_a p_b, H_jj;ab) = sum_cd (d<p_a p_b>/dK_cd) X_abcd, X from NOTATION.md's D, F
    cov = np.zeros((N, N))
    for a in range(N):
        for b in range(N):
            X = np.array([[D[a, b, c, d] + F[a, c, b, d] + F[a, d, b, c] for d in range(N)]
                          for c in range(N)])
            cov[a, b] = _d1(pp, K, X, h)[a, b]
    want = r * (lam_W * d_ss + C_W * (Th * d_pp + pp(K) * H1 + cov))
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * scale)


def test_one_input_step_equals_the_hand_written_line():
    act = activation("tanh")
    K, Th, H1, G1, V, D, F = 0.9, 1.4, 0.3, -0.2, 0.8, 0.5, 0.35
    one = ntk_mean_one_input(OneVariableTable(act, K), Th, H1, G1, V, D, F, 1.2, 0.7, 1.5)
    arr = step(act, np.array([[K]]), np.array([[Th]]), np.array([[H1]]),
               np.array([[G1]]), np.full((1,) * 4, V), np.full((1,) * 4, D),
               np.full((1,) * 4, F), 1.2, 0.7, 1.5)
    assert arr.shape == (1, 1)
    assert arr[0, 0] == pytest.approx(one, rel=1e-12)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

def test_residual_mlp_is_served_for_several_inputs():
    """One input: pdlt.theory.residual_ntk.residual_ntk_mean; N inputs:
    pdlt.theory.residual_multi_mean (tests/theory/test_residual_multi_mean.py)."""
    from pdlt.theory.residual_multi_mean import residual_ntk_mean_multi
    mlp = pdlt.MLP(n0=3, width=16, depth=3, activation="tanh", gamma=0.5)
    np.testing.assert_array_equal(ntk_mean_correction(mlp, X3[:2]),
                                  residual_ntk_mean_multi(mlp, X3[:2]))


def test_bad_arguments():
    mlp = _mlp("tanh", depth=4)
    with pytest.raises(ValueError, match="exactly one of x"):
        ntk_mean_correction(mlp)
    with pytest.raises(ValueError, match="exactly one of x"):
        ntk_mean_correction(mlp, X3, K1=1.0)
    with pytest.raises(ValueError, match="smaller than C_b"):
        ntk_mean_correction(mlp, K1=0.0)
    with pytest.raises(ValueError, match="zero variance at layer 1"):
        ntk_mean_correction(mlp.with_(C_b=0.0), K1=0.0)
    with pytest.raises(ValueError, match="accuracy"):
        ntk_mean_correction(mlp, X3, accuracy="best")
    with pytest.raises(TypeError, match="pdlt.MLP"):
        ntk_mean_correction("tanh", K1=1.0)
