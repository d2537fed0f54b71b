r"""Gaussian averages of smooth activations at any variance: nested rules graded in z.

``<f_1(z_1) ... f_d(z_d)>_K`` with ``z ~ N(0, K)`` and each ``f_k`` smooth with one
transition of width ~1 around ``z_k = 0`` (tanh and its derivatives and powers, gelu,
swish, ``z f``: analytic in a strip around the real axis, flat or polynomial beyond a
few units). :func:`pdlt.gaussian.expect_nd` integrates in the standardized ``u = L^-1 z``
with a point budget; at variances of ~1e2 and more its rules no longer sample the
transitions (width ``1 / sqrt(K)`` in ``u``, slabs oblique to its axes). Here the
covariance is factored with pivoting (:func:`pdlt.gaussian._multi._factor`, largest
conditional variance first, ``z = L u``) and the axes are integrated one after another,
each by composite Gauss-Legendre panels whose breakpoints are, per outer point,

* the Gaussian's own: ``u_k`` in ``{0, +-1, +-2, +-3, +-4, +-5.5, +-7, +-8.5}``
  (truncated at 8.5: ``erfc(8.5 / sqrt 2) = 2e-17``);
* every transition that axis carries: that of ``f_j`` for each ``j >= k`` projected on
  ``u_k``, where the conditional mean of ``z_j`` given ``u_1 .. u_k`` crosses 0, at
  ``c = -m_j / L_jk`` with width ``w = max(1, r_j) / |L_jk|`` (``r_j`` the standard
  deviation ``z_j`` keeps after ``u_k``: the Gaussian smoothing of the later axes), graded
  geometrically ``c``, ``c +- w {1/2, 1, 2, ..., 32}``.

A transition within a quarter width of one already graded on the axis, of a width within
2x (a collinear input's copy), adds no breakpoints. The last axis, when graded, is a
table of its conditional mean ``m``: ``g(m) = <f_d(m + s_d u)>`` on panels graded around
``m = 0`` (width ``max(1, s_d)``, ratio 2), Chebyshev interpolants of degree 23 per panel.

On a panel ``[c + w 2^j, c + w 2^(j+1)]`` a function analytic within ``pi / 2`` (tanh's
strip; swish's and gelu's are wider) of ``c`` has its Bernstein ellipse parameter >= 5.8,
so ``n`` Gauss-Legendre nodes leave ``~5.8^(-2n)`` of its variation there; beyond
``32 w`` the activations are their asymptote (flat, linear or polynomial) to ``e^-64``,
``e^-32`` (swish) and the Gaussian panels carry the rest. Measured (tanh, the residual
modules' averages at K = 1.5e3, over their Cauchy-Schwarz scale, against 12 nodes per
panel): 10 nodes (the rule) 1.3e-14, 8 nodes 5.9e-12, 6 nodes 5.4e-9. Against an
independent nested ``scipy.integrate.quad`` (``benchmarks/residual_offdiag_reference.py``,
K = 30, 1e3, 1e6): <= 1e-15. The cost does not grow with K: ~0.1-1 s a covariance with
two graded axes integrated point by point (:func:`graded_axes`), ~40-60 s with three.

Four graded variables (four distinct directions: random inputs) would be three graded axes
point by point. Instead the last two are one 2-D table of their conditional means
(:func:`_table2`): ``g(m2, m3) = <f_2(m2 + a u) f_3(m3 + b u + c v)>`` (``a, b, c`` the
last two rows of the factor), tensor Chebyshev interpolants of degree 15 in each variable
on the panels graded around ``m2 = 0`` and ``m3 = 0`` (widths ``max(1, a)`` and ``max(1,
sd(z3))``, ratio 2, up to the largest mean the outer axes reach), its values the graded
rule in ``u`` of ``f_2`` times a 1-D table of ``f_3`` (degree 15: a panel next to 0 of
half-width ``W / 4`` is ``2 pi`` half-widths from the strip of analyticity); the outer two
axes point by point, as above. The two transitions are axis-aligned in ``(m2, m3)``; where
they meet, ``m3 = (b / a) m2``, ``g`` has an oblique feature of width ~``max(1, c)``
against panels of ~``|b|``, so the pair is the one of least ``rho = |b| / max(1, c)`` (the
least conditional correlation, :func:`_last_pair`) and the table is taken at ``rho <= 3``
(:data:`_RHO_MAX`; beyond, three axes point by point). Measured (erf, four random
directions at K = 30 .. 1e6, against the exact orthant form ``erf(z) = E sign(z + e)``,
``benchmarks/graded_four.py``): <= 3e-15 at ``rho <= 2.6``; a table of degree 11 1e-13 ..
2e-12, degree 9 1e-11 .. 2e-10. At ``rho = 4.7`` 3e-15 up to K = 1e4 but 4e-10 at K = 1e6
(estimated 1.4e-8; 12 nodes a panel 6e-12, so the graded rules, not the table, and the old
three-axis rule 8e-12 there), at ``rho = 10.8`` 2e-12 (estimated 1e-10). Cost (tanh, one
core, under load): ~3 s a covariance, ~4-5 s with the estimate; residual covariances
(conditional sds ~1 under outer ones ~40) ~6 s (three axes point by point: ~40-60 s).

Axes whose conditional standard deviation is at most :data:`_S_HERMITE` (near duplicates
of an earlier variable: collinear inputs) are integrated by Gauss-Hermite
(:func:`_hermite_nodes` nodes): every later transition moves by at most that much over the
axis (pivoting), so the integrand is analytic in ``|Im u| < pi / (2 s)`` of the axis.
Zero axes (rank-deficient covariances) are skipped.

Error estimate: the same nested rule with :data:`_LOWER_NODES` nodes per panel (a table of
degree 19, a 2-D table of degree 11, Gauss-Hermite rules 3/4 as long), its difference from
the full rule (8 nodes: ~6e-12 of scale where the rule is ~1e-14: pessimistic). The
covariance's own float64 rounding is not in it
(:func:`pdlt.theory.residual_multi._expect_many` adds it).
"""

