"""Gradient descent with the frozen NTK (pdlt.learning.kernel_learning)."""

import numpy as np
import pytest

import pdlt
from conftest import EPS, powered
from pdlt.learning import (NTKRegressor, SingularKernelError, UnstableLearningRateError,
                           kernel_prediction, linear_model_outputs, newton_step, ntk_prediction,
                           propagator, stability_bound)
from pdlt.learning._common import last_layer_kernels

CONFIGS = {"tanh": ("tanh", 0.1, 1.0), "relu": ("relu", 0.0, 2.0), "gelu": ("gelu", 0.05, 1.5)}


def _setup(name="tanh", seed=0, N=6, M=4, n0=2, depth=3):
    act, cb, cw = CONFIGS[name]
    mlp = pdlt.MLP(n0, width=64, depth=depth, activation=act, C_b=cb, C_W=cw,
                   lambda_b=0.5, lambda_W=2.0)
    rng = np.random.default_rng(seed)
    Xa, Xb = rng.standard_normal((N, n0)), rng.standard_normal((M, n0))
    y = rng.standard_normal(N)
    K, Th = last_layer_kernels(mlp, Xa, Xb)
    blocks = dict(K_train=K[:N, :N], K_cross=K[N:, :N], K_test=K[N:, N:],
                  Theta_train=Th[:N, :N], Theta_cross=Th[N:, :N])
    return mlp, Xa, Xb, y, blocks, rng


def _simulate(Th_a, Th_b, z0a, z0b, y, eta, steps):
    """The linear model step by step: z_A -= eta Th_AA (z_A - y), z_B -= eta Th_BA (z_A - y)."""
    za, zb = z0a.copy(), z0b.copy()
    out = {0: (za.copy(), zb.copy())}
    for t in range(1, max(steps) + 1):
        r = za - y
        za, zb = za - eta * Th_a @ r, zb - eta * Th_b @ r
        out[t] = (za.copy(), zb.copy())
    return [out[t] for t in steps]


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("frac", [0.3, 0.95])  # eta as a fraction of the bound; 0.95 oscillates
def test_discrete_trajectory_matches_explicit_simulation(name, frac):
    _, _, _, y, b, rng = _setup(name)
    z0a, z0b = rng.standard_normal(6), rng.standard_normal(4)
    eta = frac * stability_bound(b["Theta_train"])
    steps = [0, 1, 2, 7, 30]
    za, zb = linear_model_outputs(b["Theta_train"], b["Theta_cross"], z0a, z0b, y, eta, steps)
    sim = _simulate(b["Theta_train"], b["Theta_cross"], z0a, z0b, y, eta, steps)
    cond = np.linalg.cond(b["Theta_train"])
    for k, (sa, sb) in enumerate(sim):
        # eigenbasis vs repeated matvecs: round-off grows like t * eps * cond
        tol = 50 * (steps[k] + 1) * EPS * cond
        np.testing.assert_allclose(za[k], sa, atol=tol)
        np.testing.assert_allclose(zb[k], sb, atol=tol)


@pytest.mark.parametrize("name", CONFIGS)
def test_infinite_time_is_kernel_regression_with_theta(name):
    _, _, _, y, b, rng = _setup(name)
    z0a, z0b = rng.standard_normal(6), rng.standard_normal(4)
    za, zb = linear_model_outputs(b["Theta_train"], b["Theta_cross"], z0a, z0b, y)
    direct = z0b - b["Theta_cross"] @ np.linalg.solve(b["Theta_train"], z0a - y)
    cond = np.linalg.cond(b["Theta_train"])
    np.testing.assert_allclose(za, y, atol=100 * cond * EPS)
    np.testing.assert_allclose(zb, direct, atol=100 * cond * EPS)
    # the mean over initializations (z0 = 0) is Theta_BA Theta_AA^-1 y
    pred = kernel_prediction(**b, y=y)
    np.testing.assert_allclose(pred.mean[:, 0], b["Theta_cross"] @ np.linalg.solve(
        b["Theta_train"], y), atol=100 * cond * EPS)
    # many finite steps converge to it (slowest mode decays like (1 - eta lambda_min)^t)
    w = np.linalg.eigvalsh(b["Theta_train"])
    eta = 1.0 / w[-1]
    t = int(np.ceil(40 / (eta * w[0])))
    far = kernel_prediction(**b, y=y, learning_rate=eta, steps=t)
    np.testing.assert_allclose(far.mean, pred.mean, atol=1e-12 * cond)
    np.testing.assert_allclose(far.cov, pred.cov, atol=1e-12 * cond)


