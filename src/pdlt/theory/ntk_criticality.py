r"""Criticality for the NTK (book ch. 9): learning rates and asymptotic slopes.

:func:`critical_learning_rates` gives the per-layer ``lambda_b``, ``lambda_W``
that keep Theta finite at depth; :func:`ntk_slopes` the asymptotic
depth-to-width slopes of the order-1/n NTK statistics at criticality, from
the one-input fold of :func:`pdlt.statistics`.
"""

from __future__ import annotations

import math

import numpy as np

from ..network import MLP
from .statistics import statistics

__all__ = ["critical_learning_rates", "ntk_slopes", "NTK_STATISTICS", "SLOPE_NORMALIZATIONS",
           "SLOPE_DEPTH_POWERS"]

#: the order-1/n NTK statistics (NTK fluctuations, dNTK, ddNTKs)
NTK_STATISTICS = ("A", "B", "D", "F", "P", "Q", "R", "S", "T", "U")

#: normalization of each statistic in :func:`ntk_slopes` (times n), per class:
#: the powers (a, b) of Theta and K it is divided by. In the K*=0 class
#: (K ~ 1/l) R, S, T grow like Theta^3 l^2 and U like K Theta^3 l, so their
#: natural scales carry a power of K (found from the recursions to depth 4096).
SLOPE_NORMALIZATIONS = {
    "scale-invariant": {"A": (2, 0), "B": (2, 0), "D": (1, 1), "F": (1, 1), "P": (2, 0),
                        "Q": (2, 0), "R": (3, 0), "S": (3, 0), "T": (3, 0), "U": (3, 0)},
    "K*=0": {"A": (2, 0), "B": (2, 0), "D": (1, 1), "F": (1, 1), "P": (2, 0),
             "Q": (2, 0), "R": (3, -1), "S": (3, -1), "T": (3, -1), "U": (3, 1)},
    "half-stable": {"A": (2, 0), "B": (2, 0), "D": (1, 1), "F": (1, 1), "P": (2, 0),
                    "Q": (2, 0), "R": (3, 0), "S": (3, 0), "T": (3, 0), "U": (3, 0)},
}

#: power k of l in ``X / (n Theta^a K^b) ~ nu_X l^k / n`` at criticality, per class
#: (:func:`ntk_slopes`). In the half-stable class at K^(1) = K* the kernel stays
#: at K*, chi_parallel = chi_perp = 1, so V ~ l while d chi_perp / dK != 0: the
#: kernel fluctuations feed the NTK's growth rate and D, Q, R, S, A, T grow
#: faster than l Theta^a (the recursions there are exact polynomials in l;
#: the degrees are checked in tests/theory/test_ntk_recursions.py).
SLOPE_DEPTH_POWERS = {
    "scale-invariant": dict.fromkeys(NTK_STATISTICS, 1),
    "K*=0": dict.fromkeys(NTK_STATISTICS, 1),
    "half-stable": {"A": 3, "B": 1, "D": 2, "F": 1, "P": 1, "Q": 2, "R": 2, "S": 2, "T": 3,
                    "U": 1},
}


def _critical(activation):
    from ..activations import activation as _activation
    from .criticality import require_critical
    act = _activation(activation)
    return act, require_critical(act)


