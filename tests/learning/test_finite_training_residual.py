"""Finite-width training of residual MLPs: exact reductions and the refusals.

Tolerances: the statistics are computed to 1e-8 relative (the accuracy contract of
:func:`pdlt.statistics`); the end-of-training map is a few dozen float64 operations on
them, so results that come from two independent statistics paths agree to 1e-7.
"""

import warnings

import numpy as np
import pytest

import pdlt
from pdlt.learning import finite_training as ft
from pdlt.theory.residual import residual_mlp

X1 = np.array([[0.9, -0.6]])


def _pair(activation="tanh", n_out=1, xi=(1.0, 0.7, 1.3, 0.8)):
    """A residual-flagged MLP with gamma = 0, xi != 1, and the plain MLP it equals."""
    kw = dict(n0=2, widths=(8, 8, 8), n_out=n_out, activation=activation)
    C_b, C_W, lb, lW = 0.1, (1.0, 0.9, 0.8, 1.1), (0.5, 1.0, 1.5, 0.8), (1.0, 2.0, 0.5, 1.2)
    x2 = np.square(xi)
    res = pdlt.MLP(**kw, C_b=C_b, C_W=C_W, lambda_b=lb, lambda_W=lW, xi=xi)
    plain = pdlt.MLP(**kw, C_b=C_b * x2, C_W=np.multiply(C_W, x2), lambda_b=np.multiply(lb, x2),
                     lambda_W=np.multiply(lW, x2))
    assert res.is_residual and not plain.is_residual
    return res, plain


@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_gamma_zero_residual_path_equals_the_plain_path(activation):
    """gamma = 0, xi != 1 is the plain MLP with C, lambda times xi^2 (same function, same
    parameter flow); the residual statistics (pdlt.theory.residual_ntk) and the plain ones
    give the same trained mean and NTK change, for a Newton leap and gradient steps."""
    res, plain = _pair(activation)
    out = {}
    for name, m in (("res", res), ("plain", plain)):
        st = ft.training_statistics(m, X1)
        th = st.Theta
        r_newton = ft.end_of_training(st, [0.7], ft.algorithm_schedule(th, "newton"))
        r_gd = ft.end_of_training(st, [0.7], ft.algorithm_schedule(
            th, "gd", learning_rate=0.6 / th[0, 0], steps=3))
        out[name] = np.r_[st.K.ravel(), th.ravel(), st.H1.ravel(), st.dHz.ravel(),
                          st.ddI.ravel(), st.ddII.ravel(), st.cov_H.ravel(),
                          r_newton.train_mean_correction, r_newton.ntk_change.ravel(),
                          r_gd.train_mean_correction, r_gd.ntk_change.ravel(),
                          r_gd.train_mean_infinite]
    np.testing.assert_allclose(out["res"], out["plain"], rtol=1e-7)
    assert np.all(np.abs(out["plain"]) > 1e-3)        # nothing compared is trivially zero


def test_gamma_zero_residual_path_equals_the_plain_path_at_n_inputs():
    """The same reduction on two training inputs and a test input (N = 3: the N-input
    residual statistics of pdlt.theory.residual_multi*, ~2 s; two test inputs, N = 4,
    agree as well at 12 s): trained mean and covariance at the training and test inputs
    and the NTK change, Newton leap and gradient steps."""
    res, plain = _pair("tanh")
    Xa, Xb = np.array([[0.9, -0.6], [0.3, 0.8]]), np.array([[-0.5, 0.4]])
    y = [0.7, -0.3]
    out = {}
    for name, m in (("res", res), ("plain", plain)):
        st = ft.training_statistics(m, Xa, Xb)
        ThA = st.Theta[:2, :2]
        parts = [st.K.ravel(), st.Theta.ravel(), st.H1.ravel(), st.cov_H.ravel(),
                 st.dHz.ravel(), st.ddI.ravel(), st.ddII.ravel()]
        for sched in (ft.algorithm_schedule(ThA, "newton"),
                      ft.algorithm_schedule(ThA, "gd", learning_rate=0.6 / np.linalg.eigvalsh(
                          ThA)[-1], steps=3)):
            r = ft.end_of_training(st, y, sched)
            parts += [r.train_mean_correction, r.mean_correction, r.mean_infinite,
                      r.ntk_change.ravel(), r.cov_correction.ravel(),
                      r.train_cov_correction.ravel()]
        out[name] = np.concatenate(parts)
    scale = np.abs(out["plain"]).max()
    np.testing.assert_allclose(out["res"], out["plain"], rtol=1e-7, atol=1e-9 * scale)
    # the test-input corrections are not trivially zero
    st = ft.training_statistics(plain, Xa, Xb)
    r = ft.end_of_training(st, y, ft.algorithm_schedule(st.Theta[:2, :2], "newton"))
    assert np.all(np.abs(r.mean_correction) > 1e-3)
    assert np.all(np.abs(np.diag(r.cov_correction)) > 1e-3)


