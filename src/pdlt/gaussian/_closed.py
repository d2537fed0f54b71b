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
``tests/gaussian/test_closed.py``), plus the conditioning of the value on
``K12`` itself: a relative change ``eps`` of K12 moves G by ``2 eps K12^2``,
which is what any float64 evaluation from the kernel entries inherits.

``pair_terms`` works on broadcastable arrays with in-place passes over
one output-sized buffer per intermediate; it is the elementwise core of the
blocked kernel (:mod:`pdlt.theory.kernel_blocks`) as well as of
:func:`pdlt.gaussian.closed_form_pair` and the closed forms of
:func:`pdlt.gaussian.pair_expectations`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["closed_family", "pair_terms", "closed_form_pair"]

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


class _Work:
    """Hands out output-shaped scratch arrays: fresh ones, or views of a pool.

    ``pool`` is a list of 1-d float arrays of at least ``prod(shape)``
    elements (one set per thread), so that a blocked loop allocates nothing
    in its steady state.
    """

    def __init__(self, shape, pool=None):
        self.shape, self.pool = shape, pool
        self.n = math.prod(shape)

    def __call__(self, i):
        if self.pool is None:
            return np.empty(self.shape)
        return self.pool[i][:self.n].reshape(self.shape)


#: scratch arrays ``pair_terms`` needs at most (GELU)
WORK_ARRAYS = 6


def _gram(Kaa, Kab, Kbb, w):
    """``(den + Kab, G)`` in ``w(0), w(1)``: ``G = Kaa Kbb - Kab^2 >= 0``.

    ``G = (den - Kab)(den + Kab)`` with ``den = sqrt(Kaa Kbb)``, the
    determinant from the angle: ``den - Kab`` is exact when the two are close
    (Sterbenz), so G carries only the rounding of den (about
    ``2 eps den^2``, the same as a relative change eps of Kab); no
    ``Kaa Kbb - Kab^2`` of two large products. ``sqrt(K K) == K`` exactly in
    IEEE arithmetic, so identical inputs get ``G = 0`` exactly. ``den``
    falls back to ``sqrt(Kaa) sqrt(Kbb)`` where ``Kaa Kbb`` would overflow
    (kernels beyond 1e150). Negative G from round-off (``|rho|`` a few ulps
    above 1) is clamped at 0.
    """
    den = w(0)
    if float(np.max(Kaa)) * float(np.max(Kbb)) < _PROD_MAX:
        np.multiply(Kaa, Kbb, out=den)
        np.sqrt(den, out=den)
    else:
        np.multiply(np.sqrt(Kaa), np.sqrt(Kbb), out=den)
    G = np.subtract(den, Kab, out=w(1))
    np.add(den, Kab, out=den)
    G *= den
    np.maximum(G, 0.0, out=G)
    return den, G


