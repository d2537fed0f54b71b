"""Accuracy and cost of the fourth-derivative source of a nearly coinciding pair (issue #15).

``python benchmarks/d4_source_accuracy.py``

The off-diagonal source ``(1/8) sum V <d^4 (f_a f_b)>`` (f = sigma: G1, f = sigma': H1)
of :meth:`pdlt.theory._averages.LayerAverages.d4_source` at ``K_aa = 1.1, K_bb = 0.9``,
``1 - rho`` from 1e-1 to 1e-5, with a nearly uniform V (all 16 entries 1 plus a
symmetric perturbation of 0.1: what two nearby inputs carry), against an independent
reference:

* smooth activations (tanh, swish, gelu): ``<f^(k)(z_a) f^(4-k)(z_b)>`` by a direct 2-D
  trapezoid rule (h = 0.08 on [-11, 11]^2, converged to ~1e-14: h = 0.05 agrees) of the
  exact derivatives (sympy), no Stein, no series;
* relu: the Hermite form evaluated in 40-digit arithmetic (mpmath) on the exact angular
  moments, from the same double-precision K and V.

"old" is the Hermite form in float64 (what main computes for 1 - rho^2 >= 1e-4; below it
main takes the coinciding limit); "new" is the method chosen per pair now, "est" its
error estimate. Errors are relative to the largest |source| of the pair's three entries.
Cost: wall time of one d4_source call (both f), two inputs, excluding the shared pair
moments of the old path.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

import pdlt
from pdlt.theory._averages import LayerAverages, OneVariableTable, _hermite_source

KAA, KBB = 1.1, 0.9
OMEGAS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)


def _v():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(2, 2, 2, 2))
    E = E + E.transpose(1, 0, 2, 3)
    E = E + E.transpose(0, 1, 3, 2)
    E = E + E.transpose(2, 3, 0, 1)
    return 1.0 + 0.1 * E / np.max(np.abs(E))


def _ref_smooth(name, Kab, of, W):
    import sympy as sp
    z = sp.Symbol("z")
    expr = {"tanh": sp.tanh(z), "swish": z / (1 + sp.exp(-z)),
            "gelu": z * (1 + sp.erf(z / sp.sqrt(2))) / 2}[name]
    o = 0 if of == "s" else 1
    d = [sp.lambdify(z, sp.diff(expr, z, o + k), ["scipy", "numpy"]) for k in range(5)]
    h, L = 0.08, 11.0
    x = np.arange(-L, L + h / 2, h)
    w = h * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
    X, Y = np.meshgrid(x, x, indexing="ij")
    Wt = np.outer(w, w)
    za = np.sqrt(KAA) * X
    zb = Kab / np.sqrt(KAA) * X + np.sqrt(KBB - Kab ** 2 / KAA) * Y
    T = [np.sum(Wt * d[k](za) * d[4 - k](zb)) for k in range(5)]
    Wk = [W[1, 1, 1, 1], W[0, 1, 1, 1], W[0, 0, 1, 1], W[0, 0, 0, 1], W[0, 0, 0, 0]]
    return 0.125 * sum(c * wk * t for c, wk, t in zip((1, 4, 6, 4, 1), Wk, T))


def _ref_relu(Kab, of, W):
    import mpmath as mp
    mp.mp.dps = 40
    deg = 1 if of == "s" else 0
    Kaa, Kbb, Kab = mp.mpf(KAA), mp.mpf(KBB), mp.mpf(Kab)
    sa, sb = mp.sqrt(Kaa), mp.sqrt(Kbb)
    phi = mp.acos(Kab / (sa * sb))
    mm = {}
    for i, j in itertools.product(range(5), repeat=2):
        if i + j not in (0, 2, 4):
            continue
        m, n = i + deg, j + deg
        ang = mp.quad(lambda a: mp.cos(a) ** m * mp.cos(a - phi) ** n,
                      [phi - mp.pi / 2, mp.pi / 2]) / (2 * mp.pi)
        mm[(i, j)] = (2 ** (mp.mpf(m + n) / 2) * mp.gamma(1 + mp.mpf(m + n) / 2)
                      * sa ** m * sb ** n * ang)
    det = Kaa * Kbb - Kab ** 2
    Lam = [[Kbb / det, -Kab / det], [-Kab / det, Kaa / det]]

    def ey(idx):        # <F prod_k (Lam z)_idx[k]>
        tot = mp.mpf(0)
        for c in itertools.product((0, 1), repeat=len(idx)):
            coef = mp.mpf(1)
            for b, cc in zip(idx, c):
                coef *= Lam[b][cc]
            i = c.count(0)
            tot += coef * mm[(i, len(idx) - i)]
        return tot
    tot = mp.mpf(0)
    pairs = (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2)))
    for b in itertools.product((0, 1), repeat=4):
        t = ey(b)
        for p1, p2 in pairs:
            t -= ey((b[p1[0]], b[p1[1]])) * Lam[b[p2[0]]][b[p2[1]]]
            t -= ey((b[p2[0]], b[p2[1]])) * Lam[b[p1[0]]][b[p1[1]]]
            t += Lam[b[p1[0]]][b[p1[1]]] * Lam[b[p2[0]]][b[p2[1]]] * mm[(0, 0)]
        tot += mp.mpf(float(W[b])) * t
    return float(tot / 8)


def main():
    V = _v()
    W = (V + np.swapaxes(V, 1, 2) + np.swapaxes(V, 1, 3)) / 3.0
    print(f"{'act':6s} {'1-rho':>6s} f  {'old err':>8s} {'new err':>8s} {'new est':>8s} "
          "method    ms")
    for name in ("tanh", "swish", "gelu", "relu"):
        act = pdlt.activation(name)
        for om in OMEGAS:
            Kab = (1 - om) * np.sqrt(KAA * KBB)
            K = np.array([[KAA, Kab], [Kab, KBB]])
            avg = LayerAverages(act, K, OneVariableTable(act, np.diag(K).copy()).at(slice(None)))
            t0 = time.perf_counter()
            Qs = {of: avg.d4_source(V, of) for of in "sp"}
            ms = 1e3 * (time.perf_counter() - t0)
            for of in "sp":
                Q = Qs[of]
                ref = (_ref_relu(Kab, of, W) if name == "relu"
                       else _ref_smooth(name, Kab, of, W))
                mm = {k: np.array([v[0, 1]]) for k, v in avg._pair_moments(of).items()}
                old, _ = _hermite_source(W[None], np.array([KAA]), np.array([KBB]), np.array([Kab]),
                                         np.array([KAA * KBB - Kab ** 2]), mm, 0.0)
                scale = max(abs(ref), abs(Q[0, 0]), abs(Q[1, 1]))
                print(f"{name:6s} {om:6.0e} {of}  {abs(old[0] - ref) / scale:8.1e} "
                      f"{abs(Q[0, 1] - ref) / scale:8.1e} {avg.d4_error[of][0, 1] / scale:8.1e} "
                      f"{avg.d4_method[of][0, 1]:9s} {ms:.0f}")


if __name__ == "__main__":
    main()
