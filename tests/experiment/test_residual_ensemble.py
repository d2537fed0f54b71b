"""Residual MLPs against ensembles of real residual networks.

Every residual prediction (K, Theta, V, G1, the three-point function kappa3
and the output mixing-variance cumulant k2 that the information theory is
built from) is measured at two widths n and 2n and compared as the Richardson
extrapolation 2 m(2n) - m(n) through ``conftest.powered``: |dev| <= 4 stderr +
allowance with the measured allowance |m(2n) - m(n)|/2 (not proportional to
the theory), and the same comparison must reject the theory x0, x0.5 and x2
where it is resolved (``RESIDUAL_UNRESOLVED`` lists where it is not). Seeds
are fixed. The NTK forward equation is checked against autodiff exactly.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pdlt  # noqa: E402
from conftest import powered  # noqa: E402
from pdlt.experiment import Ensemble  # noqa: E402
from pdlt.report.rows import width_extrapolation  # noqa: E402
from pdlt.experiment import ntk as _ntk  # noqa: E402
from pdlt.theory.residual import residual_mlp  # noqa: E402

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


#: residual comparisons that pass but cannot reject the theory x0.5 / x2 at CI cost (plain
#: estimators; the metric's 1/n shift G1 is a few % of K): agreement checks only. The
#: control-variate estimators resolve them: test_residual_metric_vertex_powered
RESIDUAL_UNRESOLVED = {("relu", "G1"), ("tanh", "G1")}
#: rejects x0, x0.5, x2 but resolves only to 63 % (V/(nK^2) of tanh is small at layer 3)
RESIDUAL_COARSE = {("tanh", "V")}


@pytest.mark.parametrize("act,gamma", CONFIGS)
def test_kernel_vertex_metric_against_ensemble(act, gamma):
    L, layers = 4, [2, 3]
    idx = [l - 1 for l in layers]
    ms = []
    for k, n in enumerate((N_WIDTH // 2, N_WIDTH)):
        m = residual_mlp(act, gamma, width=n, depth=L, lambda_b=0.5)
        fl = pdlt.statistics(m, K1=1.0, get=["V", "G1"])
        ms.append(Ensemble(m, networks=4000, seed=11 + k).measure(
            K1=1.0, stats=["K", "V", "G1", "Theta"], K_theory=fl, layers=layers,
            progress=False))
    th = pdlt.flow(m, K1=1.0)
    theory = {"K": fl.K[idx], "V": fl["V"][idx], "G1": fl["G1"][idx], "Theta": th.Theta[idx]}
    for s, t in theory.items():
        ext, se, al = width_extrapolation(ms[0][s].mean, ms[0][s].stderr, ms[1][s].mean,
                                          ms[1][s].stderr)
        if (act, s) in RESIDUAL_UNRESOLVED:
            powered(t, ext, se, al, label=f"residual {act} {s}", factors=(), zero=False)
        else:
            powered(t, ext, se, al, label=f"residual {act} {s}",
                    max_resolution=None if (act, s) in RESIDUAL_COARSE else 0.5)


def _pair_mean(a, b):
    n = a.shape[1]
    return (a.sum(1) * b.sum(1) - (a * b).sum(1)) / (n * (n - 1))


def test_three_point_function_relu():
    """E[z_i z_i z_k] (i != k) = kappa3 / n for a residual ReLU network (zero if plain)."""
    gamma = 0.6
    meas = []
    for k, n in enumerate((32, 64)):
        m = residual_mlp("relu", gamma, width=n, depth=4)
        fl = pdlt.statistics(m, K1=1.0, get=["kappa3"])
        E = Ensemble(m, networks=12000, seed=3 + k)
        zs = E.preactivations(E.single_input(1.0))
        row = []
        for l in (2, 3):
            z = zs[l - 1][:, :, 0].numpy()
            est = _pair_mean(z * z, z) * n
            row.append((est.mean(), est.std() / math.sqrt(est.size)))
        meas.append(np.array(row))
    ext, se, al = width_extrapolation(meas[0][:, 0], meas[0][:, 1], meas[1][:, 0], meas[1][:, 1])
    # the extrapolation doubles the error: resolution 0.82, rejects kappa3 x0 (z 5.7) but
    # not x0.5 (3.2) or x2 (4.1, marginal): an existence check plus agreement, listed as
    # unresolved in the README
    powered(fl["kappa3"][1:3], ext, se, al, label="residual relu kappa3", factors=())


@pytest.mark.parametrize("act,gamma", [("relu", 0.0), ("relu", 0.5), ("tanh", 0.5)])
def test_output_mixing_variance_cumulant(act, gamma):
    """k2 = Var(Ghat)/E[Ghat]^2 of the last layer's conditional variance, computed exactly per
    network from layer L-1, against V^(L) / (n K^(L)^2): the input of the r* argument."""
    L = 5
    nk2 = []
    for k, n in enumerate((N_WIDTH // 2, N_WIDTH)):
        m = residual_mlp(act, gamma, width=n, depth=L) if gamma else pdlt.MLP(
            n0=1, width=n, depth=L, activation=act, C_W=pdlt.criticality(act).C_W)
        fl = pdlt.statistics(m, K1=1.0, get=["V", "G1"])
        E = Ensemble(m, networks=4000, seed=5 + k)
        z = E.preactivations(E.single_input(1.0))[L - 2][:, :, 0]
        tact = pdlt.experiment.activations.torch_activation(m.activation)
        G = (m.C_b[L - 1] + m.C_W[L - 1] * (tact.sigma(z) ** 2).mean(1)).numpy()
        g = G / G.mean()
        # n k2 = V / K^2 + O(1/n)
        nk2.append((n * float(np.var(g)), n * float(np.std((g - 1) ** 2) / math.sqrt(g.size))))
    ext, se, al = width_extrapolation(nk2[0][0], nk2[0][1], nk2[1][0], nk2[1][1])
    powered(fl["V"][-1] / fl.K[-1] ** 2, ext, se, al, label=f"{act} gamma={gamma} n k2",
            max_resolution=0.5)


# ---------------------------------------------------------------------------
# G1 and V of residual networks with exactly zero-mean control variates
# (pdlt.experiment.estimators.residual_metric_martingale holds the derivation)
# ---------------------------------------------------------------------------

from pdlt.experiment.estimators import (metric_martingale, residual_crossfit,  # noqa: E402
                                        residual_metric_martingale,
                                        shifted_activation_moments)
from pdlt.report.residual import residual_metric_measure  # noqa: E402


def _single_input_preactivations(mlp, networks, seed):
    E = Ensemble(mlp, networks=networks, seed=seed)
    return [z[..., 0].double().numpy() for z in E.preactivations(E.single_input(1.0))]


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_shifted_activation_moments_exact(act):
    """E[sigma^2], E[sigma^4], E[sigma^2 x^2] under N(mu, var) against adaptive quadrature:
    the control variates' means are exactly zero only if these are exact."""
    from scipy import integrate

    a = pdlt.activation(act)
    mu, var = np.array([-1.3, 2.5, 0.3, 0.0]), np.array([2.0, 4.0, 0.5, 1.0])
    got = shifted_activation_moments(a, mu, var)
    for j, (p, r) in enumerate([(1, 0), (2, 0), (1, 2)]):
        def f(x, m, v):
            return (a(x) ** 2) ** p * x ** r * np.exp(-(x - m) ** 2 / (2 * v)) / np.sqrt(
                2 * np.pi * v)
        ref = [integrate.quad(f, m - 12 * np.sqrt(v), m + 12 * np.sqrt(v), args=(m, v),
                              points=[0.0], epsabs=0, epsrel=1e-13, limit=500)[0]
               for m, v in zip(mu, var)]
        # quadrature tolerance 1e-13; float64 sums of ~70 terms: a few 1e-15
        np.testing.assert_allclose(got[j], ref, rtol=1e-12, err_msg=f"{act} moment {j}")


