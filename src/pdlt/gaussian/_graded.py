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
point by point (~40-60 s). Instead the last two are one 2-D table of their conditional means
(:class:`_Table2`): ``g(m2, m3) = <f_2(m2 + a u) f_3(m3 + b u + c v)>`` (``a, b, c`` the
last two rows of the factor), tensor Chebyshev interpolants of degree 15 in each variable;
the outer two axes point by point, as above. Where the two transitions meet, ``m3 = (b /
a) m2``, ``g`` has a ridge of width ``max(1, c)`` in ``m3``, oblique to any panels of
``(m2, m3)`` and narrow against ``|b|`` when the pair is highly correlated given the other
two (``rho = |b| / max(1, c)`` large: nearly dependent directions, and ``c = 0`` for the
rank-deficient covariances of four inputs in three dimensions without a bias). So the table
is sheared, ``t = m3 - (b / a) m2``, while ``f_2``'s transition lies within the Gaussian,
and as it is beyond; its values are matrix products over one rule shared by all its nodes
(``_Table2``'s docstring). The ridge is also a transition of the outer axes (a fifth row
of the factor, ``z3 - (b / a) z2``, of conditional standard deviation ``c``): without it,
4e-7 off at rank 3 and K = 1e6. The pair taken last is the one of least ``rho``
(:func:`_last_pair`: the table's cost grows with it). Measured (erf, against the exact
orthant form ``erf(z) = E sign(z + e)``, ``benchmarks/graded_four.py``): random directions
at K = 30 .. 1e6, nearly dependent ones (``rho`` 0.6 .. 11) and four directions in three
dimensions (rank 3, ``rho`` up to 110 at K = 1e6) all within 6e-15, except one random case
at K = 1e6 (4e-10, estimated 1.4e-8: the outer graded rules, as before); tables of degree
11 / 9: 1e-13 .. 5e-13 / 3e-11 .. 1e-10 (rejected). Cost (tanh, one core, under load, value
and estimate): 0.2-0.4 s a covariance, 0.6-1.1 s at ``rho`` ~ 50-110 (before: 2-4 s with
an unsheared table at ``rho <= 3``, three axes point by point beyond).

Everything of that rule but the functions' values depends on the covariance only: the
outer points and weights, the table's panels and shared rules, the points sorted by panel
pair (:class:`_Plan4`). The folds ask ~35 function tuples of each four-variable covariance
(its variables in any order); :class:`GradedPlans` keeps the plans across calls, by the
covariance in pivoted order, and each plan the tables of the pairs of functions it has met,
so a further tuple costs its two outer functions at the points, a table where its last pair
is new, and one ``(n, n)`` contraction per panel pair (the points' Chebyshev bases times
the coefficients): ~0.05-0.19 s against ~0.3-0.5 s before. Three variables whose last is
graded (:class:`_Plan3`: ~47 tuples a covariance in a residual fold) likewise share their
outer points and the last axis' panels. One code path with and without
:class:`GradedPlans`, so values do not depend on it.

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

import collections

import numpy as np

from ._multi import _factor
from ._rule import _panels

__all__ = ["GradedPlans", "expect_graded", "graded_axes", "table_cost", "table_weight"]

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
#: the 2-D table: ``f``'s transition (width 1) graded to ``_TAIL`` widths (beyond: its
#: asymptote, as :data:`_GRADE`); panel widths at most ``_CAP`` times the width of a feature
#: oblique to them; nodes of the shared rules per matrix-product block
_TAIL = 32.0
_CAP = 2.0
_QBLOCK = 4096
#: the 2-D table's ridge graded on the outer axes (False: only the four variables' own
#: transitions, as before session 16: 4e-7 off at rank 3 and K = 1e6; for tests)
_RIDGE = True
#: evaluation points per vectorized block
_CHUNK = 2 ** 21
#: :class:`GradedPlans`: bytes of plans kept (~40 bytes a point, ~2e5 points a plan, and
#: its tables: ~10 MB a covariance and rule)
_PLAN_BYTES = 2 ** 30
#: tables (pairs of functions) a plan keeps, most recently used
_FITS_KEPT = 4


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
    u, wt = _panels(np.sort(np.clip(np.concatenate(breaks, axis=1), -_T, _T), axis=1), n)
    return u, wt * np.exp(-0.5 * u * u) / np.sqrt(2.0 * np.pi)


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