def test_residual_training_block_does_not_see_the_test_input():
    """gamma = 0.5: two training inputs alone (N = 2) and with a test input (N = 3) give
    the same training-input mean, covariance and NTK change (the N-input residual
    statistics restricted to the training inputs are the training inputs' own)."""
    mlp = residual_mlp("tanh", 0.5, n0=2, width=16, depth=3)
    Xa, y = np.array([[0.9, -0.6], [0.3, 0.8]]), [0.7, -0.3]
    a = ft.training_statistics(mlp, Xa)
    b = ft.training_statistics(mlp, Xa, np.array([[-0.5, 0.4]]))
    for alg, kw in (("newton", {}), ("gd", dict(learning_rate=0.5 / a.Theta[0, 0], steps=4))):
        ra = ft.end_of_training(a, y, ft.algorithm_schedule(a.Theta, alg, **kw))
        rb = ft.end_of_training(b, y, ft.algorithm_schedule(b.Theta[:2, :2], alg, **kw))
        np.testing.assert_allclose(ra.train_mean_correction, rb.train_mean_correction,
                                   rtol=1e-7)
        np.testing.assert_allclose(ra.ntk_change, rb.ntk_change[:2, :2], rtol=1e-7)
        np.testing.assert_allclose(ra.train_cov_correction, rb.train_cov_correction,
                                   rtol=1e-7, atol=1e-12)
        assert np.abs(ra.train_mean_correction).min() > 1e-3
    assert abs(rb.mean_correction[0]) > 1e-3 and abs(rb.ntk_change[2, 2]) > 1e-3


def test_one_input_solution_equals_the_training_block_of_the_two_input_one():
    """The training dynamics never see the test inputs: on a plain MLP the train-input
    mean, covariance and NTK change without test inputs equal those with a test input (the
    degree-3 cubature and the Stein derivative are exact in both)."""
    mlp = pdlt.MLP(n0=2, width=16, depth=3, activation="tanh", C_W=1.0, C_b=0.1)
    a = ft.training_statistics(mlp, X1)
    b = ft.training_statistics(mlp, X1, np.array([[0.2, 0.8]]))
    for alg, kw in (("newton", {}), ("gd", dict(learning_rate=0.5 / a.Theta[0, 0], steps=4))):
        ra = ft.end_of_training(a, [0.6], ft.algorithm_schedule(a.Theta, alg, **kw))
        rb = ft.end_of_training(b, [0.6], ft.algorithm_schedule(b.Theta[:1, :1], alg, **kw))
        np.testing.assert_allclose(ra.train_mean_correction, rb.train_mean_correction,
                                   rtol=1e-7)
        np.testing.assert_allclose(ra.ntk_change, rb.ntk_change[:1, :1], rtol=1e-7)
        np.testing.assert_allclose(ra.train_cov_correction, rb.train_cov_correction,
                                   rtol=1e-7)
        np.testing.assert_allclose(ra.train_cov_infinite, rb.train_cov_infinite, rtol=1e-12,
                                   atol=1e-15)
        assert abs(ra.train_cov_correction[0, 0]) > 1e-3
        assert ra.mean_infinite.shape == (0,)


