"""Infinite-width kernel and NTK flow.

Exact references: the arc-cosine kernel (ReLU), the linear network, the erf
closed form; properties: symmetry and PSD; an exact finite-width check at
layer 2 (layer-1 preactivations are exactly Gaussian, so E[z^(2) z^(2)] and
E[H^(2)] equal the recursion at any width) with plain numpy sampling.
"""

import math
import warnings

import numpy as np
import pytest

import pdlt
from pdlt import MLP
from pdlt.theory.kernel import KernelNotPSDError, first_layer
from pdlt.theory.statistics import flow

from conftest import EPS, powered


def _inputs(rng, N=5, n0=3):
    return rng.standard_normal((N, n0))


def _arccos_step(K, C_b, C_W):
    d = np.sqrt(np.diag(K))
    cos = np.clip(K / np.outer(d, d), -1, 1)
    np.fill_diagonal(cos, 1.0)  # arccos is ill-conditioned at 1: use the exact value
    psi = np.arccos(cos)
    ss = np.outer(d, d) * (np.sin(psi) + (np.pi - psi) * cos) / (2 * np.pi)
    dd = (np.pi - psi) / (2 * np.pi)
    return C_b + C_W * ss, dd


def test_relu_arc_cosine_exact(rng):
    x = _inputs(rng)
    mlp = MLP(n0=3, width=10, depth=6, activation="relu", C_b=0.1, C_W=1.7,
              lambda_b=0.5, lambda_W=2.0)
    res = flow(mlp, x)
    K = mlp.C_b[0] + mlp.C_W[0] * x @ x.T / 3
    Th = 0.5 + 2.0 * x @ x.T / 3
    for s in res:
        np.testing.assert_allclose(s.K, K, rtol=1e-13)
        np.testing.assert_allclose(s.Theta, Th, rtol=1e-13)
        Knew, dd = _arccos_step(K, 0.1, 1.7)
        d = np.sqrt(np.diag(K))
        ss = (Knew - 0.1) / 1.7
        Th = 0.5 + 2.0 * ss + 1.7 * dd * Th
        K = Knew
        assert d.min() > 0


def test_linear_network_exact(rng):
    x = _inputs(rng)
    mlp = MLP(n0=3, width=4, depth=5, activation="linear", C_b=0.2, C_W=0.9)
    res = flow(mlp, x)
    K = 0.2 + 0.9 * x @ x.T / 3
    Th = 1.0 + x @ x.T / 3
    for s in res:
        np.testing.assert_allclose(s.K, K, rtol=1e-14)
        np.testing.assert_allclose(s.Theta, Th, rtol=1e-14)
        Th = 1.0 + K + 0.9 * Th
        K = 0.2 + 0.9 * K


def test_erf_closed_form_against_quadrature(rng):
    x = _inputs(rng, N=4)
    mlp = MLP(n0=3, width=4, depth=3, activation="erf", C_b=0.3, C_W=1.2)
    K, _ = first_layer(mlp, x)
    act = mlp.activation
    closed = pdlt.gaussian.pair_expectations(act, K, (("sigma", "sigma"), ("d1", "d1")))
    quad = pdlt.gaussian.pair_expectations(act, K, (("sigma", "sigma"), ("d1", "d1")),
                                           method="quadrature")
    for key in closed:
        np.testing.assert_allclose(quad[key], closed[key], rtol=1e-12)


@pytest.mark.parametrize("name", ["tanh", "gelu", "swish", "elu", "sin", "softplus", "relu"])
def test_kernel_and_ntk_symmetric_psd(name, rng):
    x = _inputs(rng, N=8, n0=4)
    x[1] = x[0] * 1.0001  # nearly collinear pair
    mlp = MLP(n0=4, width=10, depth=5, activation=name, C_b=0.1, C_W=1.3)
    for s in flow(mlp, x):
        for M in (s.K, s.Theta):
            np.testing.assert_array_equal(M, M.T)
            assert np.linalg.eigvalsh(M).min() > -1e3 * EPS * np.abs(M).max()


