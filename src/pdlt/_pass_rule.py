"""The pass rule: one comparison of theory with a measurement, and what it could detect.

A comparison *passes* when ``|measured - theory| <= Z_PASS stderr + allowance``;
its *resolution* is ``(Z_PASS stderr + allowance) / |theory|``. Written once
here (numpy only, a leaf below :mod:`pdlt.experiment` and :mod:`pdlt.report`)
and used by the report's rows (:mod:`pdlt.report.rows`, which documents it),
the torch bridge's verification and the tests' negative controls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Z_PASS", "RESOLVED", "ZERO_RATIO", "Comparison", "compare"]

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
