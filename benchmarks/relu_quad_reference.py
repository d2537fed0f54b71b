"""Four-variable ReLU-family averages with one nearly coinciding pair: a reference.

``python benchmarks/relu_quad_reference.py [--write]``

``<f_0(z_0) f_1(z_1) f_2(z_2) f_3(z_3)>`` for piecewise monomials ``f(z) = z^n (c_+ if
z > 0 else c_-)`` (n <= 2) at covariances whose pair (0, 1) has ``1 - rho^2 = 1e-2 ..
1e-10`` (issue #15, N >= 4 entries with four distinct inputs). Shares no code with the
engine: the factor ``z_0 = a g_1``, ``z_1 = b (cos phi g_1 + sin phi g_2)``, ``z_2 = c_21
g_1 + c_22 g_2 + s_2 g_3``, ``z_3 = c_31 g_1 + c_32 g_2 + c_33 g_3 + s_3 g_4`` is computed
from K in mpmath (40 digits, no ``1 - rho^2`` cancellation); then, in float64,
``(g_1, g_2) = R (cos alpha, sin alpha)`` with alpha integrated between the sign changes of
``z_0, z_1`` (the sliver of width phi a piece of its own), R on fixed panels, ``g_3`` split
at ``z_2``'s sign change, and ``g_4`` in closed form (``Phi``, ``phi``): Gauss-Legendre on
every piece of a smooth integrand. Its own accuracy: the same sum at ~1.5x the nodes per
axis (the ``check`` column, ~1e-15).

``--write`` stores the values with K and the functions in ``relu_quad_reference.json``
(read by ``tests/gaussian/test_near_pair_quad.py``); every run prints the engine's
distance to it (default path; the split path at "high") and its stated estimate.
"""

from __future__ import annotations

import argparse
import json
import os

import mpmath as mp
import numpy as np
from scipy import special

mp.mp.dps = 40
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "relu_quad_reference.json")

#: (n, c_+, c_-) per variable
FUNCS = [((0, 1, 0),) * 4,                                   # theta^4
         ((1, 1, 0),) * 4,                                   # relu^4
         ((0, 1, 0), (0, 1, 0), (1, 1, 0), (1, 1, 0)),       # theta theta relu relu
         ((1, 1, 0), (1, 1, 0), (0, 1, 0), (0, 1, 0)),       # relu relu theta theta
         ((1, 1, 0.1),) * 4,                                 # leaky^4
         ((0, 1, 0.1), (1, 1, 0.1), (2, 1, 0.01), (0, 1, 0.1))]
ONE_MINUS_RHO2 = [1e-2, 1e-4, 1e-6, 1e-8, 1e-10]


def kernel(omr2, which=0):
    """A 4x4 covariance: the pair (0, 1) at ``1 - rho^2 = omr2``, two others off its plane."""
    a, b = np.sqrt(1.3), np.sqrt(1.7)
    phi = np.arcsin(np.sqrt(omr2))
    rows = [[(0.5, -0.7, 0.6, 0.0), (-0.3, 0.4, 0.5, 0.8)],
            [(-0.9, 0.2, 0.7, 0.0), (0.6, 0.6, -0.4, 0.5)]][which]
    L = np.array([[a, 0, 0, 0], [b * np.cos(phi), b * np.sin(phi), 0, 0], *rows])
    K = L @ L.T
    return 0.5 * (K + K.T)


def parts(K):
    """The factor of the module doc, from K at 40 digits (floats)."""
    K = [[mp.mpf(float(v)) for v in row] for row in K]
    a, b = mp.sqrt(K[0][0]), mp.sqrt(K[1][1])
    cphi = K[0][1] / (a * b)
    det = K[0][0] * K[1][1] - K[0][1] ** 2
    sphi = mp.sqrt(det) / (a * b)
    phi = mp.atan2(sphi, cphi)
    c21, c31 = K[0][2] / a, K[0][3] / a
    c22 = (K[1][2] / b - cphi * c21) / sphi
    c32 = (K[1][3] / b - cphi * c31) / sphi
    s2 = mp.sqrt(K[2][2] - c21 ** 2 - c22 ** 2)
    c33 = (K[2][3] - c21 * c31 - c22 * c32) / s2
    s3 = mp.sqrt(K[3][3] - c31 ** 2 - c32 ** 2 - c33 ** 2)
    return {k: float(v) for k, v in dict(a=a, b=b, phi=phi, c21=c21, c22=c22, s2=s2, c31=c31,
                                         c32=c32, c33=c33, s3=s3).items()}


def _gl(n):
    return np.polynomial.legendre.leggauss(n)


