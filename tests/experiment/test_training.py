"""Full-batch gradient descent of real ensembles against the frozen-NTK theory."""

import numpy as np
import pytest

import pdlt
from conftest import max_zscore, powered, needs_torch

pytestmark = needs_torch

# the task used below: 5 training and 4 test inputs on a line (2 test inputs outside)
XA = np.linspace(-1.5, 1.5, 5)[:, None]
YA = np.sin(2 * XA[:, 0])
XB = np.array([[-2.0], [0.2], [0.9], [2.5]])


def test_initial_outputs_are_the_ensembles_networks():
    from pdlt.experiment import Ensemble
    from pdlt.experiment.training import train_ensemble

    mlp = pdlt.MLP(1, width=32, depth=3, activation="tanh", C_b=0.1)
    tr = train_ensemble(mlp, XA, YA, XB, networks=20, learning_rate=0.1, steps=0, seed=4)
    z = Ensemble(mlp, networks=20, seed=4).preactivations(np.vstack([XA, XB]))[-1].numpy()
    np.testing.assert_allclose(tr.train[:, 0, :, 0], z[:, 0, :5], atol=1e-13)
    np.testing.assert_allclose(tr.test[:, 0, :, 0], z[:, 0, 5:], atol=1e-13)
    assert tr.loss[:, 0] == pytest.approx(0.5 * ((z[:, 0, :5] - YA) ** 2).sum(1))


def test_one_small_step_moves_outputs_by_minus_eta_H_residual():
    """Learning-rate tensor of NOTATION.md: dz = -eta H (z - y) + O(eta^2).

    H is each network's own NTK from the forward equation (with lambda_b,
    lambda_W != 1 so a misplaced 1/n or lambda shows); the O(eta^2)
    remainder is checked to shrink by 4 when eta halves.
    """
    from pdlt.experiment import Ensemble
    from pdlt.experiment.training import train_ensemble

    mlp = pdlt.MLP(1, width=16, depth=3, activation="gelu", C_b=0.1, C_W=1.5,
                   lambda_b=(0.5, 2.0, 1.0), lambda_W=(1.5, 0.7, 3.0))
    x = np.vstack([XA, XB])
    H = Ensemble(mlp, networks=8, seed=1).ntk(x)[-1].numpy()[:, 0, 0]     # (8, 9, 9)
    errs = []
    for eta in (1e-3, 5e-4):
        tr = train_ensemble(mlp, XA, YA, XB, networks=8, learning_rate=eta, steps=1, seed=1)
        z0 = np.concatenate([tr.train[:, 0, :, 0], tr.test[:, 0, :, 0]], 1)
        z1 = np.concatenate([tr.train[:, 1, :, 0], tr.test[:, 1, :, 0]], 1)
        pred = z0 - eta * np.einsum("mab,mb->ma", H[:, :, :5], z0[:, :5] - YA)
        errs.append(np.abs(z1 - pred).max())
        assert errs[-1] < 1e-2 * np.abs(z1 - z0).max()  # a misplaced lambda or 1/n is O(1)
    assert 3.0 < errs[0] / errs[1] < 5.0, errs


