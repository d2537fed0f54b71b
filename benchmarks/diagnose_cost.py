"""Cost of ``pdlt diagnose`` at depth, old tree against this one, and the reported numbers.

Usage::

    python benchmarks/diagnose_cost.py [--old OLD/src] [--activations relu tanh gelu swish]
                                       [--depths 100 1000 10000] [--old-depths 100 300]

Each run is ``pdlt diagnose --activation A --depth L --width 1000 --json`` in a
fresh subprocess with ``PYTHONPATH`` set to the tree's ``src`` and
``OMP_NUM_THREADS=1`` (one core), timed by its wall clock and by the child's
CPU time (``resource.getrusage(RUSAGE_CHILDREN)``, imports included). The
table gives both trees' times where both ran and the largest relative
difference of the reference problem's numbers (``finite_width_learning``:
``representation_learning``, ``prediction_correction`` and the rest)
between them. ``--old`` is the ``src`` folder of an older checkout, e.g.
``git archive 3dd83a2 src | tar -x -C /tmp/old`` then ``--old /tmp/old/src``;
each configuration runs the old tree and then the new one, side by side. The
last column is the largest relative difference over every number ``--json``
prints, with the key where it occurs ("bitwise" when all are equal).

``--parts`` adds, per configuration and tree, the CPU seconds of the stages
of ``diagnose_architecture`` in one fresh process: imports, the one-input
statistics at depth L (``statistics(K1=, get=V, G1)``), ``ntk_slopes`` (a
one-input fold at depth 2048, independent of L) and the two-input reference
problem (``finite_width_learning_size``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent.parent / "src"
_RUN = ("import sys; from pdlt.cli import main; sys.exit(main(['diagnose', '--activation', "
        "sys.argv[1], '--depth', sys.argv[2], '--width', sys.argv[3], '--json']))")


def run(src, act, depth, width, timeout):
    """(wall s, CPU s, the JSON dict) of one ``pdlt diagnose`` in a fresh process, or None."""
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", _RUN, act, str(depth), str(width)], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if p.returncode != 0:
        raise RuntimeError(f"{src} {act} depth {depth} failed:\n{p.stderr[-2000:]}")
    return wall, cpu, json.loads(p.stdout)


_PARTS = r"""
import sys, time, warnings
t0 = time.process_time()
from pdlt.network import MLP
from pdlt.theory.criticality import criticality
from pdlt.theory.statistics import statistics
from pdlt.theory.ntk_criticality import ntk_slopes
from pdlt.learning.finite_training import finite_width_learning_size
act, L, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = criticality(act)
mlp = MLP(n0=1, width=n, depth=L, activation=act, C_b=c.C_b, C_W=c.C_W)
out = {"imports": time.process_time() - t0}
for name, f in (("one-input V, G1", lambda: statistics(mlp, K1=1.0, get=("V", "G1"))),
                ("ntk_slopes", lambda: ntk_slopes(act)),
                ("reference problem", lambda: finite_width_learning_size(mlp, 1.0))):
    t = time.process_time()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f()
    except Exception:
        pass                     # gelu at depth 1e4: "Singular matrix" (a diagnose note)
    out[name] = time.process_time() - t
print(" ".join(f"{k}={v:.2f}" for k, v in out.items()))
"""


def parts(src, act, depth, width, timeout):
    """CPU seconds of diagnose's stages in one fresh process (a line of name=value)."""
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", _PARTS, act, str(depth), str(width)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    return p.stdout.strip() if p.returncode == 0 else f"failed: {p.stderr[-300:]}"


def largest_difference(a, b):
    """Largest |a - b| / max(|a|, |b|) over the reference problem's numbers."""
    la, lb = a.get("finite_width_learning") or {}, b.get("finite_width_learning") or {}
    worst = 0.0
    for k in la:
        x, y = la[k], lb.get(k)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            s = max(abs(x), abs(y))
            if s > 0:
                worst = max(worst, abs(x - y) / s)
    return worst


def _numbers(d, path=""):
    """Every number of a ``--json`` dict, by its path (``finite_width_learning/Theta``)."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _numbers(v, f"{path}/{k}" if path else str(k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        yield path, float(d)


def largest_difference_all(a, b):
    """``(largest |a - b| / max(|a|, |b|), its path)`` over every number of both ``--json``
    outputs (a number present in one only counts as 1)."""
    na, nb = dict(_numbers(a)), dict(_numbers(b))
    worst, where = 0.0, ""
    for k in sorted(set(na) | set(nb)):
        x, y = na.get(k), nb.get(k)
        if x is None or y is None:
            r = 1.0
        else:
            s = max(abs(x), abs(y))
            r = abs(x - y) / s if s > 0 else 0.0
        if r > worst:
            worst, where = r, k
    return worst, where


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, default=None, help="src folder of the older tree")
    ap.add_argument("--activations", nargs="+", default=["relu", "tanh", "gelu", "swish"])
    ap.add_argument("--depths", nargs="+", type=int, default=[100, 1000, 10000])
    ap.add_argument("--old-depths", nargs="+", type=int, default=[100, 300],
                    help="depths at which the old tree runs too (it is slow)")
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    ap.add_argument("--parts", action="store_true",
                    help="also the CPU seconds of diagnose's stages (after the table)")
    args = ap.parse_args(argv)
    print("| activation | depth | old wall | old CPU | new wall | new CPU | "
          "learning numbers, old vs new | every --json number, old vs new |")
    print("|---|--:|--:|--:|--:|--:|--:|--|")
    stages = []
    for act in args.activations:
        for depth in sorted(set(args.depths) | (set(args.old_depths) if args.old else set())):
            old = (run(args.old, act, depth, args.width, args.timeout)
                   if args.old is not None and depth in args.old_depths else None)
            new = run(_HERE, act, depth, args.width, args.timeout)
            cells = [act, str(depth)]
            cells += ([f"{old[0]:.1f} s", f"{old[1]:.1f} s"] if old else ["", ""])
            cells += ([f"{new[0]:.1f} s", f"{new[1]:.1f} s"] if new else ["timeout", ""])
            cells.append(f"{largest_difference(old[2], new[2]):.1e}" if old and new else "")
            if old and new:
                r, where = largest_difference_all(old[2], new[2])
                cells.append(f"{r:.1e} ({where})" if r else "0 (bitwise)")
            else:
                cells.append("")
            print("| " + " | ".join(cells) + " |", flush=True)
            if args.parts:
                for tree, src in (("old", args.old), ("new", _HERE)):
                    if src is not None and (tree == "new" or depth in args.old_depths):
                        stages.append(f"{act} {depth} {tree}: "
                                      f"{parts(src, act, depth, args.width, args.timeout)}")
            if new:
                fl = new[2].get("finite_width_learning") or {}
                print(f"<!-- {act} {depth}: representation_learning "
                      f"{fl.get('representation_learning')}, prediction_correction "
                      f"{fl.get('prediction_correction')} -->", flush=True)
    if stages:
        print("\nCPU seconds by stage (one process per line):")
        for line in stages:
            print("    " + line)


if __name__ == "__main__":
    main()
