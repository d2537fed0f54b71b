r"""Criticality and universality classes of the infinite-width kernel flow.

:func:`criticality` finds the critical initialization of any activation (a
name, an :class:`~pdlt.Activation` or a vectorized numpy callable)
numerically: the fixed point ``K* = C_b + C_W <sigma^2>_{K*}`` with
``chi_parallel(K*) = chi_perp(K*) = 1`` (book §5.2-5.3), sorted into the
book's universality classes:

``"scale-invariant"``
    ``sigma(z) = a_+ z (z > 0), a_- z (z < 0)``: ``C_b = 0``,
    ``C_W = 2/(a_+^2 + a_-^2)``, every K is a fixed point (book §5.2).
``"K*=0"``
    sigma(0) = 0, sigma'(0) != 0: ``C_b = 0``, ``C_W = 1/sigma_1^2``; the
    kernel decays as a power of l (book §5.3.3).
``"half-stable"``
    a root K* > 0 with C_b >= 0 that attracts from one side only, with a
    ``1/l`` approach (SWISH, GELU; book §5.3.4).
``"none"``
    no physical solution; ``reason`` says why.

:func:`kernel_map`, :func:`chi_parallel` and :func:`chi_perp` are the
single-input map ``f(K) = C_b + C_W <sigma^2>_K`` and its susceptibilities
(book §5.1); :func:`require_critical` raises for class ``"none"``. Off
criticality (fixed points, depth scales, the phase diagram):
:mod:`pdlt.theory.phase`.

Accuracy: the expectations are the engine's (below 1e-14 relative for the
named activations, :mod:`pdlt.gaussian`); roots are solved to
``xtol = 1e-14 K``; ``chi_parallel`` and ``chi_perp`` at the reported point
equal 1 to within 1e-10 (checked by the tests against an independent
adaptive quadrature).

Derivation: ``docs/derivations/criticality.rst``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from ._kernel_map import (EPS, K_RANGE, check_kernel, check_moments, check_variances, derivatives,
                          find_fixed_points, find_roots, moments, resolve_activation,
                          scale_invariant_slopes, scan_grid, taylor_at_zero)
from .kernel import single_input_moments

__all__ = [
    "NoCriticalPointError",
    "CriticalSolution",
    "Asymptotics",
    "Criticality",
    "kernel_map",
    "chi_parallel",
    "chi_perp",
    "criticality",
    "require_critical",
    "taylor_at_zero",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class NoCriticalPointError(ValueError):
    """The activation has no (physical) critical initialization."""


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CriticalSolution:
    """One solution of ``K* = f(K*)``, ``chi_par(K*) = chi_perp(K*) = 1``.

    Attributes
    ----------
    K_star : float or None
        The fixed point (None for a scale-invariant activation: every K).
    C_b, C_W : float
        Initialization hyperparameters (C_W may be inf where sigma'(0) = 0).
    chi_parallel, chi_perp : float
        Susceptibilities at K* (1 up to the solver's accuracy).
    physical : bool
        ``C_b >= 0`` and ``0 < C_W < inf``.
    stability : str
        How the kernel flow behaves near K*: ``"marginal (every K fixed)"``,
        ``"attracts from above"`` (K*=0 class), ``"attracts from below"`` /
        ``"attracts from above"`` (half-stable), ``"repels"``, ``"undetermined"``.
    """

    K_star: float | None
    C_b: float
    C_W: float
    chi_parallel: float
    chi_perp: float
    physical: bool
    stability: str

    @property
    def attracting(self) -> bool:
        return self.stability.startswith("attracts") or self.stability.startswith("marginal")

    def to_dict(self) -> dict:
        return dict(K_star=self.K_star, C_b=self.C_b, C_W=self.C_W,
                    chi_parallel=self.chi_parallel, chi_perp=self.chi_perp,
                    physical=self.physical, stability=self.stability)


@dataclass(frozen=True)
class Asymptotics:
    r"""Large-depth behaviour at criticality.

    For the power-law classes, with ``Delta^(l) = K^(l) - K*``:

    .. math:: \Delta^{(l)} \simeq \text{amplitude}\; l^{\text{exponent}},\quad
              \chi_\parallel^{(l)} \simeq 1 - p_\parallel / l,\quad
              \chi_\perp^{(l)} \simeq 1 - p_\perp / l .

    ``coefficients`` holds the expansion of the kernel map around K*:
    ``Delta' = Delta + A Delta^2 + B Delta^3`` (``A = f''/2``,
    ``B = f'''/6``; for the K*=0 class ``A = a_1``, ``B = a_2`` of book
    §5.3.3), or ``Delta' = Delta + a_half
    Delta^(3/2) + A Delta^2`` for an activation with a kink at the origin.

    Attributes
    ----------
    law : str
        The law in words.
    exponent, amplitude : float or None
        None for the scale-invariant class (no flow).
    p_parallel, p_perp : float or None
        Critical exponents of the susceptibilities.
    side : str or None
        ``"above"`` or ``"below"``: the side of K* from which the flow is
        attracted.
    coefficients : dict
        Taylor coefficients ``sigma_p`` and the map coefficients used.
    """

    law: str
    exponent: float | None = None
    amplitude: float | None = None
    p_parallel: float | None = None
    p_perp: float | None = None
    side: str | None = None
    coefficients: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return dict(law=self.law, exponent=self.exponent, amplitude=self.amplitude,
                    p_parallel=self.p_parallel, p_perp=self.p_perp, side=self.side,
                    coefficients=dict(self.coefficients))


@dataclass(frozen=True)
class Criticality:
    """The critical initialization of an activation and its universality class.

    Attributes
    ----------
    activation : str
        Name of the activation.
    universality_class : {"scale-invariant", "K*=0", "half-stable", "none"}
    C_b, C_W, K_star, chi_parallel, chi_perp : float or None
        The physically relevant solution (``solutions[0]``); None for
        ``"none"``; ``K_star`` is None for ``"scale-invariant"`` (every K).
    solutions : tuple of CriticalSolution
        All solutions found, the physically relevant first (physical and
        attracting, then physical and repelling, then unphysical).
    reason : str
        Why the class was assigned; for ``"none"``, why there is no critical
        point.
    asymptotics : Asymptotics or None
    """

    activation: str
    universality_class: str
    C_b: float | None
    C_W: float | None
    K_star: float | None
    chi_parallel: float | None
    chi_perp: float | None
    solutions: tuple
    reason: str
    asymptotics: Asymptotics | None = None

    @property
    def is_critical(self) -> bool:
        return self.universality_class != "none"

    def to_dict(self) -> dict:
        return dict(activation=self.activation, universality_class=self.universality_class,
                    C_b=self.C_b, C_W=self.C_W, K_star=self.K_star,
                    chi_parallel=self.chi_parallel, chi_perp=self.chi_perp,
                    solutions=[s.to_dict() for s in self.solutions], reason=self.reason,
                    asymptotics=None if self.asymptotics is None else self.asymptotics.to_dict())


def _h(act, K):
    """``<sigma sigma''>_K = d<sigma^2>/dK - <sigma'^2>`` (zero at a critical K*)."""
    ss, zss, pp = moments(act, K)
    return (zss - ss) / (2.0 * K) - pp


# ---------------------------------------------------------------------------
# public single-input functions
# ---------------------------------------------------------------------------

def kernel_map(activation, K, C_b, C_W):
    """The single-input kernel map ``f(K) = C_b + C_W <sigma^2>_K`` (book §5.1).

    Parameters
    ----------
    activation : str, Activation or callable
    K : float or array_like of shape (...)
        Kernel values ``K >= 0``.
    C_b, C_W : float

    Returns
    -------
    float or ndarray of shape (...)
    """
    act = resolve_activation(activation)
    C_b, C_W = check_variances(C_W, C_b)
    K = check_kernel(K)
    ss, _, _ = single_input_moments(act, K)
    out = C_b + C_W * np.asarray(ss, dtype=float)
    return float(out) if out.ndim == 0 else out


def chi_parallel(activation, K, C_W=1.0):
    """``chi_par(K) = C_W <sigma'^2 + sigma sigma''>_K = f'(K)`` (book §5.1).

    Parameters
    ----------
    activation : str, Activation or callable
    K : float or array_like of shape (...), K >= 0
    C_W : float

    Returns
    -------
    float or ndarray of shape (...)
        Independent of C_b. At ``K = 0`` the value ``C_W sigma'(0)^2``
        (the limit for sigma(0) = 0).
    """
    act = resolve_activation(activation)
    C_W = check_variances(C_W)
    K = check_kernel(K)
    _, dd, sdd = single_input_moments(act, K)
    out = C_W * (np.asarray(dd, dtype=float) + np.asarray(sdd, dtype=float))
    return float(out) if out.ndim == 0 else out


def chi_perp(activation, K, C_W=1.0):
    """``chi_perp(K) = C_W <sigma'^2>_K`` (book §5.1).

    Parameters and returns as :func:`chi_parallel`.
    """
    act = resolve_activation(activation)
    C_W = check_variances(C_W)
    K = check_kernel(K)
    _, dd, _ = single_input_moments(act, K)
    out = C_W * np.asarray(dd, dtype=float)
    return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------------------
# the solver
# ---------------------------------------------------------------------------

def _root_solution(act, K):
    ss, ss1, ss2, ss3, pp, pp1 = derivatives(act, K)
    C_W = 1.0 / pp
    C_b = K - C_W * ss
    if abs(C_b) <= 64 * EPS * K:
        C_b = 0.0
    f2, f3 = C_W * ss2, C_W * ss3
    if abs(f2) * K <= 1e-9:
        stability = "undetermined"
    else:
        stability = "attracts from below" if f2 > 0 else "attracts from above"
    sol = CriticalSolution(K_star=float(K), C_b=float(C_b), C_W=float(C_W),
                           chi_parallel=float(C_W * ss1), chi_perp=float(C_W * pp),
                           physical=bool(C_b >= 0), stability=stability)
    map_a, map_b = f2 / 2.0, f3 / 6.0
    asym = None
    if stability != "undetermined" and C_b >= 0:
        side = "below" if f2 > 0 else "above"
        dchi_perp = C_W * pp1
        # the basin: up to the neighbouring fixed points of the critical map
        others = [p.K for p in find_fixed_points(act, C_b, C_W, K_RANGE)
                  if abs(p.K - K) > 1e-6 * K]
        if side == "below":
            lower = max([k for k in others if k < K], default=0.0)
            basin = (lower, K)
        else:
            basin = (K, min([k for k in others if k > K], default=math.inf))
        asym = Asymptotics(
            law=(f"half-stable: K^(l) -> K* = {K:.10g} from {side} only (from K^(1) in "
                 f"({basin[0]:.6g}, {basin[1]:.6g})), K^(l) - K* ~ {-1.0 / map_a:.6g} / l once "
                 f"|K - K*| << |A/B| = {abs(map_a / map_b):.3g}; from the other side the kernel "
                 "flows away"),
            exponent=-1.0, amplitude=float(-1.0 / map_a),
            p_parallel=2.0, p_perp=float(dchi_perp / map_a), side=side,
            coefficients=dict(A=float(map_a), B=float(map_b), f2=float(f2), f3=float(f3),
                              dchi_perp_dK=float(dchi_perp), basin=[float(b) for b in basin],
                              other_fixed_points=[float(k) for k in others]))
    return sol, asym


def _origin_solution(act, plus, minus, analytic):
    """The K* = 0 candidate from the Taylor coefficients, or (None, why)."""
    s0 = 0.5 * (plus[0] + minus[0])
    s1p, s1m = plus[1], minus[1]
    m = 0.5 * (s1p ** 2 + s1m ** 2)
    scale = max(1.0, abs(s0), math.sqrt(m))
    coeffs = dict(sigma_plus=[float(c) for c in plus], sigma_minus=[float(c) for c in minus])
    if analytic:
        coeffs = dict(sigma=[float(c) for c in plus])
    if m <= 1e-12 * scale ** 2:
        return None, None, (f"sigma'(0) = 0, so chi_perp(K -> 0) = C_W sigma'(0)^2 vanishes for "
                            "every finite C_W: K* = 0 cannot be critical")
    C_W = 1.0 / m
    # h(0) = sigma(0) sigma''(0) must vanish for K* = 0 to solve chi_par = chi_perp
    s2 = 0.5 * (plus[2] + minus[2])
    if abs(s0 * s2) > 1e-9 * scale ** 2 or (abs(s0) > 1e-12 * scale and not analytic):
        return None, None, (f"at K = 0, chi_par/chi_perp = 1 + sigma(0) sigma''(0)/sigma'(0)^2 = "
                            f"{1 + s0 * s2 / m:.6g} != 1, so K* = 0 is not critical")
    C_b = -C_W * s0 * s0
    if abs(s0) <= 1e-12 * scale:
        C_b = 0.0
    # one-sided expansion of <sigma^2>_K / m = K + a_half K^(3/2) + a1 K^2 + a2 K^3
    a_half = _SQRT_2_OVER_PI * (s1p * plus[2] - s1m * minus[2]) / m
    a1 = 1.5 * sum(p[2] ** 2 / 4 + p[1] * p[3] / 3 for p in (plus, minus)) / m
    a2 = 7.5 * sum(p[1] * p[5] / 60 + p[2] * p[4] / 24 + p[3] ** 2 / 36
                   for p in (plus, minus)) / m
    # <sigma'^2>_K / m = 1 + b_half sqrt(K) + b1 K
    b1 = 0.5 * sum(p[2] ** 2 + p[1] * p[3] for p in (plus, minus)) / m
    coeffs.update(a_half=float(a_half), a1=float(a1), a2=float(a2), b1=float(b1))
    physical = C_b >= 0
    tol = 1e-8
    asym = None
    if not analytic and abs(a_half) > tol:
        stability = "attracts from above" if a_half < 0 else "repels"
        if a_half < 0:
            coeffs.update(A=float(a1))
            asym = Asymptotics(
                law=(f"K*=0 (kink at the origin): K^(l) ~ 4/(a^2 l^2) = {4 / a_half ** 2:.6g} / l^2 "
                     f"with a = a_half = {a_half:.6g}; chi_par ~ 1 - 3/l, chi_perp ~ 1 - 2/l"),
                exponent=-2.0, amplitude=float(4.0 / a_half ** 2), p_parallel=3.0, p_perp=2.0,
                side="above", coefficients=coeffs)
    elif abs(a1) > tol:
        stability = "attracts from above" if a1 < 0 else "repels"
        if a1 < 0:
            coeffs.update(A=float(a1), B=float(a2))
            asym = Asymptotics(
                law=(f"K*=0: K^(l) ~ 1/(a l) with a = -a1 = {-a1:.10g}; chi_par ~ 1 - 2/l, "
                     f"chi_perp ~ 1 - p_perp/l with p_perp = b1/a1 = {b1 / a1:.6g}"),
                exponent=-1.0, amplitude=float(-1.0 / a1), p_parallel=2.0,
                p_perp=float(b1 / a1), side="above", coefficients=coeffs)
    else:
        stability = "undetermined"
    sol = CriticalSolution(K_star=0.0, C_b=float(C_b), C_W=float(C_W), chi_parallel=1.0,
                           chi_perp=1.0, physical=bool(physical), stability=stability)
    return sol, asym, coeffs


def criticality(activation, *, K_range=K_RANGE) -> Criticality:
    """Critical initialization and universality class of an activation.

    Solves ``K* = C_b + C_W <sigma^2>_{K*}``, ``chi_par(K*) = chi_perp(K*) = 1``
    (book §5.2-5.3) for any activation, numerically; no values are looked up.

    Parameters
    ----------
    activation : str, Activation or callable
        A named activation (``"gelu"``, ``"leaky_relu(0.1)"``), an
        :class:`~pdlt.Activation`, or a vectorized numpy callable.
    K_range : (float, float)
        Range of K* > 0 searched (default 1e-8 to 1e6). K* = 0 is treated
        separately by the Taylor expansion at the origin.

    Returns
    -------
    Criticality
        With ``universality_class``, the critical ``C_b``, ``C_W``,
        ``K_star``, the susceptibilities there, all ``solutions`` (physically
        relevant first), a ``reason`` and the ``asymptotics``.

    Raises
    ------
    ActivationError
        If the activation is not callable or gives non-finite values.

    Notes
    -----
    A root of ``<sigma sigma''>_K`` where it touches zero without changing
    sign (even multiplicity) is not found by the scan; neither are two roots
    closer than the scan's grid spacing (24 points per decade of K).

    Examples
    --------
    >>> from pdlt.theory.criticality import criticality
    >>> res = criticality("relu")
    >>> res.universality_class, res.C_b, res.C_W
    ('scale-invariant', 0.0, 2.0)
    >>> round(criticality("tanh").C_W, 12)
    1.0
    """
    lo, hi = (float(k) for k in K_range)
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"K_range must be (lo, hi) with 0 < lo < hi < inf; got {K_range!r}")
    if isinstance(activation, str):
        # named activations are pure functions of their name: cache the result
        return _criticality_named(activation.strip().lower(), lo, hi)
    return _criticality(resolve_activation(activation), lo, hi)


@functools.lru_cache(maxsize=64)
def _criticality_named(spec, lo, hi):
    return _criticality(resolve_activation(spec), lo, hi)


def _criticality(act, lo, hi):
    name = act.name
    slopes = scale_invariant_slopes(act)
    if slopes is not None:
        ap, am = slopes
        m = 0.5 * (ap * ap + am * am)
        C_W = 1.0 / m
        sol = CriticalSolution(K_star=None, C_b=0.0, C_W=C_W, chi_parallel=1.0, chi_perp=1.0,
                               physical=True, stability="marginal (every K fixed)")
        q2 = 0.25 * (ap - am) ** 2
        alpha = 2.0 * (q2 / m) / (3.0 * math.pi)
        asym = Asymptotics(
            law=("scale-invariant: every K is a fixed point, K^(l) = K^(1) and "
                 "chi_par = chi_perp = 1 at every layer; the angle between two inputs "
                 + (f"closes as psi^(l) ~ 1/(alpha l), alpha = {alpha:.6g}" if alpha > 0
                    else "is preserved")),
            exponent=None, amplitude=None, p_parallel=0.0, p_perp=0.0,
            coefficients=dict(a_plus=ap, a_minus=am, alpha=alpha))
        return Criticality(name, "scale-invariant", 0.0, C_W, None, 1.0, 1.0, (sol,),
                           f"sigma(z) = {ap:g} z for z > 0 and {am:g} z for z < 0 is scale "
                           f"invariant: C_b = 0, C_W = 2/(a_+^2 + a_-^2) = {C_W:.12g}, and every K "
                           "is a fixed point", asym)

    # --- K > 0: roots of h(K) = <sigma sigma''>_K on a log grid ------------
    grid = scan_grid((lo, hi))
    ss, zss, pp = moments(act, grid)
    for v in (ss, zss, pp):
        check_moments(act, grid, v)
    h = (zss - ss) / (2.0 * grid) - pp
    # rounding level of h: sigma is known to eps relative, and (zss - ss)/(2K)
    # divides terms of size ss by K (sigmoid at K = 1e-8 has |h| < noise)
    noise = 64 * EPS * (ss / grid + pp)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.abs(h) > noise, 1.0 + h / pp, np.nan)
    roots = find_roots(lambda k: float(_h(act, k)), grid, h, noise)
    candidates = []  # (solution, asymptotics)
    for K in roots:
        candidates.append(_root_solution(act, K))

    # --- K* = 0 by the Taylor expansion at the origin ----------------------
    plus, minus, analytic = taylor_at_zero(act)
    origin, origin_asym, origin_info = _origin_solution(act, plus, minus, analytic)
    if origin is not None:
        candidates.append((origin, origin_asym))

    def rank(item):
        sol, asym = item
        usable = sol.physical and asym is not None
        return (0 if usable else 1 if sol.physical else 2, sol.K_star)

    candidates.sort(key=rank)
    solutions = tuple(s for s, _ in candidates)
    if candidates and candidates[0][0].physical and candidates[0][1] is not None:
        best, asym = candidates[0]
        cls = "K*=0" if best.K_star == 0.0 else "half-stable"
        if cls == "K*=0":
            reason = (f"sigma(0) = 0 and sigma'(0) != 0: K* = 0 with C_b = 0, "
                      f"C_W = 1/sigma'(0)^2 = {best.C_W:.12g}, approached from above")
        else:
            reason = (f"<sigma sigma''>_K vanishes at K* = {best.K_star:.12g} with C_b = "
                      f"{best.C_b:.6g} >= 0; the kernel map touches the diagonal there, so K* "
                      f"attracts from {asym.side} only")
        return Criticality(name, cls, best.C_b, best.C_W, best.K_star, best.chi_parallel,
                           best.chi_perp, solutions, reason, asym)

    # --- no critical point: say why ----------------------------------------
    parts = []
    finite = np.isfinite(ratio)
    if finite.any() and not roots:
        rmin, rmax = float(np.min(ratio[finite])), float(np.max(ratio[finite]))
        side = "above" if rmin > 1 else "below" if rmax < 1 else "around"
        parts.append(
            f"chi_par/chi_perp = 1 + <sigma sigma''>/<sigma'^2> stays {side} 1 (between "
            f"{rmin:.10g} and {rmax:.10g}) for K in [{lo:g}, {hi:g}]: with chi_perp held at 1, "
            f"chi_par is never 1, so no K* > 0 is critical")
    for sol, asym in candidates:
        if sol.K_star == 0.0:
            continue
        if not sol.physical:
            parts.append(f"K* = {sol.K_star:.6g} solves chi_par = chi_perp = 1 but needs "
                         f"C_b = {sol.C_b:.6g} < 0")
        elif asym is None:
            parts.append(f"at K* = {sol.K_star:.6g} the stability is undetermined (f'' = 0)")
    if origin is None:
        parts.append(origin_info)
    elif not origin.physical:
        s0, s1 = 0.5 * (plus[0] + minus[0]), 0.5 * (plus[1] + minus[1])
        parts.append(f"K* = 0 solves chi_par = chi_perp = 1 only with C_b = -sigma(0)^2/"
                     f"sigma'(0)^2 = {-s0 * s0 / (s1 * s1):.6g} < 0 (a negative bias variance)")
    elif origin_asym is None:
        a = origin_info.get("a_half") if not analytic else origin_info.get("a1")
        parts.append(f"K* = 0 solves the equations (C_b = 0, C_W = {origin.C_W:.6g}) but the "
                     f"kernel map K -> K + a K^{{1.5 or 2}} has a = {a:.6g} >= 0, so the flow "
                     "moves away from K = 0")
    return Criticality(name, "none", None, None, None, None, None, solutions,
                       "no critical initialization: " + "; ".join(parts), None)


def require_critical(activation, **kwargs) -> Criticality:
    """:func:`criticality`, raising :class:`NoCriticalPointError` for class "none"."""
    res = criticality(activation, **kwargs)
    if res.universality_class == "none":
        raise NoCriticalPointError(f"activation {res.activation!r} has no critical point: "
                                   f"{res.reason}")
    return res
