r"""Residual MLPs at criticality: critical initialization, vertex slope and r* vs gamma.

For the residual MLP ``z^(l+1) = xi [b + W sigma(z^(l))] + gamma z^(l)``
(``shared/NOTATION.md``, book appendix B):

* :func:`residual_criticality`: a residual layer is critical at
  ``(1 - gamma^2)/xi^2`` times the plain critical ``(C_b*, C_W*)``, with the
  same K* and universality class, for ``|gamma| < 1`` (book §B.2; no critical
  point for ``|gamma| >= 1``). Layers *without* a residual connection (the
  first layer, a plain output layer) keep the plain values
  (``ResidualCriticality.plain_C_b/plain_C_W``), so the output of a critical
  residual MLP sits at ``K^(L) = K*``; :func:`residual_mlp`,
  ``pdlt diagnose --residual`` and ``pdlt.torch.init_critical_(model,
  gamma=...)`` follow this convention.
* :func:`residual_vertex_slope`: the slope ``nu`` of ``V/(n K*^2)`` per layer
  at criticality, from the exact V of
  :func:`pdlt.theory.residual_ntk.residual_vertex_metric` (a residual neuron
  carries its own past, so V needs two-depth averages);
  :func:`three_point_vertex_slope` is the closed form that keeps only their
  three-point part (exact for linear networks and at gamma = 0; ReLU,
  gamma = 0.5: 6.4273 against the exact 6.4963). Every slope vanishes as
  ``gamma -> 1``, so the optimal aspect ratio ``r* = 4 / ((20 + 3 n_L) nu)``
  (:mod:`pdlt.theory.information`, book §B.3) diverges: residual connections
  let the network be deeper at a given width.

* :func:`residual_slopes`: the depth slopes of the ten NTK statistics (NTK
  fluctuations A, B, D, F; representation learning P, Q; ddNTKs R, S, T, U),
  normalized as the plain :func:`pdlt.theory.ntk_criticality.ntk_slopes`, and the
  ratio ``(P + 2Q)/(A + 2B)`` of representation learning to NTK fluctuations
  (scale-invariant and half-stable classes; ReLU: 0.113 at gamma = 0, 0.128 at 0.5,
  0.140 at 0.9).

The single-input NTK statistics of residual MLPs: :mod:`pdlt.theory.residual_ntk`.
Derivation: ``docs/derivations/residual.rst`` and
``docs/derivations/residual_ntk.md``.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np

from ..activations import _from_spec
from ..activations import activation as _activation
from ..network import MLP
from ._aspect_ratio import optimal_aspect_ratio_from_slope
from .criticality import NoCriticalPointError, criticality
from ._averages import OneVariableTable
from .residual_ntk import one_input_kernel, residual_ntk_one_input, residual_vertex_metric
from .vertex import vertex_slope

__all__ = ["ResidualCriticality", "residual_criticality", "residual_vertex_slope",
           "three_point_vertex_slope", "residual_slopes", "optimal_aspect_ratio",
           "residual_mlp", "residual_layer_variances"]


@dataclass(frozen=True)
class ResidualCriticality:
    """Critical initialization of a residual MLP at residual strength gamma.

    Attributes
    ----------
    activation, universality_class : str
    gamma, xi : float
    C_b, C_W : float
        Critical bias and weight variances of the residual layers.
    plain_C_b, plain_C_W : float
        Those of the layers without a residual connection (the first layer and
        a plain output layer): the plain critical values (module docstring).
    K_star : float or None
        Fixed point (None: every K, scale-invariant class).
    vertex_slope : float
        ``nu(gamma)``: ``V/(n K^2) ~ nu L/n``.
    optimal_aspect_ratio : float
        ``r* = 4 / ((20 + 3 n_out) nu)`` at ``n_out`` outputs.
    n_out : int
    """

    activation: str
    universality_class: str
    gamma: float
    xi: float
    C_b: float
    C_W: float
    K_star: float | None
    vertex_slope: float
    optimal_aspect_ratio: float
    n_out: int
    plain_C_b: float = float("nan")
    plain_C_W: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


def _gamma_iv(gamma, xi):
    gamma, xi = float(gamma), float(xi)
    if not math.isfinite(gamma):
        raise ValueError(f"gamma must be finite; got {gamma}")
    if not (math.isfinite(xi) and xi > 0):
        raise ValueError(f"xi must be a finite number > 0; got {xi}")
    if abs(gamma) >= 1:
        raise NoCriticalPointError(
            f"no critical point for residual strength |gamma| = {abs(gamma):g} >= 1: "
            "chi_perp = gamma^2 + xi^2 C_W <sigma'^2> exceeds 1 for every C_W > 0; use |gamma| < 1")
    return gamma, xi


def _plain_critical(act, crit=None):
    """The plain critical point of ``act`` (``crit`` when given); NoCriticalPointError if none."""
    crit = crit or criticality(act)
    if not crit.is_critical:
        raise NoCriticalPointError(f"activation {act.name!r} has no critical point: {crit.reason}")
    return crit


def residual_vertex_slope(activation, gamma, *, crit=None):
    """``nu(gamma)``, the slope of ``V/(n K^2)`` per layer at residual criticality (exact).

    ``K* > 0`` and scale-invariant classes: the increment ``(V^(l+1) - V^(l)) / K*^2``
    of the exact residual V (:func:`pdlt.theory.residual_ntk.residual_vertex_metric`,
    equal widths, one input at ``K*`` or 1) converges geometrically (ratio gamma);
    it is run to the depth ``L`` where ``gamma^(2L) <= 1e-8`` and Aitken-extrapolated
    (relative error ~1e-8). ``K* = 0`` class: ``(2/3)(1 - gamma^4)`` (the two-depth
    terms beyond ``kappa3`` vanish as ``K -> 0``; module docstring).

    Parameters
    ----------
    activation : str, Activation or callable
    gamma : float
        Residual strength, ``|gamma| <= 0.993`` (beyond, the geometric transient
        needs more than 1000 layers).
    crit : Criticality, optional
        The plain critical point (computed when omitted).

    Returns
    -------
    float
        Equals :func:`pdlt.theory.vertex.vertex_slope` at ``gamma = 0``.

    Examples
    --------
    >>> from pdlt.theory.residual import residual_vertex_slope
    >>> round(residual_vertex_slope("relu", 0.5), 6)
    6.496313
    """
    act = _activation(activation)
    gamma, _ = _gamma_iv(gamma, 1.0)
    crit = _plain_critical(act, crit)
    nu0 = vertex_slope(act, C_W=crit.C_W, K_star=crit.K_star)
    g2 = gamma * gamma
    if gamma == 0.0:
        return nu0
    if crit.universality_class == "K*=0":
        return nu0 * (1.0 - g2 * g2)
    si = act.scale_invariant
    if si is not None and si[0] == si[1]:     # linear: no two-depth terms beyond kappa3 = 0
        return three_point_vertex_slope(act, gamma, crit=crit)
    depth = math.ceil(math.log(1e-8) / (2.0 * math.log(abs(gamma)))) + 10
    if depth > 1000:
        raise ValueError(f"the exact residual vertex slope needs |gamma| <= 0.993 (its "
                         f"geometric transient would need {depth} layers); got gamma={gamma}")
    K = 1.0 if crit.K_star is None else crit.K_star
    m = residual_mlp(act, gamma, width=8, depth=max(depth, 30), n_out=8)
    d = np.diff(residual_vertex_metric(m, K)["V"])[-3:] / (K * K)
    den = (d[2] - d[1]) - (d[1] - d[0])
    if den == 0.0 or abs(d[2] - d[1]) <= 1e-15 * abs(d[2]):
        return float(d[2])
    return float(d[2] - (d[2] - d[1]) ** 2 / den)


def three_point_vertex_slope(activation, gamma, *, crit=None):
    """The slope of the three-point truncation (for comparison; not the network's slope).

    ``(1 - g^2)[(1 - g^2) nu_0 + 4 g^2 + 2 g (1 + g) c~^2 D1^2 / K*]`` (module
    docstring): what :mod:`pdlt.theory.vertex`'s truncated residual recursion
    (``kappa3`` but no higher two-depth terms) gives. Exact for linear
    networks and at gamma = 0; ReLU, gamma = 0.5: 6.4273 against the exact 6.4963.
    """
    act = _activation(activation)
    gamma, _ = _gamma_iv(gamma, 1.0)
    crit = _plain_critical(act, crit)
    nu0 = vertex_slope(act, C_W=crit.C_W, K_star=crit.K_star)
    g2 = gamma * gamma
    if crit.universality_class == "K*=0":
        return nu0 * (1.0 - g2 * g2)
    K = 1.0 if crit.K_star is None else crit.K_star
    D1 = float(OneVariableTable(act, K)["d1ss"])    # <(sigma^2)'> = <z sigma^2>/K
    cross = 2.0 * gamma * (1.0 + gamma) * crit.C_W ** 2 * D1 * D1 / K
    return (1.0 - g2) * ((1.0 - g2) * nu0 + 4.0 * g2 + cross)


def residual_slopes(activation, gamma, *, depth=None, K1=None, lambda_b=1.0, lambda_W=1.0):
    r"""Depth slopes of the exact residual V and of the ten NTK statistics at residual criticality.

    The network is :func:`residual_mlp` (every layer l >= 2 residual, equal widths,
    constant ``lambda_b``, ``lambda_W``, one input); its statistics come from
    :func:`pdlt.statistics` (:mod:`pdlt.theory.residual_ntk`). The slopes are
    normalized as :func:`pdlt.theory.ntk_criticality.ntk_slopes` does
    (:data:`~pdlt.theory.ntk_criticality.SLOPE_NORMALIZATIONS`,
    :data:`~pdlt.theory.ntk_criticality.SLOPE_DEPTH_POWERS`):
    ``X/(n Theta^a K^b) ~ nu_X l^k / n`` for the NTK fluctuations A, B, D, F, the
    dNTK (representation learning) P, Q and the ddNTKs R, S, T, U, so at
    ``gamma = 0`` they are the plain ones (which depend on ``lambda_b : lambda_W``
    only).

    * ``nu_V``: the exact vertex slope, :func:`residual_vertex_slope` (its own
      depth; Aitken-extrapolated).
    * Scale-invariant class (one input at ``K1``, default 1) and half-stable class
      (at ``K1 = K*``; ``K1`` is ignored): the kernel stays constant and
      ``Theta = theta l + const`` exactly, and every residual recursion has
      coefficients that depend on layer differences only, so ``X^(l)`` is a
      polynomial in l of degree ``d = a + k`` plus transients ``poly(l) gamma^l``
      (the two-depth covariances ``gamma^(l-p) K``). ``nu_X`` is its leading
      coefficient, read off by the d-th backward difference at ``l = depth``
      (step 1): ``nu_X = Delta^d X / (d! theta^a K^b)``. Exact at ``gamma = 0``
      (to round-off, ~1e-10); for ``gamma > 0`` the error is the transient,
      ``~ depth^d gamma^depth`` relative: at depth 40 below 1e-6 for
      ``gamma <= 0.5`` and ~1 % at ``gamma = 0.9`` (depth 60: ~0.3 %).
    * K*=0 class (tanh, erf, ...; ``K ~ 1/l``): the statistics of a residual MLP with
      the plain critical learning rates
      (:func:`~pdlt.theory.ntk_criticality.critical_learning_rates`: ``chi_perp`` of a
      residual layer, ``gamma^2 + (1 - gamma^2) chi_perp^plain``, keeps the plain
      ``1 - p_perp/l``) to ``depth`` (default 256), ``g(l) = X / (Theta^a K^b l)``
      fitted over ``depth/4 <= l <= depth`` by least squares in
      ``1, 1/l, log(l)/l, 1/l^2, log(l)/l^2, log(l)^2/l^2`` (the corrections of the
      K*=0 class; ``gamma^l`` transients are below 1e-14 there for ``gamma <= 0.9``),
      ``nu_X`` the constant. ``slope_error[X]``: twice the difference from the same fit
      over ``depth/8 .. depth/2`` (the difference alone did not always bound the change
      from depth 64 to 128). At gamma = 0 it reproduces the plain
      :func:`~pdlt.theory.ntk_criticality.ntk_slopes` (tanh, depth 256: within 5e-4
      relative, ``tests/theory/test_residual_slopes.py``), and ``V / (K^2 l)`` fitted
      the same way gives the exact ``nu_V = (2/3)(1 - gamma^4)``.

    ``learning_to_fluctuation``: ``(nu_P + 2 nu_Q) / (nu_A + 2 nu_B)``, the
    size of representation learning (one output: ``n E[dH z] = P + 2Q``) against
    the NTK's fluctuations (``n Var H = A + 2B``), both per unit of ``L/n`` and
    both over ``Theta^2``; depth-independent in the scale-invariant class, None
    in the half-stable class (where they grow with different powers of l).

    Parameters
    ----------
    activation : str, Activation or callable
    gamma : float
        Residual strength, ``|gamma| < 1``.
    depth : int, optional
        Depth of the recursions: default 40, >= 8 (scale-invariant and half-stable
        classes, see the accuracy above); default 256, >= 64 (K*=0 class; cost ~ depth^3:
        tanh at 256, 13 s of a shared CPU core, 31 s before the fields' covariance was
        solved by doubling; named activations are computed once per argument set and
        cached).
    K1 : float, optional
        First-layer kernel (scale-invariant class; default 1).
    lambda_b, lambda_W : float
        Layer-independent learning rates.

    Returns
    -------
    dict
        ``{"nu_V": float, "A": float, ..., "U": float, "learning_to_fluctuation":
        float or None, "universality_class": str, "slope_error": dict or None}``
        (``slope_error``: the K*=0 class's extrapolation estimate per statistic; None
        in the other classes, whose error is the transient above).

    Raises
    ------
    ValueError
        For ``depth < 8`` (K*=0 class: ``< 64``), or an activation outside the
        scale-invariant, half-stable and K*=0 classes.

    Examples
    --------
    >>> from pdlt.theory.residual import residual_slopes
    >>> s = residual_slopes("relu", 0.5, depth=24)
    >>> round(s["Q"], 6), round(s["learning_to_fluctuation"], 6)
    (0.126022, 0.128461)
    """
    act = _activation(activation)
    key = (gamma, depth, K1, lambda_b, lambda_W)
    if act.spec is not None and all(isinstance(k, (int, float, type(None))) for k in key):
        # named activations are pure functions of their name: cache the result (the K*=0
        # class folds a depth-256 network, ~10 s); a copy, so callers may edit theirs
        return copy.deepcopy(_residual_slopes_named(act.spec, *key))
    return _residual_slopes(act, *key)


@functools.lru_cache(maxsize=32)
def _residual_slopes_named(spec, gamma, depth, K1, lambda_b, lambda_W):
    return _residual_slopes(_from_spec(*spec), gamma, depth, K1, lambda_b, lambda_W)


def _residual_slopes(act, gamma, depth, K1, lambda_b, lambda_W):
    """:func:`residual_slopes` for an :class:`~pdlt.Activation`."""
    from .ntk_criticality import NTK_STATISTICS, SLOPE_DEPTH_POWERS, SLOPE_NORMALIZATIONS
    from .statistics import statistics

    crit = criticality(act)
    cls = crit.universality_class
    if not crit.is_critical or cls not in ("scale-invariant", "half-stable", "K*=0"):
        raise ValueError(f"residual_slopes is derived for the scale-invariant, half-stable and "
                         f"K*=0 classes; {act.name!r} is in the {cls!r} class")
    if cls == "K*=0":
        return _k0_slopes(act, crit, gamma, 256 if depth is None else depth,
                          1.0 if K1 is None else K1, lambda_b, lambda_W)
    depth = 40 if depth is None else depth
    if int(depth) != depth or depth < 8:
        raise ValueError(f"depth must be an integer >= 8; got {depth!r}")
    if cls == "half-stable" or K1 is None:
        K1 = crit.K_star if crit.K_star else 1.0
    L = int(depth)
    m = residual_mlp(act, gamma, width=8, depth=L, n_out=8, lambda_b=lambda_b,
                     lambda_W=lambda_W)
    st = statistics(m, K1=K1, get=NTK_STATISTICS)
    theta = float(st.Theta[L - 1] - st.Theta[L - 2])     # Theta is linear in l (chi_perp = 1)
    K = float(st.K[L - 1])
    out = {"nu_V": residual_vertex_slope(act, gamma, crit=crit)}
    for name, (a, b) in SLOPE_NORMALIZATIONS[cls].items():
        d = a + SLOPE_DEPTH_POWERS[cls][name]
        j = np.arange(d + 1)
        coef = np.array([(-1) ** (d - i) * math.comb(d, i) for i in j], dtype=float)
        diff = float(coef @ np.asarray(st[name], dtype=float)[L - 1 - (d - j)])
        out[name] = diff / (math.factorial(d) * theta ** a * K ** b)
    out["learning_to_fluctuation"] = (
        (out["P"] + 2.0 * out["Q"]) / (out["A"] + 2.0 * out["B"])
        if cls == "scale-invariant" else None)
    out["universality_class"] = cls
    out["slope_error"] = None
    return out


def _k0_fit(g, l, lo, hi):
    """The constant of the K*=0 class's asymptotic form fitted to ``g`` over ``lo <= l <= hi``."""
    sel = (l >= lo) & (l <= hi)
    x = l[sel]
    lg = np.log(x)
    basis = np.stack([np.ones_like(x), 1 / x, lg / x, 1 / x ** 2, lg / x ** 2,
                      lg ** 2 / x ** 2], axis=1)
    scale = np.abs(basis).max(axis=0)
    coef = np.linalg.lstsq(basis / scale, g[sel], rcond=None)[0] / scale
    return float(coef[0])


def _k0_slopes(act, crit, gamma, depth, K1, lambda_b, lambda_W):
    """:func:`residual_slopes` for the K*=0 class (its docstring)."""
    from .ntk_criticality import NTK_STATISTICS, SLOPE_NORMALIZATIONS, critical_learning_rates
    from .statistics import statistics

    if int(depth) != depth or depth < 64:
        raise ValueError(f"depth must be an integer >= 64 for the K*=0 class (the slopes are "
                         f"fitted over depth/4 .. depth); got {depth!r}")
    if not (isinstance(K1, (int, float)) and math.isfinite(K1) and K1 > 0):
        raise ValueError(f"K1 must be a finite number > 0; got {K1!r}")
    L = int(depth)
    lr = critical_learning_rates(act, L, lambda_b=lambda_b, lambda_W=lambda_W)
    m = residual_mlp(act, gamma, width=8, depth=L, n_out=8, lambda_b=lr["lambda_b"],
                     lambda_W=lr["lambda_W"])
    st = statistics(m, K1=float(K1), get=NTK_STATISTICS)
    K, Th = np.asarray(st.K, float), np.asarray(st.Theta, float)
    l = np.arange(1, L + 1, dtype=float)
    out = {"nu_V": residual_vertex_slope(act, gamma, crit=crit)}
    err = {}
    for name, (a, b) in SLOPE_NORMALIZATIONS["K*=0"].items():
        g = np.asarray(st[name], float) / (Th ** a * K ** b * l)
        out[name] = _k0_fit(g, l, L / 4, L)
        err[name] = 2.0 * abs(out[name] - _k0_fit(g, l, L / 8, L / 2))
    out["learning_to_fluctuation"] = (out["P"] + 2.0 * out["Q"]) / (out["A"] + 2.0 * out["B"])
    out["universality_class"] = "K*=0"
    out["slope_error"] = err
    return out


def optimal_aspect_ratio(activation, n_out=1, *, gamma=0.0):
    """The information-theoretic optimal depth-to-width ratio ``(L/n)*``.

    Parameters
    ----------
    activation : str, Activation or callable
        At its critical initialization (:func:`pdlt.criticality`).
    n_out : int, default 1
        Output width n_L.
    gamma : float, default 0
        Residual strength (residual MLP at its critical point,
        :func:`residual_criticality`).

    Returns
    -------
    float
        ``4 / ((20 + 3 n_L) nu(gamma))`` (:mod:`pdlt.theory.information`), ``nu`` from
        :func:`residual_vertex_slope`. ReLU, n_L = 1: ``4/115 = 0.0348``.

    Examples
    --------
    >>> from pdlt.theory.residual import optimal_aspect_ratio
    >>> round(optimal_aspect_ratio("relu"), 6), round(optimal_aspect_ratio("tanh"), 6)
    (0.034783, 0.26087)
    """
    return optimal_aspect_ratio_from_slope(residual_vertex_slope(activation, gamma), n_out)


def residual_criticality(activation, gamma, *, xi=1.0, n_out=1) -> ResidualCriticality:
    """Critical ``(C_b, C_W)``, vertex slope and r* of a residual MLP.

    Parameters
    ----------
    activation : str, Activation or callable
    gamma : float
        Residual strength, ``|gamma| < 1``.
    xi : float, default 1
        Scale of the layer's own branch.
    n_out : int, default 1
        Output width n_L for the optimal aspect ratio.

    Returns
    -------
    ResidualCriticality

    Raises
    ------
    NoCriticalPointError
        For ``|gamma| >= 1`` or an activation without a critical point.

    Examples
    --------
    >>> from pdlt.theory.residual import residual_criticality
    >>> r = residual_criticality("relu", 0.5)
    >>> r.C_W, round(r.vertex_slope, 6)
    (1.5, 6.496313)
    """
    act = _activation(activation)
    gamma, xi = _gamma_iv(gamma, xi)
    crit = _plain_critical(act)
    f = (1.0 - gamma * gamma) / (xi * xi)
    nu = residual_vertex_slope(act, gamma, crit=crit)
    return ResidualCriticality(
        activation=crit.activation, universality_class=crit.universality_class,
        gamma=gamma, xi=xi, C_b=f * crit.C_b, C_W=f * crit.C_W, K_star=crit.K_star,
        vertex_slope=nu, optimal_aspect_ratio=optimal_aspect_ratio_from_slope(nu, n_out),
        n_out=int(n_out), plain_C_b=crit.C_b, plain_C_W=crit.C_W)


def residual_layer_variances(mlp, rc):
    """Per-layer critical ``(C_b, C_W)`` tuples of ``mlp`` under the module's convention.

    Layers with a residual connection (``gamma != 0`` or ``xi != 1``) get
    ``rc.C_b, rc.C_W``; the others the plain critical ``rc.plain_C_b,
    rc.plain_C_W``.
    """
    res = [g != 0.0 or x != 1.0 for g, x in zip(mlp.gamma, mlp.xi)]
    return (tuple(rc.C_b if r else rc.plain_C_b for r in res),
            tuple(rc.C_W if r else rc.plain_C_W for r in res))


def residual_mlp(activation, gamma, *, n0=1, width, depth, n_out=1, xi=1.0, **kwargs):
    """A :class:`pdlt.MLP` at residual criticality.

    The residual layers (``l >= 2`` with equal widths) get the residual
    critical ``C_b, C_W``; the first layer and a plain output layer
    (``n_out != width``) the plain critical ones, so every layer maps K* to
    K* (module docstring, "the convention"). Extra keyword arguments
    (``lambda_b``, ``lambda_W``) go to the MLP.

    Examples
    --------
    >>> from pdlt.theory.residual import residual_mlp
    >>> residual_mlp("relu", 0.5, width=8, depth=4).C_W
    (2.0, 1.5, 1.5, 2.0)
    """
    act = _activation(activation)
    g, x = _gamma_iv(gamma, xi)
    crit = _plain_critical(act)
    f = (1.0 - g * g) / (x * x)
    # the variances only (residual_criticality would also compute the vertex slope)
    rc = SimpleNamespace(C_b=f * crit.C_b, C_W=f * crit.C_W, plain_C_b=crit.C_b,
                         plain_C_W=crit.C_W)
    mlp = MLP(n0=n0, width=width, depth=depth, n_out=n_out, activation=activation,
              gamma=gamma, xi=xi, **kwargs)
    C_b, C_W = residual_layer_variances(mlp, rc)
    return mlp.with_(C_b=C_b, C_W=C_W)
