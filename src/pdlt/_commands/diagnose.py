"""``pdlt diagnose``: what the theory says about an MLP's initialization and aspect ratio."""

from __future__ import annotations

import math

import numpy as np

from .common import print_json, resolve_activation


def register(sub):
    p = sub.add_parser(
        "diagnose", help="universality class, critical initialization and L/n of an MLP",
        description="Diagnose an MLP at initialization: its activation's universality class and "
                    "critical (C_b, C_W), the depth-to-width ratio L/n, and what the effective "
                    "theory says about them.")
    p.add_argument("--activation", default="relu",
                   help="named activation (relu, tanh, gelu, ...) or module:function")
    p.add_argument("--depth", type=int, default=None, help="number of layers L")
    p.add_argument("--width", type=int, default=None, help="hidden width n")
    p.add_argument("--C-b", dest="C_b", type=float, default=None,
                   help="bias variance (default: the critical one)")
    p.add_argument("--C-W", dest="C_W", type=float, default=None,
                   help="weight variance (default: the critical one)")
    p.add_argument("--K1", type=float, default=1.0,
                   help="first-layer kernel K^(1) = C_b + C_W |x|^2/n0 (default 1)")
    p.add_argument("--residual", metavar="GAMMA", type=float, default=None,
                   help="residual MLP z' = [b + W sigma(z)] + GAMMA z in the equal-width layers "
                        "(xi = 1); the default C_b, C_W are then the residual critical ones")
    p.add_argument("--output-width", metavar="NL", type=int, default=1,
                   help="output width n_L (default 1); sets the optimal aspect ratio")
    p.add_argument("--json", action="store_true", help="print JSON (sorted keys)")
    _register_model_arguments(p)
    p.set_defaults(run=run)


def _register_model_arguments(p):
    """--model module:factory and its options (pdlt.torch.diagnose)."""
    g = p.add_argument_group(
        "your own PyTorch model",
        "diagnose a real model instead of --activation/--depth/--width: its architecture and "
        "its initialization as it actually is (C_W, C_b estimated from the weights)")
    g.add_argument("--model", metavar="MODULE:FACTORY", default=None,
                   help="a function returning the nn.Module, e.g. mypkg.models:make_mlp "
                        "(imported from the current directory or the Python path)")
    g.add_argument("--inputs", metavar="X.npy", default=None,
                   help="your inputs, shape (N, n0): sets the input scale (default |x|^2/n0 = 1)")
    g.add_argument("--verify", action="store_true",
                   help="also measure K, Theta, V, A on re-initialized copies of the model")
    g.add_argument("--networks", type=int, default=500, help="copies for --verify (500)")
    g.add_argument("--init", metavar="MODULE:FUNCTION|pytorch", default=None,
                   help="how --verify re-initializes the copies: init(model) in place, "
                        "'pytorch' (PyTorch's default); default pdlt.torch.init_critical_")
    g.add_argument("--seed", type=int, default=0, help="seed of --verify (0)")
    g.add_argument("--figure", metavar="PATH", default=None,
                   help="write the depth profiles to PATH (.png or .html)")


def _import_object(spec, option):
    """``module:name`` -> the object (the current directory is importable)."""
    import importlib
    import os
    import sys

    if ":" not in spec:
        raise ValueError(f"{option} must be MODULE:NAME (e.g. mymodels:make_mlp); got {spec!r}")
    mod_name, name = spec.split(":", 1)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ValueError(f"{option}: cannot import module {mod_name!r} ({exc})") from exc
    obj = getattr(mod, name, None)
    if obj is None:
        raise ValueError(f"{option}: module {mod_name!r} has no attribute {name!r}")
    return obj


def run_model(args):
    """``pdlt diagnose --model module:factory``: pdlt.torch.diagnose on the user's model."""
    if args.depth is not None or args.width is not None:
        raise ValueError("--model reads the depth and widths from the model; drop --depth and "
                         "--width")
    from ..experiment.bridge import diagnose as diagnose_model

    factory = _import_object(args.model, "--model")
    model = factory() if callable(factory) and not hasattr(factory, "parameters") else factory
    x = None
    if args.inputs is not None:
        from .kernel import load_inputs
        x = load_inputs(args.inputs)
    init = None
    if args.init is not None:
        init = "pytorch" if args.init == "pytorch" else _import_object(args.init, "--init")
    if args.networks < 2:
        raise ValueError(f"--networks must be >= 2; got {args.networks}")
    d = diagnose_model(model, x, verify=args.verify, networks=args.networks, init=init,
                       seed=args.seed)
    if args.figure is not None:
        d.save_figure(args.figure)
    if args.json:
        print_json(d.to_dict())
    else:
        print(d)
        if args.figure is not None:
            print(f"\nfigure written to {args.figure}")
    return 0


