"""A user's kinked activation (numerical derivatives) against an independent reference (issue #15).

``python benchmarks/kinked_user_reference.py [--quick]``

``f(z) = tanh(z)`` for z > 0, ``tanh(z) / 2`` below (kink at 0: sigma' jumps by 1/2,
sigma'' is continuous, sigma''' jumps by 1), given to pdlt as a plain callable
(finite-difference derivatives, ``kinks=[0]``). ``LayerAverages.d4_source`` needs
``T_k = <f^(k)(z_a) f^(4-k)(z_b)>`` (k = 0..4; f = sigma for G1, sigma' for H1).

Reference, independent of the engine (no shared code): the Hermite form in 40-digit
mpmath, ``T_k = <f_a f_b He_(a^k b^(4-k))(z; K)>`` with the bivariate Hermite polynomial
of ``Lambda = K^-1`` (``w = Lambda z``: ``w w w w - 6 Lambda w w + 3 Lambda Lambda``,
symmetrized over the index positions), expanded into the moments ``<z_a^i z_b^j f_a
f_b>`` (i + j = 0, 2, 4). Each moment: ``z_a = sqrt(K_aa) x``, ``z_b = m z_a + s v``;
the inner average over v by tanh-sinh split at f's kink, the outer over x split at 0
and at geometric points around the inner average's layer (width ~ s / m). The form
loses ~(1 - rho^2)^-2, which 40 digits absorb (the moments converge to ~30). Checked
on elu(0.5), whose T_k h52 computed by a different method (derivatives of P(K), 40
digits, ``tests/theory/test_d4_source_elu.py``): within 1e-13 of the scale.

Part 1: T_k at ``K_aa = 1.1, K_bb = 0.9``, 1 - rho = 1e-1, 1e-3, 1e-5: the engine
(now: Stein form with the one-sided Chebyshev derivatives; before: the Hermite form in
float64) against the reference, relative to max |T_k|, with the engine's estimate.
Part 2: G1 and H1 at layer 3 of a depth-3 MLP (n0 = 2, C_b = 0.1, C_W = 1, x = [1,
0.3], [1, 0.3 + eps]; only source: the layer-2 pair): the engine against the same fold
with the reference T_k at layer 2.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import mpmath as mp
import numpy as np

import pdlt
from pdlt.theory._averages import LayerAverages, OneVariableTable

KAA, KBB = 1.1, 0.9
CACHE = Path(__file__).with_name("kinked_user_reference.json")


def user_fn(z):
    return np.where(z > 0, np.tanh(z), 0.5 * np.tanh(z))


# --------------------------------------------------------------------------- reference
def _f(of, z):
    if of == "s":
        t = mp.tanh(z)
    else:
        t = 1 - mp.tanh(z) ** 2
    return t if z > 0 else t / 2


def _elu(of, z, alpha=mp.mpf("0.5")):
    if of == "s":
        return z if z > 0 else alpha * mp.expm1(z)
    return mp.mpf(1) if z > 0 else alpha * mp.exp(z)


_NODES = {}


def _gl(a, b, degree):
    """Gauss-Legendre nodes and weights on [a, b] (mpmath, 3 2^(degree-1) nodes)."""
    from mpmath.calculus.quadrature import GaussLegendre
    key = (degree, mp.mp.prec)
    if key not in _NODES:
        _NODES[key] = GaussLegendre(mp.mp).calc_nodes(degree, mp.mp.prec)
    h, c = (b - a) / 2, (b + a) / 2
    return [(c + h * x, h * w) for x, w in _NODES[key]]


def _pieces(lo, hi, cuts):
    pts = sorted({lo, hi} | {c for c in cuts if lo < c < hi})
    return list(zip(pts[:-1], pts[1:]))


def moments(f, of, Kaa, Kab, Kbb, degree=6, cut=12):
    """``{(i, j): <z_a^i z_b^j f(z_a) f(z_b)>}`` for i + j in (0, 2, 4), kink at 0.

    ``z_a = sqrt(K_aa) x``, ``z_b = m z_a + s v``; Gauss-Legendre (``degree``) on pieces
    split at the kinks, the Gaussian cut at ``|x|, |v| <= cut`` (e^-72: below 1e-31)."""
    sa, m = mp.sqrt(Kaa), Kab / Kaa
    s = mp.sqrt(Kbb - Kab * Kab / Kaa)

    def inner(x):            # [E_v[z_b^j f(z_b)] for j = 0..4], z_b = m sa x + s v
        mu = m * sa * x
        acc = [mp.mpf(0)] * 5
        for a, b in _pieces(-cut, cut, [-mu / s]):
            for v, wv in _gl(a, b, degree):
                zb = mu + s * v
                g = wv * mp.npdf(v) * f(of, zb)
                for j in range(5):
                    acc[j] += g
                    g *= zb
        return acc
    w = s / abs(m * sa)
    cuts = [mp.mpf(0)] + [sg * w * 10 ** k for k in range(8) for sg in (1, -1)]
    M = {(i, j): mp.mpf(0) for i, j in ((0, 0), (2, 0), (1, 1), (0, 2), (4, 0), (3, 1),
                                          (2, 2), (1, 3), (0, 4))}
    for a, b in _pieces(-cut, cut, cuts):
        for x, wx in _gl(a, b, degree):
            za = sa * x
            I = inner(x)
            base = wx * mp.npdf(x) * f(of, za)
            for (i, j) in M:
                M[(i, j)] += base * za ** i * I[j]
    return M


def _pmul(p, q):
    r = {}
    for (a, b), c in p.items():
        for (d, e), g in q.items():
            r[(a + d, b + e)] = r.get((a + d, b + e), 0) + c * g
    return r


def hermite_terms(f, of, Kaa, Kab, Kbb, dps=40, degree=6):
    """``[T0, .., T4]`` (floats): the Hermite form in ``dps`` digits."""
    import itertools
    with mp.workdps(dps):
        Kaa, Kab, Kbb = (mp.mpf(float(v)) for v in (Kaa, Kab, Kbb))
        M = moments(f, of, Kaa, Kab, Kbb, degree)
        det = Kaa * Kbb - Kab * Kab
        L = [[Kbb / det, -Kab / det], [-Kab / det, Kaa / det]]
        w = [{(1, 0): L[0][0], (0, 1): L[0][1]}, {(1, 0): L[1][0], (0, 1): L[1][1]}]
        T = []
        for k in range(5):
            idx = (0,) * k + (1,) * (4 - k)          # k derivatives on a, 4 - k on b
            H = {(0, 0): mp.mpf(0)}
            H = _pmul(_pmul(w[idx[0]], w[idx[1]]), _pmul(w[idx[2]], w[idx[3]]))
            for p, q in itertools.combinations(range(4), 2):
                r = [t for t in range(4) if t not in (p, q)]
                for key, c in _pmul(w[idx[r[0]]], w[idx[r[1]]]).items():
                    H[key] = H.get(key, 0) - L[idx[p]][idx[q]] * c
            for p, q, r, t in ((0, 1, 2, 3), (0, 2, 1, 3), (0, 3, 1, 2)):
                H[(0, 0)] = H.get((0, 0), 0) + L[idx[p]][idx[q]] * L[idx[r]][idx[t]]
            T.append(sum(c * M[key] for key, c in H.items() if abs(c) > 0))
        return [float(t) for t in T]


def _cached(key, compute):
    data = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    if key not in data:
        data[key] = compute()
        CACHE.write_text(json.dumps(data, indent=1, sort_keys=True))
    return data[key]


# --------------------------------------------------------------------------- engine
def _avg(act, K):
    return LayerAverages(act, K, OneVariableTable(act, np.diag(K).copy()).at(slice(None)))


def _kernel(om):
    Kab = (1 - om) * np.sqrt(KAA * KBB)
    return np.array([[KAA, Kab], [Kab, KBB]])


def check_reference():
    """The Hermite reference on elu(0.5) against h52's derivatives of P(K)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "theory"))
    from test_d4_source_elu import REF_T
    for om in (1e-1, 1e-3, 1e-6):
        K = _kernel(om)
        for of in ("s", "p"):
            t0 = time.perf_counter()
            mine = hermite_terms(_elu, of, K[0, 0], K[0, 1], K[1, 1])
            ref = np.array(REF_T[(0.5, om, of)])
            print(f"elu(0.5) 1 - rho = {om:.0e} {of}: Hermite-40 vs P(K)-derivatives "
                  f"{np.max(np.abs(np.array(mine) - ref)) / np.max(np.abs(ref)):.1e} "
                  f"({time.perf_counter() - t0:.0f} s)")