def _pieces(cuts, q, sub):
    x, w = _gl(q)
    t = np.linspace(0.0, 1.0, sub + 1)
    br = np.unique(np.concatenate([lo + (hi - lo) * t for lo, hi in zip(cuts[:-1], cuts[1:])]))
    lo, hi = br[:-1, None], br[1:, None]
    return (0.5 * (hi + lo) + 0.5 * (hi - lo) * x).ravel(), (0.5 * (hi - lo) * w).ravel()


def _g(f, u):
    n, cp, cm = f
    return np.where(u > 0, cp, cm) * u ** n


def _last(f, m, s):
    """``E[f(m + s w)]``, w standard normal, n <= 2, in closed form."""
    n, cp, cm = f
    t = m / s
    P, p = special.ndtr(t), np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi)
    plus, full = [(P, 1.0), (m * P + s * p, m), ((m * m + s * s) * P + m * s * p, m * m + s * s)][n]
    return cp * plus + cm * (full - plus)


def value(K, fs, scale=1.0):
    """The nested sum at ``scale`` times the base node counts."""
    P = parts(K)
    two_pi = 2 * np.pi
    phi = P["phi"]
    cuts = np.unique(np.concatenate([[0.0, 0.5 * np.pi, 1.5 * np.pi, two_pi],
                                     np.mod([phi + 0.5 * np.pi, phi + 1.5 * np.pi], two_pi)]))
    al, wal = _pieces(cuts, int(40 * scale), 2)
    R, wR = _pieces(np.array([0.0, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 10.5, 13.5]), int(24 * scale), 1)
    wR = wR * R * np.exp(-0.5 * R * R)
    xg, wg = _gl(int(24 * scale))
    f0, f1, f2, f3 = fs
    total = 0.0
    for i in range(len(al)):
        ca, sa = np.cos(al[i]), np.sin(al[i])
        pre = wal[i] / two_pi * P["a"] ** f0[0] * P["b"] ** f1[0] * _g(f0, ca) \
            * _g(f1, np.cos(al[i] - phi))
        if pre == 0.0:
            continue
        mu2 = R * (P["c21"] * ca + P["c22"] * sa)                  # (nR,)
        mu3 = R * (P["c31"] * ca + P["c32"] * sa)
        kink = np.clip(-mu2 / P["s2"], -12.0, 12.0)               # z_2 = 0 at g_3 = kink
        acc = 0.0
        for lo, hi in ((np.full_like(kink, -12.0), kink), (kink, np.full_like(kink, 12.0))):
            for j in range(4):                                    # 4 panels per side
                l = lo + (hi - lo) * j / 4
                h = lo + (hi - lo) * (j + 1) / 4
                g3 = 0.5 * (h + l)[:, None] + 0.5 * (h - l)[:, None] * xg
                w3 = 0.5 * (h - l)[:, None] * wg * np.exp(-0.5 * g3 * g3) / np.sqrt(2 * np.pi)
                z2 = mu2[:, None] + P["s2"] * g3
                v = _g(f2, z2) * _last(f3, mu3[:, None] + P["c33"] * g3, P["s3"])
                acc = acc + np.sum(w3 * v, axis=1)
        total += pre * np.sum(wR * acc * R ** (f0[0] + f1[0]))
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    from pdlt.gaussian import _multi
    from pdlt.gaussian._multi import PiecewiseMonomial, expect_nd
    if args.write:
        rows = []
        for which in (0, 1):
            for omr2 in ONE_MINUS_RHO2:
                K = kernel(omr2, which)
                for fs in FUNCS:
                    v, v2 = value(K, fs), value(K, fs, 1.5)
                    rows.append({"one_minus_rho2": omr2, "K": K.tolist(), "fs": fs,
                                 "value": repr(float(v)), "check": abs(v - v2)})
        with open(OUT, "w") as fh:
            json.dump(rows, fh, indent=1)
    rows = json.load(open(OUT))
    for r in rows:
        K = np.array(r["K"])
        fs = [PiecewiseMonomial(cp, cm, n) for n, cp, cm in r["fs"]]
        ref = float(r["value"])
        new, err = expect_nd(fs, K, return_error=True)
        _multi._ORTHANT = False
        try:
            split, serr = expect_nd(fs, K, accuracy="high", return_error=True)
        finally:
            _multi._ORTHANT = True
        print(f"1-rho^2 {r['one_minus_rho2']:g} {r['fs']}: ref {ref:.6f} (check {r['check']:.0e}) "
              f"default {abs(new - ref):.1e} (est {err:.1e}), split-high {abs(split - ref):.1e} "
              f"(est {serr:.1e})", flush=True)


if __name__ == "__main__":
    main()
