"""One comparison of theory with a measurement, and what it could detect.

The single rule every report row, the torch bridge's verification and every
ensemble test use (:class:`Comparison`, :func:`compare`, :data:`Z_PASS`: written
once in ``pdlt._pass_rule``, below both :mod:`pdlt.experiment` and the report,
and documented here). This module is a leaf of :mod:`pdlt.report` (it imports no
other report module) that the report's modules and ``tests/conftest.py`` share:
the pass rule, :class:`Row`, :class:`Study`, the width extrapolation and the
critical MLP of the cases.

* a comparison *passes* when ``|measured - theory| <= Z_PASS stderr + allowance``;
* its *resolution* is the smallest relative error of the theory it would
  detect, ``(Z_PASS stderr + allowance) / |theory|`` (for a theory that is
  exactly zero: the absolute bound ``Z_PASS stderr + allowance``);
* a *negative control* feeds ``factor x theory`` through the same comparison
  (same measurement, stderr and allowance): :meth:`Comparison.rejects` says
  whether it fails, :meth:`Comparison.control_z` by how much.

The allowance must come from the measurement or from an order the library
implements, never from the theory value being tested (an allowance that grows
with the theory lets a theory twice too large pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .._pass_rule import RESOLVED, ZERO_RATIO, Z_PASS, Comparison, compare

__all__ = ["Z_PASS", "RESOLVED", "Comparison", "compare", "width_extrapolation", "Row",
           "make_row", "ZERO_RATIO", "summarize", "CONTROL_FACTORS", "Study", "critical_mlp"]


def width_extrapolation(m_n, se_n, m_2n, se_2n):
    """Two-width extrapolation to infinite width of ``m(n) = m + c/n + O(1/n^2)``.

    Parameters
    ----------
    m_n, se_n : float or ndarray
        Mean and standard error measured at width n.
    m_2n, se_2n : float or ndarray
        The same at width 2n (an independent ensemble); broadcast with the first.

    Returns
    -------
    ext, se, allowance : ndarray
        ``2 m(2n) - m(n)`` (``c/n`` removed), its standard error
        ``sqrt(4 se(2n)^2 + se(n)^2)``, and ``|m(2n) - m(n)| / 2``, the allowance
        for the remaining ``O(1/n^2)`` term (the expansion at least halves from n
        to 2n): measured, not from the theory.
    """
    m_n, se_n, m_2n, se_2n = (np.asarray(v, float) for v in (m_n, se_n, m_2n, se_2n))
    return 2 * m_2n - m_n, np.sqrt(4 * se_2n ** 2 + se_n ** 2), 0.5 * np.abs(m_2n - m_n)


@dataclass(frozen=True)
class Row:
    """One row of the report: a :class:`Comparison` of scalars with its labels.

    ``key`` is the statistic family of the opening summary (``"V"``, ``"G1"``,
    ``"trained mean"``, ...); ``statistic`` the row's own label. ``resolution``
    is relative when ``relative`` (theory nonzero), else the absolute bound.
    ``control_z`` holds the z of the negative controls (theory x0, x0.5, x2)
    in units of ``stderr + allowance / Z_PASS`` (a control is rejected above
    ``Z_PASS``).
    """

    statistic: str
    activation: str
    width: int
    layer: int
    theory: float
    measured: float
    stderr: float
    allowance: float
    sigmas: float
    passed: bool
    resolution: float = float("nan")
    relative: bool = True
    key: str = ""
    control_z: tuple = ()

    @property
    def status(self) -> str:
        """``"pass"``, ``"FAIL"`` or ``"unresolved"`` (see :attr:`Comparison.status`)."""
        if not self.passed:
            return "FAIL"
        if self.relative and not self.resolution <= RESOLVED:
            return "unresolved"
        return "pass"

    @property
    def family(self) -> str:
        return self.key or self.statistic.split(" ")[0]

    def to_dict(self):
        d = {k: (bool(v) if isinstance(v, (bool, np.bool_)) else
                 float(v) if isinstance(v, (float, np.floating)) else v)
             for k, v in self.__dict__.items()}
        d["control_z"] = {str(f): float(z) for f, z in self.control_z}
        d["status"] = self.status
        d["key"] = self.family
        return d


CONTROL_FACTORS = (0.0, 0.5, 2.0)


def make_row(statistic, activation, width, layer, theory, measured, stderr, allowance=0.0,
             key="") -> Row:
    """A :class:`Row` from scalars through :func:`compare` (z, pass, resolution, controls)."""
    c = compare(theory, measured, stderr, allowance)
    return Row(str(statistic), str(activation), int(width), int(layer), float(c.theory),
               float(c.measured), float(c.stderr), float(c.allowance), float(c.z), c.passed,
               c.resolution, c.relative, key,
               tuple((f, c.control_z(f)) for f in CONTROL_FACTORS))


def summarize(rows) -> list:
    """The opening table: per (family, activation) the best-resolved row and the counts.

    Returns a list of dicts ``key, activation, rows, passed, unresolved, failed,
    best_resolution, relative, best`` (the row with the best resolution among
    those that pass, else among all), sorted by key then activation.
    """
    groups: dict = {}
    for r in rows:
        groups.setdefault((r.family, r.activation), []).append(r)
    out = []
    for (key, act), rs in groups.items():
        pool = [r for r in rs if r.passed] or rs
        rel = [r for r in pool if r.relative]
        best = min(rel or pool, key=lambda r: r.resolution)
        out.append(dict(key=key, activation=act, rows=len(rs),
                        passed=sum(r.status == "pass" for r in rs),
                        unresolved=sum(r.status == "unresolved" for r in rs),
                        failed=sum(r.status == "FAIL" for r in rs),
                        best_resolution=best.resolution, relative=best.relative, best=best))
    return sorted(out, key=lambda d: (d["key"], d["activation"]))


@dataclass(frozen=True)
class Study:
    """A report study beyond the per-layer statistics: its rows and its figure.

    ``rows`` are :class:`Row`; ``figure()`` returns a matplotlib Figure, or a
    dict name -> Figure, and is called only when the HTML is written.
    """

    title: str
    note: str
    rows: tuple
    figure: Callable


def critical_mlp(activation, width, depth, lambda_b=1.0, lambda_W=1.0, *, n0=1, n_out=None):
    """An MLP of equal hidden widths at the critical (C_b, C_W) of ``activation``.

    ``n0`` input features; the output width ``n_out`` defaults to the hidden
    width, so that the last layer is measured on ``width`` neurons too.

    Raises
    ------
    ValueError
        If ``activation`` has no critical point.
    """
    from ..activations import activation as get_activation
    from ..network import MLP
    from ..theory.criticality import criticality

    act = get_activation(activation)
    crit = criticality(act)
    if crit.C_W is None:
        raise ValueError(f"activation {act.name!r} has no critical point: {crit.reason}")
    return MLP(n0=n0, width=width, depth=depth, n_out=width if n_out is None else n_out,
               activation=act, C_b=crit.C_b, C_W=crit.C_W, lambda_b=lambda_b, lambda_W=lambda_W)
