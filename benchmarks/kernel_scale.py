"""Benchmark: kernels at dataset scale, pdlt versus neural-tangents, side by side.

Every measurement runs in its own subprocess, so that its peak RSS
(``ru_maxrss``) is its own: one per (library, activation, N).

* ``speed``: K and Theta of a depth-10 MLP at the last layer for N random
  inputs (n0 = 64, standard normal, seed 0, float64), relu / erf / gelu.
  pdlt: ``pdlt.kernel_matrix(mlp, x)`` (blocked closed forms, last layer);
  neural-tangents: a ``jax.jit``-compiled ``stax.serial`` kernel function,
  ``get=("nngp", "ntk")`` (same network and convention as
  ``benchmarks/kernel.py``: ``stax.Dense(1, W_std=sqrt(C_W), b_std=sqrt(C_b),
  parameterization="ntk")`` between activations, i.e. pdlt with
  lambda_b = C_b, lambda_W = C_W). Times are the best warm call of
  ``--repeats`` after one warm-up call (NT's first call, with compilation,
  is listed separately); peak RSS is the worker's. The two results are
  compared entry by entry (max relative difference on the first 200 rows).
* ``large``: ``kernel_matrix`` for 2 x 10^4 inputs at depth 10 (relu), K and
  Theta of the last layer written to ``np.memmap`` files in ``--scratch``
  (6.4 GB on disk), with the worker's peak RSS.
* ``ray``: the Ray-blocked kernel (``pdlt.experiment.kernel_distributed``,
  2 local workers) against the local one.
* ``regression``: NNGP regression by conjugate gradients with the blocked
  kernel operator (``pdlt.learning.large``) on synthetic data, time, peak
  RSS and iterations per N.
* ``nystrom``: the same regression with a rank-m Nystrom kernel
  (``pdlt.learning.large.nystrom_regression``, memory O(N m)) for N up to
  10^5; where N <= ``--exact-max`` the exact solution (CG, kernel cached)
  runs too, and the two predictions are compared.

Usage::

    nice -n 10 python benchmarks/kernel_scale.py speed --nt-python /tmp/ntvenv/bin/python
    nice -n 10 python benchmarks/kernel_scale.py large --scratch /tmp/pdlt-scale
    nice -n 10 python benchmarks/kernel_scale.py ray
    nice -n 10 python benchmarks/kernel_scale.py regression --sizes 2000 5000 10000
    nice -n 10 python benchmarks/kernel_scale.py nystrom --sizes 10000 --ranks 500 1000 2000
    nice -n 10 python benchmarks/kernel_scale.py nystrom --sizes 100000 --ranks 2000

neural-tangents runs in its own environment (never a pdlt dependency), e.g.
``python3 -m venv /tmp/ntvenv && /tmp/ntvenv/bin/pip install jax==0.5.3
jaxlib==0.5.3 tf2jax==0.3.7 neural-tangents==0.6.5``; without it only pdlt is
measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

N0 = 64
DEPTH = 10
C_B = 0.1
C_W = {"relu": 2.0, "gelu": 2.0, "erf": 1.0}
SEED = 0


def make_inputs(N, seed=SEED):
    return np.random.default_rng(seed).standard_normal((N, N0))


def _peak_rss():
    """Peak resident set size of this process, bytes (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _AnonSampler:
    """Peak anonymous (RssAnon) and file-backed (RssFile) resident memory, sampled at 5 Hz.

    ru_maxrss counts the pages of memory-mapped output files as resident too;
    those are page cache, written back and reclaimable, so the process's own
    memory is RssAnon (Linux /proc/self/status).
    """

    def __init__(self):
        import threading
        self.anon = self.file = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _sample(self):
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        self.anon = max(self.anon, int(line.split()[1]) * 1024)
                    elif line.startswith("RssFile:"):
                        self.file = max(self.file, int(line.split()[1]) * 1024)
        except OSError:  # pragma: no cover - not Linux
            pass

    def _run(self):
        while not self._stop.wait(0.2):
            self._sample()

    def stop(self):
        self._sample()
        self._stop.set()
        self._t.join()
        return {"rss_anon": self.anon, "rss_file": self.file}


# ---------------------------------------------------------------------------
# workers (one measurement per process)
# ---------------------------------------------------------------------------

def _worker_pdlt(act, N, repeats, outdir, threads):
    import pdlt
    x = make_inputs(N)
    mlp = pdlt.MLP(n0=N0, width=1, depth=DEPTH, activation=act, C_b=C_B, C_W=C_W[act],
                   lambda_b=C_B, lambda_W=C_W[act])
    times = []
    for _ in range(1 + repeats):
        t0 = time.perf_counter()
        km = pdlt.kernel_matrix(mlp, x, threads=threads)
        times.append(time.perf_counter() - t0)
    np.save(os.path.join(outdir, "K.npy"), km.K[0][:200])
    np.save(os.path.join(outdir, "Theta.npy"), km.Theta[0][:200])
    return {"first": times[0], "warm": min(times[1:]), "rss": _peak_rss()}


def _worker_nt(act, N, repeats, outdir):
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from neural_tangents import stax
    nonlin = {"relu": stax.Relu(), "erf": stax.Erf(), "gelu": stax.Gelu(approximate=False)}[act]
    dense = stax.Dense(1, W_std=math.sqrt(C_W[act]), b_std=math.sqrt(C_B), parameterization="ntk")
    layers = [dense]
    for _ in range(DEPTH - 1):
        layers += [nonlin, dense]
    fn = jax.jit(stax.serial(*layers)[2], static_argnames=("get",))
    x = jnp.asarray(make_inputs(N), jnp.float64)
    times = []
    for _ in range(1 + repeats):
        t0 = time.perf_counter()
        k = fn(x, None, get=("nngp", "ntk"))
        k.ntk.block_until_ready()
        times.append(time.perf_counter() - t0)
    np.save(os.path.join(outdir, "K.npy"), np.asarray(k.nngp[:200], float))
    np.save(os.path.join(outdir, "Theta.npy"), np.asarray(k.ntk[:200], float))
    import neural_tangents
    return {"first": times[0], "warm": min(times[1:]), "rss": _peak_rss(),
            "versions": f"jax {jax.__version__}, neural-tangents {neural_tangents.__version__}"}


def _worker_large(N, scratch, threads, act="relu"):
    import pdlt
    os.makedirs(scratch, exist_ok=True)
    x = make_inputs(N)
    mlp = pdlt.MLP(n0=N0, width=1, depth=DEPTH, activation=act, C_b=C_B, C_W=C_W[act],
                   lambda_b=C_B, lambda_W=C_W[act])
    out = {g: np.lib.format.open_memmap(os.path.join(scratch, f"{g}_{N}.npy"), mode="w+",
                                        shape=(1, N, N)) for g in ("K", "Theta")}
    sampler = _AnonSampler()
    t0 = time.perf_counter()
    km = pdlt.kernel_matrix(mlp, x, out=out, threads=threads, memory_budget=2 * 2 ** 30)
    for g in out:
        out[g].flush()
    dt = time.perf_counter() - t0
    mem = sampler.stop()
    # spot check: 40 random pairs against the flow of their own two inputs
    rng = np.random.default_rng(1)
    worst = 0.0
    for a, b in rng.integers(0, N, size=(40, 2)):
        f = pdlt.flow(mlp, x[[a, b]], susceptibilities=False)[-1]
        for g, M in (("K", f.K), ("Theta", f.Theta)):
            worst = max(worst, abs(km[g][0, a, b] - M[0, 1]) / math.sqrt(M[0, 0] * M[1, 1]))
    return {"time": dt, "rss": _peak_rss(), "bytes_on_disk": 2 * 8 * N * N,
            "spot_check_max_rel": worst, **mem}


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------

def _run_worker(python, args, env=None):
    with tempfile.TemporaryDirectory() as d:
        cmd = [python, os.path.abspath(__file__), "--worker-out", d] + args
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            raise RuntimeError(f"worker {' '.join(args)} failed:\n{p.stderr[-3000:]}")
        res = json.load(open(os.path.join(d, "result.json")))
        arrays = {f[:-4]: np.load(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".npy")}
        return res, arrays


def _gib(b):
    return f"{b / 2 ** 30:.2f}"


def cmd_speed(a):
    rows = []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "src"),
                                         env.get("PYTHONPATH", "")])
    have_nt = a.nt_python and os.path.exists(a.nt_python)
    for N in a.sizes:
        for act in a.activations:
            p, pa = _run_worker(sys.executable, ["--worker", "pdlt", act, str(N),
                                                 str(a.repeats), str(a.threads)], env)
            row = {"N": N, "act": act, "pdlt": p}
            if have_nt:
                nt_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                n, na = _run_worker(a.nt_python, ["--worker", "nt", act, str(N), str(a.repeats),
                                                  "0"], nt_env)
                row["nt"] = n
                row["max_rel_diff"] = max(
                    float(np.max(np.abs(pa[g] - na[g]) / np.abs(na[g]))) for g in ("K", "Theta"))
            rows.append(row)
            nt = row.get("nt")
            print(f"N={N:5d} {act:5s} pdlt warm {p['warm']:7.3f} s (first {p['first']:7.3f}) "
                  f"RSS {_gib(p['rss'])} GiB" + (
                      f" | NT warm {nt['warm']:7.3f} s (first {nt['first']:7.3f}) RSS "
                      f"{_gib(nt['rss'])} GiB | NT/pdlt {nt['warm'] / p['warm']:.2f}x | "
                      f"max rel diff {row['max_rel_diff']:.1e}" if nt else ""), flush=True)
    if not have_nt:
        print("neural-tangents not found (--nt-python): pdlt only")
    return rows


