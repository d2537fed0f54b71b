"""ReLU at N = 16: the orthant closed form against the split path (issue #15, cost and accuracy).

``python benchmarks/relu_orthant.py [--dims 8] [--seed 1] [--repeats 2] [--high]``

``pdlt.statistics(mlp, x, get=["V", "G1"])`` for N = 16 random inputs
(``default_rng(seed).standard_normal((16, dims))``), depth 10, width 32,
critical relu (C_W = 2, C_b = 0), at the default accuracy, twice per repeat
in one process, alternating: with the orthant closed form for products of
piecewise monomials (``pdlt.gaussian._multi._ORTHANT = True``, the new
default) and without it (the split Gauss-Legendre path everywhere, the old
code). CPU seconds (``time.process_time``) side by side, so their ratio is
meaningful on a loaded machine. Per layer: the largest difference of V and
G1 between the two paths relative to each statistic's largest entry at that
layer, and the fold's ``integration_error`` of V relative to V's largest
entry. ``--high``: also the split path at ``accuracy="high"`` (the
independent reference of ``relu_n16_check.py``; ~15 CPU min for dims = 8).
"""

import argparse
import time

import numpy as np

import pdlt
import pdlt.gaussian._multi as multi


def run(mlp, x, orthant, accuracy="default"):
    multi._ORTHANT = orthant
    try:
        t = time.process_time()
        s = pdlt.statistics(mlp, x, get=["V", "G1"], accuracy=accuracy)
        return s, time.process_time() - t
    finally:
        multi._ORTHANT = True


def per_layer(a, b, depth):
    diff = np.abs(a - b).reshape(depth, -1).max(1)
    return diff / np.abs(b).reshape(depth, -1).max(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--inputs", type=int, default=16)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--high", action="store_true")
    a = ap.parse_args()
    x = np.random.default_rng(a.seed).standard_normal((a.inputs, a.dims))
    mlp = pdlt.MLP(n0=a.dims, width=32, depth=a.depth, activation="relu", C_W=2.0, C_b=0.0)
    print(f"relu, N = {a.inputs} in {a.dims} dims (seed {a.seed}), depth {a.depth}", flush=True)
    for r in range(a.repeats):
        new, t_new = run(mlp, x, True)
        old, t_old = run(mlp, x, False)
        print(f"repeat {r}: CPU orthant {t_new:.2f} s, split {t_old:.2f} s, "
              f"ratio {t_old / t_new:.1f}x", flush=True)
    np.set_printoptions(precision=1)
    ie = np.asarray(new.integration_error, dtype=float)
    scale = np.abs(new.V).reshape(a.depth, -1).max(1)
    print("layer                       ", np.arange(1, a.depth + 1))
    print("orthant integration_error/V ", ie / scale)
    ie_old = np.asarray(old.integration_error, dtype=float)
    print("split integration_error/V   ", ie_old / scale)
    for k in ("V", "G1"):
        print(f"{k}: |orthant - split|/scale  ", per_layer(new[k], old[k], a.depth), flush=True)
    if a.high:
        high, t_high = run(mlp, x, False, "high")
        print(f"split at high: CPU {t_high:.1f} s")
        for k in ("V", "G1"):
            print(f"{k}: |orthant - high|/scale   ", per_layer(new[k], high[k], a.depth))
            print(f"{k}: |split - high|/scale     ", per_layer(old[k], high[k], a.depth),
                  flush=True)


if __name__ == "__main__":
    main()