def _by_run(i):
    """The stable order sorting the panel indices ``i`` (NumPy's radix sort where they fit
    16 bits: ~7x faster than on int64, the same order)."""
    if len(i) and np.max(i) < 2 ** 15:
        i = i.astype(np.int16)
    return np.argsort(i, kind="stable")


class _Table1:
    """``g(m) = <f(m + s u)>_u`` on panels graded around ``m = 0`` (width ``max(1, s)``,
    ratio 2) covering ``|m| <= mmax``: Chebyshev interpolants of degree ``ncheb - 1`` per
    panel (through the Lobatto points). The panels and the rule at their nodes depend on
    ``s`` and ``mmax`` only; the coefficients on ``f`` (:meth:`fit`); values at points
    sorted by panel once (:meth:`points`) by Clenshaw, one panel's coefficients on a
    contiguous run (per point the same arithmetic as looking them up point by point)."""

    def __init__(self, s, mmax, n, ncheb):
        self.s, self.ncheb = s, ncheb
        self.edges = _edges(max(1.0, s), mmax)
        xc, self.V2C = _cheb(ncheb)
        lo, hi = self.edges[:-1], self.edges[1:]
        self.mid, self.half = 0.5 * (lo + hi), 0.5 * (hi - lo)
        self.m = (self.mid[:, None] + self.half[:, None] * xc).ravel()
        self.u, self.wt = _axis_nodes(self.m[:, None], np.array([s]), np.zeros(1), 0, n)

    def fit(self, f):
        """Coefficients (panels, ncheb) for ``f``."""
        g = np.sum(self.wt * f(self.m[:, None] + self.s * self.u), axis=1)
        return g.reshape(len(self.mid), self.ncheb) @ self.V2C.T

    def points(self, mq):
        """The points ``mq`` sorted by panel: their order, and (run bounds, twice the local
        coordinates)."""
        P = len(self.mid)
        i = np.clip(np.searchsorted(self.edges, mq) - 1, 0, P - 1)
        order = _by_run(i)
        cut = np.concatenate([[0], np.cumsum(np.bincount(i, minlength=P))])
        t2 = 2.0 * (mq[order] - self.mid[i[order]]) / self.half[i[order]]
        return order, (cut, t2)

    def values(self, pts, coef):
        """``g`` at :meth:`points` ``pts`` (in their order)."""
        cut, t2 = pts
        out = np.empty(len(t2))
        n = self.ncheb
        for p in range(len(self.mid)):
            if cut[p + 1] == cut[p]:
                continue
            t = t2[cut[p]:cut[p + 1]]
            cp = coef[p]
            b1 = np.full(len(t), cp[n - 1])
            b2 = np.zeros(len(t))
            for k in range(n - 2, 0, -1):
                b1, b2 = cp[k] + t * b1 - b2, b1
            out[cut[p]:cut[p + 1]] = cp[0] + 0.5 * t * b1 - b2
        return out


def _table(f, s, mmax, n, ncheb):
    """:class:`_Table1` of ``f`` as a vectorized evaluator ``g(mq)``."""
    tab = _Table1(s, mmax, n, ncheb)
    coef = tab.fit(f)

    def ev(mq):
        order, pts = tab.points(mq)
        out = np.empty(len(mq))
        out[order] = tab.values(pts, coef)
        return out
    return ev


def _uniform(lo, hi, h, extra):
    """Breakpoints of spacing at most ``h`` on ``[lo, hi]``, with ``extra`` ones inside."""
    b = np.concatenate([np.linspace(lo, hi, max(1, int(np.ceil((hi - lo) / h))) + 1), extra])
    return np.unique(b[(b >= lo) & (b <= hi)])


def _refine(edges, reach, cap):
    """Panels of ``edges`` that meet ``[-reach, reach]`` split to widths at most ``cap``."""
    out = [edges[:1]]
    for e0, e1 in zip(edges[:-1], edges[1:]):
        k = int(np.ceil((e1 - e0) / cap)) if (e1 > -reach and e0 < reach) else 1
        out.append(np.linspace(e0, e1, max(k, 1) + 1)[1:])
    return np.concatenate(out)


