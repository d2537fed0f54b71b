"""Residual MLPs against ensembles of real residual networks.

Every residual prediction (K, Theta, V, G1, the three-point function kappa3
and the output mixing-variance cumulant k2 that the information theory is
built from) is compared in standard errors: |dev| <= 4 stderr + allowance,
where the allowance is the stated O(1/n^2) truncation, taken as
(1/2) nu (l - 1) / n relative to the O(1/n) statistic (the size of the next
term in the exactly solvable ReLU case, Var = (1 + nu/n)^(l-1) - 1). Seeds
are fixed. The NTK forward equation is checked against autodiff exactly.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pdlt  # noqa: E402
from pdlt.experiment import Ensemble  # noqa: E402
from pdlt.experiment import ntk as _ntk  # noqa: E402
from pdlt.theory.residual import residual_mlp, residual_vertex_slope  # noqa: E402
from pdlt.theory.vertex import finite_width_flow  # noqa: E402

N_WIDTH = 128
CONFIGS = [("relu", 0.5), ("tanh", 0.5)]


def _z(mean, stderr, theory, allowance=0.0):
    dev = np.abs(np.asarray(mean) - np.asarray(theory))
    return float(np.max(dev / (np.asarray(stderr) + np.asarray(allowance) / 4 + 1e-300)))


def test_ntk_forward_matches_autodiff_residual():
    m = pdlt.MLP(n0=2, width=6, depth=4, n_out=6, activation="tanh", C_W=0.8, C_b=0.1,
                 gamma=0.6, xi=0.9, lambda_b=0.5, lambda_W=1.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, dtype=torch.float64, generator=g)
    Ws = [torch.randn(4, o, i, dtype=torch.float64, generator=g) * math.sqrt(0.8 / i)
          for i, o in zip(m.widths[:-1], m.widths[1:])]
    bs = [0.3 * torch.randn(4, o, dtype=torch.float64, generator=g) for o in m.widths[1:]]
    Hf = _ntk.ntk_forward(Ws, bs, x, m)
    for layer in (2, 4):
        Ha = _ntk.ntk_autodiff(Ws, bs, x, m, layer)
        assert float((Hf[layer - 1] - Ha).abs().max() / Ha.abs().max()) < 1e-12
    # the forward pass: z' = xi (b + W sigma(z)) + gamma z
    z = _ntk.preactivations(Ws, bs, x, m)
    manual = 0.9 * (torch.baddbmm(bs[2][:, :, None], Ws[2], torch.tanh(z[1]))) + 0.6 * z[1]
    assert torch.allclose(z[2], manual, rtol=1e-14, atol=1e-14)
    # an activation in place of the MLP is the plain network
    plain = _ntk.preactivations(Ws, bs, x, m.activation)
    assert not torch.allclose(plain[2], z[2])


@pytest.mark.parametrize("act,gamma", CONFIGS)
def test_kernel_vertex_metric_against_ensemble(act, gamma):
    L = 4
    m = residual_mlp(act, gamma, width=N_WIDTH, depth=L, lambda_b=0.5)
    fl = finite_width_flow(m, K1=1.0)
    th = pdlt.flow(m, K1=1.0)
    layers = [2, 3]
    meas = Ensemble(m, networks=4000, seed=11).measure(K1=1.0, stats=["K", "V", "G1", "Theta"],
                                                       K_theory=fl, layers=layers, progress=False)
    idx = [l - 1 for l in layers]
    nu = residual_vertex_slope(act, gamma)
    allow = np.array([0.5 * nu * (l - 1) / N_WIDTH for l in layers])
    Kt = fl.K[idx] + fl["G1"][idx] / N_WIDTH
    assert _z(meas["K"].mean, meas["K"].stderr, Kt, allow / N_WIDTH * Kt) < 4
    assert _z(meas["V"].mean, meas["V"].stderr, fl["V"][idx], allow * np.abs(fl["V"][idx])) < 4
    assert _z(meas["G1"].mean, meas["G1"].stderr, fl["G1"][idx],
              allow * (np.abs(fl["G1"][idx]) + fl.K[idx])) < 4
    # Theta: infinite-width mean, O(1/n) allowance relative (its 1/n correction is not in theory)
    assert _z(meas["Theta"].mean, meas["Theta"].stderr, th.Theta[idx],
              nu * L / N_WIDTH * th.Theta[idx]) < 4


def _pair_mean(a, b):
    n = a.shape[1]
    return (a.sum(1) * b.sum(1) - (a * b).sum(1)) / (n * (n - 1))


def test_three_point_function_relu():
    """E[z_i z_i z_k] (i != k) = kappa3 / n for a residual ReLU network (zero if plain)."""
    gamma, n = 0.6, 64
    m = residual_mlp("relu", gamma, width=n, depth=4)
    fl = finite_width_flow(m, K1=1.0)
    E = Ensemble(m, networks=12000, seed=3)
    zs = E.preactivations(E.single_input(1.0))
    for l in (2, 3):
        z = zs[l - 1][:, :, 0].numpy()
        est = _pair_mean(z * z, z) * n
        mean, se = est.mean(), est.std() / math.sqrt(est.size)
        k3 = fl["kappa3"][l - 1]
        allow = 0.5 * residual_vertex_slope("relu", gamma) * (l - 1) / n * abs(k3)
        assert abs(mean - k3) <= 4 * se + allow, (l, mean, se, k3)
        assert abs(k3) > 5 * se   # the effect itself is resolved (about 8 se at l = 2)


@pytest.mark.parametrize("act,gamma", [("relu", 0.0), ("relu", 0.5), ("tanh", 0.5)])
def test_output_mixing_variance_cumulant(act, gamma):
    """k2 = Var(Ghat)/E[Ghat]^2 of the last layer's conditional variance, computed exactly per
    network from layer L-1, against V^(L) / (n K^(L)^2): the input of the r* argument."""
    L, n = 5, N_WIDTH
    m = residual_mlp(act, gamma, width=n, depth=L) if gamma else pdlt.MLP(
        n0=1, width=n, depth=L, activation=act, C_W=pdlt.criticality(act).C_W)
    fl = finite_width_flow(m, K1=1.0)
    E = Ensemble(m, networks=4000, seed=5)
    z = E.preactivations(E.single_input(1.0))[L - 2][:, :, 0]
    tact = pdlt.experiment.activations.torch_activation(m.activation)
    G = (m.C_b[L - 1] + m.C_W[L - 1] * (tact.sigma(z) ** 2).mean(1)).numpy()
    g = G / G.mean()
    k2, se = float(np.var(g)), float(np.std((g - 1) ** 2) / math.sqrt(g.size))
    want = fl["V"][-1] / (n * fl.K[-1] ** 2)
    allow = 0.5 * residual_vertex_slope(act, gamma) * (L - 1) / n * want
    assert abs(k2 - want) <= 4 * se + allow, (k2, se, want)