def cmd_large(a):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "src"),
                                         env.get("PYTHONPATH", "")])
    res, _ = _run_worker(sys.executable, ["--worker", "large", "relu", str(a.n), "0",
                                          str(a.threads), a.scratch], env)
    print(f"N={a.n} depth {DEPTH} relu, K and Theta (last layer) to memmaps in {a.scratch}: "
          f"{res['time']:.1f} s, peak RSS {_gib(res['rss'])} GiB (anonymous "
          f"{_gib(res['rss_anon'])} GiB, file-backed memmap pages {_gib(res['rss_file'])} GiB), "
          f"{_gib(res['bytes_on_disk'])} GiB on disk, spot check max rel err "
          f"{res['spot_check_max_rel']:.1e}", flush=True)
    if not a.keep:
        for g in ("K", "Theta"):
            os.remove(os.path.join(a.scratch, f"{g}_{a.n}.npy"))
    return res


def cmd_ray(a):
    # this checkout's pdlt, for the driver and (through the environment) for Ray's workers
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src"))
    sys.path.insert(0, src)
    os.environ["PYTHONPATH"] = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    import pdlt
    from pdlt.experiment.kernel_distributed import distributed_kernel_matrix
    x = make_inputs(a.n)
    mlp = pdlt.MLP(n0=N0, width=1, depth=DEPTH, activation="relu", C_b=C_B, C_W=2.0,
                   lambda_b=C_B, lambda_W=2.0)
    t0 = time.perf_counter()
    loc = pdlt.kernel_matrix(mlp, x, threads=1)
    t_loc = time.perf_counter() - t0
    import logging

    import ray
    t0 = time.perf_counter()
    ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    t_start = time.perf_counter() - t0
    times = []
    try:
        for _ in range(2):  # the first call also starts the workers (imports)
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                res = distributed_kernel_matrix(mlp, x, os.path.join(d, "kern"), backend="ray",
                                                block_size=a.block, progress=False)
                times.append(time.perf_counter() - t0)
                diff = max(float(np.max(np.abs(res[g] - loc[g]) / np.abs(loc[g])))
                           for g in ("K", "Theta"))
    finally:
        ray.shutdown()
    print(f"N={a.n} relu depth {DEPTH}, blocks of {a.block}: local (1 thread) {t_loc:.2f} s; "
          f"Ray {a.workers} workers: ray.init {t_start:.1f} s, first call {times[0]:.2f} s, "
          f"second call {times[1]:.2f} s; max rel diff to local {diff:.1e}", flush=True)
    return {"local": t_loc, "ray_init": t_start, "ray_first": times[0], "ray_second": times[1],
            "max_rel_diff": diff}


