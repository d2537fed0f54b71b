"""Four graded variables at large variance: the 2-D table of ``expect_graded`` (#15, h65).

``python benchmarks/graded_four.py [--part erf,degree,rho,old,genz]``

Four random directions in 4 dimensions (``x ~ N(0, I)``, ``K = s x x^T / max diag``):

* ``erf``: ``<erf z_1 .. erf z_4>`` against the exact orthant form (``erf(z) =
  E sign(z + e)``, ``e ~ N(0, 1/2)``; Plackett's 1-D integral by ``scipy.integrate.quad``,
  no pdlt code), error, estimate, ``rho`` of the pair taken last, CPU seconds;
* ``degree``: the same with the 2-D table at 12 and 10 points a panel (the rule: 16);
* ``rho``: four nearly dependent directions (``x4 = x1 + x2 + x3 + eps w``), the table
  forced at any ``rho``;
* ``old``: tanh and a mixed tanh / tanh' / tanh^2 / gelu product against the old rule (three
  axes point by point) at 12 nodes a panel and its 1-D table of 28 points, and the old
  rule's cost at 10 nodes (~1-2 min a case);
* ``genz``: the orthant reference against Genz's ``multivariate_normal.cdf`` (1e-11).
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings

import numpy as np
from scipy import integrate, special

from pdlt.gaussian import _graded
from pdlt.gaussian._multi import _factor


def sign4(S):
    """<sign y_1 .. sign y_4>, y ~ N(0, S): Price's theorem along D + t (S - D)."""
    S = np.asarray(S, dtype=float)
    off = S - np.diag(np.diag(S))

    def rate(t):
        St = np.diag(np.diag(S)) + t * off
        out = 0.0
        for i, j in itertools.combinations(range(4), 2):
            k, l = [m for m in range(4) if m not in (i, j)]
            B = St[np.ix_([i, j], [i, j])]
            p0 = 1.0 / (2.0 * np.pi * np.sqrt(B[0, 0] * B[1, 1] - B[0, 1] ** 2))
            A = St[np.ix_([k, l], [i, j])]
            C = St[np.ix_([k, l], [k, l])] - A @ np.linalg.solve(B, A.T)
            rho = C[0, 1] / np.sqrt(C[0, 0] * C[1, 1])
            out += off[i, j] * 4.0 * p0 * (2.0 / np.pi) * np.arcsin(rho)
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return integrate.quad(rate, 0.0, 1.0, epsabs=1e-15, epsrel=1e-13, limit=200)[0]


def directions(seed, s):
    x = np.random.default_rng(seed).standard_normal((4, 4))
    G = x @ x.T / 4
    return s * G / np.max(np.diag(G))


def rho(C):
    Lp = _graded._last_pair(_factor(C[None])[1][0])[1]
    return abs(Lp[3, 2]) / max(1.0, Lp[3, 3])


def timed(fs, C):
    t = time.process_time()
    v, e = _graded.expect_graded(fs, C, return_error=True)
    return float(v), float(e), time.process_time() - t


def part_erf():
    print("| seed | K | rho | error | estimate | CPU s (value + estimate) |\n"
          "|---:|---:|---:|---:|---:|---:|")
    for seed in (1, 2, 3, 4):
        for s in (30.0, 1e3, 1e4, 1e6):
            C = directions(seed, s)
            v, e, t = timed([special.erf] * 4, C)
            ref = sign4(C + 0.5 * np.eye(4))
            print(f"| {seed} | {s:.0e} | {rho(C):.2f} | {v - ref:.1e} | {e:.1e} | {t:.1f} |",
                  flush=True)


def part_degree():
    print("| seed | K | 16 points (rule) | 12 | 10 |\n|---:|---:|---:|---:|---:|")
    for seed, s in ((2, 30.0), (2, 1e4), (3, 1e4)):
        C = directions(seed, s)
        ref = sign4(C + 0.5 * np.eye(4))
        row = []
        for n in (16, 12, 10):
            _graded._CHEB2 = n
            row.append(f"{_graded.expect_graded([special.erf] * 4, C) - ref:.1e}")
        _graded._CHEB2 = 16
        print(f"| {seed} | {s:.0e} | " + " | ".join(row) + " |", flush=True)


