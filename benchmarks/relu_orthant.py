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

``--polar``: instead, the first-layer averages of the ten NTK tensors'
benchmark (8 inputs in 2 dimensions, seed 0: rank-2 covariances) for every
merged slot signature of <ppss>, <pppp>, <psps> against an independent polar
integral (u in R^2: the radial moment of chi_2 in closed form, the angle by
adaptive quadrature between the kinks), for the orthant path and the split
path at "default" and "high": the largest difference relative to
``prod_k sqrt(K_kk)^(n_k)``.
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


def polar_check():
    import functools
    import math
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "tests", "gaussian"))
    from test_orthant import _polar_reference

    from pdlt.gaussian._multi import PiecewiseMonomial, expect_nd
    from pdlt.theory._averages import _quad_plan
    X = np.random.default_rng(0).standard_normal((8, 2))     # K1 = 2 x x^T / 2
    K = X @ X.T
    pm = {"s": PiecewiseMonomial(1, 0, 1), "p": PiecewiseMonomial(1, 0, 0)}
    for slots in ("ppss", "pppp", "psps"):
        for sig, I, _, _, _ in _quad_plan(8, slots):
            if len(sig) < 2:
                continue
            fs = [functools.reduce(lambda a, b: a * b, [pm[n] for n in nm]) for nm in sig]
            worst = {"orthant": 0.0, "split": 0.0, "split high": 0.0}
            for q in I:
                Kq = K[np.ix_(q, q)]
                ref = _polar_reference(fs, X[list(q)])
                got = {"orthant": expect_nd(fs, Kq)}
                multi._ORTHANT = False
                got["split"] = expect_nd(fs, Kq)
                got["split high"] = expect_nd(fs, Kq, accuracy="high")
                multi._ORTHANT = True
                sc = np.prod([math.sqrt(Kq[i, i]) ** f.n for i, f in enumerate(fs)])
                for k, v in got.items():
                    worst[k] = max(worst[k], abs(v - ref) / sc)
            print(slots, sig, len(I), {k: f"{v:.1e}" for k, v in worst.items()}, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--inputs", type=int, default=16)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--high", action="store_true")
    ap.add_argument("--polar", action="store_true")
    ap.add_argument("--no-split", action="store_true",
                    help="skip the split path at the default (only with --high)")
    a = ap.parse_args()
    if a.polar:
        polar_check()
        return
    x = np.random.default_rng(a.seed).standard_normal((a.inputs, a.dims))
    mlp = pdlt.MLP(n0=a.dims, width=32, depth=a.depth, activation="relu", C_W=2.0, C_b=0.0)
    print(f"relu, N = {a.inputs} in {a.dims} dims (seed {a.seed}), depth {a.depth}", flush=True)
    np.set_printoptions(precision=1)
    for r in range(a.repeats):
        new, t_new = run(mlp, x, True)
        if a.no_split:
            print(f"repeat {r}: CPU orthant {t_new:.2f} s", flush=True)
            continue
        old, t_old = run(mlp, x, False)
        print(f"repeat {r}: CPU orthant {t_new:.2f} s, split {t_old:.2f} s, "
              f"ratio {t_old / t_new:.1f}x", flush=True)
    ie = np.asarray(new.integration_error, dtype=float)
    scale = np.abs(new.V).reshape(a.depth, -1).max(1)
    print("layer                       ", np.arange(1, a.depth + 1))
    print("orthant integration_error/V ", ie / scale)
    if not a.no_split:
        ie_old = np.asarray(old.integration_error, dtype=float)
        print("split integration_error/V   ", ie_old / scale)
        for k in ("V", "G1"):
            print(f"{k}: |orthant - split|/scale  ", per_layer(new[k], old[k], a.depth),
                  flush=True)
    if a.high:
        high, t_high = run(mlp, x, False, "high")
        print(f"split at high: CPU {t_high:.1f} s")
        for k in ("V", "G1"):
            print(f"{k}: |orthant - high|/scale   ", per_layer(new[k], high[k], a.depth))
            if not a.no_split:
                print(f"{k}: |split - high|/scale     ", per_layer(old[k], high[k], a.depth),
                      flush=True)


if __name__ == "__main__":
    main()
