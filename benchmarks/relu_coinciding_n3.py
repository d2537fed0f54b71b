"""Three ReLU-family inputs with one nearly coinciding pair, before / after the near-pair
three-variable averages (issue #15, h57).

``python benchmarks/relu_coinciding_n3.py [--cases relu,leaky_relu]``

Inputs ``[1, 0.3]``, ``[1, 0.3 + eps]``, ``[0.2, -1]`` (n0 = 2, width 32, depth 4,
C_b = 0.1; relu C_W = 2, leaky_relu 1.5). Per eps and statistic: the largest distance of
the mixed entries (indices 1 and 2 both present) of the last layer from the
eps-interpolation reference (a degree-11 polynomial through the engine at eps = 0 and at
12 nodes 0.045 .. 0.2, where ``1 - rho^2 >= 1e-3`` and the orthant closed forms are right;
the degree-9 fit agrees to ~1e-12), over the statistic's largest entry; "before" switches
``pdlt.gaussian._multi._near_pair_triple`` off (the orthant / split path), "after" is the
engine as is. Also the CPU seconds of one ``statistics(get=V, A, B, D, F, H1)`` call.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import pdlt
from pdlt.gaussian import _multi

NAMES = ("V", "A", "B", "D", "F", "H1")
CW = {"relu": 2.0, "leaky_relu": 1.5}
NODES = np.concatenate([[0.0], np.linspace(0.045, 0.2, 12)])
TARGETS = (1e-2, 1e-3, 1e-4, 1e-5)


def _x(eps):
    return np.array([[1.0, 0.3], [1.0, 0.3 + eps], [0.2, -1.0]])


def _last(mlp, eps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = pdlt.statistics(mlp, _x(eps), get=NAMES)
    return {X: getattr(s, X)[-1] for X in NAMES}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="relu,leaky_relu")
    args = ap.parse_args()
    near = _multi._near_pair_triple
    P = np.polynomial.polynomial
    for act in args.cases.split(","):
        mlp = pdlt.MLP(n0=2, width=32, depth=4, activation=act, C_b=0.1, C_W=CW[act])
        _multi._near_pair_triple = _multi._piecewise_path
        try:
            vals = [_last(mlp, e) for e in NODES]
        finally:
            _multi._near_pair_triple = near
        fit = {X: (P.polyfit(NODES, np.array([v[X].ravel() for v in vals]), 11),
                   P.polyfit(NODES, np.array([v[X].ravel() for v in vals]), 9)) for X in NAMES}
        print(f"\n{act}: mixed entries, |engine - reference| / max|entry| (reference accuracy)")
        print("| 1 - rho^2 (layer 1) | " + " | ".join(f"{X} before / after" for X in NAMES)
              + " | CPU s before / after |")
        for eps in TARGETS:
            row, cost = [], []
            for which in ("before", "after"):
                _multi._near_pair_triple = _multi._piecewise_path if which == "before" else near
                try:
                    t = time.process_time()
                    got = _last(mlp, eps)
                    cost.append(time.process_time() - t)
                finally:
                    _multi._near_pair_triple = near
                d = []
                for X in NAMES:
                    T = got[X]
                    idx = np.indices(T.shape).reshape(T.ndim, -1)
                    mix = np.any(idx == 1, axis=0) & np.any(idx == 2, axis=0)
                    ref = P.polyval(eps, fit[X][0])
                    d.append(np.max(np.abs(T.ravel() - ref)[mix]) / np.max(np.abs(ref)))
                row.append(d)
            K1 = pdlt.statistics(mlp, _x(eps)).K[0]
            omr = 1.0 - K1[0, 1] ** 2 / (K1[0, 0] * K1[1, 1])
            acc = max(np.max(np.abs(P.polyval(eps, fit[X][0]) - P.polyval(eps, fit[X][1])))
                      / np.max(np.abs(P.polyval(eps, fit[X][0]))) for X in NAMES)
            print(f"| {omr:.1e} (ref {acc:.0e}) | "
                  + " | ".join(f"{b:.1e} / {a:.1e}" for b, a in zip(*row))
                  + f" | {cost[0]:.2f} / {cost[1]:.2f} |")


if __name__ == "__main__":
    main()
