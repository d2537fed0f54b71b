r"""Two-input closed forms, evaluated in forms that are stable at any scale.

The mathematical forms (``shared/NOTATION.md``, "Closed-form two-input
expectations") cancel or overflow when evaluated literally at large kernels:
the erf and GELU determinants ``(1+2K11)(1+2K22) - 4K12^2`` lose every digit
on the diagonal once ``K ~ 1e8`` (``eps K^2`` against ``4K``), and
``exp(-(K11+K22)/2) sinh(K12)`` overflows once ``K12 > 710``. Here every form
is rewritten so that no intermediate overflows and no subtraction of large
terms remains outside the part the input itself fixes:

* the Gram determinant ``G = K11 K22 - K12^2`` is computed from the angle,
  ``G = K11 K22 (1 - rho)(1 + rho)`` with ``rho = K12 / sqrt(K11 K22)``; on
  the diagonal (``K11 = K12 = K22``, also for duplicated inputs)
  ``sqrt(K K) = K`` exactly in IEEE arithmetic, so ``rho = 1`` and ``G = 0``
  exactly, and the pair value equals the single-input one;
* erf: ``det = 1 + 2K11 + 2K22 + 4G``;
* sin: ``exp(-(K11+K22)/2) sinh(K12) = sign(K12) exp(|K12| - (K11+K22)/2)
  (-expm1(-2|K12|)) / 2`` (the exponent is <= 0 by Cauchy-Schwarz), and
  ``cosh`` likewise with ``2 + expm1``;
* GELU: ``D = 1 + K11 + K22 + G``, the orthant probability as
  ``arccos(-x) / (2 pi)`` (no ``1/4 - 1/4``), and
  ``K11 K22 + K12^2 (h - 1) = G + K12^2 h`` (a sum of non-negative terms);
* scale-invariant (``sigma = a_+ z`` for z > 0, ``a_- z`` for z < 0; the
  arc-cosine kernels of Cho & Saul 2009) in the angle form
  ``psi = arccos(rho)``:
  ``<sigma' sigma'> = [(a_+^2 + a_-^2)(pi - psi) + 2 a_+ a_- psi] / (2 pi)``,
  ``<sigma sigma> = sqrt(K11 K22) [(a_+ - a_-)^2 sin(psi) / (2 pi)
  + rho <sigma' sigma'>]``, with ``sin(psi) = sqrt((1 - rho)(1 + rho))``.
  Every term is homogeneous: the relative accuracy does not depend on the
  scale. (ReLU: ``sqrt(K11 K22) [sin psi + (pi - psi) cos psi] / (2 pi)``.)

Accuracy: a few ulps of each term's Cauchy-Schwarz scale
``sqrt(<f_a^2> <g_b^2>)`` for every kernel scale where the inputs are finite
(tested at input norms 1e-12 .. 1e12 against mpmath in
``tests/test_gaussian_closed.py``), plus the conditioning of the value on
``K12`` itself: a relative change ``eps`` of K12 moves G by ``2 eps K12^2``,
which is what any float64 evaluation from the kernel entries inherits.

:func:`pair_terms` works on broadcastable arrays with in-place passes over
one output-sized buffer per intermediate; it is the elementwise core of the
blocked kernel (:mod:`pdlt.theory.kernel_blocks`) as well as of
:func:`pdlt.gaussian.closed_form_pair` and the closed forms of
:func:`pdlt.gaussian.pair_expectations`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["closed_family", "pair_terms"]

_TWO_PI = 2.0 * math.pi
_PROD_MAX = 1e300  # Kaa Kbb below this does not overflow


def closed_family(act):
    """The closed-form family of an activation, or None.

    Returns
    -------
    tuple or None
        ``("linear", p)`` for ``sigma = p z``; ``("arccos", a_plus, a_minus)``
        for the other scale-invariant activations (ReLU, leaky ReLU, ...);
        ``("erf",)``, ``("sin",)``, ``("gelu",)``; None when there is no
        closed form (the Mehler series / quadrature handle it).
    """
    if act.scale_invariant is not None and act.name != "monomial":
        ap, am = (float(v) for v in act.scale_invariant)
        if ap == am:
            return ("linear", ap)
        return ("arccos", ap, am)
    if act.name == "monomial" and act.scale_invariant is not None:
        return ("linear", 1.0)
    if act.name in ("erf", "sin", "gelu"):
        return (act.name,)
    return None


def _correlation(Kaa, Kab, Kbb, shape):
    """``(den, rho)``: ``den = sqrt(Kaa Kbb)``, ``rho = Kab / den`` (0 where den = 0; |rho| <= 1 up to round-off).

    ``sqrt(K K) == K`` exactly in IEEE arithmetic, so identical inputs get
    ``rho = 1`` exactly. Falls back to ``sqrt(Kaa) sqrt(Kbb)`` where the
    product would overflow (kernels beyond 1e154).
    """
    if float(np.max(Kaa)) * float(np.max(Kbb)) < _PROD_MAX:
        den = np.multiply(Kaa, Kbb, out=np.empty(shape))
        np.sqrt(den, out=den)
    else:
        den = np.multiply(np.sqrt(Kaa), np.sqrt(Kbb), out=np.empty(shape))
    if np.min(Kaa) > 0 and np.min(Kbb) > 0:
        rho = np.divide(Kab, den, out=np.empty(shape))
    else:
        rho = np.zeros(shape)
        np.divide(Kab, den, out=rho, where=np.broadcast_to(den > 0, shape))
    # |rho| <= 1 up to round-off: (1 - rho)(1 + rho) is clamped at 0 where it is used,
    # and the angles come from atan2, which needs no clipping
    return den, rho


def _one_minus_rho2(rho, shape):
    """``(1 - rho)(1 + rho)``: exact 0 at ``rho = +-1``, no ``1 - rho^2`` rounding."""
    t = np.subtract(1.0, rho, out=np.empty(shape))
    u = np.add(1.0, rho)
    t *= u
    np.maximum(t, 0.0, out=t)  # |rho| may exceed 1 by round-off
    return t


def pair_terms(family, Kaa, Kab, Kbb, want=("sigma", "d1")):
    """``<sigma_a sigma_b>`` and/or ``<sigma'_a sigma'_b>`` in closed form.

    Parameters
    ----------
    family : tuple
        From :func:`closed_family`.
    Kaa, Kab, Kbb : array_like, broadcastable
        The 2x2 covariances ``[[Kaa, Kab], [Kab, Kbb]]`` (e.g. a column of
        variances, a block of covariances, a row of variances). PSD is
        assumed; ``|rho| > 1`` from round-off is harmless (clamped where it matters).
    want : sequence of {"sigma", "d1"}

    Returns
    -------
    dict
        ``{"sigma": <sigma sigma>, "d1": <sigma' sigma'>}`` for the requested
        names, arrays of the broadcast shape.
    """
    Kaa = np.asarray(Kaa, dtype=float)
    Kab = np.asarray(Kab, dtype=float)
    Kbb = np.asarray(Kbb, dtype=float)
    shape = np.broadcast_shapes(Kaa.shape, Kab.shape, Kbb.shape)
    if shape == ():  # scalars: the in-place passes need arrays
        res = pair_terms(family, Kaa.reshape(1), Kab.reshape(1), Kbb.reshape(1), want)
        return {k: v.reshape(()) for k, v in res.items()}
    kind = family[0]
    out = {}
    if kind == "linear":
        p2 = family[1] ** 2
        if "sigma" in want:
            out["sigma"] = np.multiply(p2, np.broadcast_to(Kab, shape), out=np.empty(shape))
        if "d1" in want:
            out["d1"] = np.full(shape, p2)
        return out
    if kind == "arccos":
        ap, am = family[1], family[2]
        a1, a2 = ap * ap + am * am, 2.0 * ap * am
        den, rho = _correlation(Kaa, Kab, Kbb, shape)
        sn = _one_minus_rho2(rho, shape)
        np.sqrt(sn, out=sn)                          # sin(psi), psi = angle of the pair
        dd = np.arctan2(sn, rho)                     # psi, accurate at rho -> +-1
        # [a1 (pi - psi) + a2 psi] / (2 pi) = a1/2 + (a2 - a1) psi / (2 pi)
        dd *= (a2 - a1) / _TWO_PI
        dd += 0.5 * a1
        if "sigma" in want:
            sn *= (ap - am) ** 2 / _TWO_PI
            rho *= dd
            sn += rho
            sn *= den
            out["sigma"] = sn
        if "d1" in want:
            out["d1"] = dd
        return out
    if kind == "erf":
        # det = (1+2Kaa)(1+2Kbb) - 4Kab^2 = 1 + 2Kaa + 2Kbb + 4G
        # <erf erf> = (2/pi) asin(2Kab / sqrt((1+2Kaa)(1+2Kbb))) = (2/pi) atan2(2Kab, sqrt(det))
        # <erf' erf'> = (4/pi) / sqrt(det)
        _, rho = _correlation(Kaa, Kab, Kbb, shape)
        g = _one_minus_rho2(rho, shape)
        g *= 4.0 * np.multiply(Kaa, Kbb)
        g += np.add(2.0 * Kaa, 2.0 * Kbb) + 1.0
        np.sqrt(g, out=g)
        if "sigma" in want:
            x = np.multiply(Kab, 2.0, out=rho)
            np.arctan2(x, g, out=x)
            x *= 2.0 / math.pi
            out["sigma"] = x
        if "d1" in want:
            np.divide(4.0 / math.pi, g, out=g)
            out["d1"] = g
        return out
    if kind == "sin":
        # e^{-(Kaa+Kbb)/2} sinh(Kab) = sign(Kab) e^{|Kab| - (Kaa+Kbb)/2} (-expm1(-2|Kab|)) / 2
        m = np.abs(np.broadcast_to(Kab, shape))
        e = np.subtract(m, 0.5 * np.add(Kaa, Kbb), out=np.empty(shape))
        np.minimum(e, 0.0, out=e)                    # <= 0 by Cauchy-Schwarz
        np.exp(e, out=e)
        t = np.multiply(m, -2.0, out=m)
        np.expm1(t, out=t)                           # in (-1, 0]
        if "sigma" in want:
            s = np.multiply(e, t, out=np.empty(shape))
            s *= -0.5
            s *= np.sign(Kab)
            out["sigma"] = s
        if "d1" in want:
            t += 2.0
            t *= 0.5
            t *= e
            out["d1"] = t
        return out
    if kind == "gelu":
        return _gelu_terms(Kaa, Kab, Kbb, shape, want)
    raise ValueError(f"unknown closed-form family {family!r}")


def _gelu_terms(Kaa, Kab, Kbb, shape, want):
    r"""GELU ``z Phi(z)`` (derivation in :func:`pdlt.gaussian._core._gelu_pair`).

    With ``a = 1 + Kaa``, ``b = 1 + Kbb``, ``G = Kaa Kbb - Kab^2``,
    ``D = ab - Kab^2 = 1 + Kaa + Kbb + G``, ``h = 1/a + 1/b``,
    ``P = arccos(-Kab / sqrt(ab)) / (2 pi)``:
    ``<sigma sigma> = Kab P + (G + Kab^2 h) / (2 pi sqrt D)`` and
    ``<sigma' sigma'> = P + Kab (h + 1/D) / (2 pi sqrt D)``.
    """
    h = np.add(1.0 / (1.0 + Kaa), 1.0 / (1.0 + Kbb))   # broadcast of the two diagonals
    _, rho = _correlation(Kaa, Kab, Kbb, shape)
    G = _one_minus_rho2(rho, shape)
    G *= np.multiply(Kaa, Kbb)
    D = np.add(G, np.add(Kaa, Kbb) + 1.0, out=rho)    # rho is no longer needed
    sq = np.sqrt(D)
    c = np.multiply(sq, _TWO_PI)
    np.reciprocal(c, out=c)                      # 1 / (2 pi sqrt D)
    # orthant probability arccos(-Kab / sqrt(ab)) / (2 pi) = atan2(sqrt(D), -Kab) / (2 pi)
    # (sin of the angle is sqrt(D / (ab)); atan2 keeps it accurate at |Kab| -> sqrt(ab))
    P = np.negative(np.broadcast_to(Kab, shape))
    np.arctan2(sq, P, out=P)
    P *= 1.0 / _TWO_PI
    out = {}
    if "sigma" in want:
        s = np.multiply(Kab, Kab, out=np.empty(shape))
        s *= h
        s += G
        s *= c
        s += Kab * P
        out["sigma"] = s
    if "d1" in want:
        np.reciprocal(D, out=D)
        D += h
        D *= c
        D *= Kab
        D += P
        out["d1"] = D
    return out
