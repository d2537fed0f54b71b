r"""Products of piecewise monomials (the ReLU family) under a zero-mean Gaussian, in closed form.

``orthant_expect`` gives ``<f_1(z_1) ... f_d(z_d)>`` for ``z ~ N(0, K)``,
d = 1..4, where each ``f_k`` is a :class:`~pdlt.gaussian._multi.PiecewiseMonomial`
``z^n (c_- + (c_+ - c_-) 1{z > 0})`` (ReLU, leaky ReLU, their powers and
derivatives). Expanding the brackets gives ``<prod_k z_k^(n_k) prod_(k in S) 1{z_k > 0}>``
for subsets S, and each of these truncated moments is reduced by Stein's lemma,

``<z_i h(z)> = sum_j K_ij <d_j h(z)>``,

where ``d_j`` of an indicator ``1{z_j > 0}`` is ``delta(z_j)``, and
``<delta(z_j) g(z)> = (2 pi K_jj)^(-1/2) <g>`` under the conditional
Gaussian given ``z_j = 0`` (zero mean, covariance ``K - K_.j K_j. / K_jj``).
Every monomial factor is removed this way, so a moment of total degree D
becomes a sum of orthant probabilities ``P(z_S > 0)`` of zero-mean Gaussians
in at most d dimensions: 1/2, ``1/4 + asin(rho) / (2 pi)``, Sheppard's
``1/8 + sum asin(rho_ij) / (4 pi)`` and, for four variables, Plackett's
reduction to one integral along ``R(t) = (1 - t) I + t R``:

``P4 = 1/16 + sum_(i<j) asin(rho_ij) / (8 pi)``
``+ sum_(i<j) rho_ij / (4 pi^2) int_0^1 asin(rho_(kl.ij)(t)) / sqrt(1 - t^2 rho_ij^2) dt``

(``rho_(kl.ij)(t)`` the partial correlation of the other pair given ``z_i = z_j = 0``
at ``R(t)``). The integrand is analytic on [0, 1]; its singularities lie at
``t ~ 1 + lambda_min(R)`` (``R(t)`` singular), so the integral uses
Gauss-Legendre on panels graded geometrically toward ``t = 1`` (widths
halving down to ``_TAU / 2``): every panel is at least its own width away from
the singularity, and 10 nodes per panel converge like ``3.7^-20``.

**Scope and accuracy.** A subset of indicators whose correlation matrix has
its smallest eigenvalue ``lambda`` >= ``_TAU`` (1e-6) goes through the
recursion directly (every conditional variance is then >= ``lambda`` of its
variable's variance); one with ``lambda < _RANK0`` (1e-10: rank-deficient to
round-off, N > n0 inputs at the first layer) through the cone path below;
the few in between, zero variances and degenerate cone geometries are left
to the caller's split path (``ok = False``). The error estimate: the
difference of the P4 integral from 7 nodes per panel (an overestimate of the
10-node error) times its coefficient, plus round-off: ``64 eps / lambda``
times the Cauchy-Schwarz scale ``prod_k <|f_k|^d>^(1/d)`` where
``lambda >= 1e-3``, else the difference from the same moment with the
variables in the reverse order (the bound overstated 1e5x at
``lambda = 1.3e-6``); on the cone path the difference from a second
decomposition of the cone, plus 10x the dropped eigenvalue times the scale.
Measured (``tests/gaussian/test_orthant.py``): P4 within 1e-12 of exact
values (equicorrelated 1/5, factorized cases); rank-2 products within
~1e-15 of an independent polar integral (adaptive quadrature between the
kinks); full-rank products within 1e-10 of the split path at "high", whose
own error that is (a finer split rule agrees with this path to 1e-13).

**Rank-deficient covariances** (``_cone_moment``): with ``z = L u``,
``u ~ N(0, I_r)``, r <= 3, the indicators cut a pointed polyhedral cone out
of R^r; it is split into simplicial cones (a fan over its extreme rays),
each an orthant of r well-conditioned facet variables, with the z_k as
power-only variables (Stein's lemma never divides by their variances).
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from scipy import special

__all__ = ["orthant_expect", "orthant_probability"]

_TAU = 1e-6            # smallest eigenvalue of the correlation matrix for this path
_NODES, _NODES_LO = 10, 7
_ROUNDOFF_LAM = 1e-3   # below: round-off estimated by a second evaluation order
_EPS = np.finfo(float).eps
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@functools.lru_cache(maxsize=8)
def _graded_rule(nodes, tau=_TAU):
    """Gauss-Legendre on ``[0, 1]``: panels ``[1 - 2^-k, 1 - 2^-(k+1)]`` down to width < tau / 2."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    n_pan = int(math.ceil(math.log2(2.0 / tau))) + 1
    edges = np.concatenate([1.0 - 0.5 ** np.arange(n_pan), [1.0]])
    a, b = edges[:-1, None], edges[1:, None]
    t = (0.5 * (a + b) + 0.5 * (b - a) * x).ravel()
    wt = (0.5 * (b - a) * w).ravel()
    return t, wt