from __future__ import annotations

import numpy as np

from ._multi import _factor

__all__ = ["expect_graded", "graded_axes"]

#: Gauss-Legendre nodes per panel (full rule) and in the error estimate's lower rule
_NODES = 10
_LOWER_NODES = 8
#: the Gaussian's breakpoints on every graded axis (standardized units)
_GAUSS_BREAKS = np.array([-8.5, -7.0, -5.5, -4.0, -3.0, -2.0, -1.0, 0.0,
                          1.0, 2.0, 3.0, 4.0, 5.5, 7.0, 8.5])
_T = 8.5
#: offsets around a transition, in units of its width
_GRADE = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
_GRADE = np.concatenate([-_GRADE[:0:-1], _GRADE])
#: conditional standard deviation (z units) at or below which an axis is Gauss-Hermite
_S_HERMITE = 0.1
#: Chebyshev-Lobatto points per panel of the last axis' table (full rule, lower rule)
_CHEB = 24
_LOWER_CHEB = 20
#: the same in each variable of the 2-D table of the last two of four graded axes
#: (erf at K = 30 .. 1e6 against the exact orthant form: 16 points <= 3e-15, 12 points
#: 3e-13 .. 2e-12, 10 points 1e-11 .. 2e-10; 24 points as accurate at 2x the cost)
_CHEB2 = 16
_LOWER_CHEB2 = 12
#: four graded axes: the last two one 2-D table (False: three axes point by point)
_TABLE2 = True
#: largest ``rho`` (:func:`_last_pair`) at which the 2-D table is taken
_RHO_MAX = 3.0
#: evaluation points per vectorized block
_CHUNK = 2 ** 21


def _gauss_hermite(q):
    x, w = np.polynomial.hermite_e.hermegauss(q)
    return x, w / np.sqrt(2.0 * np.pi)


