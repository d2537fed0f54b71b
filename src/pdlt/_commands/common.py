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


def check_flow_validity(mlp, layers):
    """One :class:`pdlt.ValidityWarning` for the layer whose 1/n correction is largest.

    ``layers``: ``(layer, K, G1, V)`` per layer (None where not computed).
    Compares ``G1/n`` with ``K`` and ``V/n`` with the Gaussian four-point
    ``K K`` (``n = n_{l-1}``), and ``L/n`` with the optimal aspect ratio.
    """
    import warnings

    from .._validation import (CORRECTION_FRACTION, ValidityWarning, check_aspect_ratio,
                               correction_ratio)

    worst = (0.0, None, None)
    for l, K, G1, V in layers:
        if l < 2:
            continue
        n = mlp.widths[l - 1]
        K = np.asarray(K, dtype=float)
        KK = K * K if K.ndim == 0 else np.multiply.outer(K, K)
        for what, lead, corr in (("G1/n against K", K, G1), ("V/n against K K", KK, V)):
            if corr is None:
                continue
            r = correction_ratio(lead, np.asarray(corr, dtype=float) / n)
            if math.isnan(r) or r > worst[0]:
                worst = (r, l, what)
            if math.isnan(r):
                break
    r, l, what = worst
    if l is not None and (math.isnan(r) or r > CORRECTION_FRACTION):
        size = "non-finite" if math.isnan(r) else f"{r:.3g} x the leading term"
        warnings.warn(f"layer {l}: the order-1/n correction {what} is {size} (more than "
                      f"{CORRECTION_FRACTION:g}, up to which pdlt trusts the truncated 1/n "
                      "expansion); the finite-width statistics are not reliable -- widen the "
                      "network or make it shallower", ValidityWarning, stacklevel=2)
    check_aspect_ratio(mlp)


# warnings caught while a command runs (set by pdlt.cli.main)
_CAUGHT = None


def begin(caught):
    """Record the list that ``warnings.catch_warnings(record=True)`` fills."""
    global _CAUGHT
    _CAUGHT = caught


def _validity_messages(caught=None):
    from .._validation import ValidityWarning

    seen, out = set(), []
    for w in (_CAUGHT if caught is None else caught) or ():
        if issubclass(w.category, ValidityWarning) and str(w.message) not in seen:
            seen.add(str(w.message))
            out.append(str(w.message))
    return out


def end(command, caught):
    """Print each validity warning as one line; hand every other warning on unchanged.

    Call it after leaving ``warnings.catch_warnings``, so the others reach
    the real ``warnings.showwarning``.
    """
    import warnings

    from .._validation import ValidityWarning

    global _CAUGHT
    _CAUGHT = None
    for msg in _validity_messages(caught or []):
        print(f"pdlt {command}: warning: {msg}", file=sys.stderr)
    for w in caught or ():
        if not issubclass(w.category, ValidityWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def print_json(obj):
    """Strict JSON on stdout (see :func:`pdlt._validation.json_document`).

    Non-finite floats become ``null`` and are listed in ``"nonfinite"``
    (path -> "nan" | "inf" | "-inf"); ``null`` elsewhere means "not
    computed"; ``"warnings"`` lists the validity warnings of the run as
    ``{"category": "ValidityWarning", "message": ...}``.
    """
    from .._validation import json_document

    ws = [{"category": "ValidityWarning", "message": m} for m in _validity_messages()]
    json.dump(json_document(obj, ws), sys.stdout, sort_keys=True, indent=1, allow_nan=False)
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