def critical_learning_rates(activation, depth, *, lambda_b=1.0, lambda_W=1.0):
    r"""Per-layer learning rates that keep Theta finite at depth (book ch. 9).

    Equal contribution of every layer to ``Theta^(L)`` (book §9.4). With
    ``chi_perp^(l) ~ 1 - p_perp / l`` at criticality,

    * scale-invariant class (``p_perp = 0``):
      ``lambda_b^(l) = lambda_b / L``, ``lambda_W^(l) = lambda_W / L``;
    * K* = 0 class (tanh, erf, sin, ...; ``<sigma^2>_K ~ K ~ 1/l``):
      ``lambda_b^(l) = lambda_b L^(p_perp - 1) / l^p_perp``,
      ``lambda_W^(l) = lambda_W (L / l)^(p_perp - 1)``;
    * half-stable class (gelu, swish; K* > 0 approached from one side), for
      ``K^(1) = K*``: the kernel stays at K*, ``chi_perp = 1`` and
      ``Theta^(l+1) = lambda_b + lambda_W <sigma^2>_{K*} + Theta^(l)``, so as in
      the scale-invariant class ``lambda_b^(l) = lambda_b / L``,
      ``lambda_W^(l) = lambda_W / L`` (``p_perp = 0`` is returned) and
      ``Theta^(l) = (lambda_b + lambda_W (K* - C_b) / C_W) l / L`` exactly.
      From ``K^(1) != K*`` in the basin the kernel reaches K* only as
      ``1/l`` with ``chi_perp ~ 1 + |p|/l`` (``pdlt.criticality(...).asymptotics``,
      ``p_perp = -65`` for gelu) and only for ``l >> 10^4``; those rates are
      not derived here.

    Parameters
    ----------
    activation : str, Activation or callable
    depth : int
        L.
    lambda_b, lambda_W : float
        The depth-independent rescaled rates (the book's lambda-tilde).

    Returns
    -------
    dict
        ``{"lambda_b": ndarray (L,), "lambda_W": ndarray (L,), "C_b": float,
        "C_W": float, "universality_class": str, "p_perp": float}``; pass
        ``lambda_b``, ``lambda_W``, ``C_b``, ``C_W`` to :class:`pdlt.MLP`.

    Raises
    ------
    ValueError
        For a bad ``depth``, ``lambda_b`` or ``lambda_W``, or an activation
        without a critical point.

    Examples
    --------
    >>> from pdlt.theory.ntk_criticality import critical_learning_rates
    >>> critical_learning_rates("relu", 4)["lambda_W"]
    array([0.25, 0.25, 0.25, 0.25])
    """
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be a positive integer; got {depth!r}")
    for name, v in (("lambda_b", lambda_b), ("lambda_W", lambda_W)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
    act, crit = _critical(activation)
    L = int(depth)
    l = np.arange(1, L + 1, dtype=float)
    cls = crit.universality_class
    if cls not in SLOPE_NORMALIZATIONS:
        raise ValueError(
            f"critical learning rates are derived here for the scale-invariant, K*=0 and "
            f"half-stable classes only; {act.name!r} is in the {cls!r} class")
    if cls == "K*=0":
        p = crit.asymptotics.p_perp if crit.asymptotics and crit.asymptotics.p_perp else 0.0
    else:   # scale-invariant; half-stable at K^(1) = K* (chi_perp = 1 at every layer)
        p = 0.0
    lb = lambda_b * L ** (p - 1.0) / l ** p
    if cls == "K*=0":
        lw = lambda_W * (L / l) ** (p - 1.0)
    else:
        lw = lambda_W * L ** (p - 1.0) / l ** p
    return {"lambda_b": lb, "lambda_W": lw, "C_b": crit.C_b, "C_W": crit.C_W,
            "universality_class": cls, "p_perp": float(p)}


def ntk_slopes(activation, *, depth=2048, lambda_b=1.0, lambda_W=1.0, K1=1.0):
    r"""Asymptotic slopes ``nu_X`` of ``X^(l) / (n Theta^a K^b) ~ nu_X l^k / n`` at criticality.

    The normalizations ``(a, b)`` are :data:`SLOPE_NORMALIZATIONS`:
    A, B over ``Theta^2``; D, F over ``K Theta``; P, Q over ``Theta^2``;
    R, S, T, U over ``Theta^3`` (K*=0 class: R, S, T over ``Theta^3 / K``
    and U over ``K Theta^3``); the powers ``k`` are
    :data:`SLOPE_DEPTH_POWERS` (1 except in the half-stable class). The
    network is at its critical ``C_b``, ``C_W`` with
    :func:`critical_learning_rates` (equal widths, one input with
    first-layer kernel ``K1``, or ``K*`` where it is positive).

    * Scale-invariant and K*=0 classes: the slope is the limit of
      ``g(l) = X / (Theta^a K^b l)``, estimated by Richardson extrapolation
      ``2 g(L) - g(L/2)`` from the single-input recursions at ``L = depth``
      (removes the 1/l term; the K*=0 class also has ``log(l)/l``
      corrections, so its slopes carry a relative error of a few 1e-3 at the
      default depth, see ``tests/theory/test_ntk.py``). Scale-invariant class
      (``lambda_b = 0``): ReLU gives ``nu_B = 2/3``, ``nu_F = 1``, ...
      (closed forms in the tests).
    * Half-stable class (gelu, swish) at ``K^(1) = K*``: K stays at K*,
      ``chi_parallel = chi_perp = 1`` and ``Theta = theta l`` exactly, so every
      recursion has layer-independent coefficients and ``X^(l)`` is a
      polynomial in l of degree ``d = a + k``. Its leading coefficient is
      read off exactly by a d-th finite difference with step
      ``h = L // (d + 1)``: ``nu_X = Delta_h^d X / (d! h^d theta^a K*^b)``
      (independent of ``depth`` up to rounding). Because ``V ~ l`` and
      ``d chi_perp / dK != 0`` at K*, D, Q, R, S grow like ``l^2`` and A, T
      like ``l^3`` after normalization (their ``nu`` are small, ~1e-3 to
      1e-5, so at moderate depth the subleading ``l`` terms still matter).
      ``K1`` is ignored (K* is used).

    The result depends on the ratio ``lambda_b : lambda_W`` but not on the
    overall scale of the learning rates.

    Parameters
    ----------
    activation : str, Activation or callable
    depth : int, default 2048
    lambda_b, lambda_W : float
        Rescaled learning rates of :func:`critical_learning_rates`.
    K1 : float
        First-layer kernel (scale-invariant and K*=0 classes).

    Returns
    -------
    dict
        name -> slope ``nu_X`` (float; the coefficient of ``l^k / n`` with ``k``
        from :data:`SLOPE_DEPTH_POWERS`), plus ``"universality_class"``.

    Raises
    ------
    ValueError
        For ``depth < 8`` or an activation without a critical point.
    """
    if int(depth) != depth or depth < 8:
        raise ValueError(f"depth must be an integer >= 8; got {depth!r}")
    act, crit = _critical(activation)
    lr = critical_learning_rates(act, depth, lambda_b=lambda_b, lambda_W=lambda_W)
    if crit.K_star is not None and crit.K_star > 0:
        K1 = crit.K_star
    mlp = MLP(n0=1, width=1, depth=int(depth), activation=act, C_b=crit.C_b, C_W=crit.C_W,
              lambda_b=lr["lambda_b"], lambda_W=lr["lambda_W"])
    stats = statistics(mlp, K1=K1, get=NTK_STATISTICS)
    K, Th = stats.K, stats.Theta
    L = int(depth)
    cls = crit.universality_class
    out = {}
    for name, (a, b) in SLOPE_NORMALIZATIONS[cls].items():
        if cls == "half-stable":
            d = a + SLOPE_DEPTH_POWERS[cls][name]
            h = L // (d + 1)
            j = np.arange(d + 1)
            coef = np.array([(-1) ** (d - i) * math.comb(d, i) for i in j], dtype=float)
            diff = float(coef @ stats[name][L - 1 - h * (d - j)])
            theta = Th[L - 1] / L
            out[name] = float(diff / (math.factorial(d) * h ** d * theta ** a * K[L - 1] ** b))
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            g = stats[name] / (Th ** a * K ** b * np.arange(1, L + 1))
        out[name] = float(2 * g[L - 1] - g[L // 2 - 1])
    out["universality_class"] = cls
    return out
