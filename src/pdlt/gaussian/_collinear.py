r"""Two nearly collinear inputs of a smooth function: ``<f(z_a) g(z_b)>`` when ``z_b ~ z_a``.

The fast special case of :func:`pdlt.gaussian.pair_expectations` for N = 2
inputs whose conditional spread is small. Deep networks drive two inputs
together (``1 - rho ~ 1e-13`` after 10^4 critical swish layers); there the
Mehler series stops converging (its tail bound ``|rho|^(M+1)`` does not
shrink) and the general path hands the pair to nested quadrature, about 1e5
function evaluations per term and layer.

Method and accuracy
-------------------
With ``z_a = sqrt(K_aa) u`` and ``z_b = mu(u) + s v``,
``mu = (K_ab / sqrt(K_aa)) u``, ``s^2 = K_bb - K_ab^2 / K_aa`` and ``u, v``
independent standard normals,

.. math::  <f(z_a) g(z_b)> = E_u[ f(\sqrt{K_{aa}} u)\, E_v[g(\mu(u) + s v)] ].

The outer average is the engine's fixed one-variable rule (the one the
Mehler coefficients and the single-input flow use; error below 1e-14 of the
scale for products of the named activations, :mod:`pdlt.gaussian._rule`).
The inner average, for ``s <= S_MAX = 1e-2``, is n-node Gauss-Hermite, exact
for polynomials of degree ``2n - 1``; its error is
``n!/(2n)! s^(2n) g^(2n)(xi)``, and for g analytic within a distance ``d``
of the real axis Cauchy's estimate ``|g^(2n)| <= (2n)! M / d^(2n)`` bounds it
by ``n! (s/d)^(2n) M``. With ``d >= 1`` -- the assumption nested
quadrature's own Gauss-Hermite shortcut makes (tanh: pi/2, swish,
softplus, sigmoid: pi; erf, gelu, polynomials: entire) -- the smallest n
with ``n! s^(2n) <= 1e-3 rtol`` is taken (n = 2 for ``s <= 1e-4``
at rtol 1e-12, at most 5 at ``S_MAX``), so the inner error is three decades
below the accuracy asked of the pair. The cost is ``880 (n + 1)`` evaluations
of each function instead of ~5e4, and no series bookkeeping.

Applicability (else the general path runs, unchanged): N = 2, ``method="auto"``,
no kinks and no period (the fixed rule is then valid), both variances in
``(0, _K_FIXED_MAX]``, ``s <= S_MAX``, ``rtol >= 1e-13`` (ten times the fixed
rule's error). The diagonal is computed exactly as
the Mehler path computes it (the same values on the same rule, the same
products): bitwise the general path's. The off-diagonal agrees with the
general path (series or nested quadrature) within the accuracy both state,
``rtol`` of the Cauchy-Schwarz scale ``sqrt(<f_a^2> <g_b^2>)``; measured in
``tests/gaussian/test_collinear.py``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._rule import _K_FIXED_MAX, _fixed_rule

__all__ = ["collinear_pairs", "S_MAX"]

#: largest conditional spread ``s = sqrt(K_bb - K_ab^2 / K_aa)`` (z units) handled here
S_MAX = 1e-2
#: singularity distance assumed for g (module docstring)
_D = 1.0
_N_MAX = 8
#: share of ``rtol`` allowed for the inner Gauss-Hermite error
_SHARE = 1e-3
#: below this rtol the fixed rule's own error (< 1e-14) is not negligible: general path
_RTOL_MIN = 1e-13


@functools.lru_cache(maxsize=_N_MAX)
def _gauss_hermite(n):
    """Probabilists' Gauss-Hermite nodes and weights normalized to sum 1 (read-only)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    x.setflags(write=False)
    w.setflags(write=False)
    return x, w


def _nodes(s, rtol):
    """Smallest Gauss-Hermite order n with ``n! (s/d)^(2n) <= share * rtol`` (<= _N_MAX), or None."""
    x = (s / _D) ** 2
    for n in range(1, _N_MAX + 1):
        if math.factorial(n) * x ** n <= _SHARE * rtol:
            return max(n, 2)
    return None