@pytest.mark.parametrize("name", CONFIGS)
def test_newton_step_reaches_the_minimum_in_one_step(name):
    _, _, _, y, b, rng = _setup(name)
    z0a, z0b = rng.standard_normal(6), rng.standard_normal(4)
    na, nb = newton_step(b["Theta_train"], b["Theta_cross"], z0a, z0b, y)
    ia, ib = linear_model_outputs(b["Theta_train"], b["Theta_cross"], z0a, z0b, y)
    cond = np.linalg.cond(b["Theta_train"])
    np.testing.assert_allclose(na, y, atol=100 * cond * EPS)
    np.testing.assert_allclose(nb, ib, atol=100 * cond * EPS)
    # several output components at once
    Z0a, Z0b, Y = (np.stack([v, 2 * v], 1) for v in (z0a, z0b, y))
    na2, nb2 = newton_step(b["Theta_train"], b["Theta_cross"], Z0a, Z0b, Y)
    np.testing.assert_allclose(nb2[:, 1], 2 * nb, atol=200 * cond * EPS)


@pytest.mark.parametrize("steps", [3, 25, None])
def test_kernel_prediction_mean_and_covariance_against_sampled_initializations(steps):
    """Push exact Gaussian draws z(0) ~ N(0, K) through the linear model.

    Tolerances: 4 standard errors of the sample mean / covariance (delta
    method), no systematic allowance (the map is exactly linear).
    """
    _, _, _, y, b, rng = _setup("gelu", seed=2)
    N, M = 6, 4
    K = np.block([[b["K_train"], b["K_cross"].T], [b["K_cross"], b["K_test"]]])
    S = 40000
    z0 = np.linalg.cholesky(K + 1e-12 * np.eye(N + M)) @ rng.standard_normal((N + M, S))
    eta = 0.5 * stability_bound(b["Theta_train"])
    _, zb = linear_model_outputs(b["Theta_train"], b["Theta_cross"], z0[:N], z0[N:],
                                 np.repeat(y[:, None], S, 1), eta, steps)
    pred = kernel_prediction(**b, y=y, learning_rate=eta, steps=steps)
    m = zb.mean(1)
    # the same comparisons reject the predicted mean and covariance x0, x0.5 and x2
    powered(pred.mean[:, 0], m, zb.std(1) / np.sqrt(S), label=f"mean, steps={steps}")
    d = zb - m[:, None]
    prod = d[:, None, :] * d[None, :, :]
    powered(pred.cov, prod.mean(-1), prod.std(-1) / np.sqrt(S), label=f"covariance, steps={steps}")
    assert np.all(pred.std >= 0) and pred.steps == steps


def test_stability_bound_is_sharp():
    _, _, _, y, b, rng = _setup("tanh")
    Th = b["Theta_train"]
    bound = stability_bound(Th)
    assert bound == pytest.approx(2 / np.linalg.eigvalsh(Th)[-1], rel=1e-14)
    z0a, z0b = rng.standard_normal(6), rng.standard_normal(4)
    below = _simulate(Th, b["Theta_cross"], z0a, z0b, y, 0.99 * bound, [2000])[0][0]
    above = _simulate(Th, b["Theta_cross"], z0a, z0b, y, 1.01 * bound, [2000])[0][0]
    assert np.abs(below - y).max() < 1e-3 < 1e3 < np.abs(above - y).max()
    with pytest.raises(UnstableLearningRateError, match=r"2 / lambda_max\(Theta_train\) = "
                       + f"{bound:.6g}".replace(".", r"\.")):
        propagator(Th, b["Theta_cross"], 1.01 * bound, 10)
    with pytest.raises(UnstableLearningRateError, match="unstable"):
        kernel_prediction(**b, y=y, learning_rate=bound, steps=5)
    with pytest.raises(ValueError, match="learning_rate must be finite and > 0"):
        propagator(Th, b["Theta_cross"], -0.1, 10)
    with pytest.raises(ValueError, match="finite steps need a learning_rate"):
        propagator(Th, b["Theta_cross"], None, 10)


