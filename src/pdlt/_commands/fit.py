"""``pdlt fit``: NNGP or NTK predictions of an infinite-width MLP on CSV data."""

from __future__ import annotations

import numpy as np

from .common import add_mlp_arguments, build_mlp, format_table, print_json


def register(sub):
    p = sub.add_parser(
        "fit", help="fit an infinite-width MLP (Bayesian NNGP or gradient-descent NTK) to CSV data",
        description="Predictions with uncertainties of an infinite-width MLP. CSV files: feature "
                    "columns, the last column the target, or the last --targets columns "
                    "the targets of as many outputs (a header row is skipped). nngp: "
                    "Bayesian posterior mean and std, and the log evidence. ntk: mean and std "
                    "over initializations of the network trained by full-batch gradient descent "
                    "on the MSE loss (no --steps: trained to convergence).")
    add_mlp_arguments(p, width=False)
    p.add_argument("--critical", action="store_true",
                   help="use the critical (C_b, C_W) of the activation")
    p.add_argument("--method", choices=("nngp", "ntk"), required=True)
    p.add_argument("--noise", type=_noise, default="auto",
                   help="variance added to the training kernel's diagonal, or 'auto' (default): "
                        "none when the kernel is invertible, else the smallest jitter that "
                        "makes it so")
    p.add_argument("--steps", type=int, default=None,
                   help="ntk: number of gradient-descent steps (default: to convergence)")
    p.add_argument("--learning-rate", dest="learning_rate", type=float, default=None,
                   help="ntk: learning rate eta (default: half the stability bound "
                        "2/lambda_max(Theta))")
    p.add_argument("--width", type=int, default=None,
                   help="add the order-1/n finite-width correction for hidden width n "
                        "(nngp: Bayesian posterior of the finite network; ntk: the trained "
                        "finite network's mean and std over initializations); the JSON then "
                        "also has mean_infinite_width and std_infinite_width")
    p.add_argument("--targets", type=int, default=1,
                   help="number of target columns at the end of each CSV row (default 1): "
                        "one network output per column, trained together on the summed MSE "
                        "loss (with --width the outputs interact at order 1/n)")
    p.add_argument("--residual", metavar="GAMMA", type=float, default=None,
                   help="residual MLP z' = [b + W sigma(z)] + GAMMA z in the equal-width hidden "
                        "layers (xi = 1; the output layer stays plain); with --critical the "
                        "residual critical C_b, C_W. --width needs the residual finite-width "
                        "statistics on the training and test inputs together (one input is "
                        "served; N inputs: an error names what is missing)")
    p.add_argument("--train", required=True, help="training CSV")
    p.add_argument("--test", required=True, help="test CSV (its last column is the target)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def _noise(text):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        import argparse
        raise argparse.ArgumentTypeError(f"expected a variance >= 0 or 'auto'; got {text!r}")


def _read_csv(path, name, targets=1):
    import os

    if os.path.isdir(path):
        raise ValueError(f"--{name} {path!r} is a directory; give a CSV file")
    try:
        with open(path) as fh:
            first = fh.readline()
    except OSError as exc:
        raise FileNotFoundError(f"--{name}: cannot read {path!r}: {exc.strerror}") from None
    skip = 0
    try:
        [float(v) for v in first.strip().split(",") if v.strip()]
    except ValueError:
        skip = 1  # header row
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"--{name} {path!r} is not a numeric CSV: {exc}") from None
    if data.shape[1] < targets + 1 or data.shape[0] < 1:
        raise ValueError(f"--{name} {path!r} needs at least one feature column and {targets} "
                         f"target column(s) (--targets {targets}); got shape {data.shape}")
    bad = ~np.isfinite(data)
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        k = c - data.shape[1] + targets + 1
        what = (("target" if targets == 1 else f"target {k} of {targets}") if k >= 1
                else f"feature {c + 1}")
        raise ValueError(f"--{name} {path!r} has a non-finite value (NaN or inf: {data[r, c]}) in data row "
                         f"{r + 1}, {what} column ({int(bad.sum())} in all); drop or impute "
                         "those rows")
    y = data[:, -targets:]
    return data[:, :-targets], (y[:, 0] if targets == 1 else y)


def run(args):
    if args.targets < 1:
        raise ValueError(f"--targets must be a positive number of target columns; got "
                         f"{args.targets}")
    Xa, ya = _read_csv(args.train, "train", args.targets)
    Xb, yb = _read_csv(args.test, "test", args.targets)
    if Xb.shape[1] != Xa.shape[1]:
        raise ValueError(f"--test has {Xb.shape[1]} feature columns but --train has "
                         f"{Xa.shape[1]}")
    mlp = build_mlp(args, n0=Xa.shape[1], critical=args.critical)
    if args.targets > 1:
        mlp = mlp.with_(n_out=args.targets)
    if args.residual is not None:
        mlp = _residual(mlp, args)
    if args.learning_rate is not None and not (np.isfinite(args.learning_rate)
                                               and args.learning_rate > 0):
        raise ValueError(f"--learning-rate must be a finite number > 0; got {args.learning_rate}"
                         " (omit it for half the stability bound 2/lambda_max(Theta))")
    if args.noise != "auto" and not (np.isfinite(args.noise) and args.noise >= 0):
        raise ValueError(f"--noise must be a variance >= 0 or 'auto'; got {args.noise}")
    try:
        return _fit(args, mlp, Xa, ya, Xb, yb)
    except NotImplementedError as exc:      # e.g. residual N-input statistics: one line, exit 2
        raise ValueError(str(exc)) from exc


