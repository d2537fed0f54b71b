"""Every N-input statistic of a *residual* MLP against an independent reference (issue #15).

``python benchmarks/residual_reference.py [--quick] [--acts gelu,swish,tanh] [--N 2,3]``

The residual modules (``pdlt.theory.residual_multi*``) integrate Gaussian
averages over a neuron's *trajectory*: the preactivations of two or more
inputs at two depths, up to four correlated variables already at N = 2.
This script runs them with every Gaussian average replaced by the brute-force
eigenbasis Gauss-Hermite rule of ``statistics_reference.py`` (its
:func:`integrated_by`: every pdlt module's binding of the four entry points
replaced, closed-form pair families switched off, and tripwires on the
engine's integrators below them, so no average can slip through to the
engine), and compares with the default engine, entry by entry at the last
layer, as a fraction of the statistic's largest entry there.

The reference's own error is its two-order difference (``ORDERS``), printed
in parentheses; it must be far below the 1e-8 tested. Smooth activations
only (a kinked one makes a tensor Gauss-Hermite rule converge algebraically).
The rule's cost is (nodes per axis)^4 for the four-variable trajectory
averages, and a pole of the integrand at distance d from the real axis makes
it converge like exp(-c d sqrt(nodes)) (1-D <tanh^2 sech^4> at variance 1:
1e-6 at 80 nodes, 9e-8 at 100; at variance 0.2: 2e-12 at 48): tanh (poles at
+-i pi / 2) runs at first-layer variance ~0.1 and swish (+-i pi) at ~0.5
(``SCALE``), gelu (entire) at ~1.

The network: depth 4, width 32, plain-critical (C_b, C_W), residual layers
``gamma = 0.6, xi = 0.8``; N random inputs in 8 dimensions (seed 0). P and Q
are served by two modules (``residual_multi_ddi`` when R or T is asked for,
``residual_multi_dntk`` otherwise): both are compared.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import pdlt
from statistics_reference import Reference, integrated_by

from pdlt.theory.statistics import defined

STATS = ("K", "Theta", "V", "G1", "A", "B", "D", "F", "P", "Q", "R", "S", "T", "U", "H1",
         "kappa3")
#: the runs: every statistic at once (P, Q from residual_multi_ddi), then P, Q alone
#: (residual_multi_dntk)
GROUPS = (STATS, ("P", "Q"))

#: per activation: the reference's two orders per covariance rank (1..4), and the inputs'
#: scale (|x|^2 / n0 times C_W, about the first-layer variance)
ORDERS = {"tanh": ((160, 160, 56, 36), (200, 200, 72, 48)),
          "swish": ((160, 160, 56, 36), (200, 200, 72, 48))}
ORDERS_ENTIRE = ((120, 120, 48, 32), (160, 160, 64, 40))
SCALE = {"tanh": 0.1, "swish": 0.5}


def case(act, N, depth=4, gamma=0.6, xi=0.8):
    crit = pdlt.criticality(act)
    mlp = pdlt.MLP(n0=8, width=32, depth=depth, activation=act, C_b=crit.C_b, C_W=crit.C_W,
                   gamma=gamma, xi=xi)
    x = (np.random.default_rng(0).standard_normal((N, 8))
         * np.sqrt(SCALE.get(act, 1.0) / crit.C_W))
    return mlp, x


def compare(act, N, groups=GROUPS):
    mlp, x = case(act, N)
    orders = ORDERS.get(act, ORDERS_ENTIRE)
    rows, t_eng, t_ref = {}, 0.0, 0.0
    for g, stats in enumerate(groups):
        stats = tuple(k for k in stats if k in defined(mlp, N))
        t0 = time.perf_counter()
        eng = pdlt.statistics(mlp, x, get=stats)
        t_eng += time.perf_counter() - t0
        refs = []
        t0 = time.perf_counter()
        for o in orders:
            with integrated_by(Reference(o)):
                refs.append(pdlt.statistics(mlp, x, get=stats))
        t_ref += time.perf_counter() - t0
        for k in stats:
            R = np.asarray(refs[1][k])
            nz = [l for l in range(len(R)) if np.any(R[l] != 0)]
            name = k if g == 0 or k not in rows else f"{k} (dntk)"
            if not nz:          # zero by symmetry (kappa3 of an odd activation): absolute
                rows[name] = (float(np.max(np.abs(eng[k]))), 0.0)
                continue
            # the last layer where the statistic is not zero by symmetry (kappa3 of the
            # output layer, gamma = 0 there, vanishes: flip its W and b)
            l = nz[-1]
            scale = float(np.max(np.abs(R[l])))
            rows[name] = (float(np.max(np.abs(np.asarray(eng[k][l]) - R[l]))) / scale,
                          float(np.max(np.abs(np.asarray(refs[0][k][l]) - R[l]))) / scale)
    return rows, t_eng, t_ref


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="gelu, N = 2 only")
    ap.add_argument("--acts", default="gelu,swish,tanh")
    ap.add_argument("--N", default="2,3")
    a = ap.parse_args()
    acts = ("gelu",) if a.quick else tuple(a.acts.split(","))
    Ns = (2,) if a.quick else tuple(int(n) for n in a.N.split(","))
    print("residual MLP: default rule vs reference (reference's own two-order difference), "
          "fraction of the largest entry at the last layer")
    for act in acts:
        for N in Ns:
            rows, te, tr = compare(act, N)
            print(f"| {act} | {N} | " + " | ".join(f"{k} {v[0]:.0e} ({v[1]:.0e})"
                                                  for k, v in rows.items()) + " |", flush=True)
            print(f"<!-- {act} N={N}: engine {te:.2f} s, reference {tr:.1f} s -->", flush=True)


if __name__ == "__main__":
    main()
