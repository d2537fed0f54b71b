"""Thin rows of ``_near_pair_quad``: cost and values of the residual relu near-pair call (#15, h64).

Residual relu (width 8, depth 3, C_W = 1.3, C_b = 0.1, gamma = 0.5), inputs ``[1, 0.2]``,
``[1, 0.2 + 1e-5]`` (``1 - rho^2 = 7.1e-11`` at layer 2): ``pdlt.statistics(get=["A",
"H1"])``, the call of ``tests/theory/test_residual_multi_mean.py::
test_near_coinciding_inputs_warn``. Every four-variable average it asks of ``_quad_row``
(all thin: the fourth variable nearly determined, ``s3 / c33 = 8.8e-6``) is recorded with
its value, so two code versions can be compared row by row::

    PYTHONPATH=<old>/src python benchmarks/relu_quad_thin.py --save old.json
    PYTHONPATH=src python benchmarks/relu_quad_thin.py --compare old.json

``--high`` also evaluates each distinct row at the "high" and "fast" rules (the outer
grid's convergence). Single thread (``OMP_NUM_THREADS=1``) for the timings.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

import pdlt
from pdlt.gaussian import _multi


def run():
    rec = []
    inner = _multi._quad_row

    def recorded(key, row, rule):
        t = time.perf_counter()
        out = inner(key, row, rule)
        rec.append(dict(key=key, row=row, rule=rule, value=out[0], mag=out[1],
                        seconds=time.perf_counter() - t))
        return out

    _multi._quad_row = recorded
    try:
        x = np.array([[1.0, 0.2], [1.0, 0.2 + 1e-5]])
        m = pdlt.MLP(n0=2, width=8, depth=3, activation="relu", C_W=1.3, C_b=0.1, gamma=0.5)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = pdlt.statistics(m, x, get=["A", "H1"])
        wall = time.perf_counter() - t
    finally:
        _multi._quad_row = inner
    return rec, wall, s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--save")
    ap.add_argument("--compare")
    ap.add_argument("--high", action="store_true")
    args = ap.parse_args()
    rec, wall, s = run()
    fresh = [r for r in rec if r["seconds"] > 1e-3]      # the rest: _quad_row's cache
    print(f"statistics: {wall:.2f} s; _quad_row calls {len(rec)} ({len(fresh)} computed), "
          f"{sum(r['seconds'] for r in rec):.2f} s, "
          f"{np.mean([r['seconds'] for r in fresh]):.4f} s per computed row; "
          f"distinct geometries {len({tuple(r['row']) for r in rec})}")
    if args.save:
        out = dict(rows=rec, A=s.A.tolist(), H1=s.H1.tolist(), wall=wall)
        with open(args.save, "w") as fh:
            json.dump(out, fh)
    if args.compare:
        with open(args.compare) as fh:
            old = json.load(fh)
        assert len(old["rows"]) == len(rec)
        d = [abs(a["value"] - b["value"]) for a, b in zip(old["rows"], rec)]
        assert all(tuple(a["row"]) == tuple(b["row"]) for a, b in zip(old["rows"], rec))
        print(f"rows: max |old - new| {max(d):.2e} (values {min(abs(r['value']) for r in rec):.2f}"
              f" .. {max(abs(r['value']) for r in rec):.2f}); statistics x{old['wall'] / wall:.1f}")
        for name in ("A", "H1"):
            a, b = np.array(old[name]), getattr(s, name)
            print(f"{name}: max |old - new| {np.max(np.abs(a - b)):.2e} of max |{name}| "
                  f"{np.max(np.abs(a)):.3g}")
    if args.high:
        rows = {(tuple(tuple(k) for k in r["key"]), tuple(r["row"])): r["value"] for r in rec}
        hi = max(abs(v - _multi._quad_row(k, row, _multi._QUAD_RULES["high"])[0])
                 for (k, row), v in rows.items())
        lo = max(abs(v - _multi._quad_row(k, row, _multi._QUAD_RULES["fast"])[0])
                 for (k, row), v in rows.items())
        print(f"{len(rows)} distinct rows: default vs high max {hi:.2e}, vs fast max {lo:.2e}")


if __name__ == "__main__":
    main()
