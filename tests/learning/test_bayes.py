"""NNGP posterior, log evidence, model comparison (pdlt.learning.bayes)."""

import numpy as np
import pytest
import scipy.stats

import pdlt
from conftest import EPS, needs_torch, powered
from pdlt.learning import (NNGPRegressor, SingularKernelError, evidence_scan, gp_posterior,
                           log_evidence, nngp_posterior)
from pdlt.learning._common import last_layer_kernels

# named configurations: (activation, C_b, C_W)
CONFIGS = {"tanh-critical": ("tanh", 0.0, 1.0), "relu-critical": ("relu", 0.0, 2.0),
           "erf-ordered": ("erf", 0.2, 0.8)}


def _data(seed=0, n0=3, N=6, M=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, n0)), rng.standard_normal(N), rng.standard_normal((M, n0))


def _direct(K, N, y, s2):
    """Textbook GP formulas with explicit inverses (independent of the Cholesky path)."""
    A = K[:N, :N] + s2 * np.eye(N)
    Ainv = np.linalg.inv(A)
    mean = K[N:, :N] @ Ainv @ y
    cov = K[N:, N:] - K[N:, :N] @ Ainv @ K[:N, N:]
    logev = scipy.stats.multivariate_normal(np.zeros(N), A).logpdf(y)
    return mean, cov, logev, np.linalg.cond(A)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_posterior_equals_direct_gp(name, noise):
    act, cb, cw = CONFIGS[name]
    mlp = pdlt.MLP(3, width=50, depth=3, activation=act, C_b=cb, C_W=cw)
    Xa, y, Xb = _data()
    post = nngp_posterior(mlp, Xa, y, Xb, noise=noise)
    K, _ = last_layer_kernels(mlp, Xa, Xb)
    mean, cov, logev, cond = _direct(K, 6, y, noise)
    # both paths solve the same system: error bounded by cond(A) * eps relative to the scale
    tol = 100 * cond * EPS
    scale = np.abs(K).max()
    np.testing.assert_allclose(post.mean[:, 0], mean, atol=tol * max(1, np.abs(mean).max()))
    np.testing.assert_allclose(post.cov, cov, atol=tol * scale)
    assert post.log_evidence == pytest.approx(logev, abs=tol * 6)


def test_interpolates_training_points_without_noise():
    # C_b > 0: with C_b = 0 and one feature, K^(1) = C_W x x^T has rank 1
    mlp = pdlt.MLP(1, width=10, depth=4, activation="tanh", C_b=0.1, C_W=1.0)
    x = np.linspace(-1, 1, 5)[:, None]
    y = np.cos(2 * x[:, 0])
    post = nngp_posterior(mlp, x, y, x)
    np.testing.assert_allclose(post.mean[:, 0], y, atol=1e-8)
    assert post.std.max() < 1e-6


def test_multi_output_components_are_independent():
    mlp = pdlt.MLP(3, width=50, depth=2, activation="erf", C_b=0.1, C_W=1.5)
    Xa, y, Xb = _data(1)
    Y = np.stack([y, -2 * y + 1], axis=1)
    both = nngp_posterior(mlp, Xa, Y, Xb, noise=0.1)
    for k in range(2):
        one = nngp_posterior(mlp, Xa, Y[:, k], Xb, noise=0.1)
        np.testing.assert_allclose(both.mean[:, k], one.mean[:, 0], rtol=1e-12, atol=1e-12)
    lone = [log_evidence(last_layer_kernels(mlp, Xa)[0], Y[:, k], 0.1) for k in range(2)]
    assert both.log_evidence == pytest.approx(sum(lone), rel=1e-12)


def test_gp_posterior_shape_errors():
    K = np.eye(3)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        gp_posterior(K, np.ones((2, 4)), np.eye(2), np.ones(3))
    with pytest.raises(ValueError, match="y has 2 rows"):
        gp_posterior(K, np.ones((2, 3)), np.eye(2), np.ones(2))