def collinear_pairs(act, K, diag, terms, rtol):
    """``<fa(z_a) fb(z_b)>`` (2, 2) for each term, or None where this rule does not apply.

    Parameters
    ----------
    act : Activation or an object with the named functions, ``kinks``, ``period``
    K : ndarray (2, 2)
        Validated, exactly symmetric kernel (:func:`pdlt.gaussian._pairs._validate_kernel`).
    diag : ndarray (2,)
    terms : sequence of (str, str)
    rtol : float

    Returns
    -------
    dict mapping each term to an (2, 2) ndarray, or None
    """
    if act.kinks or act.period is not None or rtol < _RTOL_MIN:
        return None
    K00, K01, K11 = float(K[0, 0]), float(K[0, 1]), float(K[1, 1])
    if not (0.0 < K00 <= _K_FIXED_MAX and 0.0 < K11 <= _K_FIXED_MAX):
        return None
    # coincident inputs to round-off (|K01| >= sqrt(K00 K11), which the PSD check lets
    # through by up to 64 eps): z_b = +-sqrt(K11 / K00) z_a, as nested quadrature clips
    # K01; with equal variances the pair is then the diagonal itself, to the bit
    sign = 1.0 if K01 >= 0 else -1.0
    coincident = abs(K01) >= math.sqrt(K00 * K11)
    if coincident:
        s0 = s1 = 0.0
    else:
        # conditional spreads of z_1 given z_0, and of z_0 given z_1
        s1 = math.sqrt(max(K11 - K01 * K01 / K00, 0.0))
        s0 = math.sqrt(max(K00 - K01 * K01 / K11, 0.0))
        if max(s0, s1) > S_MAX:
            return None
    n = _nodes(max(s0, s1), rtol)
    if n is None:
        return None
    u, w = _fixed_rule()
    x, wg = _gauss_hermite(n)
    # the nodes of the diagonal exactly as the Mehler path's grid makes them
    sd = np.sqrt(diag)
    z = sd[:, None] * u[None, :]
    vals, inner = {}, {}
    # an Activation evaluates sigma, sigma', sigma'' in one pass (Activation.values)
    three = ("sigma", "d1", "d2")
    joint = (getattr(act, "joint", None) is not None
             and {name for term in terms for name in term} <= set(three))

    def evaluate(name, at, cache):
        if name not in cache:
            if joint:
                cache.update(zip(three, act.values(at)))
            else:
                cache[name] = getattr(act, name)(at)
        return cache[name]

    def value(name):
        return evaluate(name, z, vals)

    def inner_nodes(a):
        # z_b given z_a = sd_a u: mu + s v at the Gauss-Hermite v, (M, n)
        if a not in inner:
            slope, s = K01 / sd[a], (s1, s0)[a]
            inner[a] = (slope * u)[:, None] + s * x[None, :]
        return inner[a]

    at_inner = ({}, {})

    def smoothed(name, a):
        # E_v[g(z_b) | z_a] at the outer nodes z_a = sd_a u: (M,)
        if coincident:
            return getattr(act, name)(sign * z[1 - a]) if sign < 0 else value(name)[1 - a]
        return evaluate(name, inner_nodes(a), at_inner[a]) @ wg

    out = {}
    for fa, fb in terms:
        res = np.empty((2, 2))
        va = value(fa)
        # the diagonal: as pdlt.gaussian._mehler._mehler_offdiag computes it on the rule
        res[[0, 1], [0, 1]] = (va * va) @ w if fa == fb else (va * value(fb)) @ w
        if coincident and sign > 0 and K00 == K11:
            res[0, 1], res[1, 0] = res[0, 0], res[1, 1]
        else:
            res[0, 1] = (va[0] * smoothed(fb, 0)) @ w
            res[1, 0] = res[0, 1] if fa == fb else (va[1] * smoothed(fb, 1)) @ w
        out[(fa, fb)] = res
    return out
