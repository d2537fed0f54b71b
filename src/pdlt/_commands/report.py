"""``pdlt report``: theory against ensembles of real networks, as an HTML page."""

from __future__ import annotations

import sys


def register(sub):
    p = sub.add_parser("report", help="theory versus ensembles of real networks (HTML report)",
                       description="Measure K, Theta, V, the NTK fluctuations A, B, D, F, the "
                                   "dNTK P, Q and the ddNTKs R, S, T, U on ensembles of critical "
                                   "MLPs, run the studies (deep linear kurtosis, histograms, "
                                   "trained networks at infinite and finite width, residual "
                                   "networks) and "
                                   "write a self-contained HTML report with a pass/fail table.")
    p.add_argument("--out", default="pdlt-report", help="output directory (default pdlt-report)")
    p.add_argument("--quick", action="store_true", help="small suite (~70 rows, ~4 min on 2 cores)")
    p.add_argument("--full", action="store_true",
                   help="twice the networks everywhere, the control variates at every width, "
                        "and all five finite-training cases with widths to 256 (what the slow "
                        "tests checked; several times the default's time)")
    p.add_argument("--json", action="store_true", help="also write report.json")
    p.add_argument("--stats", default="K,G1,Theta,H1,V,A,B,D,F,P,Q,R,S,T,U",
                   help="comma-separated statistics (default: all of them)")
    p.set_defaults(run=run)


def run(args):
    from ..report import run_suite, write_report
    from ..report.suite import STAT_SPECS

    stats = [s.strip() for s in args.stats.split(",") if s.strip()]
    unknown = [s for s in stats if s not in STAT_SPECS]
    if unknown:
        raise ValueError(f"--stats: no report comparison for {', '.join(unknown)}; "
                         f"available: {', '.join(STAT_SPECS)}")
    suite = run_suite(stats=stats, quick=args.quick, full=getattr(args, "full", False),
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    path = write_report(suite, args.out, write_json=args.json)
    from .common import format_table

    def res(r):
        return f"{r.resolution:.0%}" if r.relative else f"+-{r.resolution:.2g} abs"

    summary = []
    for d in suite.summary():
        ctl = dict(d["best"].control_z)
        summary.append([d["key"], d["activation"], d["rows"], d["passed"], d["unresolved"],
                        d["failed"], res(d["best"]), ctl.get(0.5), ctl.get(2.0)])
    print(format_table(["statistic", "activation", "rows", "pass", "unresolved", "fail",
                        "best resolution", "x0.5 z", "x2 z"], summary))
    print()
    rows = [[r.statistic, r.activation, r.width, r.layer, r.theory, r.measured, r.stderr,
             r.sigmas, res(r), r.status] for r in suite.rows]
    print(format_table(["stat", "activation", "width", "layer", "theory", "measured", "stderr",
                        "sigmas", "resolution", "result"], rows))
    c = suite.counts
    print(f"\nreport written to {path} ({suite.seconds:.0f} s); {len(suite.rows)} rows: "
          f"{c['pass']} pass, {c['unresolved']} unresolved (resolution worse than 50 %, not "
          f"counted as passes), {c['FAIL']} fail")
    return 0 if suite.passed else 1
