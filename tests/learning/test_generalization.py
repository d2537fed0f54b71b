"""Bias-variance decomposition, tasks, sklearn estimator checks, report figures."""

import warnings

import numpy as np
import pytest

import pdlt
from pdlt.learning import (NNGPRegressor, NTKRegressor, Task, bias_variance, bias_variance_scan,
                           diabetes_task, interpolation_extrapolation, ntk_prediction, sine_task)


def _mlp(**kw):
    base = dict(width=100, depth=4, activation="tanh", C_b=0.1, C_W=1.0)
    base.update(kw)
    return pdlt.MLP(1, **base)


def test_bias_variance_is_the_expected_squared_error():
    """bias^2 + variance = E[(z - y)^2] over Gaussian draws of the trained output."""
    task = sine_task(n_train=6, n_test=5)
    mlp = _mlp()
    bv = bias_variance(mlp, task, steps=20)
    p = ntk_prediction(mlp, task.X_train, task.y_train, task.X_test, steps=20)
    np.testing.assert_allclose(bv.bias2, (p.mean[:, 0] - task.y_test) ** 2, rtol=1e-12)
    np.testing.assert_allclose(bv.variance, np.diag(p.cov), rtol=1e-12, atol=1e-300)
    rng = np.random.default_rng(0)
    S = 200000
    draws = rng.multivariate_normal(p.mean[:, 0], p.cov, size=S, method="eigh")
    sq = (draws - task.y_test) ** 2
    z = np.abs(sq.mean(0) - bv.error) / (sq.std(0) / np.sqrt(S))
    assert z.max() < 4


def test_nngp_method_uses_the_posterior():
    task = sine_task(n_train=6, n_test=5)
    bv = bias_variance(_mlp(), task, method="nngp", noise=1e-3)
    reg = NNGPRegressor(_mlp(), noise=1e-3).fit(task.X_train, task.y_train)
    mean, std = reg.predict(task.X_test, return_std=True)
    np.testing.assert_allclose(bv.bias2, (mean - task.y_test) ** 2, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(bv.variance, std ** 2, rtol=1e-8, atol=1e-14)
    with pytest.raises(ValueError, match="method must be 'ntk' or 'nngp'"):
        bias_variance(_mlp(), task, method="svm")


def test_scan_and_criticality():
    """Deep off-critical networks generalize worse than critical ones on the sine task.

    tanh with C_b = 0 is critical at C_W = 1. At depth 16 the ordered phase
    (C_W = 0.6) forgets input differences (bias^2 grows) and the chaotic
    phase (C_W = 2) decorrelates them (error grows); the critical network
    beats both. The scan agrees with pointwise calls.
    """
    task = sine_task(n_train=8, n_test=13)
    mlp = _mlp(C_b=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        s = bias_variance_scan(mlp, task, C_W=[0.6, 1.0, 2.0], depth=[4, 16], noise=1e-6)
    assert s["error"].shape == (3, 2)
    e = s["error"][:, 1]
    assert e[1] < e[0] and e[1] < e[2], s["error"]
    one = bias_variance(mlp.with_(C_W=2.0, depth=4), task, noise=1e-6).mean()
    assert s["error"][2, 0] == pytest.approx(one["error"], rel=1e-12)


def test_interpolation_beats_extrapolation():
    task = sine_task(n_train=8, n_test=41)
    res = interpolation_extrapolation(_mlp(), task)
    assert res["interpolation"]["n"] + res["extrapolation"]["n"] == 41
    assert res["interpolation"]["n"] == int(np.sum(np.abs(task.X_test[:, 0]) <= 1))
    assert res["interpolation"]["error"] < res["extrapolation"]["error"]


def test_tasks():
    t = sine_task(n_train=5, n_test=7, noise=0.1, seed=1)
    assert isinstance(t, Task) and t.X_train.shape == (5, 1) and t.y_test.shape == (7,)
    pytest.importorskip("sklearn")
    d = diabetes_task(n_train=30, n_test=20, seed=0)
    assert d.X_train.shape == (30, 10) and d.X_test.shape == (20, 10)
    np.testing.assert_allclose(d.X_train.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(d.y_train.std(), 1, rtol=1e-12)
    with pytest.raises(ValueError, match="n_train \\+ n_test must be <= 442"):
        diabetes_task(n_train=400, n_test=100)


def test_real_data_diabetes_nngp_and_ntk_predict_better_than_the_mean():
    """On held-out diabetes patients both predictors beat predicting 0 (the training mean).

    Standardized target: predicting 0 has a test MSE ~ 1. Noise 0.5 (the
    diabetes target is noisy) for the NNGP; its evidence prefers it to a
    nearly noiseless model.
    """
    pytest.importorskip("sklearn")
    d = diabetes_task(n_train=40, n_test=100, seed=0)
    mlp = pdlt.MLP(10, width=100, depth=3, activation="relu", C_b=0.0, C_W=2.0)
    nngp = NNGPRegressor(mlp, noise=0.5).fit(d.X_train, d.y_train)
    base = float(np.mean(d.y_test ** 2))
    assert np.mean((nngp.predict(d.X_test) - d.y_test) ** 2) < 0.8 * base
    assert nngp.log_evidence_ > NNGPRegressor(mlp, noise=1e-3).fit(d.X_train, d.y_train).log_evidence_
    ntk = NTKRegressor(mlp, steps=30).fit(d.X_train, d.y_train)
    assert np.mean((ntk.predict(d.X_test) - d.y_test) ** 2) < base


# sklearn checks that cannot pass for a documented reason (none since named
# activations pickle by name)
_EXPECTED_FAILURES = set()


@pytest.mark.parametrize("cls", [NNGPRegressor, NTKRegressor])
def test_sklearn_check_estimator(cls):
    pytest.importorskip("sklearn")
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = check_estimator(cls(noise=1e-3), on_fail=None)
    failed = {r["check_name"]: str(r["exception"])[:200] for r in res if r["status"] == "failed"}
    assert set(failed) <= _EXPECTED_FAILURES, failed
    assert sum(r["status"] == "passed" for r in res) > 40


def test_learning_figures():
    pytest.importorskip("matplotlib")
    from pdlt.report.learning import learning_figures

    task = sine_task(n_train=5, n_test=9)
    figs = learning_figures(task=task, C_W=[0.8, 1.25], depths=(2, 3),
                            steps=(0, 5, 50))
    assert set(figs) == {"nngp_posterior", "evidence", "gd_trajectory", "bias_variance",
                         "interpolation"}
    conv = {"widths": [32, 64], "msd": [2e-3, 1e-3], "msd_stderr": [1e-4, 1e-4],
            "mean_gap": [1e-2, 5e-3], "mean_gap_stderr": [1e-3, 1e-3], "slope": -1.0,
            "theory_mean": np.zeros(3), "theory_cov": np.eye(3),
            "ensemble_mean": [np.zeros(3), np.zeros(3)], "networks": 10, "steps": 5}
    figs = learning_figures(task=task, C_W=[1.0], depths=(2,), steps=(0,), convergence=conv)
    assert "width_convergence" in figs
    import matplotlib.pyplot as plt
    plt.close("all")