def _regime(r):
    # rule-of-thumb boundaries; the book's expansion parameter is r = L/n (ch. 3-4)
    if r < 0.1:
        return ("near-Gaussian", "L/n < 0.1: finite-width corrections, of order L/n, are small; "
                "the network stays close to its infinite-width kernel (little representation "
                "learning)")
    if r < 1:
        return ("effective-theory", "0.1 <= L/n < 1: 1/n corrections of order L/n matter and the "
                "effective theory computes them (four-point vertex V/(n K^2) grows linearly "
                "with L/n at criticality)")
    return ("strongly-coupled", "L/n >= 1: the expansion in L/n breaks down; fluctuations "
            "between networks are as large as the mean (reduce the depth or widen)")


def _aspect_text(r, rstar, n_out):
    if not math.isfinite(rstar):
        return "no vertex growth at this residual strength: the theory sets no depth limit"
    q = r / rstar
    if q < 0.5:
        verdict = (f"well below the information-theoretic optimum r* = {rstar:.3g}: the network "
                   "could be deeper (or narrower) and still stay in the regime where its output "
                   "neurons share the most information")
    elif q <= 2.0:
        verdict = (f"close to the information-theoretic optimum r* = {rstar:.3g} (within a "
                   "factor 2)")
    else:
        verdict = (f"above the information-theoretic optimum r* = {rstar:.3g}: fluctuations of "
                   "the whole layer start to wash out what the output neurons share; widen the "
                   "network, make it shallower, or use residual connections with gamma near 1")
    return (f"L/n = {r:.3g} is {q:.2g} x r*, {verdict} (r* = 4/((20 + 3 n_L) nu), n_L = {n_out}, "
            "book appendix A)")