def part1(oms):
    user = pdlt.activation(user_fn, kinks=[0.0])
    print("| 1 - rho | f | reference max abs T | before (Hermite, float64) | now | now's estimate |")
    print("|---:|---|---:|---:|---:|---:|")
    for om in oms:
        K = _kernel(om)
        for of in ("s", "p"):
            ref = np.array(_cached(f"T|{om:g}|{of}",
                                   lambda: hermite_terms(_f, of, K[0, 0], K[0, 1], K[1, 1])))
            sc = np.max(np.abs(ref))
            avg = _avg(user, K)
            T, dT = avg._stein_terms(of)
            from pdlt.theory._averages import _hermite_patterns
            mm = {k: v[0, 1] for k, v in avg._pair_moments(of).items()}
            det = K[0, 0] * K[1, 1] - K[0, 1] ** 2
            Th, _ = _hermite_patterns(np.array([K[0, 0]]), np.array([K[1, 1]]),
                                      np.array([K[0, 1]]), np.array([det]),
                                      {k: np.array([v]) for k, v in mm.items()},
                                      np.array([1e-13]))
            print(f"| {om:.0e} | {of} | {sc:.3g} | {np.max(np.abs(Th[:, 0] - ref)) / sc:.1e} | "
                  f"{np.max(np.abs(T[:, 0, 1] - ref)) / sc:.1e} | {np.max(dT[:, 0, 1]) / sc:.1e} |")


