"""Accuracy of the gaussian engine against independent high-precision references.

Usage::

    PYTHONPATH=src python benchmarks/accuracy.py            # all tables (~5 min)
    PYTHONPATH=src python benchmarks/accuracy.py --quick    # skip the 4-variable smooth refs
    PYTHONPATH=src python benchmarks/accuracy.py --cost     # + the flows' cost (minutes)

Every error is relative to the Cauchy-Schwarz (Hoelder) scale of the
expectation, ``prod_k <|f_k|^d>^(1/d)`` for a d-variable ``<f_1 ... f_d>``
(the contract of issue #15: 1e-8 at the default rule), and "estimate" is the
smallest ratio of the engine's own error estimate to the measured error where
the engine reports one, over the entries whose error exceeds 1e-13
(>= 1: the estimate is an upper bound; "inf": no such entry).

References, all independent of the engine's rules:

* one variable (:func:`pdlt.gaussian.expect`): ``mpmath.quad`` at 30 digits,
  split at 0;
* pairs (:func:`pdlt.gaussian.pair_expectations`: closed forms, Mehler
  series, nested quadrature): for N = 2 mpmath (nested ``mpmath.quad``,
  20 digits, inner integral split at the kink); for every pair of N = 2, 3, 4
  inputs the references below with d = 2;
* three and four variables (:func:`pdlt.gaussian.quad_expectations`: every
  entry of the (N, N, N, N) tensor, coinciding inputs merged into powers):
  smooth activations: plain (unpivoted) Cholesky and tensor composite
  Gauss-Legendre on unit panels with node counts from the axis scale
  (``_smooth_reference`` of ``tests/gaussian/test_multi.py``, converged to
  ~1e-13 by doubling); ReLU: nested Gauss-Legendre split at each variable's
  own kink, the innermost variable (the highest power) in closed form by
  truncated Gaussian moments (``_relu_pow_ref`` below).

Inputs: N unit-variance-scale random inputs in 8 dimensions (seed 0), kernel
``K = x x^T / 8`` (diagonal ~1, the regime where Gauss-Hermite alone missed
1e-8 for tanh), and the same kernel x 3.
"""

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
from scipy import special

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gaussian"))

import pdlt  # noqa: E402
from pdlt import gaussian  # noqa: E402
from test_multi import _smooth_reference  # noqa: E402

ACTS = ["relu", "tanh", "gelu", "erf", "swish"]


def _inputs(n, scale=1.0, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, 8))
    x = x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(8)
    return scale * (x @ x.T) / 8


def _cs(fs, K):
    d = len(fs)
    return float(np.prod([float(gaussian.expect(lambda z, f=f: np.abs(f(z)) ** d, k,
                                                kinks=(0.0,))) ** (1.0 / d)
                          for f, k in zip(fs, np.diag(K))]))


# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------

def _mp_funcs(name):
    import mpmath as mp
    return {
        "relu": (lambda z: z if z > 0 else mp.mpf(0), lambda z: mp.mpf(1) if z > 0 else mp.mpf(0)),
        "tanh": (mp.tanh, lambda z: mp.sech(z) ** 2),
        "gelu": (lambda z: z * mp.ncdf(z), lambda z: mp.ncdf(z) + z * mp.npdf(z)),
        "erf": (mp.erf, lambda z: 2 / mp.sqrt(mp.pi) * mp.exp(-z * z)),
        "swish": (lambda z: z / (1 + mp.exp(-z)),
                  lambda z: 1 / (1 + mp.exp(-z)) + z * mp.exp(-z) / (1 + mp.exp(-z)) ** 2),
    }[name]


def _mp_pair(f, g, K11, K12, K22):
    """<f(z1) g(z2)> by nested mpmath.quad: z1 = sqrt(K11) u, z2 = mu(u) + s v."""
    import mpmath as mp
    sd1 = mp.sqrt(K11)
    slope = mp.mpf(K12) / sd1
    s = mp.sqrt(mp.mpf(K22) - mp.mpf(K12) ** 2 / K11)

    def inner(u):
        mu = slope * u
        v0 = -mu / s
        return mp.quad(lambda v: g(mu + s * v) * mp.npdf(v), [-mp.inf, v0, mp.inf])

    return mp.quad(lambda u: f(sd1 * u) * inner(u) * mp.npdf(u), [-mp.inf, 0, mp.inf])


def _trunc_moment(p, m, s):
    """E[(m + s v)_+^p] for v ~ N(0, 1), p = 0..4 (elementwise)."""
    t = m / s
    Ph, ph = special.ndtr(t), np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi)
    if p == 0:
        return Ph
    if p == 1:
        return m * Ph + s * ph
    if p == 2:
        return (m * m + s * s) * Ph + m * s * ph
    if p == 3:
        return (m ** 3 + 3 * m * s * s) * Ph + (m * m * s + 2 * s ** 3) * ph
    if p == 4:
        return (m ** 4 + 6 * m * m * s * s + 3 * s ** 4) * Ph + (m ** 3 * s + 5 * m * s ** 3) * ph
    raise ValueError(p)