def _axis_nodes(M, Lk, r, k, n):
    """Nodes (P, Q) and weights (P, Q) (Gaussian density included; zero weights pad the
    ragged panels) of graded axis ``k`` for ``P`` outer points with partial means ``M``
    (P, d) (z units, the ``u_1 .. u_(k-1)`` part), ``Lk`` (d,) the column ``L[:, k]`` and
    ``r`` (d,) the standard deviation each ``z_j`` keeps after axis ``k``."""
    P = M.shape[0]
    breaks = [np.broadcast_to(_GAUSS_BREAKS, (P, len(_GAUSS_BREAKS)))]
    seen = []
    for j in range(k, len(Lk)):
        if Lk[j] == 0.0:
            continue
        c = -M[:, j] / Lk[j]
        w = max(1.0, r[j]) / abs(Lk[j])
        # a transition within a quarter width of one already graded, of a width within 2x
        # (a collinear input's copy), adds nothing: its breakpoints go past the range
        dup = np.zeros(P, dtype=bool)
        for c0, w0 in seen:
            if 0.5 <= w / w0 <= 2.0:
                dup |= np.abs(c - c0) <= 0.25 * min(w, w0)
        seen.append((c, w))
        breaks.append(np.where(dup[:, None], 2.0 * _T, c[:, None] + w * _GRADE[None, :]))
    b = np.sort(np.clip(np.concatenate(breaks, axis=1), -_T, _T), axis=1)
    x, wq = np.polynomial.legendre.leggauss(n)
    lo, hi = b[:, :-1], b[:, 1:]
    half, mid = 0.5 * (hi - lo), 0.5 * (hi + lo)
    u = (mid[:, :, None] + half[:, :, None] * x).reshape(P, -1)
    wt = (half[:, :, None] * wq).reshape(P, -1) * np.exp(-0.5 * u * u) / np.sqrt(2.0 * np.pi)
    return u, wt


def _hermite_nodes(s):
    """Gauss-Hermite size for an axis of conditional standard deviation ``s`` (z units):
    the smallest q with ``(2q - 1)!! (2 s / pi)^(2q) < 1e-17`` (the rule's error on a
    function with poles ``pi / 2`` from the real axis), at least 2."""
    q, term = 1, (2.0 * s / np.pi) ** 2
    while term >= 1e-17 and q < 64:
        q += 1
        term *= (2 * q - 1) * (2.0 * s / np.pi) ** 2
    return max(q, 2)


def _cheb(n):
    """Chebyshev-Lobatto points on [-1, 1] and the matrix taking values there to
    Chebyshev coefficients (the interpolant's)."""
    j = np.arange(n)
    x = np.cos(np.pi * j / (n - 1))
    c = np.where((j == 0) | (j == n - 1), 0.5, 1.0)
    T = np.cos(np.pi * np.outer(j, j) / (n - 1)) * c[None, :]
    return x, T * (2.0 / (n - 1)) * c[:, None]


def _edges(W, mmax, extra=1):
    """Panel edges graded around 0: width ``W / 2`` next to it, ratio 2, up to ``mmax``
    (and ``extra`` panels beyond: the 1-D table's one, none for the 2-D table)."""
    J = max(1, int(np.ceil(np.log2(max(mmax, W) / W))) + extra)
    pos = W * 2.0 ** np.arange(-1, J + 1)
    return np.concatenate([-pos[::-1], [0.0], pos])


def _table(f, s, mmax, n, ncheb):
    """``g(m) = <f(m + s u)>_u`` on panels graded around ``m = 0`` (width ``max(1, s)``,
    ratio 2) covering ``|m| <= mmax``: Chebyshev interpolants of degree ``ncheb - 1`` per
    panel (through the Lobatto points), and a vectorized evaluator (Clenshaw)."""
    edges = _edges(max(1.0, s), mmax)
    xc, V2C = _cheb(ncheb)
    lo, hi = edges[:-1], edges[1:]
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    m = (mid[:, None] + half[:, None] * xc).ravel()
    u, wt = _axis_nodes(m[:, None], np.array([s]), np.zeros(1), 0, n)
    g = np.sum(wt * f(m[:, None] + s * u), axis=1).reshape(len(lo), ncheb)
    coef = g @ V2C.T                                     # (panels, ncheb)

    def ev(mq):
        # grouped by panel: Clenshaw with one panel's coefficients on a contiguous run (per
        # point the same arithmetic as looking the coefficients up point by point)
        i = np.clip(np.searchsorted(edges, mq) - 1, 0, len(lo) - 1)
        order = np.argsort(i, kind="stable")
        ms = mq[order]
        cut = np.concatenate([[0], np.cumsum(np.bincount(i, minlength=len(lo)))])
        out = np.empty(len(mq))
        for p in range(len(lo)):
            if cut[p + 1] == cut[p]:
                continue
            t2 = 2.0 * (ms[cut[p]:cut[p + 1]] - mid[p]) / half[p]
            cp = coef[p]
            b1 = np.full(len(t2), cp[ncheb - 1])
            b2 = np.zeros(len(t2))
            for k in range(ncheb - 2, 0, -1):
                b1, b2 = cp[k] + t2 * b1 - b2, b1
            out[order[cut[p]:cut[p + 1]]] = cp[0] + 0.5 * t2 * b1 - b2
        return out
    return ev