def test_trained_ensemble_matches_kernel_prediction():
    """Mean and covariance of 400 trained width-256 networks vs the kernel prediction.

    Tolerance: 4 standard errors (delta method for the covariance) plus a
    stated O(1/n) allowance of 2/n for the mean and 2 K_max/n for the
    covariance. The coefficient comes from the width scan of
    ``pdlt.report.learning.width_convergence`` on this task (control-variate
    mean gap ~ 1.1/n at n = 64 and 0.8/n at n = 128 for tanh depth 3), doubled.
    """
    from pdlt.experiment.training import train_ensemble
    from pdlt.learning import kernel_prediction, stability_bound
    from pdlt.learning._common import last_layer_kernels

    n = 256
    mlp = pdlt.MLP(1, width=n, depth=2, activation="tanh", C_b=0.1, C_W=1.0)
    K, Th = last_layer_kernels(mlp, XA, XB)
    eta = 0.5 * stability_bound(Th[:5, :5])
    T = 20
    theory = kernel_prediction(K[:5, :5], K[5:, :5], K[5:, 5:], Th[:5, :5], Th[5:, :5], YA,
                               eta, T)
    tr = train_ensemble(mlp, XA, YA, XB, networks=400, learning_rate=eta, steps=T, seed=7)
    m, c = tr.mean(), tr.cov()
    powered(theory.mean[:, 0], m.mean[:, 0], m.stderr[:, 0], 2 / n, label="trained mean")
    # the covariance's O(1/n) allowance 2 K_max / n leaves it at 55 % resolution: it rejects
    # the kernel covariance x0 and x2 (z 7.2, 7.4) but not x0.5 (3.5)
    powered(theory.cov, c.mean, c.stderr, 2 * K.max() / n, label="trained covariance",
            factors=(2.0,))
    # and training did something: the loss fell
    assert np.all(tr.loss[:, -1] < tr.loss[:, 0])


def test_width_convergence_gap_shrinks_like_one_over_n():
    """Quick version of the report's width scan: E[(z - z_lin)^2] ~ 1/n.

    Between widths 32 and 128 the mean squared departure from the frozen-NTK
    linear model must fall by 4 (1/n); with 150 networks its estimate has a
    ~10 % standard error, and the O(1/n^2) term shifts the ratio a little,
    so the accepted ratio is 2.5..6.5 (a 1/sqrt(n) law would give 2, a 1/n^2
    law 16).
    """
    from pdlt.learning import sine_task
    from pdlt.report.learning import width_convergence

    mlp = pdlt.MLP(1, width=8, depth=3, activation="tanh", C_b=0.1, C_W=1.0)
    task = sine_task(n_train=5, n_test=4, test_range=(-2.0, 2.0))
    res = width_convergence(mlp, task, widths=(32, 128), networks=150, steps=15, seed=3)
    ratio = res["msd"][0] / res["msd"][1]
    assert 2.5 < ratio < 6.5, res
    assert -1.3 < res["slope"] < -0.7


def test_bad_inputs():
    from pdlt.experiment.training import train_ensemble

    mlp = pdlt.MLP(1, width=8, depth=2)
    with pytest.raises(ValueError, match="y_train must have shape"):
        train_ensemble(mlp, XA, YA[:3], XB, learning_rate=0.1, steps=1)
    with pytest.raises(ValueError, match="NaN"):
        train_ensemble(mlp, XA, np.r_[np.nan, YA[1:]], XB, learning_rate=0.1, steps=1)
    with pytest.raises(ValueError, match="learning_rate must be finite and > 0"):
        train_ensemble(mlp, XA, YA, XB, learning_rate=0.0, steps=1)
    with pytest.raises(ValueError, match="record must lie"):
        train_ensemble(mlp, XA, YA, XB, learning_rate=0.1, steps=1, record=[5])


def test_recorded_ntk_is_the_forward_equation_ntk():
    import torch
    from pdlt.experiment import Ensemble
    from pdlt.experiment.ntk import ntk_forward
    from pdlt.experiment.training import train_ensemble
    mlp = pdlt.MLP(n0=2, width=7, depth=3, n_out=1, activation="tanh", lambda_b=0.3,
                   lambda_W=1.7)
    X, Xt = np.array([[1.0, 0.2], [-0.3, 0.8]]), np.array([[0.5, 0.5]])
    te = train_ensemble(mlp, X, [0.1, -0.2], Xt, networks=4, learning_rate=0.05, steps=0,
                        ntk=True, seed=3)
    Ws, bs = Ensemble(mlp, networks=4, seed=3).parameters(0, 4)
    H = ntk_forward(Ws, bs, torch.as_tensor(np.r_[X, Xt]), mlp)[-1][:, 0, 0].numpy()
    np.testing.assert_allclose(te.ntk[:, 0], H, rtol=1e-12)