def _panels_at(c):
    """Unit panels on [-9, 9] split at the points c (B,): nodes and weights (B, M)."""
    base = np.arange(-9.0, 9.5, 1.0)
    brk = np.sort(np.concatenate([np.broadcast_to(base, (len(c), len(base))),
                                  np.clip(c, -9, 9)[:, None]], 1), 1)
    x, w = np.polynomial.legendre.leggauss(12)
    a, b = brk[:, :-1, None], brk[:, 1:, None]
    u = (0.5 * (a + b) + 0.5 * (b - a) * x).reshape(len(c), -1)
    return u, (0.5 * (b - a) * w).reshape(len(c), -1) * np.exp(-0.5 * u * u) / np.sqrt(2 * np.pi)


def _relu_pow_ref(powers, K):
    """<prod_k relu(z_k)^p_k> (p_k >= 0, p = 0 meaning the step relu'), plain Cholesky,
    outer axes nested Gauss-Legendre split at each variable's own kink, innermost
    variable (put last by the caller) in closed form."""
    L = np.linalg.cholesky(K)
    d = len(powers)

    def f(p, z):
        return (z > 0).astype(float) if p == 0 else np.maximum(z, 0.0) ** p

    # state: weights W and the partial means m_i = sum_{k<j} L_ik u_k of later variables
    def rec(j, W, M):
        if j == d - 1:
            return np.sum(W * _trunc_moment(powers[j], M[..., j], L[j, j]))
        u, w = _panels_at((-M[..., j] / L[j, j]).ravel())
        u = u.reshape(M.shape[:-1] + (-1,))
        w = w.reshape(u.shape)
        z = M[..., j, None] + L[j, j] * u
        Wn = W[..., None] * w * f(powers[j], z)
        Mn = M[..., None, :] + u[..., None] * L[:, j]
        return rec(j + 1, Wn, Mn)

    u1, w1 = _panels_at(np.zeros(1))
    total = 0.0
    for a, wa in zip(u1[0], w1[0]):          # loop the first axis to bound memory
        M = (a * L[:, 0])[None, :]
        W = np.array([wa * f(powers[0], L[0, 0] * a)])
        total += rec(1, W, M) if d > 1 else float(W[0])
    return total


def _entry_reference(name, powers, Ks):
    """Reference for <prod_k sigma(z_k)^p_k> (p_k >= 1) of activation ``name``."""
    act = pdlt.activation(name)
    if name == "relu":
        order = np.argsort(powers, kind="stable")         # highest power innermost
        return _relu_pow_ref([powers[i] for i in order], Ks[np.ix_(order, order)])
    fs = [lambda z, p=p: act.sigma(z) ** p for p in powers]
    return _smooth_reference(fs, Ks)


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------

def one_variable():
    import mpmath as mp
    mp.mp.dps = 30
    print("\n## one variable: gaussian.expect (default) against mpmath.quad (30 digits)")
    print("K in {1e-6, 1e-2, 0.3, 1, 3, 10, 1e3}; f in {sigma, sigma^2, sigma^4, sigma'}")
    print(f"{'activation':10s} {'worst error':>12s} {'ms/call (7 K)':>14s}")
    Ks = [1e-6, 1e-2, 0.3, 1.0, 3.0, 10.0, 1e3]
    for name in ACTS:
        act = pdlt.activation(name)
        fm, dm = _mp_funcs(name)
        worst, tcall = 0.0, 0.0
        for kind in ("s1", "s2", "s4", "d1"):
            p = int(kind[1]) if kind[0] == "s" else 1
            f = act.sigma if kind[0] == "s" else act.d1
            g = fm if kind[0] == "s" else dm
            t = time.perf_counter()
            vals = gaussian.expect(lambda z: f(z) ** p, np.array(Ks), kinks=act.kinks)
            tcall += time.perf_counter() - t
            for K, v in zip(Ks, vals):
                sd = mp.sqrt(K)
                ref = mp.quad(lambda u: g(sd * u) ** p * mp.npdf(u), [-mp.inf, -1, 0, 1, mp.inf])
                cs = mp.sqrt(mp.quad(lambda u: g(sd * u) ** (2 * p) * mp.npdf(u),
                                     [-mp.inf, -1, 0, 1, mp.inf]))
                worst = max(worst, float(abs(v - ref) / cs))
        print(f"{name:10s} {worst:12.1e} {1e3 * tcall / 4:14.2f}")


def pairs_mpmath():
    import mpmath as mp
    mp.mp.dps = 20
    print("\n## pairs, N = 2: pair_expectations against nested mpmath.quad (20 digits)")
    print(f"{'activation':10s} {'scale':>5s} {'<s s> error':>12s} {'<d1 d1> error':>13s}")
    for name in ACTS:
        act = pdlt.activation(name)
        fm, dm = _mp_funcs(name)
        for scale in (1.0, 3.0):
            K = _inputs(2, scale)
            res = gaussian.pair_expectations(act, K, terms=[("sigma", "sigma"), ("d1", "d1")])
            errs = []
            for (fa, f_np, f_mp) in (("sigma", act.sigma, fm), ("d1", act.d1, dm)):
                ref = _mp_pair(f_mp, f_mp, K[0, 0], K[0, 1], K[1, 1])
                errs.append(float(abs(res[(fa, fa)][0, 1] - ref)) / _cs([f_np, f_np], K))
            print(f"{name:10s} {scale:5g} {errs[0]:12.1e} {errs[1]:13.1e}")


