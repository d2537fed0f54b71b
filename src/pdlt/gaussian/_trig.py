r"""Gaussian averages of products of trigonometric polynomials (sin), in closed form.

A :class:`TrigPoly` is ``f(z) = sum_t c_t z^(n_t) exp(i k_t z)`` with
``c_(n,-k) = conj(c_(n,k))`` (f real): sin and cos of ``a z + b`` and
their products, powers, derivatives and products with powers of z, i.e.
every function the finite-width statistics of a sin network average
(``sigma^p``, ``sigma' sigma''``, ``z sigma'' = -z sin z``, ...). The
coefficients of products of sines and cosines are dyadic rationals times
``i^m`` and the frequencies small integers, so the expansion is exact in
float64.

**d variables** (:func:`trig_expect`, d = 1..4, any PSD covariance,
rank-deficient too). Expanding the product,

``<prod_j f_j(z_j)>_K = sum C_(n,k) <z^n exp(i k.z)>_K``,
``<z^n exp(i k.z)>_K = exp(-k^T K k / 2) E[Y^n]``, ``Y ~ N(i K k, K)``

(complete the square; ``E[Y^n]`` by the recursion of Isserlis' theorem
with a mean, ``E[Y_i Y^m] = mu_i E[Y^m] + sum_j K_ij m_j E[Y^(m - e_j)]``).
``k^T K k >= 0`` is one exponent per term (never ``exp(K) sinh(K)``): no
overflow at any scale, and at a huge scale every term with ``k^T K k >> 1``
underflows to 0, leaving the period mean (and the exactly degenerate
directions of a rank-deficient K, e.g. ``z_b = -z_a``, with ``k^T K k = 0``
exactly). Cost: one small sum per covariance, independent of K.

**Accuracy and where it is used.** The terms are bounded by ``|C|``, so the
round-off of the sum is ``~eps sum |C| |E[Y^n]| exp(-k^T K k / 2)`` (bounded
by 32 eps times that, per moment degree). Relative to the entry's
Cauchy-Schwarz scale that is round-off wherever the scale is not much
smaller than the coefficients; at small variances a product of d sines is
``O(K^(d/2))`` while its terms are ``O(1)`` and cancel. Such covariances
(bound above ``_RTOL`` = 1e-12 of ``prod_j <f_j^2>^(1/2)``, a lower bound of
the Cauchy-Schwarz scale) are flagged ``ok = False`` for the caller's
quadrature, which is accurate and cheap there (narrow axes): e.g. four
sines at variances below ~0.03. The error bound returned adds the
conditioning of the average in K itself: a float64 K fixes ``k^T K k`` only
to ``~d^2 eps sum |k_i k_j K_ij|``, which matters where a rank-deficient K
at a huge scale has ``k^T K k ~ 1`` (the quadrature path inherits the same
from its factor of K). Measured (``tests/gaussian/test_trig.py``): within
1e-15 of the quadrature path at "high" (variances 0.5..2), of a tensor
Gauss-Hermite rule in K's eigenbasis, and of the same sum at 40 digits
(mpmath) at scales 0.3..1e12; the exact period limits at 1e12.

**One variable** (:func:`trig_expect1`): the same sum where
``k_max^2 K > 2``; below, the heat-kernel series
``<f>_K = sum_m f^(2m)(0) K^m / (2^m m!)`` (40 terms, ``f^(2m)(0)`` exact from
the coefficients; its terms fall like ``x^m / m!``, ``x = k_max^2 K / 2 <= 1``,
and the leading ones are exact zeros where f vanishes at 0): every variance,
error ~1e-15 of the scale (the heat series and the sum agree to 1e-14 at the
switch, ``test_heat_series_meets_sum``).

Functions are recognized by :func:`trig_form`: a callable evaluated at the
symbolic identity ``Z`` (numpy's ``sin``/``cos`` of ``a Z + b``,
arithmetic) that yields a :class:`TrigPoly` equal to the callable on a probe
grid to 1e-12 is replaced by it; anything else (``tanh(Z)`` raises) keeps the
quadrature. Where it is used: :func:`pdlt.gaussian.expect` (zero mean, an
activation with a ``period``), :func:`pdlt.gaussian.expect_nd` (functions
without kinks outside the entire-function rule), the pairs of
:func:`pdlt.gaussian.pair_expectations` without a closed form of their own,
and the layer averages of :mod:`pdlt.theory._averages`: every statistic of
a plain or residual sin MLP. ``_TRIG = False`` forces the old paths
everywhere.
"""

