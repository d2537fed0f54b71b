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
    p.add_argument("--phase-diagram", metavar="FILE", default=None,
                   help="also draw the (C_b, C_W) phase diagram to FILE (needs matplotlib)")
    p.set_defaults(run=run)


def run(args):
    from ..theory.criticality import criticality

    act = resolve_activation(args.activation)
    res = criticality(act)
    if args.phase_diagram:
        from ..report.phase import plot_phase_diagram
        from ..theory.criticality import phase_diagram

        plot_phase_diagram(phase_diagram(act), path=args.phase_diagram)
    from ..theory.vertex import vertex_slope

    slope = (vertex_slope(act, C_W=res.C_W, K_star=res.K_star)
             if res.universality_class != "none" else None)
    if args.json:
        d = res.to_dict()
        d["vertex_slope"] = slope
        d["activation"] = args.activation if ":" in args.activation else res.activation
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