def pairs_and_quads(quick=False):
    print("\n## N = 2, 3, 4 inputs: every entry of pair_expectations (sigma sigma, sigma' sigma')"
          "\n## and of quad_expectations (default rule) against the independent references")
    print(f"{'activation':10s} {'N':>2s} {'scale':>5s} {'pairs worst':>12s} {'quads worst':>12s} "
          f"{'est/err min':>11s} {'quad time s':>11s} {'ref time s':>10s}")
    rows = []
    for name in ACTS:
        act = pdlt.activation(name)
        for scale in (1.0, 3.0):
            K4 = _inputs(4, scale)
            refs = {}
            for N in (2, 3, 4):
                K = K4[:N, :N]
                # pairs: every off-diagonal entry and the diagonal
                res = gaussian.pair_expectations(act, K, terms=[("sigma", "sigma"), ("d1", "d1")])
                pw = 0.0
                for a, b in itertools.combinations_with_replacement(range(N), 2):
                    Ks = K[np.ix_([a, b], [a, b])] if a != b else K[np.ix_([a], [a])]
                    for fa in ("sigma", "d1"):
                        f = getattr(act, fa)
                        if a == b:
                            ref = float(gaussian.expect(lambda z: f(z) ** 2, K[a, a], kinks=act.kinks))
                            cs = ref
                        elif name == "relu":
                            p = 1 if fa == "sigma" else 0
                            ref = _relu_pow_ref([p, p], Ks)
                            cs = _cs([f, f], Ks)
                        else:
                            ref = _smooth_reference([f, f], Ks)
                            cs = _cs([f, f], Ks)
                        pw = max(pw, abs(res[(fa, fa)][a, b] - ref) / cs)
                # quads: every sorted quadruple, merged into powers
                if quick and N == 4 and name != "relu":
                    rows.append((name, N, scale, pw, None, None, None, None))
                    print(f"{name:10s} {N:2d} {scale:5g} {pw:12.1e} {'(skipped)':>12s}", flush=True)
                    continue
                t = time.perf_counter()
                T, E = gaussian.quad_expectations(act, K, return_error=True)
                tq = time.perf_counter() - t
                qw, ratio, tr = 0.0, np.inf, 0.0
                for q in itertools.combinations_with_replacement(range(N), 4):
                    distinct = sorted(set(q))
                    powers = [q.count(a) for a in distinct]
                    key = (tuple(distinct), tuple(powers))
                    Ks = K[np.ix_(distinct, distinct)]
                    fs = [lambda z, p=p: act.sigma(z) ** p for p in powers]
                    if key not in refs:
                        t = time.perf_counter()
                        if len(distinct) == 1:
                            refs[key] = float(gaussian.expect(fs[0], Ks[0, 0], kinks=act.kinks))
                        else:
                            refs[key] = _entry_reference(name, powers, Ks)
                        tr += time.perf_counter() - t
                    cs = _cs(fs, Ks)
                    err = abs(T[q] - refs[key]) / cs
                    qw = max(qw, err)
                    if len(distinct) > 1 and err > 1e-13:
                        ratio = min(ratio, E[q] / cs / err)
                rows.append((name, N, scale, pw, qw, ratio, tq, tr))
                print(f"{name:10s} {N:2d} {scale:5g} {pw:12.1e} {qw:12.1e} {ratio:11.1f} "
                      f"{tq:11.3f} {tr:10.1f}", flush=True)
    return rows


def cost():
    for name in ("tanh", "relu", "gelu"):
        x = np.random.default_rng(0).standard_normal((16, 3))
        mlp = pdlt.MLP(n0=3, width=32, depth=10, activation=name)
        t = time.perf_counter()
        f = pdlt.statistics(mlp, x, get=["V", "G1"])
        print(f"V, G1  N=16 depth 10 {name:5s}: {time.perf_counter() - t:7.1f} s, "
              f"max integration_error {f.integration_error.max():.1e}")
    for name in ("tanh", "relu", "gelu"):
        x = np.random.default_rng(0).standard_normal((8, 2))
        crit = pdlt.criticality(name)
        mlp = pdlt.MLP(n0=2, width=32, depth=3, activation=name, C_W=crit.C_W, C_b=crit.C_b)
        t = time.perf_counter()
        pdlt.statistics(mlp, x, get=list("ABDFPQRSTU"))
        print(f"A..U   N=8  depth 3  {name:5s}: {time.perf_counter() - t:7.1f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--cost", action="store_true")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    one_variable()
    pairs_mpmath()
    pairs_and_quads(args.quick)
    if args.cost:
        cost()
