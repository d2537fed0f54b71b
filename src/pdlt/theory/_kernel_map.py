"""The single-input kernel map and its fixed points: helpers shared by the
critical-point solver (:mod:`pdlt.theory.criticality`), the phase diagram
(:mod:`pdlt.theory.phase`) and the delta expansion
(:mod:`pdlt.theory.delta_expansion`).

Every derivative of a Gaussian average is taken in the Hermite form
``d^n <F>_K / dK^n = <F He_{2n}(z/sqrt K)>_K / (2K)^n``, which needs sigma
alone (and sigma' for chi_perp); see ``docs/derivations/criticality.rst``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from .. import gaussian
from ..activations import Activation, ActivationError, activation as _activation

EPS = np.finfo(float).eps
K_RANGE = (1e-8, 1e6)
SCAN_PER_DECADE = 24


# ---------------------------------------------------------------------------
# validation and moments
# ---------------------------------------------------------------------------

def resolve_activation(act) -> Activation:
    """Resolve and validate an activation (name, Activation or callable)."""
    if act is None:
        raise ActivationError("activation is required: a name such as 'tanh', an "
                              "Activation, or a vectorized numpy callable")
    return _activation(act)


def check_kernel(K, name="K"):
    arr = np.asarray(K, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be a finite variance >= 0; got {K!r}")
    return arr


def check_variances(C_W, C_b=None):
    C_W = float(C_W)
    if not math.isfinite(C_W) or C_W <= 0:
        raise ValueError(f"C_W must be a finite weight variance > 0; got {C_W!r}")
    if C_b is not None:
        C_b = float(C_b)
        if not math.isfinite(C_b) or C_b < 0:
            raise ValueError(f"C_b must be a finite bias variance >= 0; got {C_b!r}")
        return C_b, C_W
    return C_W


def expect(act, fn, K):
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = gaussian.expect(fn, K, kinks=act.kinks, period=act.period)
    return out


def moments(act, K):
    """Expectations the solver needs, at K > 0 (array).

    Returns ``ss = <sigma^2>``, ``zss = <z^2 sigma^2>/K`` and ``pp = <sigma'^2>``,
    so that ``d ss/dK = (zss - ss)/(2K)`` (Stein).
    """
    K = np.asarray(K, dtype=float)
    s = act.sigma
    d = act.d1
    # subtract sigma(0)^2 before integrating: zss - ss = <(sigma^2 - sigma(0)^2)(u^2 - 1)>
    # then loses no digits to cancellation at small K (sigmoid, softplus)
    s00 = float(s(np.zeros(1))[0]) ** 2
    ss = expect(act, lambda z: s(z) ** 2 - s00, K)
    zss = expect(act, lambda z: z * z * (s(z) ** 2 - s00), K) / K
    pp = expect(act, lambda z: d(z) ** 2, K)
    return ss + s00, zss + s00, pp



def derivatives(act, K):
    """f-independent derivatives at scalar K: ss, ss1, ss2, ss3, pp, pp1."""
    K = float(K)
    s, d = act.sigma, act.d1
    E = [expect(act, lambda z, p=p: (z * z / K) ** p * s(z) ** 2, K) for p in range(4)]
    ppm = [expect(act, lambda z, p=p: (z * z / K) ** p * d(z) ** 2, K) for p in range(2)]
    ss = float(E[0])
    ss1 = float(E[1] - E[0]) / (2 * K)                                   # He_2
    ss2 = float(E[2] - 6 * E[1] + 3 * E[0]) / (4 * K * K)               # He_4
    ss3 = float(E[3] - 15 * E[2] + 45 * E[1] - 15 * E[0]) / (8 * K ** 3)  # He_6
    pp = float(ppm[0])
    pp1 = float(ppm[1] - ppm[0]) / (2 * K)
    return ss, ss1, ss2, ss3, pp, pp1


# ---------------------------------------------------------------------------
# structure at the origin: scale invariance and one-sided Taylor coefficients
# ---------------------------------------------------------------------------

def scale_invariant_slopes(act):
    """(a_plus, a_minus) if sigma(z) = a_+ z (z > 0), a_- z (z < 0), else None.

    Named activations declare it; a user's callable is tested on 80 points
    spanning 1e-6 <= |z| <= 1e3 to 1e-12 relative.
    """
    if act.scale_invariant is not None and not (act.name == "monomial"
                                                and act.parameters.get("p", 1) != 1):
        return tuple(float(a) for a in act.scale_invariant)
    z = np.logspace(-6, 3, 40)
    with np.errstate(all="ignore"):
        ap = float(act.sigma(np.array([1.0]))[0])
        am = -float(act.sigma(np.array([-1.0]))[0])
        plus, minus = act.sigma(z), act.sigma(-z)
        zero = float(act.sigma(np.array([0.0]))[0])
    tol = 1e-12 * max(abs(ap), abs(am), 1.0)
    if (abs(zero) <= tol and np.all(np.abs(plus - ap * z) <= tol * np.maximum(z, 1.0))
            and np.all(np.abs(minus + am * z) <= tol * np.maximum(z, 1.0))):
        if ap == 0 and am == 0:
            return None
        return ap, am
    return None


def _cheb_taylor(fn, lo, hi, order, m=24):
    """Taylor coefficients at 0 of fn on [lo, hi] (0 an endpoint or inside)."""
    t = np.cos(np.pi * (np.arange(m) + 0.5) / m)
    x = 0.5 * (lo + hi) + 0.5 * (hi - lo) * t
    with np.errstate(all="ignore"):
        y = np.asarray(fn(x), dtype=float)
    if not np.all(np.isfinite(y)):
        raise ActivationError("activation returned a non-finite value near z = 0")
    cheb = np.polynomial.chebyshev.Chebyshev.fit(x, y, m - 1, domain=[lo, hi])
    # domain == window: the polynomial in the original variable z
    poly = cheb.convert(kind=np.polynomial.Polynomial, domain=[lo, hi], window=[lo, hi])
    c = np.zeros(order + 1)
    k = min(order + 1, len(poly.coef))
    c[:k] = poly.coef[:k]
    return np.array([c[p] * math.factorial(p) for p in range(order + 1)])


def taylor_at_zero(activation, order=5):
    """One-sided Taylor coefficients of sigma at the origin.

    ``sigma(z) = sum_p sigma_p^{+-} z^p / p!`` for ``z -> 0^{+-}`` (book
    §5.3.3 convention). Exact coefficients of a named analytic activation
    are used up to order 4 (and exact one-sided sigma', sigma'' at a kink);
    the rest come from Chebyshev fits: degree 15 on ``[-0.2, 0.2]`` where
    sigma is analytic at 0 (measured on tanh: error 1e-13 for sigma_1,
    1e-12 for sigma_3, 1e-7 for sigma_5), degree 11 on ``[0, 0.2]`` and
    ``[-0.2, 0]`` for the one-sided coefficients used to detect a kink
    (1e-13 for sigma_1, 1e-8 for sigma_3).

    Returns
    -------
    plus, minus : ndarray of shape (order + 1,)
    analytic : bool
        Whether the two sides agree (no kink at the origin).
    """
    act = resolve_activation(activation)
    r = 0.2
    plus = _cheb_taylor(act.sigma, 0.0, r, order, m=12)
    minus = _cheb_taylor(act.sigma, -r, 0.0, order, m=12)
    scale = max(1.0, float(np.max(np.abs(plus[:4]))), float(np.max(np.abs(minus[:4]))))
    tol = np.array([1e-10, 1e-8, 1e-6, 1e-4]) * scale
    analytic = bool(np.all(np.abs(plus[:4] - minus[:4]) <= tol))
    exact = act.derivatives == "exact"
    if analytic:
        central = _cheb_taylor(act.sigma, -r, r, order, m=16)
        if exact and act.taylor is not None and 0.0 not in act.kinks:
            k = min(len(act.taylor), order + 1)
            central[:k] = act.taylor[:k]
        plus = minus = central
    elif exact:
        # exact one-sided limits of sigma, sigma', sigma'' at the kink
        tiny = 1e-15
        with np.errstate(all="ignore"):
            for arr, sgn in ((plus, 1.0), (minus, -1.0)):
                z = np.array([sgn * tiny])
                arr[0] = float(act.sigma(np.zeros(1))[0])
                arr[1] = float(act.d1(z)[0])
                arr[2] = float(act.d2(z)[0])
    return plus, minus, analytic



# ---------------------------------------------------------------------------
# the scan and its roots
# ---------------------------------------------------------------------------

def scan_grid(K_range):
    lo, hi = (math.log10(k) for k in K_range)
    return np.logspace(lo, hi, int(round((hi - lo) * SCAN_PER_DECADE)) + 1)


def check_moments(act, K, values):
    bad = ~np.isfinite(values)
    if bad.any():
        k = float(np.asarray(K)[np.argmax(bad)])
        raise ActivationError(
            f"activation {act.name!r} gives a non-finite Gaussian average at K = {k:.3g} "
            "(it returns NaN/inf or grows too fast); it must be finite and grow at most "
            "polynomially")


def find_roots(fn, grid, values, noise=None):
    """Sign changes of values on grid, refined by brentq.

    Points where ``|values| <= noise`` (the rounding level) carry no sign and
    are skipped.
    """
    roots = []
    if noise is not None:
        keep = np.abs(values) > noise
        grid, values = grid[keep], values[keep]
    sign = np.sign(values)
    for i in np.flatnonzero(sign[:-1] * sign[1:] < 0):
        fa, fb = fn(grid[i]), fn(grid[i + 1])
        if not fa * fb < 0:  # a sign change of the scan that the refined values do not confirm
            continue
        r = optimize.brentq(fn, grid[i], grid[i + 1], xtol=1e-14 * grid[i], rtol=4 * EPS,
                            maxiter=200)
        roots.append(float(r))
    for i in np.flatnonzero(values == 0):
        roots.append(float(grid[i]))
    return sorted(roots)


# ---------------------------------------------------------------------------
# fixed points of the map
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FixedPoint:
    """A fixed point ``K* = f(K*)`` of the single-input kernel map."""

    K: float
    chi_parallel: float
    chi_perp: float

    @property
    def stable(self) -> bool:
        return self.chi_parallel < 1


def chis_at(act, K, C_W, plus=None, minus=None):
    if K == 0.0:
        if plus is None:
            plus, minus, _ = taylor_at_zero(act)
        m = 0.5 * (plus[1] ** 2 + minus[1] ** 2)
        s0, s2 = 0.5 * (plus[0] + minus[0]), 0.5 * (plus[2] + minus[2])
        return float(C_W * (m + s0 * s2)), float(C_W * m)
    ss, zss, pp = (float(v) for v in moments(act, np.array(K)))
    return float(C_W * (zss - ss) / (2 * K)), float(C_W * pp)


def find_fixed_points(act, C_b, C_W, K_range, ss_grid=None):
    slopes = scale_invariant_slopes(act)
    if slopes is not None:
        m = 0.5 * (slopes[0] ** 2 + slopes[1] ** 2)
        g = C_W * m
        if C_b == 0:
            return (FixedPoint(0.0, g, g),)
        if g < 1:
            return (FixedPoint(C_b / (1 - g), g, g),)
        return ()
    grid = scan_grid(K_range) if ss_grid is None else ss_grid[0]
    ss = moments(act, grid)[0] if ss_grid is None else ss_grid[1]
    gap = C_b + C_W * ss - grid

    def fn(k):
        return C_b + C_W * float(expect(act, lambda z: act.sigma(z) ** 2, k)) - k

    roots = find_roots(fn, grid, gap, noise=64 * EPS * (C_b + C_W * np.abs(ss) + grid))
    pts = []
    s0 = float(act.sigma(np.array([0.0]))[0])
    if C_b == 0 and s0 == 0:
        pts.append(FixedPoint(0.0, *chis_at(act, 0.0, C_W)))
    for r in roots:
        pts.append(FixedPoint(r, *chis_at(act, r, C_W)))
    return tuple(pts)
