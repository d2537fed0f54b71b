"""How far the reference problem's test input has merged with the training input at depth.

Usage::

    python benchmarks/collinear_reference.py [--activation swish] [--depth 10000] [--start 250]

The two inputs of ``finite_width_learning_size``'s reference problem (critical
initialization) converge: ``1 - rho`` shrinks like ``prod chi_perp / chi_parallel``
and falls below float64's resolution of ``K_01 / K_00`` after ~10^3 layers
(swish). The float64 two-input fold then carries round-off in ``1 - rho`` and
in ``Theta_00 - Theta_01``, which sets the test input's kernel prediction
``Theta_01 / Theta_00 y`` (``test_mean_infinite``). This script computes the
differences ``D = K_00 - K_01`` and ``E = Theta_00 - Theta_01`` themselves, as
small quantities, from a layer ``--start`` where they are well resolved:

    D' = C_W (PP D - QQ D^2 / 2),
    E' = lambda_W (PP D - QQ D^2 / 2) + C_W (QQ D Theta + (PP - QQ D) E),

with ``PP = <sigma'^2>_K``, ``QQ = <sigma''^2>_K`` at the one-input flow's K of
each layer (Price's theorem, ``d<f_a g_b>/dK_ab = <f'_a g'_b>``, to second order
in D; the neglected terms are O(D^2) relative, < 1e-10 from the start on). It
prints ``1 - rho`` and ``E / Theta`` at the output: the linearized flow, the
two-input fold of this tree, and (``--old SRC``) of another tree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

_FOLD = r"""
import json, math, sys
import numpy as np
from pdlt.network import MLP
from pdlt.theory.criticality import criticality
from pdlt.learning.finite_training import _reference_kernel
act, L, n = sys.argv[1], int(sys.argv[2]), 100
c = criticality(act)
ref = MLP(n0=2, widths=[n] * (L - 1), n_out=1, activation=act, C_b=c.C_b, C_W=c.C_W)
scale = math.sqrt(2 * (1.0 - c.C_b) / c.C_W)
Ks, Ths = _reference_kernel(ref, np.array([[scale, 0.0], [0.0, scale]]), 1.0)
np.savez(sys.argv[3], K=Ks, T=Ths)
"""


def fold(src, act, depth, out):
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", _FOLD, act, str(depth), out], env=env, check=True)
    d = np.load(out)
    return d["K"], d["T"]


def linearized(act_name, K, T, start):
    """``1 - rho`` and ``E / Theta`` at the output from the differences at layer ``start``."""
    import pdlt
    from pdlt.theory._averages import OneVariableTable
    c = pdlt.criticality(act_name)
    act = pdlt.activation(act_name)
    k, th = K[:, 0, 0], T[:, 0, 0]
    tab = OneVariableTable(act, k)
    pp, qq = np.asarray(tab["pp"]), np.asarray(tab["qq"])
    D = float(K[start, 0, 0] - K[start, 0, 1])
    E = float(T[start, 0, 0] - T[start, 0, 1])
    lam_W = 1.0         # pdlt's default lambda_W (the MLP above uses it)
    for l in range(start, len(k) - 1):
        dS = pp[l] * D - 0.5 * qq[l] * D * D
        D, E = (c.C_W * dS,
                lam_W * dS + c.C_W * (qq[l] * D * th[l] + (pp[l] - qq[l] * D) * E))
    return D / k[-1], E / th[-1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--activation", default="swish")
    ap.add_argument("--depth", type=int, default=10000)
    ap.add_argument("--start", type=int, default=250)
    ap.add_argument("--old", default=None, help="src folder of another tree")
    args = ap.parse_args(argv)
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    sys.path.insert(0, here)
    rows = {}
    for name, src in (("this tree", here), ("old tree", args.old)):
        if src is None:
            continue
        K, T = fold(src, args.activation, args.depth, f"/tmp/collinear_ref_{os.getpid()}.npz")
        rows[name] = (K, T)
    K, T = rows["this tree"]
    lin = linearized(args.activation, K, T, args.start)
    print(f"{args.activation}, depth {args.depth}, differences from layer {args.start}:")
    print(f"  linearized difference flow: 1 - rho = {lin[0]:.3e}, E/Theta = {lin[1]:.4e}")
    for name, (K, T) in rows.items():
        print(f"  {name} two-input fold:     1 - rho = {1 - K[-1, 0, 1] / K[-1, 0, 0]:.3e}, "
              f"E/Theta = {1 - T[-1, 0, 1] / T[-1, 0, 0]:.4e}")


if __name__ == "__main__":
    main()
