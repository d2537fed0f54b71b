"""``pdlt diagnose``: what the theory says about an MLP's initialization and aspect ratio."""

from __future__ import annotations

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
    p.add_argument("--json", action="store_true",
                   help="print JSON (sorted keys); no progress bar unless --progress")
    p.add_argument("--progress", action="store_true",
                   help="show a progress bar (stderr) over the layers of the finite-width "
                        "folds at once, also off a terminal (default: on a terminal, for "
                        "loops past 5 s; deep networks, e.g. --depth 10000)")
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


def run(args):
    from .._progress import shown

    show = True if getattr(args, "progress", False) else (False if args.json else None)
    with shown(show):
        return _run(args)


def _run(args):
    from ..theory.diagnosis import diagnose_architecture

    if getattr(args, "model", None) is not None:
        return run_model(args)
    if args.depth is None or args.width is None:
        raise ValueError("--depth and --width are required (or --model MODULE:FACTORY to "
                         "diagnose your own PyTorch model)")
    act = resolve_activation(args.activation)
    d = diagnose_architecture(act, args.depth, args.width, args.C_b, args.C_W, args.K1,
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
