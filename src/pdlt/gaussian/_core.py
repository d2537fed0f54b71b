r"""Gaussian expectations: the one integration engine of pdlt.

Everything the theory integrates is an expectation over a zero-mean Gaussian
with covariance given by a kernel (``shared/NOTATION.md``):

* :func:`expect` -- ``<f(z)>_K`` for a batch of variances ``K`` (and
  optionally means), one input;
* :func:`expect2` -- ``<f(z1) g(z2)>`` for a batch of 2x2 covariances by
  nested quadrature (the robust reference path);
* :func:`pair_expectations` -- ``<f(z_a) g(z_b)>_K`` for all N^2 pairs of N
  inputs at once, the workhorse of the kernel flow: closed forms where they
  exist, a Mehler (Hermite) series with a rigorous tail bound otherwise, and
  nested quadrature for the pairs where the series would converge slowly;
* :func:`hermite_coefficients` -- the normalized Hermite coefficients the
  series is made of.

Methods and their accuracy
--------------------------
**One variable.** In standard-normal units ``u = z / sqrt(K)`` the integral is
truncated to ``|u| <= T = 12`` (the Gaussian mass beyond is 3.6e-33, so the
truncation error is below 1e-16 relative for any integrand growing no faster
than a polynomial of degree 20) and computed by composite Gauss-Legendre on
panels: unit panels, a breakpoint at every kink, and panels graded
geometrically around every feature point (the origin, kinks) down to widths
``2^-10`` of the feature's scale. Each panel carries ``Q = 20`` nodes, exact
for polynomials of degree 39. On every piece the integrand is analytic, so
convergence is geometric; measured error against closed forms (ReLU, erf,
sin, linear, their products) is below 1e-14 relative for variances from 1e-8
to 1e8 (``tests/test_gaussian.py``).

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

**Two variables, nested quadrature.** ``z1 = sqrt(K11) u1``,
``z2 = (K12/K11) z1 + s u2`` with ``s^2 = K22 - K12^2/K11``. The inner
integral over ``u2`` is the one-variable rule with the kinks of g moved to
``(c - mu)/s``; the outer one is split at the kinks of f and graded
geometrically around the points where the inner integral is near-singular
(width ``s sqrt(K11)/|K12|``), so it stays accurate as ``|rho| -> 1``.
Measured error: below 1e-13 relative for ReLU and erf against their closed
forms over ``|rho|`` up to ``1 - 1e-12``.

**Closed forms.** Scale-invariant (ReLU, leaky ReLU, linear: the arc-cosine
kernels of degree 1 and 0), erf, sin and GELU (derived in :func:`~pdlt.gaussian._core._gelu_pair`),
used automatically by :func:`pair_expectations`, evaluated in forms that
neither overflow nor cancel at any kernel scale (``pdlt.gaussian._closed``;
tested against mpmath at input norms 1e-12 .. 1e12).
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
from scipy.linalg.blas import dger as _dger

from ._closed import closed_family, pair_terms

__all__ = [
    "expect",
    "expect2",
    "pair_expectations",
    "hermite_coefficients",
    "closed_form_pair",
    "KernelNotPSDError",
    "T_TRUNC",
]

T_TRUNC = 12.0
_Q = 20
_Q2 = 16      # nodes per panel of the per-row (graded) rule
_T_RULE = 10.0  # truncation of the per-row rule: Gaussian mass beyond is 1.5e-23
_GRADE = 2.0 ** -np.arange(1, 11)  # graded offsets 1/2 ... 2^-10 (in feature-scale units)
_EPS = np.finfo(float).eps
# the fixed rule resolves features down to u-scale 2^-10; use it while the
# activation's unit feature scale, 1/sqrt(K) in u, stays above 2^-8
_K_FIXED_MAX = 2.0 ** 16


class KernelNotPSDError(np.linalg.LinAlgError):
    """A kernel (covariance) is not positive semi-definite."""


@functools.lru_cache(maxsize=8)
def _gauss_legendre(q):
    x, w = np.polynomial.legendre.leggauss(q)
    return x, w


def _panels(breaks, q=_Q):
    """Composite Gauss-Legendre nodes and weights on sorted breakpoints.

    breaks : (..., P+1) sorted. Returns u, w of shape (..., P*q).
    """
    x, w = _gauss_legendre(q)
    a = breaks[..., :-1, None]
    b = breaks[..., 1:, None]
    half = 0.5 * (b - a)
    u = (a + b) * 0.5 + half * x
    ww = half * w
    shape = breaks.shape[:-1] + (-1,)
    return u.reshape(shape), ww.reshape(shape)


_PHI_NORM = 1.0 / math.sqrt(2.0 * math.pi)


_GH_NODES = 40
_GH_MAX_SPREAD = 0.25


@functools.lru_cache(maxsize=2)
def _hermite_e(q):
    """Gauss-Hermite (probabilists') nodes and weights normalized to sum 1."""
    x, w = np.polynomial.hermite_e.hermegauss(q)
    return x, w / w.sum()


@functools.lru_cache(maxsize=1)
def _fixed_rule():
    """K-independent rule in u: unit panels, split and graded around 0."""
    base = np.arange(-T_TRUNC, T_TRUNC + 0.5, 1.0)
    brk = np.unique(np.concatenate([base, _GRADE, -_GRADE]))
    u, w = _panels(brk)
    w = w * _PHI_NORM * np.exp(-0.5 * u * u)
    u.setflags(write=False)
    w.setflags(write=False)
    return u, w


_RULE_CACHE: dict = {}
_RULE_CACHE_SIZE = 16


def _rule(centers, widths, step=None):
    """:func:`_rule_uncached`, remembering the last few rules (read-only arrays).

    The rule depends only on its arguments, and the recursions ask for the
    same ones many times per layer (every pair term at one kernel shares
    them), so repeats cost a dictionary look-up; values are bitwise the same.
    """
    centers, widths = np.ascontiguousarray(centers), np.ascontiguousarray(widths)
    key = (centers.shape, centers.tobytes(), widths.tobytes(),
           None if step is None else np.ascontiguousarray(step).tobytes())
    hit = _RULE_CACHE.pop(key, None)
    if hit is None:
        hit = _rule_uncached(centers, widths, step)
        for a in hit:
            a.setflags(write=False)
        while len(_RULE_CACHE) >= _RULE_CACHE_SIZE:
            _RULE_CACHE.pop(next(iter(_RULE_CACHE)))
    _RULE_CACHE[key] = hit                  # most recently used last
    return hit


def _rule_uncached(centers, widths, step=None):
    """Per-row rule in u with breakpoints at ``centers`` graded by ``widths``.

    centers, widths : (B, C) feature points and their scales in u units
    (width <= 0 means a bare breakpoint). Around each center the panels grow
    geometrically by a factor 4 from ``width/4`` until they reach unit size:
    on a panel ``[a, 4a]`` the nearest singularity (at distance ~a) leaves a
    Bernstein-ellipse ratio of 3, so 16 nodes give 3^-32 ~ 5e-16.
    step : (B,) or None
        Spacing of the uniform panels (default 1; smaller for oscillatory f).
    Returns u, w (B, M) with the standard normal density folded into w.
    """
    B = centers.shape[0]
    T = _T_RULE
    n_base = int(2 * T) + 1
    if step is None:
        base = np.broadcast_to(np.linspace(-T, T, n_base), (B, n_base))
    else:
        nmax = int(np.ceil(2 * T / np.min(step))) + 1
        base = -T + step[:, None] * np.arange(nmax)[None, :]
    w = np.abs(widths)
    with np.errstate(divide="ignore"):
        levels = np.where(w > 0, np.ceil(np.log(np.maximum(4.0 / np.maximum(w, 1e-300), 1.0))
                                         / np.log(4.0)), 0)
    levels = np.minimum(levels, 30).astype(int)
    L = int(levels.max()) if levels.size else 0
    j = np.arange(L)
    off = np.minimum(w, 4.0)[:, :, None] / 4.0 * 4.0 ** j  # (B, C, L)
    off = np.where(j[None, None, :] < levels[:, :, None], np.minimum(off, 1.0), 0.0)
    pts = np.concatenate([centers[:, :, None], centers[:, :, None] + off,
                          centers[:, :, None] - off], axis=2).reshape(B, -1)
    brk = np.concatenate([base, pts], axis=1)
    brk = np.sort(np.clip(brk, -T, T), axis=1)
    u, ww = _panels(brk, _Q2)
    ww = ww * _PHI_NORM * np.exp(-0.5 * u * u)
    return u, ww


def _as_float(x, name):
    arr = np.asarray(x, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def expect(f, K, mean=0.0, *, kinks=(), period=None):
    """Gaussian expectation ``<f(z)>`` with ``z ~ N(mean, K)``.

    Parameters
    ----------
    f : callable
        Vectorized ``f(z)``.
    K : array_like, shape (...)
        Variances, ``K >= 0`` (``K = 0`` returns ``f(mean)``).
    mean : array_like, broadcastable with K
    kinks : sequence of float
        Points where f is not smooth; the rule splits there. The origin is
        always a split and graded feature point.

    Returns
    -------
    ndarray of shape ``broadcast(K, mean).shape``

    Notes
    -----
    Error below 1e-14 relative for the named activations and their products
    with each other and with powers of z, for ``1e-8 <= K <= 1e8`` (see the
    module docstring for the rule).
    """
    K = _as_float(K, "K")
    mean = _as_float(mean, "mean")
    if np.any(K < 0):
        raise ValueError(f"variance K must be >= 0; got min {K.min():.3g}")
    K, mean = np.broadcast_arrays(K, mean)
    shape = K.shape
    K = K.ravel()
    mean = mean.ravel()
    out = np.empty(K.shape)
    zero = K == 0
    if zero.any():
        out[zero] = f(mean[zero])
    pos = ~zero
    if not pos.any():
        return out.reshape(shape)
    Kp, mp = K[pos], mean[pos]
    sd = np.sqrt(Kp)
    kinks = tuple(float(k) for k in kinks if k != 0.0)
    step = None
    if period is not None:
        step = np.minimum(1.0, 0.5 * float(period) / sd)
        if np.all(step == 1.0):
            step = None
    if not kinks and step is None and np.all(mp == 0) and np.all(Kp <= _K_FIXED_MAX):
        u, w = _fixed_rule()
        vals = f(sd[:, None] * u[None, :])
        out[pos] = vals @ w
    else:
        cz = np.array((0.0,) + kinks)
        centers = (cz[None, :] - mp[:, None]) / sd[:, None]
        widths = np.broadcast_to(1.0 / sd[:, None], centers.shape)
        widths = np.where(cz[None, :] == 0.0, widths, 0.0)
        rows = np.arange(len(Kp))
        if step is not None and not kinks:
            # very wide Gaussians over a periodic f: uniform panels of at most half a
            # period, in blocks, so memory stays bounded whatever K (time ~ sqrt(K))
            wide = 2 * _T_RULE / step * _Q2 > _BLOCK_NODES
            for i in np.flatnonzero(wide):
                out[np.flatnonzero(pos)[i]] = _expect_uniform_blocked(f, mp[i], sd[i], step[i])
            rows = rows[~wide]
        for start in range(0, len(rows), 4096 if step is None else 16):
            sl = rows[start:start + (4096 if step is None else 16)]
            u, w = _rule(centers[sl], widths[sl], None if step is None else step[sl])
            vals = f(mp[sl, None] + sd[sl, None] * u)
            out[np.flatnonzero(pos)[sl]] = np.einsum("bm,bm->b", vals, w)
    return out.reshape(shape)


_BLOCK_NODES = 2 ** 22   # nodes per block of the blocked uniform rule


def _expect_uniform_blocked(f, m, sd, step):
    """``<f(m + sd u)>`` over ``|u| <= T`` on uniform panels of width ``step``, in blocks.

    For a periodic f with ``sd * step <= period / 2`` every panel holds at most
    half a period, where 16 Gauss-Legendre nodes are exact to round-off for
    sin-like f; the Gaussian's own scale (1 in u) is far wider than a panel.
    Memory is ``_BLOCK_NODES`` floats whatever the variance.
    """
    T = _T_RULE
    n_pan = int(np.ceil(2 * T / step))
    h = 2 * T / n_pan
    x, wq = _gauss_legendre(_Q2)
    per = max(1, _BLOCK_NODES // _Q2)
    total = 0.0
    for p0 in range(0, n_pan, per):
        a = -T + h * np.arange(p0, min(n_pan, p0 + per))
        u = (a[:, None] + 0.5 * h * (1.0 + x[None, :])).ravel()
        w = np.broadcast_to(0.5 * h * wq, (len(a), _Q2)).ravel() * _PHI_NORM * np.exp(-0.5 * u * u)
        total += float(f(m + sd * u) @ w)
    return total


def _chunks(n, size):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# ---------------------------------------------------------------------------
# Two variables: nested quadrature (reference path)
# ---------------------------------------------------------------------------

def expect2(f, g, K11, K12, K22, *, kinks_f=(), kinks_g=()):
    """``<f(z1) g(z2)>`` for ``(z1, z2) ~ N(0, [[K11, K12], [K12, K22]])``.

    Nested composite Gauss-Legendre, robust for kinks and for
    ``|rho| -> 1`` (module docstring). Costs about 1e6 function evaluations
    per covariance: use :func:`pair_expectations` for many inputs.

    Parameters
    ----------
    f, g : callable
        Vectorized functions.
    K11, K12, K22 : array_like, broadcastable, shape (...)
        Covariances; must be positive semi-definite.
    kinks_f, kinks_g : sequence of float

    Returns
    -------
    ndarray of shape (...)

    Raises
    ------
    KernelNotPSDError
        If ``K12^2 > K11 K22`` beyond round-off, or a variance is negative.
    """
    K11, K12, K22 = np.broadcast_arrays(*(_as_float(k, n) for k, n in
                                          ((K11, "K11"), (K12, "K12"), (K22, "K22"))))
    shape = K11.shape
    K11, K12, K22 = (np.array(k, dtype=float).ravel() for k in (K11, K12, K22))
    _check_psd2(K11, K12, K22)
    K12 = np.clip(K12, -np.sqrt(K11 * K22), np.sqrt(K11 * K22))
    out = np.empty(K11.shape)
    for sl in _chunks(len(K11), 8):
        out[sl] = _nested(f, g, K11[sl], K12[sl], K22[sl], kinks_f, kinks_g)
    return out.reshape(shape)


def _check_psd2(K11, K12, K22, where=""):
    K11, K12, K22 = (np.ravel(k) for k in np.broadcast_arrays(K11, K12, K22))
    if np.any(K11 < 0) or np.any(K22 < 0):
        raise KernelNotPSDError(f"negative variance in a 2x2 covariance{where}")
    excess = K12 * K12 - K11 * K22
    tol = 64 * _EPS * np.maximum(K11 * K22, _EPS)
    if np.any(excess > tol):
        i = int(np.argmax(excess - tol))
        raise KernelNotPSDError(
            f"covariance{where} is not positive semi-definite: K12^2 - K11 K22 = "
            f"{excess[i]:.3e} > 0 (K11={K11[i]:.6g}, K12={K12[i]:.6g}, K22={K22[i]:.6g})")


def _nested(f, g, K11, K12, K22, kinks_f, kinks_g):
    B = len(K11)
    out = np.empty(B)
    # degenerate first variable: z1 = 0 almost surely
    z1zero = K11 <= 0
    if z1zero.any():
        i = z1zero
        out[i] = f(np.zeros(i.sum())) * expect(g, K22[i], kinks=kinks_g)
    ok = ~z1zero
    if not ok.any():
        return out
    K11, K12, K22 = K11[ok], K12[ok], K22[ok]
    Bo = len(K11)
    sd1 = np.sqrt(K11)
    s2 = np.maximum(K22 - K12 * K12 / K11, 0.0)
    s = np.sqrt(s2)
    slope = K12 / sd1  # mu(u1) = slope * u1
    cf = np.array((0.0,) + tuple(k for k in kinks_f if k != 0.0))
    cg = np.array((0.0,) + tuple(k for k in kinks_g if k != 0.0))
    # outer feature points: kinks of f (graded at f's unit scale), and the
    # points where mu(u1) hits a feature of g: there the inner integral is
    # near-singular on the scale s/|slope| (graded down to it)
    with np.errstate(divide="ignore", invalid="ignore"):
        nz = slope[:, None] != 0
        star = np.where(nz, cg[None, :] / np.where(nz, slope[:, None], 1.0), 0.0)
        # (floored at 1e-15 of the unit scale: the graded panels span 4^30)
        wid = np.where(nz, np.clip(s, 1e-15, 1.0)[:, None]
                       / np.abs(np.where(nz, slope[:, None], 1.0)), 0.0)
    centers = np.concatenate([cf[None, :] / sd1[:, None] + 0 * star[:, :1], star], axis=1)
    widths = np.concatenate([np.where(cf[None, :] == 0, 1.0 / sd1[:, None], 0.0)
                             + 0 * star[:, :1], wid], axis=1)
    u1, w1 = _rule(centers, widths)  # (Bo, M1)
    z1 = sd1[:, None] * u1
    mu = slope[:, None] * u1  # (Bo, M1)
    fv = f(z1)
    M1 = u1.shape[1]
    inner = np.empty((Bo, M1))
    has_s = s > 0
    if (~has_s).any():
        inner[~has_s] = g(mu[~has_s])
    # smooth g and a small conditional spread: g(mu + s u2) is analytic in u2
    # in a strip of half-width ~ (distance of g's complex singularities, O(1))
    # / s >= 4, where 40-node Gauss-Hermite converges to round-off; 25x
    # cheaper than the panel rule, and exactly the regime (|rho| -> 1) in
    # which the Mehler series hands pairs to this function
    gh = has_s & (s <= _GH_MAX_SPREAD) if len(kinks_g) == 0 else np.zeros_like(has_s)
    if gh.any():
        idx = np.flatnonzero(gh)
        x, wgt = _hermite_e(_GH_NODES)
        vals = g(mu[idx][:, :, None] + s[idx][:, None, None] * x)
        inner[idx] = vals @ wgt
        has_s = has_s & ~gh
    if has_s.any():
        idx = np.flatnonzero(has_s)
        mu_s = mu[idx].ravel()
        s_rep = np.repeat(s[idx], M1)
        c2 = (cg[None, :] - mu_s[:, None]) / s_rep[:, None]
        w2 = np.where(cg[None, :] == 0, 1.0 / s_rep[:, None], 0.0)
        res = np.empty(len(mu_s))
        for sl in _chunks(len(mu_s), 2048):
            u2, ww2 = _rule(c2[sl], w2[sl])
            res[sl] = np.einsum("bm,bm->b", g(mu_s[sl, None] + s_rep[sl, None] * u2), ww2)
        inner[idx] = res.reshape(len(idx), M1)
    out[ok] = np.einsum("bm,bm,bm->b", fv, inner, w1)
    return out


# ---------------------------------------------------------------------------
# Hermite coefficients and the Mehler series
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------

def _gelu_pair(K11, K12, K22, terms=("sigma", "d1")):
    """GELU ``z Phi(z)``: ``<sigma sigma>`` and/or ``<sigma' sigma'>`` in closed form.

    Derived here (Stein's lemma along z1, then Gaussian integrals of
    ``Phi``/``phi`` products): with ``D = (1 + K11)(1 + K22) - K12^2``,
    ``h = 1/(1 + K11) + 1/(1 + K22)`` and the orthant probability
    ``P = 1/4 + asin(K12 / sqrt((1+K11)(1+K22))) / (2 pi)``,
    ``<sigma sigma> = K12 P + [K11 K22 + K12^2 (h - 1)] / (2 pi sqrt D)`` and
    ``<sigma' sigma'> = P + K12 h / (2 pi sqrt D) + K12 / (2 pi D^(3/2))``
    (both manifestly symmetric). Equal to nested quadrature to 1e-15.
    Evaluated in the stable form of :func:`pdlt.gaussian._closed._gelu_terms`
    (``D = 1 + K11 + K22 + G`` with ``G = K11 K22 - K12^2`` from the angle).
    Returns a dict ``{"sigma": ..., "d1": ...}`` of the requested terms.
    """
    return pair_terms(("gelu",), K11, K12, K22, tuple(terms))


def closed_form_pair(act, fa, fb, K11, K12, K22):
    """Closed-form ``<fa(z1) fb(z2)>`` for an activation, or None.

    Covers ``(fa, fb)`` in ``{("sigma","sigma"), ("d1","d1")}`` for
    scale-invariant activations (arc-cosine kernels of degree 1 and 0,
    Cho & Saul 2009), erf, sin and GELU (formulas in ``shared/NOTATION.md``),
    evaluated in forms that neither overflow nor cancel at any kernel scale
    (:mod:`pdlt.gaussian._closed`). Works on any broadcastable arrays.
    """
    pair = (fa, fb)
    if pair not in (("sigma", "sigma"), ("d1", "d1")):
        return None
    family = closed_family(act)
    if family is None:
        return None
    K11, K12, K22 = np.broadcast_arrays(*(np.asarray(k, float) for k in (K11, K12, K22)))
    return pair_terms(family, K11, K12, K22, (fa,))[fa]


# ---------------------------------------------------------------------------
# All pairs of N inputs
# ---------------------------------------------------------------------------

_TILE = 128


def _validate_kernel(K, where=""):
    """Clean (N, N) float kernel, its diagonal, and the correlations rho.

    Few passes over N^2 values (it runs at every layer of a flow): finiteness,
    exact-or-near symmetry, and ``|rho_ab| <= 1`` up to round-off, which is
    the pairwise PSD condition the 2x2 expectations need. Returns
    ``(K, diag, rho, den)`` with ``den = sqrt(K_aa K_bb)`` (``rho = 0`` where
    ``den = 0``) and ``rho_aa = 1`` exactly for ``K_aa > 0``.
    """
    K = np.asarray(K, dtype=float)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"kernel{where} must be a square (N, N) matrix; got shape {K.shape}")
    if not np.isfinite(K).all():
        raise ValueError(f"kernel{where} contains NaN or inf (the flow overflowed or the inputs are bad)")
    diag = np.diag(K).copy()
    if np.any(diag < 0):
        raise KernelNotPSDError(f"kernel{where} has a negative variance on its diagonal")
    if not np.array_equal(K, K.T):
        sym = np.max(np.abs(K - K.T))
        if sym > 1e3 * _EPS * max(np.max(np.abs(K)), 1.0):
            raise ValueError(f"kernel{where} is not symmetric (max |K - K^T| = {sym:.2e})")
        K = 0.5 * (K + K.T)
    s = np.sqrt(diag)
    den = np.multiply.outer(s, s)
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
    rho = K * np.multiply.outer(inv, inv)
    np.fill_diagonal(rho, np.where(diag > 0, 1.0, 0.0))
    amax = max(rho.max(), -rho.min()) if rho.size else 0.0
    bad = None
    if amax > 1.0 + 64 * _EPS:
        bad = np.abs(rho) > 1.0 + 64 * _EPS
    elif not s.all():
        zero = s == 0  # a covariance with a zero-variance input must vanish
        zero_var_cov = (zero[:, None] | zero[None, :]) & (K != 0)
        bad = zero_var_cov if zero_var_cov.any() else None
    if bad is not None:
        a, b = np.argwhere(bad)[0]
        raise KernelNotPSDError(
            f"kernel{where} is not positive semi-definite: inputs {a} and {b} have "
            f"K_ab^2 > K_aa K_bb (K_aa={K[a, a]:.6g}, K_ab={K[a, b]:.6g}, K_bb={K[b, b]:.6g})")
    np.clip(rho, -1.0, 1.0, out=rho)
    return K, diag, rho, den


def _closed_forms(act, terms, K, diag, rho, den):
    """Closed forms for the requested terms that have one, in one shared pass.

    Same stable formulas as :func:`closed_form_pair` (:mod:`._closed`), for
    the whole (N, N) kernel at once (``rho``, ``den`` are recomputed there so
    that identical inputs get ``rho = 1`` exactly; see ``_closed``).
    """
    want = [t for t in terms if t in (("sigma", "sigma"), ("d1", "d1"))]
    family = closed_family(act)
    if not want or family is None:
        return {}
    res = pair_terms(family, diag[:, None], K, diag[None, :], [t[0] for t in want])
    return {t: res[t[0]] for t in want}


def pair_expectations(act, K, terms=(("sigma", "sigma"),), *, rtol=1e-12, method="auto"):
    """``<fa(z_a) fb(z_b)>_K`` for all pairs of N inputs, for several terms.

    Parameters
    ----------
    act : Activation
    K : ndarray (N, N)
        Kernel over the inputs; symmetric PSD (checked pairwise).
    terms : sequence of (str, str)
        Names of Activation attributes, e.g. ``("sigma", "sigma")`` and
        ``("d1", "d1")`` for the NNGP and NTK recursions.
    rtol : float
        Target accuracy of the series: absolute error at most
        ``rtol * sqrt(<fa_a^2> <fb_b^2>)`` for each pair.
    method : {"auto", "series", "quadrature"}
        ``"auto"`` uses closed forms, then the Mehler series with nested
        quadrature for slow pairs; ``"series"`` skips the closed forms;
        ``"quadrature"`` forces nested quadrature for every off-diagonal pair
        (slow; a reference).

    Returns
    -------
    dict mapping each term to an (N, N) ndarray
        Exactly symmetric when ``fa == fb``.
    """
    if method not in ("auto", "series", "quadrature"):
        raise ValueError(f"method must be 'auto', 'series' or 'quadrature'; got {method!r}")
    K, diag, rho, den = _validate_kernel(K)
    N = K.shape[0]
    closed = _closed_forms(act, list(terms), K, diag, rho, den) if method == "auto" else {}
    out = {}
    grid = None  # what the series terms share: rho, the rule's nodes, f values
    for fa, fb in terms:
        if (fa, fb) in closed:
            out[(fa, fb)] = closed[(fa, fb)]
            continue
        f, g = getattr(act, fa), getattr(act, fb)
        if N > 1 and method != "quadrature":
            if grid is None:
                grid = _SeriesGrid(act, K, diag)
            out[(fa, fb)] = _mehler_offdiag(grid, fa, fb, rtol)
            continue
        res = np.empty((N, N))
        # the diagonal is a one-variable integral
        res[np.diag_indices(N)] = expect(lambda z: f(z) * g(z), diag, kinks=act.kinks,
                                         period=act.period)
        if N > 1:
            iu = np.triu_indices(N, 1)
            vals = expect2(f, g, diag[iu[0]], K[iu], diag[iu[1]],
                           kinks_f=act.kinks, kinks_g=act.kinks)
            res[iu] = vals
            lower = np.tril_indices(N, -1)
            if fa == fb:
                res[lower] = res.T[lower]
            else:
                res[lower] = expect2(f, g, diag[lower[0]], K[lower], diag[lower[1]],
                                     kinks_f=act.kinks, kinks_g=act.kinks)
        out[(fa, fb)] = res
    return out


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
            self._coef[key] = _series_coefficients(self.values(name), kmax,
                                                   getattr(self.act, name), self.pos, self.huge)
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
        if rmax ** (kmax + 1) * tailc[kmax] > budget:
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
        tail = rmax * rp * tailc              # bound on the terms k > M, for M = k
        choices = []
        ok = np.flatnonzero(tail <= budget)
        M = int(ok[0]) if len(ok) else kmax
        choices.append((M + 1, None, M))
        pk = rp * np.max(acf[ia], axis=0) * np.max(acg[jb], axis=0)
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


def _warn(msg):
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
