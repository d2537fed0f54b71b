"""One comparison of theory with a measurement, and what it could detect.

The single rule every report row and every ensemble test uses. A leaf of
:mod:`pdlt.report` (it imports no other report module) that the report's
modules and ``tests/conftest.py`` share: the pass rule, :class:`Row`,
:class:`Study`, the width extrapolation and the critical MLP of the cases.

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

__all__ = ["Z_PASS", "RESOLVED", "Comparison", "compare", "width_extrapolation", "Row",
           "make_row", "ZERO_RATIO", "summarize", "CONTROL_FACTORS", "Study", "critical_mlp"]

#: pass threshold in standard errors
Z_PASS = 4.0
#: a comparison whose resolution is worse than this is "unresolved" (not a pass)
RESOLVED = 0.5
#: a theory smaller than tolerance / ZERO_RATIO counts as zero (absolute resolution)
ZERO_RATIO = 1e6


@dataclass(frozen=True)
class Comparison:
    """Theory against a measurement (scalars or arrays of one shape).

    Attributes
    ----------
    theory, measured, stderr, allowance : float or ndarray
        Broadcast to one shape; ``allowance >= 0`` is the stated systematic.
    """

    theory: np.ndarray
    measured: np.ndarray
    stderr: np.ndarray
    allowance: np.ndarray

    @property
    def tolerance(self) -> np.ndarray:
        """``Z_PASS stderr + allowance`` per entry."""
        return Z_PASS * self.stderr + self.allowance

    def _dev(self, factor=1.0):
        return np.abs(self.measured - factor * self.theory)

    @property
    def z(self) -> np.ndarray:
        """``|measured - theory| / stderr`` per entry (inf for a zero stderr and a deviation)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = self._dev()
            return np.where(self.stderr > 0, dev / np.where(self.stderr > 0, self.stderr, 1.0),
                            np.where(dev == 0, 0.0, np.inf))

    def control_z(self, factor=1.0) -> float:
        """Largest ``|measured - factor theory| / (stderr + allowance / Z_PASS)``.

        Below ``Z_PASS`` exactly when the comparison with ``factor x theory`` passes.
        """
        return float(np.max(self.control_z_each(factor)))

    @property
    def passed_each(self) -> np.ndarray:
        return self._dev() <= self.tolerance

    @property
    def passed(self) -> bool:
        """Every entry within ``Z_PASS stderr + allowance``."""
        return bool(np.all(self.passed_each))

    def rejects(self, factor) -> bool:
        """Whether the same comparison fails for ``factor x theory`` (some entry outside)."""
        return bool(np.any(self._dev(factor) > self.tolerance))

    @property
    def _nonzero(self) -> np.ndarray:
        # a theory below 1e-6 of the tolerance (e.g. a float64 round-off zero such as ReLU's
        # G1 = -6e-15) is indistinguishable from 0 by this measurement: absolute bound
        return np.abs(self.theory) * ZERO_RATIO > self.tolerance

    @property
    def resolution_each(self) -> np.ndarray:
        """``tolerance / |theory|`` per entry; the absolute tolerance where theory is 0."""
        th = np.where(self._nonzero, np.abs(self.theory), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(th > 0, self.tolerance / np.where(th > 0, th, 1.0), self.tolerance)

    @property
    def relative(self) -> bool:
        """Whether some entry has a nonzero theory (the resolution is then relative)."""
        return bool(np.any(self._nonzero))

    @property
    def resolution(self) -> float:
        """Best (smallest) relative resolution over the entries with nonzero theory.

        The comparison as a whole rejects ``(1 + r) x theory`` when one entry
        does; for a theory that is zero everywhere, the largest absolute bound.
        """
        nz = self._nonzero
        res = self.resolution_each
        if np.any(nz):
            return float(np.min(res[nz]))
        return float(np.max(res))

    @property
    def resolved(self) -> bool:
        """A nonzero theory resolved to ``RESOLVED`` (relative) or better."""
        return self.relative and self.resolution <= RESOLVED

    @property
    def status(self) -> str:
        """``"pass"``, ``"FAIL"`` or ``"unresolved"`` (passes, but resolution > RESOLVED)."""
        if not self.passed:
            return "FAIL"
        if self.relative and self.resolution > RESOLVED:
            return "unresolved"
        return "pass"

    def controls(self, factors=(0.0, 0.5, 2.0)) -> dict:
        """``{factor: control_z(factor)}``."""
        return {f: self.control_z(f) for f in factors}

    def describe(self) -> str:
        """One line for an assertion message (arrays: the worst and the best-resolved entry)."""
        def entry(i):
            return (f"theory {float(self.theory[i]):.6g}, measured {float(self.measured[i]):.6g} "
                    f"+- {float(self.stderr[i]):.3g}, allowance {float(self.allowance[i]):.3g}")
        if self.theory.ndim == 0:
            where = entry(())
        else:
            z = self.control_z_each()
            worst = np.unravel_index(np.argmax(z), z.shape)
            res = np.where(self._nonzero, self.resolution_each, np.inf)
            best = np.unravel_index(np.argmin(res), res.shape)
            where = (f"worst entry {tuple(int(k) for k in worst)}: {entry(worst)}; best resolved "
                     f"{tuple(int(k) for k in best)}: {entry(best)}")
        return (f"{where}; max z {float(np.max(self.z)):.2f}, resolution {self.resolution:.3g}, "
                "controls " + ", ".join(f"x{f:g}: z {z:.1f}" for f, z in self.controls().items()))

    def control_z_each(self, factor=1.0) -> np.ndarray:
        """``|measured - factor theory| / (stderr + allowance / Z_PASS)`` per entry."""
        scale = self.stderr + self.allowance / Z_PASS
        dev = self._dev(factor)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(scale > 0, dev / np.where(scale > 0, scale, 1.0),
                            np.where(dev == 0, 0.0, np.inf))


def compare(theory, measured, stderr, allowance=0.0) -> Comparison:
    """A :class:`Comparison` of broadcast float arrays (0-d for scalars).

    Raises
    ------
    ValueError
        If a stderr or allowance is negative or not finite.
    """
    th, m, se, al = np.broadcast_arrays(*(np.asarray(v, dtype=float)
                                          for v in (theory, measured, stderr, allowance)))
    if np.any(~np.isfinite(se)) or np.any(se < 0):
        raise ValueError(f"stderr must be finite and >= 0; got {se}")
    if np.any(~np.isfinite(al)) or np.any(al < 0):
        raise ValueError(f"allowance must be finite and >= 0; got {al}")
    return Comparison(th.copy(), m.copy(), se.copy(), al.copy())


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
