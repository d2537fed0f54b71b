"""Per-layer diagnosis of an MLP's initialization (numpy only).

What the effective theory says about one concrete MLP, layer by layer: the
kernel ``K^(l)`` and NTK mean ``Theta^(l)`` of a typical input, the
susceptibilities ``chi_parallel``, ``chi_perp`` (book ch. 5) and the distance
from criticality, the local depth scales over which signals are lost, the
order-1/n statistics ``V/(n K^2)`` (the preactivations' non-Gaussianity,
book ch. 4) and ``A/(n Theta^2)`` (NTK fluctuations, book ch. 8-9), and, for
the network as a whole, ``L/n`` against the information-theoretic optimum
(book appendix A) and the size of representation learning
(:func:`pdlt.learning.finite_training.finite_width_learning_size`).

The MLP may have a different ``C_b``, ``C_W`` in every layer (PyTorch's
default initialization gives ``C_b^(l) = 1/(3 n_{l-1})``), which is why this
works from the per-layer flows rather than from the fixed-point analysis of
:func:`pdlt.theory.phase.depth_scales`. :func:`pdlt.torch.diagnose`
builds the MLP from a real PyTorch model and calls :func:`diagnose_mlp`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..network import MLP

__all__ = ["MLPDiagnosis", "diagnose_mlp", "diagnose_architecture", "input_kernels",
           "local_depth_scale"]


def local_depth_scale(chi):
    """``1 / |ln chi|``: layers over which a perturbation grows or shrinks by e.

    Infinite at ``chi = 1`` (criticality); NaN for ``chi <= 0`` or non-finite.
    Vectorized over ``chi``.
    """
    chi = np.asarray(chi, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(chi > 0, 1.0 / np.abs(np.log(np.where(chi > 0, chi, 1.0))), np.nan)
    out = np.where(chi == 1.0, np.inf, out)
    return out if out.ndim else float(out)


@dataclass(frozen=True)
class MLPDiagnosis:
    """The theory's per-layer diagnosis of an MLP (arrays of shape (L,)).

    Attributes
    ----------
    mlp : MLP
        The network diagnosed (its per-layer ``C_b``, ``C_W``, ``gamma``, ``xi``).
    K1 : float
        First-layer kernel of the typical input the statistics refer to.
    K, Theta : ndarray (L,)
        Infinite-width kernel and NTK mean at every layer.
    chi_parallel, chi_perp : ndarray (L,)
        Susceptibilities of the map from layer l to l+1 at ``K^(l)``
        (``chi^(L)`` uses layer L's ``C_W``, as :func:`pdlt.flow`).
    criticality_distance : ndarray (L,)
        ``max(|chi_parallel - 1|, |chi_perp - 1|)``: 0 at criticality.
    xi_parallel, xi_perp : ndarray (L,)
        Local depth scales ``1/|ln chi|`` (:func:`local_depth_scale`).
    V, A : ndarray (L,)
        Four-point vertex and NTK variance A (NOTATION.md), normalized by
        ``n_{l-1}`` (residual MLPs included: one input,
        :mod:`pdlt.theory.residual_ntk`); NaN where the statistics fail
        (a note says why).
    V_over_nK2, A_over_nTheta2 : ndarray (L,)
        ``V^(l) / (n_{l-1} K^2)``: the single-neuron excess kurtosis of the
        preactivations is 3x this; ``A^(l) / (n_{l-1} Theta^2)``: the
        variance of the NTK's diagonal entry relative to its square mean.
    K_nlo, Theta_nlo : ndarray (L,)
        ``K + G1/n_{l-1}`` and ``Theta + H1/n_{l-1}``: the means at a finite
        width, to order 1/n.
    signal_depth : float
        ``L / |sum_l ln chi_perp^(l)|`` over the maps between layers: the
        number of layers over which the difference of two nearby inputs is
        multiplied by ``e`` or ``1/e`` (infinite at criticality). Signals
        are lost when it is much smaller than the depth L.
    L_over_n, n_eff : float
        Depth over the effective width, the harmonic mean of the hidden
        widths (``sum_l 1/n_l`` is what the order-1/n statistics accumulate).
    universality_class, critical_C_b, critical_C_W
        Of the activation (:func:`pdlt.criticality`); the C's are None when
        it has no critical point.
    at_criticality : ndarray of bool (L,)
        Whether each layer's ``(C_b, C_W)`` is the critical one (within
        ``critical_tolerance``).
    vertex_slope, optimal_aspect_ratio, optimal_vertex : float or None
        ``nu`` of ``V/(n K^2) ~ nu L/n`` at criticality, ``r* = 4/((20 + 3
        n_L) nu)`` and ``k2* = 4/(20 + 3 n_L)`` (book appendix A).
    representation_learning : dict or None
        :func:`pdlt.learning.finite_training.finite_width_learning_size` at
        this MLP (plain MLPs with ``K1 > C_b``); None where not available.
    notes : tuple of str
        What the theory says, in words.
    """

    mlp: MLP
    K1: float
    K: np.ndarray
    Theta: np.ndarray
    chi_parallel: np.ndarray
    chi_perp: np.ndarray
    criticality_distance: np.ndarray
    xi_parallel: np.ndarray
    xi_perp: np.ndarray
    V: np.ndarray
    A: np.ndarray
    V_over_nK2: np.ndarray
    A_over_nTheta2: np.ndarray
    K_nlo: np.ndarray
    Theta_nlo: np.ndarray
    signal_depth: float
    L_over_n: float
    n_eff: float
    universality_class: str
    critical_C_b: float | None
    critical_C_W: float | None
    at_criticality: np.ndarray
    vertex_slope: float | None
    optimal_aspect_ratio: float | None
    optimal_vertex: float | None
    representation_learning: dict | None
    notes: tuple = field(default_factory=tuple)


def _n_eff(mlp):
    hidden = mlp.hidden_widths
    if not hidden:
        return math.inf
    return len(hidden) / sum(1.0 / h for h in hidden)


def _span(v):
    v = np.asarray(v, dtype=float)
    if v.size == 0:
        return "-"
    lo, hi = float(v.min()), float(v.max())
    return f"{lo:.3g}" if math.isclose(lo, hi, rel_tol=1e-3) else f"{lo:.3g} .. {hi:.3g}"


def _tolerances(tol, crit, L):
    """Absolute per-layer tolerances (C_b, C_W) for "at the critical values"."""
    if tol is None:
        eps = 1e-9
        return (np.full(L, eps * max(1.0, abs(crit.C_b))),
                np.full(L, eps * max(1.0, abs(crit.C_W))))
    tb, tw = tol
    tb = np.broadcast_to(np.nan_to_num(np.asarray(tb, dtype=float), nan=np.inf), (L,))
    tw = np.broadcast_to(np.nan_to_num(np.asarray(tw, dtype=float), nan=np.inf), (L,))
    return tb, tw


def _learning_size(mlp, K1, notes, what, first_sentence=False):
    """:func:`pdlt.learning.finite_training.finite_width_learning_size`, or None with a note.

    Warnings it raises become ``caution:`` notes (their first sentence when
    ``first_sentence``); an error becomes "``what`` not predicted: ...".
    """
    from ..learning.finite_training import finite_width_learning_size
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # (with_ rebuilds the residual specs in O(L^2): 1.6 s at depth 1e4, so only if needed)
            size = finite_width_learning_size(mlp if mlp.n_out == 1 else mlp.with_(n_out=1), K1)
    except (ValueError, FloatingPointError, np.linalg.LinAlgError,
            NotImplementedError) as exc:
        notes.append(f"{what} not predicted: {exc}")
        return None
    for w in caught:
        msg = str(w.message)
        notes.append(f"caution: {msg.split('. ')[0] if first_sentence else msg}")
    return size


def diagnose_mlp(mlp: MLP, K1: float, *, learning=True,
                 critical_tolerance=None) -> MLPDiagnosis:
    """The theory's per-layer diagnosis of ``mlp`` for an input with first-layer kernel K1.

    Parameters
    ----------
    mlp : MLP
        Per-layer ``C_b``, ``C_W`` (e.g. estimated from a model's weights),
        ``lambda_b``, ``lambda_W`` and residual ``gamma``, ``xi``.
    K1 : float
        ``K^(1) = C_b^(1) + C_W^(1) |x|^2 / n_0`` of the typical input; > 0.
    learning : bool, default True
        Also predict the size of representation learning (plain MLPs: the
        reference problem of
        :func:`pdlt.learning.finite_training.finite_width_learning_size`,
        whose order-1/n statistics run as affine recursions over all layers;
        what remains per layer is the two-input kernel flow and the
        one-variable averages, benchmarks/README.md, "Diagnose at depth: the
        reference problem without a per-layer fold"). The one-input
        statistics cost milliseconds at any depth (scalar affine recursions,
        :func:`pdlt.statistics`).
    critical_tolerance : (array_like, array_like), optional
        Absolute tolerances ``(C_b, C_W)``, scalars or per layer, within which
        a layer counts as initialized at the critical values (e.g. 4
        standard errors of estimated variances; NaN: cannot tell, counts as
        within). Default ``1e-9`` relative.

    Returns
    -------
    MLPDiagnosis

    Raises
    ------
    ValueError
        If ``K1`` is not a positive finite number or is below ``C_b^(1)``.

    Examples
    --------
    >>> import pdlt
    >>> from pdlt.theory.diagnosis import diagnose_mlp
    >>> d = diagnose_mlp(pdlt.MLP(n0=4, width=64, depth=3, C_W=2.0), K1=1.0)
    >>> [round(float(v), 12) for v in d.V_over_nK2]   # ReLU at criticality: 5 (l-1)/n
    [0.0, 0.078125, 0.15625]
    """
    from .criticality import criticality
    from .information import optimal_aspect_ratio_from_slope, optimal_vertex
    from .statistics import statistics
    from .vertex import vertex_slope

    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
    K1 = float(K1)
    if not (math.isfinite(K1) and K1 > 0):
        raise ValueError(f"K1 must be a positive finite number (the first-layer kernel); got {K1}")
    if K1 < mlp.C_b[0]:
        raise ValueError(f"K1 = {K1:g} is below C_b^(1) = {mlp.C_b[0]:g}: the input norm "
                         "|x|^2/n0 = (K1 - C_b)/C_W would be negative")
    L = mlp.depth
    notes = []
    ff = statistics(mlp, K1=K1, get=("chi_parallel", "chi_perp", "V", "G1"))
    K = np.asarray(ff.K, dtype=float)
    Theta = np.asarray(ff.Theta, dtype=float)
    cpar = np.asarray(ff.chi_parallel, dtype=float)
    cperp = np.asarray(ff.chi_perp, dtype=float)
    V = np.asarray(ff.V, dtype=float)
    G1 = np.asarray(ff.G1, dtype=float)
    fan = np.array([mlp.fan_in(l) for l in range(1, L + 1)], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        v_norm = V / (fan * K ** 2)
    A = np.full(L, np.nan)
    H1 = np.full(L, np.nan)
    try:    # residual MLPs too: one input (pdlt.theory.residual_ntk)
        nf = statistics(mlp, K1=K1, get=("A", "H1"))
        A = np.asarray(nf.A, dtype=float)
        H1 = np.asarray(nf.H1, dtype=float)
    except (ValueError, FloatingPointError, NotImplementedError) as exc:
        notes.append(f"NTK fluctuations not predicted: {exc}")
    with np.errstate(divide="ignore", invalid="ignore"):
        a_norm = A / (fan * Theta ** 2)
    dist = np.maximum(np.abs(cpar - 1.0), np.abs(cperp - 1.0))
    # the maps between layers are l -> l+1 for l < L; chi^(L) is not one of them
    logs = np.log(np.clip(cperp[:-1], np.finfo(float).tiny, None)) if L > 1 else np.zeros(0)
    total = float(np.abs(logs.sum()))
    signal_depth = math.inf if total == 0.0 else (L - 1) / total if L > 1 else math.inf
    n_eff = _n_eff(mlp)
    r = L / n_eff if math.isfinite(n_eff) else 0.0

    crit = criticality(mlp.activation)
    has_crit = crit.universality_class != "none"
    nu = r_star = k2 = None
    if has_crit:
        nu = vertex_slope(mlp.activation, C_W=crit.C_W, K_star=crit.K_star)
        r_star = optimal_aspect_ratio_from_slope(nu, mlp.n_out)
        k2 = optimal_vertex(mlp.n_out)

    # --- what it means, in words
    at_crit = np.zeros(L, dtype=bool)
    if has_crit:
        tol_b, tol_W = _tolerances(critical_tolerance, crit, L)
        at_crit = ((np.abs(np.asarray(mlp.C_W) - crit.C_W) <= tol_W)
                   & (np.abs(np.asarray(mlp.C_b) - crit.C_b) <= tol_b))
        notes.append(f"activation {crit.activation!r} ({crit.universality_class} class): critical "
                     f"initialization C_b = {crit.C_b:.6g}, C_W = {crit.C_W:.6g}")
    else:
        notes.append(f"activation {crit.activation!r} has no critical initialization "
                     f"({crit.reason}): signals change geometrically with depth at any (C_b, C_W)")
    ratio = K[-1] / K[0] if K[0] > 0 else math.nan
    scale_depth = (math.inf if L < 2 else
                   (L - 1) / abs(math.log(ratio)) if ratio > 0 and ratio != 1 else math.inf)
    if has_crit and at_crit.all():
        msg = "at criticality: (C_b, C_W) match the critical values in every layer"
        if mlp.is_residual:
            msg += " (of the plain MLP; residual layers have their own, pdlt.residual_criticality)"
        cls = crit.universality_class
        if cls == "scale-invariant":
            msg += "; the kernel stays at K^(1) in every layer"
        elif cls == "K*=0":
            msg += (f"; in the K*=0 class the kernel decays as a power law toward 0 "
                    f"(K^(1) = {K[0]:.4g} -> K^(L) = {K[-1]:.4g}) and chi_parallel, chi_perp "
                    "approach 1 only as K -> 0, not exponentially as off criticality")
        elif cls == "half-stable" and crit.K_star is not None:
            msg += (f"; half-stable class: the kernel stays at K* = {crit.K_star:.6g} only if "
                    f"K^(1) = K* (here K^(1) = {K[0]:.4g}; scale the inputs so that C_b + "
                    "C_W |x|^2/n0 = K*), otherwise it flows slowly or away")
        notes.append(msg)
    elif L > 1:
        bad = [l + 1 for l in range(L) if not at_crit[l]] if has_crit else list(range(1, L + 1))
        chi_msg = (f"chi_parallel {_span(cpar[:-1])}, chi_perp {_span(cperp[:-1])} between "
                   "layers")
        notes.append(
            ("off criticality" + (f" (C_b, C_W differ from the critical ones in layers {bad})"
                                  if has_crit else ""))
            + f": {chi_msg}. Per layer the kernel K (the signal's scale) is multiplied by "
            "about chi_parallel and the difference of two nearby inputs by chi_perp; "
            f"here K goes from {K[0]:.4g} to {K[-1]:.4g} (x{ratio:.3g}, a factor e every "
            f"{scale_depth:.3g} layers) and input differences change by e every "
            f"{signal_depth:.3g} layers, against a depth of L = {L}"
            + (": the signal's scale vanishes or explodes exponentially with depth"
               if min(scale_depth, signal_depth) < L else ""))
    if math.isfinite(n_eff):
        msg = f"L/n = {r:.3g} (n = {n_eff:.4g}, the harmonic mean of the hidden widths)"
        if r_star is not None and math.isfinite(r_star):
            msg += f"; the information-theoretic optimum at criticality is r* = {r_star:.3g}"
        notes.append(msg)
    if L > 1 and np.isfinite(v_norm[-1]):
        msg = (f"output non-Gaussianity V/(n K^2) = {v_norm[-1]:.3g} (excess kurtosis "
               f"{3 * v_norm[-1]:.3g})")
        if k2 is not None:
            msg += f"; the optimum k2* = 4/(20 + 3 n_L) = {k2:.3g}"
        notes.append(msg)
    rep = None
    if learning and not mlp.is_residual and K1 > mlp.C_b[0]:
        rep = _learning_size(mlp, K1, notes, "representation learning", first_sentence=True)
        if rep is not None:
            notes.append(
                f"representation learning: the NTK moves by "
                f"{100 * rep['representation_learning']:+.3g} % during training to convergence "
                "on a one-input reference problem (0 at infinite width)")
    return MLPDiagnosis(
        mlp=mlp, K1=K1, K=K, Theta=Theta, chi_parallel=cpar, chi_perp=cperp,
        criticality_distance=dist, xi_parallel=np.asarray(local_depth_scale(cpar)),
        xi_perp=np.asarray(local_depth_scale(cperp)), V=V, A=A, V_over_nK2=v_norm,
        A_over_nTheta2=a_norm, K_nlo=K + G1 / fan, Theta_nlo=Theta + H1 / fan,
        signal_depth=float(signal_depth), L_over_n=float(r), n_eff=float(n_eff),
        universality_class=crit.universality_class,
        critical_C_b=crit.C_b if has_crit else None, critical_C_W=crit.C_W if has_crit else None,
        at_criticality=at_crit,
        vertex_slope=None if nu is None else float(nu),
        optimal_aspect_ratio=None if r_star is None else float(r_star),
        optimal_vertex=k2, representation_learning=rep, notes=tuple(notes))


def input_kernels(mlp: MLP, x) -> np.ndarray:
    """Each input's own kernel ``K^(l)_{aa}`` at every layer, shape (L, N).

    The diagonal of the kernel recursion closes on itself (NOTATION.md:
    ``K^(l+1)_{aa} = C_b + C_W <sigma^2>_{K^(l)_{aa}}``, with the residual
    ``xi^2 [...] + gamma^2 K``), so this costs one vectorized one-variable
    Gaussian average per layer, not the N x N pair integrals of
    :func:`pdlt.flow`.

    Parameters
    ----------
    mlp : MLP
    x : array_like (N, n0)

    Returns
    -------
    ndarray (L, N)
    """
    from ..network import validate_inputs
    from .kernel import LayerHyper, kernel_update, single_input_moments

    x = validate_inputs(x, mlp.n0)
    K = mlp.C_b[0] + mlp.C_W[0] * np.einsum("ai,ai->a", x, x) / mlp.n0
    out = [K]
    for l in range(1, mlp.depth):
        ss, _, _ = single_input_moments(mlp.activation, K)
        # the kernel step of pdlt.theory.kernel on each input's own variance (no NTK)
        K = kernel_update(np.asarray(ss, dtype=float), 0.0, K, 0.0, LayerHyper.of(mlp, l))[0]
        out.append(K)
    return np.array(out)


# ---------------------------------------------------------------------------
# an architecture given by activation, depth and width (pdlt diagnose)
# ---------------------------------------------------------------------------

def _regime(r):
    # rule-of-thumb boundaries; the book's expansion parameter is r = L/n (ch. 3-4)
    if r < 0.1:
        return ("near-Gaussian", "L/n < 0.1: finite-width corrections, of order L/n, are small; "
                "the network stays close to its infinite-width kernel (little representation "
                "learning)")
    if r < 1:
        return ("effective-theory", "0.1 <= L/n < 1: 1/n corrections of order L/n matter and the "
                "effective theory computes them (four-point vertex V/(n K^2) grows linearly "
                "with L/n at criticality)")
    return ("strongly-coupled", "L/n >= 1: the expansion in L/n breaks down; fluctuations "
            "between networks are as large as the mean (reduce the depth or widen)")


def _aspect_text(r, rstar, n_out):
    if not math.isfinite(rstar):
        return "no vertex growth at this residual strength: the theory sets no depth limit"
    q = r / rstar
    if q < 0.5:
        verdict = (f"well below the information-theoretic optimum r* = {rstar:.3g}: the network "
                   "could be deeper (or narrower) and still stay in the regime where its output "
                   "neurons share the most information")
    elif q <= 2.0:
        verdict = (f"close to the information-theoretic optimum r* = {rstar:.3g} (within a "
                   "factor 2)")
    else:
        verdict = (f"above the information-theoretic optimum r* = {rstar:.3g}: fluctuations of "
                   "the whole layer start to wash out what the output neurons share; widen the "
                   "network, make it shallower, or use residual connections with gamma near 1")
    return (f"L/n = {r:.3g} is {q:.2g} x r*, {verdict} (r* = 4/((20 + 3 n_L) nu), n_L = {n_out}, "
            "book appendix A)")


def diagnose_architecture(act, depth, width, C_b=None, C_W=None, K1=1.0, residual=None, n_out=1):
    """What the theory says about an MLP of this activation, depth and width (``pdlt diagnose``).

    Returns the diagnosis as a dict (the CLI prints it, or its JSON): the
    universality class and critical initialization, the phase of the given
    (C_b, C_W), the regime of L/n against the optimal aspect ratio r*, the
    kernel at layer L, the order-1/n sizes there and the asymptotic slopes,
    with notes in words.

    ``residual`` is the residual strength gamma (xi = 1) of the equal-width
    layers; ``n_out`` the output width n_L.

    Cost: ~1.5-2 s CPU of fixed work (imports included) plus, per layer, the
    one-input kernel flows and one-variable averages and the two-input kernel
    of the reference problem of
    :func:`pdlt.learning.finite_training.finite_width_learning_size` (its
    order-1/n statistics are affine recursions over all layers): depth 10^4
    in ~2-7 s CPU for relu, tanh and gelu, ~20 s for swish, whose two-input
    kernel has no closed form (a Mehler series per layer; benchmarks/README.md,
    "Diagnose at depth: the reference problem without a per-layer fold"). The
    one-variable tables are shared by every fold of one diagnosis
    (:func:`pdlt.theory.statistics.shared_tables`). Layer loops that remain
    show a progress bar on stderr (``pdlt._progress``: on a terminal once they
    have run 5 s; ``pdlt diagnose --progress`` at once, ``--json`` never).
    """
    from .statistics import shared_tables

    # the one-variable table of the one-input flow serves every fold over it (the
    # statistics at layer L and the reference problem's training input)
    with shared_tables():
        return _diagnose_architecture(act, depth, width, C_b, C_W, K1, residual, n_out)


def _diagnose_architecture(act, depth, width, C_b, C_W, K1, residual, n_out):
    from ..network import MLP
    from .criticality import criticality
    from .phase import depth_scales
    from .statistics import flow

    if depth < 1 or width < 1:
        raise ValueError(f"depth and width (--depth, --width) must be >= 1; got {depth}, {width}")
    if int(n_out) != n_out or n_out < 1:
        raise ValueError(f"n_out (--output-width) must be a positive integer; got {n_out}")
    gamma = 0.0 if residual is None else float(residual)
    res = criticality(act)
    if residual is not None and res.universality_class != "none":
        from dataclasses import replace

        from .residual import residual_criticality

        rc = residual_criticality(act, gamma, n_out=n_out)
        res = replace(res, C_b=rc.C_b, C_W=rc.C_W)
    notes = []
    critical_init = C_b is None and C_W is None
    if res.universality_class == "none":
        if C_b is None or C_W is None:
            raise ValueError(f"activation {res.activation!r} has no critical point ({res.reason}); "
                             "give --C-b and --C-W to diagnose a chosen initialization")
        notes.append("no critical initialization exists: " + res.reason)
    C_b = res.C_b if C_b is None else C_b
    C_W = res.C_W if C_W is None else C_W
    r = depth / width
    regime, regime_text = _regime(r)
    notes.append(regime_text)
    mlp = MLP(n0=1, width=width, depth=depth, n_out=n_out, activation=act, C_b=C_b, C_W=C_W,
              gamma=gamma)
    if gamma != 0.0 and critical_init and res.is_critical:
        # convention (pdlt.theory.residual): only the residual layers get the residual
        # critical (C_b, C_W); the first and a plain output layer keep the plain ones,
        # so K^(L) = K* (not (1 - gamma^2) K*)
        from .residual import residual_layer_variances
        lb, lw = residual_layer_variances(mlp, rc)
        mlp = mlp.with_(C_b=lb, C_W=lw)
    fl = flow(mlp, K1=K1)
    last = fl[-1]
    ds = depth_scales(act, C_b, C_W, K1=K1)
    if gamma != 0.0:
        # the residual map is gamma^2 K + (1 - gamma^2) f~(K), f~ the plain map at
        # (C_b, C_W) / (1 - gamma^2): same fixed points and phase; chi = gamma^2 + (1 - gamma^2) chi~
        from dataclasses import replace

        f = 1.0 - gamma * gamma
        if f > 0:
            ds0 = depth_scales(act, C_b / f, C_W / f, K1=K1)
            cpar = gamma * gamma + f * ds0.chi_parallel
            cperp = gamma * gamma + f * ds0.chi_perp

            def _scale(c):
                return math.inf if c == 1.0 or not math.isfinite(c) else 1.0 / abs(math.log(c))
            ds = replace(ds0, C_b=C_b, C_W=C_W, chi_parallel=cpar, chi_perp=cperp,
                         xi_parallel=_scale(cpar), xi_perp=_scale(cperp))
        ds = ds0.__class__(**{**ds0.__dict__, "xi_parallel": ds0.xi_parallel / f,
                              "xi_perp": ds0.xi_perp / f}) if f > 0 else ds
    out = dict(activation=res.activation, universality_class=res.universality_class,
               critical_C_b=res.C_b, critical_C_W=res.C_W, K_star=res.K_star,
               C_b=C_b, C_W=C_W, at_criticality=bool(critical_init and res.is_critical),
               depth=depth, width=width, L_over_n=r, regime=regime, K1=K1,
               residual=gamma, output_width=n_out,
               K_L=last.K, chi_parallel_L=last.chi_parallel, chi_perp_L=last.chi_perp,
               phase=ds.phase, xi_parallel=ds.xi_parallel, xi_perp=ds.xi_perp,
               asymptotics=None if res.asymptotics is None else res.asymptotics.law)
    if gamma != 0.0 and critical_init and res.is_critical:
        out["plain_layer_C_b"], out["plain_layer_C_W"] = rc.plain_C_b, rc.plain_C_W
        notes.append(f"residual criticality: the residual layers at C_b = {rc.C_b:.4g}, "
                     f"C_W = {rc.C_W:.4g}; the first and a plain output layer keep the plain "
                     f"critical C_b = {rc.plain_C_b:.4g}, C_W = {rc.plain_C_W:.4g}, so K^(L) = K*")
    if out["at_criticality"]:
        cls = res.universality_class
        if cls == "scale-invariant":
            notes.append("scale-invariant at criticality: the kernel is the same at every layer")
        elif cls == "K*=0":
            notes.append(f"K*=0 class: the kernel decays as a power law, K^(L) = {last.K:.4g} "
                         f"at L = {depth} ({res.asymptotics.law})")
        elif cls == "half-stable":
            lo, hi = res.asymptotics.coefficients["basin"]
            inside = lo < K1 < hi or K1 == res.K_star
            notes.append(
                f"half-stable: K* = {res.K_star:.6g} attracts only from K^(1) in ({lo:.4g}, "
                f"{hi:.4g}); K^(1) = {K1:g} is {'inside' if inside else 'OUTSIDE'} it"
                + ("" if inside else f", so the kernel flows to K^(L) = {last.K:.4g} instead "
                   "(rescale the inputs)"))
    else:
        xi = min(ds.xi_parallel, ds.xi_perp) if all(
            math.isfinite(v) for v in (ds.xi_parallel, ds.xi_perp)) else math.nan
        if ds.phase == "exploding":
            notes.append("off criticality: the kernel grows without bound with depth")
        else:
            notes.append(f"off criticality ({ds.phase} phase): depth scales xi_par = "
                         f"{ds.xi_parallel:.4g}, xi_perp = {ds.xi_perp:.4g}; "
                         + ("L exceeds them: signals from the input are lost with depth"
                            if math.isfinite(xi) and depth > xi else "L is within them"))
    # order-1/n size at the last layer: V/(n K^2) from the finite-width flow,
    # and the asymptotic slope nu of V/(n K^2) ~ nu L/n at criticality
    from .statistics import statistics
    from .vertex import vertex_slope

    if K1 > 0:
        ff = statistics(mlp, K1=K1, get=("V", "G1"))
        K_L = float(ff.K[-1])
        v_norm = float(ff["V"][-1]) / (mlp.fan_in(depth) * K_L ** 2) if K_L > 0 else math.nan
        out["V_over_nK2_L"] = v_norm
        out["G1_over_nK_L"] = (float(ff["G1"][-1]) / (mlp.fan_in(depth) * K_L)
                               if K_L > 0 else math.nan)
        notes.append(f"finite-width effects at layer L: connected 4-point function "
                     f"V/(n K^2) = {v_norm:.3g} (the preactivation kurtosis excess is 3x that), "
                     f"NLO kernel shift G1/(n K) = {out['G1_over_nK_L']:.3g}")
    out["vertex_slope"] = None
    out["optimal_aspect_ratio"] = None
    if res.universality_class != "none":
        from .information import optimal_aspect_ratio_from_slope
        from .residual import residual_vertex_slope

        out["vertex_slope"] = (residual_vertex_slope(act, gamma) if gamma != 0.0
                               else vertex_slope(act, C_W=res.C_W, K_star=res.K_star))
        notes.append(f"at criticality V/(n K^2) grows like {out['vertex_slope']:.4g} L/n: "
                     f"{out['vertex_slope'] * r:.3g} for this L/n")
        out["optimal_aspect_ratio"] = optimal_aspect_ratio_from_slope(out["vertex_slope"], n_out)
        notes.append(_aspect_text(r, out["optimal_aspect_ratio"], n_out))
        # NTK statistics at criticality: their asymptotic L/n slopes (book ch. 9)
        from .ntk_criticality import SLOPE_DEPTH_POWERS, ntk_slopes

        out["ntk_slopes"] = None
        try:
            if gamma != 0.0:
                # residual: the ten statistics of pdlt.theory.residual_ntk, normalized as
                # ntk_slopes (the K*=0 class by a fit in 1/l with its stated error)
                from .residual import residual_slopes
                rs = residual_slopes(act, gamma)
                err = rs.pop("slope_error")
                for k in ("nu_V", "learning_to_fluctuation", "universality_class"):
                    rs.pop(k)                   # nu_V = out["vertex_slope"] (exact)
                out["ntk_slopes"] = rs
                if err is not None:
                    out["ntk_slope_errors"] = err
                    notes.append("residual K*=0 NTK slopes: fitted in 1/l over depths up "
                                 "to 256, each uncertain by up to "
                                 f"{max(err.values()):.2g} (pdlt.theory.residual."
                                 "residual_slopes)")
            else:
                out["ntk_slopes"] = {k: v for k, v in ntk_slopes(act).items()
                                     if k != "universality_class"}
            out["ntk_slope_depth_powers"] = SLOPE_DEPTH_POWERS[res.universality_class]
            pw = out["ntk_slope_depth_powers"]
            notes.append("NTK statistics at criticality (normalized statistic ~ slope x L^p/n): "
                         + ", ".join(f"{k} {v:.3g}" + ("" if pw.get(k, 1) == 1 else f" (p={pw[k]})")
                                     for k, v in out["ntk_slopes"].items()))
            # representation learning (one output: n E[dH z] = P + 2Q) against the NTK's
            # fluctuations (n Var H = A + 2B), both over Theta^2 and ~ L/n: their ratio is
            # depth-independent where all four grow like l (not in the half-stable class)
            sl = out["ntk_slopes"]
            out["learning_to_fluctuation"] = None
            if all(pw.get(k, 1) == 1 for k in "ABPQ") and sl["A"] + 2 * sl["B"] != 0:
                q = (sl["P"] + 2 * sl["Q"]) / (sl["A"] + 2 * sl["B"])
                out["learning_to_fluctuation"] = q
                notes.append(f"representation learning vs NTK fluctuations: (P + 2Q)/(A + 2B) "
                             f"= {q:.3g} (the dNTK-output correlation against the NTK "
                             f"variance, both ~ L/n; independent of L/n)")
        except ValueError as exc:
            notes.append(f"NTK slopes not available: {exc}")
    # what finite width does to learning, on a data-free reference problem
    out["finite_width_learning"] = None
    fl_size = (_learning_size(mlp, K1, notes, "finite-width learning")
               if gamma == 0.0 and K1 > C_b else None)
    if fl_size is not None:
        out["finite_width_learning"] = fl_size
        pc = fl_size["prediction_correction"]
        notes.append(
                "finite-width learning (one training input, an orthogonal test input, target "
                "at the output's scale, gradient descent to convergence; order 1/n): the NTK "
                f"moves by {100 * fl_size['representation_learning']:+.3g} % during training "
                "(representation learning; 0 at infinite width) and the trained prediction "
                + (f"at the test input shifts by {100 * pc:.3g} % of the target from the "
                   "infinite-width (kernel) prediction" if pc is not None else
                   "shift at the test input is " + fl_size["prediction_correction_note"]))
    out["notes"] = notes
    return out