class _Tensor2:
    """Tensor Chebyshev interpolants on the panel pairs of ``e2`` x ``e3``: the Lobatto
    nodes, coefficients from values there (:meth:`fit`), and sums of weighted values at
    fixed points (:meth:`points`: grouped by panel pair, one ``(n, n)`` contraction a pair)."""

    def __init__(self, e2, e3, ncheb):
        self.e2, self.e3, self.n = e2, e3, ncheb
        self.xc, self.V2C = _cheb(ncheb)
        self.mid2, self.half2 = 0.5 * (e2[1:] + e2[:-1]), 0.5 * np.diff(e2)
        self.mid3, self.half3 = 0.5 * (e3[1:] + e3[:-1]), 0.5 * np.diff(e3)

    def nodes(self):
        return ((self.mid2[:, None] + self.half2[:, None] * self.xc).ravel(),
                (self.mid3[:, None] + self.half3[:, None] * self.xc).ravel())

    def fit(self, g):
        """Coefficients (P2 P3, n, n) from the values ``g`` (P2 n, P3 n) at :meth:`nodes`."""
        P2, P3, n = len(self.mid2), len(self.mid3), self.n
        coef = (self.V2C @ g.reshape(P2, n, P3 * n)).reshape(P2, n, P3, n) @ self.V2C.T
        return np.ascontiguousarray(coef.transpose(0, 2, 1, 3)).reshape(P2 * P3, n, n)

    def _basis(self, t):
        """Chebyshev polynomials ``T_k(t)``, (n, len(t))."""
        T = np.empty((self.n, len(t)))
        T[0] = 1.0
        T[1] = t
        t2 = 2.0 * t
        for k in range(2, self.n):
            np.multiply(t2, T[k - 1], out=T[k])
            T[k] -= T[k - 2]
        return T

    def points(self, q2, q3):
        """The points ``(q2, q3)`` sorted by panel pair: their order, and (the pair of each
        run, run starts, local coordinates in [-1, 1] of both variables, sorted)."""
        P3 = len(self.mid3)
        i2 = np.clip(np.searchsorted(self.e2, q2) - 1, 0, len(self.mid2) - 1)
        i3 = np.clip(np.searchsorted(self.e3, q3) - 1, 0, P3 - 1)
        pair = i2 * P3 + i3
        order = _by_run(pair)
        pair, i2, i3 = pair[order], i2[order], i3[order]
        start = np.flatnonzero(np.concatenate([[True], pair[1:] != pair[:-1]]))
        x2 = (q2[order] - self.mid2[i2]) / self.half2[i2]
        x3 = (q3[order] - self.mid3[i3]) / self.half3[i3]
        return order, (pair[start], start, x2, x3)

    def total(self, pts, coef, W):
        """``sum_p W_p g(q_p)`` over :meth:`points` ``pts`` (``W`` sorted as they are)."""
        pair, start, x2, x3 = pts
        stop = np.append(start[1:], len(x2))
        A = self._basis(x2)
        A *= W
        Bm = self._basis(x3)
        H = np.empty((len(pair), self.n, self.n))
        for g, (s0, s1) in enumerate(zip(start, stop)):
            np.dot(A[:, s0:s1], Bm[:, s0:s1].T, out=H[g])
        return float(np.sum(H * coef[pair]))


