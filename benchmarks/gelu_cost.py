"""GELU's N-input cost and accuracy per layer against an independent reference (issue #15).

``python benchmarks/gelu_cost.py --old OLD/src [--ref-accuracy high] [--inputs 16] [--depth 10]
[--ntk] [--json out.json]``

In fresh subprocesses, one after the other: ``pdlt.statistics(mlp, x, get=["V", "G1"])``
for GELU (N inputs in 8 dims, seed 1, width 32, critical, the setting of
``theory_cost.py``) on this tree at the default accuracy, on the ``--old`` tree
at the default, and on the ``--old`` tree at ``--ref-accuracy`` (the
reference: a different grid, other closed-form axes, one rule up). Prints CPU
seconds and, per layer, the largest difference of V and G1 from the reference
relative to that statistic's largest entry at that layer, next to both trees'
``integration_error`` (relative to V's largest entry), and the same difference
over V's entries of four distinct inputs alone (the averages the pair closed
form of h46 changed; the others come from merged powers). With ``--ntk``: the ten
NTK tensors (8 inputs in 2 dims, depth 3, ``theory_cost.py``'s case) for gelu
and tanh, both trees, in the same run (CPU-second ratios are the meaningful
numbers on a shared machine), and GELU's ten tensors per layer against the
``--old`` tree at ``--ref-accuracy`` (largest difference relative to each
tensor's largest entry at that layer, over all entries and over those of four
distinct inputs), and tanh's tensors new against old (unchanged code path).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
sys.path.insert(0, HERE)
_NAMES = ("A", "B", "D", "F", "P", "Q", "R", "S", "T", "U")

_NTK_CHILD = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import pdlt
    act, N, depth, acc, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], \\
        sys.argv[6]
    crit = pdlt.criticality(act)
    mlp = pdlt.MLP(n0=2, width=32, depth=depth, activation=act, C_b=crit.C_b, C_W=crit.C_W)
    x = np.random.default_rng(0).standard_normal((N, 2))
    names = ("A", "B", "D", "F", "P", "Q", "R", "S", "T", "U")
    t0, c0 = time.perf_counter(), time.process_time()
    s = pdlt.statistics(mlp, x, get=names, accuracy=acc)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.savez(out, **{k: np.asarray(getattr(s, k)) for k in names})
    print(json.dumps(dict(wall=wall, cpu=cpu)))
""")

_CHILD = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import pdlt
    N, depth, acc, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    crit = pdlt.criticality("gelu")
    mlp = pdlt.MLP(n0=8, width=32, depth=depth, activation="gelu", C_b=crit.C_b, C_W=crit.C_W)
    x = np.random.default_rng(1).standard_normal((N, 8))
    t0, c0 = time.perf_counter(), time.process_time()
    s = pdlt.statistics(mlp, x, get=("V", "G1"), accuracy=acc)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.savez(out, V=s.V, G1=s.G1, err=np.asarray(s.integration_error))
    print(json.dumps(dict(wall=wall, cpu=cpu, file=pdlt.__file__)))
""")


def _run(code, args):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                       text=True, env=env)
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, help="src folder of the tree to compare against")
    ap.add_argument("--ref-accuracy", default="high")
    ap.add_argument("--inputs", type=int, default=16)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--ntk", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    runs = {"new": (SRC, "default"), "old": (a.old, "default"),
            "ref": (a.old, a.ref_accuracy)}
    rep, data = {}, {}
    for name, (src, acc) in runs.items():
        out = f"/tmp/pdlt_gelu_cost_{name}_{os.getpid()}.npz"
        rep[name] = _run(_CHILD, [src, a.inputs, a.depth, acc, out])
        data[name] = dict(np.load(out))
        os.remove(out)
        print(f"{name:4s} ({acc}): {rep[name]['cpu']:.1f} CPU s, {rep[name]['wall']:.1f} s wall",
              flush=True)
    N = a.inputs
    four = np.zeros((N,) * 4, dtype=bool)          # entries of four distinct inputs
    idx = np.indices((N,) * 4).reshape(4, -1)
    four.reshape(-1)[np.array([len(set(c)) == 4 for c in idx.T])] = True
    rows = []
    for layer in range(a.depth):
        row = {"layer": layer + 1}
        for tree in ("new", "old"):
            for k in ("V", "G1"):
                ref = data["ref"][k][layer]
                scale = max(float(np.max(np.abs(ref))), 1e-300)
                row[f"{k}_{tree}"] = float(np.max(np.abs(data[tree][k][layer] - ref))) / scale
                if N >= 4 and k == "V":
                    row[f"{k}4_{tree}"] = float(np.max(np.abs(data[tree][k][layer] - ref)[four])) \
                        / scale
        vscale = max(float(np.max(np.abs(data["ref"]["V"][layer]))), 1e-300)
        for tree in ("new", "old"):      # integration_error relative to V's largest entry
            row[f"est_{tree}"] = float(data[tree]["err"][layer]) / vscale
        rows.append(row)
        print(" ".join(f"{k}={v:.1e}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.items()), flush=True)
    rep["layers"] = rows
    if a.ntk:
        rep["ntk"], ntk = [], {}
        runs = [("gelu", "new", SRC, "default"), ("gelu", "old", a.old, "default"),
                ("tanh", "new", SRC, "default"), ("tanh", "old", a.old, "default"),
                ("gelu", "ref", a.old, a.ref_accuracy)]
        for act, name, src, acc in runs:
            out = f"/tmp/pdlt_gelu_cost_ntk_{act}_{name}_{os.getpid()}.npz"
            r = _run(_NTK_CHILD, [src, act, 8, 3, acc, out])
            ntk[(act, name)] = dict(np.load(out))
            os.remove(out)
            rep["ntk"].append(dict(tree=name, activation=act, accuracy=acc, **r))
            print(f"ntk {act} {name} ({acc}): {r['cpu']:.1f} CPU s, {r['wall']:.1f} s wall",
                  flush=True)
        rep["ntk_accuracy"] = []
        n = ntk[("gelu", "ref")]["A"].shape[1]
        four = np.array([len(set(c)) == 4 for c in np.indices((n,) * 4).reshape(4, -1).T])
        four = four.reshape((n,) * 4)
        for name in ("new", "old"):
            for k in _NAMES:
                ref, got = ntk[("gelu", "ref")][k], ntk[("gelu", name)][k]
                sc = [max(float(np.max(np.abs(ref[l]))), 1e-300) for l in range(ref.shape[0])]
                errs = [float(np.max(np.abs(got[l] - ref[l]))) / sc[l] for l in range(len(sc))]
                errs4 = [float(np.max(np.abs(got[l] - ref[l])[four])) / sc[l]
                         for l in range(len(sc))]
                rep["ntk_accuracy"].append(dict(tree=name, tensor=k, per_layer=errs,
                                                four_distinct=errs4))
                print(f"ntk gelu {name} {k}: all " + " ".join(f"{e:.1e}" for e in errs)
                      + " | four distinct inputs " + " ".join(f"{e:.1e}" for e in errs4),
                      flush=True)
        same = max(float(np.max(np.abs(ntk[("tanh", "new")][k] - ntk[("tanh", "old")][k])))
                   for k in _NAMES)
        rep["ntk_tanh_new_minus_old"] = same
        print(f"ntk tanh: largest |new - old| over the ten tensors {same:.1e}", flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rep, fh, indent=1)


if __name__ == "__main__":
    main()
