"""Benchmark: infinite-width kernel (NNGP) and NTK of a deep MLP, pdlt vs neural-tangents.

For N random inputs (n0 = 64, standard normal, fixed seed) and a depth-10 MLP
it times ``pdlt.flow(mlp, x, susceptibilities=False)`` (K and Theta at every
layer, as neural-tangents computes them; the last layer is
compared) and measures the maximum relative error of K^(L) and Theta^(L)
against a converged reference: the same flow restricted to a subsample of the
inputs with every pair expectation done by nested quadrature
(``pair_expectations(..., method="quadrature")``, error below 1e-13; a pair's
flow only involves its own 2x2 kernel, so the restriction is exact).

When a Python with neural-tangents is available (``--nt-python``, default
``/tmp/ntvenv/bin/python``; see benchmarks/README.md for the install), the same
architectures run through neural-tangents in a subprocess of this script
(arrays are exchanged as .npy files): ``stax.Dense(1, W_std=sqrt(C_W),
b_std=sqrt(C_b), parameterization='ntk')`` between activations, its closed
forms for ReLU, Erf and Gelu and ``stax.ElementwiseNumerical(fn, deg=25)`` for
tanh and swish. That parameterization is pdlt's with ``lambda_b = C_b`` and
``lambda_W = C_W``; before any comparison the script checks that the two agree
to 1e-8 on a two-input ReLU network and refuses to compare otherwise.

Usage::

    flock /tmp/pdlt-heavy.lock nice python benchmarks/kernel.py --sizes 100 1000
    python benchmarks/kernel.py --sizes 1000 --activations tanh swish --nt-dtype float32

The script is also its own neural-tangents worker (``--nt-worker``, run with
the neural-tangents Python; it imports neither pdlt nor anything outside that
environment).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ACTIVATIONS = ("relu", "erf", "tanh", "gelu", "swish")
# one documented setting per activation: C_b = 0.1 everywhere; C_W = 2 for the
# ReLU-like activations (critical for ReLU), C_W = 1 for the odd saturating
# ones (critical for tanh at C_b = 0); lambda_b = C_b, lambda_W = C_W
C_B = 0.1
C_W = {"relu": 2.0, "gelu": 2.0, "swish": 2.0, "erf": 1.0, "tanh": 1.0}
NT_LAYER = {"relu": "closed form (stax.Relu)", "erf": "closed form (stax.Erf)",
            "gelu": "closed form (stax.Gelu)",
            "tanh": "ElementwiseNumerical(deg=25)", "swish": "ElementwiseNumerical(deg=25)"}
N0 = 64
SEED = 0
DEFAULT_NT_PYTHON = "/tmp/ntvenv/bin/python"


def make_inputs(N, seed=SEED):
    """(N, n0) standard-normal inputs; the first N rows of one fixed draw."""
    return np.random.default_rng(seed).standard_normal((max(N, 1000), N0))[:N]


# ---------------------------------------------------------------------------
# neural-tangents worker (runs in the neural-tangents virtual environment)
# ---------------------------------------------------------------------------

def _nt_worker(inp, outdir):
    """Compute NNGP/NTK with neural-tangents for each requested activation."""
    spec = json.load(open(os.path.join(inp, "spec.json")))
    import jax
    # the convention check always runs in float64; the timed runs in spec["dtype"]
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from neural_tangents import stax

    dtype = jnp.float64 if spec["dtype"] == "float64" else jnp.float32

    def layer(name):
        if name == "relu":
            return stax.Relu()
        if name == "erf":
            return stax.Erf()
        if name == "gelu":
            return stax.Gelu(approximate=False)
        if name == "tanh":
            return stax.ElementwiseNumerical(jnp.tanh, deg=25)
        if name == "swish":
            return stax.ElementwiseNumerical(lambda z: z * jax.nn.sigmoid(z), deg=25)
        raise ValueError(name)

    def kernel_fn(name, depth, cb, cw):
        dense = [stax.Dense(1, W_std=math.sqrt(cw), b_std=math.sqrt(cb), parameterization="ntk")]
        layers = list(dense)
        for _ in range(depth - 1):
            layers += [layer(name)] + dense
        return jax.jit(stax.serial(*layers)[2], static_argnames=("get",))

    report = {"jax": jax.__version__}
    try:
        import neural_tangents
        report["neural_tangents"] = neural_tangents.__version__
    except AttributeError:  # pragma: no cover
        pass
    # convention check: two inputs, ReLU, depth 3
    x2 = np.load(os.path.join(inp, "x2.npy"))
    k = kernel_fn("relu", 3, spec["check_cb"], spec["check_cw"])(jnp.asarray(x2, jnp.float64),
                                                                None, get=("nngp", "ntk"))
    np.save(os.path.join(outdir, "check_K.npy"), np.asarray(k.nngp, float))
    np.save(os.path.join(outdir, "check_Theta.npy"), np.asarray(k.ntk, float))
    jax.config.update("jax_enable_x64", spec["dtype"] == "float64")
    for N in spec["sizes"]:
        x = jnp.asarray(np.load(os.path.join(inp, f"x{N}.npy")), dtype)
        for name in spec["activations"]:
            fn = kernel_fn(name, spec["depth"], spec["cb"], spec["cw"][name])
            times = []
            for _ in range(1 + spec["repeats"]):
                t0 = time.perf_counter()
                k = fn(x, None, get=("nngp", "ntk"))
                k.ntk.block_until_ready()
                times.append(time.perf_counter() - t0)
            np.save(os.path.join(outdir, f"K_{name}_{N}.npy"), np.asarray(k.nngp, float))
            np.save(os.path.join(outdir, f"Theta_{name}_{N}.npy"), np.asarray(k.ntk, float))
            report[f"{name}_{N}"] = {"first": times[0], "warm": min(times[1:])}
            print(f"  [nt] {name:6s} N={N:5d} first call {times[0]:8.3f} s, "
                  f"warm {min(times[1:]):8.3f} s", flush=True)
    json.dump(report, open(os.path.join(outdir, "times.json"), "w"))


# ---------------------------------------------------------------------------
# pdlt side
# ---------------------------------------------------------------------------

def mlp_for(name, depth=10):
    import pdlt
    cw = C_W[name]
    return pdlt.MLP(n0=N0, width=100, depth=depth, activation=name, C_b=C_B, C_W=cw,
                    lambda_b=C_B, lambda_W=cw)


def reference_flow(mlp, x):
    """Last-layer K and Theta of the flow with every pair by nested quadrature."""
    from pdlt import gaussian
    from pdlt.theory.kernel import first_layer
    act = mlp.activation
    K, Theta = first_layer(mlp, x)
    for l in range(1, mlp.depth):
        e = gaussian.pair_expectations(act, K, (("sigma", "sigma"), ("d1", "d1")),
                                       method="quadrature")
        ss, dd = e[("sigma", "sigma")], e[("d1", "d1")]
        K, Theta = (mlp.C_b[l] + mlp.C_W[l] * ss,
                    mlp.lambda_b[l] + mlp.lambda_W[l] * ss + mlp.C_W[l] * dd * Theta)
    return K, Theta


def subsample(x, n_sub):
    """Evenly spaced inputs plus the most collinear pair (largest |cos|)."""
    N = len(x)
    idx = set(np.linspace(0, N - 1, max(n_sub - 2, 2)).astype(int).tolist())
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = np.abs(xn @ xn.T)
    np.fill_diagonal(c, 0)
    a, b = np.unravel_index(np.argmax(c), c.shape)
    idx |= {int(a), int(b)}
    return np.array(sorted(idx))


def max_rel_err(A, B):
    return float(np.max(np.abs(A - B) / np.abs(B)))


def time_pdlt(mlp, x, repeats):
    import pdlt
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        # K and Theta only, as neural-tangents computes (no per-input chi's)
        f = pdlt.flow(mlp, x, susceptibilities=False)
        times.append(time.perf_counter() - t0)
    return min(times), f[-1].K, f[-1].Theta


def run_nt(nt_python, sizes, activations, depth, dtype, repeats, xs):
    """Run the worker in the neural-tangents Python; returns results or None."""
    if not nt_python or not os.path.exists(nt_python):
        print(f"neural-tangents Python not found ({nt_python!r}): pdlt only. "
              "See benchmarks/README.md to install it.")
        return None
    tmp = tempfile.mkdtemp(prefix="pdlt-kbench-")
    inp, out = os.path.join(tmp, "in"), os.path.join(tmp, "out")
    os.makedirs(inp)
    os.makedirs(out)
    for N in sizes:
        np.save(os.path.join(inp, f"x{N}.npy"), xs[N])
    np.save(os.path.join(inp, "x2.npy"), make_inputs(2, seed=SEED + 1))
    json.dump({"sizes": list(sizes), "activations": list(activations), "depth": depth,
               "cb": C_B, "cw": C_W, "dtype": dtype, "repeats": repeats,
               "check_cb": C_B, "check_cw": 2.0}, open(os.path.join(inp, "spec.json"), "w"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    proc = subprocess.run([nt_python, os.path.abspath(__file__), "--nt-worker", inp, out],
                          env=env, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        print("neural-tangents run failed; pdlt only. stderr tail:\n" + proc.stderr[-2000:])
        return None
    res = {"times": json.load(open(os.path.join(out, "times.json"))), "dir": out}
    return res


def check_conventions(nt):
    """Two inputs, ReLU, depth 3: pdlt and neural-tangents must agree to 1e-8."""
    import pdlt
    x2 = make_inputs(2, seed=SEED + 1)
    mlp = pdlt.MLP(n0=N0, width=100, depth=3, activation="relu", C_b=C_B, C_W=2.0,
                   lambda_b=C_B, lambda_W=2.0)
    f = pdlt.flow(mlp, x2)
    Knt = np.load(os.path.join(nt["dir"], "check_K.npy"))
    Tnt = np.load(os.path.join(nt["dir"], "check_Theta.npy"))
    err = max(max_rel_err(Knt, f[-1].K), max_rel_err(Tnt, f[-1].Theta))
    print(f"convention check (2 inputs, ReLU, depth 3, C_b=lambda_b={C_B}, C_W=lambda_W=2): "
          f"max relative difference pdlt vs neural-tangents = {err:.2e}")
    return err


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--activations", nargs="+", default=list(ACTIVATIONS), choices=ACTIVATIONS)
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3,
                   help="timed repetitions (best is reported); neural-tangents runs one "
                        "extra first call that includes compilation")
    p.add_argument("--nt-repeats", type=int, default=None,
                   help="warm neural-tangents repetitions (default: --repeats)")
    p.add_argument("--ref-inputs", type=int, default=10,
                   help="inputs in the quadrature reference subsample")
    p.add_argument("--nt-python", default=os.environ.get("PDLT_NT_PYTHON", DEFAULT_NT_PYTHON))
    p.add_argument("--nt-dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--no-nt", action="store_true", help="skip neural-tangents")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--nt-worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.nt_worker:
        _nt_worker(*args.nt_worker)
        return 0

    import pdlt
    print(f"pdlt {getattr(pdlt, '__version__', '?')}, numpy {np.__version__}, "
          f"{platform.machine()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print(f"depth {args.depth}, n0 {N0}, inputs N(0,1) seed {SEED}, C_b = lambda_b = {C_B}, "
          f"C_W = lambda_W = {C_W}")
    xs = {N: make_inputs(N) for N in args.sizes}
    nt = None
    if not args.no_nt:
        nt_rep = args.repeats if args.nt_repeats is None else args.nt_repeats
        print(f"neural-tangents ({args.nt_dtype}) ...", flush=True)
        nt = run_nt(args.nt_python, args.sizes, args.activations, args.depth, args.nt_dtype,
                    nt_rep, xs)
        if nt is not None and not check_conventions(nt) <= 1e-8:
            print("conventions disagree: neural-tangents results are NOT compared")
            nt = None
    rows = []
    for N in args.sizes:
        x = xs[N]
        sub = subsample(x, args.ref_inputs)
        for name in args.activations:
            mlp = mlp_for(name, args.depth)
            t, K, Theta = time_pdlt(mlp, x, args.repeats)
            t0 = time.perf_counter()
            Kr, Tr = reference_flow(mlp, x[sub])
            t_ref = time.perf_counter() - t0
            ix = np.ix_(sub, sub)
            err = max(max_rel_err(K[ix], Kr), max_rel_err(Theta[ix], Tr))
            row = {"activation": name, "N": N, "pdlt_s": t, "pdlt_err": err,
                   "ref_pairs": len(sub) * (len(sub) + 1) // 2, "ref_s": t_ref}
            if nt is not None:
                tt = nt["times"][f"{name}_{N}"]
                Kn = np.load(os.path.join(nt["dir"], f"K_{name}_{N}.npy"))
                Tn = np.load(os.path.join(nt["dir"], f"Theta_{name}_{N}.npy"))
                row.update(nt_layer=NT_LAYER[name], nt_s=tt["warm"], nt_first_s=tt["first"],
                           nt_err=max(max_rel_err(Kn[ix], Kr), max_rel_err(Tn[ix], Tr)),
                           ratio=tt["warm"] / t)
            rows.append(row)
            print(_fmt(row), flush=True)
    print()
    print(markdown_table(rows, args.nt_dtype))
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1, sort_keys=True)
    return 0


def _fmt(r):
    s = (f"{r['activation']:6s} N={r['N']:5d}  pdlt {r['pdlt_s']:8.3f} s  err {r['pdlt_err']:.1e}"
         f"  (reference: {r['ref_pairs']} pairs, {r['ref_s']:.1f} s)")
    if "nt_s" in r:
        s += (f"  | NT {r['nt_s']:8.3f} s (first {r['nt_first_s']:.2f} s) err {r['nt_err']:.1e}"
              f"  NT/pdlt {r['ratio']:.1f}x")
    return s


def markdown_table(rows, nt_dtype):
    has_nt = any("nt_s" in r for r in rows)
    head = "| activation | N | pdlt time (s) | pdlt max rel. err |"
    sep = "|---|---:|---:|---:|"
    if has_nt:
        head += (f" NT layer | NT time, warm (s) | NT first call (s) | NT max rel. err |"
                 f" NT / pdlt time |")
        sep += "---|---:|---:|---:|---:|"
    lines = [head, sep]
    for r in rows:
        line = f"| {r['activation']} | {r['N']} | {r['pdlt_s']:.3f} | {r['pdlt_err']:.1e} |"
        if has_nt:
            line += (f" {r.get('nt_layer', '')} ({nt_dtype}) | {r['nt_s']:.3f} |"
                     f" {r['nt_first_s']:.2f} | {r['nt_err']:.1e} | {r['ratio']:.1f} |")
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