@pytest.mark.parametrize("name", ["tanh", "gelu", "elu", "relu", "sin"])
def test_single_input_path_equals_multi_input(name):
    mlp = MLP(n0=2, width=5, depth=7, activation=name, C_b=0.05, C_W=1.1, lambda_b=0.3)
    x = np.array([[0.9, -1.3]])
    multi = flow(mlp, x)
    K1 = 0.05 + 1.1 * float((x @ x.T)[0, 0]) / 2
    single = flow(mlp, K1=K1)
    np.testing.assert_allclose(single.K, multi.K[:, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(single.Theta, multi.Theta[:, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(single.chi_perp, multi.chi_perp[:, 0], rtol=1e-12)
    np.testing.assert_allclose(single.chi_parallel, multi.chi_parallel[:, 0], rtol=1e-12)


def test_susceptibilities_match_finite_differences_of_the_map():
    # chi_par = dK'/dK at fixed C_W: d/dK [C_b + C_W <sigma^2>_K]
    from pdlt.theory.kernel import single_input_moments
    act = pdlt.activation("tanh")
    C_W, K, h = 1.3, 0.7, 1e-5
    up = single_input_moments(act, K + h)[0]
    dn = single_input_moments(act, K - h)[0]
    f = flow(MLP(n0=1, width=3, depth=2, activation=act, C_W=C_W), K1=K)
    assert f[0].chi_parallel == pytest.approx(C_W * (up - dn) / (2 * h), rel=1e-8)


def test_relu_critical_single_input_is_fixed_and_theta_linear():
    mlp = MLP(n0=1, width=3, depth=50, activation="relu", C_W=2.0, lambda_b=0.0, lambda_W=1.0)
    f = flow(mlp, K1=1.3)
    np.testing.assert_allclose(f.K, 1.3, rtol=1e-14)
    # Theta^(l) = lambda_W * l * K (each layer adds lambda_W <sigma^2> = K/2 * 2... )
    np.testing.assert_allclose(np.diff(f.Theta), f.Theta[1] - f.Theta[0], rtol=1e-12)
    np.testing.assert_allclose(f.chi_parallel, 1.0, rtol=1e-14)


def test_deep_single_input_stays_finite():
    for name in ("tanh", "gelu", "relu", "sin", "erf"):
        f = flow(MLP(n0=1, width=3, depth=10_000, activation=name, C_W=1.0), K1=1.0)
        assert np.all(np.isfinite(f.K)) and np.all(np.isfinite(f.Theta))


def test_exploding_phase_raises_clear_error():
    with pytest.raises(FloatingPointError, match="criticality"):
        flow(MLP(n0=1, width=3, depth=20_000, activation="relu", C_W=2.5), K1=1.0)


def test_layer_two_against_numpy_network_ensemble(rng):
    """E[z^(2) z^(2)] and E[H^(2)] equal the recursion exactly at any width."""
    n0, n1, M = 3, 6, 40_000
    x = rng.standard_normal((2, n0))
    C_b, C_W, lb, lW = 0.1, 1.4, 0.7, 1.3
    mlp = MLP(n0=n0, widths=[n1], n_out=1, activation="tanh", C_b=C_b, C_W=C_W,
              lambda_b=lb, lambda_W=lW)
    th = flow(mlp, x)[1]
    W1 = rng.standard_normal((M, n1, n0)) * math.sqrt(C_W / n0)
    b1 = rng.standard_normal((M, n1, 1)) * math.sqrt(C_b)
    W2 = rng.standard_normal((M, 1, n1)) * math.sqrt(C_W / n1)
    b2 = rng.standard_normal((M, 1, 1)) * math.sqrt(C_b)
    z1 = W1 @ x.T + b1                       # (M, n1, N)
    s, ds = np.tanh(z1), 1 / np.cosh(z1) ** 2
    z2 = (W2 @ s + b2)[:, 0, :]              # (M, N)
    KK = z2[:, :, None] * z2[:, None, :]
    # NTK at layer 2 by its definition (single output neuron)
    G0 = x @ x.T / n0
    H1 = lb + lW * G0
    H = lb + lW / n1 * np.einsum("mja,mjb->mab", s, s) \
        + np.einsum("mj,mja,mjb->mab", W2[:, 0, :] ** 2, ds, ds) * H1
    for est, ref in ((KK, th.K), (H, th.Theta)):
        mean, se = est.mean(0), est.std(0, ddof=1) / math.sqrt(M)
        # exact at any width, no allowance; rejects the recursion x0, x0.5 and x2
        powered(ref, mean, se, label="layer-2 K / Theta")


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(K1=-1.0), ValueError, "K1 must be"),
    (dict(K1=0.01), ValueError, "smaller than C_b"),
    (dict(), ValueError, "exactly one"),
])
def test_flow_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        flow(MLP(n0=1, width=3, depth=2, C_b=0.5), **kwargs)


def test_flow_rejects_nan_inputs_and_bad_kernels():
    mlp = MLP(n0=2, width=3, depth=2)
    with pytest.raises(ValueError, match="NaN"):
        flow(mlp, [[1.0, np.nan]])
    with pytest.raises(KernelNotPSDError, match="not positive semi-definite"):
        pdlt.gaussian.pair_expectations(pdlt.activation("tanh"), np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(TypeError, match="pdlt.MLP"):
        flow("not an mlp", K1=1.0)


def test_non_finite_averages_refused():
    # exp: <sigma^2>_K = e^{2K} overflows at layer 3 (K ~ 2.6e6); never printed as a result
    mlp = pdlt.MLP(n0=1, width=100, depth=3, activation=pdlt.activation(np.exp))
    # one clear error, and no numpy RuntimeWarning on the way (the fold checks finiteness)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(FloatingPointError, match="not finite at layer 3"):
            pdlt.flow(mlp, K1=1.0)
        from pdlt.cli import main
        assert main(["flow", "--activation", "numpy:exp", "--depth", "3"]) != 0


def test_periodic_flow_at_huge_kernel_is_cheap_and_exact():
    # sin at K1 = 1e12 .. 1e50: <sin^2>_K = (1 - e^{-2K})/2 = 1/2, <cos^2> = 1/2 by the period
    # mean (cost independent of K; the panel rule needed ~sqrt(K) nodes); C_W = 1 gives
    # K^(2) = 1/2 exactly, then the closed form K' = (1 - e^{-2K})/2
    for K1 in (1e12, 1e50):
        st = pdlt.statistics(pdlt.MLP(n0=1, width=8, depth=3, activation="sin", C_W=1.0),
                             K1=K1, get=("K", "Theta", "chi_perp"))
        assert st.K[1] == pytest.approx(0.5, abs=1e-15)
        assert st.K[2] == pytest.approx(0.5 * (1 - np.exp(-1.0)), rel=1e-14)
        assert st.chi_perp[0] == pytest.approx(0.5, abs=1e-15)
