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
"""

from __future__ import annotations

import argparse
import time

import torch

from pdlt.experiment import Ensemble
from pdlt.experiment import ntk as _ntk
from pdlt.experiment.estimators_derivative import derivative_pairs_batched
from pdlt.report.rows import critical_mlp


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--activation", default="tanh")
    ap.add_argument("--widths", default="32,64,128")
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--networks", type=int, default=100)
    ap.add_argument("--neurons", type=int, default=2)
    args = ap.parse_args(argv)
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
