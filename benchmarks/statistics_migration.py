"""One recursion per statistic (#20): the new fold against the old entry points, side by side.

Run once while the old code exists (a checkout of the commit before the
redesign)::

    python benchmarks/statistics_migration.py --old /path/to/old/checkout/src

For relu, tanh, gelu, erf; one input (``K1``) and three inputs; unequal
widths; residual MLPs where the old code supported them, it computes every
statistic with the old entry points (``flow``, ``finite_width_flow``,
``ntk_fluctuation_flow``, ``ntk_mean_correction``) in a subprocess running
the old source, and with :func:`pdlt.statistics` here, and prints the
largest difference relative to the largest value of each statistic over
layers and inputs. Then it times one input, all statistics at depth 50,
and the 10,000-layer kernel flow, old and new interleaved (best of 7).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

CASES = [
    # name, MLP kwargs, inputs: "K1" or an (N, n0) seed
    ("relu K1", dict(n0=3, width=16, depth=5, activation="relu", C_W=2.0, lambda_b=0.3), "K1"),
    ("tanh K1", dict(n0=3, width=16, depth=6, activation="tanh", C_W=1.0, C_b=0.1), "K1"),
    ("gelu K1", dict(n0=3, width=16, depth=5, activation="gelu", C_W=1.8, C_b=0.05), "K1"),
    ("erf K1", dict(n0=3, width=16, depth=5, activation="erf", C_W=1.0), "K1"),
    ("tanh K1 unequal", dict(n0=3, widths=(3, 8, 16, 12, 20), activation="tanh", C_W=1.2,
                             C_b=0.1), "K1"),
    ("relu x3", dict(n0=3, width=16, depth=4, activation="relu", C_W=2.0, lambda_b=0.3), 3),
    ("tanh x3", dict(n0=3, width=16, depth=4, activation="tanh", C_W=1.0, C_b=0.1), 3),
    ("gelu x3", dict(n0=3, width=16, depth=4, activation="gelu", C_W=1.8, C_b=0.05), 3),
    ("erf x3 unequal", dict(n0=3, widths=(3, 8, 16, 12, 20), activation="erf", C_W=1.2,
                            C_b=0.1), 3),
    ("tanh x3 repeated input", dict(n0=3, width=16, depth=4, activation="tanh", C_W=1.0,
                                    C_b=0.1), "rep"),
    ("residual tanh K1", dict(n0=3, width=16, depth=5, activation="tanh", C_W=1.0,
                              gamma=0.5, xi=0.8), "K1"),
    ("residual relu K1", dict(n0=3, width=16, depth=5, activation="relu", C_W=2.0,
                              gamma=0.5), "K1"),
    ("residual tanh x3", dict(n0=3, width=16, depth=4, activation="tanh", C_W=1.0,
                              gamma=0.5), 3),
]
K1 = 1.1


def inputs(spec, n0):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, n0))
    if spec == "rep":
        x[2] = x[0]
    return x


OLD = r'''
import json, sys, warnings
import numpy as np
sys.path.insert(0, sys.argv[1])
import pdlt
from pdlt.theory.finite_ntk import ntk_fluctuation_flow
from pdlt.theory.vertex import finite_width_flow
cases = json.load(open(sys.argv[2]))
out = {}
for name, kw, spec, x in cases:
    mlp = pdlt.MLP(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()})
    args = dict(K1=%r) if spec == "K1" else dict(x=np.array(x))
    res = {}
    f = pdlt.flow(mlp, **args)
    for k in ("K", "Theta", "chi_parallel", "chi_perp"):
        res[k] = np.asarray(f[k]).tolist()
    ff = finite_width_flow(mlp, **args)
    for k in ("V", "G1"):
        res[k] = np.asarray(ff[k]).tolist()
    if mlp.is_residual:
        if spec == "K1":
            nf = ntk_fluctuation_flow(mlp, stats=("A", "B", "D", "F"), **args)
            for k in "ABDF":
                res[k] = np.asarray(nf[k]).tolist()
    else:
        nf = ntk_fluctuation_flow(mlp, **args)
        for k in ("A", "B", "D", "F", "P", "Q", "R", "S", "T", "U", "H1"):
            res[k] = np.asarray(nf[k]).tolist()
    out[name] = res
json.dump(out, open(sys.argv[3], "w"))
''' % K1


def new_values(cases):
    import pdlt
    out = {}
    for name, kw, spec, x in cases:
        mlp = pdlt.MLP(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()})
        args = dict(K1=K1) if spec == "K1" else dict(x=np.array(x))
        get = ["K", "Theta", "chi_parallel", "chi_perp", "V", "G1"]
        if mlp.is_residual:
            get += list("ABDF") if spec == "K1" else []
        else:
            get += list("ABDFPQRSTU") + ["H1"]
        s = pdlt.statistics(mlp, get=get, **args)
        out[name] = {k: np.asarray(s[k]).tolist() for k in get}
    return out


def compare(old, new):
    """Largest |new - old| over layers and inputs, relative to the statistic's largest value.

    A statistic that is zero in exact arithmetic (one ReLU input: G1 = H1 = 0)
    and below 1e-13 in both codes is reported as "0 (round-off)".
    """
    worst = 0.0
    for name in old:
        line = []
        for k, v in old[name].items():
            a, b = np.asarray(v, float), np.asarray(new[name][k], float)
            scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))), 1e-300)
            if scale < 1e-13:
                line.append(f"{k} 0 (round-off)")
                continue
            d = float(np.max(np.abs(a - b))) / scale
            worst = max(worst, d)
            line.append(f"{k} {d:.1e}")
        print(f"{name:26s} " + ", ".join(line))
    print(f"largest difference relative to each statistic's scale: {worst:.2e}")
    return worst


TIMING = r'''
import sys, time
sys.path.insert(0, sys.argv[1])
import pdlt
which = sys.argv[2]
m50 = pdlt.MLP(n0=1, width=64, depth=50, activation="tanh", C_W=1.0)
m10k = pdlt.MLP(n0=1, width=10, depth=10000, activation="tanh", C_W=1.0)
if which == "old":
    from pdlt.theory.finite_ntk import ntk_fluctuation_flow
    allstats = lambda: ntk_fluctuation_flow(m50, K1=1.0)
else:
    allstats = lambda: pdlt.statistics(m50, K1=1.0, get=list("VABDFPQRSTU") + ["G1", "H1"])
kflow = lambda: pdlt.flow(m10k, K1=1.0)
for f, name in ((allstats, "all13"), (kflow, "flow10k")):
    f()
    t = time.perf_counter(); f(); print(name, time.perf_counter() - t)
'''


def timing(old_src, new_src, reps=7):
    best = {}
    for _ in range(reps):
        for which, src in (("old", old_src), ("new", new_src)):
            r = subprocess.run([sys.executable, "-c", TIMING, src, which], capture_output=True,
                               text=True, check=True, env={**os.environ, "PYTHONPATH": ""})
            for line in r.stdout.split("\n"):
                if line:
                    k, v = line.split()
                    best[(which, k)] = min(best.get((which, k), 1e9), float(v))
    for k in ("all13", "flow10k"):
        o, n = best[("old", k)], best[("new", k)]
        print(f"{k:8s} old {o:.3f} s  new {n:.3f} s  new/old {n / o:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, help="src/ directory of the old checkout")
    ap.add_argument("--no-timing", action="store_true")
    a = ap.parse_args()
    new_src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    cases = [(n, kw, spec if spec in ("K1",) else "x",
              None if spec == "K1" else inputs(spec, kw["n0"]).tolist())
             for n, kw, spec in CASES]
    with tempfile.TemporaryDirectory() as d:
        cj, oj = os.path.join(d, "cases.json"), os.path.join(d, "old.json")
        json.dump(cases, open(cj, "w"))
        subprocess.run([sys.executable, "-c", OLD, a.old, cj, oj], check=True,
                       env={**os.environ, "PYTHONPATH": ""})
        old = json.load(open(oj))
    sys.path.insert(0, new_src)
    compare(old, new_values(cases))
    if not a.no_timing:
        timing(a.old, new_src)


if __name__ == "__main__":
    main()
