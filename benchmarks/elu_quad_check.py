"""elu four-variable averages with a near pair (sigma, sigma', sigma'', z sigma''): a reference.

``python benchmarks/elu_quad_check.py [--write] [--quick]``

The structure of ``relu_quad_reference.py`` (mpmath factor of K, ``(g_1, g_2)`` polar with
the pair's sliver a piece of its own, R on panels, ``g_3`` split at ``z_2``'s kink, ``g_4``
in closed form) with the first two slots evaluated along each ray (elu is not homogeneous)
and the last slot's ``E[f(m + s w)]``, ``t = m / s``, ``c = -t - s``, ``E = e^(m + s^2/2)``:

* sigma:  ``m Phi(t) + s phi(t) + E Phi(c) - Phi(-t)``
* sigma': ``Phi(t) + E Phi(c)``
* sigma'': ``E Phi(c)``
* z sigma'': ``E ((m + s^2) Phi(c) - s phi(c))``

(elu with alpha = 1). Every one of the 256 slot products at one K comes from one pass
(the products share the geometry). Own accuracy: the same sum at 1.5x the nodes per axis.
Covariances: the two of ``relu_quad_reference.kernel`` and a third (``kernel3``: the pair
anti-correlated, unequal variances 2.5 and 0.6, the fourth variable with a small share of
its own). ``--write`` stores the products the statistics use (slot strings of
``pdlt.theory``'s four-variable tensors with four distinct inputs: ssss, sspp, pppp,
qpps, qqpp, xppp, qspp, every assignment to the four inputs) at ``1 - rho^2 = 1e-1 ..
1e-10`` in ``elu_quad_reference.json``; every run prints the engine's distance
(``expect_nd`` at "default", ``kinks=(0,)``) and its estimate as fractions of the
Cauchy-Schwarz scale ``prod_k <|f_k|^4>^(1/4)``. Shares no code with the engine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import numpy as np
from scipy import special

import relu_quad_reference as R

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "elu_quad_reference.json")
SLOTS = "spqx"
STRINGS = ("ssss", "sspp", "pppp", "qpps", "qqpp", "xppp", "qspp")
ONE_MINUS_RHO2 = [10.0 ** -k for k in range(1, 11)]
#: the products measured by default (every pair of slots the statistics put on the near
#: pair, and every slot on the two others); ``--all``: the 42 of ``products()``
PICK = ("ssss", "sspp", "ppss", "spsp", "pppp", "qpps", "qspp", "ppqs", "psqp", "qqpp",
        "ppqq", "qpqp", "xppp", "ppxp", "pppx")
_SQ2PI = np.sqrt(2 * np.pi)


def slot(name, u):
    """elu's sigma, sigma', sigma'', z sigma'' at u (alpha = 1)."""
    e = np.exp(np.minimum(u, 0.0))
    neg = u <= 0
    if name == "s":
        return np.where(neg, np.expm1(np.minimum(u, 0.0)), u)
    if name == "p":
        return np.where(neg, e, 1.0)
    if name == "q":
        return np.where(neg, e, 0.0)
    return np.where(neg, u * e, 0.0)


def last(name, m, s):
    """``E[f(m + s w)]``, w ~ N(0, 1), f = slot ``name``, in closed form."""
    t = m / s
    c = -t - s
    E = np.exp(m + 0.5 * s * s) * special.ndtr(c)
    if name == "s":
        return m * special.ndtr(t) + s * np.exp(-0.5 * t * t) / _SQ2PI + E - special.ndtr(-t)
    if name == "p":
        return special.ndtr(t) + E
    if name == "q":
        return E
    return np.exp(m + 0.5 * s * s) * ((m + s * s) * special.ndtr(c)
                                      - s * np.exp(-0.5 * c * c) / _SQ2PI)


def value_all(K, scale=1.0):
    """All 256 products ``<f_0 f_1 f_2 f_3>`` (f_k in sigma, sigma', sigma'', z sigma''),
    (4, 4, 4, 4) indexed by ``SLOTS``, the pair (0, 1)."""
    P = R.parts(K)
    two_pi, phi = 2 * np.pi, P["phi"]
    cuts = np.unique(np.concatenate([[0.0, 0.5 * np.pi, 1.5 * np.pi, two_pi],
                                     np.mod([phi + 0.5 * np.pi, phi + 1.5 * np.pi], two_pi)]))
    al, wal = R._pieces(cuts, int(40 * scale), 2)
    Rr, wR = R._pieces(np.array([0.0, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 10.5, 13.5]),
                       int(24 * scale), 1)
    wR = wR * Rr * np.exp(-0.5 * Rr * Rr)
    xg, wg = R._gl(int(24 * scale))
    total = np.zeros((4, 4, 4, 4))
    for i in range(len(al)):
        ca, sa = np.cos(al[i]), np.sin(al[i])
        F0 = np.array([slot(n, P["a"] * ca * Rr) for n in SLOTS])                  # (4, nR)
        F1 = np.array([slot(n, P["b"] * np.cos(al[i] - phi) * Rr) for n in SLOTS])
        mu2 = Rr * (P["c21"] * ca + P["c22"] * sa)
        mu3 = Rr * (P["c31"] * ca + P["c32"] * sa)
        kink = np.clip(-mu2 / P["s2"], -12.0, 12.0)
        G = np.zeros((4, 4, len(Rr)))
        for lo, hi in ((np.full_like(kink, -12.0), kink), (kink, np.full_like(kink, 12.0))):
            for j in range(4):
                l, h = lo + (hi - lo) * j / 4, lo + (hi - lo) * (j + 1) / 4
                g3 = 0.5 * (h + l)[:, None] + 0.5 * (h - l)[:, None] * xg
                w3 = 0.5 * (h - l)[:, None] * wg * np.exp(-0.5 * g3 * g3) / _SQ2PI
                z2 = mu2[:, None] + P["s2"] * g3
                m3 = mu3[:, None] + P["c33"] * g3
                F2 = [w3 * slot(n, z2) for n in SLOTS]
                L3 = [last(n, m3, P["s3"]) for n in SLOTS]
                for k2 in range(4):
                    for k3 in range(4):
                        G[k2, k3] += np.sum(F2[k2] * L3[k3], axis=1)
        total += wal[i] / two_pi * np.einsum("ar,br,cdr,r->abcd", F0, F1, G, wR)
    return total


def kernel3(omr2):
    """A third covariance: the pair (0, 1) anti-correlated at ``1 - rho^2 = omr2``,
    variances 2.5 and 0.6; the fourth variable ~6 % of its variance its own."""
    a, b = np.sqrt(2.5), np.sqrt(0.6)
    phi = np.pi - np.arcsin(np.sqrt(omr2))
    L = np.array([[a, 0, 0, 0], [b * np.cos(phi), b * np.sin(phi), 0, 0],
                  [0.3, 0.9, 0.8, 0.0], [-1.1, 0.5, 0.7, 0.35]])
    K = L @ L.T
    return 0.5 * (K + K.T)


def kernel(omr2, which):
    return kernel3(omr2) if which == 2 else R.kernel(omr2, which)


def products():
    """(slot string, the four slots in input order, pair first) the statistics use."""
    out = []
    for s in STRINGS:
        for perm in sorted(set(itertools.permutations(s))):
            out.append((s, "".join(perm)))
    return out


def scale_of(K, names):
    """Cauchy-Schwarz scale ``prod_k <|f_k(z_k)|^4>^(1/4)`` (200-node Gauss-Hermite across
    the kink: ~1e-3 relative, plenty for a scale)."""
    x, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / np.sqrt(2 * np.pi)
    return float(np.prod([np.sum(w * slot(n, np.sqrt(K[k, k]) * x) ** 4) ** 0.25
                          for k, n in enumerate(names)]))


def write():
    kernels = []
    for which in (0, 1, 2):
        for omr2 in ONE_MINUS_RHO2:
            K = kernel(omr2, which)
            t0 = time.time()
            v, v2 = value_all(K), value_all(K, 1.5)
            print(f"K{which} {omr2:g}: {time.time() - t0:.1f} s, check "
                  f"{np.max(np.abs(v - v2)):.1e}", flush=True)
            vals = {}
            for _, names in products():
                ix = tuple(SLOTS.index(n) for n in names)
                vals[names] = [repr(float(v[ix])), float(f"{abs(v[ix] - v2[ix]):.3g}"),
                               float(f"{scale_of(K, names):.12g}")]
            kernels.append({"K_index": which, "one_minus_rho2": omr2, "K": K.tolist(),
                            "values": vals})
    with open(OUT, "w") as fh:
        json.dump(kernels, fh, indent=0)


def load(path=OUT):
    """The stored values as rows: K_index, one_minus_rho2, K, slots, value, check, scale."""
    rows = []
    for k in json.load(open(path)):
        for names, (v, c, sc) in k["values"].items():
            rows.append({"K_index": k["K_index"], "one_minus_rho2": k["one_minus_rho2"],
                         "K": k["K"], "slots": names, "value": v, "check": c, "scale": sc})
    return rows


def engine_rows(rows, accuracy="default"):
    """The engine's value and estimate for each stored row (batched per product)."""
    import pdlt
    from pdlt.gaussian._multi import expect_nd, normal_family
    act = pdlt.MLP(n0=2, width=8, depth=1, activation="elu").activation
    base = {"s": normal_family(act, "sigma"), "p": normal_family(act, "d1"),
            "q": normal_family(act, "d2")}
    base["x"] = base["q"].times_z()
    out = {}
    for names in sorted({r["slots"] for r in rows}):
        sel = [k for k, r in enumerate(rows) if r["slots"] == names]
        K = np.array([rows[k]["K"] for k in sel])
        t0 = time.time()
        v, e = expect_nd([base[n] for n in names], K, kinks=(0.0,), accuracy=accuracy,
                         return_error=True)
        dt = (time.time() - t0) / len(sel)
        for k, vk, ek in zip(sel, v, e):
            out[k] = (float(vk), float(ek), dt)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--accuracy", default="default")
    ap.add_argument("--all", action="store_true")
    args = ap.parse_args()
    if args.write:
        write()
    rows = load()
    if not args.all:
        rows = [r for r in rows if r["slots"] in PICK]
    got = engine_rows(rows, args.accuracy)
    for k, r in enumerate(rows):
        v, e, dt = got[k]
        ref, sc = float(r["value"]), r["scale"]
        flag = "SHORT" if abs(v - ref) > e + r["check"] else ""
        print(f"K{r['K_index']} {r['one_minus_rho2']:.0e} {r['slots']}: "
              f"off {abs(v - ref) / sc:.1e} "
              f"est {e / sc:.1e} (check {r['check'] / sc:.0e}, {dt:.2f} s) {flag}", flush=True)


if __name__ == "__main__":
    main()