def diagnose(act, depth, width, C_b=None, C_W=None, K1=1.0, residual=None, n_out=1):
    """The diagnosis as a dict (the CLI's JSON).

    ``residual`` is the residual strength gamma (xi = 1) of the equal-width
    layers; ``n_out`` the output width n_L.
    """
    from ..network import MLP
    from ..theory.criticality import criticality, depth_scales
    from ..theory.kernel import flow

    if depth < 1 or width < 1:
        raise ValueError(f"--depth and --width must be >= 1; got {depth}, {width}")
    if int(n_out) != n_out or n_out < 1:
        raise ValueError(f"--output-width must be a positive integer; got {n_out}")
    gamma = 0.0 if residual is None else float(residual)
    res = criticality(act)
    if residual is not None and res.universality_class != "none":
        from dataclasses import replace

        from ..theory.residual import residual_criticality

        rc = residual_criticality(act, gamma, n_out=n_out)
        res = replace(res, C_b=rc.C_b, C_W=rc.C_W)
    notes = []
    critical_init = C_b is None and C_W is None
    if res.universality_class == "none":
        if C_b is None or C_W is None:
            raise ValueError(f"activation {res.activation!r} has no critical point ({res.reason}); "
                             "give --C-b and --C-W to diagnose a chosen initialization")
        notes.append("no critical initialization exists: " + res.reason)
    C_b = res.C_b if C_b is None else C_b
    C_W = res.C_W if C_W is None else C_W
    r = depth / width
    regime, regime_text = _regime(r)
    notes.append(regime_text)
    mlp = MLP(n0=1, width=width, depth=depth, n_out=n_out, activation=act, C_b=C_b, C_W=C_W,
              gamma=gamma)
    if gamma != 0.0 and critical_init and res.is_critical:
        # convention (pdlt.theory.residual): only the residual layers get the residual
        # critical (C_b, C_W); the first and a plain output layer keep the plain ones,
        # so K^(L) = K* (not (1 - gamma^2) K*)
        from ..theory.residual import residual_layer_variances
        lb, lw = residual_layer_variances(mlp, rc)
        mlp = mlp.with_(C_b=lb, C_W=lw)
    fl = flow(mlp, K1=K1)
    last = fl[-1]
    ds = depth_scales(act, C_b, C_W, K1=K1)
    if gamma != 0.0:
        # the residual map is gamma^2 K + (1 - gamma^2) f~(K), f~ the plain map at
        # (C_b, C_W) / (1 - gamma^2): same fixed points and phase; chi = gamma^2 + (1 - gamma^2) chi~
        from dataclasses import replace

        f = 1.0 - gamma * gamma
        if f > 0:
            ds0 = depth_scales(act, C_b / f, C_W / f, K1=K1)
            cpar = gamma * gamma + f * ds0.chi_parallel
            cperp = gamma * gamma + f * ds0.chi_perp

            def _scale(c):
                return math.inf if c == 1.0 or not math.isfinite(c) else 1.0 / abs(math.log(c))
            ds = replace(ds0, C_b=C_b, C_W=C_W, chi_parallel=cpar, chi_perp=cperp,
                         xi_parallel=_scale(cpar), xi_perp=_scale(cperp))
        ds = ds0.__class__(**{**ds0.__dict__, "xi_parallel": ds0.xi_parallel / f,
                              "xi_perp": ds0.xi_perp / f}) if f > 0 else ds
    out = dict(activation=res.activation, universality_class=res.universality_class,
               critical_C_b=res.C_b, critical_C_W=res.C_W, K_star=res.K_star,
               C_b=C_b, C_W=C_W, at_criticality=bool(critical_init and res.is_critical),
               depth=depth, width=width, L_over_n=r, regime=regime, K1=K1,
               residual=gamma, output_width=n_out,
               K_L=last.K, chi_parallel_L=last.chi_parallel, chi_perp_L=last.chi_perp,
               phase=ds.phase, xi_parallel=ds.xi_parallel, xi_perp=ds.xi_perp,
               asymptotics=None if res.asymptotics is None else res.asymptotics.law)
    if gamma != 0.0 and critical_init and res.is_critical:
        out["plain_layer_C_b"], out["plain_layer_C_W"] = rc.plain_C_b, rc.plain_C_W
        notes.append(f"residual criticality: the residual layers at C_b = {rc.C_b:.4g}, "
                     f"C_W = {rc.C_W:.4g}; the first and a plain output layer keep the plain "
                     f"critical C_b = {rc.plain_C_b:.4g}, C_W = {rc.plain_C_W:.4g}, so K^(L) = K*")
    if out["at_criticality"]:
        cls = res.universality_class
        if cls == "scale-invariant":
            notes.append("scale-invariant at criticality: the kernel is the same at every layer")
        elif cls == "K*=0":
            notes.append(f"K*=0 class: the kernel decays as a power law, K^(L) = {last.K:.4g} "
                         f"at L = {depth} ({res.asymptotics.law})")
        elif cls == "half-stable":
            lo, hi = res.asymptotics.coefficients["basin"]
            inside = lo < K1 < hi or K1 == res.K_star
            notes.append(
                f"half-stable: K* = {res.K_star:.6g} attracts only from K^(1) in ({lo:.4g}, "
                f"{hi:.4g}); K^(1) = {K1:g} is {'inside' if inside else 'OUTSIDE'} it"
                + ("" if inside else f", so the kernel flows to K^(L) = {last.K:.4g} instead "
                   "(rescale the inputs)"))
    else:
        xi = min(ds.xi_parallel, ds.xi_perp) if all(
            math.isfinite(v) for v in (ds.xi_parallel, ds.xi_perp)) else math.nan
        if ds.phase == "exploding":
            notes.append("off criticality: the kernel grows without bound with depth")
        else:
            notes.append(f"off criticality ({ds.phase} phase): depth scales xi_par = "
                         f"{ds.xi_parallel:.4g}, xi_perp = {ds.xi_perp:.4g}; "
                         + ("L exceeds them: signals from the input are lost with depth"
                            if math.isfinite(xi) and depth > xi else "L is within them"))
    # order-1/n size at the last layer: V/(n K^2) from the finite-width flow,
    # and the asymptotic slope nu of V/(n K^2) ~ nu L/n at criticality
    from ..theory.vertex import finite_width_flow, vertex_slope

    if K1 > 0:
        ff = finite_width_flow(mlp, K1=K1)
        K_L = float(ff.K[-1])
        v_norm = float(ff["V"][-1]) / (mlp.fan_in(depth) * K_L ** 2) if K_L > 0 else math.nan
        out["V_over_nK2_L"] = v_norm
        out["G1_over_nK_L"] = (float(ff["G1"][-1]) / (mlp.fan_in(depth) * K_L)
                               if K_L > 0 else math.nan)
        notes.append(f"finite-width effects at layer L: connected 4-point function "
                     f"V/(n K^2) = {v_norm:.3g} (the preactivation kurtosis excess is 3x that), "
                     f"NLO kernel shift G1/(n K) = {out['G1_over_nK_L']:.3g}")
    out["vertex_slope"] = None
    out["optimal_aspect_ratio"] = None
    if res.universality_class != "none":
        from ..theory.information import optimal_aspect_ratio_from_slope
        from ..theory.residual import residual_vertex_slope

        out["vertex_slope"] = (residual_vertex_slope(act, gamma) if gamma != 0.0
                               else vertex_slope(act, C_W=res.C_W, K_star=res.K_star))
        notes.append(f"at criticality V/(n K^2) grows like {out['vertex_slope']:.4g} L/n: "
                     f"{out['vertex_slope'] * r:.3g} for this L/n")
        out["optimal_aspect_ratio"] = optimal_aspect_ratio_from_slope(out["vertex_slope"], n_out)
        notes.append(_aspect_text(r, out["optimal_aspect_ratio"], n_out))
        # NTK statistics at criticality: their asymptotic L/n slopes (book ch. 9)
        from ..theory.finite_ntk import SLOPE_DEPTH_POWERS, ntk_slopes

        out["ntk_slopes"] = None
        try:
            if gamma != 0.0:
                # residual: the derived A, B, D, F and the exact vertex slope
                # (pdlt.theory.residual_ntk); P..U are not derived for residual MLPs
                from ..theory.residual import residual_slopes
                rs = residual_slopes(act, gamma, depth=32)
                rs.pop("nu_V")                  # = out["vertex_slope"] (exact)
                notes.append("residual: NTK statistics P..U not derived")
                if any(v is None for v in rs.values()):
                    raise ValueError("the residual NTK slopes are derived for the "
                                     "scale-invariant class only")
                out["ntk_slopes"] = rs
            else:
                out["ntk_slopes"] = {k: v for k, v in ntk_slopes(act).items()
                                     if k != "universality_class"}
            out["ntk_slope_depth_powers"] = SLOPE_DEPTH_POWERS[res.universality_class]
            pw = out["ntk_slope_depth_powers"]
            notes.append("NTK statistics at criticality (normalized statistic ~ slope x L^p/n): "
                         + ", ".join(f"{k} {v:.3g}" + ("" if pw.get(k, 1) == 1 else f" (p={pw[k]})")
                                     for k, v in out["ntk_slopes"].items()))
        except ValueError as exc:
            notes.append(f"NTK slopes not available: {exc}")
    # what finite width does to learning, on a data-free reference problem
    out["finite_width_learning"] = None
    if gamma == 0.0 and K1 > C_b:
        from ..learning.finite_training import finite_width_learning_size

        import warnings

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fl_size = finite_width_learning_size(mlp.with_(n_out=1), K1)
            for w in caught:
                notes.append(f"caution: {w.message}")
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            notes.append(f"finite-width learning not predicted: {exc}")
        else:
            out["finite_width_learning"] = fl_size
            notes.append(
                "finite-width learning (one training input, an orthogonal test input, target "
                "at the output's scale, gradient descent to convergence; order 1/n): the NTK "
                f"moves by {100 * fl_size['representation_learning']:+.3g} % during training "
                "(representation learning; 0 at infinite width) and the trained prediction "
                f"at the test input shifts by {100 * fl_size['prediction_correction']:.3g} % of "
                "the target from the infinite-width (kernel) prediction")
    out["notes"] = notes
    return out


