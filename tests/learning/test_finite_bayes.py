"""Tests for pdlt.learning.finite_bayes: Bayesian inference at finite width (book §6.4).

* exact: the O(1/n) formulas equal the first-order part of the exact conditional
  moments of the Edgeworth density (brute force over composite neuron-input
  indices, Gauss-Hermite quadrature, exact for these polynomial integrands);
  the log evidence equals the Edgeworth density at the targets; limits
  (n -> inf gives the NNGP of pdlt.learning.bayes, 1/n scaling, noiseless
  interpolation);
* Monte Carlo: exact Bayesian inference by importance sampling over an
  ensemble of real finite-width ReLU networks against the O(1/n) posterior
  and the Hebbian shift of the hidden-layer metrics, and the infinite-width
  posterior rejected.
"""

import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss

import pdlt
from pdlt.learning._common import SingularKernelError
from pdlt.learning.bayes import nngp_posterior
from pdlt.learning.finite_bayes import (finite_width_posterior, hebbian_kernel_shift,
                                        importance_posterior, nearly_gaussian_posterior)
from pdlt.theory.nearly_gaussian import NearlyGaussian
from conftest import EPS, max_zscore, powered, needs_torch

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def random_problem(D, seed):
    """A PD kernel (D, D) and a V with the index symmetries of V_(ab)(cd)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(D, D + 2))
    K = X @ X.T / (D + 2) + 0.3 * np.eye(D)
    T = rng.normal(size=(D,) * 4)
    V = T + T.transpose(1, 0, 2, 3)
    V = V + V.transpose(0, 1, 3, 2)
    V = V + V.transpose(2, 3, 0, 1)
    return K, V / 8.0


def edgeworth_conditional(K, V, y, N, noise, n, G1=None, nodes=6):
    """Exact conditional mean/cov of z_B | u_A = y under the composite Edgeworth density.

    Builds the full (n_out D)^4 cumulant of NOTATION.md and integrates the
    Edgeworth correction against N(z_B; m0, S0) by tensor Gauss-Hermite
    (exact: the integrand is Gaussian times a degree <= 6 polynomial).
    Returns mean (n_out, M) and cov (n_out M, n_out M) in neuron-major order.
    """
    D = K.shape[0]
    y2 = np.asarray(y, float).reshape(N, -1)
    n_out = y2.shape[1]
    Sig = K + (0 if G1 is None else G1 / n)
    big = np.kron(np.eye(n_out), Sig)
    idx = [(i, a) for i in range(n_out) for a in range(D)]
    A = [p for p, (i, a) in enumerate(idx) if a < N]
    B = [p for p, (i, a) in enumerate(idx) if a >= N]
    perm = A + B
    big = big[np.ix_(perm, perm)]
    big[: len(A), : len(A)] += noise * np.eye(len(A))
    d = np.eye(n_out)
    k4 = (np.einsum("ij,kl,abcd->iajbkcld", d, d, V) + np.einsum("ik,jl,acbd->iajbkcld", d, d, V)
          + np.einsum("il,jk,adbc->iajbkcld", d, d, V)) / n
    k4 = k4.reshape((n_out * D,) * 4)[np.ix_(perm, perm, perm, perm)]
    nA = len(A)
    SAA, SBA, SBB = big[:nA, :nA], big[nA:, :nA], big[nA:, nA:]
    u = y2.T.reshape(-1)                           # neuron-major, train inputs
    m0 = SBA @ np.linalg.solve(SAA, u)
    S0 = SBB - SBA @ np.linalg.solve(SAA, SBA.T)
    x, wq = hermegauss(nodes)
    wq = wq / wq.sum()
    dim = len(B)
    grids = np.meshgrid(*([x] * dim), indexing="ij")
    g = np.stack([gr.ravel() for gr in grids], axis=1)
    wt = np.prod(np.meshgrid(*([wq] * dim), indexing="ij"), axis=0).ravel()
    xi = g @ np.linalg.cholesky(S0).T
    w = np.hstack([np.broadcast_to(u, (len(xi), nA)), m0 + xi])
    P = np.linalg.inv(big)
    yv = w @ P
    t4 = np.einsum("abcd,pa,pb,pc,pd->p", k4, yv, yv, yv, yv)
    t2 = np.einsum("abcd,ab,pc,pd->p", k4, P, yv, yv)
    t0 = np.einsum("abcd,ab,cd->", k4, P, P)
    f = wt * (1.0 + (t4 - 6.0 * t2 + 3.0 * t0) / 24.0)
    Z = f.sum()
    mean = (f[:, None] * xi).sum(0) / Z
    cov = np.einsum("p,pa,pb->ab", f, xi - mean, xi - mean) / Z
    return (m0 + mean).reshape(n_out, -1), cov


# ---------------------------------------------------------------------------
# exact tests
# ---------------------------------------------------------------------------

EXACT_CASES = [
    # (D, N, n_out, noise): one/two outputs, noisy and noiseless
    (3, 2, 1, 0.2),
    (3, 1, 1, 0.0),
    (4, 2, 1, 0.0),
    (3, 2, 2, 0.1),
    (3, 1, 2, 0.0),
]


@pytest.mark.parametrize("D,N,n_out,noise", EXACT_CASES)
def test_formula_is_first_order_of_exact_edgeworth_conditioning(D, N, n_out, noise):
    K, V = random_problem(D, seed=D * 10 + N + n_out)
    y = np.random.default_rng(7).normal(size=(N, n_out)) * 1.3
    n = 1e4
    post = nearly_gaussian_posterior(K, V, y, N, noise, n=n)
    # the first-order part of the exact moments: odd part in V (error O(1/n^3), i.e.
    # relative O(1/n^2) = 1e-8 times coefficients; measured 1e-10 .. 2e-7)
    mp, cp = edgeworth_conditional(K, V, y, N, noise, n)
    mm, cm = edgeworth_conditional(K, -V, y, N, noise, n)
    m0, c0 = edgeworth_conditional(K, 0 * V, y, N, noise, n)
    d_mean_exact = 0.5 * (mp - mm)                       # (n_out, M)
    d_cov_exact = 0.5 * (cp - cm)
    d_mean = (post.mean - post.mean_infinite_width).T
    M = D - N
    cov = post.cov.reshape(n_out * M, n_out * M)
    d_cov = cov - np.kron(np.eye(n_out), post.cov_infinite_width)
    np.testing.assert_allclose(post.mean_infinite_width.T, m0, atol=1e-12)
    np.testing.assert_allclose(post.cov_infinite_width, c0[:M, :M], atol=1e-12)
    scale_m, scale_c = np.abs(d_mean_exact).max(), np.abs(d_cov_exact).max()
    assert scale_m > 1e-8 and scale_c > 1e-8          # the check is not vacuous
    np.testing.assert_allclose(d_mean, d_mean_exact, atol=1e-5 * scale_m)
    np.testing.assert_allclose(d_cov, d_cov_exact, atol=1e-5 * scale_c)


@pytest.mark.parametrize("n_out,noise", [(1, 0.3), (1, 0.0), (2, 0.1)])
def test_log_evidence_is_edgeworth_density_of_targets(n_out, noise):
    D, N = 4, 3
    K, V = random_problem(D, seed=3)
    rng = np.random.default_rng(1)
    y = rng.normal(size=(N, n_out))
    n = 50.0
    post = nearly_gaussian_posterior(K, V, y, N, noise, n=n)
    KA = K[:N, :N] + noise * np.eye(N)
    if n_out == 1:
        ng = NearlyGaussian(KA, V[:N, :N, :N, :N], 0.0, n)
        dens = ng.density(y[:, 0])
        gauss = NearlyGaussian(KA, 0 * V[:N, :N, :N, :N], 0.0, n).density(y[:, 0])
        expected = np.log(gauss) + (dens / gauss - 1.0)   # log N + first-order Edgeworth term
    else:
        # composite variables: build (n_out N) kernel and cumulant by hand
        d = np.eye(n_out)
        VA = V[:N, :N, :N, :N]
        k4 = (np.einsum("ij,kl,abcd->iajbkcld", d, d, VA) + np.einsum("ik,jl,acbd->iajbkcld", d, d, VA)
              + np.einsum("il,jk,adbc->iajbkcld", d, d, VA)).reshape((n_out * N,) * 4) / n
        C = np.kron(d, KA)
        P = np.linalg.inv(C)
        u = y.T.reshape(-1)
        yv = P @ u
        h = (np.einsum("abcd,a,b,c,d->", k4, yv, yv, yv, yv)
             - 6 * np.einsum("abcd,ab,c,d->", k4, P, yv, yv) + 3 * np.einsum("abcd,ab,cd->", k4, P, P))
        _, logdet = np.linalg.slogdet(C)
        expected = -0.5 * u @ yv - 0.5 * logdet - 0.5 * len(u) * np.log(2 * np.pi) + h / 24
    assert post.log_evidence == pytest.approx(expected, rel=1e3 * EPS, abs=1e3 * EPS)
    assert post.log_evidence_infinite_width == pytest.approx(
        nngp_like_log_evidence(KA, y), rel=1e3 * EPS)


def nngp_like_log_evidence(KA, y):
    from pdlt.learning.bayes import log_evidence
    return log_evidence(KA, y, 0.0)


def test_metric_correction_is_a_gp_with_shifted_kernel():
    # V = 0: the posterior is exactly the GP posterior with K + G1/n
    from pdlt.learning.bayes import gp_posterior
    K, V = random_problem(4, seed=5)
    G1 = random_problem(4, seed=6)[0]
    y = np.array([0.4, -1.1])
    post = nearly_gaussian_posterior(K, 0 * V, y, 2, 0.05, G1=G1, n=10.0)
    S = K + G1 / 10.0
    ref = gp_posterior(S[:2, :2], S[2:, :2], S[2:, 2:], y, 0.05)
    np.testing.assert_allclose(post.mean, ref.mean, atol=1e-13)
    np.testing.assert_allclose(post.cov, ref.cov, atol=1e-13)


MLP_CASES = {
    "relu": dict(activation="relu", C_W=2.0, C_b=0.0),
    "tanh": dict(activation="tanh", C_W=1.0, C_b=0.1),
}
XA = np.array([[1.0, 0.3], [-0.4, 0.9]])
XB = np.array([[0.6, 0.7], [-1.0, -0.2]])
YA = np.array([1.3, -1.0])


@pytest.mark.parametrize("name", list(MLP_CASES))
def test_mlp_infinite_width_limit_and_one_over_n(name):
    kw = MLP_CASES[name]
    base = finite_width_posterior(pdlt.MLP(2, width=16, depth=3, **kw), XA, YA, XB, noise=0.3)
    ref = nngp_posterior(pdlt.MLP(2, width=16, depth=3, **kw), XA, YA, XB, noise=0.3)
    np.testing.assert_allclose(base.mean_infinite_width, ref.mean, atol=1e-12)
    np.testing.assert_allclose(base.cov_infinite_width, ref.cov, atol=1e-12)
    assert np.abs(base.mean - base.mean_infinite_width).max() > 1e-3
    # every correction is O(1/n): n * correction converges (up to the O(1/n^2) of keeping
    # G1/n inside the Gaussian factor, relative 1/n ~ 1e-3 here)
    post = {n: finite_width_posterior(pdlt.MLP(2, width=n, depth=3, **kw), XA, YA, XB, noise=0.3)
            for n in (1024, 2048)}
    dm = {n: n * (p.mean - p.mean_infinite_width) for n, p in post.items()}
    dc = {n: n * (p.cov - p.cov_infinite_width) for n, p in post.items()}
    np.testing.assert_allclose(dm[2048], dm[1024], atol=1e-2 * np.abs(dm[1024]).max())
    np.testing.assert_allclose(dc[2048], dc[1024], atol=1e-2 * np.abs(dc[1024]).max())
    heb16 = hebbian_kernel_shift(pdlt.MLP(2, width=16, depth=3, **kw), XA, YA, XB, noise=0.3)
    heb_big = hebbian_kernel_shift(pdlt.MLP(2, width=16 * 64, depth=3, **kw), XA, YA, XB, noise=0.3)
    np.testing.assert_allclose(64 * heb_big.shift, heb16.shift, atol=1e-12)


def test_noiseless_interpolation_at_training_inputs():
    # exact duplicates in the blocks: the posterior interpolates exactly
    K, V = random_problem(2, seed=4)
    idx = [0, 1, 0, 1]
    post = nearly_gaussian_posterior(K[np.ix_(idx, idx)], V[np.ix_(idx, idx, idx, idx)], YA, 2,
                                     0.0, G1=0.3 * K[np.ix_(idx, idx)], n=5.0)
    np.testing.assert_allclose(post.mean[:, 0], YA, atol=1e3 * EPS)
    np.testing.assert_allclose(post.cov, 0.0, atol=1e3 * EPS)
    # through the MLP flow: V and G1 at coinciding inputs come from the vertex engine's
    # coinciding-pair rule, equal to ~1e-6 (measured 1.2e-6), so 1e-4 here
    mlp = pdlt.MLP(2, width=16, depth=3, **MLP_CASES["tanh"])
    post = finite_width_posterior(mlp, XA, YA, XA, noise=0.0)
    np.testing.assert_allclose(post.mean[:, 0], YA, atol=1e-4)
    np.testing.assert_allclose(post.cov, 0.0, atol=1e-4)


def test_hebbian_shift_symmetry_and_no_data_direction():
    mlp = pdlt.MLP(2, width=16, depth=3, **MLP_CASES["relu"])
    heb = hebbian_kernel_shift(mlp, XA, YA, XB, noise=0.3)
    assert heb.shift.shape == (2, 4, 4) and heb.layers == (1, 2)
    np.testing.assert_allclose(heb.shift, heb.shift.transpose(0, 2, 1), atol=1e-14)
    np.testing.assert_allclose(heb.posterior, heb.prior + heb.shift)
    # targets whose whitened outer product equals the prior's average, alpha alpha^T =
    # (K_AA + s2)^-1, leave the representation where it is (Hebbian term vanishes)
    from pdlt.theory.statistics import flow
    KA = flow(mlp, XA)[-1].K + 0.3 * np.eye(2)
    w, U = np.linalg.eigh(KA)
    # one column of y per output neuron: n_out = 2 with y y^T = 2 (K_AA + s2), so that
    # sum_i alpha_i alpha_i^T = n_out (K_AA + s2)^-1
    mlp2 = pdlt.MLP(2, width=16, depth=3, n_out=2, **MLP_CASES["relu"])
    y = U * np.sqrt(2 * w)
    heb2 = hebbian_kernel_shift(mlp2, XA, y, XB, noise=0.3)
    np.testing.assert_allclose(heb2.shift, 0.0, atol=1e-12)


def test_errors():
    mlp = pdlt.MLP(2, width=8, depth=2)
    with pytest.raises(SingularKernelError, match="noise"):
        finite_width_posterior(mlp, np.vstack([XA, XA[:1]]), [1.0, 0.0, 1.0], XB, noise=0.0)
    with pytest.raises(ValueError, match="n_out"):
        finite_width_posterior(mlp, XA, np.ones((2, 2)), XB)
    with pytest.raises(ValueError, match="noise"):
        finite_width_posterior(mlp, XA, YA, XB, noise=-1.0)
    with pytest.raises(ValueError, match="X_test"):
        finite_width_posterior(mlp, XA, YA, np.ones((1, 3)))
    with pytest.raises(ValueError, match="V must have shape"):
        nearly_gaussian_posterior(np.eye(3), np.zeros((3, 3)), [1.0], 1)
    with pytest.raises(ValueError, match="n_train"):
        nearly_gaussian_posterior(np.eye(3), np.zeros((3,) * 4), [1.0], 0)
    with pytest.raises(ValueError, match="depth >= 2"):
        hebbian_kernel_shift(pdlt.MLP(2, depth=1), XA, YA)
    with pytest.raises(ValueError, match="noise must be > 0"):
        importance_posterior(np.zeros((10, 2, 1)), np.zeros((10, 1, 1)), YA, 0.0)
    with pytest.raises(ValueError, match="blocks"):
        importance_posterior(np.zeros((10, 2, 1)), np.zeros((10, 1, 1)), YA, 1.0, blocks=20)


def test_importance_posterior_on_gaussian_draws_matches_gp():
    # calibration of the referee on a case with a closed form: Gaussian draws from K
    from pdlt.learning.bayes import gp_posterior
    K, _ = random_problem(3, seed=2)
    rng = np.random.default_rng(0)
    z = rng.multivariate_normal(np.zeros(3), K, size=200_000)[:, :, None]
    y = np.array([0.5, -0.3])
    ip = importance_posterior(z[:, :2], z[:, 2:], y, 0.2)
    ref = gp_posterior(K[:2, :2], K[2:, :2], K[2:, 2:], y, 0.2)
    # the referee's calibration must be able to fail: it rejects the GP x0, x0.5 and x2
    powered(ref.mean, ip.mean, ip.mean_stderr, label="importance posterior mean")
    powered(np.diag(ref.cov), ip.var[:, 0], ip.var_stderr[:, 0], label="importance posterior var")
    assert 1000 < ip.ess < 200_000


# ---------------------------------------------------------------------------
# Monte Carlo: exact Bayesian inference over real finite-width networks
# ---------------------------------------------------------------------------


@needs_torch
def test_posterior_and_hebbian_shift_against_importance_sampling():
    """Critical ReLU, depth 3, width 16, 2 training and 2 test inputs, noise 0.3.

    100 000 prior networks, weighted by the likelihood (ESS ~ 12 000). The
    O(1/n^2) allowance is the square of the O(1/n) effect in units of the
    natural scale (posterior std for the mean, posterior variance for the
    variance, the diagonal kernel for the metric), i.e. the size of the next
    term of the series; at width 32 (same seed, measured when this was
    written) the z-scores of the mean fell from (2.2, 1.0) to (0.4, 0.3) while
    the infinite-width z-score fell from -8.0 to -4.8, as an O(1/n^2)
    residual and an O(1/n) signal should.
    """
    from pdlt.experiment import Ensemble

    mlp = pdlt.MLP(2, width=16, depth=3, **MLP_CASES["relu"])
    noise = 0.3
    post = finite_width_posterior(mlp, XA, YA, XB, noise=noise)
    heb = hebbian_kernel_shift(mlp, XA, YA, XB, noise=noise)
    z = Ensemble(mlp, networks=100_000, seed=1).preactivations(np.vstack([XA, XB]))
    zL = z[-1].numpy().transpose(0, 2, 1)                       # (R, D, n_out)
    G = np.stack([np.einsum("mja,mjb->mab", zl.numpy(), zl.numpy()) / zl.shape[1]
                  for zl in z[:-1]], axis=1)                     # (R, L-1, D, D)
    ip = importance_posterior(zL[:, :2], zL[:, 2:], YA, noise, observables=G)
    assert ip.ess > 5000, f"ESS {ip.ess:.0f} too small for this check"

    # every O(1/n) effect is compared as (measured - infinite width) against the predicted
    # correction, with its allowance fixed, and must reject the correction x0, x0.5, x2
    sd_inf = post.std_infinite_width
    d_mean = post.mean - post.mean_infinite_width
    allow_mean = np.abs(d_mean).max() ** 2 / sd_inf.min()
    powered(d_mean, ip.mean - post.mean_infinite_width, ip.mean_stderr, allow_mean,
            label="O(1/n) posterior mean", factors=FINITE_BAYES_FACTORS["mean"])

    var = np.diag(post.cov)[:, None]
    var_inf = np.diag(post.cov_infinite_width)[:, None]
    allow_var = np.abs(var - var_inf).max() ** 2 / var_inf.min()
    powered(var - var_inf, ip.var - var_inf, ip.var_stderr, allow_var,
            label="O(1/n) posterior variance", factors=FINITE_BAYES_FACTORS["var"],
            zero=FINITE_BAYES_FACTORS["var"] != ())

    Kdiag = np.array([np.diag(p).min() for p in heb.prior])
    allow_heb = np.abs(heb.shift).max() ** 2 / Kdiag.min()
    powered(heb.shift, ip.observables, ip.observables_stderr, allow_heb,
            label="Hebbian shift of the hidden metrics", factors=FINITE_BAYES_FACTORS["heb"])


#: the negative controls each comparison of the importance-sampling test rejects (x0 too,
#: except for the variance). Measured (100 000 networks, ESS ~ 12 000): the O(1/n)
#: posterior mean correction resolves to 48 % (controls x0: z 6.5, x0.5: 2.4, x2: 10.0);
#: the Hebbian metric shift to 39 % (x0: 8.9, x0.5: 3.8, x2: 11.7); the O(1/n) posterior
#: variance correction to 17x its size (controls z < 1: no check at all). The x0.5 controls
#: of the mean and the metric shift and the whole variance comparison are unresolved here:
#: resolving them this way needs ~4x and ~300x the networks. The variance is resolved by
#: integrating the last layer out instead (test_posterior_variance_correction_resolved).
FINITE_BAYES_FACTORS = {"mean": (2.0,), "var": (), "heb": (2.0,)}


# ---------------------------------------------------------------------------
# the O(1/n) posterior variance against exact inference with the last layer integrated out
# ---------------------------------------------------------------------------


def test_conditional_posterior_is_the_exact_mixture_of_gaussian_processes():
    from pdlt.report.learning import conditional_posterior

    K, _ = random_problem(4, seed=3)
    K2 = K + 0.2 * np.outer([1.0, -0.5, 0.3, 0.8], [1.0, -0.5, 0.3, 0.8])
    y, s = np.array([0.7, -0.4]), 0.1
    # one kernel: the Gaussian-process posterior exactly
    p = conditional_posterior(np.repeat(K[None], 6, 0), y, s, blocks=3)
    gp = nngp_posterior_from_kernel(K, y, s)
    np.testing.assert_allclose(p.mean[:, 0], gp[0], rtol=1e-12)
    np.testing.assert_allclose(p.var[:, 0], gp[1], rtol=1e-12)
    assert p.ess == pytest.approx(6.0)
    # two kernels: the evidence-weighted mixture, written out by hand
    p = conditional_posterior(np.stack([K, K2, K, K2]), y, s, blocks=2)
    parts = [nngp_posterior_from_kernel(k, y, s) for k in (K, K2)]
    w = np.array([np.exp(gaussian_log_evidence(k[:2, :2] + s * np.eye(2), y)) for k in (K, K2)])
    w = w / w.sum()
    mean = sum(wi * m for wi, (m, _) in zip(w, parts))
    var = sum(wi * (v + m * m) for wi, (m, v) in zip(w, parts)) - mean ** 2
    np.testing.assert_allclose(p.mean[:, 0], mean, rtol=1e-12)
    np.testing.assert_allclose(p.var[:, 0], var, rtol=1e-12)
    with pytest.raises(ValueError, match="noise"):
        conditional_posterior(np.repeat(K[None], 6, 0), y, -1.0)
    with pytest.raises(ValueError, match="y_train"):
        conditional_posterior(np.repeat(K[None], 6, 0), np.zeros(4), s)


def nngp_posterior_from_kernel(K, y, s):
    """GP posterior mean and variance at the inputs after the len(y) training ones."""
    N = len(y)
    A = K[:N, :N] + s * np.eye(N)
    mean = K[N:, :N] @ np.linalg.solve(A, y)
    var = np.diag(K[N:, N:] - K[N:, :N] @ np.linalg.solve(A, K[:N, N:]))
    return mean, var


def gaussian_log_evidence(A, y):
    return -0.5 * y @ np.linalg.solve(A, y) - 0.5 * np.linalg.slogdet(A)[1]


@needs_torch
def test_posterior_variance_correction_resolved():
    """The O(1/n) posterior variance, resolved: exact inference over real networks
    (critical ReLU, depth 3, noise 0.05, widths 16 and 32, 20 000 networks each, the last
    layer integrated out: :func:`pdlt.report.learning.conditional_posterior`) against the
    predicted 1/n coefficient at the test input with the larger shift, at n = 32 with the
    allowance |d(16) - d(32)|, rejecting the theory x0, x0.5 and x2. Measured when written:
    3.11 +- 0.14 against 3.19, allowance 0.28, resolution 0.27 (controls z 14.7, 7.2, 15.5),
    ~4 CPU s. The report (pdlt.report.learning.finite_bayes_study, 40 000 networks) resolves
    relu, tanh and gelu to 0.13-0.16; the importance-sampling test above cannot (17x).
    """
    from pdlt.report.learning import BayesCase, run_bayes_case

    res = run_bayes_case(BayesCase("relu", networks=20000, seed=7))
    th, d, se = res["var1"][1], res["dv"][:, 1], res["dv_se"][:, 1]
    assert min(res["ess"]) > 0.2 * 20000
    powered(th, d[1], se[1], abs(d[1] - d[0]), label="relu O(1/n) posterior variance",
            max_resolution=0.5)


@needs_torch
def test_bayes_control_variate_zero_mean_unbiased_and_powered():
    """The posterior mean's O(1/n) with the exactly zero-mean control
    (:func:`pdlt.report.learning.hidden_kernel_martingale`, cross-fitted in
    :func:`~pdlt.report.learning.posterior_control_variate`): critical ReLU, depth 3,
    widths 16 and 32, 40 000 networks each (~5 CPU s). (1) On 10 000 networks of width
    16 the control's mean is zero within 4 se at every entry (max z 1.6 when written), and
    the same check rejects a pair rule 2 % off (z 6.5); (2) on the same networks the
    controlled mean moves from the plain one by less than 4 se of the shift; (3) the extrapolated row at the test input with the larger shift passes,
    resolved to <= 50 %, and rejects x0, x0.5, x2 (measured when written: 0.96 +- 0.10
    against 1.00, resolution 0.41; the report's 150 000 networks reach 0.20)."""
    import pdlt.report.learning as Lmod
    from pdlt.report.learning import (BAYES_X_TEST, BAYES_X_TRAIN, BAYES_Y_TRAIN, BayesCase,
                                      hidden_kernel_martingale, posterior_control_variate,
                                      run_bayes_case)
    from pdlt.report.rows import critical_mlp, width_extrapolation

    X = np.vstack([BAYES_X_TRAIN, BAYES_X_TEST])
    mlp = critical_mlp("relu", 16, 3, n0=2, n_out=1)
    M = 10000
    Kh, lam, _ = hidden_kernel_martingale(mlp, X, M, seed=16)
    z = np.abs(lam.mean(0)) / (lam.std(0, ddof=1) / np.sqrt(M))
    assert z.max() < 4, z
    rule = Lmod._pair_rule
    try:
        Lmod._pair_rule = lambda act: (lambda G: 1.02 * rule(act)(G))
        _, bad, _ = hidden_kernel_martingale(mlp, X, M, seed=16)
    finally:
        Lmod._pair_rule = rule
    assert (np.abs(bad.mean(0)) / (bad.std(0, ddof=1) / np.sqrt(M))).max() > 4
    c = posterior_control_variate(Kh, lam, BAYES_Y_TRAIN, 0.05)
    from pdlt.report.learning import conditional_posterior
    p = conditional_posterior(Kh, BAYES_Y_TRAIN, 0.05)
    assert np.all(c["mean_stderr"] < 0.85 * c["plain_mean_stderr"])
    shift_se = np.sqrt(np.maximum(c["plain_mean_stderr"] ** 2 - c["mean_stderr"] ** 2, 0))
    assert np.all(np.abs(c["mean"] - p.mean[:, 0]) < 4 * shift_se + 1e-12)

    res = run_bayes_case(BayesCase("relu", networks=40000, control_variate=True))
    b = int(np.argmax(np.abs(res["mean1"])))
    ext, se, allow = width_extrapolation(res["dm"][0, b], res["dm_se"][0, b],
                                         res["dm"][1, b], res["dm_se"][1, b])
    powered(res["mean1"][b], ext, se, allow, label="relu O(1/n) posterior mean (control)",
            max_resolution=0.5)