def _residual(mlp, args):
    """The --residual MLP: gamma in the equal-width hidden layers, a plain output layer."""
    gamma = float(args.residual)
    if not (np.isfinite(gamma) and abs(gamma) < 1):
        raise ValueError(f"--residual must satisfy |gamma| < 1; got {args.residual}")
    if mlp.n_out == mlp.widths[-2]:
        raise ValueError(f"--residual with {mlp.n_out} targets, the MLP's hidden width, would "
                         "make the output layer residual; use fewer target columns")
    if args.critical and (args.C_b is None or args.C_W is None):
        from ..theory.residual import residual_mlp
        crit = residual_mlp(mlp.activation, gamma, n0=mlp.n0, width=mlp.widths[1],
                            depth=mlp.depth, n_out=mlp.n_out)
        C_b = crit.C_b if args.C_b is None else args.C_b
        C_W = crit.C_W if args.C_W is None else args.C_W
        return mlp.with_(gamma=gamma, C_b=C_b, C_W=C_W)
    return mlp.with_(gamma=gamma)


def _fit(args, mlp, Xa, ya, Xb, yb):
    from ..learning import NNGPRegressor, NTKRegressor

    if args.method == "nngp":
        if args.steps is not None or args.learning_rate is not None:
            raise ValueError("--steps and --learning-rate apply to --method ntk only")
        reg = NNGPRegressor(mlp, noise=args.noise, width=args.width).fit(Xa, ya)
        evidence = reg.log_evidence_
    else:
        reg = NTKRegressor(mlp, learning_rate=args.learning_rate, steps=args.steps,
                           noise=args.noise, width=args.width).fit(Xa, ya)
        evidence = None
    extra = {}
    if args.width is None:
        mean, std = reg.predict(Xb, return_std=True)
    else:
        fw = reg.finite_width_prediction(Xb)
        if args.method == "nngp":
            pick = (lambda v: v[:, 0]) if args.targets == 1 else (lambda v: v)  # noqa: E731
            mean, std = pick(fw.mean), pick(fw.std)
            evidence = fw.log_evidence
            extra = {"mean_infinite_width": pick(fw.mean_infinite_width),
                     "std_infinite_width": pick(fw.std_infinite_width),
                     "log_evidence_infinite_width": fw.log_evidence_infinite_width}
        else:
            mean, std = fw.mean, fw.std
            m = mean.size
            extra = {"mean_infinite_width": fw.mean_infinite,
                     "std_infinite_width": np.sqrt(np.clip(np.diag(
                         fw.cov_infinite.reshape(m, m)), 0, None)).reshape(mean.shape),
                     "mean_correction": fw.mean_correction}
        extra["width"] = args.width
    if np.ndim(mean) == 2 and np.ndim(std) == 1:
        std = np.repeat(std[:, None], mean.shape[1], axis=1)   # infinite width: one per input
    out = {"mean": mean, "std": std, "log_evidence": evidence, "method": args.method,
           "noise": reg.noise_,
           "mlp": repr(mlp), "mse": float(np.mean((mean - yb) ** 2)), **extra}
    if args.method == "ntk":
        out.update(steps=getattr(reg, "steps_", args.steps), learning_rate=reg.learning_rate_,
                   stability_bound=reg.stability_bound_)
    if args.json:
        print_json(out)
        return 0
    print(f"{mlp!r}, method={args.method}, noise={reg.noise_:g}"
          + (" (auto)" if args.noise == "auto" else ""))
    if args.method == "ntk":
        eta = "-" if reg.learning_rate_ is None else f"{reg.learning_rate_:.6g}"
        print(f"steps={args.steps if args.steps is not None else 'inf'}, learning_rate={eta}, "
              f"stability bound 2/lambda_max={reg.stability_bound_:.6g}")
    # one row per (input, output); the output column only with --targets > 1
    multi = np.ndim(mean) == 2
    cols = lambda v: np.reshape(v, (len(yb), -1))                     # noqa: E731
    outs = [(a, k) for a in range(len(yb)) for k in range(cols(mean).shape[1])]
    head = ["input"] + (["output"] if multi else [])
    key = (lambda a, k: [a, k] if multi else [a])                     # noqa: E731
    if args.width is None:
        rows = [key(a, k) + [float(cols(v)[a, k]) for v in (mean, std, yb)] for a, k in outs]
        print(format_table(head + ["mean", "std", "target"], rows))
    else:
        print(f"finite width n={args.width} (order 1/n); infinite-width values beside")
        vals = (mean, std, extra["mean_infinite_width"], extra["std_infinite_width"], yb)
        rows = [key(a, k) + [float(cols(v)[a, k]) for v in vals] for a, k in outs]
        print(format_table(head + ["mean", "std", "mean_inf", "std_inf", "target"], rows))
    print(f"test MSE {out['mse']:.6g}")
    if evidence is not None:
        print(f"log evidence {evidence:.6g}")
    return 0
