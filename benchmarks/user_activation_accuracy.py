"""A user's activation (finite-difference derivatives) against the named one (issue #15).

``python benchmarks/user_activation_accuracy.py``

``pdlt.activation(lambda z: np.tanh(z))`` has no exact derivatives: d1, d2 are
Richardson-extrapolated differences and sigma''' is a difference of them. Every
N-input statistic of it is compared with the named ``"tanh"`` (exact derivatives,
its own accuracy checked against the independent reference of
``statistics_reference.py``): (1) three random inputs, every statistic; (2) two
nearly coinciding inputs, G1 and H1 with the user's own error estimate
(``integration_error``), plain and residual. Distances: max |user - named| at the
last layer over the named statistic's largest entry there.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

import pdlt

STATS = ("K", "Theta", "V", "G1", "A", "B", "D", "F", "P", "Q", "R", "S", "T", "U", "H1")


def pair(x, get, **kw):
    user = pdlt.activation(lambda z: np.tanh(z))
    out, ts, warned = {}, {}, {}
    for name, act in (("named", "tanh"), ("user", user)):
        mlp = pdlt.MLP(n0=x.shape[1], width=32, depth=4, activation=act, C_b=0.1, C_W=1.0, **kw)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            out[name] = pdlt.statistics(mlp, x, get=get)
            ts[name] = time.perf_counter() - t0
        warned[name] = sorted({str(m.message).split(" at layer")[0].split(":")[0][:40]
                               for m in w if issubclass(m.category, RuntimeWarning)})
    return out, ts, warned


def dist(out, k):
    n, u = np.asarray(out["named"][k][-1]), np.asarray(out["user"][k][-1])
    return float(np.max(np.abs(u - n)) / np.max(np.abs(n)))


def main():
    x = np.random.default_rng(0).standard_normal((3, 8))
    out, ts, _ = pair(x, STATS)
    print("three random inputs in 8 dimensions, critical-ish tanh (C_b 0.1, C_W 1), depth 4")
    print("| " + " | ".join(STATS) + " |")
    print("|" + "---:|" * len(STATS))
    print("| " + " | ".join(f"{dist(out, k):.0e}" for k in STATS) + " |")
    print(f"<!-- named {ts['named']:.2f} s, user {ts['user']:.2f} s -->")
    print()
    print("| network | 1 - rho at x | G1 | H1 | user's estimate / H1 scale | warnings (user) |")
    print("|---|---:|---:|---:|---:|---|")
    for label, kw in (("plain", {}), ("residual (0.6, 0.8)", dict(gamma=0.6, xi=0.8))):
        for eps in (1e-1, 1e-3, 1e-5):
            x = np.array([[1.0, 0.3], [1.0, 0.3 + eps]])
            rho = x[0] @ x[1] / np.sqrt((x[0] @ x[0]) * (x[1] @ x[1]))
            out, _, warned = pair(x, ("G1", "H1"), **kw)
            est = np.max(out["user"].integration_error) / np.max(np.abs(out["named"].H1[-1]))
            print(f"| {label} | {1 - rho:.0e} | {dist(out, 'G1'):.0e} | {dist(out, 'H1'):.0e} | "
                  f"{est:.0e} | {'; '.join(warned['user']) or '-'} |", flush=True)


if __name__ == "__main__":
    main()