def cmd_regression(a):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "src"),
                                         env.get("PYTHONPATH", "")])
    out = []
    for N in a.sizes:
        if a.cache == "pass":
            res, _ = _run_worker(sys.executable, ["--worker", "regression", "relu", str(N), "0",
                                                  str(a.threads), "pass"], env)
            print(f"N={N:6d} one streamed kernel-vector product (relu, depth {DEPTH}): "
                  f"{res['pass_time']:.1f} s, peak RSS anonymous {_gib(res['rss_anon'])} GiB",
                  flush=True)
            out.append(res)
            continue
        res, _ = _run_worker(sys.executable, ["--worker", "regression", "relu", str(N), "0",
                                              str(a.threads), a.cache], env)
        print(f"N={N:6d} CG NNGP regression (relu, depth {DEPTH}, n0 = {a.dim}): "
              f"{res['time']:.1f} s (fit {res['fit_time']:.1f} s), {res['iterations']} iterations, "
              f"{res['kernel_passes']} kernel passes, cached={res['cached']}, peak RSS "
              f"{_gib(res['rss'])} GiB (anonymous {_gib(res['rss_anon'])}), test MSE {res['test_mse']:.3g} "
              f"(predict-the-mean {res['baseline_mse']:.3g}), relative residual "
              f"{res['residual']:.1e}", flush=True)
        out.append(res)
    return out