def test_singular_ntk_needs_noise_only_at_infinite_time():
    mlp = pdlt.MLP(2, width=10, depth=3, activation="tanh", C_b=0.1)
    rng = np.random.default_rng(0)
    Xa, Xb = rng.standard_normal((5, 2)), rng.standard_normal((3, 2))
    Xa[4] = Xa[0]
    y = rng.standard_normal(5)
    y[4] = y[0]
    with pytest.raises(SingularKernelError, match="add noise > 0"):
        ntk_prediction(mlp, Xa, y, Xb)
    with pytest.raises(SingularKernelError, match="add noise > 0"):
        NTKRegressor(mlp, noise=0).fit(Xa, y)
    # the default noise="auto" jitters just enough: consistent duplicate targets
    # then give the prediction without the duplicate
    auto = NTKRegressor(mlp).fit(Xa, y)
    assert auto.noise_ > 0
    ref0 = ntk_prediction(mlp, Xa[:4], y[:4], Xb)
    np.testing.assert_allclose(auto.predict(Xb), ref0.mean[:, 0], atol=1e-6)
    _, Th = last_layer_kernels(mlp, Xa, Xb)
    with pytest.raises(SingularKernelError, match="add noise > 0"):
        propagator(Th[:5, :5], Th[5:, :5])
    # finite steps are well defined; with consistent duplicate targets they
    # converge to the prediction without the duplicate
    far = ntk_prediction(mlp, Xa, y, Xb, steps=200000)
    ref = ntk_prediction(mlp, Xa[:4], y[:4], Xb)
    np.testing.assert_allclose(far.mean, ref.mean, atol=1e-6)
    assert np.all(np.isfinite(ntk_prediction(mlp, Xa, y, Xb, noise=1e-6).mean))


def test_bad_inputs():
    mlp, Xa, Xb, y, b, _ = _setup("tanh")
    y_nan = y.copy()
    y_nan[1] = np.inf
    with pytest.raises(ValueError, match="y_train contains NaN or inf"):
        ntk_prediction(mlp, Xa, y_nan, Xb)
    with pytest.raises(ValueError, match="has 3 features per input but the MLP has n0=2"):
        ntk_prediction(mlp, Xa, y, np.ones((2, 3)))
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        ntk_prediction(mlp, Xa, y, Xb, steps=2.5)
    with pytest.raises(ValueError, match="Theta_train must be"):
        propagator(b["Theta_train"], np.ones((2, 5)))
    with pytest.raises(ValueError, match="y has shape"):
        linear_model_outputs(b["Theta_train"], b["Theta_cross"], np.zeros(6), np.zeros(4),
                             np.zeros(5))


def test_regressor():
    mlp, Xa, Xb, y, b, _ = _setup("relu")
    reg = NTKRegressor(mlp, steps=12, learning_rate=None)
    assert reg.fit(Xa, y) is reg
    assert reg.learning_rate_ == pytest.approx(0.5 * reg.stability_bound_)
    ref = ntk_prediction(mlp, Xa, y, Xb, learning_rate=reg.learning_rate_, steps=12)
    mean, std = reg.predict(Xb, return_std=True)
    np.testing.assert_allclose(mean, ref.mean[:, 0], atol=1e-12)
    np.testing.assert_allclose(std, ref.std, atol=1e-10)
    with pytest.raises(UnstableLearningRateError, match="2 / lambda_max"):
        NTKRegressor(mlp, steps=3, learning_rate=3 * reg.stability_bound_).fit(Xa, y)
    # converged: exact on the training inputs
    assert np.allclose(NTKRegressor(mlp).fit(Xa, y).predict(Xa), y, atol=1e-8)
