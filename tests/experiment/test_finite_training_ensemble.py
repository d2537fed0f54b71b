"""Trained real networks against the order-1/n end-of-training prediction.

A giant leap (Newton step) followed by small gradient steps, tanh at
criticality, depth 3, four training and two test inputs on the unit circle.
The measured shift ``d(n) = n (E[z(T)] - mean_infinite)`` at n = 64 must
match the predicted 1/n coefficient within 4 standard errors plus the
allowance ``|d(32) - d(64)|``, which is the size of the omitted 1/n^2 term
at n = 64 (``d(n) = m1 + m2 / n``). Antithetic pairs (last layer negated)
remove the part of the trained output that is odd in the initial output, so
the means are resolved at these sizes.

Two outputs (``n_out = 2``, module fixture ``two_outputs``): tanh at
criticality, depth 2, three training inputs and one test input, targets of
two different functions, a giant leap and five small steps, 6000 networks at
n = 32 and 64. The cross-output NTK change ``n E[H_{01;ab}(T) - H_{01;ab}(0)]``
(order 1/n, bilinear in the two outputs' targets; zero for independent
outputs) is compared with theory as above: resolution ``(4 se + |d(32) -
d(64)|) / |theory|`` = 0.25 at its best-resolved entry when written (se 0.026
and allowance 0.007 against 0.44), so theory x0.5, x2 and x0 are rejected
(z 7.4, 16.5, 15.3); the output-diagonal blocks (resolution 0.15) and the
trained means of both outputs (resolution 0.20) are checked alongside, and
the one-output prediction applied to each target column, which lacks the
output loops, is rejected by the same trained means (z 5.4). The deep
linear Newton step with two outputs is exact at every width, so real networks
at n = 8 test the output loops (the factor n_out of the Q terms) with no
allowance, and reject the one-output prediction applied column by column.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pdlt.experiment.training import train_ensemble  # noqa: E402
from conftest import powered  # noqa: E402
from pdlt.learning import finite_training as ft  # noqa: E402


@pytest.fixture(scope="module")
def setup(critical_mlp):
    ang, angt = np.array([0.0, 1.2, 2.4, 3.6]), np.array([0.6, 3.0])
    X, Xt = np.c_[np.cos(ang), np.sin(ang)], np.c_[np.cos(angt), np.sin(angt)]
    y = 0.5 * np.sin(ang) + 0.2
    mlp = critical_mlp("tanh", 32, 3, n0=2, n_out=1)
    st = ft.training_statistics(mlp, X, Xt)
    eta = 1.0 / np.linalg.eigvalsh(st.Theta[:4, :4])[-1]
    sched = ft.algorithm_schedule(st.Theta[:4, :4], "newton+gd", learning_rate=eta, steps=5)
    pred = ft.end_of_training(st, y, sched)
    runs = {n: train_ensemble(mlp.with_(width=n), X, y, Xt, networks=6000, step_matrices=sched,
                              seed=n, antithetic=True, ntk=True) for n in (32, 64)}
    return y, pred, runs


def _check(d32, d64, se64, theory, label, **kw):
    """conftest.powered with the measured allowance |d(32) - d(64)| (negative controls)."""
    return powered(theory, d64, se64, np.abs(d32 - d64), label=label, **kw)


def test_trained_mean_shift_matches_the_order_one_over_n_prediction(setup):
    y, pred, runs = setup
    # the leap lands on y at infinite width and the small steps keep it there
    np.testing.assert_allclose(pred.train_mean_infinite, y, rtol=1e-10, atol=1e-12)
    m_inf_train = pred.train_mean_infinite
    d, se = {}, {}
    for n, te in runs.items():
        mt, ma = te.mean(on="test"), te.mean(on="train")
        d[n] = np.concatenate([n * (ma.mean[:, 0] - m_inf_train), n * (mt.mean[:, 0]
                                                                       - pred.mean_infinite)])
        se[n] = n * np.concatenate([ma.stderr[:, 0], mt.stderr[:, 0]])
    theory = np.concatenate([pred.train_mean_correction, pred.mean_correction])
    _check(d[32], d[64], se[64], theory, "trained mean shift", max_resolution=0.5)


def test_trained_variance_shift_matches_the_prediction(setup):
    _, pred, runs = setup
    dv, se = {}, {}
    for n, te in runs.items():
        c = te.cov(on="test")
        dv[n] = n * (np.diag(c.mean) - np.diag(pred.cov_infinite))
        se[n] = n * np.diag(c.stderr)
    # underpowered for tanh at these sizes: the shift (0.024) is 2.7 se (0.009) and the
    # allowance |dv(32) - dv(64)| is of its size, so x0 and x2 also pass -- an agreement check
    # only. The control variate of TrainedEnsemble.variance cuts the se 1.7x at n = 64 and
    # tanh still needs ~180 000 networks per width for 25 % (benchmarks/README.md, "Variance
    # corrections (#14)"; --full runs 60 000: 0.37). The powered check is gelu's, below
    c = _check(dv[32], dv[64], se[64], np.diag(pred.cov_correction), "trained variance shift",
               factors=(), zero=False)
    assert c.resolution > 0.5  # if this starts failing, the test has gained power: use it


def test_trained_variance_shift_resolved_gelu():
    """GELU at criticality, depth 3, the circle's training inputs and one test input on
    its far side (report task 'circle-far'), Newton leap + 5 gradient steps, 8000 networks
    at n = 16 and 32 (~22 CPU s): the variance's 1/n coefficient (-3.61, against v_inf =
    0.50) at n = 32 with allowance |d(16) - d(32)|, through the control variate of
    TrainedEnsemble.variance (2.6x smaller stderr than the plain sample variance at n = 64).
    It must reject theory x0, x0.5 and x2; with 6000 networks x0.5 passed (z 3.8), so 8000
    it is. The report's default row (20 000 networks) resolves 0.24."""
    from pdlt.report.finite_training import TrainingCase, run_training_case

    r = run_training_case(TrainingCase("circle-far", "newton+gd", 5, widths=(16, 32),
                                       networks=8000, activation="gelu", ntk=False,
                                       variance=True, seed=5))
    dv, se = r["dv"][:, 0], r["dv_se"][:, 0]
    _check(dv[0], dv[1], se[1], r["v1"][0], "gelu trained variance shift", max_resolution=0.5)