from __future__ import annotations

import itertools
import math
import numbers

import numpy as np

__all__ = ["TrigPoly", "Z", "trig_form", "trig_forms", "trig_expect", "trig_expect1",
           "trig_pairs", "active", "as_trig", "with_fallback"]

#: False: every caller takes its quadrature path (an independent reference)
_TRIG = True
_EPS = np.finfo(float).eps
#: round-off bound of the closed form relative to prod_j <f_j^2>^(1/2) above which the
#: caller's quadrature is used (small variances, module doc)
_RTOL = 1e-12
#: heat-kernel series of one variable: where k_max^2 K <= _SERIES_MAX, with _SERIES_TERMS terms
_SERIES_MAX = 2.0
_SERIES_TERMS = 40
#: probe grid of trig_form (asymmetric, no special points)
_PROBE = np.linspace(-7.3, 8.1, 57)
_PROBE_RTOL = 1e-12


def active(period):
    """True if the closed forms apply to an activation with this ``period`` (and are on)."""
    return _TRIG and period is not None


class TrigPoly:
    """``f(z) = sum c_(n,k) z^n exp(i k z)`` (real), as a callable.

    Parameters
    ----------
    terms : dict (int n, float k) -> complex c
        Conjugate-symmetric: ``c_(n,-k) = conj(c_(n,k))``.
    fn : callable, optional
        What a numeric call evaluates (the activation's own function, so
        values are bitwise those of the quadrature path); default the sum.

    Arithmetic (``+ - *``, integer powers, scalars), :meth:`derivative`,
    and numpy's ``sin``/``cos`` of a linear TrigPoly (``a Z + b``) give
    TrigPolys, so ``lambda z: z * np.sin(z) ** 2`` evaluated at :data:`Z` is one.
    """

    __slots__ = ("terms", "fn")
    __array_priority__ = 100.0

    def __init__(self, terms, fn=None):
        self.terms = {(int(n), float(k)): complex(c) for (n, k), c in terms.items() if c != 0}
        self.fn = fn

    # -- numeric ------------------------------------------------------------
    def __call__(self, z):
        if isinstance(z, TrigPoly):
            if z.is_identity():
                return self
            raise TypeError("TrigPoly: composition with a non-identity TrigPoly")
        if self.fn is not None:
            return self.fn(z)
        return self.evaluate(z)

    def numeric(self):
        """A plain callable with the same values (for the quadrature paths)."""
        return self.fn if self.fn is not None else self.evaluate

    def evaluate(self, z):
        """The sum itself at real z (any shape)."""
        z = np.asarray(z, dtype=float)
        out = np.zeros(z.shape)
        for (n, k), c in self.terms.items():
            if k < 0:
                continue
            t = c * np.exp(1j * k * z) if k else np.full(z.shape, c)
            v = t.real if k == 0 else 2.0 * t.real
            out += v * z ** n if n else v
        return out

    # -- structure ------------------------------------------------------------
    def is_identity(self):
        return self.terms == {(1, 0.0): 1.0 + 0j}

    def _linear(self):
        """``(a, b)`` if self is ``a z + b`` (real), else None."""
        keys = set(self.terms)
        if not keys <= {(1, 0.0), (0, 0.0)}:
            return None
        a = self.terms.get((1, 0.0), 0j)
        b = self.terms.get((0, 0.0), 0j)
        if a.imag or b.imag:
            return None
        return a.real, b.real

    @property
    def kmax(self):
        return max((abs(k) for (_, k) in self.terms), default=0.0)

    @property
    def degree(self):
        return max((n for (n, _) in self.terms), default=0)

    def abs_sum(self):
        return sum(abs(c) for c in self.terms.values())

    def derivative(self, order=1):
        """``f^(order)`` as a TrigPoly."""
        f = self
        for _ in range(order):
            t = {}
            for (n, k), c in f.terms.items():
                if n:
                    t[(n - 1, k)] = t.get((n - 1, k), 0) + n * c
                if k:
                    t[(n, k)] = t.get((n, k), 0) + 1j * k * c
            f = TrigPoly(t)
        return f

    # -- arithmetic -----------------------------------------------------------
    @staticmethod
    def _coerce(other):
        if isinstance(other, TrigPoly):
            return other
        if isinstance(other, numbers.Real) or (isinstance(other, np.ndarray) and other.size == 1
                                                and np.isrealobj(other)):
            return TrigPoly({(0, 0.0): float(np.asarray(other).reshape(()))})
        return None

    def __add__(self, other):
        o = self._coerce(other)
        if o is None:
            return NotImplemented
        t = dict(self.terms)
        for key, c in o.terms.items():
            t[key] = t.get(key, 0) + c
        return TrigPoly(t)

    __radd__ = __add__

    def __neg__(self):
        return TrigPoly({key: -c for key, c in self.terms.items()})

    def __sub__(self, other):
        o = self._coerce(other)
        return NotImplemented if o is None else self + (-o)

    def __rsub__(self, other):
        o = self._coerce(other)
        return NotImplemented if o is None else o + (-self)

    def __mul__(self, other):
        o = self._coerce(other)
        if o is None:
            return NotImplemented
        t = {}
        for (n1, k1), c1 in self.terms.items():
            for (n2, k2), c2 in o.terms.items():
                key = (n1 + n2, k1 + k2)
                t[key] = t.get(key, 0) + c1 * c2
        fa, fb = self.fn, o.fn
        fn = None
        if fa is not None and fb is not None:
            fn = lambda z: fa(z) * fb(z)  # noqa: E731
        return TrigPoly(t, fn)

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, numbers.Real) or (isinstance(other, np.ndarray) and other.size == 1):
            return self * (1.0 / float(np.asarray(other).reshape(())))
        return NotImplemented

    def __pow__(self, p):
        if not (isinstance(p, numbers.Integral) or (isinstance(p, float) and p.is_integer())) \
                or p < 0:
            return NotImplemented
        out = TrigPoly({(0, 0.0): 1.0})
        for _ in range(int(p)):
            out = out * self
        if self.fn is not None:
            fn, pp = self.fn, int(p)
            out.fn = lambda z: fn(z) ** pp
        return out

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or kwargs:
            return NotImplemented
        if ufunc in (np.sin, np.cos) and len(inputs) == 1:
            lin = inputs[0]._linear()
            if lin is None:
                return NotImplemented
            a, b = lin
            e = complex(math.cos(b), math.sin(b))     # exp(i b)
            if ufunc is np.cos:    # (e^{i(az+b)} + e^{-i(az+b)}) / 2
                return TrigPoly({(0, a): 0.5 * e, (0, -a): 0.5 * e.conjugate()}) if a else \
                    TrigPoly({(0, 0.0): math.cos(b)})
            return TrigPoly({(0, a): -0.5j * e, (0, -a): 0.5j * e.conjugate()}) if a else \
                TrigPoly({(0, 0.0): math.sin(b)})
        ops = {np.add: lambda x, y: x + y, np.subtract: lambda x, y: x - y,
               np.multiply: lambda x, y: x * y, np.true_divide: lambda x, y: x / y,
               np.power: lambda x, y: x ** y}
        if ufunc in ops and len(inputs) == 2:
            x, y = inputs
            if not isinstance(x, TrigPoly):
                x = self._coerce(x)
            if ufunc is not np.power and ufunc is not np.true_divide and not isinstance(y, TrigPoly):
                y = self._coerce(y)
            elif not isinstance(y, TrigPoly):
                y = float(np.asarray(y).reshape(())) if np.size(y) == 1 else None
            if x is None or y is None:
                return NotImplemented
            return ops[ufunc](x, y)
        if ufunc is np.negative and len(inputs) == 1:
            return -inputs[0]
        return NotImplemented

    def __repr__(self):
        return f"TrigPoly({self.terms})"


