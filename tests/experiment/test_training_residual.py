"""train_ensemble on residual MLPs: exact checks of the forward pass, the NTK and a step.

Tolerances: float64 round-off of the quantities compared (a few hundred ulps of
sums of O(10) terms of size O(1)), 1e-12 relative.
"""

import numpy as np
import pytest

import pdlt
from conftest import needs_torch

pytestmark = needs_torch

X = np.array([[1.0, 0.2], [-0.3, 0.8], [0.4, -0.9]])
Y = np.array([0.3, -0.5, 0.2])
XT = np.array([[0.5, 0.5], [-1.0, 0.1]])


def _mlp(n_out=1, activation="tanh"):
    # per-layer gamma and xi, and lambdas != 1, so a misplaced factor shows
    width = 5
    return pdlt.MLP(n0=2, widths=(width,) * 3, n_out=n_out, activation=activation, C_b=0.2,
                    C_W=(1.0, 0.8, 0.6, 0.9), lambda_b=(0.5, 1.3, 0.7, 1.1),
                    lambda_W=(1.5, 0.6, 2.0, 0.9),
                    gamma=(0.0, 0.5, -0.3, 0.4 if n_out == width else 0.0),
                    xi=(1.0, 0.8, 1.3, 0.7))


@pytest.mark.parametrize("n_out", [1, 5])
def test_initial_outputs_and_ntk_equal_the_residual_ensemble_machinery(n_out):
    """At init: outputs = Ensemble.preactivations, NTK = forward equation = autodiff."""
    import torch
    from pdlt.experiment import Ensemble
    from pdlt.experiment.ntk import ntk_autodiff, ntk_forward
    from pdlt.experiment.training import train_ensemble

    mlp = _mlp(n_out)
    assert mlp.is_residual and (mlp.gamma[-1] != 0.0) == (n_out == 5)
    te = train_ensemble(mlp, X, np.tile(Y[:, None], (1, n_out)), XT, networks=4,
                        learning_rate=0.05, steps=0, ntk=True, seed=3)
    ens = Ensemble(mlp, networks=4, seed=3)
    xall = np.r_[X, XT]
    z = ens.preactivations(xall)[-1].numpy()                          # (M, n_out, N)
    np.testing.assert_allclose(te.train[:, 0], z[:, :, :3].transpose(0, 2, 1), rtol=0,
                               atol=1e-13)
    np.testing.assert_allclose(te.test[:, 0], z[:, :, 3:].transpose(0, 2, 1), rtol=0, atol=1e-13)
    Ws, bs = ens.parameters(0, 4)
    xt = torch.as_tensor(xall)
    Hf = ntk_forward(Ws, bs, xt, mlp)[-1].numpy()                     # (M, i, j, a, b)
    Ha = ntk_autodiff(Ws, bs, xt, mlp, mlp.depth).numpy()
    np.testing.assert_allclose(Ha, Hf, rtol=1e-12, atol=1e-12 * np.abs(Hf).max())
    rec = te.ntk[:, 0]
    rec = rec[:, None, None] if n_out == 1 else rec.transpose(0, 2, 4, 1, 3)
    np.testing.assert_allclose(rec, Hf, rtol=0, atol=1e-12 * np.abs(Hf).max())


def _sigma(act, z):
    return np.tanh(z) if act == "tanh" else np.maximum(z, 0.0)


def _dsigma(act, z):
    return 1.0 - np.tanh(z) ** 2 if act == "tanh" else (z > 0).astype(float)


def _forward_np(mlp, Ws, bs, x):
    """Preactivations of one network, numpy: list of (N, n_l)."""
    act = mlp.activation.name
    zs = [x @ Ws[0].T + bs[0]]
    for l in range(1, mlp.depth):
        z = mlp.xi[l] * (_sigma(act, zs[-1]) @ Ws[l].T + bs[l])
        zs.append(z + mlp.gamma[l] * zs[-1] if mlp.gamma[l] != 0.0 else z)
    return zs