def _worker_regression(N, threads, cache="auto", dim=8, noise=0.1):
    import pdlt
    from pdlt.learning.large import cg_regression
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N + 1000, dim))
    f = np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]
    y = f + noise * rng.standard_normal(len(f))
    mlp = pdlt.MLP(n0=dim, width=1, depth=DEPTH, activation="relu", C_b=C_B, C_W=2.0)
    sampler = _AnonSampler()
    t0 = time.perf_counter()
    if cache == "pass":  # one streamed kernel-vector product only (cost per CG iteration)
        from pdlt.learning.large import KernelOperator
        op = KernelOperator(mlp, x[:N], noise=noise ** 2, cache=None, threads=threads)
        t0 = time.perf_counter()
        op.matvec(y[:N])
        return {**sampler.stop(), "pass_time": time.perf_counter() - t0, "rss": _peak_rss()}
    fit = cg_regression(mlp, x[:N], y[:N], noise=noise ** 2, threads=threads, tol=1e-6,
                        memory_budget=4 * 2 ** 30, cache=None if cache == "none" else "auto")
    pred = fit.predict(x[N:])
    dt = time.perf_counter() - t0
    mem = sampler.stop()
    return {**mem, "fit_time": fit.seconds, "time": dt, "iterations": fit.iterations, "kernel_passes": fit.kernel_passes,
            "cached": fit.cached, "rss": _peak_rss(), "residual": fit.residual,
            "test_mse": float(np.mean((pred - f[N:]) ** 2)),
            "baseline_mse": float(np.mean((f[N:] - y[:N].mean()) ** 2))}


def cmd_nystrom(a):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "src"),
                                         env.get("PYTHONPATH", "")])
    out = []
    for N in a.sizes:
        if N <= a.exact_max:
            ex, arr = _run_worker(sys.executable, ["--worker", "nystrom", "relu", str(N), "0",
                                                   str(a.threads), "exact"], env)
            print(f"N={N:6d} exact (CG, kernel cached): fit {ex['fit_time']:.1f} s, total "
                  f"{ex['time']:.1f} s, peak RSS anonymous {_gib(ex['rss_anon'])} GiB, test MSE "
                  f"{ex['test_mse']:.4g} (predict-the-mean {ex['baseline_mse']:.3g})", flush=True)
            ex["N"], ex["m"] = N, None
            out.append(ex)
            ref = arr["pred"]
        for m in a.ranks:
            res, arr2 = _run_worker(sys.executable, ["--worker", "nystrom", "relu", str(N), "0",
                                                     str(a.threads), str(m)], env)
            res["N"], res["m"] = N, m
            line = (f"N={N:6d} Nystrom m={m:5d} (rank {res['rank']}): fit {res['fit_time']:.1f} s, "
                    f"fit + predict {res['time']:.1f} s, peak RSS anonymous "
                    f"{_gib(res['rss_anon'])} GiB, test MSE {res['test_mse']:.4g}, "
                    f"tr(k - q)/tr k {res['trace_residual'] / res['trace']:.2e}, certified bound "
                    f"max {res['bound_max']:.2e}")
            if N <= a.exact_max:
                p = arr2["pred"]
                res["max_diff"] = float(np.max(np.abs(p - ref)) / np.max(np.abs(ref)))
                res["rms_diff"] = float(np.sqrt(np.mean((p - ref) ** 2)))
                line += (f", vs exact: max |diff|/max|exact| {res['max_diff']:.2e}, rms diff "
                         f"{res['rms_diff']:.3g}")
            print(line, flush=True)
            out.append(res)
    return out