def test_residual_training_at_one_input_and_several_outputs():
    """gamma = 0.5 (plain output layer), one input, n_out = 2 (the lifted engine): the
    output with zero targets has no mean correction, and gamma = 0, xi != 1 with two
    outputs equals its plain twin."""
    mlp = residual_mlp("tanh", 0.5, n0=2, width=8, depth=4, n_out=2)
    assert mlp.gamma == (0.0, 0.5, 0.5, 0.0)
    r = ft.finite_width_training(mlp, X1, [[0.6, 0.0]], algorithm="newton")
    assert r.train_mean_correction.shape == (1, 2) and r.ntk_change.shape == (1, 2, 1, 2)
    assert abs(r.train_mean_correction[0, 0]) > 1e-3
    assert abs(r.train_mean_correction[0, 1]) < 1e-12
    res, plain = _pair(n_out=2)
    y = [[0.6, -0.3]]
    a = ft.finite_width_training(res, X1, y, algorithm="newton")
    b = ft.finite_width_training(plain, X1, y, algorithm="newton")
    np.testing.assert_allclose(a.train_mean_correction, b.train_mean_correction, rtol=1e-7)
    np.testing.assert_allclose(a.ntk_change, b.ntk_change, rtol=1e-7,
                               atol=1e-9 * np.abs(b.ntk_change).max())


def test_residual_refusals_and_their_messages():
    # N inputs are served (the N-input residual statistics exist)
    mlp = residual_mlp("tanh", 0.5, n0=2, width=8, depth=3)
    st = ft.training_statistics(mlp, X1, np.array([[0.2, 0.8]]))
    assert st.K.shape == (2, 2) and np.all(np.isfinite(st.ddII))
    # a residual output layer (n_out = width) with a non-odd activation
    relu_out = residual_mlp("relu", 0.5, n0=2, width=8, depth=3, n_out=8)
    assert relu_out.gamma[-1] == 0.5
    with pytest.raises(NotImplementedError, match="output layer is residual.*not odd"):
        ft.training_statistics(relu_out, X1)
    # ... which an odd activation makes sign-symmetric again: served
    tanh_out = residual_mlp("tanh", 0.5, n0=2, width=4, depth=3, n_out=4)
    r = ft.finite_width_training(tanh_out, X1, np.full((1, 4), 0.3), algorithm="newton")
    assert np.all(np.isfinite(r.train_mean_correction))


def test_learning_size_of_residual_mlps():
    """finite_width_learning_size of residual MLPs: the NTK change equals the direct
    end_of_training one (the test-input correction comes from the two-input residual
    statistics); gamma = 0, xi != 1 equals the plain twin."""
    mlp = residual_mlp("tanh", 0.5, n0=3, width=32, depth=5)
    r = ft.finite_width_learning_size(mlp, 1.0)
    st = ft.training_statistics(mlp.with_(n0=2, n_out=1), np.array([[np.sqrt(2.0), 0.0]]))
    th = st.Theta[0, 0]
    direct = ft.end_of_training(st, [np.sqrt(st.K[0, 0])], ft.algorithm_schedule(
        st.Theta, "gd", learning_rate=0.5 / th, steps=40)).ntk_change[0, 0] / th
    assert r["ntk_change_coefficient"] == pytest.approx(direct, rel=1e-10)
    assert r["representation_learning"] == pytest.approx(direct / 32, rel=1e-10)
    if r["prediction_correction"] is None:
        assert "two-input" in r["prediction_correction_note"]
    res, plain = _pair("tanh")
    a, b = (ft.finite_width_learning_size(m, 1.0) for m in (res, plain))
    assert a["ntk_change_coefficient"] == pytest.approx(b["ntk_change_coefficient"], rel=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        relu = ft.finite_width_learning_size(residual_mlp("relu", 0.5, n0=2, width=32,
                                                               depth=4), 1.0)
    assert np.isfinite(relu["representation_learning"])


def test_ntk_regressor_with_width_on_a_residual_mlp():
    """NTKRegressor(width=) goes through training_statistics: it predicts at a test input
    of a residual MLP (the N-input residual statistics)."""
    from pdlt.learning import NTKRegressor

    mlp = residual_mlp("tanh", 0.5, n0=2, width=16, depth=3)
    reg = NTKRegressor(mlp, width=16, steps=10).fit(X1, [0.5])
    mean = reg.predict(np.array([[0.2, 0.8]]))
    assert np.all(np.isfinite(mean))
