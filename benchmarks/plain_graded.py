"""Plain MLPs, N >= 3 distinct inputs, named smooth activations at first-layer K ~ 30 ..
1e3 (issue #15): the three- and four-variable averages above K = 10 on the graded rule.

Runs one case and prints one JSON line: time of ``pdlt.statistics(..., error=True)``,
V's ``integration_error`` over V's largest entry, and per statistic the error=True
estimate over the statistic's largest entry (layers 1..L-1), plus the values (for the
before/after distance). ``benchmarks/README.md`` ("Plain MLPs at large K") has the table;
before = the same script with PYTHONPATH at the commit before the routing.

    PYTHONPATH=src python benchmarks/plain_graded.py tanh 4 100 out.npz
"""

import json
import sys
import time
import warnings

import numpy as np

import pdlt
from pdlt.theory.kernel import first_layer_kernel

NAMES = ["V", "G1", "A", "D", "H1"]


def run(act, N, K1, depth=3, seed=0):
    x = np.random.default_rng(seed).standard_normal((N, 8))
    m = pdlt.MLP(n0=8, width=64, depth=depth, activation=act, C_b=0.0,
                 C_W=1.0 if act == "tanh" else 1.98)
    K, _ = first_layer_kernel(m, x, None)
    x = x * np.sqrt(K1 / np.max(np.diag(K)))
    t = time.time()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = pdlt.statistics(m, x, get=NAMES, error=True)
    dt = time.time() - t
    def rel(E, X):      # over the layers where the statistic is nonzero
        return float(max([np.max(E[l]) / np.max(np.abs(X[l])) for l in range(1, depth)
                          if np.max(np.abs(X[l])) > 0] or [0.0]))
    row = dict(act=act, N=N, K1=float(np.max(np.diag(s.K[0]))), time=round(dt, 1),
               ie_V=rel(s.integration_error[:, None], s.V.reshape(depth, -1)),
               warned=any("point budget" in str(x.message) for x in w))
    row.update({f"err_{k}": rel(s.error[k].reshape(depth, -1), s[k].reshape(depth, -1))
                for k in NAMES})
    return row, {k: np.asarray(s[k]) for k in NAMES}


if __name__ == "__main__":
    row, vals = run(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
    if len(sys.argv) > 4:
        np.savez(sys.argv[4], **vals)
    print(json.dumps(row))
