"""A user's kinked activation (numerical derivatives) against the named elu (issue #15, h53).

``python benchmarks/user_kinked_accuracy.py``

``pdlt.activation(lambda z: np.where(z > 0, z, alpha * np.expm1(z)), kinks=[0])`` is elu
with finite-difference derivatives; the named ``elu`` is exact in the engine (h52: within
1e-16 of a 40-digit reference for its T_k). (1) Two inputs ``[1, 0.3], [1, 0.3 + eps]``,
``eps = 1e-1 .. 1e-6``, depth 4, C_b = 0.1, C_W = 1: G1 and H1, the distance of the
user's off-diagonal entries to the named ones over the entry's Cauchy-Schwarz scale
``max(|X_ab|, sqrt(X_aa X_bb))`` (max over layers 3, 4), the user's propagated estimate
of the fourth-derivative sources (what ``pdlt.statistics`` warns on) over the same
scale, whether it (plus the named's) covers the distance, and the warnings. (2) Three
random inputs in 8 dims: every statistic (R is refused: sigma'' jumps), max |user -
named| at the last layer over the named's largest entry.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

import pdlt
from pdlt.theory import statistics as stats_mod

EPS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
NAMES = ("K", "Theta", "V", "G1", "A", "B", "D", "F", "P", "Q", "S", "T", "U", "H1")


def user_elu(alpha):
    return pdlt.activation(lambda z: np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0.0))),
                           kinks=[0.0])


def run(act, x, get, depth=4):
    mlp = pdlt.MLP(n0=x.shape[1], width=32, depth=depth, activation=act, C_b=0.1, C_W=1.0)
    est, orig = {}, stats_mod._warn_d4

    def keep(err, out, Ks):
        est.update({k: v.copy() for k, v in err.items()})
        return orig(err, out, Ks)
    stats_mod._warn_d4 = keep
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            s = pdlt.statistics(mlp, x, get=list(get))
            dt = time.perf_counter() - t0
    finally:
        stats_mod._warn_d4 = orig
    warned = sorted({str(m.message)[:2] for m in w if "estimated error" in str(m.message)})
    return s, est, warned, dt


def two_inputs():
    print("| alpha | eps | G1 dist | G1 est | H1 dist | H1 est | named's H1 est | covered | "
          "warned (user / named) | time user / named |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
    for al in (1.0, 0.5):
        for eps in EPS:
            x = np.array([[1.0, 0.3], [1.0, 0.3 + eps]])
            u, eu, wu, tu = run(user_elu(al), x, ("G1", "H1"))
            n, en, wn, tn = run(pdlt.activation("elu", alpha=al), x, ("G1", "H1"))
            row, cov = [], True
            for k in ("G1", "H1"):
                U, N = u[k][2:, 0, 1], n[k][2:, 0, 1]
                sc = np.maximum(np.abs(N), np.sqrt(np.abs(n[k][2:, 0, 0] * n[k][2:, 1, 1])))
                d = np.abs(U - N)
                e_u, e_n = eu[k][2:, 0, 1], en[k][2:, 0, 1]
                row += [np.max(d / sc), np.max(e_u / sc)] + ([np.max(e_n / sc)] if k == "H1" else [])
                cov &= bool(np.all(d <= e_u + e_n))
            print(f"| {al:g} | {eps:.0e} | " + " | ".join(f"{v:.1e}" for v in row)
                  + f" | {'yes' if cov else 'NO'} | {','.join(wu) or '-'} / {','.join(wn) or '-'}"
                  + f" | {tu:.1f} / {tn:.1f} s |")


def three_inputs():
    x = np.random.default_rng(0).standard_normal((3, 8))
    print("| alpha | " + " | ".join(NAMES) + " | time user / named |")
    print("|---:|" + "---:|" * len(NAMES) + "---|")
    for al in (1.0, 0.5):
        u, _, _, tu = run(user_elu(al), x, NAMES)
        n, _, _, tn = run(pdlt.activation("elu", alpha=al), x, NAMES)
        d = [float(np.max(np.abs(u[k][-1] - n[k][-1])) / np.max(np.abs(n[k][-1]))) for k in NAMES]
        print(f"| {al:g} | " + " | ".join(f"{v:.0e}" for v in d) + f" | {tu:.1f} / {tn:.1f} s |")


if __name__ == "__main__":
    two_inputs()
    print()
    three_inputs()