def part_rho():
    rng = np.random.default_rng(11)
    v, w = rng.standard_normal((3, 4)), rng.standard_normal(4)
    print("| eps | rho | error | estimate |\n|---:|---:|---:|---:|")
    for eps in (1.0, 0.3, 0.1, 0.03):
        x = np.vstack([v, v.sum(0) + eps * w])
        C = 1e4 * x @ x.T / np.max(np.diag(x @ x.T))
        val, e, _ = timed([special.erf] * 4, C)
        print(f"| {eps:g} | {rho(C):.2f} | {val - sign4(C + 0.5 * np.eye(4)):.1e} | {e:.1e} |",
              flush=True)


def part_rank():
    # four directions in three dimensions (N > n0 without a bias): rank 3, the last
    # variable a combination of the first three, c = 0 in the table
    print("| seed | K | rho | error | estimate | CPU s (value + estimate) |\n"
          "|---:|---:|---:|---:|---:|---:|")
    for seed in (0, 1, 2):
        x = np.random.default_rng(seed).standard_normal((4, 3))
        for s in (30.0, 1e3, 1e4, 1e6):
            C = s * x @ x.T / np.max(np.diag(x @ x.T))
            v, e, t = timed([special.erf] * 4, C)
            ref = sign4(C + 0.5 * np.eye(4))
            print(f"| {seed} | {s:.0e} | {rho(C):.2f} | {v - ref:.1e} | {e:.1e} | {t:.1f} |",
                  flush=True)


def part_old():
    d1 = lambda z: 1.0 / np.cosh(z) ** 2                               # noqa: E731
    mixed = [np.tanh, d1, lambda z: np.tanh(z) ** 2, lambda z: z * special.ndtr(z)]
    print("| case | K | new - old(12 nodes) | new est | old(10) - old(12) | CPU s new / old(10) |\n"
          "|---|---:|---:|---:|---:|---:|")
    for name, fs, seed, s in (("tanh^4", [np.tanh] * 4, 1, 1e3),
                              ("tanh, tanh', tanh^2, gelu", mixed, 4, 30.0)):
        C = directions(seed, s)
        with np.errstate(over="ignore"):
            v, e, t = timed(fs, C)
            _graded._TABLE2 = False
            t0 = time.process_time()
            old = float(_graded.expect_graded(fs, C))
            t_old = time.process_time() - t0
            n, c = _graded._NODES, _graded._CHEB
            _graded._NODES, _graded._CHEB = 12, 28
            ref = float(_graded.expect_graded(fs, C))
            _graded._NODES, _graded._CHEB, _graded._TABLE2 = n, c, True
        print(f"| {name} | {s:.0e} | {v - ref:.1e} | {e:.1e} | {old - ref:.1e} "
              f"| {t:.1f} / {t_old:.1f} |", flush=True)


def part_genz():
    from scipy.stats import multivariate_normal
    for seed in (0, 1):
        A = np.random.default_rng(seed).standard_normal((4, 4))
        S = A @ A.T
        tot = 0.0
        for sg in itertools.product([1, -1], repeat=4):
            D = np.diag(sg)
            tot += np.prod(sg) * multivariate_normal.cdf(
                np.zeros(4), mean=np.zeros(4), cov=D @ S @ D, maxpts=20_000_000, abseps=1e-12,
                releps=0)
        print(f"seed {seed}: Plackett {sign4(S):.15f}, Genz {tot:.15f}, diff {tot - sign4(S):.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="erf,degree,rho")
    for p in ap.parse_args().part.split(","):
        globals()[f"part_{p}"]()


if __name__ == "__main__":
    main()