def run(args):
    if getattr(args, "model", None) is not None:
        return run_model(args)
    if args.depth is None or args.width is None:
        raise ValueError("--depth and --width are required (or --model MODULE:FACTORY to "
                         "diagnose your own PyTorch model)")
    act = resolve_activation(args.activation)
    d = diagnose(act, args.depth, args.width, args.C_b, args.C_W, args.K1,
                 residual=args.residual, n_out=args.output_width)
    if args.json:
        print_json(d)
        return 0
    print(f"activation          {d['activation']}  ({d['universality_class']} class)")
    if d["critical_C_W"] is not None:
        k = "every K" if d["K_star"] is None else f"{d['K_star']:.10g}"
        print(f"critical init       C_b = {d['critical_C_b']:.10g}, C_W = {d['critical_C_W']:.10g}, "
              f"K* = {k}")
    print(f"this init           C_b = {d['C_b']:.10g}, C_W = {d['C_W']:.10g}"
          + ("  (critical)" if d["at_criticality"] else f"  ({d['phase']} phase)"))
    print(f"depth L, width n    {d['depth']}, {d['width']}")
    print(f"L/n                 {d['L_over_n']:.4g}  ({d['regime']})")
    if d["optimal_aspect_ratio"] is not None:
        print(f"optimal L/n (r*)    {d['optimal_aspect_ratio']:.4g}  (n_L = {d['output_width']}"
              + (f", residual gamma = {d['residual']:g}" if d["residual"] else "") + ")")
    print(f"K^(1) -> K^(L)      {d['K1']:.6g} -> {d['K_L']:.6g}; chi_par, chi_perp at L: "
          f"{d['chi_parallel_L']:.6g}, {d['chi_perp_L']:.6g}")
    print("\nwhat the theory says:")
    for n in d["notes"]:
        print(f"- {n}")
    return 0