def _fold(eps, ref=None, hermite=False):
    act = pdlt.activation(user_fn, kinks=[0.0])
    mlp = pdlt.MLP(n0=2, width=32, depth=3, activation=act, C_b=0.1, C_W=1.0)
    x = np.array([[1.0, 0.3], [1.0, 0.3 + eps]])
    K2 = pdlt.statistics(mlp, x, get=["K"]).K[1]
    orig, orig_applies = LayerAverages._stein_terms, LayerAverages._stein_applies
    from pdlt.theory import statistics as stats_mod
    orig_warn, est = stats_mod._warn_d4, {}

    def keep(err, out, Ks):          # the per-statistic estimate the warning reads
        est.update({k: v[-1].copy() for k, v in err.items()})
        return orig_warn(err, out, Ks)

    def terms(self, of):
        if self.N == 2 and np.array_equal(self.K, K2):
            T = np.zeros((5, 2, 2))
            t = np.array(ref[of])
            T[:, 0, 1], T[:, 1, 0] = t, t[::-1]
            return T, np.zeros_like(T)
        return orig(self, of)
    try:
        stats_mod._warn_d4 = keep
        if ref is not None:
            LayerAverages._stein_terms = terms
        if hermite:         # main's forms for this activation (Hermite source and M_pp)
            LayerAverages._stein_applies = lambda self, of: False
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            s = pdlt.statistics(mlp, x, get=["G1", "H1"])
    finally:
        LayerAverages._stein_terms, LayerAverages._stein_applies = orig, orig_applies
        stats_mod._warn_d4 = orig_warn
    warned = sorted({str(m.message)[:2] for m in w if "estimated error" in str(m.message)})
    return s, K2, warned, est


def part2(epss):
    print("| eps | 1 - rho at layer 2 | G1 before | H1 before | G1 now | H1 now | "
          "now's estimate / scale (max of G1, H1) | warned (before / now) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for eps in epss:
        s, K2, warned, est_now = _fold(eps)
        ref = {of: _cached(f"fold|{eps:g}|{of}|{K2[0, 1].hex()}",
                           lambda: hermite_terms(_f, of, K2[0, 0], K2[0, 1], K2[1, 1]))
               for of in ("s", "p")}
        r, _, _, _ = _fold(eps, ref)
        old, _, warned_old, _ = _fold(eps, hermite=True)
        om = 1 - K2[0, 1] / np.sqrt(K2[0, 0] * K2[1, 1])
        row = []
        for S in (old, s):
            for k in ("G1", "H1"):
                X, Y = S[k][-1], r[k][-1]
                row.append(abs(X[0, 1] - Y[0, 1]) / np.sqrt(abs(Y[0, 0] * Y[1, 1])))
        est = max(est_now[k][0, 1] / np.sqrt(abs(r[k][-1][0, 0] * r[k][-1][1, 1]))
                  for k in ("G1", "H1"))
        print(f"| {eps:g} | {om:.1e} | " + " | ".join(f"{v:.1e}" for v in row)
              + f" | {est:.1e} | {', '.join(warned_old) or '-'} / {', '.join(warned) or '-'} |")


def check_convergence(om=1e-5):
    """The tanh reference at degree 6 against degree 7 (twice the nodes)."""
    K = _kernel(om)
    for of in ("s", "p"):
        a = np.array(_cached(f"T|{om:g}|{of}",
                             lambda: hermite_terms(_f, of, K[0, 0], K[0, 1], K[1, 1])))
        b = np.array(_cached(f"T7|{om:g}|{of}",
                             lambda: hermite_terms(_f, of, K[0, 0], K[0, 1], K[1, 1], degree=7)))
        print(f"kinked tanh 1 - rho = {om:.0e} {of}: degree 6 vs 7 "
              f"{np.max(np.abs(a - b)) / np.max(np.abs(b)):.1e}")


def main(quick=False):
    if not quick:
        check_reference()
        check_convergence()
    part1((1e-1, 1e-3) if quick else (1e-1, 1e-3, 1e-5))
    part2((0.0578,) if quick else (0.703, 0.0578, 0.00572))


if __name__ == "__main__":
    main("--quick" in sys.argv)
