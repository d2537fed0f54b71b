"""Tests for pdlt.learning.nearly_kernel: the quadratic model and its meta-kernels (book §11.4).

Reference: an explicit quadratic model (random first and second derivatives),
stepped by plain gradient descent on its parameters; the kernel formulas must
reproduce the step exactly (to round-off), since the model is exactly quadratic.
"""

import numpy as np
import pytest

from conftest import EPS
from pdlt.learning.nearly_kernel import meta_kernels, quadratic_model, quadratic_step


def explicit_model(P=5, Q=7, seed=0):
    rng = np.random.default_rng(seed)
    z0 = rng.normal(size=P)
    phi = rng.normal(size=(P, Q))
    A = rng.normal(size=(P, Q, Q))
    psi = 0.5 * (A + np.swapaxes(A, 1, 2))
    lam = rng.uniform(0.5, 2.0, size=Q)
    return z0, phi, psi, lam


@pytest.mark.parametrize("eta", [1e-3, 0.05, 0.3])
def test_one_gradient_step_of_the_quadratic_model_is_exact(eta):
    z0, phi, psi, lam = explicit_model()
    y = np.array([0.3, -1.0, 0.5, np.nan, np.nan])            # 3 training outputs, 2 test
    train = ~np.isnan(y)
    eps = np.where(train, z0 - np.nan_to_num(y), 0.0)          # MSE: dLoss/dz on train only
    mk = meta_kernels(phi, psi, lam)
    # gradient descent on the parameters: dtheta_mu = -eta lambda_mu sum_j phi_{j mu} eps_j
    dtheta = -eta * lam * (phi.T @ eps)
    z1 = quadratic_model(z0, phi, psi, dtheta)
    phi1 = phi + np.einsum("amn,n->am", psi, dtheta)           # exact derivative after the step
    H1 = (phi1 * lam) @ phi1.T
    dz, dH = quadratic_step(mk, eps, eta)
    scale = np.abs(z1 - z0).max()
    np.testing.assert_allclose(z0 + dz, z1, atol=1e3 * EPS * max(scale, 1.0))
    np.testing.assert_allclose(mk.H + dH, H1, atol=1e3 * EPS * np.abs(H1).max())


def test_kernel_symmetries_and_linear_limit():
    z0, phi, psi, lam = explicit_model(seed=1)
    mk = meta_kernels(phi, psi, lam)
    np.testing.assert_allclose(mk.H, mk.H.T, atol=0)
    assert np.linalg.eigvalsh(mk.H).min() > -1e3 * EPS * np.abs(mk.H).max()
    np.testing.assert_allclose(mk.dH, np.swapaxes(mk.dH, 1, 2), atol=1e3 * EPS * np.abs(mk.dH).max())
    np.testing.assert_allclose(mk.ddH, mk.ddH.transpose(1, 0, 3, 2),
                               atol=1e3 * EPS * np.abs(mk.ddH).max())
    # psi = 0: a linear model, a kernel method with a frozen NTK
    lin = meta_kernels(phi, 0 * psi, lam)
    assert not lin.dH.any() and not lin.ddH.any()
    eps = np.ones(5)
    dz, dH = quadratic_step(lin, eps, 0.1)
    np.testing.assert_allclose(dz, -0.1 * lin.H @ eps)
    assert not dH.any()


def test_errors():
    z0, phi, psi, lam = explicit_model()
    with pytest.raises(ValueError, match="psi must have shape"):
        meta_kernels(phi, psi[:, :3], lam)
    A = psi.copy()
    A[0, 0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        meta_kernels(phi, A, lam)
    with pytest.raises(ValueError, match="lam"):
        meta_kernels(phi, psi, -1.0)
    with pytest.raises(ValueError, match="eps must have shape"):
        quadratic_step(meta_kernels(phi, psi, lam), np.ones(3), 0.1)