def test_duplicate_inputs_need_noise():
    mlp = pdlt.MLP(2, width=10, depth=3, activation="tanh")
    Xa, y, Xb = _data(n0=2)
    Xa[3] = Xa[1]
    with pytest.raises(SingularKernelError, match="add noise > 0"):
        nngp_posterior(mlp, Xa, y, Xb)
    with pytest.raises(SingularKernelError, match="add noise > 0"):
        NNGPRegressor(mlp, noise=0).fit(Xa, y)
    # the default noise="auto" adds the smallest jitter that makes the kernel
    # invertible: the vanishing-noise limit, whose mean at a duplicated input is
    # the average of its targets
    reg = NNGPRegressor(mlp).fit(Xa, y)
    assert reg.noise_ > 0
    yy = np.asarray(y, dtype=float).reshape(len(Xa), -1)
    mean = np.asarray(reg.predict(Xa[[1]])).reshape(-1)
    # float64 bound of this limit: the jitter noise_ ~ 1e-13 of the kernel leaves
    # K + noise_ I with condition ~ lambda_max / noise_ ~ 1e13, so the solve carries
    # ~eps cond ||y|| (1e-3 here; measured 7e-5 on one machine, under the former
    # rtol 1e-4 on another); plus the limit's own distance noise_ / lambda_min(K_U) ||y||
    KU, _ = last_layer_kernels(mlp, np.delete(Xa, 3, axis=0))
    KA, _ = last_layer_kernels(mlp, Xa)
    cond = np.linalg.eigvalsh(KA)[-1] / reg.noise_
    tol = 10 * (reg.noise_ / np.linalg.eigvalsh(KU)[0] + EPS * cond) * np.linalg.norm(yy)
    # still separates the average from either target alone
    assert tol < 0.1 * abs(yy[1] - yy[3]).max()
    np.testing.assert_allclose(mean, 0.5 * (yy[1] + yy[3]), rtol=0, atol=tol)
    # the kernel-level entry point detects it from the eigenvalues
    K, _ = last_layer_kernels(mlp, Xa)
    with pytest.raises(SingularKernelError, match=r"smallest eigenvalue.*add noise > 0"):
        log_evidence(K, y)
    post = nngp_posterior(mlp, Xa, y, Xb, noise=1e-6)
    assert np.all(np.isfinite(post.mean))


def test_bad_data_errors():
    mlp = pdlt.MLP(3, width=10, depth=2, activation="relu", C_W=2.0)
    Xa, y, Xb = _data()
    y_nan = y.copy()
    y_nan[2] = np.nan
    with pytest.raises(ValueError, match=r"y_train contains NaN.*row 2"):
        nngp_posterior(mlp, Xa, y_nan, Xb)
    with pytest.raises(ValueError, match="y_train has 5 rows but the inputs have 6"):
        nngp_posterior(mlp, Xa, y[:5], Xb)
    with pytest.raises(ValueError, match="X_test has 2 features per input but the MLP has n0=3"):
        nngp_posterior(mlp, Xa, y, Xb[:, :2])
    with pytest.raises(ValueError, match="noise is a variance"):
        nngp_posterior(mlp, Xa, y, Xb, noise=-1.0)
    with pytest.raises(TypeError, match="mlp must be a pdlt.MLP"):
        nngp_posterior("relu", Xa, y, Xb)


def test_evidence_scan_matches_pointwise_and_prefers_the_generating_prior():
    """Targets drawn from one prior get the highest evidence at its C_W.

    The data are a draw from N(0, K + s2 I) of the tanh network with C_W = 1
    (the critical point); the scan over C_W must peak near it. With 40
    inputs and 20 output components the log-likelihood curvature is large,
    so the argmax lands on the generating value among the grid points here.
    """
    mlp = pdlt.MLP(2, width=10, depth=6, activation="tanh", C_b=0.0, C_W=1.0)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 2))
    K, _ = last_layer_kernels(mlp, X)
    s2 = 1e-3
    Y = np.linalg.cholesky(K + s2 * np.eye(40)) @ rng.standard_normal((40, 20))
    grid = [0.6, 0.8, 1.0, 1.25, 1.6]
    scan = evidence_scan(mlp, X, Y, C_W=grid, depth=[3, 6], noise=s2)
    assert scan.log_evidence.shape == (5, 2)
    assert scan.best() == (1.0, 6)
    K2, _ = last_layer_kernels(mlp.with_(C_W=1.25, depth=3), X)
    assert scan.log_evidence[3, 0] == pytest.approx(log_evidence(K2, Y, s2), rel=1e-12)


