"""The end of training at order 1/n (pdlt.learning.finite_training), without torch.

The engine's exactness claims are checked against brute force: the kernel
part's derivatives against finite differences, the degree-3 cubature and
the Stein cross term against Monte Carlo over z with the same dynamics.
Trained real networks referee the whole prediction in
tests/experiment/test_finite_training_ensemble.py.
"""

import numpy as np
import pytest

import pdlt
from pdlt.learning import finite_training as ft
from pdlt.learning.kernel_learning import kernel_prediction


def _sym(rng, N, scale=1.0):
    a = rng.normal(size=(N, N))
    return scale * (a @ a.T / N + np.eye(N))


def _stats(rng, N=4, Na=3, scale=1.0, zero=()):
    K, Th = _sym(rng, N), _sym(rng, N)
    V = rng.normal(size=(3, N, N))
    V = V + np.swapaxes(V, 1, 2)
    t = {
        "G1": 0.3 * (V[0] + V[0].T),
        "H1": 0.2 * V[1],
        "cov_H": 0.05 * np.einsum("kab,kcd->abcd", V, V),
        "Hzz": 0.1 * (lambda x: x + np.einsum("abdc->abcd", x))(
            (lambda x: x + np.einsum("bacd->abcd", x))(rng.normal(size=(N,) * 4))),
        "dHz": 0.1 * (lambda x: x + np.einsum("acbd->abcd", x))(rng.normal(size=(N,) * 4)),
        # the symmetries of the definitions: ddIH_{abcd} symmetric in b, c, d;
        # ddIIH_{abcd} = (Hess_a J_c).(Hess_b J_d) symmetric under (a, c) <-> (b, d)
        "ddI": 0.05 * (lambda x: sum(np.einsum(p, x) for p in (
            "abcd->abcd", "abdc->abcd", "acbd->abcd", "acdb->abcd", "adbc->abcd",
            "adcb->abcd")))(rng.normal(size=(N,) * 4)),
        "ddII": 0.05 * (lambda x: x + np.einsum("badc->abcd", x))(rng.normal(size=(N,) * 4)),
    }
    for k in zero:
        t[k] = np.zeros_like(t[k])
    t = {k: scale * v for k, v in t.items()}
    return ft.TrainingStatistics(K=K, Theta=Th, n_train=Na, **t)


def test_infinite_width_parts_are_the_kernel_prediction():
    rng = np.random.default_rng(0)
    st = _stats(rng)
    y = np.array([0.3, -0.2, 0.5])
    eta = 0.5 / np.linalg.eigvalsh(st.Theta[:3, :3])[-1]
    r = ft.end_of_training(st, y, ft.algorithm_schedule(st.Theta[:3, :3], "gd",
                                                        learning_rate=eta, steps=40))
    A, B = slice(0, 3), slice(3, 4)
    kp = kernel_prediction(st.K[A, A], st.K[B, A], st.K[B, B], st.Theta[A, A], st.Theta[B, A],
                           y, learning_rate=eta, steps=40)
    np.testing.assert_allclose(r.mean_infinite, np.ravel(kp.mean), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r.cov_infinite, kp.cov, rtol=1e-11, atol=1e-14)


def test_corrections_vanish_without_finite_width_statistics_and_are_linear_in_them():
    rng = np.random.default_rng(1)
    y = np.array([0.3, -0.2, 0.5])
    names = ("G1", "H1", "cov_H", "Hzz", "dHz", "ddI", "ddII")
    st0 = _stats(np.random.default_rng(1), zero=names)
    st1 = _stats(np.random.default_rng(1))
    st2 = _stats(np.random.default_rng(1), scale=2.0)
    # scale=2 also doubles K and Theta: build the doubled statistics by hand instead
    st2 = ft.TrainingStatistics(K=st1.K, Theta=st1.Theta, n_train=3,
                                **{k: 2 * getattr(st1, k) for k in names})
    sched = ft.algorithm_schedule(st1.Theta[:3, :3], "newton+gd", learning_rate=0.1, steps=5)
    r0, r1, r2 = (ft.end_of_training(s, y, sched) for s in (st0, st1, st2))
    assert np.all(r0.mean_correction == 0) and np.all(r0.cov_correction == 0)
    assert np.all(r0.ntk_change == 0)
    np.testing.assert_allclose(r2.mean_correction, 2 * r1.mean_correction, rtol=1e-10)
    np.testing.assert_allclose(r2.cov_correction, 2 * r1.cov_correction, rtol=1e-9, atol=1e-12)
    assert np.abs(r1.mean_correction).max() > 1e-3
    del rng


def _linear_model(Theta, H, sched, Na):
    """F(H) by brute force: the linear model's final outputs for unit residuals."""
    eps = np.eye(Na)
    out = np.zeros((H.shape[0], Na))
    for M in sched:
        u = M @ eps
        out += H[:, :Na] @ u
        eps = eps - H[:Na, :Na] @ u
    return out


