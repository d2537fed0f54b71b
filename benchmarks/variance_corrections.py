"""Precision per CPU second of the two O(1/n) variance corrections (#14): before and after.

**Bayes** (the O(1/n) posterior variance of
:func:`pdlt.learning.finite_bayes.finite_width_posterior`): one ensemble of
critical MLPs, two referees of exact Bayesian inference on it,

* ``importance``: :func:`pdlt.learning.finite_bayes.importance_posterior`
  (every network's sampled outputs weighted by the likelihood; the referee
  before #14's variance work);
* ``last layer integrated``: :func:`pdlt.report.learning.conditional_posterior`
  (each network's hidden layers, i.e. its last-layer kernel ``Khat``, with the
  Gaussian last layer integrated out in closed form).

**Training** (the trained variance's 1/n shift of
:func:`pdlt.learning.finite_training.end_of_training`): one trained ensemble
(task 'circle-far' of :mod:`pdlt.report.finite_training`, Newton leap + 5
steps), two estimators of the test output's variance,

* ``sample variance``: :meth:`pdlt.experiment.training.TrainedEnsemble.cov`;
* ``control variate``: :meth:`~pdlt.experiment.training.TrainedEnsemble.variance`
  (``w^2 - C0 Khat C0^T``, exactly zero mean, subtracted with a fitted
  coefficient).

Prints for each: ``n (v - v_inf)``, its standard error, the resolution
``4 se / |theory|`` (no allowance), CPU seconds (process time, all threads) and
the efficiency ``1 / (se^2 x CPU s)``, and the networks a 25 % resolution would
take (``se`` scales like ``1/sqrt(M)``; the allowance of the width change
comes on top).

Run: ``python benchmarks/variance_corrections.py [--networks 20000] [--width 32]
[--train-networks 4000] [--skip-training]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _line(name, th, d, se, cpu):
    eff = 1.0 / (se ** 2 * cpu)
    need = (4 * se / (0.25 * abs(th))) ** 2
    print(f"  {name:24s} n(v-v_inf) {d:9.4f} +- {se:.4f}  theory {th:8.4f}  4se/|th| "
          f"{4 * se / abs(th):6.3f}  CPU {cpu:6.1f} s  efficiency {eff:10.3g}  "
          f"x{need:.3g} networks for 25 %")
    return eff


def bayes(activation, width, networks, noise):
    from pdlt.experiment import Ensemble
    from pdlt.learning.finite_bayes import finite_width_posterior, importance_posterior
    from pdlt.report.learning import (BAYES_X_TEST, BAYES_X_TRAIN, BAYES_Y_TRAIN,
                                      conditional_posterior, hidden_kernels)
    from pdlt.report.rows import critical_mlp

    mlp = critical_mlp(activation, width, 3, n0=2, n_out=1)
    X = np.vstack([BAYES_X_TRAIN, BAYES_X_TEST])
    big = 10 ** 7
    th = finite_width_posterior(mlp.with_(width=big), BAYES_X_TRAIN, BAYES_Y_TRAIN,
                                BAYES_X_TEST, noise=noise)
    v_inf = np.diag(th.cov_infinite_width)
    v1 = big * (np.diag(th.cov) - v_inf)
    b = int(np.argmax(np.abs(v1)))
    print(f"Bayes: {activation}, depth 3, n = {width}, noise {noise:g}, {networks} networks, "
          f"test input {b}")
    t0 = time.process_time()
    z = Ensemble(mlp, networks=networks, seed=1).preactivations(X)[-1].numpy()
    t_draw = time.process_time() - t0
    t0 = time.process_time()
    ip = importance_posterior(z[:, :, :2].transpose(0, 2, 1), z[:, :, 2:].transpose(0, 2, 1),
                              BAYES_Y_TRAIN, noise)
    t_ip = t_draw + time.process_time() - t0
    t0 = time.process_time()
    Kh = hidden_kernels(mlp, X, networks, seed=1)
    cp = conditional_posterior(Kh, BAYES_Y_TRAIN, noise)
    t_cp = time.process_time() - t0
    e0 = _line(f"importance (ESS {ip.ess:.0f})", v1[b], width * (ip.var[b, 0] - v_inf[b]),
               width * ip.var_stderr[b, 0], t_ip)
    e1 = _line(f"last layer integrated ({cp.ess:.0f})", v1[b], width * (cp.var[b, 0] - v_inf[b]),
               width * cp.var_stderr[b, 0], t_cp)
    print(f"  efficiency ratio {e1 / e0:.3g}")


def training(activation, width, networks):
    import warnings

    from pdlt.experiment.training import train_ensemble
    from pdlt.learning import finite_training as ft
    from pdlt.report.finite_training import _infinite_width_map, _task
    from pdlt.report.learning import hidden_kernels
    from pdlt.report.rows import critical_mlp

    X, y, Xt = _task("circle-far")
    mlp = critical_mlp(activation, width, 3, n0=2, n_out=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = ft.training_statistics(mlp, X, Xt)
    ThA = st.Theta[:4, :4]
    sched = ft.algorithm_schedule(ThA, "newton+gd", learning_rate=1 / np.linalg.eigvalsh(ThA)[-1],
                                  steps=5)
    pred = ft.end_of_training(st, y, sched)
    v_inf, v1 = pred.cov_infinite[0, 0], pred.cov_correction[0, 0]
    print(f"Training: {activation}, depth 3, n = {width}, 'circle-far', Newton leap + 5 steps, "
          f"{networks} networks")
    t0 = time.process_time()
    te = train_ensemble(mlp, X, y, Xt, networks=networks, step_matrices=sched, seed=width,
                        antithetic=True)
    t_train = time.process_time() - t0
    c = te.cov(on="test")
    e0 = _line("sample variance", v1, width * (c.mean[0, 0] - v_inf), width * c.stderr[0, 0],
               t_train)
    t0 = time.process_time()
    v = te.variance(_infinite_width_map(st, sched)[4:],
                    hidden_kernels(mlp, np.r_[X, Xt], networks, seed=width))
    e1 = _line("control variate", v1, width * (v.mean[0] - v_inf), width * v.stderr[0],
               t_train + time.process_time() - t0)
    print(f"  efficiency ratio {e1 / e0:.3g}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", type=int, default=20000)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--train-networks", type=int, default=4000)
    ap.add_argument("--skip-training", action="store_true")
    a = ap.parse_args(argv)
    for act in ("relu", "tanh", "gelu"):
        bayes(act, a.width, a.networks, a.noise)
    if not a.skip_training:
        for act in ("tanh", "gelu"):
            training(act, a.width, a.train_networks)


if __name__ == "__main__":
    main()
