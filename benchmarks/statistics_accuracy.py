"""Accuracy and cost of every N-input statistic at the default rule (issue #15).

``python benchmarks/statistics_accuracy.py [--quick]``

For relu, tanh, gelu and erf at their critical initialization (depth 4,
width 32), N = 2, 3, 4 random inputs in 8 dimensions (first-layer variances
~1, seed 0), every order-1/n statistic by :func:`pdlt.statistics` with
``error=True``: the estimated error (default rule against "high", propagated
through the fold) of the last layer, as a fraction of the statistic's largest
entry there, and the wall time of the default fold alone. Then the cost
target of the issue: N = 16, depth 10, V and G1 (tanh; ``--n16 tanh gelu``), wall
and CPU seconds and the fold's own estimate (``integration_error``) at layer 10.

The estimate is the difference of two rules, not a distance to an
independent reference; ``tests/theory/test_statistics.py`` checks that it
tracks the "fast" rule's distance to "high" within 2x.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import pdlt

STATS = ("V", "G1", "A", "B", "D", "F", "P", "Q", "R", "S", "T", "U", "H1")


def row(act, N, stats):
    crit = pdlt.criticality(act)
    mlp = pdlt.MLP(n0=8, width=32, depth=4, activation=act, C_b=crit.C_b, C_W=crit.C_W)
    x = np.random.default_rng(0).standard_normal((N, 8)) * np.sqrt(1.0 / crit.C_W)
    t0 = time.perf_counter()
    pdlt.statistics(mlp, x, get=stats)
    t = time.perf_counter() - t0
    s = pdlt.statistics(mlp, x, get=stats, error=True)
    rel = {}
    for k in stats:
        scale = float(np.max(np.abs(s[k][-1])))
        rel[k] = float(np.max(s.error[k][-1])) / scale if scale > 0 else 0.0
    return t, rel


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 2, 3 only")
    ap.add_argument("--n16", nargs="*", default=["tanh"],
                    help="activations of the N = 16, depth-10 cost case (critical)")
    ap.add_argument("--acts", default="relu,tanh,gelu,erf", help="activations of the table")
    a = ap.parse_args()
    Ns = (2, 3) if a.quick else (2, 3, 4)
    print("| activation | N | time (s) | " + " | ".join(STATS) + " |")
    print("|---|---:|---:|" + "---:|" * len(STATS))
    for act in a.acts.split(","):
        for N in Ns:
            t, rel = row(act, N, STATS)
            print(f"| {act} | {N} | {t:.2f} | " + " | ".join(f"{rel[k]:.0e}" for k in STATS)
                  + " |", flush=True)
    x = np.random.default_rng(1).standard_normal((16, 8))
    for act in a.n16:
        crit = pdlt.criticality(act)
        mlp = pdlt.MLP(n0=8, width=32, depth=10, activation=act, C_b=crit.C_b, C_W=crit.C_W)
        for acc in ("fast", "default"):
            t0, c0 = time.perf_counter(), time.process_time()
            s = pdlt.statistics(mlp, x, get=("V", "G1"), accuracy=acc)
            t, c = time.perf_counter() - t0, time.process_time() - c0
            err, scale = s.integration_error[-1], np.max(np.abs(s.V[-1]))
            print(f"N = 16, depth 10, {act}, V and G1, accuracy={acc}: {t:.1f} s "
                  f"({c:.1f} s CPU), integration_error of V at layer 10 {err:.1e} "
                  f"(V's scale {scale:.2g}: {err / scale:.1e} relative)", flush=True)


if __name__ == "__main__":
    main()