class _Table2:
    r"""``g(m2, m3) = <f2(m2 + a u) f3(m3 + b u + c v)>_(u, v)`` for ``|m2| <= mmax2``,
    ``|m3| <= mmax3`` (``C = [[a, 0], [b, c]]`` the lower factor of the last two
    variables' conditional covariance, pivoted: ``a >= hypot(b, c)``, ``c >= 0``; ``c = 0``
    for a rank-deficient covariance): tensor Chebyshev interpolants (``ncheb`` points a
    panel, each variable). The panels and rules depend on ``C`` only (built once); the
    values on ``f2, f3`` (:meth:`fit`, one per pair of functions); sums over fixed points
    (:meth:`points`, :meth:`total`) serve every pair of functions.

    With ``T(m) = <f3(m + c v)>_v`` (the 1-D table :func:`_table`; ``f3`` itself at
    ``c = 0``), ``g = <f2(m2 + a u) T(m3 + b u)>_u`` has three features: ``f2``'s transition
    at ``m2 = 0`` (width ``W2 = max(1, a)``), ``T``'s smoothed by ``u`` at ``m3 = 0``
    (width ``h = hypot(b, max(1, c))``), and, while ``f2``'s transition lies within the
    Gaussian (``|m2| <= B = 8.5 a + 32``), the ridge where the two meet, ``m3 = beta m2``
    (``beta = b / a``), of width ``max(1, c)``: oblique, and narrow against ``|b|`` at a
    high conditional correlation. So two tables:

    * ``|m2| <= B``, sheared: ``G(m2, t) = g(m2, t + beta m2)`` on panels graded around
      ``m2 = 0`` and the ridge ``t = 0`` (width ``max(1, c)``), ratio 2, split to widths
      at most :data:`_CAP` ``W2`` in ``m2`` and ``_CAP h`` in ``t`` where the (now oblique)
      ``m3 = 0`` feature crosses, ``|t| <= |beta| B + 8.5 h``. In ``y = z2`` (``y = m2 + a
      u``) ``G = int f2(y) T(t + beta y) phi((y - m2) / a) / a dy`` separates: one matrix
      product over a ``y`` rule shared by every node (composite Gauss-Legendre, spacing
      ``min(a, max(1, c) / |beta|)`` (``T``'s transition in ``y``) plus ``f2``'s graded
      breakpoints around 0, out to ``B + 8.5 a``).
    * ``|m2| > B`` (``f2`` at its asymptote over the Gaussian), as it is: panels graded
      from ``B`` in ``m2`` and around ``m3 = 0`` (width ``h``); one matrix product over a
      ``u`` rule shared by every node (spacing ``min(1, max(1, c) / |b|)``).

    The shared rules have ``~10 (34 + 64 / a) max(1, rho)`` nodes (``rho = |b| / max(1,
    c)``), against ~450 per table node point by point: the matrix products make the table
    ~10x cheaper than the unsheared one it replaced (module docstring: accuracy and cost).
    """

    def __init__(self, C, mmax2, mmax3, n, ncheb):
        a, b, c = abs(C[0, 0]), C[1, 0], max(C[1, 1], 0.0)
        self.a, self.b, self.c, self.n = a, b, c, n
        self.beta = beta = b / a
        W2, W3 = max(1.0, a), max(1.0, c)
        h = np.hypot(b, W3)
        self.B = B = min(_T * a + _TAIL, max(mmax2, W2))
        Y = B + _T * a
        # region I (|m2| <= B), sheared: t = m3 - beta m2
        tmax = mmax3 + abs(beta) * B
        e2 = _edges(W2, B, 0)
        e2 = _refine(np.concatenate([[-B], e2[np.abs(e2) < B], [B]]), B, _CAP * W2)
        e3 = _refine(_edges(W3, tmax, 0), abs(beta) * B + _T * h, _CAP * h)
        self.tables = [_Tensor2(e2, e3, ncheb)]
        self.Tmax = max(tmax + abs(beta) * Y, mmax3 + _T * abs(b))
        self.ncheb = ncheb
        # its values: the y rule, one matrix product
        hy = min(a, W3 / abs(beta)) if beta != 0.0 else a
        self.y, wy = _panels(_uniform(-Y, Y, hy, np.concatenate([-_GRADE[::-1], _GRADE])), n)
        self.wy = wy / (a * np.sqrt(2.0 * np.pi))
        if mmax2 > B:
            # region II (|m2| > B, f2 at its asymptote), as it is: the u rule
            pos = B * 2.0 ** np.arange(0, int(np.ceil(np.log2(mmax2 / B))) + 1)
            e3 = _edges(h, mmax3, 0)
            self.tables += [_Tensor2(-pos[::-1], e3, ncheb), _Tensor2(pos, e3, ncheb)]
            hu = min(1.0, W3 / abs(b)) if b != 0.0 else 1.0
            self.u, wu = _panels(_uniform(-_T, _T, hu, _GAUSS_BREAKS), n)
            self.wu = wu * np.exp(-0.5 * self.u ** 2) / np.sqrt(2.0 * np.pi)

    def fit(self, f2, f3):
        """Coefficients of each region's interpolant for ``f2, f3``."""
        a, b, beta = self.a, self.b, self.beta
        T = _table(f3, self.c, self.Tmax, self.n, self.ncheb) if self.c > 0.0 else f3
        one = self.tables[0]
        m2, t3 = one.nodes()
        y, wy = self.y, self.wy * f2(self.y)
        g = np.zeros((len(m2), len(t3)))
        for s in range(0, len(y), _QBLOCK):
            ys = y[s:s + _QBLOCK]
            phi = np.exp(-0.5 * ((ys[None, :] - m2[:, None]) / a) ** 2) * wy[None, s:s + _QBLOCK]
            g += phi @ T((t3[:, None] + beta * ys[None, :]).ravel()).reshape(len(t3), len(ys)).T
        coefs = [one.fit(g)]
        for side in self.tables[1:]:
            m2, m3 = side.nodes()
            g = np.zeros((len(m2), len(m3)))
            for s in range(0, len(self.u), _QBLOCK):
                us = self.u[s:s + _QBLOCK]
                F = f2(m2[:, None] + a * us[None, :]) * self.wu[None, s:s + _QBLOCK]
                g += F @ T((m3[:, None] + b * us[None, :]).ravel()).reshape(len(m3), len(us)).T
            coefs.append(side.fit(g))
        return coefs

    def points(self, q2, q3):
        """The points ``(q2, q3)`` by region (region I sheared), each sorted by panel pair
        (:meth:`_Tensor2.points`): their order (P,) and ``[(region, first, stop, its
        points)]`` (the region's run of that order)."""
        inner = np.abs(q2) <= self.B
        parts = [(np.flatnonzero(inner), 0)]
        if len(self.tables) > 1:
            parts += [(np.flatnonzero(~inner & (q2 < 0)), 1),
                      (np.flatnonzero(~inner & (q2 > 0)), 2)]
        order, out, first = [], [], 0
        for k, r in parts:
            if len(k):
                q3k = q3[k] - self.beta * q2[k] if r == 0 else q3[k]
                o, pts = self.tables[r].points(q2[k], q3k)
                order.append(k[o])
                out.append((r, first, first + len(k), pts))
                first += len(k)
        return np.concatenate(order), out

    def total(self, pts, coefs, W):
        """``sum_p W_p g(q_p)`` over :meth:`points` ``pts`` (``W`` in their order)."""
        return sum(self.tables[r].total(p, coefs[r], W[i:j]) for r, i, j, p in pts)