_PAIRS4 = ((0, 1, 2, 3), (0, 2, 1, 3), (0, 3, 1, 2), (2, 3, 0, 1), (1, 3, 0, 2), (1, 2, 0, 3))


def _p4_integral(R, nodes):
    """``sum_(i<j) rho_ij int_0^1 asin(rho_(kl.ij)(t)) / sqrt(1 - t^2 rho_ij^2) dt`` (B,)."""
    t, wt = _graded_rule(nodes)
    total = np.zeros(R.shape[0])
    for i, j, k, l in _PAIRS4:
        rij = R[:, i, j, None]
        rki, rkj, rli, rlj = (R[:, k, i, None], R[:, k, j, None], R[:, l, i, None],
                              R[:, l, j, None])
        rkl = R[:, k, l, None]
        tt = t[None, :]
        den = 1.0 - tt * tt * rij * rij
        ckl = tt * rkl - tt * tt * (rki * rli + rkj * rlj - tt * rij * (rki * rlj + rkj * rli)) / den
        ckk = 1.0 - tt * tt * (rki * rki + rkj * rkj - 2.0 * tt * rij * rki * rkj) / den
        cll = 1.0 - tt * tt * (rli * rli + rlj * rlj - 2.0 * tt * rij * rli * rlj) / den
        pc = np.clip(ckl / np.sqrt(ckk * cll), -1.0, 1.0)
        total += R[:, i, j] * ((np.arcsin(pc) / np.sqrt(den)) @ wt)
    return total


def orthant_probability(K, return_error=False):
    """``P(z > 0)`` for ``z ~ N(0, K)``, K (B, m, m), m = 0..4, every variance > 0.

    Closed forms for m <= 3; for m = 4 Plackett's one-dimensional integral
    (module doc), with its error estimate if ``return_error``.
    """
    K = np.asarray(K, dtype=float)
    B, m = K.shape[0], K.shape[-1]
    err = np.zeros(B)
    if m == 0:
        p = np.ones(B)
    elif m == 1:
        p = np.full(B, 0.5)
    else:
        sd = np.sqrt(np.einsum("bii->bi", K))
        R = K / (sd[:, :, None] * sd[:, None, :])
        iu = np.triu_indices(m, 1)
        asum = np.arcsin(np.clip(R[:, iu[0], iu[1]], -1.0, 1.0)).sum(axis=1)
        if m == 2:
            p = 0.25 + asum / (2.0 * math.pi)
        elif m == 3:
            p = 0.125 + asum / (4.0 * math.pi)
        else:
            hi = _p4_integral(R, _NODES)
            p = 0.0625 + asum / (8.0 * math.pi) + hi / (4.0 * math.pi ** 2)
            if return_error:
                err = np.abs(hi - _p4_integral(R, _NODES_LO)) / (4.0 * math.pi ** 2)
    return (p, err) if return_error else p