def test_residual_martingale_reduces_to_metric_martingale_at_gamma_zero():
    """A plain network through the residual estimator gives metric_martingale's Y, G, W."""
    m = pdlt.MLP(n0=1, width=12, depth=4, activation="tanh", C_W=pdlt.criticality("tanh").C_W,
                 n_out=12)
    z = _single_input_preactivations(m, 300, seed=4)
    K = np.asarray(pdlt.flow(m, K1=1.0).K, float)
    res = residual_metric_martingale(z, 1.0, m.C_b, m.C_W, m.gamma, m.xi, m.activation, K)
    # the same Gaussian averages on both sides (shifted_activation_moments'), so only the
    # algebra is compared
    def g(G):
        return shifted_activation_moments("tanh", 0.0, G)[0]

    def v(G):
        return shifted_activation_moments("tanh", 0.0, G)[1] - g(G) ** 2

    slope = shifted_activation_moments("tanh", 0.0, K)[2] / (2 * K * K) - g(K) / (2 * K)
    C_W = np.asarray(m.C_W, float)
    chi = np.r_[0.0, C_W[1:] * slope[:-1]]
    s = np.stack([(np.tanh(a) ** 2).mean(1) for a in z], 1)
    met = metric_martingale(s, 1.0, m.C_b, C_W, g, chi, v=v, widths=[12] * 4)
    for key in ("Y", "G", "Lambda", "W"):
        # same inputs, different float operation order: a few ulp of O(1) values
        np.testing.assert_allclose(res[key], met[key], rtol=1e-12, atol=1e-14, err_msg=key)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_residual_martingale_unbiased(act):
    """Paired per-network differences with exactly zero mean: Y - q (the metric) and the
    vertex's Q against the plain pair moment, for the linearized and the cross-fitted
    coefficients. The same check rejects (z > 6) the plain network's conditional mean
    (no residual shift gamma z) and the vertex control without its W."""
    n, L, M = 8, 4, 4000
    m = residual_mlp(act, 0.5, width=n, depth=L, n_out=n)
    z = _single_input_preactivations(m, M, seed=17)
    K = np.asarray(pdlt.flow(m, K1=1.0).K, float)
    lin = residual_metric_martingale(z, 1.0, m.C_b, m.C_W, m.gamma, m.xi, m.activation, K)
    q = np.stack([(a * a).mean(1) for a in z], 1)
    z2 = [a * a for a in z]
    pair = np.stack([(b.sum(1) ** 2 - (b * b).sum(1)) / (n * (n - 1)) for b in z2], 1)
    plain_Q = pair - 2 * K * q + K * K

    def zscore(x):
        return np.abs(x.mean(0)) / (x.std(0, ddof=1) / np.sqrt(M) + 1e-300)

    for name, p in (("linearized", lin), ("cross-fitted", residual_crossfit(lin))):
        Q = (p["G"] - K) ** 2 - p["Lambda"] ** 2 + p["W"]
        assert np.all(zscore(p["Y"] - q)[1:] < 4), (name, zscore(p["Y"] - q))
        assert np.all(zscore(Q - plain_Q)[1:] < 4), (name, zscore(Q - plain_Q))
    # power: the plain network's conditional mean h = E_{N(0, xi^2 G)}[sigma^2] (forgetting
    # the residual mean gamma z) biases the metric, and Q without its W the vertex
    C_b, C_W, gam, xi = (np.asarray(v_, float) for v_ in (m.C_b, m.C_W, m.gamma, m.xi))
    s_ = np.stack([(np.asarray(m.activation(a), float) ** 2).mean(1) for a in z], 1)
    G = C_b[1:] + C_W[1:] * s_[:, :-1]
    naive_h = np.c_[np.full(M, shifted_activation_moments(m.activation, 0.0, 1.0)[0]),
                    shifted_activation_moments(m.activation, 0.0, xi[1:] ** 2 * G)[0]]
    m2, _, mx = shifted_activation_moments(m.activation, 0.0, K)
    chi = xi ** 2 * C_W * np.r_[0.0, (mx / (2 * K * K) - m2 / (2 * K))[:-1]] + gam ** 2
    shift = (s_ - naive_h) - lin["d"]           # d_naive - d
    lam_shift = np.zeros((M, L))
    for l in range(1, L):
        lam_shift[:, l] = chi[l] * lam_shift[:, l - 1] + xi[l] ** 2 * C_W[l] * shift[:, l - 1]
    assert zscore(lin["Y"] - lam_shift - q)[1:].max() > 6, zscore(lin["Y"] - lam_shift - q)
    Qbad = (lin["G"] - K) ** 2 - lin["Lambda"] ** 2
    assert zscore(Qbad - plain_Q)[1:].max() > 6, zscore(Qbad - plain_Q)


@pytest.mark.parametrize("act,n,L", [("tanh", 16, 6), ("relu", 32, 5)])
def test_residual_metric_vertex_powered(act, n, L):
    """Residual G1 and V at the last layer, control-variate estimators at widths n and 2n
    (extrapolated, measured allowance): resolved to <= 50 % and reject x0, x0.5, x2.

    Measured resolutions (2000 networks per width): tanh G1 21 %, V 6 %; relu G1 30 %,
    V 31 % (the plain estimators of test_kernel_vertex_metric_against_ensemble leave G1
    unresolved at 4000 networks); ~10 s for both."""
    ms, fl = [], None
    for k, w in enumerate((n, 2 * n)):
        m = residual_mlp(act, 0.5, width=w, depth=L, n_out=w)
        fl = pdlt.statistics(m, K1=1.0, get=["V", "G1"])
        ms.append(residual_metric_measure(m, 2000, seed=31 + k))
    for s in ("G1", "V"):
        ext, se, al = width_extrapolation(ms[0][s].mean[-1], ms[0][s].stderr[-1],
                                          ms[1][s].mean[-1], ms[1][s].stderr[-1])
        powered(fl[s][-1], ext, se, al, label=f"residual {act} {s} (control variates)",
                max_resolution=0.5)