def _last_pair(L):
    """Order of four variables (factor ``L``, pivoted, the first three conditional
    standard deviations above :data:`_S_HERMITE`) whose last two make the 2-D table
    (:class:`_Table2`), and its factor.

    The table's cost grows with ``rho = |b| / max(1, c)`` (``a, b, c`` the last two rows
    of the factor: ``z2 = m2 + a u``, ``z3 = m3 + b u + c v``; the last two variables'
    conditional correlation), so of the six pairs the one of least ``rho`` (each pair's
    larger conditional variance first, the other two in pivoted order) among the orders
    whose four conditional standard deviations exceed :data:`_S_HERMITE`; where none does
    (a rank-deficient covariance: four inputs in three dimensions without bias, or a
    near-duplicate), the pivoted order as it is (its last ``c`` small or 0)."""
    K = L @ L.T
    best = (np.inf, [0, 1, 2, 3], L)
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
            if rho < best[0]:
                best = (rho, perm, Lp)
    return best[1], best[2]


def _reach(L):
    """``r[j, k] = sqrt(sum_{i >= k} L_ji^2)`` (the standard deviation ``z_j`` keeps from
    axis ``k`` on; after axis ``k``: ``r[j, k + 1]``), a zero column appended."""
    r = np.sqrt(np.maximum(np.cumsum((L ** 2)[:, ::-1], axis=1)[:, ::-1], 0.0))
    return np.concatenate([r, np.zeros((len(L), 1))], axis=1)


def _graded_level(L, r, k, n, w, M):
    """Graded axis ``k`` (:func:`_axis_nodes`) for the points ``M`` (P, rows) of weights
    ``w`` (P,): the next level's weights and points, zero-weight padding dropped, and the
    point each came from."""
    u, wt = _axis_nodes(M, L[:, k], r[:, k + 1], k, n)
    keep = wt > 0.0
    rows = np.nonzero(keep)[0]
    return w[rows] * wt[keep], M[rows] + u[keep][:, None] * L[None, :, k], rows


def _tabled(L):
    """True where :func:`expect_graded` takes a covariance of factor ``L`` (pivoted) by
    :class:`_Plan4`: four variables, the first three graded."""
    return (L.shape[0] == 4 and _TABLE2
            and bool(np.all(np.abs(np.diagonal(L))[:3] > _S_HERMITE)))


def _planned(L):
    """True where :func:`expect_graded` takes a covariance of factor ``L`` by a plan:
    :func:`_tabled`, or three variables whose last is graded (:class:`_Plan3`)."""
    return _tabled(L) or (L.shape[0] == 3 and abs(L[2, 2]) > _S_HERMITE)


