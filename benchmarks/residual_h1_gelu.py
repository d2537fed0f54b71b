"""H1 of residual MLPs at large K: which average drifted, before/after (issue #15, h63).

``python benchmarks/residual_h1_gelu.py [--acts gelu,swish,tanh] [--K1 1.5e3,1.5e5,...]``

Network of ``benchmarks/residual_large_k.py`` (depth 3, width 16, gamma 0.5, C_b 0.1,
C_W 1), one input of first-layer kernel K1. H1 at layer 3 reads the one-neuron covariance
``c = Cov(sigma^2(z^(1)), (sigma'^2)''(z^(2)))`` (``cF2[1, 0]`` of
:func:`pdlt.theory.residual_ntk.residual_ntk_mean`). Columns:

* ``old`` / ``new``: the engine's c (the direct two-depth average of the localized
  ``(sigma'^2)''`` before; one integration by parts, ``_cov_second_derivative_ibp``,
  now), relative to the reference;
* ``ref direct - ref ibp``: the two references against each other (the direct form's
  round-off is ~1e-16 sqrt(K) relative: it cancels, see the docstring of
  ``_cov_second_derivative_ibp``; it resolves the identity at K <= 1.5e7);
* ``H1 old-new``, ``H1 new-ref``: layer-3 H1 over max|H1|, the reference being the new
  engine with c replaced by the reference (H1 is linear in c).

The references are an independent panel Gauss-Legendre rule (numpy/scipy only, no pdlt
code): breakpoints at the integer points |z| <= 40 (the activation's features) and at
multiples of each Gaussian's own standard deviation, n nodes a panel; n = 20 and 32 agree
to 1e-12 relative at K = 1.5e9, 1.5e11.
"""

from __future__ import annotations

import argparse

import numpy as np
from numpy.polynomial.legendre import leggauss
from scipy import special

S2P = np.sqrt(2.0 * np.pi)


def ref_functions(name):
    """sigma, sigma', sigma'', sigma''' in closed form (independent of pdlt)."""
    if name == "gelu":
        phi = lambda z: np.exp(-0.5 * z * z) / S2P                 # noqa: E731
        return (lambda z: z * special.ndtr(z), lambda z: special.ndtr(z) + z * phi(z),
                lambda z: (2 - z * z) * phi(z), lambda z: (z ** 3 - 4 * z) * phi(z))
    if name == "swish":
        e = special.expit

        def d3(z):
            E = e(z)
            de = E * (1 - E)
            return 3 * de * (1 - 2 * E) + z * de * (1 - 6 * E + 6 * E * E)
        return (lambda z: z * e(z), lambda z: e(z) + z * e(z) * (1 - e(z)),
                lambda z: e(z) * (1 - e(z)) * (2 + z * (1 - 2 * e(z))), d3)
    if name == "tanh":
        t = np.tanh
        return (t, lambda z: 1 - t(z) ** 2, lambda z: -2 * t(z) * (1 - t(z) ** 2),
                lambda z: -2 * (1 - t(z) ** 2) * (1 - 3 * t(z) ** 2))
    raise ValueError(name)


def _nodes(center, sd, n):
    feat = np.concatenate([np.linspace(-40, 40, 81), [-200, 200]])
    g = center + sd * np.array([-14, -10, -7, -5, -3.5, -2.5, -1.5, -0.75, 0, 0.75, 1.5,
                                2.5, 3.5, 5, 7, 10, 14])
    feat = feat[(feat > center - 14 * sd) & (feat < center + 14 * sd)]
    b = np.unique(np.concatenate([g, feat]))
    u, w = leggauss(n)
    a, c = b[:-1, None], b[1:, None]
    return (0.5 * (a + c) + 0.5 * (c - a) * u).ravel(), (0.5 * (c - a) * w).ravel()


def e1(f, K, n=20):
    """<f(x)>, Var x = K."""
    sd = np.sqrt(K)
    x, w = _nodes(0.0, sd, n)
    return float(np.sum(w * f(x) * np.exp(-0.5 * (x / sd) ** 2)) / (S2P * sd))


def e2(f, g, Kx, c, Ky, n=20):
    """E[f(x) g(y)], Var x = Kx, Cov(x, y) = c, Var y = Ky: x outer, y | x inner."""
    beta, s = c / Kx, Ky - c * c / Kx
    ss, sx = np.sqrt(s), np.sqrt(Kx)
    x, wx = _nodes(0.0, sx, n)
    tot = 0.0
    for xi, wi in zip(x, wx):
        y, wy = _nodes(beta * xi, ss, n)
        inner = np.sum(wy * g(y) * np.exp(-0.5 * ((y - beta * xi) / ss) ** 2)) / (S2P * ss)
        tot += wi * f(xi) * inner * np.exp(-0.5 * (xi / sx) ** 2) / (S2P * sx)
    return float(tot)


