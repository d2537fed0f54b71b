"""Where ``pdlt report`` spends its time, without running the whole report.

Every piece of the default report (per case: the theory, the plain ensemble
estimators, the dNTK/ddNTK estimators P..U, the control variates; per study:
the whole study) is run at a fraction of its network count. A case is first
run once on 20 networks (warm-up: torch.func tracing, allocator, per-shape
caches), then at fraction ``f`` of its networks; its ensemble pieces are
scaled by ``1/f`` (their cost is proportional to the networks), its theory
is taken as measured. A study is run at fractions ``f1 < f2`` and extrapolated
linearly, ``cost(1) = a + b`` from ``cost(f) = a + b f`` (``a``: the fixed
cost of its theory and figures).
Wall and CPU (process time, all threads) seconds are both reported; CPU is
the less load-sensitive of the two on a shared machine.

Run: ``python benchmarks/report_cost.py [--fractions 0.05,0.1] [--quick] [--full]
[--only cases|studies] [--json out.json]`` (cases at the second fraction).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from pdlt.report import suite as S
from pdlt.report import studies as st
from pdlt.report.finite_training import default_training_cases, finite_training_study


def _scaled_case(case, f):
    def sc(v):
        return None if v is None else (0 if v == 0 else max(20, int(round(f * v))))
    passes = (None if case.derivative_passes is None else
              tuple((st, sc(M), s) for st, M, s in case.derivative_passes))
    return replace(case, networks=sc(case.networks),
                   derivative_networks=sc(case.derivative_networks),
                   derivative_passes=passes, cv_networks=sc(case.cv_networks))


def _studies(quick, f, full=False):
    """Each default study at fraction f of its networks: (label, callable)."""
    def n(v):
        return max(20, int(round(f * v)) // 2 * 2)
    if quick:
        return [
            ("linear kurtosis", lambda: st.linear_kurtosis_study(networks=n(4000))),
            ("histogram", lambda: st.histogram_study(networks=n(1500))),
            ("learning (infinite width)",
             lambda: st.learning_study(widths=(32, 64), networks=n(120), steps=20)),
            ("residual", lambda: st.residual_study(networks=n(1500))),
            ("finite-width training", lambda: finite_training_study(
                [replace(c, networks=n(c.networks)) for c in default_training_cases(True)])),
        ]
    return [
        ("linear kurtosis", lambda: st.linear_kurtosis_study(networks=n(20000))),
        ("histogram", lambda: st.histogram_study(networks=n(6000))),
        ("learning (infinite width)", lambda: st.learning_study(networks=n(300))),
        ("residual (+NTK)", lambda: st.residual_study(networks=n(4000), ntk=True)),
    ] + [(f"finite-width training: {c.label}",
          (lambda c=c: finite_training_study([replace(c, networks=n(c.networks))])))
         for c in default_training_cases(False, full)]


def _timed(fn):
    t = (time.perf_counter(), time.process_time())
    out = fn()
    return out, time.perf_counter() - t[0], time.process_time() - t[1]


def _extrapolate(c1, c2, f1, f2):
    b = (c2 - c1) / (f2 - f1)
    a = c1 - b * f1
    return max(a, 0.0) + b


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", default="0.1,0.3")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--only", choices=("cases", "studies"), default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    f1, f2 = (float(v) for v in args.fractions.split(","))
    # warm-up: torch.func tracing, allocator, quadrature caches
    S.run_case(S.Case("tanh", 8, 2, 40, derivative_networks=20, cv_networks=40))
    out, measured = [], []
    if args.only != "studies":
        fc = f1
        for case in S.default_cases(args.quick, args.full):
            S.run_case(_scaled_case(case, 20 / case.networks))
            cr = S.run_case(_scaled_case(case, fc))
            res = cr.timings
            measured.append({"case": S.case_label(case), "activation": case.activation,
                             "width": case.width, "depth": case.depth, "fraction": fc,
                             "stats": {s: {"theory": float(cr.theory[s][-1]),
                                           "mean": float(cr.measured[s].mean[-1]),
                                           "stderr": float(cr.measured[s].stderr[-1]),
                                           "networks": int(cr.measured[s].n_networks)}
                                       for s in cr.theory}})
            for piece, (w, c) in res.items():
                if piece != "theory":
                    w, c = w / fc, c / fc
                out.append((f"{S.case_label(case)}: {piece}", w, c))
                print(f"{out[-1][0]:55s} {w:8.1f} s wall {c:8.1f} s CPU", flush=True)
    if args.only != "cases":
        for k in range(len(_studies(args.quick, 1.0, args.full))):
            t = [_timed(_studies(args.quick, f, args.full)[k][1])[1:] for f in (f1, f2)]
            label = _studies(args.quick, 1.0, args.full)[k][0]
            w = _extrapolate(t[0][0], t[1][0], f1, f2)
            c = _extrapolate(t[0][1], t[1][1], f1, f2)
            out.append((f"study: {label}", w, c))
            print(f"{out[-1][0]:55s} {w:8.1f} s wall {c:8.1f} s CPU", flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"fractions": [f1, f2], "pieces": out, "measured": measured}, fh,
                          indent=1)
    tw, tc = sum(o[1] for o in out), sum(o[2] for o in out)
    print(f"{'total (extrapolated)':55s} {tw:8.1f} s wall {tc:8.1f} s CPU")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"fractions": [f1, f2], "pieces": out, "measured": measured}, fh, indent=1)


if __name__ == "__main__":
    main()