#: the symbolic identity z
Z = TrigPoly({(1, 0.0): 1.0})


def trig_form(f):
    """``f`` as a :class:`TrigPoly` (values from ``f`` itself), or None.

    ``f(Z)`` must give a TrigPoly that equals ``f`` on a probe grid to
    ``1e-12`` of ``max(1, max |f|)``; any exception means "not trigonometric".
    """
    if isinstance(f, TrigPoly):
        return f
    try:
        with np.errstate(all="ignore"):
            t = f(Z)
            if isinstance(t, np.ndarray) and t.dtype == object and t.size == 1:
                t = t.reshape(()).item()
            if not isinstance(t, TrigPoly):
                return None
            want = np.asarray(f(_PROBE), dtype=float)
            got = t.evaluate(_PROBE)
    except Exception:   # noqa: BLE001 - any failure: f is not a trig polynomial
        return None
    if want.shape != got.shape or not np.all(np.isfinite(want)):
        return None
    if np.max(np.abs(want - got)) > _PROBE_RTOL * max(1.0, float(np.max(np.abs(want)))):
        return None
    return TrigPoly(t.terms, fn=f)


def trig_forms(fs):
    """:func:`trig_form` of each of ``fs``, or None unless all are trigonometric."""
    out = []
    for f in fs:
        t = trig_form(f)
        if t is None:
            return None
        out.append(t)
    return out


