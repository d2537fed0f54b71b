"""elu: the innermost axis in closed form (pdlt.gaussian._exppw) against the
all-quadrature split path, before/after in one run (benchmarks/README.md, "elu: the
innermost axis in closed form").

    flock /tmp/pdlt-heavy.lock nice python benchmarks/elu_exp_inner.py \
        [--only new|old] [--json out.json]

Cases: a plain elu MLP (n0 = 8, width 32, depth 4, three random inputs), every N-input
statistic but R (``pdlt.statistics(..., get=[...])``); a residual elu MLP (gamma 0.5,
n0 = 2, depth 3, two inputs), G1 (``residual_vertex_metric_multi``) and H1
(``residual_ntk_mean_multi``). ``_exppw._EXP = False`` is the former path (the same
functions, integrated by split Gauss-Legendre on every axis). Prints CPU seconds and
each statistic's largest difference over its largest entry.
"""

import argparse
import json
import time

import numpy as np

import pdlt
from pdlt.gaussian import _exppw
from pdlt.theory.residual_multi import residual_vertex_metric_multi
from pdlt.theory.residual_multi_mean import residual_ntk_mean_multi

NAMES = ("V", "G1", "A", "B", "D", "F", "P", "Q", "S", "T", "U", "H1")


def plain():
    mlp = pdlt.MLP(n0=8, width=32, depth=4, activation="elu", C_W=1.5, C_b=0.1)
    x = np.random.default_rng(0).standard_normal((3, 8))
    st = pdlt.statistics(mlp, x, get=list(NAMES))
    return {n: np.asarray(st[n]) for n in NAMES}


def residual():
    mlp = pdlt.MLP(n0=2, width=16, depth=3, activation="elu", C_W=1.0, C_b=0.1, gamma=0.5)
    x = np.array([[1.0, 0.2], [0.3, 0.9]])
    g1 = residual_vertex_metric_multi(mlp, x)["G1"]
    h1 = residual_ntk_mean_multi(mlp, x)
    return {"G1": np.asarray(g1), "H1": np.asarray(h1)}


def run(flag):
    _exppw._EXP = flag
    out = {}
    for name, fn in (("plain", plain), ("residual", residual)):
        t = time.process_time()
        out[name] = (fn(), time.process_time() - t)
    _exppw._EXP = True
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("new", "old"))
    ap.add_argument("--json")
    a = ap.parse_args()
    res = {}
    for tag, flag in (("new", True), ("old", False)):
        if a.only in (None, tag):
            res[tag] = run(flag)
            print(tag, {k: f"{v[1]:.1f} s" for k, v in res[tag].items()}, flush=True)
    rows = []
    if len(res) == 2:
        for case in ("plain", "residual"):
            new, old = res["new"][case][0], res["old"][case][0]
            for n in new:
                sc = float(np.max(np.abs(old[n])))
                d = float(np.max(np.abs(new[n] - old[n])))
                rows.append(dict(case=case, stat=n, scale=sc, rel=d / sc if sc else d))
                print(f"{case:9s} {n:3s} max|new - old| / max|old| = {rows[-1]['rel']:.1e}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(cpu={t: {c: v[1] for c, v in r.items()} for t, r in res.items()},
                           rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
