"""Arguments and output helpers shared by the CLI commands."""

from __future__ import annotations

import json
import math
import sys

import numpy as np


def add_mlp_arguments(p, *, depth_default=None, width=True):
    """--activation --depth --width/--widths --C-b --C-W --lambda-b --lambda-W."""
    p.add_argument("--activation", default="relu",
                   help="named activation (relu, tanh, gelu, ...) or module:function")
    p.add_argument("--depth", type=int, default=depth_default, required=depth_default is None,
                   help="number of layers L")
    if width:
        p.add_argument("--width", type=int, default=None, help="hidden width n (default 100)")
        p.add_argument("--widths", default=None,
                       help="comma-separated hidden widths n1,...,n_{L-1} (overrides --width)")
    p.add_argument("--C-b", dest="C_b", type=float, default=None, help="bias variance C_b")
    p.add_argument("--C-W", dest="C_W", type=float, default=None, help="weight variance C_W")
    p.add_argument("--lambda-b", dest="lambda_b", type=float, default=1.0)
    p.add_argument("--lambda-W", dest="lambda_W", type=float, default=1.0)


def resolve_activation(spec):
    """A named activation, or ``module:function`` for a user's numpy callable."""
    import importlib

    from ..activations import activation

    if ":" in spec:
        mod_name, fn_name = spec.split(":", 1)
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ValueError(f"cannot import module {mod_name!r} for activation {spec!r}: {exc}") from exc
        fn = getattr(mod, fn_name, None)
        if fn is None:
            raise ValueError(f"module {mod_name!r} has no function {fn_name!r}")
        return activation(fn)
    return activation(spec)


def build_mlp(args, n0=1, critical=False):
    from ..network import MLP

    act = resolve_activation(args.activation)
    C_b, C_W = args.C_b, args.C_W
    if critical:
        from ..theory.criticality import criticality

        res = criticality(act)
        if res.C_W is None:
            raise ValueError(f"activation {act.name!r} has no critical point: {res.reason}")
        C_b = res.C_b if C_b is None else C_b
        C_W = res.C_W if C_W is None else C_W
    C_b = 0.0 if C_b is None else C_b
    C_W = 1.0 if C_W is None else C_W
    kw = dict(n0=n0, activation=act, C_b=C_b, C_W=C_W, lambda_b=args.lambda_b,
              lambda_W=args.lambda_W)
    widths = getattr(args, "widths", None)
    if widths:
        ws = [int(w) for w in widths.split(",") if w.strip()]
        if len(ws) != args.depth - 1:
            raise ValueError(f"--widths gives {len(ws)} hidden widths but --depth {args.depth} "
                             f"needs {args.depth - 1}")
        return MLP(widths=ws, **kw)
    width = getattr(args, "width", None)
    return MLP(width=100 if width is None else width, depth=args.depth, **kw)


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating,)):
        obj = float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def print_json(obj):
    json.dump(_clean(obj), sys.stdout, sort_keys=True, indent=1)
    sys.stdout.write("\n")


def format_table(headers, rows):
    """A plain aligned text table."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.6g}"
        return str(v)
    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)
