"""elu ``<sigma sigma sigma sigma>`` of four variables with a near pair: how far off is the engine?

``python benchmarks/elu_quad_check.py``

The structure of ``relu_quad_reference.py`` (mpmath factor of K, ``(g_1, g_2)`` polar with
the pair's sliver a piece of its own, R on panels, ``g_3`` split at ``z_2``'s kink, ``g_4``
in closed form: ``E[elu(m + s w)] = m Phi(t) + s phi(t) + e^(m + s^2/2) Phi(-t - s) -
Phi(-t)``, ``t = m / s``) with the first two slots evaluated along each ray (elu is not
homogeneous). Prints the engine's distance (``quad_expectations``, default) and estimate.
Not stored, not a test: h58 measured it to say what is left (benchmarks/README.md).
"""

from __future__ import annotations

import numpy as np
from scipy import special

import relu_quad_reference as R


def elu(u):
    return np.where(u > 0, u, np.expm1(np.minimum(u, 0.0)))


def elu_last(m, s):
    t = m / s
    P = special.ndtr(t)
    plus = m * P + s * np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi)
    return plus + np.exp(m + 0.5 * s * s) * special.ndtr(-t - s) - special.ndtr(-t)


def value(K, scale=1.0):
    P = R.parts(K)
    two_pi, phi = 2 * np.pi, P["phi"]
    cuts = np.unique(np.concatenate([[0.0, 0.5 * np.pi, 1.5 * np.pi, two_pi],
                                     np.mod([phi + 0.5 * np.pi, phi + 1.5 * np.pi], two_pi)]))
    al, wal = R._pieces(cuts, int(40 * scale), 2)
    Rr, wR = R._pieces(np.array([0.0, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 10.5, 13.5]), int(24 * scale), 1)
    wR = wR * Rr * np.exp(-0.5 * Rr * Rr)
    xg, wg = R._gl(int(24 * scale))
    total = 0.0
    for i in range(len(al)):
        ca, sa = np.cos(al[i]), np.sin(al[i])
        pre = wal[i] / two_pi * elu(P["a"] * ca * Rr) * elu(P["b"] * np.cos(al[i] - phi) * Rr)
        mu2 = Rr * (P["c21"] * ca + P["c22"] * sa)
        mu3 = Rr * (P["c31"] * ca + P["c32"] * sa)
        kink = np.clip(-mu2 / P["s2"], -12.0, 12.0)
        acc = 0.0
        for lo, hi in ((np.full_like(kink, -12.0), kink), (kink, np.full_like(kink, 12.0))):
            for j in range(4):
                l, h = lo + (hi - lo) * j / 4, lo + (hi - lo) * (j + 1) / 4
                g3 = 0.5 * (h + l)[:, None] + 0.5 * (h - l)[:, None] * xg
                w3 = 0.5 * (h - l)[:, None] * wg * np.exp(-0.5 * g3 * g3) / np.sqrt(2 * np.pi)
                v = elu(mu2[:, None] + P["s2"] * g3) * elu_last(mu3[:, None] + P["c33"] * g3, P["s3"])
                acc = acc + np.sum(w3 * v, axis=1)
        total += np.sum(wR * pre * acc)
    return total


def main():
    import pdlt
    from pdlt.gaussian._multi import quad_expectations
    act = pdlt.MLP(n0=2, width=8, depth=1, activation="elu").activation
    for which in (0, 1):
        for omr2 in (0.3, 1e-2, 1e-4, 1e-6, 1e-8):
            K = R.kernel(omr2, which)
            ref, ref2 = value(K), value(K, 1.5)
            T, E = quad_expectations(act, K, return_error=True)
            print(f"K{which} 1-rho^2 {omr2:g}: ref {ref:.12f} (check {abs(ref - ref2):.0e}) "
                  f"engine {abs(T[0, 1, 2, 3] - ref):.1e} (estimate {E[0, 1, 2, 3]:.1e})", flush=True)


if __name__ == "__main__":
    main()
