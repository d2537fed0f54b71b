"""``pdlt kernel``: kernel and NTK matrices for a set of inputs."""

from __future__ import annotations

import numpy as np

from .common import add_mlp_arguments, build_mlp, check_flow_validity, print_json


def register(sub):
    p = sub.add_parser("kernel", help="K and Theta at every layer for inputs in a .npy file",
                       description="Infinite-width kernel K and NTK Theta (N x N) at every layer; "
                                   "with --width or --widths also the four-point vertex V "
                                   "(N x N x N x N, V[a1][a2][a3][a4] = V_(a1a2)(a3a4)), the "
                                   "NLO metric G1 (N x N) and the NTK statistics A, B, D, F, "
                                   "P, Q, R, S, T, U (N x N x N x N, indices as NOTATION.md "
                                   "writes them).")
    add_mlp_arguments(p)
    p.add_argument("--inputs", required=True, help=".npy file with inputs of shape (N, n0)")
    p.add_argument("--critical", action="store_true",
                   help="use the critical (C_b, C_W) of the activation")
    p.add_argument("--accuracy", choices=("fast", "default", "high"), default="default",
                   help="rule of the three- and four-variable Gaussian averages behind V, G1 "
                        "and A..U (pdlt.gaussian._multi states their errors); each layer "
                        "reports its estimate as integration_error")
    p.add_argument("--error-estimate", action="store_true",
                   help="with --width: also estimate every order-1/n entry's integration error "
                        "(a second fold with another rule; per layer under \"error\")")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def load_inputs(path):
    """Inputs (N, n0) from a .npy file (a 1-D array is one input; see pdlt._validation)."""
    from .._validation import load_npy_inputs

    return load_npy_inputs(path, "--inputs")


_FIX = ("rescale the inputs so that K1 = C_b + C_W |x|^2/n0 is of order one, or bring C_W "
        "closer to its critical value")


def _compute(mlp, x, finite, accuracy="default", error=False):
    from ..theory.statistics import statistics

    # the order-1/n tensors (each N^4) only when the widths are asked for: every
    # statistic defined for this network (pdlt.theory.statistics.defined)
    get = "all" if finite else ("K", "Theta", "chi_parallel", "chi_perp")
    return statistics(mlp, x, get=get, accuracy=accuracy, error=error and finite).layers()


def _array(v):
    return None if v is None else np.asarray(v, dtype=float)


def run(args):
    from .._validation import check_input_scale, numeric_guard

    x = load_inputs(args.inputs)
    mlp = build_mlp(args, n0=x.shape[1], critical=args.critical)
    check_input_scale(mlp, x)
    finite = args.width is not None or args.widths is not None
    with numeric_guard("the kernel flow", _FIX):
        result = _compute(mlp, x, finite, args.accuracy, args.error_estimate)
    if finite:
        check_flow_validity(mlp, [(s["layer"], np.array(s["K"]), _array(s.get("G1")),
                                   _array(s.get("V"))) for s in result])
    if args.json:
        print_json({"layers": result})
        return 0
    np.set_printoptions(precision=6, suppress=False, linewidth=120)
    print(f"{mlp!r}, N={x.shape[0]} inputs")
    for s in result:
        print(f"\nlayer {s['layer']}\nK =\n{np.array(s['K'])}\nTheta =\n{np.array(s['Theta'])}")
        if "G1" in s:
            print(f"G1 =\n{np.array(s['G1'])}")
    return 0