def _worker_nystrom(N, threads, what, outdir, dim=8, noise=0.1):
    """One fit: ``what`` = "exact" (CG, cached kernel) or the rank m of a Nystrom fit."""
    import pdlt
    from pdlt.learning.large import cg_regression, nystrom_regression
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N + 1000, dim))
    f = np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]
    y = f + noise * rng.standard_normal(len(f))
    mlp = pdlt.MLP(n0=dim, width=1, depth=DEPTH, activation="relu", C_b=C_B, C_W=2.0)
    sampler = _AnonSampler()
    t0 = time.perf_counter()
    extra = {}
    if what == "exact":
        fit = cg_regression(mlp, x[:N], y[:N], noise=noise ** 2, threads=threads, tol=1e-10,
                            memory_budget=4 * 2 ** 30, cache="memory")
        pred = fit.predict(x[N:])
        extra = {"iterations": fit.iterations}
    else:
        fit = nystrom_regression(mlp, x[:N], y[:N], m=int(what), noise=noise ** 2,
                                 threads=threads, memory_budget=5 * 2 ** 30)
        pred, bound = fit.predict(x[N:], return_bound=True)
        extra = {"rank": fit.rank, "trace": fit.trace, "trace_residual": fit.trace_residual,
                 "bound_max": float(np.max(bound)), "bound_median": float(np.median(bound))}
    dt = time.perf_counter() - t0
    mem = sampler.stop()
    np.save(os.path.join(outdir, "pred.npy"), pred)
    return {**mem, **extra, "fit_time": fit.seconds, "time": dt, "rss": _peak_rss(),
            "test_mse": float(np.mean((pred - f[N:]) ** 2)),
            "baseline_mse": float(np.mean((f[N:] - y[:N].mean()) ** 2))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("speed")
    s.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    s.add_argument("--activations", nargs="+", default=["relu", "erf", "gelu"])
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--threads", type=int, default=0, help="pdlt threads (0: CPU count)")
    s.add_argument("--nt-python", default=os.environ.get("PDLT_NT_PYTHON", "/tmp/ntvenv/bin/python"))
    s.add_argument("--json")
    g = sub.add_parser("large")
    g.add_argument("--n", type=int, default=20000)
    g.add_argument("--threads", type=int, default=0)
    g.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "pdlt-kernel-scale"))
    g.add_argument("--keep", action="store_true")
    g.add_argument("--json")
    r = sub.add_parser("ray")
    r.add_argument("--n", type=int, default=2000)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--block", type=int, default=500)
    r.add_argument("--json")
    q = sub.add_parser("regression")
    q.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10000])
    q.add_argument("--threads", type=int, default=0)
    q.add_argument("--dim", type=int, default=8)
    q.add_argument("--cache", choices=["auto", "none", "pass"], default="auto",
                   help="auto: kernel cached in memory when it fits; none: recomputed every "
                        "CG iteration; pass: time one streamed product only")
    q.add_argument("--json")
    ny = sub.add_parser("nystrom")
    ny.add_argument("--sizes", type=int, nargs="+", default=[10000])
    ny.add_argument("--ranks", type=int, nargs="+", default=[500, 1000, 2000])
    ny.add_argument("--exact-max", type=int, default=10000,
                    help="also solve exactly (CG, cached kernel) up to this N")
    ny.add_argument("--threads", type=int, default=0)
    ny.add_argument("--json")
    a = ap.parse_args(argv)
    if a.worker:
        kind, act, N = a.worker[0], a.worker[1], int(a.worker[2])
        rest = a.worker[3:]
        if kind == "pdlt":
            res = _worker_pdlt(act, N, int(rest[0]), a.worker_out, int(rest[1]) or None)
        elif kind == "nt":
            res = _worker_nt(act, N, int(rest[0]), a.worker_out)
        elif kind == "large":
            res = _worker_large(N, rest[2], int(rest[1]) or None, act)
        elif kind == "regression":
            res = _worker_regression(N, int(rest[1]) or None, rest[2])
        elif kind == "nystrom":
            res = _worker_nystrom(N, int(rest[1]) or None, rest[2], a.worker_out)
        else:
            raise SystemExit(f"unknown worker {kind}")
        json.dump(res, open(os.path.join(a.worker_out, "result.json"), "w"))
        return
    if a.cmd is None:
        ap.error("choose speed, large, ray, regression or nystrom")
    res = {"speed": cmd_speed, "large": cmd_large, "ray": cmd_ray,
           "regression": cmd_regression, "nystrom": cmd_nystrom}[a.cmd](a)
    if getattr(a, "json", None):
        json.dump(res, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
