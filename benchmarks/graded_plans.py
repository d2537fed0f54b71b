"""Four-variable averages at large variance: plans shared by function tuples (#15, session 17).

``python benchmarks/graded_plans.py [--part tuples,fold]``

The folds of ``pdlt.statistics`` ask ~35 function tuples of each four-variable covariance
(residual MLPs, four random inputs: 1312 tuples of 38 covariances). The graded rule's
points, rules and table panels depend on the covariance only
(:class:`pdlt.gaussian._graded.GradedPlans`); side by side in one run:

* ``tuples``: 36 tuples of tanh, tanh', tanh^2, tanh'' in random orders of the variables on
  one covariance (random directions in 4 dimensions, and four in 3 dimensions: rank 3), by
  :func:`expect_graded` with its estimate, without plans and with one ``GradedPlans``:
  CPU seconds a tuple, plans built, the largest difference (0: one code path);
* ``fold``: a residual tanh MLP (depth 3, width 16, gamma 0.5), four random inputs x 100 in
  3 dimensions, ``statistics(get=["V", "G1", "H1", "F"], error=True)`` with every
  four-direction average graded, plans kept and not kept (``max_bytes = 0``): wall seconds,
  the largest difference over each statistic's scale.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import pdlt
from pdlt.gaussian import _graded
from pdlt.theory import residual_multi


def _tanh_family():
    t = np.tanh
    return [t, lambda z: 1.0 - t(z) ** 2, lambda z: t(z) ** 2,
            lambda z: -2.0 * t(z) * (1.0 - t(z) ** 2)]


def part_tuples():
    funcs = _tanh_family()
    print("| covariance | K | s a tuple, no plans | s a tuple, plans | plans built "
          "| largest difference |")
    print("|---|---:|---:|---:|---:|---:|")
    for rank, K in ((4, 1e2), (4, 1e4), (3, 30.0), (3, 1e4)):
        x = np.random.default_rng(rank).standard_normal((4, rank))
        G = x @ x.T
        C = K * G / np.max(np.diag(G))
        rng = np.random.default_rng(0)
        todo = []
        for _ in range(36):
            p = rng.permutation(4)
            todo.append(([funcs[i] for i in rng.integers(0, 4, 4)], C[np.ix_(p, p)]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.process_time()
            ref = [expect(fs, S, None) for fs, S in todo]
            t1 = time.process_time()
            plans = _graded.GradedPlans()
            got = [expect(fs, S, plans) for fs, S in todo]
            t2 = time.process_time()
        diff = max(abs(a[0] - b[0]) + abs(a[1] - b[1]) for a, b in zip(ref, got))
        print(f"| random, rank {rank} | {K:g} | {(t1 - t0) / 36:.3f} | {(t2 - t1) / 36:.3f} "
              f"| {plans.built} | {diff:.1e} |")


def expect(fs, S, plans):
    return _graded.expect_graded(fs, S, return_error=True, plans=plans)


def part_fold():
    x = 100.0 * np.random.default_rng(0).standard_normal((4, 3))
    m = pdlt.MLP(n0=3, width=16, depth=3, activation="tanh", C_b=0.1, C_W=1.0, gamma=0.5)
    keep = residual_multi._FOUR_BUDGET
    residual_multi._FOUR_BUDGET = np.inf
    out = {}
    try:
        for label, nbytes in (("plans kept", _graded._PLAN_BYTES), ("plans not kept", 0)):
            before, _graded._PLAN_BYTES = _graded._PLAN_BYTES, nbytes
            try:
                t0 = time.time()
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always")
                    st = pdlt.statistics(m, x, get=["V", "G1", "H1", "F"], error=True)
                out[label] = (time.time() - t0, st, len(w))
            finally:
                _graded._PLAN_BYTES = before
    finally:
        residual_multi._FOUR_BUDGET = keep
    (ta, sa, wa), (tb, sb, wb) = out["plans kept"], out["plans not kept"]
    print(f"plans kept: {ta:.0f} s ({wa} warnings); not kept: {tb:.0f} s ({wb} warnings); "
          f"ratio {tb / ta:.2f}")
    for k in ("V", "G1", "H1", "F"):
        a, b = np.asarray(getattr(sa, k)[-1]), np.asarray(getattr(sb, k)[-1])
        print(f"  {k}: largest difference {np.max(np.abs(a - b)) / np.max(np.abs(b)):.1e} of scale")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="tuples,fold")
    parts = ap.parse_args().part.split(",")
    if "tuples" in parts:
        part_tuples()
    if "fold" in parts:
        part_fold()