def test_trained_mean_shift_resolved_gelu_newton_leap():
    """GELU at criticality, depth 3, the report's 'circle' task (4 training, 2 test inputs),
    one Newton leap, 4000 networks at n = 16 and 32 (~10 CPU s): the trained mean's 1/n
    coefficient at training input 1 (-2.89) and test input 0 (-1.66) at n = 32 with the
    allowance |d(16) - d(32)|; resolution 0.33 / 0.41 when written, and theory x0, x0.5, x2
    rejected (z 13.3, 7.1, 11.2). The leap, not leap + steps: after gradient steps gelu's trained mean
    carries large terms of third and fourth order in the NTK fluctuation at these widths
    (pdlt.report.finite_training.GELU_MEAN_CASES); after the leap the kernel map is linear in
    the NTK and they vanish. The report's default row (12 000 networks) resolves ~0.15
    (0.13 at 16 000)."""
    from pdlt.report.finite_training import TrainingCase, run_training_case

    r = run_training_case(TrainingCase("circle", "newton", widths=(16, 32), networks=4000,
                                       activation="gelu", ntk=False, seed=4))
    idx = [1, 4]                                      # train 1 and test 0: the largest |m1|
    d, se = r["d"][:, idx], r["se"][:, idx]
    _check(d[0], d[1], se[1], r["m1"][idx], "gelu trained mean shift (Newton leap)",
           max_resolution=0.5)

def test_variance_with_control_variate_reduces_to_the_sample_variance_and_validates():
    # with C0 = 0 the control variate vanishes and the estimate is cov()'s diagonal (its
    # stderr is of the unbiased products, M/(M-1) times cov()'s); shapes of C0 and Khat are
    # checked and named
    import pdlt
    mlp = pdlt.MLP(n0=2, width=6, depth=2, n_out=1, activation="tanh")
    X, Xt = np.array([[1.0, 0.2], [-0.3, 0.8]]), np.array([[0.5, 0.5], [0.1, -0.9]])
    te = train_ensemble(mlp, X, [0.3, -0.2], Xt, networks=40, learning_rate=0.1, steps=2,
                        seed=1, antithetic=True)
    Kh = np.repeat(np.eye(4)[None], 40, 0)
    v, c = te.variance(np.zeros((2, 4)), Kh), te.cov(on="test")
    np.testing.assert_allclose(v.mean, np.diag(c.mean), rtol=1e-12)
    np.testing.assert_allclose(v.stderr, np.diag(c.stderr) * 40 / 39, rtol=1e-12)
    with pytest.raises(ValueError, match="C0 must have shape"):
        te.variance(np.zeros((2, 3)), Kh)
    with pytest.raises(ValueError, match="Khat must have shape"):
        te.variance(np.zeros((2, 4)), Kh[:10])


def test_ntk_change_during_training_matches_the_prediction(setup):
    _, pred, runs = setup
    dh = {n: n * te.ntk_change().mean for n, te in runs.items()}
    se64 = 64 * runs[64].ntk_change().stderr
    _check(dh[32], dh[64], se64, pred.ntk_change, "NTK change", max_resolution=0.5)