def as_trig(fs, period):
    """``fs`` as TrigPolys if :func:`active` for ``period`` and all are trigonometric,
    else ``fs`` unchanged (the hook of the callers that know the activation's period)."""
    if not active(period):
        return fs
    return trig_forms(fs) or fs


def _opaque(g):
    """``g`` on float arrays only: :func:`trig_form` does not recognize it (no re-entry)."""
    return lambda z: g(np.asarray(z, dtype=float))


def with_fallback(fs, K, return_error, quadrature):
    """:func:`trig_expect`, and ``quadrature(plain_fs, K[rest])`` -> (values, errors) where
    the closed form is not ``ok`` (small variances). Returns (values (B,), errors (B,))."""
    out, err, ok = trig_expect(fs, K, return_error=True)
    if not ok.all():
        rest = np.flatnonzero(~ok)
        o, e = quadrature([_opaque(f.numeric()) for f in fs], K[rest])
        out[rest], err[rest] = o, e
    return out, err


# ---------------------------------------------------------------------------
# d variables
# ---------------------------------------------------------------------------

def _combos(fs):
    """Terms of ``prod_j f_j(z_j)``: k (M, d), n (M, d), C (M,) complex, |C| sums (M,)."""
    d = len(fs)
    acc = {}
    for combo in itertools.product(*[list(f.terms.items()) for f in fs]):
        n = tuple(t[0][0] for t in combo)
        k = tuple(t[0][1] for t in combo)
        c = 1.0 + 0j
        for t in combo:
            c *= t[1]
        a = acc.setdefault((n, k), [0j, 0.0])
        a[0] += c
        a[1] += abs(c)
    keys = [key for key, (c, _) in acc.items() if c != 0]
    if not keys:
        return np.zeros((0, d)), np.zeros((0, d), dtype=int), np.zeros(0, complex), np.zeros(0)
    n = np.array([key[0] for key in keys], dtype=int)
    k = np.array([key[1] for key in keys], dtype=float)
    C = np.array([acc[key][0] for key in keys])
    A = np.array([acc[key][1] for key in keys])
    return k, n, C, A