class _Plan:
    """What :class:`_Plan3` and :class:`_Plan4` share: the outer two axes of the factor
    ``L`` (rows: the variables, and the graded transitions beyond them) graded point by
    point, the points sorted for ``self.table`` (its ``points`` of the columns ``cols``),
    and the weights times the two outer functions (:meth:`outer`)."""

    def _outer_points(self, L, n, cols):
        r = _reach(L)
        w, M = np.ones(1), np.zeros((1, len(L)))
        for k in range(2):
            w, M, _ = _graded_level(L, r, k, n, w, M)
        order, self.pts = self.table.points(*(M[:, j] for j in cols))
        self.w, self.z0, self.z1 = w[order], M[order, 0], M[order, 1]
        self.fits = collections.OrderedDict()
        return len(w)

    def outer(self, fs):
        """The weights times ``fs[0]``, ``fs[1]`` at the points (in their order)."""
        return self.w * fs[0](self.z0) * fs[1](self.z1)


class _Plan3(_Plan):
    """Three variables, the last graded (pivoted factor ``L``; so all three: the pivoted
    conditional standard deviations do not grow): the outer two axes graded point by point,
    the last a table of its conditional mean (:class:`_Table1`). As :class:`_Plan4`: the
    points, their weights and the table's panels and rule are built once; a function tuple
    costs its two outer functions at the points, the last one's table (kept by name) and
    Clenshaw on the points sorted by panel (the residual folds ask ~47 tuples of each
    such covariance)."""

    def __init__(self, L, n, ncheb):
        self.perm = [0, 1, 2]
        self.table = _Table1(abs(L[2, 2]), _T * np.sum(np.abs(L[2, :2])), n, ncheb)
        P = self._outer_points(L, n, (2,))
        self.nbytes = 4 * 8 * P + _FITS_KEPT * 8 * self.table.ncheb * len(self.table.mid)

    def value(self, fs, names):
        """``<prod fs_k(z_k)>`` (``fs`` in ``L``'s order, ``names`` identify them)."""
        fs, key = [fs[i] for i in self.perm], names[self.perm[2]]
        coef = _kept(self.fits, key, lambda: self.table.fit(fs[2]))
        return float(np.sum(self.outer(fs) * self.table.values(self.pts, coef)))


def _kept(fits, key, fit):
    """``fits[key]``, fitted where missing; the :data:`_FITS_KEPT` most recent kept."""
    if key in fits:
        fits.move_to_end(key)
    else:
        fits[key] = fit()
        if len(fits) > _FITS_KEPT:
            fits.popitem(last=False)
    return fits[key]


class _Plan4(_Plan):
    """Four variables, the first three graded (pivoted factor ``L``): the last two one 2-D
    table of their conditional means (:class:`_Table2`; the pair of least ``rho``,
    :func:`_last_pair`), the outer two axes graded point by point. Everything but the
    functions' values depends on the covariance only and is built once: the outer points
    and weights, the table's panels and rules, the points sorted by panel pair. A function
    tuple then costs its two outer functions at the points, the table of its last two
    (once per pair of functions: :meth:`value` keeps them by ``names``) and one contraction
    per panel pair (the folds ask ~35 tuples of each covariance)."""

    def __init__(self, L, n, ncheb):
        self.perm, L = _last_pair(L)
        # the table's ridge, t = z3 - (b / a) z2 (conditional sd c: sharp where the pair is
        # highly correlated), is a transition of the outer axes too: graded as a fifth row
        L5 = np.vstack([L, L[3] - (L[3, 2] / L[2, 2]) * L[2]]) if _RIDGE else L
        self.table = _Table2(L[2:, 2:], _T * np.sum(np.abs(L[2, :2])),
                             _T * np.sum(np.abs(L[3, :2])), n,
                             _CHEB2 if ncheb == _CHEB else _LOWER_CHEB2)
        P = self._outer_points(L5, n, (2, 3))
        # points (w, z0, z1, two local coordinates) and the tables kept
        self.nbytes = 5 * 8 * P + _FITS_KEPT * sum(
            8 * t.n * t.n * len(t.mid2) * len(t.mid3) for t in self.table.tables)

    def value(self, fs, names):
        """``<prod fs_k(z_k)>`` (``fs`` in ``L``'s order; ``names`` identify them: equal
        names, equal functions)."""
        fs = [fs[i] for i in self.perm]
        key = tuple(names[i] for i in self.perm[2:])
        coefs = _kept(self.fits, key, lambda: self.table.fit(fs[2], fs[3]))
        return float(self.table.total(self.pts, coefs, self.outer(fs)))


