"""sin at any scale: the trigonometric closed forms against the quadrature path (issue #15, h44).

``python benchmarks/periodic_cost.py [--K1 1 1e2 1e6 1e12] [--N 1 4 8] [--old-limit 120] [--gamma 0.5]``

``pdlt.statistics(mlp, x, get=TEN)`` for the ten NTK tensors (A, B, D, F,
P, Q, R, S, T, U, and what they need: V, ...) of a sin MLP (depth 4, width
32, C_W = 1, C_b = 0, n0 = 3), for N random inputs scaled to
``|x|^2 / n0 = K1`` (N = 1: ``K1=``; N = 8 > n0: rank-deficient first-layer
covariances), each run in its own subprocess, one after the other: with the
closed forms of :mod:`pdlt.gaussian._trig` (the new default) and without
(``_trig._TRIG = False``: the quadrature paths, the old code). Per run: CPU
seconds (``time.process_time``: side by side in one invocation, so the
ratio is meaningful on a loaded machine) and the peak resident memory of the
process (``ru_maxrss``, which includes ~150 MB of imports). A run over
``--old-limit`` seconds of wall time is stopped and reported as such.

Accuracy: for each statistic the largest difference between the two paths
relative to the statistic's largest entry (where the old run finished),
and, at every scale, the exact period limit of the layer-2 vertex: with
``C_W = 1, C_b = 0`` and K1 so large that distinct inputs decorrelate,
``V_aaaa = <sin^4> - <sin^2>^2 -> 1/8`` and ``V_aabb -> 0`` (layer 2 only sees
layer 1's ``sin(z)``, whose variance ``K1`` enters through ``e^{-2 K1}``).
``--gamma g``: a residual MLP (``gamma = g`` in its residual layers) and
every statistic it defines (``get="all"``); the limit column is then not
the plain one and is left out.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

TEN = ("A", "B", "D", "F", "P", "Q", "R", "S", "T", "U")
SHOW = ("V", "G1") + TEN + ("H1",)


def inputs(N, K1, seed=0):
    x = np.random.default_rng(seed).standard_normal((N, 3))
    return x * np.sqrt(3 * K1) / np.linalg.norm(x, axis=1, keepdims=True)


def worker(trig, N, K1, out, gamma):
    import pdlt
    from pdlt.gaussian import _trig
    _trig._TRIG = trig
    mlp = pdlt.MLP(n0=3, width=32, depth=4, activation="sin", C_W=1.0, C_b=0.0, gamma=gamma)
    get = TEN if gamma == 0 else "all"
    t = time.process_time()
    if N == 1:
        st = pdlt.statistics(mlp, K1=K1, get=get)
    else:
        st = pdlt.statistics(mlp, inputs(N, K1), get=get)
    cpu = time.process_time() - t
    np.savez(out, **{n: np.asarray(getattr(st, n)) for n in SHOW if getattr(st, n) is not None})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"cpu": cpu, "rss_mb": rss}))


def run(trig, N, K1, limit, tmp, gamma):
    out = os.path.join(tmp, f"{int(trig)}_{N}_{K1:g}.npz")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(int(trig)), str(N), repr(K1),
           out, repr(gamma)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return None, f"> {limit:.0f} s wall (stopped)"
    if p.returncode != 0:
        return None, "error: " + (p.stderr.strip().splitlines() or ["?"])[-1][:100]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    return dict(np.load(out)), info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--K1", type=float, nargs="+", default=[1.0, 1e2, 1e6, 1e12])
    ap.add_argument("--N", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--old-limit", type=float, default=120.0)
    ap.add_argument("--gamma", type=float, default=0.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'N':>2} {'K1':>6} | {'new CPU s':>9} {'MB':>5} | {'old CPU s':>22} {'MB':>5} |"
              " max |new - old| / max |stat| (V, A..U) | layer-2 V_aaaa - 1/8, V_aabb (new)")
        for N in a.N:
            for K1 in a.K1:
                new, ni = run(True, N, K1, 600.0, tmp, a.gamma)
                old, oi = run(False, N, K1, a.old_limit, tmp, a.gamma)
                if new is None:
                    print(f"{N:>2} {K1:>6.0e} | new failed: {ni}")
                    continue
                ocpu = f"{oi['cpu']:.3f}" if old is not None else oi
                orss = f"{oi['rss_mb']:.0f}" if old is not None else "-"
                diffs = "-"
                if old is not None:
                    d = []
                    for n in [n for n in SHOW if n in new]:
                        sc = np.max(np.abs(old[n])) or 1.0
                        d.append(np.max(np.abs(new[n] - old[n])) / sc)
                    diffs = f"max {max(d):.1e} (V {d[0]:.1e})"
                V = new["V"]
                if a.gamma:
                    lim = "-"
                elif N == 1:
                    lim = f"{V[1] - 0.125:+.1e}"
                else:
                    lim = f"{V[1, 0, 0, 0, 0] - 0.125:+.1e}, {V[1, 0, 0, 1, 1]:+.1e}"
                print(f"{N:>2} {K1:>6.0e} | {ni['cpu']:>9.3f} {ni['rss_mb']:>5.0f} | {ocpu:>22} "
                      f"{orss:>5} | {diffs} | {lim}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(bool(int(sys.argv[2])), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5],
               float(sys.argv[6]))
    else:
        main()