def _moment(K, n, S, return_error):
    """``<prod_k z_k^(n_k) prod_(k in S) 1{z_k > 0}>`` for z ~ N(0, K) (B, d, d).

    Stein's lemma on the first remaining monomial factor (module doc);
    conditional covariances and sub-moments are shared through caches.
    Returns (values (B,), error estimate (B,)).
    """
    B, d, _ = K.shape
    conds = {(): K}

    def cond(c):
        # covariance of all variables given z_c = 0 (c a sorted tuple); rows of c zero
        if c not in conds:
            par = cond(c[:-1])
            j = c[-1]
            col = par[:, :, j]
            conds[c] = par - col[:, :, None] * col[:, None, :] / par[:, j, j, None, None]
        return conds[c]

    memo = {}

    def E(vs, ns, Ss, c):
        # drop variables that carry neither a power nor an indicator
        keep = [k for k, v in enumerate(vs) if ns[k] > 0 or v in Ss]
        vs = tuple(vs[k] for k in keep)
        ns = tuple(ns[k] for k in keep)
        Ss = frozenset(v for v in Ss if v in vs)
        key = (vs, ns, Ss, c)
        if key in memo:
            return memo[key]
        Kc = cond(c)
        if not vs:
            res = (np.ones(B), np.zeros(B))
        elif not any(ns):
            sub = Kc[:, list(vs)][:, :, list(vs)]
            res = orthant_probability(sub, return_error=True) if return_error else \
                (orthant_probability(sub), np.zeros(B))
        else:
            a = next(k for k, v in enumerate(ns) if v > 0)
            i = vs[a]
            n1 = list(ns)
            n1[a] -= 1
            val = np.zeros(B)
            er = np.zeros(B)
            for b, j in enumerate(vs):
                kij = Kc[:, i, j]
                if n1[b] >= 1:
                    n2 = list(n1)
                    n2[b] -= 1
                    v, e = E(vs, tuple(n2), Ss, c)
                    val += n1[b] * kij * v
                    er += n1[b] * np.abs(kij) * e
                elif j in Ss:
                    rest = tuple(v for v in vs if v != j)
                    nr = tuple(n1[k] for k, v in enumerate(vs) if v != j)
                    v, e = E(rest, nr, Ss - {j}, tuple(sorted(c + (j,))))
                    f = kij * _INV_SQRT_2PI / np.sqrt(Kc[:, j, j])
                    val += f * v
                    er += np.abs(f) * e
            res = (val, er)
        memo[key] = res
        return res

    return E(tuple(range(d)), tuple(n), frozenset(S), ())


_RANK0 = 1e-10   # correlation eigenvalue below this: a zero direction (cone path)


def _cross3(a, b):
    """``a x b`` of two 3-vectors: the products and differences of :func:`numpy.cross` in
    the same order (bit-identical), without its per-call overhead (~0.25 ms: 1.9 of the
    3.6 s ``_cone_moment`` took in the N = 6 relu near-pair case, h66)."""
    a0, a1, a2 = a.tolist()
    b0, b1, b2 = b.tolist()
    return np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])


