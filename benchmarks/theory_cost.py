"""Cost of the theory engine's N-input statistics and of ``pdlt diagnose`` (issue #15).

``python benchmarks/theory_cost.py [--old OLD/src] [--activations tanh gelu relu]
[--inputs 16] [--depth 10] [--repeats 1] [--diagnose-depths 30 100]
[--ntk-activations relu gelu tanh] [--json out.json]``

1. ``pdlt.statistics(mlp, x, get=["V", "G1"])`` at the default accuracy for
   N random inputs in 8 dimensions (``standard_normal``, seed 1), depth 10,
   width 32, each activation at its critical ``(C_b, C_W)``: wall and CPU
   seconds (``time.process_time`` of the process: less sensitive to other
   jobs on a shared machine than the wall time) and the integration error
   estimate of V at the last layer. With ``--old``, the same case runs on a
   second source tree (e.g. ``git archive <commit> src | tar -x -C /tmp/old``)
   in alternating fresh subprocesses, and the largest difference of V and G1
   between the trees is printed relative to each statistic's largest entry.
2. ``pdlt diagnose`` (``diagnose_architecture``, width 1000, critical
   initialization) at the depths given: wall and CPU seconds, and the CPU
   seconds per layer of its finite-width learning size (the two-input
   order-1/n recursion through every layer, which dominates at depth).

3. With ``--ntk-activations relu gelu tanh``: all ten NTK tensors (A, B, D,
   F, P, Q, R, S, T, U) for 8 inputs in 2 dimensions
   (``standard_normal((8, 2))``, seed 0: N > n0, so the first layer's
   covariances are rank-deficient), depth 3, width 32, critical: wall and
   CPU seconds per tree (issue #15, item 8: the activations within 3x of
   each other).

Long runs: the old tree takes minutes for N = 16; run one benchmark at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

_STATS_CHILD = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import pdlt
    act, N, depth, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    crit = pdlt.criticality(act)
    mlp = pdlt.MLP(n0=8, width=32, depth=depth, activation=act, C_b=crit.C_b, C_W=crit.C_W)
    x = np.random.default_rng(1).standard_normal((N, 8))
    t0, c0 = time.perf_counter(), time.process_time()
    s = pdlt.statistics(mlp, x, get=("V", "G1"))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    np.savez(out, V=s.V, G1=s.G1)
    print(json.dumps(dict(wall=wall, cpu=cpu, err=float(s.integration_error[-1]),
                          scale=float(np.max(np.abs(s.V[-1]))), file=pdlt.__file__)))
""")

_NTK_CHILD = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import pdlt
    act, N, depth = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    crit = pdlt.criticality(act)
    mlp = pdlt.MLP(n0=2, width=32, depth=depth, activation=act, C_b=crit.C_b, C_W=crit.C_W)
    x = np.random.default_rng(0).standard_normal((N, 2))
    names = ("A", "B", "D", "F", "P", "Q", "R", "S", "T", "U")
    t0, c0 = time.perf_counter(), time.process_time()
    s = pdlt.statistics(mlp, x, get=names)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps(dict(wall=wall, cpu=cpu)))
""")

_DIAGNOSE_CHILD = textwrap.dedent("""
    import json, sys, time, warnings
    sys.path.insert(0, sys.argv[1])
    import pdlt
    from pdlt.theory.diagnosis import diagnose_architecture
    from pdlt.learning import finite_training
    act, depth = sys.argv[2], int(sys.argv[3])
    warnings.simplefilter("ignore")
    spent = {}
    orig = finite_training.finite_width_learning_size
    def timed(*a, **k):
        c0 = time.process_time()
        try:
            return orig(*a, **k)
        finally:
            spent["learning"] = time.process_time() - c0
    finite_training.finite_width_learning_size = timed
    t0, c0 = time.perf_counter(), time.process_time()
    out = diagnose_architecture(pdlt.activation(act), depth, 1000)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    fl = out["finite_width_learning"] or {}
    print(json.dumps(dict(wall=wall, cpu=cpu, learning_cpu=spent.get("learning", 0.0),
                          rep=fl.get("representation_learning"))))
""")


def _run(code, args, timeout):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, env=env)
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def statistics_cost(trees, act, N, depth, repeats, timeout):
    """Best-of-``repeats`` cost per tree (alternating), and the trees' largest differences."""
    import numpy as np

    best = {name: None for name in trees}
    files = {}
    for r in range(repeats):
        for name, src in trees.items():
            out = f"/tmp/pdlt_theory_cost_{name}_{os.getpid()}.npz"
            res = _run(_STATS_CHILD, [src, act, N, depth, out], timeout)
            files[name] = out
            if best[name] is None or res["cpu"] < best[name]["cpu"]:
                best[name] = res
    diff = None
    if len(trees) == 2:
        a, b = (np.load(files[n]) for n in trees)
        diff = {k: float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(a[k])), 1e-300))
                for k in ("V", "G1")}
    for f in files.values():
        os.remove(f)
    return best, diff


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", help="src folder of a second tree to compare against")
    ap.add_argument("--activations", nargs="*", default=["tanh"])
    ap.add_argument("--inputs", type=int, default=16)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--diagnose-depths", type=int, nargs="*", default=[30, 100])
    ap.add_argument("--diagnose-activations", nargs="+", default=["relu", "tanh"])
    ap.add_argument("--ntk-activations", nargs="*", default=[],
                    help="all ten NTK tensors A..U for 8 inputs in 2 dimensions (N > n0: "
                         "rank-deficient covariances), depth 3, width 32, critical")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    trees = {"new": SRC}
    if a.old:
        trees = {"old": os.path.abspath(a.old), "new": SRC}
    report = {"statistics": [], "diagnose": []}
    for act in a.activations:
        best, diff = statistics_cost(trees, act, a.inputs, a.depth, a.repeats, a.timeout)
        for name, res in best.items():
            print(f"{name}: N = {a.inputs}, depth {a.depth}, {act}, V and G1 (default): "
                  f"wall {res['wall']:.1f} s, cpu {res['cpu']:.1f} s, integration_error of V "
                  f"at layer {a.depth} {res['err']:.1e} (V's scale {res['scale']:.3g})",
                  flush=True)
        if diff:
            print(f"  old vs new: V {diff['V']:.1e}, G1 {diff['G1']:.1e} of the largest entry",
                  flush=True)
        report["statistics"].append(dict(activation=act, trees=best, diff=diff))
    report["ntk"] = []
    for act in a.ntk_activations:
        for name, src in trees.items():
            res = _run(_NTK_CHILD, [src, act, 8, 3], a.timeout)
            print(f"{name}: A..U, 8 inputs in 2 dimensions, depth 3, {act}: wall "
                  f"{res['wall']:.1f} s, cpu {res['cpu']:.1f} s", flush=True)
            report["ntk"].append(dict(tree=name, activation=act, **res))
    for act in a.diagnose_activations:
        for depth in a.diagnose_depths:
            for name, src in trees.items():
                res = _run(_DIAGNOSE_CHILD, [src, act, depth], a.timeout)
                print(f"{name}: pdlt diagnose {act} --depth {depth} --width 1000: wall "
                      f"{res['wall']:.1f} s, cpu {res['cpu']:.1f} s, of which the learning size "
                      f"{res['learning_cpu']:.1f} s ({1e3 * res['learning_cpu'] / depth:.0f} ms "
                      f"per layer)", flush=True)
                report["diagnose"].append(dict(tree=name, activation=act, depth=depth, **res))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