class GradedPlans:
    """:class:`_Plan4` and :class:`_Plan3` of four- and three-variable covariances, kept
    across :func:`expect_graded` calls (one ``pdlt.statistics`` call: its folds ask ~35-47
    function tuples of each covariance, in any order of its variables), by the covariance in pivoted order and
    rule, from the second time one is asked (a fold that asks each covariance once, V of
    many inputs, keeps none), up to ``max_bytes`` (points and tables; beyond, plans are
    built for their call and not kept: the folds ask the covariances in cycles, where
    dropping the least recently used would keep none)."""

    def __init__(self, max_bytes=None):
        self.max_bytes = _PLAN_BYTES if max_bytes is None else max_bytes
        self.nbytes = 0
        self._plans = {}
        self._seen = set()
        #: plans built (covariance, rule)
        self.built = 0

    def plan(self, Kp, n, ncheb):
        key = (Kp.tobytes(), n, ncheb)
        if key in self._plans:
            return self._plans[key]
        p = _plan(Kp, n, ncheb)
        self.built += 1
        size = 0 if p is None else p.nbytes
        if key in self._seen and self.nbytes + size <= self.max_bytes:
            self._plans[key] = p
            self.nbytes += size
        self._seen.add(key)
        return p


def _pivoted(K, o):
    """The covariance ``K`` (d, d) in the pivoted order ``o``, contiguous: the key of its
    plan (every order of its variables gives the same one)."""
    return np.ascontiguousarray(K[np.ix_(o, o)])


def _plan(Kp, n, ncheb):
    """:class:`_Plan4` or :class:`_Plan3` of the covariance ``Kp`` (d, d, pivoted order),
    from its own factor (so a function of ``Kp`` alone, whichever order of the variables
    asked first); None where neither applies (:func:`_planned`)."""
    o, L = _factor(Kp[None])
    if _tabled(L[0]):
        p = _Plan4(L[0], n, ncheb)
    elif _planned(L[0]):
        p = _Plan3(L[0], n, ncheb)
    else:
        return None
    p.perm = [int(o[0][i]) for i in p.perm]
    return p


