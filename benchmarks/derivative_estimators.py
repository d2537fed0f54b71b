"""dNTK / ddNTK estimators: all neuron pairs versus a subset of s neurons, side by side.

The P..U estimators average dNTK/ddNTK pair patterns over ordered neuron pairs
(i != j). Averaging over the pairs of the first s neurons is unbiased (neurons
are exchangeable at initialization) and costs ~s^2 instead of ~n^2 autodiff
passes. This script measures, on the same networks in one run, the time per
network and the standard error of each statistic for several s, and prints

    efficiency(s) = 1 / (stderr(s)^2 * time(s)),  relative to the best s,

the figure of merit for a fixed CPU budget (stderr^2 ~ 1/M at fixed s).

Run: ``python benchmarks/derivative_estimators.py [--width 32] [--networks 96]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import pdlt
from pdlt.experiment import Ensemble

STATS = ["P", "Q", "R", "S", "T", "U"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--activation", default="tanh")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--networks", type=int, default=96)
    ap.add_argument("--neurons", default="2,4,8,all")
    args = ap.parse_args(argv)
    crit = pdlt.criticality(args.activation)
    mlp = pdlt.MLP(n0=1, width=args.width, depth=args.depth, n_out=args.width,
                   activation=args.activation, C_b=crit.C_b, C_W=crit.C_W)
    ens = Ensemble(mlp, networks=args.networks, seed=0)
    # warm-up (torch.func tracing, allocator) so that the first timed s is not penalized
    Ensemble(mlp, networks=4, seed=1).measure(K1=1.0, stats=STATS, layers=[args.depth],
                                              progress=False)
    res = {}
    for tok in args.neurons.split(","):
        s = args.width if tok == "all" else int(tok)
        t0 = time.perf_counter()
        m = ens.measure(K1=1.0, stats=STATS, layers=[args.depth], derivative_neurons=s,
                        progress=False)
        dt = (time.perf_counter() - t0) / args.networks
        res[tok] = (dt, {k: float(np.ravel(m[k].stderr)[-1]) for k in STATS},
                    {k: float(np.ravel(m[k].mean)[-1]) for k in STATS})
    eff = {tok: {k: 1.0 / (se[k] ** 2 * dt) for k in STATS} for tok, (dt, se, _) in res.items()}
    best = {k: max(e[k] for e in eff.values()) for k in STATS}
    print(f"{args.activation}, width {args.width}, depth {args.depth}, last layer, "
          f"{args.networks} networks (the same for every s)")
    print("s      ms/net  " + "  ".join(f"{k:>6}" for k in STATS) + "   (efficiency / best)")
    for tok, (dt, se, _) in res.items():
        print(f"{tok:>5}  {1e3 * dt:7.1f}  "
              + "  ".join(f"{eff[tok][k] / best[k]:6.2f}" for k in STATS))
    print("means (all agree within errors):")
    for tok, (_, se, mean) in res.items():
        print(f"{tok:>5}  " + "  ".join(f"{mean[k]:9.3g}+-{se[k]:.2g}" for k in STATS))


if __name__ == "__main__":
    main()