def _moment(n, mu, K):
    """``E[prod_j Y_j^(n_j)]`` for ``Y ~ N(mu, K)``: mu (B, M, d) complex, K (B, d, d).

    Isserlis' recursion with a mean on the multi-index ``n`` (d,), memoized.
    Returns (values (B, M), the same with |mu| and |K|, a round-off scale).
    """
    memo = {}

    def rec(m):
        if m in memo:
            return memo[m]
        if not any(m):
            v = (np.ones(mu.shape[:2], complex), np.ones(mu.shape[:2]))
        else:
            i = next(j for j, e in enumerate(m) if e)
            r = list(m)
            r[i] -= 1
            r = tuple(r)
            v0, a0 = rec(r)
            val, ab = mu[..., i] * v0, np.abs(mu[..., i]) * a0
            for j, e in enumerate(r):
                if e:
                    s = list(r)
                    s[j] -= 1
                    vj, aj = rec(tuple(s))
                    kij = K[:, None, i, j]
                    val = val + e * kij * vj
                    ab = ab + e * np.abs(kij) * aj
            v = (val, ab)
        memo[m] = v
        return v
    return rec(tuple(int(e) for e in n))


def _sum_terms(fs, K):
    """``sum C <z^n exp(i k.z)>_K`` (B,) and two round-off bounds (B,), K (B, d, d).

    The first bounds the round-off of the sum (it decides where the closed form
    is used); the second that of the exponents ``k^T K k``, which is the
    conditioning of the average in K itself (a float64 K fixes ``k^T K k`` only
    to ``~eps sum |k_i k_j K_ij|``: the quadrature path has it too).
    """
    B = K.shape[0]
    k, n, C, A = _combos(fs)
    out = np.zeros(B)
    bound = np.zeros(B)
    bq = np.zeros(B)
    if len(C) == 0:
        return out, bound, bq
    d = K.shape[-1]
    Kk = np.einsum("bij,mj->bmi", K, k)                        # (B, M, d)
    q = np.einsum("mi,bmi->bm", k, Kk)
    qabs = np.einsum("mi,bij,mj->bm", np.abs(k), np.abs(K), np.abs(k))
    np.maximum(q, 0.0, out=q)                                   # PSD: >= 0 up to round-off
    e = np.exp(-0.5 * q)
    # round-off: of the sum (a few eps per term, more with moments) and of the
    # exponent (q to ~d^2 eps |k||K||k|, relative error of exp(-q/2) half of that)
    rq = 0.5 * (d * d + 2) * _EPS * qabs
    if not n.any():
        out = e @ C.real if np.all(C.imag == 0) else (e @ C).real
        return out, 32.0 * _EPS * (e @ A), 8.0 * (e * rq) @ A
    val = np.zeros(B)
    for pat in np.unique(n, axis=0):
        sel = np.flatnonzero(np.all(n == pat, axis=1))
        es = e[:, sel]
        if not pat.any():
            val += (es @ C[sel]).real
            bound += 32.0 * _EPS * (es @ A[sel])
            bq += 8.0 * (es * rq[:, sel]) @ A[sel]
            continue
        mu = 1j * Kk[:, sel]
        m, mabs = _moment(pat, mu, K)
        live = es > 0                                           # 0 * huge moment: 0
        t = np.where(live, es * m, 0.0)
        val += (t @ C[sel]).real
        ta = np.where(live, es * mabs, 0.0)
        bound += 32.0 * _EPS * (1 + int(pat.sum())) * (ta @ A[sel])
        bq += 8.0 * (ta * rq[:, sel]) @ A[sel]
    return val, bound, bq


