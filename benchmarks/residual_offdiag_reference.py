"""Independent reference for three- and four-variable Gaussian averages at large variance.

``python benchmarks/residual_offdiag_reference.py [--out benchmarks/residual_offdiag_reference.json]``

``<f_1(z_1) ... f_d(z_d)>`` over ``z ~ N(0, K)`` by nested adaptive quadrature
(``scipy.integrate.quad``) in z-space, conditionals one after another:
``z_k | z_1..z_(k-1) ~ N(m_k, v_k)`` (Schur complements, numpy only), each level on
``[m_k - 9 sqrt(v_k), m_k + 9 sqrt(v_k)]`` with breakpoints at ``z_k = 0`` (the
activation's own transition) and where every later conditional mean crosses 0, each graded
``p +- 2^j`` (j >= -3) over the range. The last
variable is gelu in some cases: its conditional average is closed form,
``<gelu(m + s u)> = m Phi(m / c) + s^2 phi(m / c) / c``, ``c = sqrt(1 + s^2)``. No pdlt
code is used. ``quad`` at ``epsabs = 1e-14 x scale`` per level; the reference's own
resolution is checked by rerunning with ``epsabs`` 100x larger (``resolution``).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
from scipy import integrate, special

FUNCS = {
    "tanh": np.tanh,
    "d1": lambda z: 4.0 * np.exp(-2.0 * np.abs(z)) / (1.0 + np.exp(-2.0 * np.abs(z))) ** 2,
    "d2": lambda z: -2.0 * np.tanh(z) * FUNCS["d1"](z),
    "tanh2": lambda z: np.tanh(z) ** 2,
    "ztanh": lambda z: z * np.tanh(z),
    "gelu": lambda z: z * special.ndtr(z),
    "tanh_d1": lambda z: np.tanh(z) * FUNCS["d1"](z),
}


def _gelu_closed(m, v):
    s2 = v
    c = math.sqrt(1.0 + s2)
    return m * special.ndtr(m / c) + s2 * math.exp(-0.5 * (m / c) ** 2) / math.sqrt(2 * math.pi) / c


def _conditional(K, k):
    """Coefficients a (k,) and variance v of z_k given z_0..z_(k-1): m = a . z."""
    if k == 0:
        return np.zeros(0), K[0, 0]
    A, b = K[:k, :k], K[:k, k]
    a = np.linalg.lstsq(A, b, rcond=1e-15)[0]
    return a, max(K[k, k] - b @ a, 0.0)


def reference(names, K, epsabs, closed_last=False):
    d = len(names)
    K = np.asarray(K, float)
    cond = [_conditional(K, k) for k in range(d)]
    # conditional mean of every later z_j given z_0..z_k: coefficients, by regression
    proj = {}
    for k in range(d):
        for j in range(k, d):
            A, b = K[:k + 1, :k + 1], K[:k + 1, j]
            proj[k, j] = np.linalg.lstsq(A, b, rcond=1e-15)[0]
    fs = [FUNCS[n] for n in names]

    def level(k, zs):
        a, v = cond[k]
        m = float(a @ zs) if k else 0.0
        if k == d - 1 and closed_last:
            return _gelu_closed(m, v)
        s = math.sqrt(v)
        if s == 0.0:
            return fs[k](m) * (level(k + 1, np.append(zs, m)) if k < d - 1 else 1.0)
        lo, hi = m - 9 * s, m + 9 * s
        pts = [0.0]
        for j in range(k + 1, d):
            c = proj[k, j]
            # E[z_j | z_0..z_k] = c[:k] . zs + c[k] z_k = 0
            if abs(c[k]) > 1e-300:
                pts.append(-(float(c[:k] @ zs) if k else 0.0) / c[k])
        # each transition graded: p +- 2^j (j >= -3), a feature of width >= 1/8 is never
        # straddled by one Kronrod panel
        grade = 2.0 ** np.arange(-3, max(1, math.ceil(math.log2(hi - lo))) + 1)
        pts = sorted({float(q) for p in pts for q in np.concatenate([[p], p - grade, p + grade])
                      if lo < q < hi})

        def integrand(z):
            g = math.exp(-0.5 * ((z - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
            inner = level(k + 1, np.append(zs, z)) if k < d - 1 else 1.0
            return g * float(fs[k](z)) * inner

        val, _ = integrate.quad(integrand, lo, hi, points=pts or None, epsabs=epsabs,
                                epsrel=1e-13, limit=400)
        return val

    return level(0, np.zeros(0))


def cases():
    """(name, functions, K, closed_last, reference functions, reference K): random
    correlations scaled to K ~ 30, 1e3, 1e6. The four-variable cases are of rank 3 (the
    first variable twice, as collinear inputs at one depth; the last nearly determined by
    the others, conditional sd 0.05): the reference integrates the three distinct
    variables with the product of the pair's functions."""
    rng = np.random.default_rng(7)
    out = []
    for kmax in (30.0, 1e3, 1e6):
        A = rng.standard_normal((3, 3)) + 1.5 * np.eye(3)
        C = A @ A.T
        D = np.sqrt(np.diag(C))
        sd = np.sqrt(kmax) * np.linspace(1.0, 0.5, 3)
        K = C / np.outer(D, D) * np.outer(sd, sd)
        for name, fn in (("tanh3", ["ztanh", "tanh", "gelu"]), ("gelu3", ["d1", "tanh2", "gelu"])):
            out.append((f"{name} K={kmax:g}", fn, K, True, fn, K))
        # z2 = (z0 + z1) / 2 + 0.05 e (a trajectory's next depth, nearly determined), and
        # the first variable twice
        T = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
        K3 = T @ K @ T.T + np.diag([0.0, 0.0, 0.05 ** 2])
        i = [0, 0, 1, 2]
        out.append((f"gelu4 K={kmax:g}", ["tanh", "d1", "tanh", "gelu"], K3[np.ix_(i, i)], True,
                    ["tanh_d1", "tanh", "gelu"], K3))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/residual_offdiag_reference.json")
    a = ap.parse_args()
    rows = []
    for name, fn, K, closed, rfn, rK in cases():
        t0 = time.perf_counter()
        scale = 1.0
        for i, n in enumerate(fn):  # Cauchy-Schwarz scale prod <|f|^d>^(1/d), one-variable
            kk = K[i, i]
            sc = integrate.quad(lambda z: abs(FUNCS[n](z)) ** len(fn) * math.exp(-0.5 * z * z / kk)
                                / math.sqrt(2 * math.pi * kk), -12 * math.sqrt(kk),
                                12 * math.sqrt(kk), points=[0.0], epsabs=0, epsrel=1e-13,
                                limit=400)[0]
            scale *= sc ** (1.0 / len(fn))
        v = reference(rfn, rK, 1e-14 * scale, closed)
        v2 = reference(rfn, rK, 1e-12 * scale, closed)
        rows.append({"name": name, "functions": fn, "K": K.tolist(), "value": v,
                     "scale": scale, "resolution": abs(v - v2) / scale})
        print(f"{name}: {v:.15e} scale {scale:.3e} resolution {abs(v - v2) / scale:.1e} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    with open(a.out, "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