def pair_terms(family, Kaa, Kab, Kbb, want=("sigma", "d1"), scale=(1.0, 1.0), work=None):
    """``<sigma_a sigma_b>`` and/or ``<sigma'_a sigma'_b>`` in closed form.

    Parameters
    ----------
    family : tuple
        From :func:`closed_family`.
    Kaa, Kab, Kbb : array_like, broadcastable
        The 2x2 covariances ``[[Kaa, Kab], [Kab, Kbb]]`` (e.g. a column of
        variances, a block of covariances, a row of variances). PSD is
        assumed; ``|rho| > 1`` by round-off is harmless (clamped where it
        matters).
    want : sequence of {"sigma", "d1"}
    scale : (float, float)
        Factors applied to the two results, folded into the formulas (the
        recursions multiply by C_W anyway).
    work : list of ndarray, optional
        :data:`WORK_ARRAYS` 1-d float arrays with at least as many elements
        as the broadcast shape: scratch space, so that repeated calls
        allocate nothing. The results are then views of these arrays, valid
        until the next call with the same ``work``.

    Returns
    -------
    dict
        ``{"sigma": s0 <sigma sigma>, "d1": s1 <sigma' sigma'>}`` for the
        requested names, arrays of the broadcast shape.
    """
    Kaa = np.asarray(Kaa, dtype=float)
    Kab = np.asarray(Kab, dtype=float)
    Kbb = np.asarray(Kbb, dtype=float)
    shape = np.broadcast_shapes(Kaa.shape, Kab.shape, Kbb.shape)
    if shape == ():  # scalars: the in-place passes need arrays
        res = pair_terms(family, Kaa.reshape(1), Kab.reshape(1), Kbb.reshape(1), want, scale)
        return {k: v.reshape(()) for k, v in res.items()}
    w = _Work(shape, work)
    s0, s1 = (float(v) for v in scale)
    kind = family[0]
    out = {}
    if kind == "linear":
        p2 = family[1] ** 2
        if "sigma" in want:
            out["sigma"] = np.multiply(Kab, p2 * s0, out=w(0))
        if "d1" in want:
            d = w(1)
            d.fill(p2 * s1)
            out["d1"] = d
        return out
    if kind == "arccos":
        # psi = atan2(sqrt(G), Kab) (the angle: cos psi = rho, sin psi = sqrt(G) / den);
        # <sigma' sigma'> = [a1 (pi - psi) + a2 psi] / (2 pi) = a1/2 + (a2 - a1) psi / (2 pi);
        # <sigma sigma> = (ap - am)^2 sqrt(G) / (2 pi) + Kab <sigma' sigma'>
        ap, am = family[1], family[2]
        a1, a2 = ap * ap + am * am, 2.0 * ap * am
        _, sg = _gram(Kaa, Kab, Kbb, w)
        np.sqrt(sg, out=sg)
        psi = np.arctan2(sg, Kab, out=w(0))
        if np.min(Kaa) <= 0 or np.min(Kbb) <= 0:
            # a zero-variance input: z = 0, sigma'(0) taken as the mean slope
            # (rho = 0, psi = pi/2), as the quadrature paths do
            psi[np.broadcast_to((Kaa <= 0) | (Kbb <= 0), shape)] = 0.5 * math.pi
        if "sigma" in want:
            # s0 (ap-am)^2/(2 pi) sqrt(G) + Kab (s0 <sigma' sigma'>)
            sg *= s0 * (ap - am) ** 2 / _TWO_PI
            t = np.multiply(psi, s0 * (a2 - a1) / _TWO_PI, out=w(2))
            t += s0 * 0.5 * a1
            t *= Kab
            sg += t
            out["sigma"] = sg
        if "d1" in want:
            psi *= s1 * (a2 - a1) / _TWO_PI
            psi += s1 * 0.5 * a1
            out["d1"] = psi
        return out
    if kind == "erf":
        # det = (1+2Kaa)(1+2Kbb) - 4Kab^2 = 4 [G + (1 + 2Kaa + 2Kbb) / 4]; q = sqrt(det) / 2
        # <erf erf> = (2/pi) asin(2Kab / sqrt((1+2Kaa)(1+2Kbb))) = (2/pi) atan2(Kab, q)
        # <erf' erf'> = (4/pi) / sqrt(det) = (2/pi) / q
        t, q = _gram(Kaa, Kab, Kbb, w)
        np.add(0.5 * Kaa, 0.5 * Kbb, out=t)         # symmetric in (a, b), then + 1/4
        t += 0.25
        q += t
        np.sqrt(q, out=q)
        if "sigma" in want:
            np.arctan2(Kab, q, out=t)
            t *= s0 * 2.0 / math.pi
            out["sigma"] = t
        if "d1" in want:
            np.divide(s1 * 2.0 / math.pi, q, out=q)
            out["d1"] = q
        return out
    if kind == "sin":
        # e^{-(Kaa+Kbb)/2} sinh(Kab) = sign(Kab) e^{|Kab| - (Kaa+Kbb)/2} (-expm1(-2|Kab|)) / 2
        m = np.abs(Kab, out=w(0))
        e = np.add(Kaa, Kbb, out=w(1))
        e *= -0.5
        e += m
        np.minimum(e, 0.0, out=e)                    # <= 0 by Cauchy-Schwarz
        np.exp(e, out=e)
        t = np.multiply(m, -2.0, out=m)
        np.expm1(t, out=t)                           # in (-1, 0]
        if "sigma" in want:
            sg = np.multiply(e, t, out=w(2))
            sg *= -0.5 * s0
            sg *= np.sign(Kab, out=w(3))
            out["sigma"] = sg
        if "d1" in want:
            t += 2.0
            t *= 0.5 * s1
            t *= e
            out["d1"] = t
        return out
    if kind == "gelu":
        return _gelu_terms(Kaa, Kab, Kbb, w, want, s0, s1)
    raise ValueError(f"unknown closed-form family {family!r}")