def _deep_linear_newton(y, seed, n_out=1):
    """One Newton step of the deep linear case of conftest at n = 8 on targets ``y``
    ((N_A,) or (N_A, n_out)): statistics, schedule, prediction, and the trained ensemble's
    measured means, stderrs, the predicted means and the infinite-width ones (train inputs
    first, shaped like ``y``)."""
    from conftest import linear_newton_case
    mlp, X, Xt, _ = linear_newton_case(8)
    mlp = mlp.with_(n_out=n_out)
    st = ft.training_statistics(mlp, X, Xt)
    sched = ft.algorithm_schedule(st.Theta[:2, :2], "newton")
    pred = ft.end_of_training(st, y, sched, width=8)
    te = train_ensemble(mlp, X, y, Xt, networks=20000, step_matrices=sched, seed=seed,
                        antithetic=True)
    m, ma = te.mean(on="test"), te.mean(on="train")
    theory = np.r_[y + pred.train_mean_correction / 8, pred.mean]
    measured = np.r_[ma.mean, m.mean].reshape(theory.shape)
    se = np.r_[ma.stderr, m.stderr].reshape(theory.shape)
    return st, sched, measured, se, theory, np.r_[y, pred.mean_infinite]


def test_deep_linear_newton_step_exact_at_small_width():
    # sigma(z) = z, depth 2, no biases: the order-1/n prediction of one Newton step is exact
    # at every width (tests/learning/test_finite_training.py derives it), so real networks
    # at n = 8 must agree within 4 standard errors with no allowance
    from conftest import linear_newton_case
    y = linear_newton_case(8)[3]
    _, _, measured, se, theory, inf = _deep_linear_newton(y, seed=4)
    assert np.all(np.abs(measured - theory) <= 4 * se), (measured, theory, se)
    # the 1/n shift itself against the measured one, with negative controls x0, x0.5, x2
    powered(theory - inf, measured - inf, se, label="deep linear 1/n shift", max_resolution=0.5)


# ---------------------------------------------------------------------------
# two outputs: the cross-output terms of NOTATION.md's Kronecker deltas
# ---------------------------------------------------------------------------

def _two_output_case(critical_mlp, ang, angt, depth):
    """Critical tanh MLP with two outputs, inputs on the unit circle at angles ``ang``
    (training) and ``angt`` (test), one Newton step then 5 gradient steps at the largest
    stable rate: (mlp, X, Xt, Y, statistics, schedule, prediction)."""
    X, Xt = np.c_[np.cos(ang), np.sin(ang)], np.c_[np.cos(angt), np.sin(angt)]
    Y = np.c_[0.5 * np.sin(ang) + 0.2, 0.6 * np.cos(ang) - 0.1]
    mlp = critical_mlp("tanh", 32, depth, n0=2, n_out=2)
    st = ft.training_statistics(mlp, X, Xt)
    k = len(ang)
    eta = 1.0 / np.linalg.eigvalsh(st.Theta[:k, :k])[-1]
    sched = ft.algorithm_schedule(st.Theta[:k, :k], "newton+gd", learning_rate=eta, steps=5)
    return mlp, X, Xt, Y, st, sched, ft.end_of_training(st, Y, sched)


@pytest.fixture(scope="module")
def two_outputs(critical_mlp):
    mlp, X, Xt, Y, st, sched, pred = _two_output_case(
        critical_mlp, np.array([0.0, 1.2, 2.4]), np.array([0.6]), depth=2)
    runs = {n: train_ensemble(mlp.with_(width=n), X, Y, Xt, networks=6000, step_matrices=sched,
                              seed=100 + n, antithetic=True, ntk=True) for n in (32, 64)}
    return st, Y, sched, pred, runs


def test_cross_output_ntk_change_matches_the_prediction(two_outputs):
    _, _, _, pred, runs = two_outputs
    ch = {n: te.ntk_change() for n, te in runs.items()}
    assert ch[64].mean.shape == (4, 2, 4, 2)
    dh = {n: n * c.mean for n, c in ch.items()}
    se = 64 * ch[64].stderr
    for i, j, label in ((0, 1, "cross-output NTK change H_01"),
                        (0, 0, "NTK change H_00"), (1, 1, "NTK change H_11")):
        blk = (slice(None), i, slice(None), j)
        _check(dh[32][blk], dh[64][blk], se[blk], pred.ntk_change[blk], label,
               max_resolution=0.5)
    # the measured NTK is symmetric under (a, i) <-> (b, j) like the prediction
    np.testing.assert_allclose(dh[64], np.einsum("aibj->bjai", dh[64]), atol=1e-9)