def ref_cov(name, Ky, c, Kx, form, n=20):
    """Cov(sigma^2(x), (sigma'^2)''(y)) by the panel rule: ``form`` "direct" (the definition,
    x outer) or "ibp" (y outer; see _cov_second_derivative_ibp)."""
    s, d1, d2, d3 = ref_functions(name)
    g = lambda z: s(z) ** 2                                           # noqa: E731
    F1 = lambda z: 2 * d1(z) * d2(z)                                  # noqa: E731
    F2 = lambda z: 2 * (d2(z) ** 2 + d1(z) * d3(z))                   # noqa: E731
    if form == "direct":
        return e2(g, F2, Kx, c, Ky, n) - e1(F2, Ky, n) * e1(g, Kx, n)
    return (-(c / Ky) * e2(F1, lambda z: 2 * s(z) * d1(z), Ky, c, Kx, n)
            + (e2(lambda z: z * F1(z), g, Ky, c, Kx, n)
               - e1(lambda z: z * F1(z), Ky, n) * e1(g, Kx, n)) / Ky)


def main():
    import pdlt
    from pdlt.theory import residual_ntk as rn

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--acts", default="gelu,swish,tanh")
    ap.add_argument("--K1", default="1.5e3,1.5e5,1.5e7,1.5e9,1.5e11")
    a = ap.parse_args()
    direct, ibp = rn._cov_second_derivative_direct, rn._cov_second_derivative_ibp
    print("| act | K1 | c (ref ibp) | old | new | ref direct - ref ibp | H1 old-new | "
          "H1 new-ref |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in a.acts.split(","):
        m = pdlt.MLP(n0=3, width=16, depth=3, activation=name, C_b=0.1, C_W=1.0, gamma=0.5)
        for K1 in (float(v) for v in a.K1.split(",")):
            K, _ = rn.one_input_kernel(m, K1)
            _, _, C = rn._trajectory(m, K)
            seen = {}

            def spy(*args, parts=None, **kw):
                out = direct(*args, parts=parts, **kw)
                seen["new" if parts is not None else "vm"] = out[1, 0]
                return out
            rn._cov_second_derivative_direct = spy
            new_h = rn.residual_ntk_mean(m, K1)[2]
            rn._cov_second_derivative_direct = lambda *ar, parts=None, **kw: direct(*ar, **kw)
            old_c = direct(*_args_for(m, K1, rn))[1, 0]
            old_h = rn.residual_ntk_mean(m, K1)[2]
            ref_i = ref_cov(name, K[1], C[1, 0], K[0], "ibp")
            ref_d = ref_cov(name, K[1], C[1, 0], K[0], "direct")
            # reference-substituted H1: the new engine with c = the reference
            rn._cov_second_derivative_direct = direct
            rn._cov_second_derivative_ibp = (
                lambda g, gd, F1, zF1, Kl, Clm, Km, gm: np.array(
                    [ref_cov(name, kl, cl, km, "ibp") for kl, cl, km in zip(Kl, Clm, Km)]))
            ref_h = rn.residual_ntk_mean(m, K1)[2]
            rn._cov_second_derivative_ibp = ibp
            sc = abs(new_h)
            r = abs(ref_i)
            print(f"| {name} | {K1:.1e} | {ref_i:.15e} | {(old_c - ref_i) / r:.1e} | "
                  f"{(seen['new'] - ref_i) / r:.1e} | {(ref_d - ref_i) / r:.1e} | "
                  f"{(old_h - new_h) / sc:.1e} | {(new_h - ref_h) / sc:.1e} |", flush=True)


def _args_for(m, K1, rn):
    """The old (parts=None) call of H1's _cov_second_derivative_direct, rebuilt."""
    import pdlt  # noqa: F401
    from pdlt import gaussian
    from pdlt.theory._averages import third_derivative
    act = m.activation
    K, _ = rn.one_input_kernel(m, K1)
    _, _, C = rn._trajectory(m, K)
    s2 = lambda z: act.sigma(z) ** 2                                   # noqa: E731
    d3 = third_derivative(act)
    gm = np.array([float(gaussian.expect(s2, k)) for k in K])
    return (act, C, K, s2, lambda z: 2.0 * (act.d2(z) ** 2 + act.d1(z) * d3(z)),
            np.zeros((len(K), len(K))), gm)


if __name__ == "__main__":
    main()