def trig_expect(fs, K, return_error=False):
    """``<f_1(z_1) ... f_d(z_d)>`` for ``z ~ N(0, K)``: the closed form (module doc).

    Parameters
    ----------
    fs : sequence of d TrigPoly
    K : ndarray (B, d, d)
        PSD covariances (any rank; the caller checks PSD).
    return_error : bool
        Also return the round-off bound.

    Returns
    -------
    values (B,), error bound (B,) (zeros if not ``return_error``), ok (B,) bool:
        False where the bound exceeds ``_RTOL`` of ``prod_j <f_j^2>^(1/2)``
        (small variances: use quadrature there).
    """
    K = np.asarray(K, dtype=float)
    B, d, _ = K.shape
    scale = np.ones(B)
    for j, f in enumerate(fs):
        s2 = trig_expect1(f * f, K[:, j, j])
        scale *= np.sqrt(np.maximum(s2, 0.0))
    if d == 1:
        # the heat series or the sum: ~1e-15 relative at every variance
        val = trig_expect1(fs[0], K[:, 0, 0])
        bound = 1e-14 * np.abs(val) + 8 * _EPS * scale
        return val, (bound if return_error else np.zeros(B)), np.ones(B, dtype=bool)
    val, bound, bq = _sum_terms(fs, K)
    ok = bound <= _RTOL * scale
    return val, (bound + bq if return_error else np.zeros(B)), ok


def trig_expect1(f, K):
    """``<f(z)>`` for ``z ~ N(0, K)``, K of any shape >= 0, f a TrigPoly (module doc)."""
    K = np.asarray(K, dtype=float)
    shape = K.shape
    Kf = K.reshape(-1)
    out = np.empty(Kf.shape)
    x = f.kmax ** 2 * Kf
    small = x <= _SERIES_MAX
    if small.any():
        out[small] = _heat_series(f, Kf[small])
    if (~small).any():
        out[~small] = _sum_terms([f], Kf[~small, None, None])[0]
    return out.reshape(shape)


def _heat_series(f, K):
    """``sum_m f^(2m)(0) K^m / (2^m m!)`` (Horner in K), K (B,)."""
    coef = np.zeros(_SERIES_TERMS)
    for m in range(_SERIES_TERMS):
        deriv = 0j
        for (n, k), c in f.terms.items():
            # d^(2m)/dz^(2m) [z^n e^{ikz}] at 0 = (2m)! / (2m - n)! (ik)^(2m - n)
            p = 2 * m - n
            if p < 0:
                continue
            deriv += c * math.perm(2 * m, n) * ((1j * k) ** p if p else 1.0)
        coef[m] = deriv.real / (2.0 ** m * math.factorial(m))
    out = np.full(K.shape, coef[-1])
    for m in range(_SERIES_TERMS - 2, -1, -1):
        out = out * K + coef[m]
    return out


# ---------------------------------------------------------------------------
# pairs of N inputs
# ---------------------------------------------------------------------------

def trig_pairs(fns, K, terms):
    """``<fa(z_a) fb(z_b)>_K`` (N, N) for each (fa, fb) of ``terms``, or None.

    ``fns`` maps names to callables (an ``Integrands`` or activation: its
    attributes); None unless every named function is trigonometric
    (:func:`trig_form`) and every 2x2 covariance is in the closed form's
    range (``ok``). The diagonal is the one-variable average of ``fa fb``.
    """
    K = np.asarray(K, dtype=float)
    N = K.shape[0]
    names = {n for t in terms for n in t}
    forms = {}
    for nm in names:
        t = trig_form(getattr(fns, nm) if not isinstance(fns, dict) else fns[nm])
        if t is None:
            return None
        forms[nm] = t
    a, b = np.triu_indices(N, 1)
    cov = np.empty((len(a), 2, 2))
    cov[:, 0, 0], cov[:, 1, 1] = K[a, a], K[b, b]
    cov[:, 0, 1] = cov[:, 1, 0] = K[a, b]
    diag = np.diag(K)
    out = {}
    for fa, fb in terms:
        f, g = forms[fa], forms[fb]
        res = np.empty((N, N))
        res[np.arange(N), np.arange(N)] = trig_expect1(f * g, diag)
        if len(a):
            up, _, ok = trig_expect([f, g], cov)
            lo, _, ok2 = trig_expect([f, g], cov[:, ::-1, ::-1])
            if not (ok.all() and ok2.all()):
                return None
            res[a, b], res[b, a] = up, lo
        out[(fa, fb)] = res
    return out