def _cone_moment(K, n, S):
    """``<prod_k z_k^(n_k) prod_(k in S) 1{z_k > 0}>`` for rank-deficient K (B, d, d).

    The variables are written ``z_k = l_k . u`` with ``u ~ N(0, I_r)`` (the
    eigenvectors of the correlation matrix with eigenvalues above ``_RANK0``;
    the dropped directions change the average by O(their eigenvalue)).
    The indicators of S cut a pointed polyhedral cone out of R^r (r <= 3):
    its extreme rays are the feasible intersections of pairs of the planes
    ``l_k . u = 0`` (r = 3) or the normals of the lines (r = 2); the cone is
    a fan of simplicial cones (rays r_0, r_i, r_(i+1)), and each is an
    orthant of the r facet variables ``f . u`` (normals of the planes
    through its pairs of rays), a well-conditioned problem for
    :func:`_moment` with the z_k as power-only variables.

    Returns (values, errors, good, dropped): ``good`` False where the
    geometry is degenerate (parallel planes, a nearly flat simplicial cone:
    facet correlations with an eigenvalue below 1e-8); those are left to the
    caller; ``errors`` the difference from a second decomposition of the same
    cone (the fan from the next ray; one simplicial cone: its facets in the
    reverse order), which measures the round-off of the facet conditioning
    (the bound ``eps / lambda_facets`` overstated it up to 1e8x: 8.5e-6
    against a true 1e-13 for a rank-3 quadruple of the N = 16, 3-dim case);
    ``dropped`` the largest dropped eigenvalue.
    """
    B, d, _ = K.shape
    sd = np.sqrt(np.einsum("bii->bi", K))
    R = K / (sd[:, :, None] * sd[:, None, :])
    mu, V = np.linalg.eigh(R)
    val = np.zeros(B)
    err = np.zeros(B)
    good = np.zeros(B, dtype=bool)
    Sl = sorted(S)
    tris, owner, alts, alt_owner = [], [], [], []
    for b in range(B):
        keep = mu[b] > _RANK0
        r = int(keep.sum())
        if r == 0 or r > 3 or mu[b, ~keep].max(initial=0.0) > _RANK0:
            continue
        Lb = sd[b, :, None] * V[b][:, keep] * np.sqrt(mu[b, keep])      # (d, r)
        C = Lb[Sl]
        if np.linalg.matrix_rank(C, tol=1e-8 * np.abs(C).max()) < r:
            continue                                                   # not pointed
        Cn = C / np.linalg.norm(C, axis=1, keepdims=True)
        # candidate rays, each with the constraints it lies on (not re-checked there)
        if r == 1:
            cand = [(np.array([1.0]), ()), (np.array([-1.0]), ())]
        elif r == 2:
            cand = [(s_ * np.array([-c[1], c[0]]), (k,)) for k, c in enumerate(Cn)
                    for s_ in (1.0, -1.0)]
        else:
            cand = []
            for i, j in itertools.combinations(range(len(Cn)), 2):
                x = _cross3(Cn[i], Cn[j])
                nx = np.linalg.norm(x)
                if nx < 1e-6:
                    cand = None
                    break
                cand += [(x / nx, (i, j)), (-x / nx, (i, j))]
            if cand is None:
                continue
        rays = []
        for c, on in cand:
            dots = Cn @ c
            dots[list(on)] = 0.0
            if np.all(dots >= -1e-9) and not any(abs(c @ q - 1.0) < 1e-9 for q in rays):
                rays.append(c)
        if len(rays) < r:
            good[b] = True           # empty or of measure zero: contributes 0
            continue
        elif r == 1:
            tri_list = [np.array([rays[0]])]
            alt_list = tri_list
        elif r == 2:
            if len(rays) != 2:
                continue
            a, c = rays
            na, nc = np.array([-c[1], c[0]]), np.array([-a[1], a[0]])
            na *= np.sign(na @ a)
            nc *= np.sign(nc @ c)
            tri_list = [np.array([na, nc])]
            alt_list = []
        else:
            ctr = np.sum(rays, axis=0)
            ctr /= np.linalg.norm(ctr)
            e1 = rays[0] - (rays[0] @ ctr) * ctr
            e1 /= np.linalg.norm(e1)
            e2 = _cross3(ctr, e1)
            ang = [math.atan2(q @ e2, q @ e1) for q in rays]
            rs = [rays[k] for k in np.argsort(ang)]
            tri_list, alt_list = [], []
            for apex, lst in ((0, tri_list), (1, alt_list)):
                rr = rs[apex:] + rs[:apex]
                for k in range(1, len(rr) - 1):
                    a, bb, c = rr[0], rr[k], rr[k + 1]
                    fac = []
                    for p, q, o in ((bb, c, a), (c, a, bb), (a, bb, c)):
                        f = _cross3(p, q)
                        f /= np.linalg.norm(f)
                        fac.append(f * np.sign(f @ o))
                    lst.append(np.array(fac))
        if r < 3:
            alt_list = [F[::-1] for F in tri_list]
        lam_f = min([np.linalg.eigvalsh(F @ F.T)[0] for F in tri_list + alt_list])
        if lam_f < 1e-8:
            continue                 # a nearly flat simplicial cone: left to the caller
        good[b] = True
        for F in tri_list:
            tris.append(np.concatenate([F, Lb], axis=0))             # (r + d, r)
            owner.append(b)
        for F in alt_list:
            alts.append(np.concatenate([F, Lb], axis=0))
            alt_owner.append(b)
    alt = np.zeros(B)
    for mats, own, acc in ((tris, owner, val), (alts, alt_owner, alt)):
        # group the simplicial cones by their number of facets (r)
        by_r = {}
        for M, b in zip(mats, own):
            by_r.setdefault(M.shape[1], []).append((M, b))
        for r, items in by_r.items():
            M = np.array([m for m, _ in items])
            Kt = M @ np.swapaxes(M, 1, 2)
            v, _ = _moment(Kt, (0,) * r + tuple(n), tuple(range(r)), False)
            np.add.at(acc, np.array([b for _, b in items]), v)
    # round-off and geometry: the same cone cut into a second fan (apex at the next
    # ray; for a single simplicial cone, its facets in the reverse order)
    err = np.abs(val - alt)
    dropped = np.maximum(np.where(mu > _RANK0, 0.0, mu).max(axis=1), 0.0)
    return val, err, good, dropped