def test_trained_means_of_two_outputs_match_the_prediction(two_outputs):
    _, Y, _, pred, runs = two_outputs
    np.testing.assert_allclose(pred.train_mean_infinite, Y, rtol=1e-10, atol=1e-12)
    d, se = {}, {}
    for n, te in runs.items():
        ma, mt = te.mean(on="train"), te.mean(on="test")
        d[n] = n * np.r_[ma.mean - Y, mt.mean - pred.mean_infinite]
        se[n] = n * np.r_[ma.stderr, mt.stderr]
    theory = np.r_[pred.train_mean_correction, pred.mean_correction]
    _check(d[32], d[64], se[64], theory, "trained means, two outputs", max_resolution=0.5)
    # the outputs interact: each column trained as a one-output problem is rejected
    st, _, sched, _, _ = two_outputs
    one = [ft.end_of_training(st, Y[:, k], sched) for k in range(2)]
    one = np.c_[[np.r_[r.train_mean_correction, r.mean_correction] for r in one]].T
    from pdlt.report.rows import compare
    assert not compare(one, d[64], se[64], np.abs(d[32] - d[64])).passed


def test_deep_linear_newton_step_with_two_outputs_exact_at_small_width():
    # exact at every width (tests/learning/test_finite_training.py derives the closed form);
    # the one-output prediction of each column misses the output loops (n_out Q terms)
    from conftest import linear_newton_case
    Y = np.c_[linear_newton_case(8)[3], [0.2, 0.9]]
    st, sched, measured, se, theory, inf = _deep_linear_newton(Y, seed=5, n_out=2)
    assert np.all(np.abs(measured - theory) <= 4 * se), (measured, theory, se)
    powered(theory - inf, measured - inf, se, label="deep linear 1/n shift, two outputs",
            max_resolution=0.5)
    one = [ft.end_of_training(st, Y[:, k], sched, width=8) for k in range(2)]
    one_shift = np.c_[[np.r_[r.train_mean_correction, r.mean_correction] / 8 for r in one]].T
    from pdlt.report.rows import compare
    assert not compare(one_shift, measured - inf, se).passed


def test_recorded_ntk_of_two_outputs_is_the_forward_equation_ntk():
    # train_ensemble(ntk=True) with n_out = 2: every block H_{ij;ab}, against ntk_forward
    from pdlt.experiment import Ensemble
    from pdlt.experiment.ntk import ntk_forward
    import pdlt
    mlp = pdlt.MLP(n0=2, width=7, depth=3, n_out=2, activation="tanh", lambda_b=0.3,
                   lambda_W=1.7)
    X, Xt = np.array([[1.0, 0.2], [-0.3, 0.8]]), np.array([[0.5, 0.5]])
    te = train_ensemble(mlp, X, np.ones((2, 2)), Xt, networks=4, learning_rate=0.05, steps=0,
                        ntk=True, seed=3)
    Ws, bs = Ensemble(mlp, networks=4, seed=3).parameters(0, 4)
    H = ntk_forward(Ws, bs, torch.as_tensor(np.r_[X, Xt]), mlp)[-1].numpy()   # (M, i, j, a, b)
    np.testing.assert_allclose(te.ntk[:, 0], np.einsum("mijab->maibj", H), rtol=1e-12,
                               atol=1e-14)
    assert np.abs(H[:, 0, 1]).max() > 1e-3      # the cross-output blocks are not trivially 0


@pytest.mark.slow
def test_cross_output_ntk_change_depth_three_wider(critical_mlp):
    # the CI case deeper and wider: depth 3, four training and two test inputs, 6000
    # networks at n = 64 and 128 (about 8 minutes on 2 cores). When written: cross block
    # resolution 0.16 (rejects x0.5, x2, x0 at z 10.5, 27.9, 23.0), diagonal blocks 0.08-0.09.
    # The cross block measured 0.90-0.91 x theory at n = 64 and at n = 128 (about 2.5 se
    # per entry, inside 4 se + |d(64) - d(128)|); at n = 32 it is 0.88 x, so a remaining
    # 1/n^2 term of that size is consistent with the three widths within their errors
    mlp, X, Xt, Y, _, sched, pred = _two_output_case(
        critical_mlp, np.array([0.0, 1.2, 2.4, 3.6]), np.array([0.6, 3.0]), depth=3)
    ch = {n: train_ensemble(mlp.with_(width=n), X, Y, Xt, networks=6000, step_matrices=sched,
                            seed=n, antithetic=True, ntk=True).ntk_change() for n in (64, 128)}
    for i, j in ((0, 1), (0, 0), (1, 1)):
        blk = (slice(None), i, slice(None), j)
        powered(pred.ntk_change[blk], 128 * ch[128].mean[blk], 128 * ch[128].stderr[blk],
                np.abs(64 * ch[64].mean[blk] - 128 * ch[128].mean[blk]),
                label=f"NTK change H_{i}{j}, depth 3", max_resolution=0.5)