def test_regressor_matches_functions_and_api():
    mlp = pdlt.MLP(3, width=50, depth=3, activation="tanh")
    Xa, y, Xb = _data()
    reg = NNGPRegressor(mlp, noise=0.01)
    assert reg.get_params() == {"mlp": mlp, "noise": 0.01, "width": None}
    assert reg.fit(Xa, y) is reg
    post = nngp_posterior(mlp, Xa, y, Xb, noise=0.01)
    mean, std = reg.predict(Xb, return_std=True)
    assert mean.shape == (4,) and std.shape == (4,)
    np.testing.assert_allclose(mean, post.mean[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(std, post.std, rtol=1e-8, atol=1e-10)
    _, cov = reg.predict(Xb, return_cov=True)
    np.testing.assert_allclose(cov, post.cov, atol=1e-10)
    assert reg.log_evidence_ == pytest.approx(post.log_evidence, rel=1e-12)
    # the MLP's n0 adapts to the data; a different feature count in predict is an error
    assert NNGPRegressor(pdlt.MLP(7, width=5, depth=2)).fit(Xa, y).mlp_.n0 == 3
    with pytest.raises(ValueError, match="3 features"):
        reg.predict(Xb[:, :2])


def test_unfitted_predict_raises():
    with pytest.raises(ValueError, match="not fitted"):
        NNGPRegressor().predict(np.ones((2, 2)))


@needs_torch
def test_posterior_mean_matches_conditioned_ensemble_of_real_networks():
    """Bayes' rule on real networks: importance-weight an ensemble by the likelihood.

    With Gaussian observation noise s2, the posterior mean of the output at a
    test input is E[w z_B] / E[w] over the prior (initialization ensemble)
    with weights w = exp(-|z_A - y|^2 / (2 s2)). The self-normalized
    estimator's standard error comes from the delta method. The finite-width
    prior differs from the NNGP at O(1/n) (n = 256 here); the allowance is
    twice that correction as pdlt computes it (``finite_width_posterior``,
    ~2.5e-4 here), not a fraction of the NNGP mean under test. Test inputs
    where the posterior mean is ~0.3, so the same comparison rejects the NNGP
    mean x0, x0.5 and x2 (resolution ~4 %; measured, seed 11: 1.6 and 0.4
    standard errors).
    """
    from pdlt.experiment import Ensemble
    from pdlt.learning.finite_bayes import finite_width_posterior

    mlp = pdlt.MLP(1, width=256, depth=2, activation="tanh", C_b=0.1, C_W=1.0)
    Xa = np.array([[-1.0], [0.8]])
    y = np.array([0.5, -0.3])
    Xb = np.array([[-0.7], [1.2]])
    s2 = 0.2
    M = 20000
    z = Ensemble(mlp, networks=M, seed=11).preactivations(np.vstack([Xa, Xb]))[-1]
    z = z.numpy()[:, 0, :]
    logw = -((z[:, :2] - y) ** 2).sum(1) / (2 * s2)
    w = np.exp(logw - logw.max())
    post = nngp_posterior(mlp, Xa, y, Xb, noise=s2)
    nlo = np.asarray(finite_width_posterior(mlp, Xa, y, Xb, noise=s2).mean).ravel()
    for k in range(2):
        zb = z[:, 2 + k]
        est = (w * zb).sum() / w.sum()
        # delta method for a ratio of means
        se = np.sqrt(np.mean(w ** 2 * (zb - est) ** 2) / M) / np.mean(w)
        # negative controls: the same comparison rejects the NNGP mean x0, x0.5 and x2
        allowance = 2 * abs(nlo[k] - post.mean[k, 0])
        powered(post.mean[k, 0], est, se, allowance, label=f"posterior mean, test input {k}")
