"""The rule of the residual modules' Gaussian averages (issue #15).

``python benchmarks/residual_rules.py [--N 2,4]``

Residual N-input statistics integrate one neuron's trajectory: averages of up to
four variables (two inputs at two depths) of merged powers such as
``sigma^2 sigma'^2``. Since this pass every such average of a smooth activation
runs one rule above the requested accuracy (``residual_multi._rule``); before,
four-variable averages ran at the requested rule itself. For tanh (depth 4,
width 32, C_b 0.1, C_W 1, gamma 0.6, xi 0.8, first-layer variance ~1.1, N random
inputs in 8 dimensions, seed 0) this prints, per statistic, the distance of the
default fold to the same fold with every average two rules further up (as a
fraction of the largest entry at the last layer), for the old rule (emulated:
four-variable averages one level down from what the modules now ask) and the
new one, with the wall time of each fold.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import pdlt
import pdlt.gaussian._multi as gm
from pdlt.theory import (residual_multi, residual_multi_ddi, residual_multi_ddii,
                         residual_multi_dntk, residual_multi_mean)

MODULES = (residual_multi, residual_multi_mean, residual_multi_dntk, residual_multi_ddi,
           residual_multi_ddii)
LEVELS = ("fast", "default", "high", "higher", "highest")
ALL = ("V", "G1", "A", "B", "D", "F", "H1", "P", "Q", "S", "U")


def shifted(shift4, shift):
    """``expect_nd`` with four-variable rules moved by ``shift4`` levels, others ``shift``."""
    def nd(fs, K, **kw):
        acc = kw.get("accuracy", "default")
        k = LEVELS.index(acc) + (shift4 if len(fs) == 4 else shift)
        kw["accuracy"] = LEVELS[max(0, min(k, len(LEVELS) - 1))]
        return gm.expect_nd(fs, K, **kw)
    return nd


def run(N, stats):
    x = np.random.default_rng(0).standard_normal((N, 8))
    mlp = pdlt.MLP(n0=8, width=32, depth=4, activation="tanh", C_b=0.1, C_W=1.0, gamma=0.6,
                   xi=0.8)
    out, ts = {}, {}
    for name, (s4, s) in {"old": (-1, 0), "new": (0, 0), "reference": (2, 2)}.items():
        for mod in MODULES:
            # S, U (residual_multi_ddii) already ran every average one rule up
            old_ddii = name == "old" and mod is residual_multi_ddii
            mod.expect_nd = shifted(0 if old_ddii else s4, s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            out[name] = pdlt.statistics(mlp, x, get=stats)
            ts[name] = time.perf_counter() - t0
    for mod in MODULES:
        mod.expect_nd = gm.expect_nd
    for name in ("old", "new"):
        r = out["reference"]
        row = " | ".join(f"{np.max(np.abs(out[name][k][-1] - r[k][-1])) / np.max(np.abs(r[k][-1])):.0e}"
                         if k in stats else "-" for k in ALL)
        print(f"| {N} | {name} | {row} | {ts[name]:.1f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--N", default="2,4")
    a = ap.parse_args()
    print("| N | rule | " + " | ".join(ALL) + " | s |")
    print("|---:|---|" + "---:|" * (len(ALL) + 1))
    for N in (int(n) for n in a.N.split(",")):
        run(N, ALL if N <= 2 else ("V", "G1", "A", "H1"))


if __name__ == "__main__":
    main()
