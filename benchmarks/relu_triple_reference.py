"""Three-variable ReLU-family averages with one nearly coinciding pair: a 30-digit reference.

``python benchmarks/relu_triple_reference.py [--write]``

``<f_0(z_0) f_1(z_1) f_2(z_2)>`` for piecewise monomials ``f(z) = z^n (c_+ if z > 0 else
c_-)`` (the entries of the four-point tensors of three ReLU-family inputs), at covariances
whose pair (0, 1) has ``1 - rho = 1e-2 .. 1e-12`` and 0 (collinear), the third variable
off the pair's plane. The reference shares no code with the engine
(``pdlt.gaussian._multi._near_pair_triple`` integrates over the unit sphere): in mpmath,
with ``z_0 = a g_1``, ``z_1 = b (cos phi g_1 + sin phi g_2)``, ``z_2 = c_1 g_1 + c_2 g_2
+ s g_3`` computed from K at 40 digits, and ``(g_1, g_2) = R (cos alpha, sin alpha)``, the
average over ``g_3`` and R is a closed form (:func:`_radial`: ``Phi``, ``atan`` and Gamma
functions) and alpha is integrated by ``mp.quad`` between the sign changes of ``z_0, z_1``
(the sliver of width phi a piece of its own). ``--write`` stores the values (30 digits) with K and the functions in
``relu_triple_reference.json`` (read by ``tests/gaussian/test_near_pair_triple.py``);
every run prints the engine's distance to it (new path, and the orthant / split path).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import mpmath as mp
import numpy as np

mp.mp.dps = 40
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "relu_triple_reference.json")

#: (n, c_+, c_-) per variable
FUNCS = [((0, 1, 0), (0, 1, 0), (0, 1, 0)),          # theta theta theta
         ((1, 1, 0), (1, 1, 0), (0, 1, 0)),          # relu relu theta
         ((0, 1, 0), (0, 1, 0), (2, 1, 0)),          # theta theta relu^2
         ((2, 1, 0), (0, 1, 0), (1, 1, 0)),          # relu^2 theta relu
         ((0, 1, 0.1), (1, 1, 0.1), (2, 1, 0.01))]   # leaky pieces
ONE_MINUS_RHO = [1e-2, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12, 0.0]


def kernel(omr, sfrac=0.6):
    """A 3x3 covariance: the pair (0, 1) at ``1 - rho = omr``, the third variable with
    conditional standard deviation ``sfrac`` (given the pair) of its coupling."""
    a, b = np.sqrt(1.3), np.sqrt(1.7)
    phi = np.arccos(1.0 - omr) if omr > 0 else 0.0
    c1, c2, s = 0.5, -0.7, sfrac
    L = np.array([[a, 0, 0], [b * np.cos(phi), b * np.sin(phi), 0], [c1, c2, s]])
    K = L @ L.T
    return 0.5 * (K + K.T)


def _g(u, f):
    n, cp, cm = f
    return (cp if u > 0 else cm) * u ** n


def _radial(k, n2, cp, cm, mu, s):
    """``int_0^inf R^k e^(-R^2/2) E_w[f_2(R mu + s w)] dR`` in closed form:
    ``E[(m + s w)^n; m + s w > 0]`` is ``Phi(t)``, ``m Phi(t) + s phi(t)``,
    ``(m^2 + s^2) Phi(t) + m s phi(t)`` (n = 0, 1, 2; ``t = m / s``), and with
    ``lam = mu / s``: ``int R^j e^(-R^2/2) Phi(lam R)`` by parts from
    ``sqrt(2 pi) (1/4 + atan(lam) / (2 pi))`` and ``1/2 + lam / (2 sqrt(1 + lam^2))``."""
    lam = mu / s
    C = lambda j: mp.power(2, mp.mpf(j - 1) / 2) * mp.gamma(mp.mpf(j + 1) / 2)  # noqa: E731
    Bf = lambda j: C(j) / (mp.sqrt(2 * mp.pi) * mp.power(1 + lam * lam, mp.mpf(j + 1) / 2))  # noqa: E731
    A = [mp.sqrt(2 * mp.pi) * (mp.mpf(1) / 4 + mp.atan(lam) / (2 * mp.pi)),
         mp.mpf(1) / 2 + lam / (2 * mp.sqrt(1 + lam * lam))]
    for j in range(2, k + 3):
        A.append((j - 1) * A[j - 2] + lam * Bf(j - 1))
    if n2 == 0:
        plus, full = A[k], C(k)
    elif n2 == 1:
        plus, full = mu * A[k + 1] + s * Bf(k), mu * C(k + 1)
    else:
        plus = mu * mu * A[k + 2] + s * s * A[k] + mu * s * Bf(k + 1)
        full = mu * mu * C(k + 2) + s * s * C(k)
    return cp * plus + cm * (full - plus)


def reference(K, fs):
    K = [[mp.mpf(float(v)) for v in row] for row in K]
    a, b = mp.sqrt(K[0][0]), mp.sqrt(K[1][1])
    cphi = K[0][1] / (a * b)
    sphi = mp.sqrt(max(1 - cphi * cphi, mp.mpf(0)))
    phi = mp.atan2(sphi, cphi)
    c1 = K[0][2] / a
    c2 = (K[1][2] / b - cphi * c1) / sphi if sphi > 0 else mp.mpf(0)
    s = mp.sqrt(K[2][2] - c1 * c1 - c2 * c2)
    f0, f1, f2 = fs

    def inner(al):
        u, v = mp.cos(al), mp.cos(al - phi)
        mu = c1 * mp.cos(al) + c2 * mp.sin(al)
        g = _g(u, f0) * _g(v, f1) * a ** f0[0] * b ** f1[0]
        return g * _radial(1 + f0[0] + f1[0], f2[0], f2[1], f2[2], mu, s)

    two_pi = 2 * mp.pi
    cuts = sorted({mp.mpf(0), mp.pi / 2, 3 * mp.pi / 2, two_pi,
                   (phi + mp.pi / 2) % two_pi, (phi + 3 * mp.pi / 2) % two_pi})
    # (g_1, g_2) density: e^(-R^2/2) R dR d alpha / (2 pi), the radial factor above
    return mp.quad(inner, cuts) / two_pi


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    from pdlt.gaussian import _multi
    from pdlt.gaussian._multi import PiecewiseMonomial, expect_nd
    if args.write:
        rows = []
        for omr in ONE_MINUS_RHO:
            K = kernel(omr)
            for fs in FUNCS:
                t = time.time()
                v = reference(K, fs)
                rows.append({"one_minus_rho": omr, "K": K.tolist(), "fs": fs,
                             "value": mp.nstr(v, 30)})
                print(f"1 - rho {omr:g} {fs}: {mp.nstr(v, 20)} ({time.time() - t:.1f} s)", flush=True)
        with open(OUT, "w") as fh:
            json.dump(rows, fh, indent=1)
    rows = json.load(open(OUT))
    old = _multi._near_pair_triple
    for r in rows:
        K = np.array(r["K"])
        fs = [PiecewiseMonomial(cp, cm, n) for n, cp, cm in r["fs"]]
        ref = float(r["value"])
        new, err = expect_nd(fs, K, return_error=True)
        _multi._near_pair_triple = _multi._piecewise_path
        try:
            before = expect_nd(fs, K)
        finally:
            _multi._near_pair_triple = old
        print(f"1 - rho {r['one_minus_rho']:g} {r['fs']}: new {abs(new - ref):.1e} "
              f"(estimate {err:.1e}), orthant/split {abs(before - ref):.1e}")


if __name__ == "__main__":
    main()