def _table2(f2, f3, C, mmax2, mmax3, n, ncheb, ncheb2):
    """``g(m2, m3) = <f2(m2 + C_00 u) f3(m3 + C_10 u + C_11 v)>_(u, v)`` (``C`` the lower
    factor of the last two variables' conditional covariance, pivoted: ``C_00`` its
    largest standard deviation) on the tensor product of panels graded around ``m2 = 0``
    (width ``max(1, C_00)``) and ``m3 = 0`` (width ``max(1, sd(z3))``), ratio 2, covering
    ``|m2| <= mmax2``, ``|m3| <= mmax3``: tensor Chebyshev interpolants of degree
    ``ncheb - 1`` in each variable per panel pair. The values are the graded rule in ``u``
    of ``f2`` times the 1-D table (:func:`_table`) of ``f3`` in ``v``; a vectorized
    evaluator (Chebyshev polynomials of each variable contracted with the coefficients)."""
    a, b, c = C[0, 0], C[1, 0], C[1, 1]
    ncheb = ncheb2
    tab = _table(f3, c, mmax3 + _T * abs(b), n, ncheb)
    e2 = _edges(max(1.0, abs(a)), mmax2, 0)
    e3 = _edges(max(1.0, np.hypot(b, c)), mmax3, 0)
    xc, V2C = _cheb(ncheb)
    mid2, half2 = 0.5 * (e2[1:] + e2[:-1]), 0.5 * (e2[1:] - e2[:-1])
    mid3, half3 = 0.5 * (e3[1:] + e3[:-1]), 0.5 * (e3[1:] - e3[:-1])
    m2 = (mid2[:, None] + half2[:, None] * xc).ravel()
    m3 = (mid3[:, None] + half3[:, None] * xc).ravel()
    M = np.stack(np.broadcast_arrays(m2[:, None], m3[None, :]), axis=-1).reshape(-1, 2)
    Lk, r = np.array([a, b]), np.array([0.0, c])
    g = np.empty(len(M))
    step = max(1, _CHUNK // ((len(_GAUSS_BREAKS) + 2 * len(_GRADE)) * n))
    for i in range(0, len(M), step):
        Mi = M[i:i + step]
        u, wt = _axis_nodes(Mi, Lk, r, 0, n)
        keep = wt > 0.0
        rows = np.nonzero(keep)[0]
        uk = u[keep]
        v = wt[keep] * f2(Mi[rows, 0] + a * uk) * tab(Mi[rows, 1] + b * uk)
        g[i:i + step] = np.bincount(rows, weights=v, minlength=len(Mi))
    P2, P3 = len(mid2), len(mid3)
    coef = np.einsum("aj,bl,pjql->paqb", V2C, V2C, g.reshape(P2, ncheb, P3, ncheb))
    coef = np.ascontiguousarray(coef.transpose(0, 2, 1, 3))      # (P2, P3, ncheb, ncheb)

    def basis(t):
        T = np.empty((len(t), ncheb))
        T[:, 0] = 1.0
        T[:, 1] = t
        for k in range(2, ncheb):
            T[:, k] = 2.0 * t * T[:, k - 1] - T[:, k - 2]
        return T

    def ev(q2, q3):
        i2 = np.clip(np.searchsorted(e2, q2) - 1, 0, P2 - 1)
        i3 = np.clip(np.searchsorted(e3, q3) - 1, 0, P3 - 1)
        out = np.empty(len(q2))
        blk = 8192
        for s0 in range(0, len(q2), blk):
            j2, j3 = i2[s0:s0 + blk], i3[s0:s0 + blk]
            T2 = basis((q2[s0:s0 + blk] - mid2[j2]) / half2[j2])
            T3 = basis((q3[s0:s0 + blk] - mid3[j3]) / half3[j3])
            out[s0:s0 + blk] = np.einsum("pa,pab,pb->p", T2, coef[j2, j3], T3)
        return out
    return ev


def _last_pair(L):
    """Order of four graded variables (factor ``L``, pivoted, all conditional standard
    deviations above :data:`_S_HERMITE`) whose last two make the 2-D table
    (:func:`_table2`), and its factor; ``None`` where no order is resolved.

    The table's panels are graded around ``m2 = 0`` and ``m3 = 0``; its one oblique
    feature is where the two transitions meet, ``m3 = (b / a) m2`` (``a, b, c`` the last
    two rows of the factor: ``z2 = m2 + a u``, ``z3 = m3 + b u + c v``), of width
    ``max(1, c)`` in ``m3`` against panels of ``~|b|``: resolved while
    ``rho = |b| / max(1, c) <= _RHO_MAX`` (the last two variables' conditional correlation
    not too close to 1). Of the six pairs, the one of least ``rho`` (each pair's larger
    conditional variance first, the other two in pivoted order)."""
    K = L @ L.T
    best = None
    for i in range(3):
        for j in range(i + 1, 4):
            rest = [k for k in range(4) if k not in (i, j)]
            perm = rest + [i, j]
            try:            # (K up to ~1e11 over conditional variances of 1e-2: may fail)
                Lp = np.linalg.cholesky(K[np.ix_(perm, perm)])
                if Lp[3, 3] ** 2 + Lp[3, 2] ** 2 > Lp[2, 2] ** 2:
                    perm = rest + [j, i]
                    Lp = np.linalg.cholesky(K[np.ix_(perm, perm)])
            except np.linalg.LinAlgError:
                continue
            if not np.all(np.diagonal(Lp) > _S_HERMITE):
                continue
            rho = abs(Lp[3, 2]) / max(1.0, Lp[3, 3])
            if (i, j) == (2, 3):
                perm, Lp = [0, 1, 2, 3], L           # the pivoted order as it is
            if best is None or rho < best[0]:
                best = (rho, perm, Lp)
    if best is None or best[0] > _RHO_MAX:
        return None
    return best[1], best[2]


def _nested(fs, L, n, ncheb, hermite_scale=1.0):
    """``<prod f_k(z_k)>`` for one factor ``L`` (d, d) (z = L u, pivoted order)."""
    d = L.shape[0]
    s = np.abs(np.diagonal(L))
    r = np.sqrt(np.maximum(np.cumsum((L ** 2)[:, ::-1], axis=1)[:, ::-1], 0.0))
    # r[j, k] = sqrt(sum_{i >= k} L_ji^2); after axis k: r[j, k + 1]
    r = np.concatenate([r, np.zeros((d, 1))], axis=1)
    gh = [_gauss_hermite(max(2, int(round(hermite_scale * _hermite_nodes(sk)))))
          if 0.0 < sk <= _S_HERMITE else None for sk in s]
    # the last axis, if graded, as a table of its conditional mean
    tab = tab2 = None
    plan = _last_pair(L) if d == 4 and np.all(s > _S_HERMITE) and _TABLE2 else None
    if plan is not None:
        # four graded axes: the last two one 2-D table of their conditional means
        fs, L = [fs[i] for i in plan[0]], plan[1]
        s = np.abs(np.diagonal(L))
        r = np.sqrt(np.maximum(np.cumsum((L ** 2)[:, ::-1], axis=1)[:, ::-1], 0.0))
        r = np.concatenate([r, np.zeros((d, 1))], axis=1)
        tab2 = _table2(fs[2], fs[3], L[2:, 2:], _T * np.sum(np.abs(L[2, :2])),
                       _T * np.sum(np.abs(L[3, :2])), n, ncheb,
                       _CHEB2 if ncheb == _CHEB else _LOWER_CHEB2)
    elif d >= 2 and s[d - 1] > _S_HERMITE:
        mmax = _T * np.sum(np.abs(L[d - 1, :d - 1]))
        tab = _table(fs[d - 1], s[d - 1], mmax, n, ncheb)

    def level(k, w, prod, M):
        if k == d:
            return float(np.sum(w * prod))
        if k == d - 2 and tab2 is not None:
            return float(np.sum(w * prod * tab2(M[:, k], M[:, k + 1])))
        if k == d - 1 and tab is not None:
            return float(np.sum(w * prod * tab(M[:, k])))
        if s[k] == 0.0:
            return level(k + 1, w, prod * fs[k](M[:, k]), M)
        graded = s[k] > _S_HERMITE
        per = (len(_GAUSS_BREAKS) + len(_GRADE) * (d - k)) * n if graded else len(gh[k][0])
        step = max(1, _CHUNK // per)
        total = 0.0
        for i in range(0, len(w), step):
            Mi, wi, pi = M[i:i + step], w[i:i + step], prod[i:i + step]
            if graded:
                u, wt = _axis_nodes(Mi, L[:, k], r[:, k + 1], k, n)
            else:
                u = np.broadcast_to(gh[k][0], (len(wi), len(gh[k][0])))
                wt = np.broadcast_to(gh[k][1], u.shape)
            keep = wt > 0.0
            rows = np.nonzero(keep)[0]
            uk = u[keep]
            Mn = Mi[rows] + uk[:, None] * L[None, :, k]
            total += level(k + 1, wi[rows] * wt[keep], pi[rows] * fs[k](Mn[:, k]), Mn)
        return total

    return level(0, np.ones(1), np.ones(1), np.zeros((1, d)))


def expect_graded(fs, K, *, return_error=False):
    """``<f_1(z_1) ... f_d(z_d)>`` for ``z ~ N(0, K)``, any variance (module docstring).

    Parameters
    ----------
    fs : sequence of d callables
        Vectorized smooth functions, each with its transition (if any) near 0, width ~1.
    K : ndarray (B, d, d) or (d, d)
        Covariances (PSD, any rank).
    return_error : bool
        Also return the estimated absolute error (the lower rule's difference).

    Returns
    -------
    value : ndarray (B,) or float
    error : ndarray (B,) or float
        Only with ``return_error``.
    """
    fs = list(fs)
    d = len(fs)
    K = np.asarray(K, dtype=float)
    Kb = K.reshape(-1, d, d)
    order, L = _factor(Kb)
    val = np.empty(len(Kb))
    err = np.zeros(len(Kb))
    for b in range(len(Kb)):
        fo = [fs[i] for i in order[b]]
        val[b] = _nested(fo, L[b], _NODES, _CHEB)
        if return_error:
            err[b] = abs(val[b] - _nested(fo, L[b], _LOWER_NODES, _LOWER_CHEB, 0.75))
    shape = K.shape[:-2]
    if return_error:
        return val.reshape(shape), err.reshape(shape)
    return val.reshape(shape)


def graded_axes(K, table2=True):
    """Number of graded axes integrated point by point (conditional standard deviation
    above :data:`_S_HERMITE`, less one where the last axis is graded: it is a table; less
    two where four variables are all graded and a pair of them makes the 2-D table,
    :func:`_last_pair`) of each covariance ``K`` (B, d, d), shape (B,): the nested rule's
    cost is ~``300^m`` evaluations for ``m`` of them (tanh, one core: m = 2 ~0.1-1 s, plus
    ~2-6 s for a 2-D table; m = 3 ~40-60 s). ``table2=False``: as if four graded axes
    had no 2-D table (three point by point), whether or not :func:`expect_graded` makes one."""
    K = np.asarray(K, dtype=float)
    _, L = _factor(K)
    graded = np.abs(np.diagonal(L, axis1=1, axis2=2)) > _S_HERMITE
    m = np.sum(graded, axis=1) - graded[:, -1]
    if K.shape[-1] == 4 and _TABLE2 and table2:
        for b in np.flatnonzero(np.all(graded, axis=1)):
            if _last_pair(L[b]) is not None:
                m[b] = 2
    return m
