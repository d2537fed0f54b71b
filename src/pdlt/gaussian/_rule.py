r"""The one-variable rule: ``<f(z)>`` for ``z ~ N(mean, K)``, and the quadrature
rules every other part of :mod:`pdlt.gaussian` builds on.

* :func:`expect` -- ``<f(z)>_K`` for a batch of variances ``K`` (and
  optionally means);
* ``_fixed_rule`` -- the K-independent rule in standard-normal units that the
  Mehler series and the single-input kernel flow evaluate functions on;
* ``_rule`` -- per-row rules with breakpoints at kinks and graded feature
  points (remembered: the recursions ask for the same rules many times);
* :class:`KernelNotPSDError`, raised by every multi-variable part.

Method and accuracy
-------------------
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
to 1e8 (``tests/gaussian/test_rule.py``).
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["expect", "KernelNotPSDError", "T_TRUNC"]

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


def expect(f, K, mean=0.0, *, kinks=(), period=None, periodic=False):
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
    period : float, optional
        The activation's period: panels span at most half of it (a hint that
        holds for any f built from a periodic sigma, also ``z sigma(z)^2``).
    periodic : bool
        f itself has period ``period`` (e.g. ``sigma^2``, ``sigma'^2``, not
        ``z sigma^2``). Then for ``w^2 K / 2 >= 40`` (``w = 2 pi / period``)
        the average is f's period mean, at a cost independent of K (Fourier:
        every other term is below ``e^-40`` of f's coefficients).

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
    if period is not None and not kinks and not np.any(mp):
        from . import _trig     # sin and its products: closed form, cost independent of K
        t = _trig.trig_form(f) if _trig._TRIG else None
        if t is not None:
            out[pos] = _trig.trig_expect1(t, Kp)
            return out.reshape(shape)
    sd = np.sqrt(Kp)
    kinks = tuple(float(k) for k in kinks if k != 0.0)
    step = None
    if periodic and period is not None and not kinks:
        # Fourier: <f>_K = sum_k c_k e^{i k w m} e^{-k^2 w^2 K / 2}, w = 2 pi / period; once
        # w^2 K / 2 >= _PERIOD_FLAT every k != 0 term is below e^-40 |c_k|, and the average
        # is the period mean c_0, whatever K (cost and memory independent of K)
        flat = 0.5 * (2.0 * math.pi / float(period)) ** 2 * Kp >= _PERIOD_FLAT
        if flat.any():
            where = np.flatnonzero(pos)
            out[where[flat]] = _period_mean(f, float(period))
            if flat.all():
                return out.reshape(shape)
            pos[where[flat]] = False
            Kp, mp, sd = Kp[~flat], mp[~flat], sd[~flat]
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
_PERIOD_FLAT = 40.0      # w^2 K / 2 beyond which a periodic f averages to its period mean


def _period_mean(f, period):
    """``(1/P) int_0^P f``: the trapezoid rule, doubled until two agree to round-off.

    For a smooth periodic f the trapezoid rule with M points errs by the
    Fourier coefficients at multiples of M (geometric convergence); two
    successive M agreeing to ``4 eps`` of the scale therefore bounds the error.
    """
    prev = None
    for M in 2 ** np.arange(6, 17):
        vals = np.asarray(f(period * np.arange(M) / M), dtype=float)
        mean = float(np.mean(vals))
        scale = float(np.max(np.abs(vals))) or 1.0
        if prev is not None and abs(mean - prev) <= 4 * _EPS * scale:
            return mean
        prev = mean
    raise ArithmeticError(
        f"the period mean of a periodic integrand (period {period:g}) did not converge with "
        "65536 points: the function is not smooth over its period; declare its kinks "
        "(pdlt.activation(f, kinks=...)) or give no period")


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

