"""Ray backend benchmark: networks per second, local engine vs Ray with 1 and 2 workers.

Usage::

    python benchmarks/distributed.py [--networks 16384] [--width 64] [--depth 5]
                                     [--stats K,V,Theta] [--workers 1,2] [--json]

For each configuration it times ``Ensemble.measure`` on the same ensemble
(same seed, same networks) and checks that the result equals the local one:

* ``local``: the plain single-pass engine in this process, with one torch
  thread and with torch's default thread count;
* ``ray xW``: ``backend="ray"`` on a local Ray instance with W CPUs (one
  single-threaded task per CPU). ``start`` is ``ray.init`` plus a warm-up
  call that makes the workers import torch and pdlt; ``rate`` is the
  networks per second of the timed call on the warm instance, ``cold`` the
  rate counting the start-up as well.

``max rel diff`` is the largest difference from the local result over all
statistics and layers, relative to the statistic's largest |mean|.
Needs ray (``pip install 'pdlt[ray]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def _diff(m, ref):
    diff = 0.0
    for s in m[0].estimates:
        scale = max(float(np.nanmax(np.abs(ref[s].mean))), 1e-300)
        diff = max(diff, float(np.nanmax(np.abs(m[s].mean - ref[s].mean))) / scale)
    return diff


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", type=int, default=16384)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--stats", default="K,V,Theta")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--shards", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import ray
    import torch

    import pdlt
    from pdlt.experiment import Ensemble

    mlp = pdlt.MLP(n0=args.width, width=args.width, depth=args.depth, activation="tanh",
                   C_W=1.0, n_out=args.width)
    stats = args.stats.split(",")
    ens = Ensemble(mlp, networks=args.networks, seed=0)
    x = ens.single_input(1.0)

    rows = []
    threads = torch.get_num_threads()
    ref = None
    for nt in sorted({1, threads}):
        torch.set_num_threads(nt)
        t0 = time.perf_counter()
        m = ens.measure(x, stats=stats, progress=False)
        dt = time.perf_counter() - t0
        ref = ref or m
        rows.append(dict(backend="local", workers=f"{nt} thread{'s' * (nt > 1)}",
                         shards=1, start_s=0.0, time_s=dt, rate=args.networks / dt,
                         cold_rate=args.networks / dt, max_rel_diff=_diff(m, ref)))
    torch.set_num_threads(threads)

    for w in [int(v) for v in args.workers.split(",")]:
        t0 = time.perf_counter()
        ray.init(num_cpus=w, include_dashboard=False, log_to_driver=False)
        Ensemble(mlp, networks=4 * w, seed=1).measure(x, stats=stats, backend="ray",
                                                      shards=2 * w, progress=False)
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = ens.measure(x, stats=stats, backend="ray", shards=args.shards, progress=False)
        dt = time.perf_counter() - t0
        shards = args.shards or max(1, min(4 * w, -(-args.networks // ens.block_size)))
        ray.shutdown()
        diff = _diff(m, ref)
        rows.append(dict(backend="ray", workers=f"{w} CPU", shards=shards, start_s=start,
                         time_s=dt, rate=args.networks / dt,
                         cold_rate=args.networks / (dt + start), max_rel_diff=diff))

    meta = dict(networks=args.networks, width=args.width, depth=args.depth, stats=stats,
                torch=torch.__version__, ray=ray.__version__, cpus=os.cpu_count())
    if args.json:
        json.dump({"config": meta, "rows": rows}, sys.stdout, indent=1, sort_keys=True)
        print()
        return 0
    print(f"{mlp!r}, K1=1, stats {','.join(stats)}, {args.networks} networks; "
          f"torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} cores")
    print("| backend | workers | shards | start [s] | time [s] | nets/s (warm) | nets/s (cold) "
          "| max rel diff |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['backend']} | {r['workers']} | {r['shards']} | {r['start_s']:.1f} | "
              f"{r['time_s']:.1f} | {r['rate']:.0f} | {r['cold_rate']:.0f} | "
              f"{r['max_rel_diff']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
