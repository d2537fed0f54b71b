"""``pdlt criticality``: universality class and critical initialization of an activation."""

from __future__ import annotations

from .common import format_table, print_json, resolve_activation


def register(sub):
    p = sub.add_parser(
        "criticality", help="critical (C_b, C_W), K* and universality class of an activation",
        description="Solve K* = C_b + C_W <sigma^2>_K*, chi_par = chi_perp = 1 for an activation "
                    "and report its universality class (book ch. 5).")
    p.add_argument("activation", metavar="ACTIVATION",
                   help="named activation (relu, tanh, gelu, leaky_relu(0.1), ...) or "
                        "module:function for a vectorized numpy callable")
    p.add_argument("--json", action="store_true", help="print JSON (sorted keys)")
    p.add_argument("--residual", metavar="GAMMA", type=float, default=None,
                   help="residual MLP z' = [b + W sigma(z)] + GAMMA z (xi = 1): report the "
                        "critical C_b, C_W, vertex slope and optimal aspect ratio at this "
                        "strength (|GAMMA| < 1)")
    p.add_argument("--output-width", metavar="NL", type=int, default=1,
                   help="output width n_L for the optimal aspect ratio r* = 4/((20 + 3 n_L) nu) "
                        "(default 1)")
    p.add_argument("--phase-diagram", metavar="FILE", default=None,
                   help="also draw the (C_b, C_W) phase diagram to FILE (needs matplotlib)")
    p.set_defaults(run=run)


def run(args):
    from ..theory.criticality import criticality

    act = resolve_activation(args.activation)
    if args.output_width < 1:
        raise ValueError(f"--output-width must be a positive integer; got {args.output_width}")
    res = criticality(act)
    if args.phase_diagram:
        from ..report.phase import plot_phase_diagram
        from ..theory.phase import phase_diagram

        plot_phase_diagram(phase_diagram(act), path=args.phase_diagram)
    from ..theory.vertex import vertex_slope

    from ..theory.information import optimal_aspect_ratio_from_slope

    slope = (vertex_slope(act, C_W=res.C_W, K_star=res.K_star)
             if res.universality_class != "none" else None)
    rstar = None if slope is None else optimal_aspect_ratio_from_slope(slope, args.output_width)
    rc = None
    if args.residual is not None:
        from ..theory.residual import residual_criticality

        if res.universality_class == "none":
            raise ValueError(f"--residual: activation {res.activation!r} has no critical point "
                             f"({res.reason})")
        rc = residual_criticality(act, args.residual, n_out=args.output_width)
    # asymptotic L/n slopes of the normalized NTK statistics (book ch. 9)
    ntk, ntk_reason, ntk_powers = None, None, None
    if res.universality_class != "none":
        from ..theory.ntk_criticality import SLOPE_DEPTH_POWERS, ntk_slopes

        try:
            ntk = {k: v for k, v in ntk_slopes(act).items() if k != "universality_class"}
            ntk_powers = SLOPE_DEPTH_POWERS[res.universality_class]
        except ValueError as exc:
            ntk_reason = str(exc)
    if args.json:
        d = res.to_dict()
        d["ntk_slopes"] = ntk
        d["ntk_slope_depth_powers"] = ntk_powers  # statistic ~ slope * L^power / n
        if ntk_reason:
            d["ntk_slopes_reason"] = ntk_reason
        d["vertex_slope"] = slope
        d["optimal_aspect_ratio"] = rstar
        d["output_width"] = args.output_width
        d["activation"] = args.activation if ":" in args.activation else res.activation
        if rc is not None:
            d["plain"] = dict(C_b=res.C_b, C_W=res.C_W, vertex_slope=slope,
                              optimal_aspect_ratio=rstar)
            d.update(C_b=rc.C_b, C_W=rc.C_W, vertex_slope=rc.vertex_slope,
                     optimal_aspect_ratio=rc.optimal_aspect_ratio,
                     residual=dict(gamma=rc.gamma, xi=rc.xi))
        print_json(d)
        return 0
    print(f"activation        {res.activation}")
    print(f"universality class {res.universality_class}")
    if res.universality_class != "none":
        k = "every K" if res.K_star is None else f"{res.K_star:.15g}"
        print(f"critical C_b      {res.C_b:.15g}\ncritical C_W      {res.C_W:.15g}\nK*                {k}")
        print(f"chi_parallel      {res.chi_parallel:.15g}\nchi_perp          {res.chi_perp:.15g}")
    if slope is not None:
        print(f"vertex_slope      {slope:.15g}  (V/(n K^2) ~ vertex_slope * L/n at criticality)")
        print(f"optimal L/n       {rstar:.6g}  (r* = 4/((20 + 3 n_L) nu), n_L = {args.output_width}: "
              "maximizes the output neurons' mutual information, book appendix A)")
    if ntk is not None:
        def law(k):
            p = ntk_powers.get(k, 1)
            return "L/n" if p == 1 else f"L^{p}/n"
        print("NTK statistics at criticality (normalized statistic ~ slope x L^p/n): "
              + ", ".join(f"{k} {v:.4g} {law(k)}" for k, v in ntk.items()))
    elif ntk_reason:
        print(f"NTK slopes: {ntk_reason}")
    if rc is not None:
        print(f"\nresidual gamma = {rc.gamma:g} (xi = 1):")
        print(f"critical C_b      {rc.C_b:.15g}\ncritical C_W      {rc.C_W:.15g}  "
              "(= (1 - gamma^2) x the plain values)")
        print(f"vertex_slope      {rc.vertex_slope:.15g}")
        print(f"optimal L/n       {rc.optimal_aspect_ratio:.6g}")
    print(f"\n{res.reason}")
    if res.asymptotics is not None:
        print(f"asymptotics: {res.asymptotics.law}")
    if len(res.solutions) > 0:
        rows = [["any" if s.K_star is None else s.K_star, s.C_b, s.C_W, s.physical, s.stability]
                for s in res.solutions]
        print("\nall solutions of K* = C_b + C_W <sigma^2>, chi_par = chi_perp = 1:")
        print(format_table(["K*", "C_b", "C_W", "physical", "stability"], rows))
    if args.phase_diagram:
        print(f"\nphase diagram written to {args.phase_diagram}")
    return 0
