"""Kernel regression at scale (issue 21): CG with a blocked kernel operator, sklearn kernel.

CG stops at a relative residual tol; the error of alpha is then at most
cond(k + noise I) * tol relative, and so is that of the predictions (up to
the norm of k_BA): the tolerances below are 10 cond tol, with cond computed.
"""

import numpy as np
import pytest

import pdlt
from pdlt.learning import nngp_posterior
from pdlt.learning.large import KernelOperator, cg_regression

RNG = np.random.default_rng(11)
X = RNG.standard_normal((80, 4))
XT = RNG.standard_normal((20, 4))
Y = np.stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]], axis=1)
MLP = pdlt.MLP(n0=4, width=1, depth=5, activation="relu", C_b=0.1, C_W=2.0)
NOISE = 1e-2
TOL = 1e-10


def _dense(stat):
    f = pdlt.flow(MLP, np.concatenate([X, XT]), susceptibilities=False)[-1]
    k = getattr(f, stat)
    return k[:80, :80], k[80:, :80]


@pytest.mark.parametrize("stat", ["K", "Theta"])
@pytest.mark.parametrize("cache", ["memory", None, "disk"])
def test_cg_equals_dense_solve(stat, cache, tmp_path):
    kaa, kba = _dense(stat)
    A = kaa + NOISE * np.eye(80)
    cond = np.linalg.cond(A)
    ref = kba @ np.linalg.solve(A, Y)
    fit = cg_regression(MLP, X, Y, noise=NOISE, statistic=stat, tol=TOL, block_size=40,
                        cache=tmp_path if cache == "disk" else cache)
    assert fit.cached == {"memory": "memory", None: None, "disk": "disk"}[cache]
    assert fit.residual <= 10 * TOL
    pred = fit.predict(XT, batch=7)
    assert np.max(np.abs(pred - ref)) <= 10 * cond * TOL * np.max(np.abs(ref))
    if cache is None:  # one kernel pass per iteration (plus the final residual check)
        assert fit.kernel_passes >= fit.iterations


def test_preconditioners_agree_and_cholesky_needs_fewer_iterations():
    fits = {p: cg_regression(MLP, X, Y[:, 0], noise=NOISE, tol=TOL, precondition=p, rank=30)
            for p in ("cholesky", "jacobi", None)}
    cond = np.linalg.cond(_dense("K")[0] + NOISE * np.eye(80))
    ref = fits[None].predict(XT)
    for fit in fits.values():
        assert np.max(np.abs(fit.predict(XT) - ref)) <= 20 * cond * TOL * np.max(np.abs(ref))
    assert fits["cholesky"].iterations < fits["jacobi"].iterations / 2
    with pytest.raises(ValueError, match="needs noise > 0"):
        cg_regression(MLP, X, Y[:, 0], noise=0.0, precondition="cholesky")
    with pytest.raises(ValueError, match="precondition must be"):
        cg_regression(MLP, X, Y[:, 0], precondition="ilu")


def test_nngp_mean_equals_the_cholesky_posterior():
    post = nngp_posterior(MLP, X, Y[:, 0], XT, noise=NOISE)
    fit = cg_regression(MLP, X, Y[:, 0], noise=NOISE, tol=TOL)
    cond = np.linalg.cond(_dense("K")[0] + NOISE * np.eye(80))
    ref = np.ravel(post.mean)
    assert np.max(np.abs(fit.predict(XT) - ref)) <= 10 * cond * TOL * np.max(np.abs(ref))


def test_operator_matvec_matches_dense_streamed():
    kaa, _ = _dense("K")
    op = KernelOperator(MLP, X, noise=0.5, cache=None, block_size=33)
    v = RNG.standard_normal(80)
    d = np.sqrt(np.diag(kaa))
    np.testing.assert_allclose(op.matvec(v), (kaa + 0.5 * np.eye(80)) @ v,
                               rtol=0, atol=1e-13 * np.sum(np.outer(d, d)) * np.max(np.abs(v)))
    np.testing.assert_allclose(op.diagonal, np.diag(kaa) + 0.5, rtol=1e-14)


def test_errors_name_the_fix():
    with pytest.raises(RuntimeError, match="raise noise.*maxiter"):
        cg_regression(MLP, X, Y[:, 0], noise=1e-8, tol=1e-12, maxiter=2)
    with pytest.raises(ValueError, match="statistic must be 'K'"):
        cg_regression(MLP, X, Y[:, 0], statistic="V")
    with pytest.raises(ValueError, match="y must be finite with shape"):
        cg_regression(MLP, X, Y[:10, 0])
    with pytest.raises(ValueError, match="noise"):
        cg_regression(MLP, X, Y[:, 0], noise=-1.0)


def test_sklearn_kernel_values_and_gpr():
    pytest.importorskip("sklearn")
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel

    from pdlt.learning.sklearn_kernel import PDLTKernel
    k = PDLTKernel(MLP)
    kaa, kba = _dense("K")
    d = np.sqrt(np.diag(kaa))
    scale = np.outer(d, d)
    assert np.max(np.abs(k(X) - kaa) / scale) < 1e-13
    np.testing.assert_allclose(k.diag(X), np.diag(kaa), rtol=1e-14)
    Kg, grad = k(X, eval_gradient=True)
    assert grad.shape == (80, 80, 0) and np.array_equal(Kg, k(X))
    # GaussianProcessRegressor with the fixed kernel: the NNGP posterior mean
    gpr = GaussianProcessRegressor(k, alpha=NOISE, optimizer=None).fit(X, Y[:, 0])
    ref = np.ravel(nngp_posterior(MLP, X, Y[:, 0], XT, noise=NOISE).mean)
    np.testing.assert_allclose(gpr.predict(XT), ref, rtol=1e-8, atol=1e-10)
    # combined with sklearn's kernels, hyperparameters fitted by the evidence
    # (targets with noise of variance 0.01, so the fitted noise level is interior)
    yn = Y[:, 0] + 0.1 * np.random.default_rng(3).standard_normal(80)
    gpr2 = GaussianProcessRegressor(ConstantKernel() * PDLTKernel(MLP) + WhiteKernel(),
                                    random_state=0).fit(X, yn)
    assert 3e-3 < gpr2.kernel_.k2.noise_level < 0.03 and gpr2.score(X, yn) > 0.9
    assert "PDLTKernel(relu" in repr(gpr2.kernel_)
    with pytest.raises(ValueError, match="statistic must be"):
        PDLTKernel(MLP, statistic="V")(X)
