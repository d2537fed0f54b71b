r"""Kinked functions that are exponential polynomials between their kinks (elu).

An :class:`ExpPiecewise` is ``f(z) = sum_(n, a) c_(n, a) z^n exp(a z)`` on each
interval between its kinks ``t_1 < ... < t_K``. elu's sigma, sigma', sigma''
(``z`` / ``alpha (e^z - 1)``, ``1`` / ``alpha e^z``, ``0`` / ``alpha e^z``), their
products, powers, sums and products with powers of z are of this form, so the
nested split path of :func:`pdlt.gaussian.expect_nd` integrates its innermost
axis in closed form (:func:`exp_inner`) instead of by split Gauss-Legendre.

**The closed form.** Given the outer axes, the last axis carries
``z_k = m_k + l_k u``, ``u ~ N(0, 1)``; between consecutive kinks (in u) the
product of the ``f_k`` is a sum of ``p(u) exp(c0 + b u)`` with a polynomial p.
``N_j = int_lo^hi u^j exp(c0 + b u) phi(u) du`` is evaluated from one-sided
tails at the interval's ends, each written around its endpoint x so that no
large factor cancels:

``int_(-inf)^x u^j e^(c0 + b u) phi(u) du = g(x) sum_i C(j, i) x^(j-i) (-1)^i R_i(b - x)``
(for ``b >= x``), the right tail alike with ``R_i(x - b)``, where
``g(x) = exp(c0 + b x) phi(x)`` (the integrand's weight at x: no overflow
where the integrand is bounded) and ``R_i(c) = int_0^inf w^i e^(-c w - w^2/2) dw``
(``c >= 0``): ``R_0 = sqrt(pi/2) erfcx(c / sqrt(2))``, ``R_1 = 1 - c R_0``,
``R_i = (i-1) R_(i-2) - c R_(i-1)`` for ``c < 4`` (forward recursion: <= 1e-14
absolute for i <= 4, 6e-12 for i = 8 at c = 4), and 30-node Gauss-Laguerre of
``t^i exp(-t^2 / (2 c^2)) / c^(i+1)`` for ``c >= 4`` (3e-14 relative, i <= 8;
the recursion loses ``c^(i-1)`` there). The interval's ``N_j`` is the difference
of two tails on the side where the tilted Gaussian ``N(b, 1)`` lies beyond the
interval, else the whole-line moment ``e^(c0 + b^2/2) E[(b + v)^j]`` less both
tails.

**Accuracy and cost** (``tests/gaussian/test_exppw.py``, ``benchmarks/elu_exp_inner.py``).
One axis against adaptive quadrature (means on both sides of the kink, slopes
0.25..8, sigma .. sigma^4, z sigma'', (sigma^2)''), two variables on one axis
(rank-deficient) and a nested two-variable scipy reference: <= 1e-12 of the
Cauchy-Schwarz scale; expect_nd against the all-quadrature split path at "high"
(2-4 variables, random, rho 0.999, rank 2): <= 6e-13; the plain elu fold (three
inputs, depth 4, every statistic but R) at "high": <= 6.8e-13 of each statistic.
At "default" the outer axes' rule error (1e-10..3e-9 of the statistics, the same on
both paths) dominates. The error estimate stays the difference from one node more
per panel on the outer axes (the inner axis adds ~1e-15). A variance below
``_EXP_MIN_VAR`` keeps the all-quadrature path (``alpha (e^z - 1)`` as two terms
loses ~eps absolute). Cost: a four-variable average ~45-60 s -> ~1-2 s; plain elu
statistics (N = 3, depth 4) 3.2 -> 0.7 CPU s, residual elu G1 + H1 (N = 2, depth 3)
425 -> 24 s.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

__all__ = ["ExpPiecewise", "exp_family", "exp_monomial", "exp_product", "exp_slots", "exp_inner"]

_PHI = 1.0 / math.sqrt(2.0 * math.pi)
_LOG_PHI = -0.5 * math.log(2.0 * math.pi)
#: False: elu takes the all-quadrature split path (an independent reference)
_EXP = True
#: covariances with a variance below this keep the all-quadrature split path (exp_inner
#: writes alpha (e^z - 1) as two terms: ~eps absolute, against a scale ~var^(p/2))
_EXP_MIN_VAR = 0.05
#: c from which R_i(c) is taken by Gauss-Laguerre instead of the forward recursion
_R_SWITCH = 4.0
_LAG_X, _LAG_W = np.polynomial.laguerre.laggauss(30)
#: probe grid of exp_family (asymmetric, no special points)
_PROBE = np.linspace(-12.3, 11.7, 241)


def _merge(terms):
    out = {}
    for (n, a), c in terms:
        out[(n, a)] = out.get((n, a), 0.0) + c
    return tuple(sorted((k, c) for k, c in out.items() if c != 0.0))


class ExpPiecewise:
    """``sum c_(n, a) z^n exp(a z)`` between kinks, as a callable.

    Parameters
    ----------
    fn : callable
        What a call evaluates (the activation's own function, so values on
        the outer axes are bitwise those of the split path).
    kinks : tuple of float
        Sorted kinks ``t_1 < ... < t_K``.
    pieces : sequence of K + 1 sequences of ((n, a), c)
        The terms on ``(-inf, t_1), (t_1, t_2), ..., (t_K, inf)``.

    Products, integer powers, sums, scalar multiples and :meth:`times_z`
    give ExpPiecewise objects (their ``fn`` composes the operands' ``fn`` in
    the same order, e.g. ``(f ** 2).fn(z) = f.fn(z) ** 2``).
    """

    __slots__ = ("fn", "kinks", "pieces")

    def __init__(self, fn, kinks, pieces):
        self.fn = fn
        self.kinks = tuple(float(t) for t in kinks)
        if len(pieces) != len(self.kinks) + 1 or list(self.kinks) != sorted(set(self.kinks)):
            raise ValueError("ExpPiecewise needs sorted distinct kinks and one piece more "
                             f"than kinks; got kinks {kinks} and {len(pieces)} pieces")
        self.pieces = tuple(_merge(((int(n), float(a)), float(c)) for (n, a), c in p)
                            for p in pieces)

    def __call__(self, z):
        return self.fn(z)

    def formula(self, z):
        """The closed form itself (for checking ``fn`` against it)."""
        z = np.asarray(z, dtype=float)
        idx = np.searchsorted(np.array(self.kinks), z, side="left")
        out = np.zeros(z.shape)
        for p, terms in enumerate(self.pieces):
            sel = idx == p
            zs = z[sel]
            out[sel] = sum((c * zs ** n * np.exp(a * zs) for (n, a), c in terms),
                           np.zeros(zs.shape))
        return out

    def degree(self):
        return max((n for p in self.pieces for (n, _), _ in p), default=0)

    # -- algebra --------------------------------------------------------------
    def _aligned(self, other):
        kinks = tuple(sorted(set(self.kinks) | set(other.kinks)))
        if kinks == self.kinks == other.kinks:
            return kinks, self.pieces, other.pieces
        mids = _mids(kinks)
        pick = lambda f: [f.pieces[int(np.searchsorted(f.kinks, x))] for x in mids]  # noqa: E731
        return kinks, pick(self), pick(other)

    def __mul__(self, other):
        if isinstance(other, (int, float)):
            o = float(other)
            return ExpPiecewise(lambda z, f=self.fn: f(z) * o, self.kinks,
                                [[(k, c * o) for k, c in p] for p in self.pieces])
        if not isinstance(other, ExpPiecewise):
            return NotImplemented
        kinks, pa, pb = self._aligned(other)
        pieces = [[((n1 + n2, a1 + a2), c1 * c2) for (n1, a1), c1 in ta for (n2, a2), c2 in tb]
                  for ta, tb in zip(pa, pb)]
        return ExpPiecewise(lambda z, f=self.fn, g=other.fn: f(z) * g(z), kinks, pieces)

    def __rmul__(self, other):
        if isinstance(other, (int, float)):
            o = float(other)
            return ExpPiecewise(lambda z, f=self.fn: o * f(z), self.kinks,
                                [[(k, o * c) for k, c in p] for p in self.pieces])
        return NotImplemented

    def __add__(self, other):
        if not isinstance(other, ExpPiecewise):
            return NotImplemented
        kinks, pa, pb = self._aligned(other)
        return ExpPiecewise(lambda z, f=self.fn, g=other.fn: f(z) + g(z), kinks,
                            [list(ta) + list(tb) for ta, tb in zip(pa, pb)])

    def __pow__(self, p):
        p = int(p)
        if p < 1:
            raise ValueError(f"ExpPiecewise powers must be >= 1; got {p}")
        out = self
        for _ in range(p - 1):
            out = out * self
        return ExpPiecewise(lambda z, f=self.fn: f(z) ** p, out.kinks, out.pieces)

    def times_z(self, k=1):
        """``z^k f(z)`` (its fn: ``z ** k * f(z)``, or ``z * f(z)`` for k = 1)."""
        k = int(k)
        fn = (lambda z, f=self.fn: z * f(z)) if k == 1 else \
            (lambda z, f=self.fn: z ** k * f(z))
        return ExpPiecewise(fn, self.kinks, [[((n + k, a), c) for (n, a), c in p]
                                             for p in self.pieces])

    def __repr__(self):
        return f"ExpPiecewise(kinks={self.kinks}, pieces={self.pieces})"


def _mids(kinks):
    k = list(kinks)
    if not k:
        return [0.0]
    return [k[0] - 1.0] + [0.5 * (x + y) for x, y in zip(k[:-1], k[1:])] + [k[-1] + 1.0]


def _elu_pieces(alpha):
    return {"sigma": [[((0, 1.0), alpha), ((0, 0.0), -alpha)], [((1, 0.0), 1.0)]],
            "d1": [[((0, 1.0), alpha)], [((0, 0.0), 1.0)]],
            "d2": [[((0, 1.0), alpha)], []]}


def exp_family(act, slot="sigma"):
    """``act``'s function ``slot`` ("sigma", "d1", "d2") as an :class:`ExpPiecewise`, else None.

    Only for the named elu (``act.name == "elu"``, ``parameters["alpha"]``) and
    only if its function equals the closed form on a probe grid to 1e-14 (a
    user function that merely carries the name keeps the split path).
    """
    fn = getattr(act, slot, None)
    if isinstance(fn, ExpPiecewise):
        return fn
    if getattr(act, "name", None) != "elu" or fn is None or tuple(act.kinks) != (0.0,):
        return None
    alpha = (getattr(act, "parameters", None) or {}).get("alpha")
    if alpha is None:
        return None
    ep = ExpPiecewise(fn, (0.0,), _elu_pieces(float(alpha))[slot])
    return ep if agrees_on_probe(fn, ep.formula, _PROBE) else None


def agrees_on_probe(fn, formula, probe):
    """Whether ``fn`` equals a closed ``formula`` on the grid ``probe`` to 1e-14 (relative
    above 1, absolute below): the test before a named activation's function is replaced
    by its closed form (a user function that merely carries the name fails it)."""
    with np.errstate(all="ignore"):
        got = np.asarray(fn(probe), dtype=float)
    want = formula(probe)
    return got.shape == want.shape and bool(np.all(
        np.abs(got - want) <= 1e-14 * np.maximum(1.0, np.abs(want))))


def exp_product(fs, fn):
    """``fn`` (the product of ``fs``), as an :class:`ExpPiecewise` with ``fn``'s values where
    every factor is one (elu), else ``fn`` itself."""
    if not fs or not all(isinstance(f, ExpPiecewise) for f in fs):
        return fn
    out = fs[0]
    for f in fs[1:]:
        out = out * f
    return ExpPiecewise(fn, out.kinks, out.pieces)


def exp_slots(act, names=("sigma", "d1", "d2")):
    """``[exp_family(act, n) for n in names]`` if all exist (the named elu), else None."""
    out = [exp_family(act, n) for n in names]
    return None if any(f is None for f in out) else out


def exp_monomial(act, fn, ns=0, np_=0, k=0):
    """``fn`` (``z^k sigma^ns sigma'^np``) as an :class:`ExpPiecewise` calling ``fn``, for
    the named elu; any other activation: ``fn`` itself."""
    s = exp_family(act, "sigma")
    p = exp_family(act, "d1")
    if s is None or p is None:
        return fn
    out = ExpPiecewise(None, p.kinks, [[((0, 0.0), 1.0)]] * (len(p.kinks) + 1))
    for f, n in ((s, ns), (p, np_)):
        for _ in range(n):
            out = out * f
    if k:
        out = out.times_z(k)
    return ExpPiecewise(fn, out.kinks, out.pieces)


# ---------------------------------------------------------------------------
# the closed form of the innermost axis
# ---------------------------------------------------------------------------

def _R(c, D):
    """``R_i(c) = int_0^inf w^i exp(-c w - w^2 / 2) dw`` for i = 0..D, c >= 0 (array)."""
    c = np.asarray(c, dtype=float)
    r0 = math.sqrt(0.5 * math.pi) * special.erfcx(c * (1.0 / math.sqrt(2.0)))
    out = [r0]
    if D == 0:
        return out
    big = c >= _R_SWITCH
    cs = np.where(big, 0.0, c)
    r0s = np.where(big, 0.0, r0)
    out.append(1.0 - cs * r0s)
    for i in range(2, D + 1):
        out.append((i - 1) * out[i - 2] - cs * out[i - 1])
    if big.any():
        inv = 1.0 / c[big]
        h = np.exp(-0.5 * np.multiply.outer(inv * inv, _LAG_X * _LAG_X)) * _LAG_W   # (nb, 30)
        xi = _LAG_X.copy()
        p = inv * inv
        for i in range(1, D + 1):
            out[i][big] = (h @ xi) * p
            xi = xi * _LAG_X
            p = p * inv
    return out


def _binom(j, i):
    return math.comb(j, i)


def _tail(x, c0, b, D, side):
    """One-sided moments ``int u^j e^(c0 + b u) phi(u) du`` for j = 0..D over
    ``u < x`` (side -1, needs b >= x) or ``u > x`` (side +1, needs b <= x); x may be
    infinite on the empty side (zero)."""
    fin = np.isfinite(x)
    xf = np.where(fin, x, 0.0)
    with np.errstate(over="ignore", under="ignore"):
        g = np.where(fin, np.exp(c0 + b * xf - 0.5 * xf * xf + _LOG_PHI), 0.0)
    c = np.where(fin, side * (xf - b), 0.0)
    c = np.maximum(c, 0.0)
    R = _R(c, D)
    # u = x + side w: u^j = sum_i C(j, i) x^(j-i) (side w)^i
    out = []
    xp = [np.ones_like(xf)]
    for j in range(1, D + 1):
        xp.append(xp[-1] * xf)
    for j in range(D + 1):
        acc = 0.0
        for i in range(j + 1):
            acc = acc + _binom(j, i) * xp[j - i] * (side ** i) * R[i]
        out.append(g * acc)
    return out


def _whole(c0, b, D):
    """``int u^j e^(c0 + b u) phi(u) du`` over the line: ``e^(c0 + b^2/2) E[(b + v)^j]``."""
    with np.errstate(over="ignore"):
        e = np.exp(c0 + 0.5 * b * b)
    mom = [np.ones_like(b), b]        # E[Y^j], Y ~ N(b, 1)
    for j in range(2, D + 1):
        mom.append(b * mom[j - 1] + (j - 1) * mom[j - 2])
    return [e * mom[j] for j in range(D + 1)]


def _interval_moments(lo, hi, c0, b, D):
    """``N_j = int_lo^hi u^j exp(c0 + b u) phi(u) du``, j = 0..D (arrays, lo <= hi)."""
    right = b >= hi                   # the tilted Gaussian beyond hi: two left tails
    left = b <= lo                    # beyond lo: two right tails
    mid = ~(right | left)
    out = [np.zeros(np.shape(b)) for _ in range(D + 1)]
    if right.any():
        s = right
        A = _tail(hi[s], c0[s], b[s], D, -1)
        B = _tail(lo[s], c0[s], b[s], D, -1)
        for j in range(D + 1):
            out[j][s] = A[j] - B[j]
    if left.any():
        s = left
        A = _tail(lo[s], c0[s], b[s], D, +1)
        B = _tail(hi[s], c0[s], b[s], D, +1)
        for j in range(D + 1):
            out[j][s] = A[j] - B[j]
    if mid.any():
        s = mid
        W = _whole(c0[s], b[s], D)
        A = _tail(lo[s], c0[s], b[s], D, -1)
        B = _tail(hi[s], c0[s], b[s], D, +1)
        for j in range(D + 1):
            out[j][s] = W[j] - A[j] - B[j]
    return out


def _exp_inner1(f, m, l):
    """:func:`exp_inner` of one variable (the full-rank case), l > 0: the coefficients
    are the pieces' own (scalars), ``z^n = sum_j C(n, j) m^(n-j) l^j u^j``."""
    edges = (-np.inf,) + f.kinks + (np.inf,)
    total = np.zeros(m.shape)
    inv = 1.0 / l
    for p, terms in enumerate(f.pieces):
        if not terms:
            continue
        lo = np.full(m.shape, -np.inf) if p == 0 else (edges[p] - m) * inv
        hi = np.full(m.shape, np.inf) if p == len(edges) - 2 else (edges[p + 1] - m) * inv
        by_a = {}
        for (n, a), c in terms:
            by_a.setdefault(a, {})[n] = c
        for a, cz in by_a.items():
            D = max(cz)
            N = _interval_moments(lo, hi, a * m, a * l, D)
            mp = [np.ones(m.shape)]
            lp = [np.ones(l.shape)]
            for _ in range(D):
                mp.append(mp[-1] * m)
                lp.append(lp[-1] * l)
            for n, c in cz.items():
                acc = 0.0
                for j in range(n + 1):
                    acc = acc + math.comb(n, j) * mp[n - j] * lp[j] * N[j]
                total += c * acc
    return total


def exp_inner(fs_inner, m, l):
    """``int prod_k f_k(m_k + l_k u) phi(u) du`` for :class:`ExpPiecewise` f_k, in closed form.

    Parameters
    ----------
    fs_inner : sequence of nv ExpPiecewise
    m, l : array_like of shape (..., nv)
        Means and slopes of the variables on the last axis (broadcastable).

    Returns
    -------
    ndarray of shape (...)
    """
    nv = len(fs_inner)
    m, l = np.broadcast_arrays(np.asarray(m, dtype=float), np.asarray(l, dtype=float))
    shape = m.shape[:-1]
    m = m.reshape(-1, nv)
    l = l.reshape(-1, nv)
    if nv == 1 and np.all(l > 0):
        return _exp_inner1(fs_inner[0], m[:, 0], l[:, 0]).reshape(shape)
    P = m.shape[0]
    # kinks in u of every variable
    cuts = []
    for k, f in enumerate(fs_inner):
        for t in f.kinks:
            with np.errstate(divide="ignore", invalid="ignore"):
                lk = np.where(l[:, k] != 0, l[:, k], 1.0)
                cuts.append(np.where(l[:, k] != 0, (t - m[:, k]) / lk, np.inf))
    cuts = np.sort(np.stack(cuts, axis=1), axis=1) if cuts else np.zeros((P, 0))
    edges = np.concatenate([np.full((P, 1), -np.inf), cuts, np.full((P, 1), np.inf)], axis=1)
    D = sum(f.degree() for f in fs_inner)
    total = np.zeros(P)
    for i in range(edges.shape[1] - 1):
        lo, hi = edges[:, i], edges[:, i + 1]
        nonempty = hi > lo
        if not nonempty.any():
            continue
        sel = np.flatnonzero(nonempty)
        lo_s, hi_s = lo[sel], hi[sel]
        flo, fhi = np.isfinite(lo_s), np.isfinite(hi_s)
        mid = np.where(flo & fhi, 0.5 * (np.where(flo, lo_s, 0.0) + np.where(fhi, hi_s, 0.0)),
                       np.where(flo, np.where(flo, lo_s, 0.0) + 1.0,
                                np.where(fhi, np.where(fhi, hi_s, 0.0) - 1.0, 0.0)))
        ms, ls = m[sel], l[sel]
        # the product on this interval: {exponents tuple: poly coefficients in u (n, D+1)}
        prod = {(): np.concatenate([np.ones((len(sel), 1)), np.zeros((len(sel), D))], axis=1)}
        for k, f in enumerate(fs_inner):
            zk = ms[:, k] + ls[:, k] * mid
            piece = np.searchsorted(np.array(f.kinks), zk, side="left") if f.kinks \
                else np.zeros(len(sel), dtype=int)
            # per exponent a: polynomial in z with coefficients chosen by piece
            by_a = {}
            for p, terms in enumerate(f.pieces):
                for (n, a), c in terms:
                    arr = by_a.setdefault(a, np.zeros((len(sel), f.degree() + 1)))
                    arr[piece == p, n] += c
            # each z-polynomial in u: z = m + l u
            new = {}
            for a, cz in by_a.items():
                if not np.any(cz):
                    continue
                pu = np.zeros((len(sel), D + 1))
                zpow = np.zeros((len(sel), D + 1))
                zpow[:, 0] = 1.0
                for n in range(cz.shape[1]):
                    if n > 0:
                        nxt = zpow * ms[:, k, None]
                        nxt[:, 1:] += zpow[:, :-1] * ls[:, k, None]
                        zpow = nxt
                    pu += cz[:, n, None] * zpow
                for key, poly in prod.items():
                    # multiply polynomials (degrees bounded by D)
                    q = np.zeros_like(poly)
                    for j in range(D + 1):
                        if np.any(poly[:, j]):
                            q[:, j:] += poly[:, j, None] * pu[:, :D + 1 - j]
                    kk = key + (a,)
                    new[kk] = new[kk] + q if kk in new else q
            prod = new
            if not prod:
                break
        val = np.zeros(len(sel))
        for key, poly in prod.items():
            a = np.array(key)
            c0 = ms @ a
            b = ls @ a
            N = _interval_moments(lo_s, hi_s, c0, b, D)
            for j in range(D + 1):
                if np.any(poly[:, j]):
                    val += poly[:, j] * N[j]
        total[sel] += val
    return total.reshape(shape)
