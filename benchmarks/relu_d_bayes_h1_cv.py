"""Precision per CPU second of three zero-mean controls added for issue #14 (h37).

* ReLU's D: the plain estimator (:meth:`pdlt.experiment.Ensemble.measure`, ``D`` alone)
  against :func:`pdlt.experiment.estimators.relu_ntk_metric_martingale` (in
  :func:`pdlt.report.suite.measure_cv` with ``ntk=True``), same networks and seed.
* The Bayes posterior mean at finite width: :func:`pdlt.report.learning.conditional_posterior`
  against :func:`~pdlt.report.learning.posterior_control_variate`
  (:func:`~pdlt.report.learning.hidden_kernel_martingale`), relu and gelu.
* ReLU's two-input H1: the plain neuron average of the NTK diagonal against the
  cross-fitted control of :func:`pdlt.report.multi_input.measure_h1_multi` (its own
  ``plain_stderr``, same networks; the CPU of both is the controlled run's).

Prints ``efficiency = 1 / (stderr^2 x CPU s)`` for both and the ratio (CPU seconds are
process time, so the figure depends less on the machine's load than wall time does).

Run: ``python benchmarks/relu_d_bayes_h1_cv.py [--networks 4000]``.

Measured (``--networks 3000``, 2 cores shared with 5 other jobs, process CPU time):

    relu D, n=32, L=6                 plain se 3.958 (1.0 s)  control se 1.197 (1.5 s)  ratio 7.6
    relu D, n=64, L=6                 plain se 3.104 (3.0 s)  control se 0.6614 (4.9 s) ratio 13.3
    Bayes mean (test 1), relu n=32    plain se 0.002804 (1.8 s) control se 0.001378 (1.4 s) 5.5
    Bayes mean (test 1), gelu n=32    plain se 0.003073 (1.2 s) control se 0.001193 (1.3 s) 5.8
    relu H1_01, 2 inputs, n=8, L=8    plain se 0.7489 (0.9 s) control se 0.3227 (0.9 s)  ratio 5.4

(the plain D here measures D alone; in the report it shared the plain pass of A, B, F, K,
Theta, whose NTK it needs anyway, while the control runs an NTK pass of its own: +0.7,
+1.8, +8.3 s CPU at widths 32, 64, 128 with 3000, 2000, 2000 networks.)
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _cpu(f):
    t = time.process_time()
    out = f()
    return out, time.process_time() - t


def main(argv=None):
    from pdlt.experiment import Ensemble
    from pdlt.report.learning import (BAYES_X_TEST, BAYES_X_TRAIN, BAYES_Y_TRAIN,
                                      conditional_posterior, hidden_kernel_martingale,
                                      hidden_kernels, posterior_control_variate)
    from pdlt.report.multi_input import H1_MULTI_CASES, inputs_for_kernel, measure_h1_multi
    from pdlt.report.rows import critical_mlp
    from pdlt.report.suite import measure_cv

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", type=int, default=4000)
    a = p.parse_args(argv)
    M = a.networks

    def line(name, se0, c0, se1, c1):
        e0, e1 = 1 / (se0 ** 2 * c0), 1 / (se1 ** 2 * c1)
        print(f"{name:34s} plain se {se0:.4g} ({c0:.1f} s)  control se {se1:.4g} "
              f"({c1:.1f} s)  efficiency ratio {e1 / e0:.1f}")

    for n in (32, 64):
        mlp = critical_mlp("relu", n, 6)
        m, c0 = _cpu(lambda: Ensemble(mlp, networks=M, seed=0).measure(
            K1=1.0, stats=["D"], progress=False))
        cv, c1 = _cpu(lambda: measure_cv(mlp, M, seed=0, ntk=True))
        line(f"relu D, n={n}, L=6", float(np.ravel(list(m)[-1]["D"].stderr)[0]), c0,
             float(cv["D"].stderr[-1]), c1)
    X = np.vstack([BAYES_X_TRAIN, BAYES_X_TEST])
    for act in ("relu", "gelu"):
        mlp = critical_mlp(act, 32, 3, n0=2, n_out=1)
        N = 10 * M
        p0, c0 = _cpu(lambda: conditional_posterior(hidden_kernels(mlp, X, N, seed=1),
                                                    BAYES_Y_TRAIN, 0.05))
        def controlled():
            Kh, lam, _ = hidden_kernel_martingale(mlp, X, N, seed=1)
            return posterior_control_variate(Kh, lam, BAYES_Y_TRAIN, 0.05)
        c, c1 = _cpu(controlled)
        line(f"Bayes mean (test 1), {act} n=32", float(p0.mean_stderr[1, 0]), c0,
             float(c["mean_stderr"][1]), c1)
    case = H1_MULTI_CASES[0]
    mlp = critical_mlp(case.activation, 8, case.depth, case.lambda_b, case.lambda_W, n0=2)
    h, c1 = _cpu(lambda: measure_h1_multi(mlp, inputs_for_kernel(mlp, case.K1), 4 * M))
    line("relu H1_01, 2 inputs, n=8, L=8", float(h["plain_stderr"][0, 1]), c1,
         float(h["stderr"][0, 1]), c1)


if __name__ == "__main__":
    main()