def test_kernel_part_derivatives_match_finite_differences():
    rng = np.random.default_rng(2)
    st = _stats(rng)
    sched = ft.algorithm_schedule(st.Theta[:3, :3], "newton+gd", learning_rate=0.2, steps=7)
    V = rng.normal(size=(2, 4, 4))
    V = V + np.swapaxes(V, 1, 2)
    F0, F1, F2 = ft._kernel_map_jets(st.Theta, V, sched, 3)
    np.testing.assert_allclose(F0, _linear_model(st.Theta, st.Theta, sched, 3), rtol=1e-12,
                               atol=1e-14)
    h = 1e-4
    for k in range(2):
        Fp = _linear_model(st.Theta, st.Theta + h * V[k], sched, 3)
        Fm = _linear_model(st.Theta, st.Theta - h * V[k], sched, 3)
        np.testing.assert_allclose(F1[k], (Fp - Fm) / (2 * h), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(F2[k], (Fp - 2 * F0 + Fm) / h ** 2, rtol=1e-4, atol=1e-5)


def test_newton_step_mean_has_no_ntk_fluctuation_term():
    # one giant leap: F(H) = H_{.A} Theta_AA^{-1} is linear in H, so E[F(Theta + DeltaH)] = F(Theta)
    st = _stats(np.random.default_rng(3))
    r = ft.end_of_training(st, [0.1, 0.2, -0.3], ft.algorithm_schedule(st.Theta[:3, :3], "newton"))
    np.testing.assert_allclose(r.parts["AB"], 0.0, atol=1e-12)


def test_dynamics_cubature_and_stein_term_agree_with_monte_carlo():
    # only dH and the ddNTKs: the mean is E[Z1] (cubature) and the covariance
    # correction is 2 Cov(C0 z, Z1) (Stein): both against plain sampling of z
    rng = np.random.default_rng(4)
    st = _stats(rng, zero=("G1", "H1", "cov_H", "Hzz"))
    y = np.array([0.4, -0.1, 0.3])
    sched = ft.algorithm_schedule(st.Theta[:3, :3], "newton+gd", learning_rate=0.1, steps=3)
    r = ft.end_of_training(st, y, sched)
    M = 100_000
    z = rng.multivariate_normal(np.zeros(4), st.K, size=M)
    e, h = ft._dynamics(st, z, y, sched)
    se = e.std(0) / np.sqrt(M)
    full_mean = np.concatenate([r.train_mean_correction, r.mean_correction])
    assert np.all(np.abs(e.mean(0) - full_mean) <= 4 * se), (e.mean(0), full_mean, se)
    F0 = ft._kernel_map_jets(st.Theta, np.zeros((0, 4, 4)), sched, 3)[0]
    G0 = z[:, 3] - z[:, :3] @ F0[3]                     # the test input's kernel part
    prod = G0 * e[:, 3]
    mc = 2 * prod.mean()
    assert abs(mc - r.cov_correction[0, 0]) <= 4 * 2 * prod.std() / np.sqrt(M)
    assert np.allclose(h.mean(0), h.mean(0).T)


def test_ntk_mean_shift_alone_moves_the_mean_by_its_derivative():
    st = _stats(np.random.default_rng(5), zero=("G1", "cov_H", "Hzz", "dHz", "ddI", "ddII"))
    y = np.array([0.4, -0.1, 0.3])
    sched = ft.algorithm_schedule(st.Theta[:3, :3], "gd", learning_rate=0.1, steps=20)
    r = ft.end_of_training(st, y, sched)
    h = 1e-6
    Fp = _linear_model(None, st.Theta + h * st.H1, sched, 3) @ y
    Fm = _linear_model(None, st.Theta - h * st.H1, sched, 3) @ y
    np.testing.assert_allclose(r.mean_correction, ((Fp - Fm) / (2 * h))[3:], rtol=1e-6)
    np.testing.assert_allclose(r.parts["dynamics"], 0.0, atol=1e-15)


def test_finite_width_training_from_an_mlp_and_width_scaling():
    mlp = pdlt.MLP(n0=2, width=64, depth=2, n_out=1, activation="tanh", C_W=1.0)
    X = np.array([[1.0, 0.0], [0.0, 1.0]])
    Xt = np.array([[0.6, 0.8]])
    r = ft.finite_width_training(mlp, X, [0.5, -0.5], Xt, algorithm="newton")
    r2 = ft.finite_width_training(mlp, X, [0.5, -0.5], Xt, algorithm="newton", width=128)
    assert r.width == 64 and r2.width == 128
    np.testing.assert_allclose(r.mean - r.mean_infinite, 2 * (r2.mean - r2.mean_infinite))
    assert np.all(np.isfinite(r.cov)) and r.std.shape == (1,)


def test_errors_name_the_parameter():
    mlp = pdlt.MLP(n0=2, width=8, depth=2, n_out=2)
    X = np.eye(2)
    with pytest.raises(ValueError, match="n_out"):
        ft.finite_width_training(mlp, X, [[1, 2], [3, 4]], X, algorithm="newton")
    st = _stats(np.random.default_rng(6))
    with pytest.raises(ValueError, match="algorithm"):
        ft.algorithm_schedule(st.Theta[:3, :3], "adam")
    with pytest.raises(ValueError, match="learning_rate"):
        ft.algorithm_schedule(st.Theta[:3, :3], "gd", learning_rate=100.0, steps=3)
    with pytest.raises(ValueError, match="needs learning_rate"):
        ft.algorithm_schedule(st.Theta[:3, :3], "gd")
    with pytest.raises(ValueError, match="one target"):
        ft.end_of_training(st, [1.0, 2.0], [])
    with pytest.raises(ValueError, match="NaN"):
        ft.end_of_training(st, [1.0, np.nan, 2.0], [])
    r = ft.end_of_training(st, [1.0, 0.0, 2.0], [])
    with pytest.raises(ValueError, match="width"):
        r.mean


def test_regressors_with_width_add_the_correction_and_converge_by_default():
    from pdlt.learning import NNGPRegressor, NTKRegressor
    mlp = pdlt.MLP(n0=2, width=50, depth=2, n_out=1, activation="tanh", C_W=1.0)
    X = np.array([[1.0, 0.0], [0.0, 1.0], [-0.7, 0.7]])
    y = np.array([0.3, -0.4, 0.1])
    Xt = np.array([[0.6, 0.8]])
    inf = NTKRegressor(mlp).fit(X, y)
    fin = NTKRegressor(mlp, width=50).fit(X, y)
    r = fin.finite_width_prediction(Xt)
    # trained to convergence by default: the infinite-width part is kernel regression
    np.testing.assert_allclose(r.mean_infinite, inf.predict(Xt), rtol=1e-8)
    np.testing.assert_allclose(fin.predict(Xt), r.mean_infinite + r.mean_correction / 50)
    m, s = fin.predict(Xt, return_std=True)
    assert s.shape == (1,) and np.all(s > 0)
    nn = NNGPRegressor(mlp, noise=0.01, width=50).fit(X, y)
    post = nn.finite_width_prediction(Xt)
    np.testing.assert_allclose(nn.predict(Xt), post.mean[:, 0])
    with pytest.raises(ValueError, match="noise"):
        NTKRegressor(mlp, noise=0.1, width=50).fit(X, y)
    with pytest.raises(ValueError, match="width"):
        NTKRegressor(mlp, width=-3).fit(X, y)


def _linear_two_layer_newton_shift(X, Xt, y, lambda_W, C_W):
    """Exact n (E[z(1)] - Theta_BA Theta_AA^{-1} y) for sigma(z) = z, depth 2, no biases.

    z = W2 W1 x is bilinear in (W1, W2), so one step is exactly
    ``z(1) = z - H u + (1/2) dH[u, u]`` with ``u = Theta_AA^{-1} (z_A - y)``; the
    NTK mean is exactly Theta, and ``dH_abc = (lambda_W^2 / (n n0)) [(x_a.x_c) z_b +
    (x_a.x_b) z_c]`` (the only second derivatives are d^2 z / dW2_j dW1_jk = x_k), so
    ``n E[dH_abc z_d] = (lambda_W^2 / n0) [(x_a.x_c) K_bd + (x_a.x_b) K_cd]`` with
    ``K = C_W^2 x.x / n0``, exactly at every width.
    """
    Xall = np.r_[X, Xt]
    n0 = X.shape[1]
    G = Xall @ Xall.T
    K = C_W * C_W * G / n0
    nX = lambda_W ** 2 / n0 * (np.einsum("ac,bd->abcd", G, K) + np.einsum("ab,cd->abcd", G, K))
    Na = X.shape[0]
    Theta = lambda_W * G / n0 * C_W + lambda_W * C_W * G / n0   # layer 2: lambda_W K1 + C_W Theta1
    M = np.linalg.inv(Theta[:Na, :Na])
    My = M @ y
    # E[(1/2) dH_{.bc} u_b u_c] = - sum M_bd E[dH_{.bcd-index} z_d] (M y)_c
    shift = -np.einsum("bd,abcd,c->a", M, nX[:, :Na, :Na, :Na], My)
    return shift[Na:], shift[:Na], Theta


def test_deep_linear_newton_step_is_exact():
    # the end-of-training engine with the theory's P, Q against the closed form above
    from conftest import linear_newton_case
    mlp, X, Xt, y = linear_newton_case(16)
    st = ft.training_statistics(mlp, X, Xt)
    test_shift, train_shift, Theta = _linear_two_layer_newton_shift(X, Xt, y, 0.9, 1.3)
    np.testing.assert_allclose(st.Theta, Theta, rtol=1e-12)
    np.testing.assert_allclose(st.H1, 0.0, atol=1e-12)
    r = ft.end_of_training(st, y, ft.algorithm_schedule(st.Theta[:2, :2], "newton"))
    np.testing.assert_allclose(r.mean_correction, test_shift, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.train_mean_correction, train_shift, rtol=1e-9, atol=1e-12)
    assert np.abs(test_shift).max() > 0.05


def test_kinked_activations_warn_that_kink_crossings_are_missing():
    mlp = pdlt.MLP(n0=2, width=32, depth=2, n_out=1, activation="relu", C_W=2.0)
    with pytest.warns(UserWarning, match="kinks"):
        ft.training_statistics(mlp, np.eye(2), np.array([[0.6, 0.8]]))
