"""Leaf helpers shared by the plain (:mod:`pdlt.theory._averages`) and residual
(:mod:`pdlt.theory.residual_multi`) N-input averages at large variance: which named
activations the graded rule (:func:`pdlt.gaussian._graded.expect_graded`) takes, the
Cauchy-Schwarz scale of an average, and the estimate of :func:`pdlt.gaussian.expect_nd`'s
capped product rule. A module of its own so that neither imports the other (the residual
modules import :mod:`pdlt.theory._averages`).
"""

from __future__ import annotations

import numpy as np

from .. import gaussian
from ..gaussian._graded import table_cost
from ..gaussian._multi import _TRAP_T, _factor, axis_rules

__all__ = []

_EPS = np.finfo(float).eps

#: z-spacing of a trapezoid axis of :func:`expect_nd` (its u-spacing times the axis scale,
#: in units of the activation's feature width 1) above which its lower-rule estimate is not
#: trusted: both rules then sample the activation's transition less than once per node and
#: can agree while both miss it (tanh, two variables at K = 1.5e3, spacing 3.5: the estimate
#: 0.25-0.5x the error; at K = 1.5e11 both were 0 where the average is 1.8e-12)
_SPACING_TRUST = 2.0

#: named activations whose three- and four-variable averages above :data:`_EXACT_K` may take
#: the nested rule graded in z (:func:`pdlt.gaussian._graded.expect_graded`): smooth, one
#: transition of width ~1 at 0 (a user's callable may have any scale: it keeps
#: :func:`expect_nd` and its estimate)
_GRADED_NAMES = frozenset({"tanh", "erf", "sigmoid", "softplus", "swish", "silu", "gelu"})
def _cs_scale(fs, Kb):
    """Cauchy-Schwarz scale ``prod_k <|f_k|^d>^(1/d)`` (B,) of ``<f_1 ... f_d>`` on the
    covariances ``Kb`` (B, d, d) (one-variable rule, resolved at any K)."""
    d = Kb.shape[1]
    scale = np.ones(len(Kb))
    for k, f in enumerate(fs):
        scale *= np.asarray(gaussian.expect(lambda z, f=f: np.abs(f(z)) ** d, Kb[:, k, k]),
                            dtype=float) ** (1.0 / d)
    return scale


def _unresolved_estimate(fs, Kb, err, accuracy, growth):
    """Estimated absolute error (B,) of :func:`expect_nd`'s smooth product rule on the
    covariances ``Kb`` (B, d, d), and the Cauchy-Schwarz scale ``prod_k <|f_k|^d>^(1/d)``
    (B,) (one-variable rule, resolved at any K).

    ``err`` is :func:`expect_nd`'s own (the difference from its lower rule); where an axis'
    z-spacing ``h`` (:func:`axis_rules`' node count on the factor's axis scale) exceeds
    :data:`_SPACING_TRUST` it is at least ``exp(-pi^2 / h)`` of the scale, the trapezoid
    error of a function analytic in ``|Im z| < pi / 2`` (tanh's strip; sigmoid and swish
    reach pi, GELU is entire), 1 for ``h`` far beyond the feature.
    """
    scale = _cs_scale(fs, Kb)
    _, L = _factor(Kb)
    s = np.max(np.abs(L), axis=1)                           # axis scales (B, d)
    q = axis_rules(s, accuracy, growth)
    with np.errstate(divide="ignore", over="ignore"):
        h = np.where(q < -1, s * 2.0 * _TRAP_T / np.maximum(-q - 1, 1), 0.0)
        model = np.where(h > _SPACING_TRUST, np.exp(-np.pi ** 2 / np.maximum(h, 1e-300)), 0.0)
    return np.maximum(err, np.max(model, axis=1) * scale), scale


#: most graded axes integrated point by point (:func:`pdlt.gaussian._graded.graded_axes`:
#: conditional standard deviations above 0.1, the last one a table, the last two of four
#: one 2-D table) of a covariance the nested rule takes: ~0.1 s a covariance at two (tanh,
#: K = 1.5e3), ~0.3-1 s at two plus a 2-D table (four distinct directions), ~40-60 s at three
_GRADED_AXES = 2


def _covariance_rounding(d, var, scale):
    """Error (B,) a graded average of ``d`` variables inherits from its covariance's own
    float64 rounding, given the largest variance ``var`` (B,) and the Cauchy-Schwarz
    ``scale`` (B,): eps K in its entries, an error of that size in the conditional
    variances (z units, the activation's width 1); the average's derivative in them
    (Stein: ``<d_i d_j prod f>``) localizes a variable of variance K in a window of width
    1, ~ scale / sqrt(K): ``d eps sqrt(K)`` of scale. At K = 1.5e11 a relative 2e-16
    moved G1 by 2.5e-5 of its scale (G1 ~ K^-1/2 of the averages')."""
    return (d * _EPS * np.sqrt(var)) * scale


#: modelled cost (seconds, one core, tanh, under load, with the estimate) of a four-variable
#: average on the graded rule's 2-D table (plain and residual folds alike): each function
#: tuple (its outer values, its table where its last pair of functions is new, the
#: contraction: 0.05-0.19 s, ~0.085 s in a residual fold of four random inputs, 1312 tuples
#: of 38 covariances), and once per covariance its plan
#: (:class:`pdlt.gaussian._graded.GradedPlans`: points, rules, panels; ~0.05 s, with the
#: first tuple 0.06-0.55 s). Both times :func:`pdlt.gaussian._graded.table_weight`.
#: Deterministic: the same averages are graded on any machine
_FOUR_TUPLE_COST = 0.08
_FOUR_PLAN_COST = 0.12


class _Budget:
    """Modelled seconds of graded averages one call may spend, first come first served:
    :meth:`take` grants a key while ``spent + cost <= limit`` and charges it, once; a key
    once granted or refused stays so (the error folds of :func:`pdlt.statistics` make the
    first fold's decisions). Shared by the plain (:class:`pdlt.theory._averages._GradedPlain`)
    and residual (:func:`pdlt.theory.residual_multi.graded_four`) paths."""

    def __init__(self, limit):
        self.limit, self.spent = float(limit), 0.0
        self.taken, self.past = set(), set()
        self._shared = set()

    def take(self, key, cost, shared=None):
        """Grant ``key`` at ``cost``, plus ``shared = (key, cost)`` the first time a
        granted key names it (work its keys share: a four-variable covariance's plan,
        :class:`pdlt.gaussian._graded.GradedPlans`)."""
        if key not in self.taken and key not in self.past:
            extra = shared[1] if shared is not None and shared[0] not in self._shared else 0.0
            if self.spent + cost + extra <= self.limit:
                self.taken.add(key)
                self.spent += cost + extra
                if shared is not None:
                    self._shared.add(shared[0])
            else:
                self.past.add(key)
        return key in self.taken

    def take_four(self, keys, Kb):
        """:meth:`take` for four-variable averages ``keys`` of covariances ``Kb`` (B, 4, 4):
        each at :data:`_FOUR_TUPLE_COST`, its covariance's plan at :data:`_FOUR_PLAN_COST`
        once, both weighted by the table's ``rho`` (:func:`~pdlt.gaussian._graded.table_cost`);
        a bool array (B,)."""
        weight, plan = table_cost(Kb)
        return np.array([self.take(k, _FOUR_TUPLE_COST * w, shared=(p, _FOUR_PLAN_COST * w))
                         for k, w, p in zip(keys, weight, plan)], dtype=bool)