def _gelu_terms(Kaa, Kab, Kbb, w, want, s0=1.0, s1=1.0):
    r"""GELU ``z Phi(z)`` (derivation in :func:`_gelu_pair`).

    With ``a = 1 + Kaa``, ``b = 1 + Kbb``, ``G = Kaa Kbb - Kab^2``,
    ``D = ab - Kab^2 = 1 + Kaa + Kbb + G``, ``h = 1/a + 1/b``,
    ``P = arccos(-Kab / sqrt(ab)) / (2 pi) = atan2(sqrt(D), -Kab) / (2 pi)``:
    ``<sigma sigma> = Kab P + (G + Kab^2 h) / (2 pi sqrt D)`` and
    ``<sigma' sigma'> = P + Kab (h + 1/D) / (2 pi sqrt D)``.
    """
    h = np.add(1.0 / (1.0 + Kaa), 1.0 / (1.0 + Kbb), out=w(3))
    D, G = _gram(Kaa, Kab, Kbb, w)
    np.add(Kaa, Kbb, out=D)                      # symmetric in (a, b), then + 1
    D += 1.0
    D += G
    sq = np.sqrt(D, out=w(2))
    # orthant probability; atan2 keeps it accurate at |Kab| -> sqrt(ab)
    P = np.negative(Kab, out=w(4))
    np.arctan2(sq, P, out=P)
    P *= 1.0 / _TWO_PI
    c = sq
    c *= _TWO_PI
    np.reciprocal(c, out=c)                      # 1 / (2 pi sqrt D)
    out = {}
    if "sigma" in want:
        sg = np.multiply(Kab, Kab, out=w(5))
        sg *= h
        sg += G
        sg *= c
        sg += np.multiply(Kab, P, out=G)
        if s0 != 1.0:
            sg *= s0
        out["sigma"] = sg
    if "d1" in want:
        np.reciprocal(D, out=D)
        D += h
        D *= c
        D *= Kab
        D += P
        if s1 != 1.0:
            D *= s1
        out["d1"] = D
    return out


def _gelu_pair(K11, K12, K22, terms=("sigma", "d1")):
    """GELU ``z Phi(z)``: ``<sigma sigma>`` and/or ``<sigma' sigma'>`` in closed form.

    Derived here (Stein's lemma along z1, then Gaussian integrals of
    ``Phi``/``phi`` products): with ``D = (1 + K11)(1 + K22) - K12^2``,
    ``h = 1/(1 + K11) + 1/(1 + K22)`` and the orthant probability
    ``P = 1/4 + asin(K12 / sqrt((1+K11)(1+K22))) / (2 pi)``,
    ``<sigma sigma> = K12 P + [K11 K22 + K12^2 (h - 1)] / (2 pi sqrt D)`` and
    ``<sigma' sigma'> = P + K12 h / (2 pi sqrt D) + K12 / (2 pi D^(3/2))``
    (both manifestly symmetric). Equal to nested quadrature to 1e-15.
    Evaluated in the stable form of :func:`_gelu_terms`
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



def closed_forms_nn(act, terms, K, diag, rho, den):
    """Closed forms for the requested terms that have one, in one shared pass.

    Same stable formulas as :func:`closed_form_pair`, for
    the whole (N, N) kernel at once (``rho``, ``den`` are recomputed there so
    that identical inputs get ``rho = 1`` exactly; see the module docstring).
    """
    want = [t for t in terms if t in (("sigma", "sigma"), ("d1", "d1"))]
    family = closed_family(act)
    if not want or family is None:
        return {}
    res = pair_terms(family, diag[:, None], K, diag[None, :], [t[0] for t in want])
    return {t: res[t[0]] for t in want}
