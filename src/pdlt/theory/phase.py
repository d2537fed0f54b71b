"""Off criticality: fixed points, depth scales and the (C_b, C_W) phase diagram.

For one input the kernel flows by the map ``K -> f(K) = C_b + C_W <sigma^2>_K``
(:func:`pdlt.theory.criticality.kernel_map`). Away from the critical point the
flow ends at a fixed point ``K* = f(K*)`` (or grows without bound), and the
susceptibilities there set the depth scales over which the kernel forgets its
input (``xi_parallel``) and two nearby inputs merge or separate
(``xi_perp``): book ch. 5. Derivation: ``docs/derivations/criticality.rst``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._kernel_map import (K_RANGE, FixedPoint, check_kernel, check_variances, expect,
                          find_fixed_points, moments, resolve_activation,
                          scale_invariant_slopes, scan_grid)
from .criticality import Criticality, criticality

__all__ = ["FixedPoint", "DepthScales", "PhaseDiagram", "fixed_points", "depth_scales",
           "phase_diagram"]


def fixed_points(activation, C_b, C_W, *, K_range=K_RANGE):
    """All fixed points of ``K -> C_b + C_W <sigma^2>_K`` in ``[0, K_range[1]]``.

    Returns
    -------
    tuple of FixedPoint, sorted by K (``K = 0`` included when it is one).
    """
    act = resolve_activation(activation)
    C_b, C_W = check_variances(C_W, C_b)
    return find_fixed_points(act, C_b, C_W, K_range)


@dataclass(frozen=True)
class DepthScales:
    """The fixed point the flow reaches and the depth scales there (book ch. 5).

    ``xi_parallel = -1/log chi_par(K*)``: ``K^(l) - K*`` decays like
    ``exp(-l/xi_parallel)``; ``xi_perp = 1/|log chi_perp(K*)|``: the
    perpendicular component ``K_[2]`` of two nearby inputs shrinks
    (ordered, chi_perp < 1) or grows (chaotic, chi_perp > 1) like
    ``exp(-+l/xi_perp)``. Infinite on the critical line.
    ``phase`` is ``"ordered"``, ``"chaotic"``, ``"critical"`` or
    ``"exploding"`` (no finite fixed point is reached; the kernel grows
    without bound).
    """

    C_b: float
    C_W: float
    K_star: float
    chi_parallel: float
    chi_perp: float
    xi_parallel: float
    xi_perp: float
    phase: str

    def to_dict(self) -> dict:
        return dict(C_b=self.C_b, C_W=self.C_W, K_star=self.K_star,
                    chi_parallel=self.chi_parallel, chi_perp=self.chi_perp,
                    xi_parallel=self.xi_parallel, xi_perp=self.xi_perp, phase=self.phase)


def _xi(chi):
    with np.errstate(divide="ignore"):
        return float(-1.0 / math.log(chi)) if 0 < chi < 1 else math.inf if chi == 1 else math.nan


def _classify(chi_perp, tol=1e-9):
    if abs(chi_perp - 1) <= tol:
        return "critical"
    return "ordered" if chi_perp < 1 else "chaotic"


def _reached(points, K1, gap1):
    """The fixed point the flow from K1 reaches (monotone map assumed)."""
    if gap1 == 0:
        cand = [p for p in points if abs(p.K - K1) <= 1e-9 * max(K1, 1)]
        return cand[0] if cand else None
    if gap1 > 0:
        above = [p for p in points if p.K > K1]
        return above[0] if above else None
    below = [p for p in points if p.K < K1]
    return below[-1] if below else None


def depth_scales(activation, C_b, C_W, *, K1=1.0, K_range=K_RANGE) -> DepthScales:
    """Fixed point reached from ``K^(1) = K1`` and its depth scales xi_par, xi_perp.

    Parameters
    ----------
    activation : str, Activation or callable
    C_b, C_W : float
    K1 : float
        First-layer kernel; the flow is followed from here (for a monotone
        kernel map it ends at the nearest fixed point in the direction of
        ``f(K1) - K1``).

    Returns
    -------
    DepthScales
    """
    act = resolve_activation(activation)
    C_b, C_W = check_variances(C_W, C_b)
    K1 = float(check_kernel(K1, "K1"))
    return _depth_scales(act, C_b, C_W, K1, K_range)


def _depth_scales(act, C_b, C_W, K1, K_range, ss_grid=None):
    slopes = scale_invariant_slopes(act)
    if slopes is not None:
        m = 0.5 * (slopes[0] ** 2 + slopes[1] ** 2)
        g = C_W * m
        if g < 1:
            K = C_b / (1 - g)
            return DepthScales(C_b, C_W, K, g, g, _xi(g), _xi(g), "ordered")
        if g == 1 and C_b == 0:
            return DepthScales(C_b, C_W, K1, 1.0, 1.0, math.inf, math.inf, "critical")
        return DepthScales(C_b, C_W, math.inf, g, g, math.nan, math.nan, "exploding")
    pts = find_fixed_points(act, C_b, C_W, K_range, ss_grid)
    gap1 = C_b + C_W * float(expect(act, lambda z: act.sigma(z) ** 2, K1)) - K1
    p = _reached(pts, K1, gap1)
    if p is None:
        return DepthScales(C_b, C_W, math.inf, math.nan, math.nan, math.nan, math.nan,
                           "exploding")
    return DepthScales(C_b, C_W, p.K, p.chi_parallel, p.chi_perp, _xi(p.chi_parallel),
                       _xi(p.chi_perp) if p.chi_perp <= 1 else float(1 / math.log(p.chi_perp)),
                       _classify(p.chi_perp))


@dataclass(frozen=True)
class PhaseDiagram:
    """The (C_b, C_W) phase diagram as data.

    Attributes
    ----------
    activation : str
    C_b : ndarray (nb,)
    C_W : ndarray (nw,)
    K_star, chi_parallel, chi_perp, xi_parallel, xi_perp : ndarray (nb, nw)
        At the fixed point reached from ``K1`` (inf/NaN where none).
    phase : ndarray (nb, nw) of str
        ``"ordered"``, ``"chaotic"``, ``"critical"``, ``"exploding"``.
    critical_line : dict
        ``{"C_b": (m,), "C_W": (m,), "K_star": (m,)}``: the line
        ``chi_perp(K*) = 1`` through stable fixed points, parametrized by K*
        (``C_W = 1/<sigma'^2>_K``, ``C_b = K - <sigma^2>_K/<sigma'^2>_K``).
    critical_point : Criticality
    K1 : float
    """

    activation: str
    C_b: np.ndarray
    C_W: np.ndarray
    K_star: np.ndarray
    chi_parallel: np.ndarray
    chi_perp: np.ndarray
    xi_parallel: np.ndarray
    xi_perp: np.ndarray
    phase: np.ndarray
    critical_line: dict
    critical_point: Criticality
    K1: float

    def to_dict(self) -> dict:
        return dict(activation=self.activation, C_b=self.C_b, C_W=self.C_W, K_star=self.K_star,
                    chi_parallel=self.chi_parallel, chi_perp=self.chi_perp,
                    xi_parallel=self.xi_parallel, xi_perp=self.xi_perp, phase=self.phase,
                    critical_line=self.critical_line,
                    critical_point=self.critical_point.to_dict(), K1=self.K1)


def phase_diagram(activation, C_b=None, C_W=None, *, K1=1.0, K_range=(1e-8, 1e4)) -> PhaseDiagram:
    """Phase of every (C_b, C_W) on a grid, and the critical line.

    Parameters
    ----------
    activation : str, Activation or callable
    C_b : array_like (nb,), default ``linspace(0, 1, 21)``
    C_W : array_like (nw,), default ``linspace(0.5, 3, 26)``
    K1 : float
        First-layer kernel the flow starts from.

    Returns
    -------
    PhaseDiagram
    """
    act = resolve_activation(activation)
    C_b = np.linspace(0.0, 1.0, 21) if C_b is None else np.atleast_1d(np.asarray(C_b, float))
    C_W = np.linspace(0.5, 3.0, 26) if C_W is None else np.atleast_1d(np.asarray(C_W, float))
    if np.any(~np.isfinite(C_b)) or np.any(C_b < 0):
        raise ValueError("C_b values must be finite and >= 0")
    if np.any(~np.isfinite(C_W)) or np.any(C_W <= 0):
        raise ValueError("C_W values must be finite and > 0")
    K1 = float(check_kernel(K1, "K1"))
    crit = criticality(act)
    grid = scan_grid(K_range)
    ss_grid = (grid, moments(act, grid)[0])
    shape = (len(C_b), len(C_W))
    arrays = {k: np.full(shape, np.nan) for k in
              ("K_star", "chi_parallel", "chi_perp", "xi_parallel", "xi_perp")}
    phase = np.empty(shape, dtype=object)
    for i, cb in enumerate(C_b):
        for j, cw in enumerate(C_W):
            d = _depth_scales(act, float(cb), float(cw), K1, K_range, ss_grid)
            for k in arrays:
                arrays[k][i, j] = getattr(d, k)
            phase[i, j] = d.phase
    # critical line, parametrized by K*
    if scale_invariant_slopes(act) is not None:
        line = dict(C_b=np.array([0.0]), C_W=np.array([crit.C_W]), K_star=np.array([np.nan]))
    else:
        ss, zss, pp = moments(act, grid)
        cw_line = 1.0 / pp
        cb_line = grid - ss / pp
        chi_par = cw_line * (zss - ss) / (2 * grid)
        keep = (cb_line >= 0) & (chi_par <= 1 + 1e-12) & (cb_line <= C_b.max()) \
            & (cw_line <= C_W.max()) & (cw_line >= C_W.min())
        line = dict(C_b=cb_line[keep], C_W=cw_line[keep], K_star=grid[keep])
    return PhaseDiagram(crit.activation, C_b, C_W, phase=phase, critical_line=line,
                        critical_point=crit, K1=K1, **arrays)
