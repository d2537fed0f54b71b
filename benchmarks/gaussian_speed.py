"""Side-by-side speed of the gaussian engine: this tree against an older one.

Usage::

    git archive eb57c96 src | tar -x -C /tmp/pdlt-old       # the code before the split
    PYTHONPATH=src python benchmarks/gaussian_speed.py --old /tmp/pdlt-old/src

Each case runs in a fresh subprocess per tree (so each imports its own
``pdlt``), the two trees alternating, best of ``--repeats`` calls in CPU
seconds of the process (``time.process_time``, one BLAS thread), which is
less sensitive to the load of a shared machine than wall time. Cases: the
kernel flow of one input through 10,000 layers (tanh, ``pdlt.flow(...,
K1=1.0)``); ``pair_expectations`` at N = 1000 (tanh: the Mehler series;
gelu: closed forms; swish: the series) for the NNGP and NTK terms, on the
kernel of the last of 8 layers (correlated inputs: high series orders); the
four-point averages ``quad_expectations`` (tanh, N = 4 and 8 unit inputs in
8 dimensions at K ~ 1) and the V/G1 flow ``finite_width_flow`` (N = 8,
depth 10), the only ones whose rule changed (``pdlt.gaussian._multi``:
trapezoidal axes for wide smooth integrands). The results of the two trees
are compared too (largest relative difference).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CASES = ["flow_1input_10000", "pairs_tanh_1000", "pairs_gelu_1000", "pairs_swish_1000",
         "quad_tanh_4", "quad_tanh_8", "vertex_flow_8"]


def _worker(case, repeats):
    import time

    import numpy as np

    import pdlt
    from pdlt import gaussian
    rng = np.random.default_rng(0)

    def inputs(n, d):
        x = rng.standard_normal((n, d))
        return x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(d)

    def kernel(name, n):
        # the kernel at layer 8 of a critical-ish flow: correlated inputs (|rho| up to
        # ~0.99), so the series needs high orders and some pairs go to quadrature
        mlp = pdlt.MLP(n0=64, width=10, depth=8, activation=name, C_b=0.01,
                       C_W=1.0 if name == "tanh" else 1.8)
        return pdlt.flow(mlp, inputs(n, 64))[-1].K

    if case == "flow_1input_10000":
        mlp = pdlt.MLP(n0=1, width=10, depth=10000, activation="tanh")
        run = lambda: np.array([s.K for s in pdlt.flow(mlp, K1=1.0)], dtype=float).ravel()  # noqa: E731
    elif case.startswith("pairs_"):
        name = case.split("_")[1]
        act, K = pdlt.activation(name), kernel(name, 1000)
        terms = [("sigma", "sigma"), ("d1", "d1")]
        run = lambda: np.stack([v for v in gaussian.pair_expectations(act, K, terms).values()])  # noqa: E731
    elif case.startswith("quad_"):
        n = int(case.split("_")[2])
        x = inputs(n, 8)
        K = x @ x.T / 8
        run = lambda: gaussian.quad_expectations(pdlt.activation("tanh"), K)  # noqa: E731
    elif case == "vertex_flow_8":
        from pdlt.theory.vertex import finite_width_flow
        x = inputs(8, 8)
        mlp = pdlt.MLP(n0=8, width=32, depth=10, activation="tanh", C_b=0.0, C_W=1.0)
        run = lambda: np.array([np.asarray(s.extra["V"], float) for s in finite_width_flow(mlp, x)[1:]])  # noqa: E731
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.process_time()
        out = run()
        best = min(best, time.process_time() - t)
    np.save(os.environ["PDLT_SPEED_OUT"], np.asarray(out, dtype=float))
    print(json.dumps({"cpu_s": best}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True, help="src folder of the older tree")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", nargs="*", default=CASES)
    args = ap.parse_args()
    import numpy as np
    new = str(Path(__file__).resolve().parents[1] / "src")
    env0 = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(f"{'case':20s} {'old cpu-s':>10s} {'new cpu-s':>10s} {'new/old':>8s} {'max rel diff':>13s}")
    for case in args.cases:
        res = {}
        for tag, src in (("old", args.old), ("new", new)):
            outf = f"/tmp/pdlt_speed_{os.getpid()}_{tag}.npy"
            env = dict(env0, PYTHONPATH=src, PDLT_SPEED_OUT=outf)
            p = subprocess.run([sys.executable, __file__, "--worker", case, str(args.repeats)],
                               env=env, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"{case} ({tag}) failed:\n{p.stderr}")
            res[tag] = (json.loads(p.stdout.strip().splitlines()[-1])["cpu_s"], np.load(outf))
            os.remove(outf)
        (to, vo), (tn, vn) = res["old"], res["new"]
        diff = float(np.max(np.abs(vn - vo)) / np.max(np.abs(vo)))
        print(f"{case:20s} {to:10.3f} {tn:10.3f} {tn / to:8.2f} {diff:13.1e}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]))
    else:
        main()
