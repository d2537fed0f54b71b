r"""One entry point for every statistic: the theory as a fold over depth.

:func:`statistics` computes, at every layer, the statistics asked for and
only what they need. Each statistic has one layer-to-layer step written for N
inputs (one input is N = 1); the steps share one
:class:`~pdlt.theory._averages.LayerAverages` per layer, and a small
dependency table (:data:`DEPENDS`) decides which steps run. This loop is
the book's "RG flow".

======  ===========================================  ===============  =============
name    meaning (``shared/NOTATION.md``)             shape            needs
======  ===========================================  ===============  =============
K       kernel                                       (L, N, N)
Theta   frozen NTK                                   (L, N, N)
chi_*   susceptibilities per input (parallel, perp)  (L, N)
V       four-point vertex                            (L, N, N, N, N)
G1      NLO metric                                   (L, N, N)        V
A, B    NTK fluctuations                             (L, N, N, N, N)  A: V, D
D, F    NTK-preactivation cross-correlations         (L, N, N, N, N)  D: V
P, Q    dNTK                                         (L, N, N, N, N)  P: B; Q: F
R, S    ddNTKs                                       (L, N, N, N, N)  R: B, P; S: B
T, U    ddNTKs                                       (L, N, N, N, N)  T: F, Q
H1      NTK mean at order 1/n                        (L, N, N)        G1, V, D, F
kappa3  three-point function (0 in a plain MLP)      (L, N, N, N)
======  ===========================================  ===============  =============

Every order-1/n statistic at layer l is normalized by ``n_{l-1}`` and
vanishes at layer 1. With ``K1=`` (one input) every field is squeezed to
shape (L,).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings

import numpy as np

from .._progress import layers as _layers
from . import _averages
from ..network import MLP
from ._averages import (KERNEL_RANGE, LayerAverages, LayerBlock, OneVariableTable, _TableRow,
                        _scale_invariant, apply_M, is_odd, jumps_in_d1, representatives,
                        shift_error)
from .kernel import LayerHyper, first_layer_kernel, kernel_fold
from .ddntk import ddntk_R_step, ddntk_S_step, ddntk_T_step, ddntk_U_step
from .dntk import dntk_P_step, dntk_Q_step
from .ntk import ntk_A_step, ntk_B_step, ntk_D_step, ntk_F_step
from .ntk_mean import ntk_mean_step
from .residual_ntk import residual_statistics, residual_vertex_metric
from .vertex import metric_step, three_point_step, vertex_step

__all__ = ["statistics", "Statistics", "defined", "layer_step", "flow", "Flow", "LayerStatistics",
           "NAMES", "DEPENDS", "ORDER_ONE_OVER_N", "INFINITE_WIDTH"]

#: statistics of the infinite-width flow
INFINITE_WIDTH = ("K", "Theta", "chi_parallel", "chi_perp")
#: order-1/n statistics, in the order their steps run
ORDER_ONE_OVER_N = ("V", "G1", "kappa3", "A", "B", "D", "F", "P", "Q", "R", "S", "T", "U", "H1")
NAMES = INFINITE_WIDTH + ORDER_ONE_OVER_N

#: what each statistic's step reads at layer l besides itself, K and Theta
DEPENDS = {"V": (), "G1": ("V",), "kappa3": (), "A": ("V", "D"), "B": (), "D": ("V",),
           "F": (), "P": ("B",), "Q": ("F",), "R": ("B", "P"), "S": ("B",),
           "T": ("F", "Q"), "U": (), "H1": ("G1", "V", "D", "F")}

_STEPS = {"V": vertex_step, "G1": metric_step, "kappa3": three_point_step,
          "A": ntk_A_step, "B": ntk_B_step, "D": ntk_D_step, "F": ntk_F_step,
          "P": dntk_P_step, "Q": dntk_Q_step, "R": ddntk_R_step, "S": ddntk_S_step,
          "T": ddntk_T_step, "U": ddntk_U_step, "H1": ntk_mean_step}
_RANK = {"G1": 2, "H1": 2, "kappa3": 3}          # the others are rank 4

_ACCURACY = ("fast", "default", "high")


@dataclasses.dataclass(frozen=True)
class Statistics:
    """Statistics at every layer l = 1..L (index l - 1), as asked of :func:`statistics`.

    Fields not asked for (and not needed) are None. Shapes: module table;
    one input (``K1=``) squeezes every field to (L,).

    Attributes
    ----------
    mlp : MLP
    get : tuple of str
        The names asked for.
    integration_error : ndarray (L,) or None
        Estimated absolute error at each layer: the larger of the error of
        the four-variable averages that entered V's step (not propagated;
        on the graded rule: its estimate plus ``d eps sqrt(K)`` of scale)
        and, for N > 1 inputs, the estimated error of G1 and H1 from their
        fourth-derivative sources (``LayerAverages.d4_source``, propagated
        through the fold); set when V was computed. Residual MLPs at N > 1
        inputs: the propagated errors of G1 and H1 from their fourth-derivative
        sources alone (set when G1 or H1 was computed; ``error=True`` measures
        every average). :func:`statistics` warns when a G1 or H1 entry's
        estimate exceeds 1e-8 of its scale. Two distinct inputs of an
        activation whose sigma' jumps, with ``1 - rho^2 < 1e-3`` at some
        layer: also the rounding spread below, at its largest entry per layer.
        Residual MLPs, N inputs, smooth activation, three- and four-variable
        averages past their point budget (kernels above ~10): also 4 times the
        change of every statistic when each of them moves by its estimate
        (``residual_multi.perturbed_unresolved``), largest entry per layer;
        :func:`statistics` warns when an entry's exceeds 1e-8 of its scale.
    error : dict or None
        With ``statistics(..., error=True)``: name -> estimated absolute
        error of every entry of that order-1/n statistic (its shape), the
        difference of two integration rules, propagated through the fold;
        for two distinct inputs of an activation whose sigma' jumps at a kink
        (ReLU family, elu with alpha != 1) with ``1 - rho^2 < 1e-3`` at some
        layer (and a statistic asked for other than V, G1, kappa3), at least
        8 times the change of
        the whole flow when the first layer's off-diagonal K moves by
        4 ulp (the rounding of V, amplified by ``d<sigma'_a sigma'_b>/dK ~
        (1 - rho^2)^-1/2``; the closed forms of the ReLU family make the two
        rules agree exactly). :func:`statistics` warns, also without
        ``error=True``, when an entry of a statistic asked for (other than
        G1, H1) has this estimate above 1e-8 of its Cauchy-Schwarz scale.
        Residual MLPs at N inputs: at least the propagated estimate of the
        averages past their point budget (``integration_error`` above), per entry.
    """

    mlp: MLP
    get: tuple
    K: np.ndarray
    Theta: np.ndarray
    chi_parallel: np.ndarray | None = None
    chi_perp: np.ndarray | None = None
    V: np.ndarray | None = None
    G1: np.ndarray | None = None
    kappa3: np.ndarray | None = None
    A: np.ndarray | None = None
    B: np.ndarray | None = None
    D: np.ndarray | None = None
    F: np.ndarray | None = None
    P: np.ndarray | None = None
    Q: np.ndarray | None = None
    R: np.ndarray | None = None
    S: np.ndarray | None = None
    T: np.ndarray | None = None
    U: np.ndarray | None = None
    H1: np.ndarray | None = None
    integration_error: np.ndarray | None = None
    error: dict | None = None

    def __getitem__(self, name):
        if name not in NAMES:
            raise KeyError(f"unknown statistic {name!r}; choose from {', '.join(NAMES)}")
        value = getattr(self, name)
        if value is None:
            raise KeyError(f"{name} was not computed: ask for it, statistics(..., get=[{name!r}])")
        return value

    @property
    def depth(self) -> int:
        return int(np.shape(self.K)[0])

    def computed(self):
        """Names of the fields that hold values."""
        return tuple(n for n in NAMES if getattr(self, n) is not None)

    def to_dict(self) -> dict:
        """JSON-ready dict: every computed field as nested lists, layers first."""
        out = {"get": list(self.get), "depth": self.depth}
        for n in self.computed():
            out[n] = np.asarray(getattr(self, n)).tolist()
        if self.integration_error is not None:
            out["integration_error"] = self.integration_error.tolist()
        if self.error is not None:
            out["error"] = {k: np.asarray(v).tolist() for k, v in self.error.items()}
        return out

    def layers(self) -> list:
        """One dict per layer, ``{"layer": l, "K": ..., "V": ..., ...}`` (values as nested lists)."""
        names = self.computed()
        out = []
        for i in range(self.depth):
            d = {"layer": i + 1}
            for n in names:
                v = getattr(self, n)[i]
                d[n] = v.tolist() if isinstance(v, np.ndarray) else float(v)
            if self.integration_error is not None:
                d["integration_error"] = float(self.integration_error[i])
            if self.error is not None:
                d["error"] = {k: np.asarray(v[i]).tolist() for k, v in self.error.items()}
            out.append(d)
        return out


def _closure(get):
    need, todo = set(), list(get)
    while todo:
        name = todo.pop()
        if name not in need:
            need.add(name)
            todo.extend(DEPENDS.get(name, ()))
    return need


def defined(mlp, n_inputs=1):
    """The statistics :func:`statistics` can compute for ``mlp`` and this many inputs.

    Plain MLPs: all of :data:`NAMES` except R when sigma'' jumps at a kink
    (elu with alpha != 1). Residual MLPs: the same, for one input or N (one input:
    :mod:`pdlt.theory.residual_ntk`; N inputs: :mod:`pdlt.theory.residual_multi`,
    ``residual_multi_mean``, ``residual_multi_dntk``, ``residual_multi_ddi``,
    ``residual_multi_ddii``).
    """
    from ._averages import jumps_in_d2
    if not mlp.is_residual:
        return tuple(n for n in NAMES if not (n == "R" and jumps_in_d2(mlp.activation)))
    if n_inputs == 1:
        return INFINITE_WIDTH + ("V", "G1", "kappa3", "A", "B", "D", "F", "P", "Q") + (
            () if jumps_in_d2(mlp.activation) else ("R",)) + ("S", "T", "U", "H1")
    return INFINITE_WIDTH + ("V", "G1", "kappa3", "A", "B", "D", "F", "P", "Q") + (
        () if jumps_in_d2(mlp.activation) else ("R",)) + ("S", "T", "U", "H1")


def _parse_get(get, mlp, n_inputs):
    if isinstance(get, str):
        get = defined(mlp, n_inputs) if get == "all" else (get,)
    get = tuple(get)
    bad = [g for g in get if g not in NAMES]
    if bad:
        raise ValueError(f"get: unknown statistic(s) {bad}; choose from {', '.join(NAMES)} "
                         "or 'all'")
    return get


# ---------------------------------------------------------------------------
# infinite width: K, Theta, susceptibilities
# ---------------------------------------------------------------------------

# ---------------------------------------------------------------------------
# order 1/n
# ---------------------------------------------------------------------------

def _residual_multi_given(mlp, need, K, Theta, accuracy):
    """Residual MLPs, N inputs: the exact statistics of :mod:`pdlt.theory.residual_multi`
    and its siblings, G1's and H1's propagated d4 errors under :data:`_D4_KEY`."""
    from .residual_multi import (residual_ad_multi, residual_b_multi, residual_f_multi,
                                 residual_vertex_metric_multi)
    given = (residual_vertex_metric_multi(mlp, Ks=K, accuracy=accuracy)
             if need & {"V", "G1"} else {})
    d4 = {"G1": given.pop("G1_error")} if "G1" in need else {}
    if "B" in need:
        given["B"] = residual_b_multi(mlp, Ks=K, Thetas=Theta, accuracy=accuracy)
    if "F" in need:
        given["F"] = residual_f_multi(mlp, Ks=K, Thetas=Theta, accuracy=accuracy)
    if need & {"A", "D"}:
        ad = residual_ad_multi(mlp, Ks=K, Thetas=Theta, accuracy=accuracy)
        given.update({k: ad[k] for k in ("A", "D") if k in need})
    if need & {"S", "U"}:       # h41: ddNTKs of the ddII kind (residual_multi_ddii)
        from .residual_multi_ddii import residual_su_multi
        su = residual_su_multi(mlp, Ks=K, Thetas=Theta, accuracy=accuracy)
        given.update({k: su[k] for k in ("S", "U") if k in need})
    if "H1" in need:
        from .residual_multi_mean import residual_ntk_mean_multi
        given["H1"], d4["H1"] = residual_ntk_mean_multi(mlp, Ks=K, Thetas=Theta,
                                                        accuracy=accuracy, return_error=True)
    if "kappa3" in need:
        from .residual_multi_mean import residual_kappa3_multi
        given["kappa3"] = residual_kappa3_multi(mlp, Ks=K, accuracy=accuracy)
    if need & {"R", "T"}:   # h42: R, T and the forms of P, Q they read (residual_multi_ddi)
        from .residual_multi_ddi import residual_ddi_multi
        ddi = [k for k in ("P", "Q", "R", "T") if k in need]
        given.update(residual_ddi_multi(mlp, Ks=K, Thetas=Theta, accuracy=accuracy,
                                        stats=ddi))
    elif need & {"P", "Q"}:    # h40: P, Q alone (residual_multi_dntk)
        from .residual_multi_dntk import residual_dntk_multi
        given.update(residual_dntk_multi(mlp, Ks=K, Thetas=Theta, accuracy=accuracy,
                                         stats=sorted(need & {"P", "Q"})))
    given[_D4_KEY] = d4
    return given


def _residual_given(mlp, need, K, Theta, single, accuracy="default"):
    """Residual MLPs: what is derived, and the exact one-input statistics."""
    allowed = {"V", "G1"} | ({"kappa3", "A", "B", "D", "F", "P", "Q", "R", "S", "T", "U",
                              "H1"} if single else {"A", "B", "D", "F", "P", "Q", "R", "S",
                                                    "T", "U", "H1", "kappa3"})
    missing = sorted(need - allowed, key=NAMES.index)
    if missing:
        raise NotImplementedError(
            f"residual MLPs (gamma != 0 or xi != 1): {', '.join(missing)} not derived "
            + ("(one input: V, G1, kappa3, A, B, D, F, P, Q, R, S, T, U, H1 are; "
               "pdlt.theory.residual_ntk)"
               if single else "for N inputs (N-input residual MLPs: V, G1, A, B, D and F, "
                              "pdlt.theory.residual_multi; P, Q, R, T, residual_multi_ddi; "
                              "S, U, residual_multi_ddii; kappa3, H1, residual_multi_mean; "
                              "one input: V, G1, kappa3, A, B, D, F, P, Q, R, S, T, U, H1)"))
    if not single:      # exact N-input V, G1, A, B, D, F, any activation (residual_multi)
        from .residual_multi import unresolved_averages
        with unresolved_averages() as unres:
            given = _residual_multi_given(mlp, need, K, Theta, accuracy)
        given[_UNRES_KEY] = _unresolved_summary(unres)
        return given
    K1 = float(K[0, 0, 0])
    given = {}
    if need & {"V", "G1", "A", "D"}:
        vm = residual_vertex_metric(mlp, K1)
        given.update(V=vm["V"], G1=vm["G1"])
    if "kappa3" in need and is_odd(mlp.activation):
        given["kappa3"] = np.zeros(mlp.depth)
    given.update(residual_statistics(mlp, K1, sorted(
        need & {"A", "B", "D", "F", "H1", "P", "Q", "R", "S", "T", "U"}, key=NAMES.index)))
    return given


#: the key under which :func:`_residual_given` passes the summary of the residual N-input
#: averages past their point budget (:func:`_unresolved_summary`)
_UNRES_KEY = "_unresolved"
#: the largest relative estimate of those averages, times ``sqrt(K)`` (:func:`_unres_trigger`),
#: above which :func:`_finite_fold` runs the perturbed fold (their errors propagated), and the
#: propagated estimate above which :func:`statistics` warns
_UNRES_WARN = 1e-8
#: the stated error is this times the change of the perturbed fold (every unresolved
#: average moved by its estimate, all in one direction, where the true errors have either
#: sign). Measured in ``benchmarks/residual_large_k.py`` (collinear inputs, whose
#: off-diagonal entries have an exact reference; tanh, gelu, swish at K = 1.5e3 and
#: 1.5e11): the stated estimate was 13 .. 1e5 times the distance of G1 and H1
_UNRES_FACTOR = 4.0


def _unres_trigger(u):
    """A batch's ``(relative estimate, largest variance, d)`` as the relative error it may
    leave in an entry: the estimate times ``sqrt(K)``. The off-diagonal G1 and H1 of a
    smooth activation fall like ``K^-1/2`` of the averages they are sums of (tanh, collinear
    inputs, K = 1.5e11: averages right to 3e-10 of their scale, from their covariance's own
    rounding, left G1 9e-6 off; ``benchmarks/residual_large_k.py``)."""
    return u[0] * max(1.0, float(np.sqrt(u[1])))


def _unresolved_summary(unres):
    """``(relative estimate, largest variance, d)`` of the batch reported to
    :func:`pdlt.theory.residual_multi.unresolved_averages` with the largest
    :func:`_unres_trigger`, or None if none was."""
    if not unres:
        return None
    return max(unres, key=_unres_trigger)


def _warn_unresolved(act, unres, pert, out):
    """Warn where an entry's propagated estimate (``pert``) exceeds :data:`_UNRES_WARN` of
    its Cauchy-Schwarz scale."""
    worst = None
    for name, E in pert.items():
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(E > 0, E / _cs_scale(out[name]), 0.0)
        if rel.size and np.max(rel) > _UNRES_WARN and (worst is None or np.max(rel) > worst[1]):
            worst = (name, float(np.max(rel)), np.unravel_index(np.argmax(rel), rel.shape))
    if worst is None:
        return
    name, rel, at = worst
    from . import residual_multi
    four = residual_multi._FOUR
    past = (f"; {len(four.budget.past)} four-direction averages past the 2-D table's budget "
            f"of ~{four.budget.limit:g} s of modelled cost, residual_multi._FOUR_BUDGET, 10x "
            "with accuracy='high'" if four is not None and four.budget.past else "")
    warnings.warn(
        f"{name}{list(int(i) for i in at[1:])} at layer {int(at[0]) + 1} has an estimated error "
        f"of {rel:.1e} of its scale (> {_UNRES_WARN:g}): the N-input statistics of a residual "
        f"{act.name!r} MLP integrate three- and four-variable trajectory averages not resolved "
        f"to that at these kernels (product rules past their point budget{past}, or the "
        f"covariances' own float64 rounding, or R's Stein form dividing by the small "
        f"conditional variance of nearly coinciding inputs; largest variance {unres[1]:.3g}; "
        f"estimated {unres[0]:.1e} of an average's scale). Entries of one input alone "
        "(the diagonal) are resolved at any K. statistics(..., error=True) returns the "
        "estimate per entry; rescale the inputs (K^(1) = C_b + C_W |x|^2 / n0 of order 1), "
        "initialize at criticality, or take one input at a time",
        RuntimeWarning, stacklevel=4)


def _nonfinite_reason(act, K, name, l):
    """Why statistic ``name`` is not finite at layer ``l + 1`` (stepped from kernel K)."""
    if act.kinks and K.shape[0] > 1:
        d = np.sqrt(np.diag(K))
        rho = K / np.outer(d, d)
        a, b = np.triu_indices(K.shape[0], 1)
        hit = np.flatnonzero(1.0 - rho[a, b] ** 2 <= 1e-14)
        if hit.size:
            i, j = int(a[hit[0]]), int(b[hit[0]])
            return (f"{name} is not finite at layer {l + 1}: inputs {i} and {j} are exactly "
                    f"collinear at layer {l} (rho = {rho[i, j]:+.15g}) with different norms, "
                    f"where the layer step's derivative operator of {act.name!r} (a kink: "
                    "d<sigma'_a sigma'_b>/drho ~ 1/sin(theta)) is infinite, so the recursion "
                    "cannot step from them. Give the network a bias (C_b > 0) or inputs that "
                    "are not collinear (for a bias-free ReLU network, positively collinear "
                    "inputs scale: z(c x) = c z(x), so their statistics are the one-input "
                    "ones times powers of c)")
    return (f"{name} overflowed at layer {l + 1}; reduce the depth or initialize at "
            "criticality (pdlt.criticality)")


def _as_tensors(given, N):
    return {k: np.asarray(v, dtype=float).reshape((-1,) + (N,) * _RANK.get(k, 4))
            for k, v in given.items()}


def layer_step(act, K, Theta, state, names, hp, *, accuracy="default", merge=True, diag=None,
               where="", block=None, pos=None):
    """One layer of the order-1/n fold: the statistics ``names`` at layer l+1 from layer l.

    Parameters
    ----------
    act : Activation
    K, Theta : ndarray (N, N)
        Kernel and NTK at layer l.
    state : mapping
        Layer-l statistics each step in ``names`` reads (:data:`DEPENDS`),
        as (N, N) or (N, N, N, N) arrays.
    names : sequence of str
        Statistics to step (names of :data:`ORDER_ONE_OVER_N`).
    hp : LayerHyper
        Hyperparameters of layer l+1 and ``n_l / n_{l-1}``.
    accuracy : {"fast", "default", "high"}
    merge : bool
        Merge exactly coinciding inputs first (their pair averages are
        singular for kinked activations; every statistic of a repeated input
        is a copy), expanding the result back.
    diag : table row, optional
        One-variable averages at every input's variance (a row of
        :class:`~pdlt.theory._averages.OneVariableTable`, ``table.at(l - 1)``);
        restricted to the distinct inputs here. Computed if None.
    where : str
        Context for error messages.
    block, pos : LayerBlock and int, optional
        ``K`` is ``block.Ks[pos]``: the averages that depend on K only are
        evaluated for all the block's layers at once (:class:`LayerAverages`).
        Ignored when inputs are merged.

    Returns
    -------
    values : dict
        name -> array at layer l+1.
    averages : LayerAverages
        The averages the steps used (their ``quad_error`` included).
    """
    N = K.shape[0]
    reps, inv = representatives(K) if (merge and N > 1) else (np.arange(N), None)
    merged = len(reps) < N
    if merged:
        i2 = np.ix_(reps, reps)
        st = {"K": K[i2], "Theta": Theta[i2]}
        for k, v in state.items():
            st[k] = v[np.ix_(*(reps,) * v.ndim)]
    else:
        st = {"K": K, "Theta": Theta, **state}
    if diag is None:
        diag = OneVariableTable(act, np.diag(st["K"]).copy())
    elif merged:
        diag = diag.subset(reps)
    if merged:
        block = pos = None
    avg = LayerAverages(act, st["K"], diag, accuracy=accuracy, where=where, block=block,
                        pos=pos)
    out = {}
    for k in names:
        val = _STEPS[k](avg, st, hp)
        out[k] = val[np.ix_(*(inv,) * val.ndim)] if merged else val
    # the fourth-derivative sources' error estimates, over every input
    avg.d4_error_inputs = {of: (E[np.ix_(inv, inv)] if merged else E)
                           for of, E in avg.d4_error.items()}
    avg.inputs_map = (reps, inv) if merged else None
    return out, avg


#: layers whose K-only averages are evaluated together (:class:`LayerBlock`), for
#: two inputs (the reference problem of ``pdlt diagnose``); 0: layer by layer
_BLOCK_LAYERS = 128
#: one input of a plain MLP: the steps as scalar affine recursions whose coefficients
#: come from the one-variable table for all layers at once (:func:`_affine_one_input`);
#: False: the general per-layer fold
_AFFINE_ONE_INPUT = True
#: evaluate the one-variable table once per distinct kernel value (:class:`_DistinctTable`)
_DISTINCT_TABLE = True
#: two uncorrelated inputs of a plain MLP (``pdlt diagnose``'s reference problem for odd
#: activations): the steps as affine maps over all layers (:mod:`._affine_two_input`);
#: False: the general per-layer fold
_AFFINE_TWO_INPUT = True


#: within :func:`shared_tables`: kernel values -> the one-variable table computed there
_SHARED = None


@contextlib.contextmanager
def shared_tables():
    """Within the block, :class:`_DistinctTable` reuses the table of the same activation and
    kernel values (each entry is computed once, on first use, for all the block's folds).

    For callers that fold several statistics over the same kernels (the reference problem of
    ``pdlt diagnose``: its kernel flow and its order-1/n fold); the tables are dropped at the
    end of the block (at depth 1e4 the rule's nodes of one table take ~300 MB).
    """
    global _SHARED
    before, _SHARED = _SHARED, {}
    try:
        yield
    finally:
        _SHARED = before


def _kernel_fold_shared(mlp, K, Theta, rtol, chis):
    """:func:`pdlt.theory.kernel.kernel_fold`, remembered within :func:`shared_tables`.

    The flow depends on the activation, the per-layer ``C_b, C_W, lambda_b,
    lambda_W, gamma, xi`` and the first layer's K, Theta (not on the widths):
    ``pdlt diagnose`` folds the same one-input flow for the kernel with its
    susceptibilities, for V and G1 and for its reference problem's training
    input, once now. A flow with susceptibilities serves a request without.
    """
    if _SHARED is None:
        return kernel_fold(mlp, K, Theta, rtol=rtol, susceptibilities=chis)
    key = ("kernel", id(mlp.activation), mlp.depth, float(rtol), np.asarray(K).tobytes(),
           np.asarray(Theta).tobytes(), K.shape) + tuple(
        np.asarray(getattr(mlp, k), dtype=float).tobytes()
        for k in ("C_b", "C_W", "lambda_b", "lambda_W", "gamma", "xi"))
    hit = _SHARED.get(key)
    if hit is None or hit[0] is not mlp.activation or (chis and hit[1][2] is None):
        hit = (mlp.activation, kernel_fold(mlp, K, Theta, rtol=rtol, susceptibilities=chis))
        _SHARED[key] = hit
    Ks, Ths, cpar, cperp = (None if v is None else v.copy() for v in hit[1])
    return Ks, Ths, (cpar if chis else None), (cperp if chis else None)


#: kernel values per :class:`OneVariableTable` of :class:`_Chunked`
_TABLE_CHUNK = 256


class _Chunked:
    """:class:`OneVariableTable` over ``K`` (1-d) as tables of :data:`_TABLE_CHUNK` values.

    The same entries (each row is its own kernel value's average, evaluated
    the same way); the rule's nodes of a chunk (``chunk x 880``) stay in cache
    while an entry is evaluated, where one table at 10^4 values streams 70 MB
    arrays through memory for every entry (measured ~3x the CPU time at depth 1e4).
    """

    def __init__(self, act, K):
        OneVariableTable(act, K)                  # its checks and errors, on all values
        self.act = act
        self._parts = [OneVariableTable(act, K[i:i + _TABLE_CHUNK])
                       for i in range(0, max(len(K), 1), _TABLE_CHUNK)]

    def __getitem__(self, name):
        parts = [np.asarray(t[name], dtype=float) for t in self._parts]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _DistinctTable:
    """A :class:`OneVariableTable` evaluated once per distinct kernel value.

    The same entries as ``OneVariableTable(act, K)`` (each is a one-variable
    average at its own kernel value, so the values agree to the rule's
    round-off); the averages are computed at ``np.unique(K)`` and spread
    back. A critical ReLU-family network keeps ``K_aa = K^(1)`` at every
    layer, so its whole table is one kernel value instead of one per layer
    and input (an integration with kinks per value: ~12 s at depth 1e4).

    Parameters
    ----------
    act : Activation
    K : ndarray
        Kernel values, any shape (layers x inputs).
    """

    def __init__(self, act, K):
        K = np.asarray(K, dtype=float)
        values, inverse = np.unique(K, return_inverse=True)
        key = (id(act), values.tobytes())
        self._base = _SHARED.get(key) if _SHARED is not None else None
        if self._base is None or self._base.act is not act:
            self._base = _Chunked(act, values)
            if _SHARED is not None:
                _SHARED[key] = self._base
        self._inverse = inverse.reshape(K.shape)
        self.act, self.K = act, K
        self._v = {}

    def __getitem__(self, name):
        if name not in self._v:
            self._v[name] = np.asarray(self._base[name], dtype=float)[self._inverse]
        return self._v[name]

    def at(self, index):
        """A view of this table at ``K[index]`` (one layer), like ``OneVariableTable.at``."""
        return _TableRow(self, index)


def _scan(gain, src):
    """``x^(1) = 0``, ``x^(i+2) = src[i] + gain[i] x^(i+1)``: (L,) from (L - 1,) coefficients."""
    x = np.zeros(len(src) + 1)
    v = 0.0
    for i, (g, s) in enumerate(zip(gain.tolist(), src.tolist())):
        v = s + g * v
        x[i + 1] = v
    return x


#: statistics of one input of a plain MLP that :func:`_affine_one_input` folds
_AFFINE_NAMES = ("V", "G1", "B", "D", "F", "A", "P", "Q", "R", "S", "T", "U", "H1")


def _affine_one_input(mlp, table, K, Theta, run, out, errors):
    r"""Every order-1/n statistic of one input of a plain MLP, as scalar affine recursions.

    For one input each step of :data:`_STEPS` is scalar and affine in the
    statistics of layer l, with coefficients from the one-variable table at
    ``K^(l)``, ``Theta^(l)`` and the layer's hyperparameters (``shared/NOTATION.md``;
    the N-input steps of :mod:`~pdlt.theory.vertex`, :mod:`~pdlt.theory.ntk`,
    :mod:`~pdlt.theory.dntk`, :mod:`~pdlt.theory.ddntk` and
    :mod:`~pdlt.theory.ntk_mean` at N = 1, where every derivative operator
    ``M`` is its one-variable diagonal: ``M^{ss} = <(s p)'>``, ``M^{pp} =
    d<p^2>/dK``, ``G = <(s p)'>``, ``G2 = <(q p)'>``). Each statistic reads
    itself and statistics earlier in :data:`_AFFINE_NAMES` (:data:`DEPENDS`),
    so the fold is a sequence of first-order recursions
    ``x^(l+1) = c_l + a_l x^(l)``: the sources ``c_l`` and gains ``a_l`` are
    computed for all layers in one vectorized expression each, and each
    recursion is a loop over Python floats (:func:`_scan`). Depth 1e4 costs
    milliseconds instead of ~0.3 ms of numpy per statistic and layer. Equal
    to the per-layer fold to round-off (``tests/theory/test_diagnosis_fast.py``).

    Parameters
    ----------
    mlp : MLP
        Plain (``gamma = 0``, ``xi = 1``).
    table : OneVariableTable or _DistinctTable
        One-variable averages at ``K^(l)``, shape (L - 1, 1).
    K, Theta : ndarray (L,)
        The one input's kernel and NTK mean.
    run : sequence of str
        Names of :data:`_AFFINE_NAMES` to compute (with what they read).
    out : dict
        name -> zeros of shape (L, 1, 1, 1, 1) or (L, 1, 1), filled here.
    errors : ndarray (L,) or None
        The V step's integration error per layer (one input: 1e-14 of the
        four-point average times ``C_W^2``, as the general fold states it).

    Raises
    ------
    FloatingPointError
        A statistic that overflows (the first layer and name, as the general fold).
    ValueError
        R for an activation whose sigma'' jumps at a kink (the table refuses).
    """
    L = mlp.depth
    n = L - 1

    def t(name):
        return np.asarray(table[name], dtype=float).reshape(n)

    Cw = np.asarray(mlp.C_W, dtype=float)[1:L]
    lw = np.asarray(mlp.lambda_W, dtype=float)[1:L]
    widths = np.asarray(mlp.widths, dtype=float)
    r = widths[1:L] / widths[:L - 1]
    Kl, Th = np.asarray(K, dtype=float)[:n], np.asarray(Theta, dtype=float)[:n]
    ss, ssss, pp, sspp, pppp, dss = (t(k) for k in ("ss", "ssss", "pp", "sspp", "pppp", "dss"))
    si = _scale_invariant(mlp.activation) is not None
    zero = np.zeros(n)
    need_q = bool(set(run) & {"P", "Q", "R", "S", "T", "U"})
    qs, qq, qspp, qqpp = ((t(k) for k in ("qs", "qq", "qspp", "qqpp")) if need_q and not si
                          else (zero,) * 4)
    dpp = t("dpp") if set(run) & {"A", "D", "H1"} else zero
    dqp = t("dqp") if need_q else zero          # G2 = <(q p)'>
    cSS, cSP, cPP = ssss - ss * ss, sspp - ss * pp, pppp - pp * pp
    u = lw * dss + Cw * Th * dpp                # U = d<y>/dK, y = lambda_W s s + C_W Theta p p
    Phi = Cw * Th * dqp + lw * dss              # C_W Theta G2 + lambda_W G
    x = {}
    for name in _AFFINE_NAMES:
        if name not in run:
            continue
        if name == "V":
            x[name] = _scan(Cw ** 2 * r * dss * dss, Cw ** 2 * cSS)
        elif name == "G1":
            x[name] = _scan(r * Cw * dss, r * Cw * 0.125 * x["V"][:n] * t("d4ss"))
        elif name == "B":
            x[name] = _scan(r * Cw ** 2 * pp * pp, Cw ** 2 * Th * Th * pppp)
        elif name == "F":
            x[name] = _scan(r * Cw ** 2 * dss * dss, Cw ** 2 * Th * sspp)
        elif name == "U":
            x[name] = _scan(r * Cw ** 2 * pp * pp, Cw ** 2 * Th ** 3 * qqpp)
        elif name == "D":
            src = Cw * (lw * cSS + Cw * Th * cSP) + r * Cw * dss * u * x["V"][:n]
            x[name] = _scan(r * Cw ** 2 * pp * dss, src)
        elif name == "A":
            V, D = x["V"][:n], x["D"][:n]
            src = (lw * lw * cSS + 2.0 * lw * Cw * Th * cSP + Cw ** 2 * Th * Th * cPP
                   + r * (u * u * V + 2.0 * Cw * pp * u * D))
            x[name] = _scan(r * Cw ** 2 * pp * pp, src)
        elif name == "P":
            src = Cw ** 2 * Th * Th * qspp + r * Cw ** 2 * pp * qs * x["B"][:n]
            x[name] = _scan(r * Cw ** 2 * pp * dss, src)
        elif name == "Q":
            src = (Cw ** 2 * Th * Th * qspp + lw * Cw * Th * sspp
                   + r * Cw * Phi * dss * x["F"][:n])
            x[name] = _scan(r * Cw ** 2 * pp * dss, src)
        elif name == "R":
            q3 = (t("zqppp") - 3.0 * Kl * qqpp) / Kl if not si else zero
            t("q3p")                                 # refuses a jumping sigma''
            psi = Cw * Th * (dqp - qq) + lw * qs
            src = (Cw ** 2 * Th ** 3 * q3 + lw * Cw * Th * Th * qspp
                   + r * Cw * pp * (psi * x["B"][:n] + Phi * x["P"][:n]))
            x[name] = _scan(r * Cw ** 2 * pp * pp, src)
        elif name == "S":
            src = (Cw ** 2 * Th ** 3 * qqpp + lw * Cw * Th * Th * pppp
                   + r * Cw * pp * (Cw * Th * qq + lw * pp) * x["B"][:n])
            x[name] = _scan(r * Cw ** 2 * pp * pp, src)
        elif name == "T":
            phi2 = Cw ** 2 * Th * Th * qqpp + 2.0 * lw * Cw * Th * qspp + lw * lw * sspp
            src = Th * phi2 + r * (Phi * Phi * x["F"][:n] + 2.0 * Cw * pp * Phi * x["Q"][:n])
            x[name] = _scan(r * Cw ** 2 * pp * pp, src)
        elif name == "H1":
            V, G1 = x["V"][:n], x["G1"][:n]
            X = x["D"][:n] + 2.0 * x["F"][:n]
            d_ss = dss * G1 + 0.125 * V * t("d4ss")
            d_pp = dpp * G1 + 0.125 * V * t("d4pp")
            src = r * (lw * d_ss + Cw * (Th * d_pp + dpp * X))
            x[name] = _scan(r * Cw * pp, src)
    bad = [(int(np.flatnonzero(~np.isfinite(v))[0]), ORDER_ONE_OVER_N.index(k), k)
           for k, v in x.items() if not np.all(np.isfinite(v))]
    if bad:
        layer, _, name = min(bad)
        raise FloatingPointError(
            f"{name} overflowed at layer {layer + 1}; reduce the depth or initialize at "
            "criticality (pdlt.criticality)")
    for k, v in x.items():
        out[k].reshape(L)[:] = v
    if errors is not None:
        errors[1:] = 1e-14 * np.abs(ssss) * Cw ** 2


def _finite_fold(mlp, Ks, Ths, need, accuracy, warn=True, unresolved=None):
    act, L, N = mlp.activation, mlp.depth, Ks.shape[1]
    if mlp.is_residual:
        given = _residual_given(mlp, need, Ks, Ths, N == 1, accuracy)
    else:   # a plain MLP's odd cumulants vanish (flip the signs of one layer's W and b)
        given = {"kappa3": np.zeros((L,) + (N,) * 3)} if "kappa3" in need else {}
    d4given = given.pop(_D4_KEY, None)
    unres = given.pop(_UNRES_KEY, None)
    out = {k: np.zeros((L,) + (N,) * _RANK.get(k, 4)) for k in need}
    given = {k: v for k, v in given.items() if k in need}
    for k, v in _as_tensors(given, N).items():
        out[k][:] = v
    pert = None
    if (unres is not None and _unres_trigger(unres) > _UNRES_WARN
            and (warn or unresolved is not None)):
        # residual N inputs, smooth activation, averages past their point budget: the fold
        # again with each of them moved by its estimate, differenced (the estimate of every
        # entry that reads them; the diagonal and other resolved entries do not move)
        from .residual_multi import perturbed_unresolved
        with perturbed_unresolved():
            moved = _as_tensors({k: v for k, v in _residual_multi_given(
                mlp, need, Ks, Ths, accuracy).items() if k in need}, N)
        pert = {k: _UNRES_FACTOR * np.abs(moved[k] - out[k]) for k in moved}
        if unresolved is not None:
            unresolved.update(pert)
        if warn:
            _warn_unresolved(mlp.activation, unres, pert, out)
    run = [k for k in ORDER_ONE_OVER_N if k in need and k not in given]
    errors = np.zeros(L) if "V" in run else None
    if d4given:     # residual N inputs: G1's and H1's errors from their d4 sources
        errors = np.max([np.max(E.reshape(L, -1), axis=1) for E in d4given.values()], axis=0)
        if warn:
            _warn_d4(d4given, out, Ks, mlp.activation)
    if pert:
        pe = np.max([np.max(E.reshape(L, -1), axis=1) for E in pert.values()], axis=0)
        errors = pe if errors is None else np.maximum(errors, pe)
    if L == 1 or not run:
        return out, errors
    diag = np.einsum("lii->li", Ks[:L - 1])
    if np.any(diag[0] <= 0):
        raise ValueError(
            "an input has zero variance at layer 1; the finite-width statistics need "
            "K_aa > 0 (use C_b > 0 or nonzero inputs)")
    lo, hi = KERNEL_RANGE
    out_of_range = (diag < lo) | (diag > hi)
    if np.any(out_of_range):
        l, a = (int(i) for i in np.argwhere(out_of_range)[0])
        raise FloatingPointError(
            f"the kernel left the float64 range of the order-1/n statistics ({lo:g} <= K <= "
            f"{hi:g}; they scale like K^2, the NTK ones up to K^3): K = {diag[l, a]:.3g} at "
            f"layer {l + 1}{f' for input {a}' if N > 1 else ''}. Far from criticality K "
            "shrinks or grows geometrically with depth: initialize at criticality "
            "(pdlt.criticality), use fewer layers, or rescale the inputs")
    table = (_DistinctTable if _DISTINCT_TABLE else OneVariableTable)(act, diag)
    if _AFFINE_ONE_INPUT and N == 1 and not mlp.is_residual and set(run) <= set(_AFFINE_NAMES):
        _affine_one_input(mlp, table, Ks[:, 0, 0], Ths[:, 0, 0], run, out, errors)
        return out, errors
    if _AFFINE_TWO_INPUT and N == 2:
        from . import _affine_two_input as _two_input
        if _two_input.applies(mlp, Ks, run, _AFFINE_NAMES):
            with np.errstate(over="ignore", invalid="ignore"):     # overflow: raised by name
                _two_input.affine_two_input(mlp, table, Ks, Ths, run, out, errors, accuracy)
            return out, errors
    hps = [LayerHyper.of(mlp, l) for l in range(L)]
    d4err = ({k: np.zeros((L, N, N)) for k in ("G1", "H1") if k in run}
             if (errors is not None and N > 1) else None)
    d4err = d4err or None
    nb = _BLOCK_LAYERS if N == 2 else 0
    if (nb and _averages._GRADED is not None and _averages._graded_act(act)
            and np.max(np.einsum("lii->li", Ks[:L - 1])) > _averages._GRADED_K):
        # two inputs, a kernel above _GRADED_K: layer by layer, so that the four-slot
        # averages there take the graded rule (_GradedPlain; blocks call expect_nd)
        nb = 0
    block = None
    quad_rel = np.zeros(L)      # V's averages' estimated error over V's largest entry
    for l in _layers(range(1, L), f"{', '.join(run)}, {N} input{'s' if N > 1 else ''}"):
        if nb and (l - 1) % nb == 0:
            block = LayerBlock(Ks[l - 1:min(l - 1 + nb, L - 1)])     # the kernels stepped from
        state = {k: out[k][l - 1] for k in need}
        new, avg = layer_step(act, Ks[l - 1], Ths[l - 1], state, run, hps[l],
                              accuracy=accuracy, diag=table.at(l - 1),
                              where=f" at layer {l} (inputs of the flow)",
                              block=block, pos=(l - 1) % nb if nb else None)
        for k in run:
            if not np.all(np.isfinite(new[k])):
                raise FloatingPointError(_nonfinite_reason(act, Ks[l - 1], k, l))
            out[k][l] = new[k]
        if errors is not None:
            E = avg.quad_error
            scale = hps[l].C_W ** 2 * hps[l].xi ** 4
            errors[l] = (float(np.max(E)) if E is not None
                         else 1e-14 * float(np.max(np.abs(avg.quad("ssss"))))) * scale
            if "V" in out:
                quad_rel[l] = errors[l] / max(float(np.max(np.abs(out["V"][l]))), 1e-300)
        if d4err is not None:
            _d4_propagate(d4err, avg, hps[l], Ths[l - 1], l,
                          G1=out["G1"][l - 1] if "G1" in out else None)
            errors[l] = max(errors[l], *(float(np.max(v[l])) for v in d4err.values()))
    if d4err is not None and warn:
        _warn_d4(d4err, out, Ks, act)
    if warn and N > 1 and accuracy != "fast":   # "fast" states ~1e-6 (gaussian._multi)
        _warn_quad(quad_rel, act, Ks)
    return out, errors


#: V's averages' estimated error, relative to V's largest entry, above which
#: :func:`statistics` warns at "default" and "high" (the contract of issue #15) where the
#: kernel stepped from exceeds :data:`_QUAD_K`
_QUAD_WARN = 1e-8
#: factor on the graded rule's budget (:data:`pdlt.theory._averages._GRADED_BUDGET`) with
#: ``accuracy="high"``
_HIGH_BUDGET = 10.0
#: the variance above which the smooth path's point budget can leave 1e-8 short. Measured
#: (tanh, four distinct inputs, depth 2, V relative to its largest entry, estimate and
#: default - high): K = 1..10: estimate <= 2e-9, difference <= 2e-12; K = 30: 8e-7 and
#: 4e-8; K ~ 100: 1e-5 and 2e-6 (GELU, its pairs in closed form: <= 6e-10 up to 30).
#: Below it the estimate (the difference from a smaller rule) overestimates 100x and more
#: (five tanh inputs in two dimensions at K < 1.2: 9.5e-7 against a true ~1e-8), so it
#: alone would flag resolved results
_QUAD_K = 10.0


def _warn_quad(rel, act, Ks):
    """Warn when the three- and four-variable averages of a layer miss :data:`_QUAD_WARN`
    at a variance above :data:`_QUAD_K`.

    Their rules are capped in points (``pdlt.gaussian._multi``: at most
    ``min(8 x 64^d, 64^4)`` per average), so smooth activations at large variances miss
    1e-8 (tanh, four distinct inputs at first-layer K ~ 100: 2e-6 of V, 3e-5 of G1, which
    ``integration_error`` stated but nothing flagged). Named smooth activations there
    take the graded rule (:class:`pdlt.theory._averages._GradedPlain`, estimate ~1e-13)
    and stay silent, up to its budget; the warning counts the averages past it.
    """
    kmax = np.array([0.0] + [float(np.max(np.einsum("ii->i", K))) for K in Ks[:-1]])
    rel = np.where(kmax > _QUAD_K, rel, 0.0)
    g = _averages._GRADED
    capped = g.capped_rel if g is not None else 0.0
    if not np.any(rel > _QUAD_WARN) and not capped > _QUAD_WARN:
        return
    budget = ""
    if g is not None and (g.skipped or g.three_axes):
        axes = (f"; {g.three_axes} of three graded axes, ~40-60 s each" if g.three_axes
                else "")
        budget = (f"; {g.skipped + g.three_axes} of them above K = {_averages._GRADED_K:g} "
                  f"kept the capped rule ({g.skipped} past the graded rule's budget of "
                  f"~{g.budget.limit:g} s of modelled cost, pdlt.theory._averages._GRADED_BUDGET, "
                  f"10x with accuracy='high'{axes}), estimated error up to {capped:.1e} of "
                  "their Cauchy-Schwarz scale (the tensors with sigma' slots, A, D, H1, ... "
                  "read them)")
    if np.any(rel > _QUAD_WARN):
        l = int(np.argmax(rel))
        head = (f"the three- and four-variable Gaussian averages of layer {l + 1} have an "
                f"estimated error of {rel[l]:.1e} of V's largest entry (> {_QUAD_WARN:g}; "
                f"largest K = {kmax[l]:.3g} at layer {l})")
    else:
        head = (f"three- and four-variable Gaussian averages have an estimated error above "
                f"{_QUAD_WARN:g} of their scale (largest K = {np.max(kmax):.3g})")
    warnings.warn(
        f"{head}: their rules reach their point budget for {act.name!r} "
        f"at this variance{budget}. Treat the finite-width statistics of distinct inputs there as "
        "resolved to that level (Statistics.integration_error holds V's estimate; "
        "statistics(..., error=True) measures each statistic), try accuracy='high', "
        "smaller inputs (K closer to 1), or fewer distinct inputs at a time (pairs use "
        "two-variable averages, resolved at any K)", RuntimeWarning, stacklevel=4)


#: 1 - rho^2 of two distinct inputs (at a layer the steps read) below which
#: :func:`statistics` measures how the statistics of a kinked activation move when K's
#: off-diagonal moves by 4 ulp (:func:`_rounding_spread`). Their steps contract V, D and
#: G1 with ``d<sigma'_a sigma'_b>/dK ~ (1 - rho^2)^-1/2`` (A twice) and H1's fourth-derivative
#: source weighs V's entries by ``(1 - rho^2)^-3/2``, so the rounding of V's entries returns
#: amplified (relu, C_b 0.1, C_W 2, depth 4, two inputs, against the 40-digit reference of
#: ``benchmarks/relu_coinciding_reference.py``: A ~7e-17 / (1 - rho^2) of its scale,
#: 4e-11 at 1 - rho^2 = 6.7e-7, 1e-6 at 6.7e-11; H1 4e-6 absolute at 6.7e-7, 4.9 at
#: 6.7e-11, where H1_01 itself is 1.5e-5). Above it the spread is far below 1e-8 of scale.
_KINKED_NEAR = 1e-3
#: statistics whose steps do not contract with ``d<sigma'_a sigma'_b>/dK``: asked for
#: alone, they skip the spread (V is resolved at any rho, G1 has its d4 estimate)
_NO_PP_CONTRACTION = frozenset({"V", "G1", "kappa3"})
#: the stated estimate is this times the measured spread (the true distance to the
#: reference was 0.2 .. 2.5 times the spread for V, G1, D, A and H1 at 1 - rho^2 = 6.7e-7
#: .. 6.7e-11)
_SPREAD_FACTOR = 8.0
#: relative error of an entry (of its Cauchy-Schwarz scale) above which :func:`statistics`
#: warns about nearly coinciding inputs of a kinked activation
_ROUNDING_WARN = 1e-8


def _nearest_pair(Ks):
    """``(1 - rho^2, l, a, b)`` of the closest two distinct inputs over the layers ``Ks``
    (L, N, N); exactly coinciding inputs (merged by the fold) do not count."""
    d = np.einsum("lii->li", Ks)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 1.0 - Ks ** 2 / (d[:, :, None] * d[:, None, :])
    N = Ks.shape[1]
    r[:, np.arange(N), np.arange(N)] = np.inf
    r[~np.isfinite(r) | (r <= 0.0)] = np.inf
    l, a, b = (int(i) for i in np.unravel_index(np.argmin(r), r.shape))
    return float(r[l, a, b]), l, a, b


def _rounding_spread(mlp, K, Theta, rtol, need, accuracy, vals):
    """The estimated absolute error of every entry of ``vals`` from the rounding of K.

    The whole flow again (kernel, NTK and the order-1/n fold) from the first layer's
    kernel ``K`` (N, N) and NTK ``Theta`` with every off-diagonal ``K_ab`` times
    ``1 +- 4 eps``: the exact statistics move by ~eps relative, while the rounding,
    amplified by nearly coinciding kinked inputs, moves at random (the rounding of
    ``K^(l)_ab`` also moves ``1 - rho^2`` by ~eps / (1 - rho^2) relative, which Theta's
    fold inherits through ``<sigma'_a sigma'_b>``). :data:`_SPREAD_FACTOR` times the
    larger change; a fold that fails (inputs collinear to round-off) gives ``inf``.
    """
    eps = np.finfo(float).eps
    N = K.shape[0]
    off = ~np.eye(N, dtype=bool)
    spread = {k: np.zeros_like(v) for k, v in vals.items()}
    for sgn in (1.0, -1.0):
        Kp = K.copy()
        Kp[off] *= 1.0 + sgn * 4 * eps
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Ks, Ths, _, _ = _kernel_fold_shared(mlp, Kp, Theta, rtol, False)
                alt, _ = _finite_fold(mlp, Ks, Ths, need, accuracy, warn=False)
        except (FloatingPointError, ValueError):
            return {k: np.full_like(v, np.inf) for k, v in vals.items()}
        for k in spread:
            with np.errstate(invalid="ignore"):
                dk = np.abs(alt[k] - vals[k])
            spread[k] = np.maximum(spread[k], np.where(np.isfinite(dk), dk, np.inf))
    return {k: _SPREAD_FACTOR * v for k, v in spread.items()}


def _cs_scale(X):
    """Per entry of X (L, N, ..., N): ``max(|X|, prod_k |X_(i_k ... i_k)|^(1/r))``."""
    L, r = X.shape[0], X.ndim - 1
    N = X.shape[1]
    ar = np.arange(N)
    d = np.abs(X[(slice(None),) + (ar,) * r]).reshape(L, N)
    cs = np.ones(X.shape)
    for k in range(r):
        shape = [L] + [1] * r
        shape[k + 1] = N
        cs = cs * d.reshape(shape) ** (1.0 / r)
    return np.maximum(np.abs(X), cs)


def _warn_rounding(act, est, vals, names, Ks, residual=False):
    """Warn once per statistic in ``names`` with an entry's estimate above
    :data:`_ROUNDING_WARN` of its scale (:func:`_rounding_spread`)."""
    sep = _nearest_pair(Ks)
    for name in names:
        if name in ("G1", "H1") and not residual:
            # plain MLPs: warned from their fourth-derivative sources' estimate (_warn_d4),
            # which covered the reference's distance (relu, leaky) 10-25x
            continue
        E, X = est[name], vals[name]
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(E > 0, E / _cs_scale(X), 0.0)
        if not np.any(rel > _ROUNDING_WARN):
            continue
        at = np.unravel_index(np.argmax(rel), rel.shape)
        warnings.warn(
            f"{name}{list(int(i) for i in at[1:])} at layer {int(at[0]) + 1} has an estimated "
            f"error of {rel[at]:.1e} of its scale (> {_ROUNDING_WARN:g}): inputs {sep[2]} and "
            f"{sep[3]} nearly coincide (1 - rho^2 = {sep[0]:.1e} at layer {sep[1] + 1}), and "
            f"the steps of the {'kinked ' if act.kinks else ''}activation {act.name!r} "
            "amplify the rounding of V by "
            "(1 - rho^2)^-1/2 per contraction with d<sigma'_a sigma'_b>/dK (A: ~7e-17 / "
            "(1 - rho^2) of scale for relu; H1 worse, (1 - rho^2)^-3/2 in its source). The "
            "estimate is the change under a 4-ulp move of K (statistics(..., error=True) "
            "returns it). Treat that entry as unresolved, merge the two inputs if they are "
            "meant to coincide, or use inputs further apart",
            RuntimeWarning, stacklevel=3)


#: the key under which :func:`_residual_given` passes G1's and H1's propagated d4 errors
_D4_KEY = "_d4_error"

#: relative error of a G1 / H1 entry above which :func:`statistics` warns
_D4_WARN = 1e-8


def _d4_propagate(err, avg, hp, Theta, l, G1=None):
    """Carry the estimated absolute errors of G1 and H1 (``err[name]``, (L, N, N)) one layer.

    The steps are linear in G1 and H1: ``dG1' = |r C_W| (|M_ss| dG1 + dsrc_s)`` (residual:
    ``r (xi^2 C_W (...) + gamma^2 dG1)``), ``dH1' = r (|lambda_W| dDss + C_W (|Theta| dDpp
    + |PP| dH1))`` with ``dD.. = |M..| dG1 + dsrc_.``: the error of each layer's
    fourth-derivative source (``LayerAverages.d4_error``), propagated; where the operator
    ``M_pp`` carries an estimate of its own (``LayerAverages.Mpp_error``, kinked
    activations), ``dD_pp`` also gets ``|dM_pp| |G1|`` (G1: the previous layer's values).
    """
    src = getattr(avg, "d4_error_inputs", {})
    N = Theta.shape[0]
    zero = np.zeros((N, N))
    rmap = getattr(avg, "inputs_map", None)
    gprev = err["G1"][l - 1] if "G1" in err else zero
    if rmap is not None:    # merged inputs: the operators act on the distinct inputs
        reps, inv = rmap
        ex = lambda X: X[np.ix_(inv, inv)]  # noqa: E731
        g = gprev[np.ix_(reps, reps)]
        G1 = G1[np.ix_(reps, reps)] if G1 is not None else None
    else:
        ex = lambda X: X  # noqa: E731
        g = gprev
    dss = ex(shift_error(avg, "s", g)) + src.get("s", zero)
    dpp = ex(shift_error(avg, "p", g, G1)) + src.get("p", zero) if "H1" in err else zero
    if "G1" in err:
        if hp.gamma == 0.0 and hp.xi == 1.0:
            err["G1"][l] = abs(hp.ratio * hp.C_W) * dss
        else:
            err["G1"][l] = abs(hp.ratio) * (hp.xi ** 2 * abs(hp.C_W) * dss + hp.gamma ** 2 * gprev)
    if "H1" in err:
        hprev = err["H1"][l - 1]
        PP = ex(np.abs(avg.PP))
        err["H1"][l] = abs(hp.ratio) * (abs(hp.lambda_W) * dss
                                        + abs(hp.C_W) * (np.abs(Theta) * dpp + PP * hprev))


def _warn_d4(err, out, Ks, act=None):
    """Warn once per statistic with an entry's estimated error above :data:`_D4_WARN` of scale
    (the reason by ``act``: kinked activations lose it at nearly coinciding inputs; others
    where float64 does not resolve the source's terms, e.g. sin at a variance of 1e12)."""
    d = np.einsum("lii->li", Ks)
    for name, E in err.items():
        X = out[name]
        xd = np.abs(np.einsum("lii->li", X))
        scale = np.maximum(np.abs(X), np.sqrt(xd[:, :, None] * xd[:, None, :]))
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(E > 0, E / scale, 0.0)
        if not np.any(rel > _D4_WARN):
            continue
        l, a, b = (int(i) for i in np.unravel_index(np.argmax(rel), rel.shape))
        one_minus_rho = 1.0 - Ks[l - 1, a, b] / np.sqrt(d[l - 1, a] * d[l - 1, b])
        if act is None or act.kinks:
            why = ("its fourth-derivative source is ill-conditioned for nearly coinciding "
                   "inputs of a kinked activation (where sigma' jumps, the terms of its Stein "
                   "form grow like (1 - rho)^-3/2 or faster and cancel; the Hermite form, where "
                   "it is still used, loses ~(1 - rho^2)^-2; the coinciding limit is "
                   "O(1 - rho))")
            fix = (", merge the two inputs if they are meant to coincide, or use inputs "
                   "further apart")
        else:
            why = (f"its fourth-derivative source is not resolved in float64 at these kernels "
                   f"(largest variance {float(np.max(d)):.1e}: the terms of its Stein form "
                   "cancel, for nearly coinciding inputs or, e.g., a periodic activation at "
                   "large variance)")
            fix = (", or use inputs further apart" if one_minus_rho < 1e-3 else
                   ", or smaller inputs")
        warnings.warn(
            f"{name} of inputs {a} and {b} at layer {l + 1} has an estimated error of "
            f"{rel[l, a, b]:.1e} of its scale (> {_D4_WARN:g}; 1 - rho = {one_minus_rho:.1e} at "
            f"layer {l}): {why}. Treat that entry as unresolved "
            f"(Statistics.integration_error holds the estimate){fix}",
            RuntimeWarning, stacklevel=4)


# ---------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------

def statistics(mlp: MLP, x=None, *, K1=None, get=("K", "Theta"), accuracy="default",
               rtol=1e-12, error=False) -> Statistics:
    """Every statistic of the effective theory at every layer, for one or N inputs.

    Parameters
    ----------
    mlp : MLP
        Widths (unequal allowed), per-layer ``C_b``, ``C_W``, ``lambda_b``,
        ``lambda_W``, residual ``gamma``, ``xi``.
    x : array_like (N, n0), optional
        Inputs.
    K1 : float, optional
        One input given by its first-layer kernel ``K^(1)``; the input's
        ``|x|^2 / n0 = (K1 - C_b) / C_W`` then fixes ``Theta^(1)``. Give
        exactly one of ``x`` and ``K1``; with ``K1`` every field has shape (L,).
    get : str or sequence of str, default ("K", "Theta")
        Names from :data:`NAMES` (module table), or ``"all"``: every
        statistic defined for this network (:func:`defined`). K and Theta
        are always computed; what the asked statistics need is computed
        too (:data:`DEPENDS`) and returned as well.
    accuracy : {"fast", "default", "high"}
        Rule of the three- and four-variable expectations (N > 1; their
        accuracy is stated in :mod:`pdlt.gaussian._multi`). One input uses
        one-variable rules only (error < 1e-14). Plain MLPs, N >= 2 inputs,
        tanh, erf, sigmoid, softplus, swish, gelu: the two-, three- and
        four-variable averages of the four-slot tensors whose covariance has a
        variance above 10 take the nested rule graded in z instead (any
        ``accuracy``; ~1e-14 of scale at any K), up to ~600 s of modelled cost
        per call (``_averages._GRADED_BUDGET``, 10x with ``"high"``; N = 4,
        ``get="all"``: ~10 s for a layer above 10; 16 inputs in 3
        dimensions, V: ~3 min a layer); beyond it the capped rule, warned.
        Residual MLPs likewise (``residual_multi._FOUR_BUDGET``; four inputs
        at K ~ 1e3 .. 1e4: ~3 min).
    rtol : float
        Accuracy of the pair expectations of the kernel flow
        (:func:`pdlt.gaussian.pair_expectations`).
    error : bool, default False
        Also estimate the integration error of every order-1/n statistic:
        the fold runs a second time with another rule ("fast" against
        "default", "default" against "high", "high" against "default") and
        ``Statistics.error[name]`` holds ``|value - value at that rule|``
        entry by entry (the statistic's shape). It measures the three- and
        four-variable averages, the accuracy limit of N-input statistics;
        the one- and two-variable averages (all a one-input statistic uses)
        add ~1e-13 relative on top. Costs the second fold (averages on the
        graded rule are not recomputed: that fold reads them moved by their
        estimate, so the difference carries it). Two distinct
        inputs of a kinked activation closer than ``1 - rho^2 = 1e-3`` at a
        layer: at least the rounding spread (``Statistics.error``), which
        :func:`statistics` computes for them anyway where sigma' jumps (two
        more flows).

    Returns
    -------
    Statistics

    Raises
    ------
    ValueError
        Bad arguments, ``K1 < C_b``, or an input of zero variance where a
        finite-width statistic needs ``K_aa > 0``; R for an activation whose
        sigma'' jumps at a kink.
    NotImplementedError
        A statistic not derived for a residual MLP (module table).
    KernelNotPSDError, FloatingPointError
        A kernel that is not PSD, or a statistic that overflows.

    Examples
    --------
    >>> import pdlt
    >>> relu = pdlt.MLP(n0=1, width=64, depth=4, C_W=2.0, lambda_b=0.0)
    >>> s = pdlt.statistics(relu, K1=1.0, get=["V", "B"])
    >>> s.V.round(10).tolist()          # ReLU at criticality: 5 (l - 1) K^2
    [0.0, 5.0, 10.0, 15.0]
    >>> s.B.round(10).tolist()          # sum_{m<l} m^2 / 2
    [0.0, 0.5, 2.5, 7.0]
    """
    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
    if (x is None) == (K1 is None):
        raise ValueError("give exactly one of x (inputs, shape (N, n0)) and K1 (one input)")
    if accuracy not in _ACCURACY:
        raise ValueError(f"accuracy must be 'fast', 'default' or 'high'; got {accuracy!r}")
    n_inputs = 1 if K1 is not None else len(np.atleast_2d(np.asarray(x, dtype=float)))
    get = _parse_get(get, mlp, n_inputs)
    need = _closure(get)
    K, Theta = first_layer_kernel(mlp, x, K1)
    chis = bool(need & {"chi_parallel", "chi_perp"})
    Ks, Ths, cpar, cperp = _kernel_fold_shared(mlp, K, Theta, rtol, chis)
    fields = {"K": Ks, "Theta": Ths}
    if chis:
        fields.update(chi_parallel=cpar, chi_perp=cperp)
    finite = need & set(ORDER_ONE_OVER_N)
    errors, estimate = None, None
    if finite:
        unresolved = {}
        # a plain MLP's three- and four-variable averages above _averages._GRADED_K of a
        # named smooth activation: the graded rule, under a budget (both folds share it)
        # (residual: the four-direction ones, residual_multi.graded_four)
        up = _HIGH_BUDGET if accuracy == "high" else 1.0
        if Ks.shape[1] < 2:
            graded = contextlib.nullcontext()
        elif mlp.is_residual:
            from .residual_multi import _FOUR_BUDGET, graded_four
            graded = graded_four(_FOUR_BUDGET * up)
        else:
            graded = _averages.graded_plain(_averages._GRADED_BUDGET * up)
        with graded as gstate:
            vals, errors = _finite_fold(mlp, Ks, Ths, finite, accuracy,
                                        unresolved=unresolved)
            fields.update(vals)
            alt = None
            if error:
                other = {"fast": "default", "default": "high", "high": "default"}[accuracy]
                if gstate is not None and not mlp.is_residual:
                    gstate.perturb = True   # graded values moved by their estimates
                alt, _ = _finite_fold(mlp, Ks, Ths, finite, other, warn=False)
        spread = None
        L, N = Ks.shape[0], Ks.shape[1]
        if (N > 1 and L > 1 and mlp.activation.kinks and jumps_in_d1(mlp.activation)
                and finite - _NO_PP_CONTRACTION
                and _nearest_pair(Ks[:L - 1])[0] < _KINKED_NEAR):
            # nearly coinciding inputs of an activation whose sigma' jumps: the rounding of
            # K, amplified (V, G1, kappa3 alone: no d<p p>/dK contraction; G1's own estimate
            # stands; a continuous sigma' (elu) keeps d<p p>/dK bounded: no amplification)
            spread = _rounding_spread(mlp, K, Theta, rtol, finite, accuracy, vals)
            _warn_rounding(mlp.activation, spread, vals,
                           [k for k in ORDER_ONE_OVER_N if k in get], Ks[:L - 1],
                           residual=mlp.is_residual)
            if errors is not None:
                errors = np.maximum(errors, np.max([v.reshape(L, -1).max(axis=1)
                                                    for v in spread.values()], axis=0))
        if error:
            estimate = {k: np.abs(vals[k] - alt[k]) for k in vals}
            for k, v in unresolved.items():     # averages past their point budget
                estimate[k] = np.maximum(estimate[k], v)
            if spread is not None:
                estimate = {k: np.maximum(v, spread[k]) for k, v in estimate.items()}
    if K1 is not None:
        fields = {k: v.reshape(v.shape[0]) for k, v in fields.items()}
        if estimate is not None:
            estimate = {k: v.reshape(v.shape[0]) for k, v in estimate.items()}
    return Statistics(mlp=mlp, get=get, integration_error=errors, error=estimate, **fields)


# ---------------------------------------------------------------------------
# flow: the infinite-width view, one object per layer
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LayerStatistics:
    """Infinite-width statistics of one layer.

    Attributes
    ----------
    layer : int
        l, 1-based.
    K, Theta : float or ndarray (N, N)
        Kernel and frozen NTK mean (floats for one input given by ``K1``).
    chi_parallel, chi_perp : float or ndarray (N,) or None
        Susceptibilities at each input's own variance, with the C_W of the
        step they govern (layer l+1's; layer L's own at l = L).
    """

    layer: int
    K: np.ndarray | float
    Theta: np.ndarray | float
    chi_parallel: np.ndarray | float | None = None
    chi_perp: np.ndarray | float | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict (arrays as nested lists)."""
        d = {"layer": self.layer, "K": np.asarray(self.K).tolist(),
             "Theta": np.asarray(self.Theta).tolist()}
        if self.chi_parallel is not None:
            d["chi_parallel"] = np.asarray(self.chi_parallel).tolist()
            d["chi_perp"] = np.asarray(self.chi_perp).tolist()
        return d


class Flow(tuple):
    """The infinite-width statistics at every layer: a tuple of :class:`LayerStatistics`.

    ``flow.K`` stacks K over layers, shape (L,) for ``K1`` or (L, N, N);
    likewise ``flow.Theta``, ``flow.chi_parallel``, ``flow.chi_perp`` and
    ``flow["K"]``.
    """

    def __new__(cls, layers, mlp=None):
        obj = super().__new__(cls, layers)
        obj.mlp = mlp
        return obj

    def _stack(self, name):
        return np.array([getattr(s, name) for s in self])

    K = property(lambda self: self._stack("K"))
    Theta = property(lambda self: self._stack("Theta"))
    chi_parallel = property(lambda self: self._stack("chi_parallel"))
    chi_perp = property(lambda self: self._stack("chi_perp"))

    def __getitem__(self, item):
        if isinstance(item, str):
            return self._stack(item)
        return super().__getitem__(item)

    def to_dict(self) -> dict:
        return {"layers": [s.to_dict() for s in self]}


def flow(mlp: MLP, x=None, *, K1=None, rtol=1e-12, susceptibilities=True) -> Flow:
    """Infinite-width kernel and NTK at every layer (the book's RG flow).

    The infinite-width part of :func:`statistics`, one object per layer.

    Parameters
    ----------
    mlp : MLP
    x : array_like (N, n0), optional
        Inputs; K and Theta are then (N, N) per layer.
    K1 : float, optional
        One input given by its first-layer kernel; K and Theta are floats.
        Give exactly one of ``x`` and ``K1``. 10,000 layers take ~0.2 s.
    rtol : float
        Accuracy of the pair expectations (:func:`pdlt.gaussian.pair_expectations`).
    susceptibilities : bool, default True
        Also compute ``chi_parallel``, ``chi_perp`` per input (``False``
        leaves them None).

    Returns
    -------
    Flow

    Examples
    --------
    >>> import pdlt
    >>> f = pdlt.flow(pdlt.MLP(n0=1, width=10, depth=3, activation="relu", C_W=2.0), K1=1.0)
    >>> [round(s.K, 12) for s in f]
    [1.0, 1.0, 1.0]
    """
    get = ("K", "Theta") + (("chi_parallel", "chi_perp") if susceptibilities else ())
    s = statistics(mlp, x, K1=K1, get=get, rtol=rtol)
    one = K1 is not None
    conv = (lambda v: float(v)) if one else (lambda v: v)  # noqa: E731
    out = []
    for i in range(s.depth):
        chis = ((conv(s.chi_parallel[i]), conv(s.chi_perp[i])) if susceptibilities
                else (None, None))
        out.append(LayerStatistics(i + 1, conv(s.K[i]), conv(s.Theta[i]), *chis))
    return Flow(out, mlp)
