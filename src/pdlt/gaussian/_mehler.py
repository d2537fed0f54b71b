r"""Two variables for all pairs of N inputs by the Mehler (Hermite) series.

* :func:`hermite_coefficients` -- the normalized Hermite coefficients the
  series is made of;
* ``_SeriesGrid`` / ``_mehler_offdiag`` -- the blocked, bounded series sum
  behind :func:`pdlt.gaussian.pair_expectations`.

Method and accuracy
-------------------
**Two variables, Mehler series.** With normalized probabilists' Hermite
polynomials ``h_k`` and ``c^f_k(K) = <f(sqrt(K) u) h_k(u)>``,

.. math::  <f(z_a) g(z_b)> = \sum_k \rho_{ab}^k c^f_k(K_{aa}) c^g_k(K_{bb}),
           \qquad \rho_{ab} = K_{ab} / \sqrt{K_{aa} K_{bb}}.

By Cauchy-Schwarz and Parseval the tail after order M is bounded by
``|rho|^(M+1) sqrt(T^f_M T^g_M)`` with ``T^f_M = <f^2> - sum_{k<=M} (c^f_k)^2``,
a bound computed exactly from the coefficients. Each block of pairs (64
rows by the columns on or right of the diagonal; the lower triangle is the
mirror image) is summed by Horner's rule to the order its bound requires for
an absolute error at most ``rtol * sqrt(<f_a^2> <g_b^2>)`` (the Cauchy-Schwarz
scale of the result). When the terms of one parity are negligible (f and g
both odd or both even: tanh, erf, sin and their derivatives) only the other
parity is summed, in ``rho^2``; the dropped terms are bounded by
``sum_k |rho|^k max|c^f_k| max|c^g_k|`` and must stay below 1e-3 of the
budget, so the stated bound still holds. Pairs whose bound fails at the
highest order (160) go to nested quadrature. The coefficients of all N inputs
are one matrix product (orders up to 64 first, up to 160 only when the bound
needs them), and a Horner step is an in-place product and a BLAS rank-1
update, so the cost is about 2 M passes over the N^2/2 pairs for order M.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.linalg.blas import dger as _dger

from ._nested import expect2
from ._rule import _EPS, _K_FIXED_MAX, _fixed_rule, expect

__all__ = ["hermite_coefficients"]

_KMAX = 160
_KMAX_FIRST = 48  # orders tried first by the Mehler sum


@functools.lru_cache(maxsize=4)
def _hermite_design(kmax):
    """Weighted normalized Hermite values on the fixed rule: (M, kmax+1).

    ``D[m, k] = w_m h_k(u_m)`` (three-term recurrence), so that
    ``f(sqrt(K) u) @ D`` are the coefficients ``c_k(K)``. Cached and
    read-only; C-contiguous for the matrix product.
    """
    u, w = _fixed_rule()
    H = np.empty((len(u), kmax + 1))
    H[:, 0] = 1.0
    if kmax >= 1:
        H[:, 1] = u
    for k in range(1, kmax):
        H[:, k + 1] = (u * H[:, k] - math.sqrt(k) * H[:, k - 1]) / math.sqrt(k + 1)
    D = np.ascontiguousarray(H * w[:, None])
    D.setflags(write=False)
    return D


def _coefficients_from_values(vals, kmax):
    """``(c, norm2)`` from ``vals = f(sqrt(K) u)`` on the fixed rule, shape (N, M)."""
    _, w = _fixed_rule()
    return vals @ _hermite_design(kmax), (vals * vals) @ w


def hermite_coefficients(f, K, kmax=_KMAX):
    """Normalized Hermite coefficients ``c_k(K) = <f(sqrt(K) u) h_k(u)>``.

    ``h_k = He_k / sqrt(k!)`` are orthonormal under the standard normal, so
    ``sum_k c_k^2 = <f^2>_K`` (Parseval) and
    ``<f(z_a) g(z_b)> = sum_k rho^k c^f_k(K_aa) c^g_k(K_bb)`` (Mehler).

    Parameters
    ----------
    f : callable
    K : array_like, shape (N,), K > 0
    kmax : int

    Returns
    -------
    c : ndarray (N, kmax+1)
    norm2 : ndarray (N,)
        ``<f^2>_K``, for the Parseval tail bound.

    Notes
    -----
    One evaluation of f on the fixed rule per input and one matrix product
    with the cached design ``w_m h_k(u_m)``; the quadrature error is that of
    the fixed rule (module docstring).
    """
    K = np.atleast_1d(np.asarray(K, dtype=float))
    u, _ = _fixed_rule()
    return _coefficients_from_values(f(np.sqrt(K)[:, None] * u[None, :]), kmax)


_STRIP = 64          # rows per block of the Mehler sum (block = rows x columns j >= i0)
_TILE_COLS = 128     # columns per Horner tile: 64 x 128 < 9216, OpenBLAS runs dger single-threaded
_PARITY_SHARE = 1e-3  # share of the error budget allowed for dropped parity terms


class _SeriesGrid:
    """What all series terms of one kernel share.

    ``rho`` (N, N) with a zero diagonal and ``absrho``; the fixed rule's
    nodes ``z = sqrt(K_aa) u`` (N, M); the values of each named function on
    them and its coefficients, computed once per name.
    """

    def __init__(self, act, K, diag):
        self.act, self.K, self.diag = act, K, diag
        self.N = K.shape[0]
        u, self.w = _fixed_rule()
        self.pos = diag > 0
        sd = np.sqrt(np.where(self.pos, diag, 1.0))
        self.z = sd[:, None] * u[None, :]
        # rho_ab = K_ab / sqrt(K_aa K_bb), exactly symmetric (K is, s_a s_b is)
        s = np.where(self.pos, 1.0 / sd, 0.0)
        rho = K * np.multiply.outer(s, s)
        np.clip(rho, -1.0, 1.0, out=rho)
        np.fill_diagonal(rho, 0.0)
        self.rho = rho
        self.absrho = np.abs(rho)
        self.rho_max = float(np.max(self.absrho))
        # coefficients beyond the fixed rule's resolution are not trusted:
        # such inputs go to nested quadrature
        huge = diag > _K_FIXED_MAX
        if act.period is not None:
            # as in `expect`: the fixed rule resolves f(sqrt(K) u) only while
            # sqrt(K) <= period / 2
            huge |= sd > 0.5 * act.period
        self.huge = huge
        # the diagonal can come from the same values exactly when `expect`
        # would use the fixed rule
        kinks = tuple(k for k in act.kinks if k != 0.0)
        self.diag_on_rule = (not kinks and act.period is None
                             and bool(np.all(diag <= _K_FIXED_MAX)))
        self._vals, self._coef, self._rmax = {}, {}, {}

    def values(self, name):
        if name not in self._vals:
            self._vals[name] = getattr(self.act, name)(self.z)
        return self._vals[name]

    def coefficients(self, name, kmax):
        """``(c, <f^2>, tails)`` (see :func:`_series_coefficients`)."""
        key = (name, kmax)
        if key not in self._coef:
            f = getattr(self.act, name)
            c, n2, t = _series_coefficients(self.values(name), kmax, f, self.pos, self.huge)
            if self.huge.any():
                # the fixed rule does not resolve these inputs: their pairs with rho != 0
                # go to quadrature (infinite tails), but a pair with rho = 0 exactly is
                # c_0(a) c_0(b) = <f_a><g_b>, so c_0 and <f^2> come from the resolved
                # one-variable rule (the fixed rule's c_0 was 1e-6 of scale off for GELU's
                # sigma'' at K = 1e9)
                act, dh = self.act, self.diag[self.huge]
                kw = dict(kinks=act.kinks, period=act.period)
                c[self.huge] = 0.0
                c[self.huge, 0] = expect(f, dh, **kw)
                n2[self.huge] = expect(lambda z: f(z) ** 2, dh, **kw)
            self._coef[key] = (c, n2, t)
        return self._coef[key]

    def strip_max(self, ia, jb):
        key = (ia.start, jb.start)
        if key not in self._rmax:
            self._rmax[key] = float(np.max(self.absrho[ia, jb]))
        return self._rmax[key]


def _mehler_offdiag(grid, fa, fb, rtol):
    """``<f(z_a) g(z_b)>`` (N, N) for ``f, g = act.<fa>, act.<fb>``: Mehler series.

    Blocks of ``_STRIP`` rows (and, when ``fa == fb``, only the columns on
    or right of the block's first row, mirrored afterwards) are summed by
    Horner's rule to the order M their Parseval bound requires; each Horner
    step is one in-place Hadamard product and one BLAS rank-1 update. Where
    the coefficients of one parity are negligible (odd or even f, g: all
    named smooth odd activations and their derivatives) the sum runs over
    the other parity in ``rho^2``, halving the work; the dropped terms are
    bounded and charged to the error budget. Pairs whose bound is not met at
    ``kmax`` go to nested quadrature. The diagonal is the one-variable rule.
    """
    act, K, diag, N = grid.act, grid.K, grid.diag, grid.N
    symmetric = fa == fb
    f, g = getattr(act, fa), getattr(act, fb)
    rho, absrho, pos = grid.rho, grid.absrho, grid.pos
    # first the orders k <= _KMAX_FIRST; all _KMAX only if the global bound
    # (largest |rho|, largest normalized tails) needs more
    for kmax in (_KMAX_FIRST, _KMAX):
        cf, nf, tf = grid.coefficients(fa, kmax)
        cg, ng, tg = grid.coefficients(fb, kmax)
        bound = grid.rho_max ** (kmax + 1) * math.sqrt(
            np.max(tf[:, kmax] * _inv_sqrt(nf)[:, 0] ** 2)
            * np.max(tg[:, kmax] * _inv_sqrt(ng)[:, 0] ** 2))
        if bound <= rtol:
            break
    # the diagonal: the one-variable fixed rule, as `expect` would use it
    if grid.diag_on_rule:
        dvals = nf.copy() if symmetric else (grid.values(fa) * grid.values(fb)) @ grid.w
        if not pos.all():
            z0 = np.zeros((~pos).sum())
            dvals[~pos] = f(z0) * g(z0)
    else:
        dvals = expect(lambda z: f(z) * g(z), diag, kinks=act.kinks, period=act.period)
    res = np.empty((N, N))
    cfT = np.ascontiguousarray(cf.T)
    cgT = cfT if symmetric else np.ascontiguousarray(cg.T)
    # everything relative to each pair's own Cauchy-Schwarz scale
    # sqrt(<f_a^2> <g_b^2>): normalized tails sqrt(T_M / <f^2>) and |c_k| / sqrt(<f^2>)
    # (an input with <f^2> = 0 has f = 0 a.e.: its coefficients vanish)
    invf, invg = _inv_sqrt(nf), _inv_sqrt(ng)
    tfn, tgn = np.sqrt(tf) * invf, np.sqrt(tg) * invg
    acf, acg = np.abs(cf) * invf, np.abs(cg) * invg
    ks = np.arange(kmax + 1)
    odd = (ks % 2).astype(bool)
    budget = rtol
    slow_a, slow_b = [], []
    for i0 in range(0, N, _STRIP):
        ia = slice(i0, min(N, i0 + _STRIP))
        jb = slice(i0 if symmetric else 0, N)
        r = rho[ia, jb]
        absr = absrho[ia, jb]
        tailc = np.max(tfn[ia], axis=0) * np.max(tgn[jb], axis=0)
        rmax = grid.strip_max(ia, jb)
        with np.errstate(invalid="ignore"):     # 0 * inf (rho = 0, unresolved input): no
            strip_tail = rmax ** (kmax + 1) * tailc[kmax]      # tail, as below
        if rmax > 0 and strip_tail > budget:
            # the block bound fails at kmax: test pairs one by one; those
            # failing their own bound at kmax go to quadrature
            with np.errstate(divide="ignore"):
                rlim = (budget / tailc[kmax]) ** (1.0 / (kmax + 1))
            ca, cb = np.nonzero(absr > rlim)
            a, b = ca + ia.start, cb + jb.start
            bad = absr[ca, cb] ** (kmax + 1) * tfn[a, kmax] * tgn[b, kmax] > budget
            slow_a.append(a[bad])
            slow_b.append(b[bad])
            if bad.all():
                rmax = float(np.max(np.where(absr > rlim, 0.0, absr)))
        rp = rmax ** ks
        with np.errstate(invalid="ignore"):
            tail = rmax * rp * tailc          # bound on the terms k > M, for M = k
        # rmax = 0 (the strip's pairs left to the series have rho = 0): no tail, whatever
        # the coefficients' bound (inf where it overflows at large K: 0 * inf); any other
        # 0 * inf (rp underflowed) stays unbounded
        tail = np.where(np.isnan(tail), np.inf if rmax > 0 else 0.0, tail)
        choices = []
        ok = np.flatnonzero(tail <= budget)
        M = int(ok[0]) if len(ok) else kmax
        choices.append((M + 1, None, M))
        with np.errstate(invalid="ignore"):
            pk = rp * np.max(acf[ia], axis=0) * np.max(acg[jb], axis=0)
        pk = np.where(np.isnan(pk), np.inf if rmax > 0 else 0.0, pk)
        for q in (0, 1):
            drop = np.cumsum(np.where(odd != bool(q), pk, 0.0))
            okq = np.flatnonzero((tail + drop <= budget) & (drop <= _PARITY_SHARE * budget)
                                 & (odd == bool(q)))
            if len(okq):
                Mq = int(okq[0])
                choices.append(((Mq - q) // 2 + 2 + q, q, Mq))
        _, q, M = min(choices, key=lambda c: c[0])
        acc = _horner_block(r, cfT, cgT, ia, jb, M, q)
        if symmetric:
            # the square block on the diagonal: keep its upper triangle (the
            # BLAS update may round (a, b) and (b, a) differently)
            na = ia.stop - ia.start
            blk = acc[:, :na]
            il = _tril(na)
            blk[il] = blk.T[il]
            res[jb, ia] = acc.T
        res[ia, jb] = acc
    if slow_a:
        a = np.concatenate(slow_a)
        b = np.concatenate(slow_b)
        if symmetric:
            keep = a < b
            a, b = a[keep], b[keep]
        if len(a):
            v = expect2(f, g, diag[a], K[a, b], diag[b], kinks_f=act.kinks, kinks_g=act.kinks)
            res[a, b] = v
            if symmetric:
                res[b, a] = v
    res[np.diag_indices(N)] = dvals
    return res


def _inv_sqrt(n2):
    """``1 / sqrt(n2)`` as a column, 0 where ``n2 = 0``."""
    pos = n2 > 0
    return np.where(pos, 1.0 / np.sqrt(np.where(pos, n2, 1.0)), 0.0)[:, None]


def _series_coefficients(vals, kmax, f, pos, huge):
    """Coefficients, ``<f^2>`` and Parseval tails for the Mehler sum.

    ``vals`` : (N, M) values of f on the fixed rule. Zero-variance inputs
    (``~pos``: z = 0 exactly) keep only ``c_0 = f(0)``; inputs the fixed rule
    does not resolve (``huge``) get infinite tails, which sends their pairs
    to nested quadrature. Tails ``T_M = <f^2> - sum_{k<=M} c_k^2`` carry a
    rounding floor ``64 eps <f^2>``.
    """
    c, n2 = _coefficients_from_values(vals, kmax)
    if not pos.all():
        c[~pos] = 0.0
        c[~pos, 0] = f(np.zeros((~pos).sum()))
        n2[~pos] = c[~pos, 0] ** 2
    t = np.maximum(n2[:, None] - np.cumsum(c * c, axis=1), 0.0) + 64 * _EPS * n2[:, None]
    t[huge] = np.inf
    return c, n2, t


_TRIL = {}


def _tril(n):
    """Cached strict lower-triangle indices of an n x n block."""
    if n not in _TRIL:
        _TRIL[n] = np.tril_indices(n, -1)
    return _TRIL[n]


def _horner_block(r, cfT, cgT, ia, jb, M, q):
    """``sum_k r^k cf_k(a) cg_k(b)`` over k <= M (all k, or k = q mod 2), by Horner.

    r : (na, nb) view of rho; cfT, cgT : (kmax+1, N) coefficients by order.
    Each step is ``acc *= x`` and the BLAS rank-1 update ``acc += cf_k cg_k^T``
    (dger on the Fortran-ordered transpose, in place), on column tiles of
    ``_TILE_COLS`` so that each update stays below OpenBLAS's threading
    threshold (threaded level-2 calls stall on a busy machine).
    """
    ks = list(range(M, -1, -1) if q is None else range(M, q - 1, -2))
    x_all = r if q is None else r * r
    out = np.empty(r.shape)
    for c0 in range(0, r.shape[1], _TILE_COLS):
        cs = slice(c0, min(r.shape[1], c0 + _TILE_COLS))
        jc = slice(jb.start + cs.start, jb.start + cs.stop)
        x = x_all[:, cs]
        acc = np.multiply.outer(cfT[ks[0], ia], cgT[ks[0], jc])
        for k in ks[1:]:
            np.multiply(acc, x, out=acc)
            acc = _dger(1.0, cgT[k, jc], cfT[k, ia], a=acc.T, overwrite_a=1).T
        if q == 1:
            np.multiply(acc, r[:, cs], out=acc)
        out[:, cs] = acc
    return out
