"""``pdlt measure``: statistics of an ensemble of real networks, with error bars."""

from __future__ import annotations

from .common import add_mlp_arguments, build_mlp, format_table, print_json


def register(sub):
    p = sub.add_parser(
        "measure", help="measure K, V, Theta, ... on an ensemble of real networks (needs torch)",
        description="Draw an ensemble of randomly initialized MLPs and measure statistics of "
                    "shared/NOTATION.md per layer, each with a standard error.")
    add_mlp_arguments(p)
    p.add_argument("--n-out", dest="n_out", type=int, default=1,
                   help="output width n_L (default 1; statistics over neuron pairs need >= 2)")
    p.add_argument("--networks", type=int, default=1000, help="ensemble size M (default 1000)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--K1", type=float, default=None,
                     help="single input with first-layer kernel K1 (default 1)")
    src.add_argument("--inputs", default=None, help=".npy file with inputs of shape (N, n0)")
    p.add_argument("--stats", default="K,Theta",
                   help="comma-separated statistics: K,G1,V,V_pair,V_same,Theta,A,B,D,F,P,Q,R,S,T,U "
                        "(default K,Theta)")
    p.add_argument("--layers", default=None, help="comma-separated layers to measure (default all)")
    p.add_argument("--seed", type=int, default=0, help="ensemble seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    p.add_argument("--float32", action="store_true", help="run in float32 (default float64)")
    p.add_argument("--memory-budget", dest="memory_budget", type=float, default=1.0,
                   help="working memory per chunk in GiB (default 1)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local (default): this process; ray: shards of networks as Ray tasks "
                        "(pip install 'pdlt[ray]')")
    p.add_argument("--address", default=None,
                   help="Ray cluster address to connect to (e.g. auto, ray://head:10001); "
                        "default: start a local Ray instance (needs --backend ray)")
    p.add_argument("--workers", type=int, default=None,
                   help="CPUs of the local Ray instance (default: all cores; --backend ray "
                        "without --address)")
    p.add_argument("--shards", type=int, default=None,
                   help="split the ensemble into this many network ranges (default: one pass "
                        "locally, a few per Ray CPU); the result does not depend on it")
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help=".npz file of the shards already measured: an interrupted run given "
                        "the same file resumes where it stopped")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def _fmt(mean, se):
    import numpy as np
    mean, se = np.asarray(mean), np.asarray(se)
    if mean.ndim == 0:
        return f"{float(mean):.6g} ± {float(se):.2g}"
    return f"array{mean.shape}, max|mean| {np.nanmax(np.abs(mean)):.4g}, max stderr {np.nanmax(se):.2g}"


def run(args):
    import numpy as np

    from ..theory.statistics import flow
    from .kernel import load_inputs

    from .._validation import check_checkpoint_path, check_int, check_kernel_scale

    if args.networks < 2:
        raise ValueError(f"--networks must be >= 2 (standard errors need two networks); got "
                         f"{args.networks}")
    check_int(args.n_out, "--n-out")
    check_int(args.seed, "--seed", minimum=0)
    # everything that can fail is checked before the first network is drawn
    if args.checkpoint is not None:
        check_checkpoint_path(args.checkpoint, "--checkpoint")
    if not (args.memory_budget > 0 and np.isfinite(args.memory_budget)):
        raise ValueError(f"--memory-budget must be a positive number of GiB; got "
                         f"{args.memory_budget}")
    x = load_inputs(args.inputs) if args.inputs else None
    K1 = None if x is not None else check_kernel_scale(1.0 if args.K1 is None else args.K1,
                                                        "--K1")
    mlp = build_mlp(args, n0=x.shape[1] if x is not None else 1)
    if args.n_out != 1:
        mlp = mlp.with_(n_out=args.n_out)
    stats = [s.strip() for s in args.stats.split(",") if s.strip()]
    layers = None
    if args.layers:
        try:
            layers = [int(v) for v in args.layers.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--layers must be comma-separated integers; got {args.layers!r}") from None

    if args.address is not None and args.backend != "ray":
        raise ValueError(f"--address {args.address} connects to a Ray cluster: add --backend ray")
    if args.shards is not None and args.shards < 1:
        raise ValueError(f"--shards must be a positive integer; got {args.shards}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be a positive integer; got {args.workers}")

    import torch

    from ..experiment import Ensemble
    from ..experiment.ensemble import check_device

    check_device(args.device, "--device")

    K_theory = None
    if "G1" in stats:
        K_theory = (flow(mlp, x) if x is not None else flow(mlp, K1=K1)).K
    ens = Ensemble(mlp, networks=args.networks, seed=args.seed,
                   dtype=torch.float32 if args.float32 else torch.float64, device=args.device,
                   memory_budget=int(args.memory_budget * (1 << 30)))
    result = ens.measure(x, stats=stats, layers=layers, K1=K1, K_theory=K_theory,
                         backend=args.backend, address=args.address, shards=args.shards,
                         checkpoint=args.checkpoint, workers=args.workers)
    if args.json:
        print_json(result.to_dict())
        return 0
    names = list(result[0].estimates)
    rows = [[m.layer, *[_fmt(m[k].mean, m[k].stderr) for k in names]] for m in result]
    src = f"K1={K1:g}" if x is None else f"N={x.shape[0]} inputs from {args.inputs}"
    print(f"{mlp!r}, {src}, {args.networks} networks, seed {args.seed}")
    print(format_table(["layer", *names], rows))
    if x is not None and any(np.asarray(m[k].mean).ndim for m in result for k in names):
        print("(tensor statistics: use --json for the full arrays)")
    return 0