def _nested(fs, L, n, ncheb, hermite_scale=1.0):
    """``<prod f_k(z_k)>`` for one factor ``L`` (d, d) (z = L u, pivoted order)."""
    d = L.shape[0]
    s = np.abs(np.diagonal(L))
    r = _reach(L)
    gh = [_gauss_hermite(max(2, int(round(hermite_scale * _hermite_nodes(sk)))))
          if 0.0 < sk <= _S_HERMITE else None for sk in s]
    # the last axis, if graded, as a table of its conditional mean
    tab = None
    if d >= 2 and s[d - 1] > _S_HERMITE:
        mmax = _T * np.sum(np.abs(L[d - 1, :d - 1]))
        tab = _table(fs[d - 1], s[d - 1], mmax, n, ncheb)

    def level(k, w, prod, M):
        if k == d:
            return float(np.sum(w * prod))
        if k == d - 1 and tab is not None:
            return float(np.sum(w * prod * tab(M[:, k])))
        if s[k] == 0.0:
            return level(k + 1, w, prod * fs[k](M[:, k]), M)
        graded = s[k] > _S_HERMITE
        per = ((len(_GAUSS_BREAKS) + len(_GRADE) * (len(L) - k)) * n if graded
               else len(gh[k][0]))
        step = max(1, _CHUNK // per)
        total = 0.0
        for i in range(0, len(w), step):
            Mi, wi, pi = M[i:i + step], w[i:i + step], prod[i:i + step]
            if graded:
                wn, Mn, rows = _graded_level(L, r, k, n, wi, Mi)
            else:
                u = np.broadcast_to(gh[k][0], (len(wi), len(gh[k][0])))
                wt = np.broadcast_to(gh[k][1], u.shape)
                keep = wt > 0.0
                rows = np.nonzero(keep)[0]
                wn, Mn = wi[rows] * wt[keep], Mi[rows] + u[keep][:, None] * L[None, :, k]
            total += level(k + 1, wn, pi[rows] * fs[k](Mn[:, k]), Mn)
        return total

    return level(0, np.ones(1), np.ones(1), np.zeros((1, len(L))))


def expect_graded(fs, K, *, return_error=False, plans=None, names=None):
    """``<f_1(z_1) ... f_d(z_d)>`` for ``z ~ N(0, K)``, any variance (module docstring).

    Parameters
    ----------
    fs : sequence of d callables
        Vectorized smooth functions, each with its transition (if any) near 0, width ~1.
    K : ndarray (B, d, d) or (d, d)
        Covariances (PSD, any rank).
    return_error : bool
        Also return the estimated absolute error (the lower rule's difference).
    plans : GradedPlans, optional
        Keeps the three- and four-variable covariances' points, rules and tables across
        calls (the values do not depend on it).
    names : sequence of d hashables, optional
        Identify ``fs`` for ``plans`` (equal names, equal functions; default: the
        functions themselves).

    Returns
    -------
    value : ndarray (B,) or float
    error : ndarray (B,) or float
        Only with ``return_error``.
    """
    fs = list(fs)
    d = len(fs)
    names = list(fs) if names is None else list(names)
    K = np.asarray(K, dtype=float)
    Kb = K.reshape(-1, d, d)
    order, L = _factor(Kb)
    val = np.empty(len(Kb))
    err = np.zeros(len(Kb))
    rules = [(_NODES, _CHEB, 1.0)] + ([(_LOWER_NODES, _LOWER_CHEB, 0.75)] if return_error else [])
    for b in range(len(Kb)):
        o = order[b]
        fo, no = [fs[i] for i in o], [names[i] for i in o]
        Kp = _pivoted(Kb[b], o) if _planned(L[b]) else None
        out = []
        for n, ncheb, hs in rules:
            if Kp is not None:
                p = _plan(Kp, n, ncheb) if plans is None else plans.plan(Kp, n, ncheb)
                if p is not None:
                    out.append(p.value(fo, no))
                    continue
            out.append(_nested(fo, L[b], n, ncheb, hs))
        val[b] = out[0]
        if return_error:
            err[b] = abs(out[0] - out[1])
    shape = K.shape[:-2]
    if return_error:
        return val.reshape(shape), err.reshape(shape)
    return val.reshape(shape)


def graded_axes(K, table2=True):
    """Number of graded axes integrated point by point (conditional standard deviation
    above :data:`_S_HERMITE`, less one where the last axis is graded: it is a table; two
    where four variables have their first three graded: the last two make the 2-D table,
    :class:`_Table2`) of each covariance ``K`` (B, d, d), shape (B,): the nested rule's
    cost is ~``300^m`` evaluations for ``m`` of them (tanh, one core: m = 2 ~0.1-1 s, plus
    ~0.1-1 s for a 2-D table; m = 3 ~40-60 s). ``table2=False``: as if four graded axes
    had no 2-D table (three point by point), whether or not :func:`expect_graded` makes one."""
    K = np.asarray(K, dtype=float)
    _, L = _factor(K)
    graded = np.abs(np.diagonal(L, axis1=1, axis2=2)) > _S_HERMITE
    m = np.sum(graded, axis=1) - graded[:, -1]
    if K.shape[-1] == 4 and _TABLE2 and table2:
        m[np.all(graded[:, :3], axis=1)] = 2
    return m


#: ``rho`` (:func:`_last_pair`) up to which a 2-D table costs its base; beyond, in
#: proportion (its shared rules have ~``rho`` times the nodes). Measured (erf, rank 3, one
#: core, value and estimate): rho 45-110 0.6-1.1 s, 447 4.8 s, 4475 51 s
_RHO_COST = 50.0


def table_weight(K):
    """Cost of each covariance ``K`` (B, 4, 4) in units of a 2-D table at small ``rho``:
    ``max(1, rho / _RHO_COST)`` where :func:`expect_graded` makes one, 1 elsewhere (B,)."""
    return table_cost(K)[0]


def table_cost(K):
    """:func:`table_weight` of each covariance ``K`` (B, 4, 4), and the key of its plan
    (:class:`GradedPlans`: the covariance in pivoted order; every order of its variables
    shares it), a list of B bytes."""
    K = np.asarray(K, dtype=float)
    order, L = _factor(K)
    out = np.ones(len(K))
    graded = np.abs(np.diagonal(L, axis1=1, axis2=2)) > _S_HERMITE
    for b in np.flatnonzero(np.all(graded[:, :3], axis=1)):
        Lp = _last_pair(L[b])[1]
        out[b] = max(1.0, abs(Lp[3, 2]) / max(1.0, Lp[3, 3]) / _RHO_COST)
    keys = [_pivoted(K[b], o).tobytes() for b, o in enumerate(order)]
    return out, keys
