"""P..U pair patterns: autodiff (torch.func per network) against batched layer recursions.

Both paths compute the same numbers for the same networks
(:func:`pdlt.experiment.ntk.derivative_pairs` and
:func:`pdlt.experiment.estimators_derivative.derivative_pairs_batched`; equal to
round-off), so the standard error per network is the same and the precision per
CPU second improves by the ratio of the CPU times. Prints CPU ms per network
(process time, all threads; after one warm-up call) and the largest relative
difference of the six fields.

Run: ``python benchmarks/derivative_batched.py [--networks 100] [--widths 32,64,128]``
(set ``OMP_NUM_THREADS=1`` for single-thread figures).

``--scatter "PQ:16,32;RSTU:4,8"``: instead, the precision per CPU second of the
batched estimators as the neuron subset ``s`` grows, per group of statistics
measured together: for each width and ``s``, the CPU ms per network (batched
pair patterns and the forward pass to the layer, after a warm-up) and the
per-network standard deviation ``sd`` of ``n x`` (pair average) of each
statistic, with the theory value and ``sd^2 ms``, the CPU time that one
statistic needs per unit of precision (smaller is better); the standard
error of M networks is ``sd / sqrt(M)``. P alone takes the same-neuron-pair
recursion (``"P:16,64,128"``).
"""

from __future__ import annotations

import argparse
import time

import torch

from pdlt.experiment import Ensemble
from pdlt.experiment import ntk as _ntk
from pdlt.experiment.estimators_derivative import derivative_pairs_batched
from pdlt.report.rows import critical_mlp


_KEYS = {"P": "dHz_P", "Q": "dHz_Q", "R": "ddI_R", "S": "ddII_S", "T": "ddII_T", "U": "ddII_U"}


def scatter(act, n, depth, s, networks, stats, chunk=50, seed=0):
    """Per-network (theory, mean, sd) of ``n x`` pair average per statistic, and CPU ms/network."""
    import numpy as np

    import pdlt
    from pdlt.experiment.ensemble import _deriv_sufficient

    mlp = critical_mlp(act, n, depth)
    ens = Ensemble(mlp, networks=networks, seed=seed)
    x = torch.as_tensor(ens.single_input(1.0))
    vals = {k: [] for k in stats}
    t = time.process_time()
    for lo in range(0, networks, chunk):
        hi = min(networks, lo + chunk)
        Ws, bs = ens.parameters(lo, hi)
        z = _ntk.preactivations(Ws, bs, x, mlp, depth)[-1]
        out = _deriv_sufficient(Ws, bs, x, mlp, depth, z, list(stats), s)
        for k in stats:
            vals[k].append(n * out[_KEYS[k]].reshape(hi - lo))
    ms = (time.process_time() - t) / networks * 1e3
    th = pdlt.statistics(mlp, K1=1.0, get=tuple(stats))
    return {k: (float(np.asarray(th[k])[-1]), float(np.concatenate(v).mean()),
                float(np.concatenate(v).std(ddof=1))) for k, v in vals.items()}, ms


def main_scatter(args):
    print(f"{args.activation}, depth {args.depth}, last layer, one input, {args.networks} "
          f"networks, torch threads {torch.get_num_threads()}")
    scatter("tanh", 8, 3, 2, 20, "PQRSTU")   # warm-up
    for n in (int(v) for v in args.widths.split(",")):
        for group in args.scatter.split(";"):
            stats, ss = group.split(":")
            for s in (int(v) for v in ss.split(",")):
                res, ms = scatter(args.activation, n, args.depth, s, args.networks, stats)
                print(f"n={n:4d} {stats:6s} s={s:4d} {ms:7.2f} ms/net | " + "  ".join(
                    f"{k}: th {t:.4g} sd {sd:.3g} sd^2ms/th^2 {sd * sd * ms / (t * t or 1):.3g}"
                    for k, (t, m, sd) in res.items()), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--activation", default="tanh")
    ap.add_argument("--widths", default="32,64,128")
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--networks", type=int, default=100)
    ap.add_argument("--neurons", type=int, default=2)
    ap.add_argument("--scatter", default=None,
                    help='e.g. "P:16,64,128;QRSTU:4,8": scatter and cost per neuron subset')
    args = ap.parse_args(argv)
    if args.scatter:
        return main_scatter(args)
    print(f"{args.activation}, depth {args.depth}, last layer, s = {args.neurons}, one input, "
          f"{args.networks} networks, torch threads {torch.get_num_threads()}")
    print("width  autodiff ms/net  batched ms/net  speed-up  max rel. difference")
    for n in (int(v) for v in args.widths.split(",")):
        mlp = critical_mlp(args.activation, n, args.depth)
        ens = Ensemble(mlp, networks=args.networks, seed=0)
        Ws, bs = ens.parameters(0, args.networks)
        x = torch.as_tensor(ens.single_input(1.0))
        times, outs = [], []
        for f in (_ntk.derivative_pairs, derivative_pairs_batched):
            f([w[:4] for w in Ws], [b[:4] for b in bs], x, mlp, args.depth, args.neurons)
            t = time.process_time()
            outs.append(f(Ws, bs, x, mlp, args.depth, args.neurons))
            times.append((time.process_time() - t) / args.networks * 1e3)
        diff = max(float((getattr(outs[0], k) - getattr(outs[1], k)).abs().max()
                         / getattr(outs[0], k).abs().max()) for k in outs[0]._fields)
        print(f"{n:5d}  {times[0]:15.2f}  {times[1]:14.2f}  {times[0] / times[1]:8.1f}  {diff:.1e}")


if __name__ == "__main__":
    main()