def orthant_expect(fs, K, return_error=False, tau=_TAU):
    """``<prod_k f_k(z_k)>`` for piecewise monomials ``fs`` and z ~ N(0, K), K (B, d, d).

    ``f_k = z^(n_k) (c_-,k + (c_+,k - c_-,k) 1{z > 0})``: the products expand
    into truncated moments over subsets S of the indicators. A subset whose
    correlation matrix has its smallest eigenvalue >= ``tau`` goes through
    :func:`_moment` directly, one that is rank-deficient to round-off
    (eigenvalue < ``_RANK0``) through :func:`_cone_moment`.

    Returns ``(values, errors, ok)``: ``ok`` (B,) marks the covariances
    evaluated here; the others (a subset between the two thresholds, a
    zero variance, degenerate geometry) are NaN, left to the caller.
    """
    K = np.asarray(K, dtype=float)
    B, d, _ = K.shape
    var = np.einsum("bii->bi", K)
    ok = np.all(var > 0, axis=1)
    sd = np.sqrt(np.where(ok[:, None], var, 1.0))
    R = K / (sd[:, :, None] * sd[:, None, :])
    n = tuple(f.n for f in fs)
    val = np.zeros(B)
    er = np.zeros(B)
    amp = np.ones(B)          # round-off amplification 1 / lambda_min of the subsets used
    drop = np.zeros(B)        # largest correlation eigenvalue neglected by the cone path
    varying = [k for k, f in enumerate(fs) if f.cp != f.cm]
    for r in range(len(varying) + 1):
        for S in itertools.combinations(varying, r):
            coef = 1.0
            for k, f in enumerate(fs):
                coef *= (f.cp - f.cm) if k in S else f.cm
            if coef == 0.0:
                continue
            if len(S) >= 2:
                lam = np.linalg.eigvalsh(R[:, S][:, :, S])[:, 0]
            else:
                lam = np.ones(B)
            direct = ok & (lam >= tau)
            cone = ok & (lam < _RANK0)
            ok &= direct | cone
            if direct.any():
                v, e = _moment(K[direct], n, S, return_error)
                val[direct] += coef * v
                er[direct] += abs(coef) * e
                # round-off of the conditioning: bounded by eps / lambda_min where that
                # is small; below _ROUNDOFF_LAM the bound overstated (1e-7 against a
                # true ~1e-12 at lambda = 1.3e-6), so there the difference from the
                # same moment with the variables in the reverse order measures it
                amp[direct] = np.maximum(amp[direct], np.where(
                    lam[direct] >= _ROUNDOFF_LAM, 1.0 / lam[direct], 1.0))
                low = direct & (lam < _ROUNDOFF_LAM)
                if return_error and low.any():
                    rev = np.arange(d)[::-1]
                    v2, _ = _moment(K[low][:, rev][:, :, rev], tuple(n[k] for k in rev),
                                    tuple(sorted(d - 1 - k for k in S)), False)
                    er[low] += abs(coef) * np.abs(v[low[direct]] - v2)
            cone &= ok
            if cone.any():
                idx = np.flatnonzero(cone)
                v, e, good, dropped = _cone_moment(K[idx], n, S)
                ok[idx[~good]] = False
                val[idx] += coef * v
                er[idx] += abs(coef) * e
                # the dropped directions change the average by O(their eigenvalue)
                drop[idx] = np.maximum(drop[idx], dropped)
    # round-off: the conditioning loses ~eps / lambda_min relative; against the
    # Cauchy-Schwarz scale prod_k <|f_k|^d>^(1/d) (<|z|^(n d)> and the larger slope)
    cs = np.ones(B)
    for k, f in enumerate(fs):
        m = f.n * d
        absmom = 2.0 ** (m / 2.0) * special.gamma((m + 1) / 2.0) / math.sqrt(math.pi)
        cs *= (max(abs(f.cp), abs(f.cm)) ** d * absmom * var[:, k] ** (m / 2.0)) ** (1.0 / d)
    out = np.where(ok, val, np.nan)
    err = np.where(ok, er + (64.0 * _EPS * amp + 10.0 * drop) * cs, np.nan)
    return out, err, ok