@pytest.mark.parametrize("n_out,act", [(1, "tanh"), (5, "tanh"), (1, "relu")])
def test_one_gradient_step_equals_hand_computed_backprop(n_out, act):
    """One step of eta * lambda_mu * dL/dtheta_mu (NOTATION.md) by hand-written backprop.

    delta^(L) = z - y; dL/db^(l) = xi_l sum_a delta^(l); dL/dW^(l) = xi_l sum_a delta^(l)
    sigma(z^(l-1))^T; delta^(l-1) = xi_l W^(l)T delta^(l) * sigma'(z^(l-1)) + gamma_l delta^(l).
    """
    from pdlt.experiment import Ensemble
    from pdlt.experiment.training import train_ensemble

    mlp = _mlp(n_out, act)
    y = np.tile(Y[:, None], (1, n_out)) * np.arange(1, n_out + 1)
    eta = 0.07
    te = train_ensemble(mlp, X, y, XT, networks=3, learning_rate=eta, steps=1, seed=5)
    Ws_t, bs_t = Ensemble(mlp, networks=3, seed=5).parameters(0, 3)
    L = mlp.depth
    for m in range(3):
        Ws = [W[m].numpy().copy() for W in Ws_t]
        bs = [b[m].numpy().copy() for b in bs_t]
        zs = _forward_np(mlp, Ws, bs, X)
        delta = zs[-1] - y                                            # (N, n_L)
        gW, gb = [None] * L, [None] * L
        for l in range(L - 1, -1, -1):
            xi = mlp.xi[l]
            h = X if l == 0 else _sigma(act, zs[l - 1])
            gW[l] = xi * delta.T @ h
            gb[l] = xi * delta.sum(0)
            if l > 0:
                back = xi * (delta @ Ws[l]) * _dsigma(act, zs[l - 1])
                delta = back + mlp.gamma[l] * delta if mlp.gamma[l] != 0.0 else back
        for l in range(L):
            Ws[l] -= eta * mlp.lambda_W[l] / mlp.widths[l] * gW[l]
            bs[l] -= eta * mlp.lambda_b[l] * gb[l]
        z1 = _forward_np(mlp, Ws, bs, np.r_[X, XT])[-1]
        scale = np.abs(z1).max()
        np.testing.assert_allclose(te.train[m, 1], z1[:3], rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(te.test[m, 1], z1[3:], rtol=0, atol=1e-12 * scale)
        assert np.abs(te.train[m, 1] - te.train[m, 0]).max() > 1e-3     # the step did move


def test_gamma_zero_residual_trains_like_the_rescaled_plain_mlp():
    """gamma = 0, xi != 1: z = xi (b + W sigma) is the plain MLP with xi b, xi W, i.e.
    C_b, C_W and lambda_b, lambda_W times xi^2 in those layers; same draws, so the trained
    outputs and NTKs agree to round-off at every step."""
    from pdlt.experiment.training import train_ensemble

    xi = (1.0, 0.7, 1.4, 0.8)
    kw = dict(n0=2, widths=(6, 6, 6), n_out=1, activation="gelu")
    C_b, C_W, lb, lW = 0.1, (1.2, 1.0, 0.9, 1.1), (0.5, 1.0, 1.5, 0.8), (1.0, 2.0, 0.5, 1.2)
    res = pdlt.MLP(**kw, C_b=C_b, C_W=C_W, lambda_b=lb, lambda_W=lW, xi=xi)
    x2 = np.square(xi)
    plain = pdlt.MLP(**kw, C_b=C_b * x2, C_W=np.multiply(C_W, x2), lambda_b=np.multiply(lb, x2),
                     lambda_W=np.multiply(lW, x2))
    assert res.is_residual and not plain.is_residual
    run = dict(networks=6, learning_rate=0.05, steps=4, record=(0, 2, 4), seed=9, ntk=True,
               antithetic=True)
    a = train_ensemble(res, X, Y, XT, **run)
    b = train_ensemble(plain, X, Y, XT, **run)
    np.testing.assert_allclose(a.train, b.train, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.test, b.test, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.ntk, b.ntk, rtol=0, atol=1e-12 * np.abs(b.ntk).max())
    assert np.abs(a.test[:, -1] - a.test[:, 0]).max() > 1e-2


def test_antithetic_pairs_of_residual_networks():
    """Plain output layer: the last layer flips; residual output layer (tanh): W^(1) and all
    biases flip, and every layer's preactivations negate; ReLU there is refused."""
    from pdlt.experiment.training import train_ensemble

    for n_out in (1, 5):
        mlp = _mlp(n_out)
        y = np.zeros((3, n_out))
        te = train_ensemble(mlp, X, y, XT, networks=4, learning_rate=0.05, steps=2,
                            record=(0, 1, 2), antithetic=True, ntk=True, seed=2)
        # y = 0: the whole trajectory is odd, z -> -z, H -> H
        np.testing.assert_allclose(te.test[1::2], -te.test[0::2], rtol=0, atol=1e-13)
        np.testing.assert_allclose(te.ntk[1::2], te.ntk[0::2], rtol=0,
                                   atol=1e-12 * np.abs(te.ntk).max())
        assert np.abs(te.test[0::2]).max() > 1e-2
    with pytest.raises(ValueError, match="not odd"):
        train_ensemble(_mlp(5, "relu"), X, np.zeros((3, 5)), XT, networks=4, learning_rate=0.05,
                       steps=1, antithetic=True)
    # a plain output layer flips for any activation
    te = train_ensemble(_mlp(1, "relu"), X, Y * 0, XT, networks=2, learning_rate=0.05, steps=1,
                        antithetic=True, seed=2)
    np.testing.assert_allclose(te.test[1], -te.test[0], rtol=0, atol=1e-13)
