"""elu: three-variable averages with one nearly coinciding pair, an independent reference.

``python benchmarks/elu_triple_reference.py [--write]``

``<f_0(z_0) f_1(z_1) f_2(z_2)>`` for f in {elu, elu', elu^2} at the covariances of
``relu_triple_reference.py`` (pair (0, 1) at ``1 - rho = 1e-1 .. 1e-8``, the third variable
off its plane). The reference shares no code with the engine: with ``z_0 = a g_1``,
``z_1 = b (cos phi g_1 + sin phi g_2)``, ``z_2 = c_1 g_1 + c_2 g_2 + s g_3`` (mpmath, 40
digits, from K), the average over ``g_3`` in closed form (``E[elu(m + s w)] = m Phi(t) +
s phi(t) + e^(m + s^2/2) Phi(-t - s) - Phi(-t)``, ``t = m / s``, and the like), and the
pair plane ``(g_1, g_2) = R (cos alpha, sin alpha)`` by nested scipy ``quad`` (float64,
tolerance 1e-14): alpha between the sign changes of ``z_0, z_1``, R on panels. Accuracy:
the same at tolerance 1e-12 agrees to ~1e-14 (printed with --write); one value (1 - rho =
1e-4, (p, p, s)) agrees with mpmath ``quad`` at 20 digits to 1e-16. ``--write`` stores them in
``elu_triple_reference.json`` (read by ``tests/gaussian/test_near_pair_triple.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import math
import warnings

import mpmath as mp
import numpy as np
from scipy import integrate, special

from relu_triple_reference import kernel

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "elu_triple_reference.json")
FUNCS = [("s", "s", "s"), ("p", "p", "p"), ("p", "p", "s"), ("ss", "p", "p")]
ONE_MINUS_RHO = [1e-1, 1e-4, 1e-6, 1e-8]
S_FRAC = [0.6, 0.15]


def _f(name, z):
    if name == "s":
        return z if z > 0 else math.expm1(z)
    if name == "p":
        return 1.0 if z > 0 else math.exp(z)
    return _f("s", z) ** 2


def _cond(name, m, s):
    """``E[f(m + s w)]``, w standard normal, in closed form (scaled complementary error
    functions: no overflow of ``e^(m + s^2/2)`` against a tiny ``Phi``)."""
    t = m / s
    P, d = special.ndtr(t), math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    # e^(k m + k^2 s^2 / 2) Phi(-t - k s) = phi(t) erfcx((t + k s) / sqrt 2) sqrt(pi / 2)
    def ek(k):
        u = t + k * s
        if u < 0:       # e^(...) <= 1 here
            return math.exp(k * m + 0.5 * k * k * s * s) * special.ndtr(-u)
        return d * special.erfcx(u / math.sqrt(2.0)) * math.sqrt(0.5 * math.pi)
    if name == "s":
        return m * P + s * d + ek(1) - special.ndtr(-t)
    if name == "p":
        return P + ek(1)
    return (m * m + s * s) * P + m * s * d + ek(2) - 2 * ek(1) + special.ndtr(-t)


def reference(K, fs, tol=1e-14):
    """In float64 (scipy ``quad``, nested) from the pair-plane decomposition at 40 digits."""
    mp.mp.dps = 40
    Km = [[mp.mpf(float(v)) for v in row] for row in K]
    a, b = mp.sqrt(Km[0][0]), mp.sqrt(Km[1][1])
    cphi = Km[0][1] / (a * b)
    sphi = mp.sqrt(max(1 - cphi * cphi, mp.mpf(0)))
    phi = mp.atan2(sphi, cphi)
    c1 = Km[0][2] / a
    c2 = (Km[1][2] / b - cphi * c1) / sphi if sphi > 0 else mp.mpf(0)
    s = mp.sqrt(Km[2][2] - c1 * c1 - c2 * c2)
    a, b, phi, c1, c2, s = (float(v) for v in (a, b, phi, c1, c2, s))
    f0, f1, f2 = fs

    def radial(al):
        ca, cb, mu = math.cos(al), math.cos(al - phi), c1 * math.cos(al) + c2 * math.sin(al)
        g = lambda R: (R * math.exp(-R * R / 2) * _f(f0, a * R * ca) * _f(f1, b * R * cb)  # noqa: E731
                       * _cond(f2, R * mu, s))
        return sum(integrate.quad(g, lo, hi, epsabs=tol, epsrel=tol, limit=200)[0]
                   for lo, hi in ((0, 2), (2, 5), (5, 9), (9, 14)))

    two_pi = 2 * math.pi
    cuts = sorted({0.0, math.pi / 2, 3 * math.pi / 2, two_pi,
                   (phi + math.pi / 2) % two_pi, (phi + 3 * math.pi / 2) % two_pi})
    return sum(integrate.quad(radial, lo, hi, epsabs=tol, epsrel=tol, limit=200)[0]
               for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo) / two_pi


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore", integrate.IntegrationWarning)   # quad at round-off
    if args.write:
        rows = []
        for omr in ONE_MINUS_RHO:
            for sf in S_FRAC:
                K = kernel(omr, sf)
                for fs in FUNCS:
                    t = time.time()
                    v = reference(K, fs)
                    check = reference(K, fs, 1e-12)
                    rows.append({"one_minus_rho": omr, "s": sf, "K": K.tolist(), "fs": fs,
                                 "value": repr(v)})
                    print(f"1 - rho {omr:g} s {sf} {fs}: {v!r} (tolerance 1e-12 instead: "
                          f"{abs(v - check):.0e}; {time.time() - t:.1f} s)", flush=True)
        with open(OUT, "w") as fh:
            json.dump(rows, fh, indent=1)
    from pdlt.activations import activation
    from pdlt.gaussian import _multi
    from pdlt.gaussian._multi import expect_nd, normal_family
    act = activation("elu")
    fn = {"s": normal_family(act, "sigma"), "p": normal_family(act, "d1")}
    fn["ss"] = fn["s"] * fn["s"]
    for r in json.load(open(OUT)):
        fs = [fn[n] for n in r["fs"]]
        K, ref = np.array(r["K"]), float(r["value"])
        new, err = expect_nd(fs, K, kinks=(0.0,), return_error=True)
        old, oerr = _multi._exp_path(fs, K[None], *_multi._factor(K[None]), (0.0,), "default", True)
        print(f"1 - rho {r['one_minus_rho']:g} s {r['s']} {r['fs']}: new {abs(new - ref):.1e} "
              f"(estimate {err:.1e}), exp path {abs(old[0] - ref):.1e} (estimate {oerr[0]:.1e})")


if __name__ == "__main__":
    main()
