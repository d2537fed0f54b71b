"""Precision per CPU second of K, G1, V, Theta, H1: plain estimators versus control variates.

The plain estimators (:meth:`pdlt.experiment.Ensemble.measure`: neuron
averages, jackknife over networks) against the martingale control variates
of :func:`pdlt.report.suite.measure_cv` (:func:`pdlt.experiment.estimators.metric_martingale`,
:func:`~pdlt.experiment.estimators.ntk_martingale`: exactly zero-mean layer
increments subtracted, Rao-Blackwellized last layer), on ensembles of the same
size and seed, one input, at the last layer. Prints per statistic

    efficiency = 1 / (stderr^2 x CPU seconds),

the precision bought per CPU second (stderr^2 ~ 1/M), for both estimators
and their ratio. CPU seconds are process time (all threads), so the figure
does not depend on how busy the machine is as much as wall time does.

Run: ``python benchmarks/control_variates.py [--activation tanh] [--width 64]
[--depth 6] [--networks 1000]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import pdlt
from pdlt.experiment import Ensemble
from pdlt.report.suite import critical_mlp, measure_cv

STATS = ("K", "G1", "V", "Theta", "H1")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--activation", default="tanh")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--networks", type=int, default=1000)
    a = ap.parse_args(argv)
    mlp = critical_mlp(a.activation, a.width, a.depth)
    ff = pdlt.statistics(mlp, K1=1.0)                 # K, the plain G1 estimator's reference
    n = a.width
    L = a.depth
    # warm-up (allocations, torch dispatch)
    measure_cv(mlp, 20, seed=99, ntk=True)
    Ensemble(mlp, networks=20, seed=99).measure(K1=1.0, stats=["K", "V", "Theta"],
                                                progress=False)

    t = time.process_time()
    plain = Ensemble(mlp, networks=a.networks, seed=1).measure(
        K1=1.0, stats=["K", "G1", "V", "Theta"], K_theory=ff, layers=[L], progress=False)
    t_plain = time.process_time() - t
    se_plain = {s: float(np.ravel(plain[s].stderr)[0]) for s in ("K", "G1", "V", "Theta")}
    se_plain["H1"] = n * se_plain["Theta"]            # n (E[H] - Theta)

    t = time.process_time()
    cv = measure_cv(mlp, a.networks, seed=1, ntk=True)
    t_cv = time.process_time() - t
    se_cv = {s: float(cv[s].stderr[-1]) for s in STATS}

    print(f"{a.activation}, width {n}, depth {L}, {a.networks} networks, last layer; "
          f"CPU s per network: plain {1e3 * t_plain / a.networks:.2f} ms, control variates "
          f"{1e3 * t_cv / a.networks:.2f} ms")
    print(f"{'stat':6s} {'se plain':>10s} {'se cv':>10s} {'eff plain':>11s} {'eff cv':>11s} "
          f"{'ratio':>8s}")
    for s in STATS:
        ep = 1.0 / (se_plain[s] ** 2 * t_plain) if se_plain[s] > 0 else float("inf")
        ec = 1.0 / (se_cv[s] ** 2 * t_cv) if se_cv[s] > 0 else float("inf")
        print(f"{s:6s} {se_plain[s]:10.3g} {se_cv[s]:10.3g} {ep:11.3g} {ec:11.3g} "
              f"{ec / ep:8.3g}")


if __name__ == "__main__":
    main()
