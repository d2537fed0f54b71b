"""elu's fourth-derivative sources of G1 and H1 against a 40-digit reference (issue #15).

``python benchmarks/elu_d4_source.py [--quick]``

``LayerAverages.d4_source`` needs ``T_k = <f^(k)(z_a) f^(4-k)(z_b)>`` (k = 0..4; f = sigma for
G1, sigma' for H1) of a pair of distinct inputs. elu (kink at 0; sigma'' jumps, and for
alpha != 1 sigma' too) now takes the Stein form with the kink's delta functions
(``_kink_terms``); before, the Hermite form (loses ~(1 - rho^2)^-2) or the coinciding
limit (O(1 - rho)). The operator ``M_pp = d<sigma'_a sigma'_b>/dK`` of the H1 step reads
the same terms (``T2``, ``T3`` of sigma); before, a Hermite form.

Reference, independent of the engine (no shared code): ``T_k`` are derivatives of the
smooth function ``P(K) = <f_a f_b>_K``: ``T2 = d^2 P / dK_ab^2``, ``T3 = 2 d^2 P / dK_aa
dK_ab``, ``T4 = 4 d^2 P / dK_aa^2`` (``T1, T0`` with K_bb). P is evaluated in mpmath
(40 digits): the inner average over ``z_b | z_a`` in closed form (normal cdf and
exponentials), the outer one by tanh-sinh quadrature split at the kink and at geometric
points around the near-singular layer of width ``s / |m|``; the derivatives by central
differences with step ``1e-5 det`` and one Richardson step (truncation ~1e-20). Two
settings (30 digits, step 1e-4 det) agree to ~1e-14 of the scale.

Part 1: the T_k at ``K_aa = 1.1, K_bb = 0.9``, ``1 - rho = 1e-1 .. 1e-6``, alpha = 1, 0.5.
Part 2: G1 and H1 of a depth-3 MLP (n0 = 2, C_b = 0.1, C_W = 1, x = [1, 0.3], [1, 0.3 +
eps]) whose only source is the layer-2 pair (V^(1) = 0): the engine against the same fold
with the reference T_k at layer 2, before (forced onto the Hermite forms) and after.
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
from pdlt.theory import statistics as stats_mod
from pdlt.theory._averages import LayerAverages, OneVariableTable, _hermite_patterns

KAA, KBB = 1.1, 0.9
OMEGAS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
#: eps of the depth-3 fold giving 1 - rho ~ 1e-1 .. 1e-6 at layer 2, per alpha
EPS = {1.0: (0.703, 0.189, 0.0578, 0.0181, 0.00572, 0.00181),
       0.5: (0.737, 0.195, 0.0597, 0.0187, 0.0059, 0.00186)}
CACHE = Path(__file__).with_name("elu_d4_reference.json")


# --------------------------------------------------------------------------- reference
def _inner(f, mu, s, alpha):
    """``E[f(mu + s u)]``, u standard normal, in closed form."""
    t = max(min(mu / s, mp.mpf(80)), mp.mpf(-80))
    if f == "s":
        return (mu * mp.ncdf(t) + s * mp.npdf(t)
                + alpha * (mp.exp(mu + s * s / 2) * mp.ncdf(-t - s) - mp.ncdf(-t)))
    return mp.ncdf(t) + alpha * mp.exp(mu + s * s / 2) * mp.ncdf(-t - s)


def _f(f, z, alpha):
    if f == "s":
        return z if z > 0 else alpha * mp.expm1(z)
    return mp.mpf(1) if z > 0 else alpha * mp.exp(z)


def pair_average(f, Kaa, Kab, Kbb, alpha, c=0):
    """``P(K) = <f(z_a) f(z_b)>_K`` in mpmath (f = elu "s" or its derivative "p", with its
    kink moved to c: ``f(z - c)``)."""
    sa, m = mp.sqrt(Kaa), Kab / Kaa
    s = mp.sqrt(Kbb - Kab * Kab / Kaa)
    w = s / abs(m * sa)
    x0, x1 = c / sa, c / (m * sa)          # the kink of f(z_a); the inner average's layer
    pts = [w * 10 ** k for k in range(8) if w * 10 ** k < 12]
    pts = sorted({x0, x1} | {x1 + p for p in pts} | {x1 - p for p in pts})
    pts = [-mp.inf] + pts + [mp.inf]
    return mp.quad(lambda x: (mp.npdf(x) * _f(f, sa * x - c, alpha)
                              * _inner(f, m * sa * x - c, s, alpha)), pts)


def reference_terms(f, Kaa, Kab, Kbb, alpha, dps=40, rel=1e-5, c=0):
    """``[T0, .., T4]`` (floats) by finite differences of :func:`pair_average`."""
    with mp.workdps(dps):
        Kaa, Kab, Kbb, alpha = (mp.mpf(float(v)) for v in (Kaa, Kab, Kbb, alpha))
        h = rel * (Kaa * Kbb - Kab * Kab)
        memo = {}

        def P(i, j, k):
            if (i, j, k) not in memo:
                memo[(i, j, k)] = pair_average(f, Kaa + i * h, Kab + j * h, Kbb + k * h, alpha,
                                               mp.mpf(c))
            return memo[(i, j, k)]

        def second(ax, n):
            e = [0, 0, 0]
            e[ax] = n
            return (P(*e) - 2 * P(0, 0, 0) + P(*[-x for x in e])) / (n * h) ** 2

        def mixed(ax, n):
            def at(i, j):
                e = [0, 0, 0]
                e[ax] += i * n
                e[1] += j * n
                return P(*e)
            return (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / (4 * (n * h) ** 2)

        rich = lambda F: (4 * F(1) - F(2)) / 3  # noqa: E731
        T = [4 * rich(lambda n: second(2, n)), 2 * rich(lambda n: mixed(2, n)),
             rich(lambda n: second(1, n)), 2 * rich(lambda n: mixed(0, n)),
             4 * rich(lambda n: second(0, n))]
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


def _mlp(alpha, depth=3):
    return pdlt.MLP(n0=2, width=32, depth=depth, activation=pdlt.activation("elu", alpha=alpha),
                    C_b=0.1, C_W=1.0)


def _x(eps):
    return np.array([[1.0, 0.3], [1.0, 0.3 + eps]])


def fold(alpha, eps, ref=None, hermite=False):
    """G1, H1 of the depth-3 fold, its estimate and warnings; ``ref``: T_k at layer 2."""
    mlp, x = _mlp(alpha), _x(eps)
    orig_terms, orig_applies = LayerAverages._stein_terms, LayerAverages._stein_applies
    K2 = pdlt.statistics(mlp, x, get=["K"]).K[1]
    est, orig_warn = {}, stats_mod._warn_d4
    try:
        if ref is not None:
            def terms(self, of):
                if self.N == 2 and np.array_equal(self.K, K2):
                    T = np.zeros((5, 2, 2))
                    T[:, 0, 1], T[:, 1, 0] = ref[of], ref[of][::-1]
                    return T, np.zeros_like(T)
                return orig_terms(self, of)
            LayerAverages._stein_terms = terms
        if hermite:
            LayerAverages._stein_applies = property(lambda self: False)

        def keep(err, out, Ks):          # the per-statistic estimate the warning reads
            est.update({k: v.copy() for k, v in err.items()})
            return orig_warn(err, out, Ks)
        stats_mod._warn_d4 = keep
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            s = pdlt.statistics(mlp, x, get=["G1", "H1"])
    finally:
        LayerAverages._stein_terms, LayerAverages._stein_applies = orig_terms, orig_applies
        stats_mod._warn_d4 = orig_warn
    return s, [str(i.message)[:2] for i in w if "estimated error" in str(i.message)], K2, est


def fold_reference(alpha, eps):
    K2 = pdlt.statistics(_mlp(alpha), _x(eps), get=["K"]).K[1]
    key = f"fold|{alpha}|{eps}|" + ",".join(float(v).hex() for v in K2.ravel())
    return _cached(key, lambda: {of: reference_terms(of, K2[0, 0], K2[0, 1], K2[1, 1], alpha)
                                 for of in "sp"})


def main(quick=False):
    oms = (1e-1, 1e-3, 1e-6) if quick else OMEGAS
    print("Part 1: T_k, max over k of |T_k - ref| / max_k |ref_k| (est: the engine's estimate)")
    print(f"{'alpha':>5} {'1-rho':>6} {'f':>2} {'scale':>9} {'new err':>8} {'new est':>8} "
          f"{'Hermite err':>11} {'ms':>5}")
    for alpha in (1.0, 0.5):
        act = pdlt.activation("elu", alpha=alpha)
        for om in oms:
            Kab = float((1 - om) * np.sqrt(KAA * KBB))
            K = np.array([[KAA, Kab], [Kab, KBB]])
            for of in "sp":
                ref = np.array(_cached(f"T|{alpha}|{om:g}|{of}",
                                       lambda: reference_terms(of, KAA, Kab, KBB, alpha)))
                avg = _avg(act, K)
                t0 = time.perf_counter()
                T, dT = avg._stein_terms(of)
                ms = 1e3 * (time.perf_counter() - t0)
                mm = {k: np.array([v[0, 1]]) for k, v in avg._pair_moments(of).items()}
                Th, _ = _hermite_patterns(np.array([KAA]), np.array([KBB]), np.array([Kab]),
                                          np.array([KAA * KBB - Kab ** 2]), mm, np.array([1e-13]))
                sc = np.max(np.abs(ref))
                e_new, e_est = np.max(np.abs(T[:, 0, 1] - ref)) / sc, np.max(dT[:, 0, 1]) / sc
                print(f"{alpha:5.1f} {om:6.0e} {of:>2} {sc:9.3g} {e_new:8.1e} {e_est:8.1e} "
                      f"{np.max(np.abs(Th[:, 0] - ref)) / sc:11.1e} {ms:5.0f}")
    print()
    print("Part 2: depth-3 fold, |X_01 - ref| / scale at layer 3 (scale: max(|X_01|, "
          "sqrt(X_00 X_11))); est: the fold's estimate / scale (what the warning reads); w: warned")
    print(f"{'alpha':>5} {'eps':>7} {'1-rho':>7} {'X':>2} {'ref':>12} {'before':>8} {'w':>2} "
          f"{'after':>8} {'est':>8} {'w':>2}")
    eps_list = {a: (e if not quick else (e[0], e[2], e[5])) for a, e in EPS.items()}
    for alpha in (1.0, 0.5):
        for eps in eps_list[alpha]:
            ref = fold_reference(alpha, eps)
            r, _, K2, _ = fold(alpha, eps, ref=ref)
            old, wo, _, _ = fold(alpha, eps, hermite=True)
            new, wn, _, est = fold(alpha, eps)
            om = 1 - K2[0, 1] / np.sqrt(K2[0, 0] * K2[1, 1])
            for X in ("G1", "H1"):
                R = getattr(r, X)[2]
                sc = max(abs(R[0, 1]), np.sqrt(abs(R[0, 0] * R[1, 1])))
                e_old = abs(getattr(old, X)[2][0, 1] - R[0, 1]) / sc
                e_new = abs(getattr(new, X)[2][0, 1] - R[0, 1]) / sc
                print(f"{alpha:5.1f} {eps:7.3g} {om:7.1e} {X:>2} {R[0, 1]:12.8f} {e_old:8.1e} "
                      f"{'y' if X[:2] in wo else '-':>2} {e_new:8.1e} "
                      f"{est[X][2][0, 1] / sc:8.1e} {'y' if X[:2] in wn else '-':>2}")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
