"""Residual N-input statistics of smooth activations at large kernels (issue #15).

``python benchmarks/residual_large_k.py [--acts tanh,gelu,swish] [--scales 5,8,14,25,100,1e6]
[--stats V,G1,H1]``

Residual MLP (depth 3, width 16, gamma 0.5, C_b 0.1, C_W 1), inputs in 3 dimensions
scaled by s. Two checks against the exact one-input module (``pdlt.statistics(...,
K1=...)``: two-depth pair averages, resolved at any K):

* ``diag``: two random inputs (seed 0); the diagonal entries of the N = 2 result against
  the one-input statistics of each input;
* ``coll``: two collinear inputs ``x`` and ``(1 + eta) x`` (eta = 1e-5); the off-diagonal
  entry against the mean of the two one-input statistics (the entry is a symmetric smooth
  function of the two inputs, so the mean is its value to O(eta^2) ~ 1e-10 relative).
  Only while the inputs' z differ by much less than the activation's width 1
  (``eta s |x| << 1``): at s = 1e6 take eta ~ 1e-9 (h62, ``benchmarks/README.md``).

Distances are over the one-input statistic's largest entry (all layers); ``est`` is
``statistics(..., error=True)``'s estimate of the same entries over the same scale, and
``warn`` whether :func:`pdlt.statistics` warned. The largest K is over the layers the
steps read (1..L-1).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import pdlt

ETA = 1e-5


def _entry(X, a, b):
    """Entry (a, b, a, b, ...) pattern: rank-2 (a, b), rank-4 (a, a, b, b)."""
    if X.ndim == 3:
        return X[:, a, b]
    return X[:, a, a, b, b]


def run(act, s, stats):
    x0 = np.random.default_rng(0).standard_normal((2, 3))
    m = pdlt.MLP(n0=3, width=16, depth=3, activation=act, C_b=0.1, C_W=1.0, gamma=0.5)
    cases = {"diag": s * x0, "coll": s * np.stack([x0[0], (1.0 + ETA) * x0[0]])}
    out = []
    for kind, x in cases.items():
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            st = pdlt.statistics(m, x, get=stats, error=True)
            t = time.perf_counter() - t0
        warned = any(issubclass(v.category, RuntimeWarning) for v in w)
        kmax = float(np.max(np.einsum("lii->li", st.K[:-1])))
        one = {k: [pdlt.statistics(m, K1=float(st.K[0, a, a]), get=[k])[k] for a in range(2)]
               for k in stats}
        row = []
        for k in stats:
            X, E = st[k], st.error[k]
            if kind == "diag":
                dist = max(np.max(np.abs(_entry(X, a, a) - one[k][a])) / np.max(np.abs(one[k][a]))
                           for a in range(2))
                est = max(np.max(_entry(E, a, a)) / np.max(np.abs(one[k][a])) for a in range(2))
            else:
                ref = 0.5 * (one[k][0] + one[k][1])
                sc = np.max(np.abs(ref))
                dist = np.max(np.abs(_entry(X, 0, 1) - ref)) / sc
                est = np.max(_entry(E, 0, 1)) / sc
            row.append(f"{dist:.0e} / {est:.0e}")
        out.append(f"| {act} | {kind} | {s:g} | {kmax:.3g} | " + " | ".join(row)
                   + f" | {'yes' if warned else 'no'} | {t:.1f} |")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--acts", default="tanh,gelu,swish")
    ap.add_argument("--scales", default="5,8,14,25,100,1e6")
    ap.add_argument("--stats", default="V,G1,H1")
    a = ap.parse_args()
    stats = a.stats.split(",")
    print("| act | check | s | largest K | " + " | ".join(f"{k} dist / est" for k in stats)
          + " | warned | s (fold + error fold) |")
    print("|---|---|---:|---:|" + "---:|" * len(stats) + "---|---:|")
    for act in a.acts.split(","):
        for s in (float(v) for v in a.scales.split(",")):
            for line in run(act, s, stats):
                print(line, flush=True)


if __name__ == "__main__":
    main()
