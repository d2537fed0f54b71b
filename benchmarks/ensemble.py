"""Benchmark of the ensemble engine (pdlt.experiment).

Throughput in networks per second of
  * init: drawing the parameters (block-seeded CPU generator, float64);
  * fwd+NTK: the engine's forward pass with the NTK forward equation, on
    parameters already drawn;
  * raw bmm: the bare batched matmuls those same shapes need (per layer
    W @ sigma(z), and the two NTK products (sigma' H sigma') W^T and W (...)),
    on preallocated tensors, timed in the same run -- the ceiling;
  * measure(): the whole public call, init + forward + NTK + statistics.
The headline figure is ratio = (raw bmm time) / (fwd+NTK time): the fraction
of the raw batched-matmul throughput the engine reaches. Peak memory is the
process's peak RSS on CPU (torch.cuda.max_memory_allocated on CUDA).

Rates are measured on one chunk of the size measure() uses and scaled to
networks per second. Peak RSS is process-wide, so configurations run in
order of increasing size and the RSS before each is shown too.

Usage: python benchmarks/ensemble.py [--networks 1024] [--device cpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

import pdlt
from pdlt.experiment import Ensemble
from pdlt.experiment import ntk as _ntk
from pdlt.experiment.activations import torch_activation

CONFIGS = [  # (width, depth, N inputs, stats measured)
    (64, 5, 1, ["K", "V", "Theta"]),
    (64, 5, 4, ["K", "V", "Theta"]),
    (256, 4, 2, ["K", "Theta", "A", "B"]),
]


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_config(width, depth, N, stats, M, device, dtype):
    mlp = pdlt.MLP(n0=width, width=width, depth=depth, n_out=width, activation="tanh")
    ens = Ensemble(mlp, networks=M, seed=0, dtype=dtype, device=device)
    xs = np.random.default_rng(0).normal(size=(N, width))
    x = torch.as_tensor(xs, dtype=dtype, device=device)
    # the chunk measure() uses for forward + NTK + statistics under the default budget
    B = int(max(1, min(M, ens.memory_budget // ens._bytes_per_network(N, True, True))))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_meas = best_of(lambda: ens.measure(xs, stats=stats, progress=False), repeat=1)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    t_init = best_of(lambda: ens.parameters(0, B), repeat=1) * M / B
    Ws, bs = ens.parameters(0, B)
    tact = torch_activation(mlp.activation)

    def engine():
        for _l, z, H in _ntk._forward(Ws, bs, x, tact, depth, ntk=True, mlp=mlp):
            pass
        sync(device)

    # raw: the same batched matmuls on preallocated operands: per layer the
    # forward W @ sigma(z) and the two NTK products (n' x n) @ (n x N n) over B N
    n = width
    h = torch.randn(B, n, N, dtype=dtype, device=device)
    Wa = torch.randn(B * N, n, n, dtype=dtype, device=device)
    R = torch.randn(B * N, n, N * n, dtype=dtype, device=device)

    def raw():
        torch.matmul(Ws[0], x.T)
        for l in range(1, depth):
            torch.bmm(Ws[l], h)
            torch.bmm(Wa, R)
            torch.bmm(Wa, R)
        sync(device)

    engine(), raw()  # warm up
    t_eng = best_of(engine, repeat=5) * M / B
    t_raw = best_of(raw, repeat=5) * M / B
    return {
        "width": width, "depth": depth, "N": N, "networks": M, "chunk": B, "stats": ",".join(stats),
        "init_net_per_s": M / t_init, "fwd_ntk_net_per_s": M / t_eng, "raw_bmm_net_per_s": M / t_raw,
        "ratio": t_raw / t_eng, "measure_net_per_s": M / t_meas,
        "peak_memory_MiB": peak / 2 ** 20, "baseline_rss_MiB": rss0 / 2 ** 20,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--float32", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    device = torch.device(a.device)
    dtype = torch.float32 if a.float32 else torch.float64
    rows = [run_config(*cfg, a.networks, device, dtype) for cfg in CONFIGS]
    if a.json:
        print(json.dumps(rows, indent=1, sort_keys=True))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {dtype}")
    hdr = ["width", "depth", "N", "chunk", "init/s", "fwd+NTK/s", "raw bmm/s", "ratio", "measure/s",
           "peak MiB (before)"]
    print(" | ".join(hdr))
    for r in rows:
        print(" | ".join([str(r["width"]), str(r["depth"]), str(r["N"]), str(r["chunk"]),
                          f"{r['init_net_per_s']:.0f}",
                          f"{r['fwd_ntk_net_per_s']:.0f}", f"{r['raw_bmm_net_per_s']:.0f}",
                          f"{r['ratio']:.2f}", f"{r['measure_net_per_s']:.0f}",
                          f"{r['peak_memory_MiB']:.0f} ({r['baseline_rss_MiB']:.0f})"]))


if __name__ == "__main__":
    main()
