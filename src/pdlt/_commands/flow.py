"""``pdlt flow``: single-input statistics at every layer."""

from __future__ import annotations

from .common import add_mlp_arguments, build_mlp, check_flow_validity, format_table, print_json


def register(sub):
    p = sub.add_parser("flow", help="single-input kernel, NTK, susceptibilities, V and G1 per layer",
                       description="Single-input statistics at every layer: K, Theta, chi_parallel, "
                                   "chi_perp, and the order-1/n four-point vertex V and NLO metric "
                                   "G1 (normalized by n_{l-1}; set the widths with --width or "
                                   "--widths).")
    add_mlp_arguments(p)
    p.add_argument("--K1", type=float, default=1.0,
                   help="first-layer kernel value K^(1) (default 1); fixes |x|^2/n0 = (K1-C_b)/C_W")
    p.add_argument("--critical", action="store_true",
                   help="use the critical (C_b, C_W) of the activation")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def run(args):
    from .._validation import check_kernel_scale, numeric_guard
    from ..theory.statistics import statistics
    from .kernel import _FIX

    K1 = check_kernel_scale(args.K1, "--K1")
    mlp = build_mlp(args, critical=args.critical)
    # the order-1/n statistics (normalized by n_{l-1}) need K1 > 0: V, G1 and
    # the NTK ones A, B, D, F, P, Q, R, S, T, U where their recursions apply
    with numeric_guard(f"the flow at K1={K1:g}, C_W={args.C_W}", _FIX):
        # every statistic defined for this network (pdlt.theory.statistics.defined)
        get = "all" if K1 > 0 else ("K", "Theta", "chi_parallel", "chi_perp")
        d = {"layers": statistics(mlp, K1=K1, get=get).layers()}
    if K1 > 0:
        check_flow_validity(mlp, [(s["layer"], s["K"], s.get("G1"), s.get("V"))
                                  for s in d["layers"]])
    if args.json:
        print_json(d)
        return 0
    keys = [k for k in d["layers"][0] if k != "layer"]
    rows = [[s["layer"], *[s[k] for k in keys]] for s in d["layers"]]
    print(f"{mlp!r}, K1={args.K1:g}")
    print(format_table(["layer", *keys], rows))
    return 0
