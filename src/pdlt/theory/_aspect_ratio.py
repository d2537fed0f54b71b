"""The optimal aspect ratio from a vertex slope (numbers only; a leaf module).

:mod:`pdlt.theory.information` derives ``k2* = 4 / (20 + 3 n_L)``;
:mod:`pdlt.theory.residual` turns a vertex slope ``nu`` into ``r* = k2* / nu``.
Both import these two functions from here, so neither imports the other's
module for them.
"""

from __future__ import annotations

import math

__all__ = ["optimal_vertex", "optimal_aspect_ratio_from_slope", "neuron_count"]


def neuron_count(m, name):
    """``m`` as an int >= 1; a ValueError naming ``name`` otherwise."""
    if int(m) != m or m < 1:
        raise ValueError(f"{name} must be a positive integer number of neurons; got {m!r}")
    return int(m)


def optimal_vertex(n_out=1):
    """``k2* = 4 / (20 + 3 n_L)``: the output non-Gaussianity ``V/(n K^2)`` that maximizes I."""
    n_out = neuron_count(n_out, "n_out")
    return 4.0 / (20.0 + 3.0 * n_out)


def optimal_aspect_ratio_from_slope(nu, n_out=1):
    """``r* = 4 / ((20 + 3 n_L) nu)``; ``inf`` when ``nu <= 0`` (no vertex growth)."""
    nu = float(nu)
    if not math.isfinite(nu):
        raise ValueError(f"the vertex slope nu must be finite; got {nu}")
    if nu <= 0:
        return math.inf
    return optimal_vertex(n_out) / nu
