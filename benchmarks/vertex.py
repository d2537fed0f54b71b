"""Benchmark: multi-input four-point vertex V and NLO metric G1.

Times ``pdlt.statistics(mlp, x, get=["V", "G1"])`` for N = 4, 8, 16 inputs,
depth 10, tanh at criticality (C_b = 0, C_W = 1), random unit-norm inputs,
and reports wall time and peak memory (tracemalloc, numpy allocations).
Run: ``python benchmarks/vertex.py`` (target: N = 16 in at most 10 s).
The accuracy levels are those of :mod:`pdlt.gaussian._multi`.
"""

import time
import tracemalloc

import numpy as np

import pdlt


def main(sizes=(4, 8, 16), depth=10, n0=8, seed=0):
    rng = np.random.default_rng(seed)
    print(f"{'N':>4} {'depth':>6} {'accuracy':>9} {'time [s]':>9} {'peak MiB':>9}")
    for N, accuracy in [(N, a) for N in sizes for a in ("fast", "default")]:
        x = rng.normal(size=(N, n0))
        x *= np.sqrt(n0) / np.linalg.norm(x, axis=1, keepdims=True)
        mlp = pdlt.MLP(n0=n0, width=128, depth=depth, activation="tanh", C_W=1.0)
        tracemalloc.start()
        t0 = time.perf_counter()
        f = pdlt.statistics(mlp, x, get=["V", "G1"], accuracy=accuracy)
        dt = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
        assert np.all(np.isfinite(f.V[-1]))
        print(f"{N:>4} {depth:>6} {accuracy:>9} {dt:>9.2f} {peak:>9.1f}")


if __name__ == "__main__":
    main()
