"""Accuracy and cost of the N-input statistics (pdlt.gaussian._multi).

Usage::

    PYTHONPATH=src python benchmarks/accuracy.py            # accuracy table (~1 min)
    PYTHONPATH=src python benchmarks/accuracy.py --cost     # + cost runs (minutes)

Accuracy: three- and four-variable expectations at every rule against
independent references -- tanh: tensor Gauss-Legendre on [-10, 10]^4 (96
nodes per axis) in plain Cholesky coordinates; ReLU family (sigma and
sigma' slots): unpivoted Cholesky, nested Gauss-Legendre on unit panels split
at each variable's own kink, innermost variable in closed form (the
``_relu_ref`` of ``tests/test_gaussian_multi.py``). Errors relative to the
Cauchy-Schwarz scale of each expectation, with the error estimate the
engine reports.

Cost: ``pdlt.statistics`` for V, G1 at N = 16, depth 10 and for the ten NTK
tensors A..U at N = 8 inputs in n0 = 2 dimensions
(N > n0: rank-deficient first-layer covariances).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import pdlt  # noqa: E402
from pdlt.gaussian._multi import PiecewiseMonomial, expect_nd  # noqa: E402
from test_gaussian_multi import _relu_ref  # noqa: E402


def _cov(rng, d, scale):
    A = rng.normal(size=(d, d))
    return scale * (A @ A.T / d + 0.2 * np.eye(d))


def _tanh_ref(K):
    L = np.linalg.cholesky(K)
    x, w = np.polynomial.legendre.leggauss(96)
    x, w = 10 * x, 10 * w * np.exp(-50 * x * x) / np.sqrt(2 * np.pi)
    total = 0.0
    for i, u1 in enumerate(x):
        U = np.stack(np.meshgrid([u1], x, x, x, indexing="ij"), -1).reshape(-1, 4)
        W = w[i] * np.prod(np.stack(np.meshgrid([1.0], w, w, w, indexing="ij"), -1)
                           .reshape(-1, 4), axis=1)
        total += np.prod(np.tanh(U @ L.T), axis=1) @ W
    return total


def accuracy():
    rng = np.random.default_rng(5)
    print(f"{'case':28s} {'rule':8s} {'error':>9s} {'estimate':>9s} {'time':>7s}")
    for scale in (0.1, 0.5, 1.0):
        K = _cov(rng, 4, scale)
        ref = _tanh_ref(K)
        cs = np.prod([float(expect_nd([lambda z: np.tanh(z) ** 4], [[k]])) ** 0.25
                      for k in np.diag(K)])
        for acc in ("fast", "default", "high"):
            t = time.perf_counter()
            v, e = expect_nd([np.tanh] * 4, K, accuracy=acc, return_error=True)
            print(f"tanh <ssss> scale {scale:<13g} {acc:8s} {abs(v - ref) / cs:9.1e} "
                  f"{e / cs:9.1e} {time.perf_counter() - t:7.3f}")
    rng = np.random.default_rng(3)
    for kinds in ("ssss", "sspp", "pppp", "sps"):
        K = _cov(rng, len(kinds), 1.0)
        fs = [PiecewiseMonomial(1.0, 0.0, 1 if c == "s" else 0) for c in kinds]
        cs = np.prod([np.sqrt(K[i, i]) if c == "s" else 1.0 for i, c in enumerate(kinds)])
        ref = _relu_ref(kinds, K)
        for acc in ("fast", "default", "high"):
            t = time.perf_counter()
            v, e = expect_nd(fs, K, accuracy=acc, return_error=True)
            print(f"relu <{kinds}>{'':{22 - len(kinds)}s} {acc:8s} {abs(v - ref) / cs:9.1e} "
                  f"{e / cs:9.1e} {time.perf_counter() - t:7.3f}")


def cost():
    for name in ("tanh", "relu", "gelu"):
        x = np.random.default_rng(0).standard_normal((16, 3))
        mlp = pdlt.MLP(n0=3, width=32, depth=10, activation=name)
        t = time.perf_counter()
        f = pdlt.statistics(mlp, x, get=["V", "G1"])
        print(f"V, G1  N=16 depth 10 {name:5s}: {time.perf_counter() - t:7.1f} s, "
              f"max integration_error {f.integration_error.max():.1e}")
    for name in ("tanh", "relu", "gelu"):
        x = np.random.default_rng(0).standard_normal((8, 2))
        crit = pdlt.criticality(name)
        mlp = pdlt.MLP(n0=2, width=32, depth=3, activation=name, C_W=crit.C_W, C_b=crit.C_b)
        t = time.perf_counter()
        pdlt.statistics(mlp, x, get=list("ABDFPQRSTU"))
        print(f"A..U   N=8  depth 3  {name:5s}: {time.perf_counter() - t:7.1f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--cost", action="store_true")
    args = ap.parse_args()
    accuracy()
    if args.cost:
        cost()
