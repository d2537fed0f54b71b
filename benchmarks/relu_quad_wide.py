"""Rows of the four-variable near-pair form that are not thin, closed form (#15, h66).

``python benchmarks/relu_quad_wide.py [--every K]``

Runs the N = 6 relu case (two inputs 1e-3 apart, width 32, depth 4, ``get=[V, A, D]``,
``error=True``), records every row ``_near_pair_quad`` asks :func:`_quad_row` for, and at
every K-th row of the "default" rule that is not thin (``s3 >= |c33| / 2``) compares

* ``new``: :func:`pdlt.gaussian._multi._quad_row` (inner ``(g_3, g_4)`` average in closed
  form, :func:`_pm_pair_normal`),
* ``former``: the inner average as ``_quad_row`` summed it for these rows until h66 (``g_3``
  on [-11, 11] split at z_2's kink, 3 panels x ``rule[3]`` Gauss-Legendre nodes a side,
  ``g_4`` in closed form), re-implemented here,
* ``ref``: the same outer ``(alpha, R)`` nodes with the inner average by dense
  Gauss-Legendre in ``g_3`` (24 uniform panels on [-12, 12], split at z_2's kink and at
  z_3's mean kink +- 0, 1, 4, 16 widths, 24 nodes each; ``g_4`` in closed form, scipy):
  resolves the inner average to ~1e-16 whatever ``s3 / |c33|``; no engine code but the
  shared outer nodes,

as ``|x - ref|`` over the row's magnitude (integral of ``|integrand|``), with the time
per row. ~3 s a row for ``ref`` (one core).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import special

import pdlt
from pdlt.gaussian import _multi


def f_of(k, u):
    cp, cm, n = k
    return np.where(u > 0, cp, cm) * u ** n


def g4_avg(k, m, s):
    """E[f(m + s g_4)] (own code)."""
    cp, cm, n = k
    t = m / s
    P, p = special.ndtr(t), np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi)
    plus = (P, m * P + s * p, (m * m + s * s) * P + m * s * p)[n]
    full = (np.ones_like(m), m, m * m + s * s)[n]
    return cp * plus + cm * (full - plus)


def outer(key, row, rule):
    """The outer nodes of ``_quad_row`` (shared by all three)."""
    k0, k1 = key[:2]
    (xr, wr, R, wR), _, (xa, wa) = _multi._quad_rule_nodes(rule)
    a, b, phi, c21, c22, s2, c31, c32, c33, s3 = row
    al, wal, h = _multi._quad_angles(row, xa, wa, rule[1])
    ca, sa = np.cos(al), np.sin(al)
    pa = wal * f_of(k0, a * ca) * f_of(k1, b * np.cos(al - phi))
    keep = pa != 0
    ca, sa, pa = ca[keep], sa[keep], pa[keep]
    Rm, wRm = R[None, :], wR[None, :]
    mu2 = (c21 * ca + c22 * sa)[:, None] * Rm
    mu3 = (c31 * ca + c32 * sa)[:, None] * Rm
    return pa[:, None] * wRm * Rm ** (k0[2] + k1[2]), mu2, mu3


def inner_sum(key, row, mu2, mu3, br, q):
    k2, k3 = key[2:]
    s2, c33, s3 = row[5], row[8], row[9]
    x, wx = np.polynomial.legendre.leggauss(q)
    t, w3 = 0.5 * (1 + x), 0.5 * wx
    I = np.zeros(mu2.shape)
    for j in range(br.shape[-1] - 1):
        lo, hi = br[..., j:j + 1], br[..., j + 1:j + 2]
        g3 = lo + (hi - lo) * t
        ww = (hi - lo) * w3 * np.exp(-0.5 * g3 * g3) / np.sqrt(2 * np.pi)
        I += np.sum(ww * f_of(k2, mu2[..., None] + s2 * g3)
                    * g4_avg(k3, mu3[..., None] + c33 * g3, s3), -1)
    return I


def former(key, row, rule):
    w, mu2, mu3 = outer(key, row, rule)
    s2, T = row[5], 11.0
    k2 = np.clip(-mu2 / s2, -T, T)
    br = [np.full(mu2.shape, -T)]
    for lo, hi in ((np.full(mu2.shape, -T), k2), (k2, np.full(mu2.shape, T))):
        br += [lo + (hi - lo) * i / 3 for i in (1, 2, 3)]
    return float(np.sum(w * inner_sum(key, row, mu2, mu3, np.stack(br, -1), rule[3])))


def reference(key, row, rule):
    w, mu2, mu3 = outer(key, row, rule)
    s2, c33, s3, T = row[5], row[8], row[9], 12.0
    br = [np.full(mu2.shape, u) for u in np.linspace(-T, T, 25)]
    br.append(np.clip(-mu2 / s2, -T, T))
    if c33 != 0.0:
        br += [np.clip(-mu3 / c33 + o * s3 / abs(c33), -T, T) for o in (-16, -4, -1, 0, 1, 4, 16)]
    return float(np.sum(w * inner_sum(key, row, mu2, mu3, np.sort(np.stack(br, -1), -1), 24)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=int, default=1)
    args = ap.parse_args()
    orig, seen = _multi._quad_row, set()

    def rec(key, row, rule):
        seen.add((key, row, rule))
        return orig(key, row, rule)

    _multi._quad_row = rec
    x = np.random.default_rng(0).standard_normal((6, 2))
    x[1] = x[0] + 1e-3 * np.array([0.3, -0.5])
    mlp = pdlt.MLP(n0=2, width=32, depth=4, activation="relu", C_b=0.1, C_W=2.0)
    t = time.perf_counter()
    pdlt.statistics(mlp, x, get=["V", "A", "D"], error=True)
    print(f"statistics: {time.perf_counter() - t:.1f} s, {len(seen)} distinct rows")
    _multi._quad_row = orig
    rule = _multi._QUAD_RULES["default"]
    rows = sorted(k for k in seen if k[2] == rule
                  and not k[1][9] < _multi._QUAD_THIN * abs(k[1][8]))[::args.every]
    worst_new = worst_old = 0.0
    t_new = t_old = 0.0
    for key, row, rl in rows:
        _multi._quad_row.cache_clear()
        t0 = time.perf_counter()
        v, mag = _multi._quad_row(key, row, rl)
        t1 = time.perf_counter()
        vo = former(key, row, rl)
        t2 = time.perf_counter()
        vr = reference(key, row, rl)
        t_new, t_old = t_new + t1 - t0, t_old + t2 - t1
        worst_new = max(worst_new, abs(v - vr) / mag)
        worst_old = max(worst_old, abs(vo - vr) / mag)
    n = len(rows)
    print(f"{n} rows not thin (s3/|c33| {min(r[1][9] / abs(r[1][8]) for r in rows):.2f} .. "
          f"{max(r[1][9] / abs(r[1][8]) if r[1][8] else np.inf for r in rows):.3g})")
    print(f"max |new - ref| / mag {worst_new:.2e}   max |former - ref| / mag {worst_old:.2e}")
    print(f"time per row: new {t_new / n * 1e3:.1f} ms, former (this re-implementation) "
          f"{t_old / n * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
