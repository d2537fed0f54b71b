r"""Exact N-input V, G1, A, B, D and F of residual MLPs at order 1/n, any activation.

B (:func:`residual_b_multi`) and F (:func:`residual_f_multi`): the one-input history
recursions of :mod:`pdlt.theory.residual_ntk` with input slots (derivation sections 9, 10);
A and D (:func:`residual_ad_multi`): the field covariances below with the NTK fields
``P_m^{ab}`` added (section 11); the rest of this docstring is about V and G1.

For the residual MLP ``z' = xi [b + W sigma(z)] + gamma z`` (``shared/NOTATION.md``)
a neuron carries its own past, so its order-1/n statistics need one neuron's
*two-depth* Gaussian averages. :mod:`pdlt.theory.residual_ntk` does this for one
input; this module does it for N inputs (derivation:
``docs/derivations/residual_ntk_multi.md``):

* the shared fields are ``S_m^{ab} = (1/n_m) sum_j sigma(z_{j;a}^(m)) sigma(z_{j;b}^(m))``
  for every layer m and every unordered pair of inputs (ab); given them, a neuron's
  trajectory is Gaussian and its conditional kernel is
  ``Khat_l = sum_m rho_{lm} S_m + const`` (``rho_{lm} = a_{l,m+1}^2 C_W^(m+1)``, the
  same for every pair);
* the response of a field to an earlier one is the kernel-derivative operator
  ``M = d<sigma_a sigma_b>/dK`` (:func:`pdlt.theory.vertex.kernel_derivative_operator`)
  times ``rho``; the neuron's own term in a field and its dressing, and the field
  covariance ``Sigma``, are the one-input construction with (layer, pair) indices;
* the one-neuron covariances across depths, ``Cov(sigma_a sigma_b(z^(m)),
  sigma_c sigma_d(z^(l)))`` and ``Cov(sigma_a sigma_b(z^(m)), d_e d_f (sigma_c
  sigma_d)(z^(l)))``, are up to four-variable Gaussian averages
  (:func:`pdlt.gaussian.expect_nd`), the second derivatives by Stein's lemma
  along the part of ``z^(l)`` independent of ``z^(m)`` (no derivative of sigma is
  taken, so kinks are exact).

Then, with ``n = n_{l-1}``,

.. math::
    V^{(l)}_{(a_1a_2)(a_3a_4)} = n\,[\rho^T\Sigma\rho
        + \rho^T\tilde c(z_{a_3}z_{a_4}) + \rho^T\tilde c(z_{a_1}z_{a_2})],\qquad
    G^{1(l+1)} = \tfrac{n_l}{n_{l-1}}\big[\gamma^2 G^{1(l)}
        + \xi^2 C_W\,n_{l-1}\,\delta\langle\sigma\sigma\rangle\big],

``delta<sigma_a sigma_b> = M g + (1/8) <d^4(sigma sigma)> Var(Khat) + (own term)``.
At gamma = 0 both are the plain N-input recursions of :mod:`pdlt.theory.vertex`; for
one input they are :func:`pdlt.theory.residual_ntk.residual_vertex_metric`.

Served by :func:`pdlt.statistics` for residual MLPs and N inputs
(``get=["V", "G1", "A", "B", "D", "F"]``).
Coinciding inputs are merged first (every statistic of a repeated input is a copy).

Large kernels (smooth activations, :func:`_expect`): :func:`expect_nd`'s product rules are
capped in points, so at variances of ~100 and more they stop resolving the activation's
transition (width 1 in z, ``1/sqrt(K)`` in the rules' units). Above ``K = 10`` (``_EXACT_K``)
the one- and two-variable averages (all that an entry of one input alone reads) take the
one-variable rule and the pair engine of the one-input module, panels graded around the
transition in the activation's own variable: the diagonal equals
:mod:`pdlt.theory.residual_ntk` to 1e-13 of scale up to K = 1.5e11. The three- and
four-variable averages (entries of distinct inputs) of a named activation take the nested
rule graded in z (:func:`pdlt.gaussian._graded.expect_graded`, ~1e-14 of scale at any K)
where at most two of their axes are graded point by point (three-variable averages and
four-variable ones of collinear inputs); four distinct directions (random inputs: two
inputs at two depths), whose last two variables make the sheared 2-D table, within
:func:`graded_four`'s budget (``pdlt.statistics`` opens it; ~0.1 s a function tuple, the
covariance's points and panels shared by its tuples; a fold of two inputs asks ~36, of
four 1312); the rest keep the capped rules. Both report an estimate
(:func:`unresolved_averages`);
:func:`pdlt.statistics` propagates it (:func:`perturbed_unresolved`) and warns
(``benchmarks/residual_large_k.py``: tanh's collinear off-diagonal G1 3e-3 -> 1e-11, H1
3e-2 -> 4e-11 at K = 1.5e3). At K ~ 1e11 the covariances' own float64 rounding (eps K in
their entries) limits the off-diagonal G1 to ~1e-5 of its scale; the estimate says so.
Cost: ``O(L^2 N^4)`` four-variable averages, batched (N = 3, L = 5: a few seconds).

The field picture (one neuron's trajectory :func:`_neuron`, the fields ``S`` and ``S, P``
with their responses and covariance :func:`_sp_fields`, ``c(z z)`` :func:`_c_zz`, the
own mean shift :func:`_own_shift`, the forms of F :func:`_f_forms`) is written once here;
:mod:`pdlt.theory.residual_multi_mean` (H1, kappa3, the mixed vertex) builds on it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from .. import gaussian
from ..gaussian._exppw import ExpPiecewise, exp_family
from ..gaussian._graded import GradedPlans, expect_graded, graded_axes
from ..gaussian._multi import PiecewiseMonomial, entire_growth, expect_nd, rule_up
from ..network import MLP
from ._averages import (Integrands, LayerAverages, OneVariableTable, _quad_tensor, apply_M,
                        representatives, shift_error, third_derivative)
from .kernel import first_layer_kernel, kernel_fold
from ._capped import (_GRADED_AXES, _GRADED_NAMES, _SPACING_TRUST, _Budget,  # noqa: F401
                      _covariance_rounding, _cs_scale, _unresolved_estimate)
from .residual_ntk import _second_derivative_by_parts, _stein_lyapunov

__all__ = ["residual_vertex_metric_multi", "residual_b_multi", "residual_f_multi",
           "residual_ad_multi"]

#: the rule one up (the split path of kinked activations stops at "high")
_UP = {"fast": "default", "default": "high", "high": "high"}


#: largest variance of a covariance at which the residual modules' one- and two-variable
#: averages of a smooth non-periodic activation keep :func:`expect_nd`'s product rules.
#: Above it they take the one-variable rule (:func:`pdlt.gaussian.expect`) and the pair
#: engine (:func:`pdlt.gaussian.pair_expectations`) of the one-input module: panels graded
#: around the activation's transition in its own variable, resolved at any K. The product
#: rules are capped in points (640 per axis): tanh ``<sigma'^4>`` at K = 1.5e3 was 7 % off,
#: at 1.5e11 0 instead of 1.4e-6; ``<sigma^2 sigma^2>`` of two depths 1.7e-2 at 1.5e3.
#: Below it both agree to ~1e-14 (K = 3) .. 1e-8 (K = 30): kept, bit-identical
_EXACT_K = 10.0

#: modelled seconds of four-direction tables one :func:`graded_four` may spend (costs:
#: :data:`pdlt.theory._capped._FOUR_TUPLE_COST`, ``_FOUR_PLAN_COST``; N = 4
#: random inputs ask 1312 tuples of 38 covariances, ~110 s modelled, 178 s for the whole
#: fold with its error fold; the capped rule took longer: 366 s with 99 tables before the
#: plans); past it they keep :func:`expect_nd`, its estimate and the warning. 10x with
#: ``accuracy="high"`` (:func:`pdlt.statistics`)
_FOUR_BUDGET = 600.0
#: the state of :func:`graded_four` (None outside it: four-direction averages keep
#: :func:`expect_nd`)
_FOUR = None


class _FourBudget:
    """Within :func:`graded_four`: which four-direction averages (function tuple,
    covariance) take the 2-D table (``budget``, a :class:`pdlt.theory._capped._Budget`:
    the first ones up to it, decisions kept across the error folds of ``pdlt.statistics``),
    and the graded values (value, estimate) by function tuple and covariance: the residual
    folds ask the same average many times (two random inputs: 72 four-direction calls, 36
    distinct; four: 1312 distinct tuples of 38 covariances), the error folds all of them
    again; ``plans`` (:class:`pdlt.gaussian._graded.GradedPlans`) share each covariance's
    points and panels among its tuples."""

    def __init__(self, budget):
        self.budget = _Budget(budget)
        self.cache = {}
        self.plans = GradedPlans()

    def take(self, names, Kb):
        """Which of the covariances ``Kb`` (B, 4, 4) take the table for the functions
        ``names`` (the functions themselves, or names that identify them)."""
        return self.budget.take_four([(tuple(names), K.tobytes()) for K in Kb], Kb)

    def graded(self, fs, Kb, names=None):
        """:func:`expect_graded` with its estimate on ``Kb`` (B, d, d), each (``fs``,
        covariance) computed once (``names`` identify ``fs``: the residual folds rebuild
        some functions per call; default the functions themselves)."""
        names = list(fs) if names is None else list(names)
        keys = [(tuple(names), K.tobytes()) for K in Kb]
        new = [b for b, k in enumerate(keys) if k not in self.cache]
        if new:
            v, e = expect_graded(fs, Kb[new], return_error=True, plans=self.plans, names=names)
            for b, vb, eb in zip(new, np.atleast_1d(v), np.atleast_1d(e)):
                self.cache[keys[b]] = (float(vb), float(eb))
        return np.array([self.cache[k] for k in keys]).reshape(len(keys), 2).T


@contextlib.contextmanager
def graded_four(budget=None):
    """Within the block, four-direction averages above :data:`_EXACT_K` take the nested
    rule's 2-D table up to ``budget`` modelled seconds (default :data:`_FOUR_BUDGET`);
    yields the state (``budget.past``: the averages refused)."""
    global _FOUR
    before, _FOUR = _FOUR, _FourBudget(_FOUR_BUDGET if budget is None else budget)
    try:
        yield _FOUR
    finally:
        _FOUR = before


#: within :func:`unresolved_averages`: the list the three- and four-variable averages above
#: :data:`_EXACT_K` report their estimates to
_COLLECT = None
#: within :func:`perturbed_unresolved`: those averages return their value plus their
#: estimate (the error fold of ``pdlt.statistics(..., error=True)``)
_PERTURB = False


@contextlib.contextmanager
def unresolved_averages():
    """Within the block, the residual modules report the three- and four-variable averages
    of a smooth activation at a variance above :data:`_EXACT_K`, where :func:`expect_nd`'s
    point budget binds: the yielded list gets one ``(relative estimate, largest variance,
    d)`` per batch, largest over the batch (:func:`_unresolved_estimate`)."""
    global _COLLECT
    before, _COLLECT = _COLLECT, []
    try:
        yield _COLLECT
    finally:
        _COLLECT = before


@contextlib.contextmanager
def perturbed_unresolved():
    """Within the block, every average that :func:`unresolved_averages` would report returns
    its value plus its estimated absolute error: a fold run so, differenced with the plain
    one, propagates those errors through the statistics' own formulas (entries that do not
    read them, e.g. the diagonal, do not move)."""
    global _PERTURB
    before, _PERTURB = _PERTURB, True
    try:
        yield
    finally:
        _PERTURB = before


def _plain_smooth(act, fs):
    """True where the averages of ``fs`` go through the smooth product rule of
    :func:`expect_nd` (no kinks, no period, no exact piecewise or exponential forms)."""
    return (not act.kinks and getattr(act, "period", None) is None
            and not any(isinstance(f, (PiecewiseMonomial, ExpPiecewise)) for f in fs))


def _expect(act, fs, cov, *, accuracy, names=None, **kw):
    """:func:`expect_nd` for the residual modules: ``<f_1(z_1) ... f_d(z_d)>`` over a batch
    of covariances ``cov`` (B, d, d) (or (d, d)), values of shape (B,) (or scalar).

    A smooth non-periodic activation's one- and two-variable averages at a variance above
    :data:`_EXACT_K` take the one-variable rule and the pair engine (resolved at any K);
    its three- and four-variable ones there go through :func:`_expect_many` (the nested
    rule graded in z where affordable) and report their estimate to
    :func:`unresolved_averages` and, within :func:`perturbed_unresolved`, return the
    value plus the estimate. Everything else is :func:`expect_nd` as called. ``names``
    (optional, one hashable per function: equal names, equal functions) identify ``fs``
    for :func:`graded_four`'s cache where the caller rebuilds them per call.
    """
    fs = list(fs)
    d = len(fs)
    cov = np.asarray(cov, dtype=float)
    if not _plain_smooth(act, fs):
        return expect_nd(fs, cov, accuracy=accuracy, **kw)
    Kb = cov.reshape(-1, d, d)
    var = np.max(np.einsum("bii->bi", Kb), axis=1)
    big = var > _EXACT_K
    if not np.any(big):
        return expect_nd(fs, cov, accuracy=accuracy, **kw)
    if d >= 3:
        return _expect_many(act, fs, cov, Kb, var, big, accuracy=accuracy, names=names, **kw)
    out = np.empty(len(Kb))
    if np.any(~big):
        out[~big] = np.atleast_1d(expect_nd(fs, Kb[~big], accuracy=accuracy, **kw))
    if d == 1:
        out[big] = gaussian.expect(fs[0], Kb[big, 0, 0])
    else:
        sh = Integrands(act, f=fs[0], g=fs[1])
        for b in np.flatnonzero(big):
            out[b] = gaussian.pair_expectations(sh, Kb[b], [("f", "g")], rtol=1e-13)[
                ("f", "g")][0, 1]
    return out.reshape(cov.shape[:-2])


def _expect_many(act, fs, cov, Kb, var, big, *, accuracy, names=None, **kw):
    """:func:`_expect`'s three- and four-variable averages, some variance above
    :data:`_EXACT_K`.

    Covariances at most :data:`_EXACT_K` keep :func:`expect_nd` (bit-identical). Above it,
    a named activation's averages of at most :data:`_GRADED_AXES` graded axes integrated
    point by point (:func:`pdlt.gaussian._graded.graded_axes`: conditional standard
    deviations above 0.1, largest first, the last a table, the last two of four distinct
    directions one 2-D table, within :func:`graded_four`'s budget; a collinear pair of
    inputs at one depth counts once) take the nested rule graded in z
    (:func:`pdlt.gaussian._graded.expect_graded`, resolved at any K; estimate: its
    lower-rule difference plus the covariance's rounding, ``d eps sqrt(K)`` of scale); the
    rest (four distinct directions past the budget or outside :func:`graded_four`) keep
    :func:`expect_nd` and its estimate
    (:func:`_unresolved_estimate`). Both report to :func:`unresolved_averages` and move
    within :func:`perturbed_unresolved`.
    """
    d = len(fs)
    graded = np.zeros(len(Kb), dtype=bool)
    if act.spec is not None and act.spec[0] in _GRADED_NAMES:
        ok = graded_axes(Kb[big], table2=False) <= _GRADED_AXES
        if d == 4 and _FOUR is not None:            # four directions: the 2-D table, budgeted
            four = np.flatnonzero(~ok)
            four = four[graded_axes(Kb[big][four], table2=True) <= _GRADED_AXES]
            ok[four] = _FOUR.take(names or fs, Kb[big][four])
        graded[big] = ok
    want = _COLLECT is not None or _PERTURB
    val = np.empty(len(Kb))
    est = np.zeros(len(Kb))
    rest = ~graded
    if np.any(rest):
        if np.all(rest) and not want:
            return expect_nd(fs, cov, accuracy=accuracy, **kw)
        if want:
            v, e = expect_nd(fs, Kb[rest], accuracy=accuracy, return_error=True, **kw)
        else:
            v, e = expect_nd(fs, Kb[rest], accuracy=accuracy, **kw), None
        val[rest] = np.atleast_1d(v)
        cap = rest & big
        if want and np.any(cap):
            est[cap] = _unresolved_estimate(fs, Kb[cap], np.atleast_1d(e)[big[rest]], accuracy,
                                            kw.get("growth"))[0]
    if np.any(graded) and _FOUR is not None:          # within pdlt.statistics: once each
        val[graded], est[graded] = _FOUR.graded(fs, Kb[graded], names)
    elif np.any(graded):
        out = expect_graded(fs, Kb[graded], return_error=want)
        val[graded], est[graded] = (out if want else (out, 0.0))
    if want:
        scale = _cs_scale(fs, Kb[big])
        est[graded] += _covariance_rounding(d, var[graded], scale[graded[big]])
        if _COLLECT is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(scale > 0, est[big] / scale, np.where(est[big] > 0, np.inf, 0.0))
            _COLLECT.append((float(np.max(rel)), float(np.max(var[big])), d))
        if _PERTURB:
            val[big] += est[big]
    return val.reshape(cov.shape[:-2])


def _rule(accuracy, act, d):
    """Rule of the residual modules' d-variable averages at ``accuracy``: one level up.

    Their integrands (merged powers such as ``sigma^2 sigma'^2`` over a trajectory, at two
    depths) converge slower than the plain tensors'. Measured against every rule two
    levels up (tanh, depth 3-4, gamma 0.6, xi 0.8, first-layer variance ~1.1, relative to
    the largest entry): four variables at "default" left A 2e-8, Q 3e-8, H1 7e-8 (N = 2)
    and A 3e-8, H1 1e-7 (N = 4); one level up 4e-12..1e-10, at ~1.6x the cost. Kinked
    activations: two and three variables one up to "high" at most (the split path's top),
    four at ``accuracy`` itself.
    """
    if act.kinks:
        return _UP[accuracy] if d <= 3 else accuracy
    return rule_up(accuracy)


def residual_vertex_metric_multi(mlp: MLP, x=None, *, Ks=None, accuracy="default") -> dict:
    """Exact N-input V and G1 of a residual MLP at every layer.

    Parameters
    ----------
    mlp : MLP
        Any activation, per-layer ``gamma``, ``xi`` (unequal widths only where
        ``gamma = 0``).
    x : array_like (N, n0), optional
        Inputs.
    Ks : ndarray (L, N, N), optional
        The infinite-width kernel at every layer instead of ``x`` (what
        :func:`pdlt.statistics` has already computed). Give exactly one.
    accuracy : {"fast", "default", "high"}
        Rule of the three- and four-variable averages
        (:func:`pdlt.gaussian.expect_nd`).

    Returns
    -------
    dict
        ``{"V": ndarray (L, N, N, N, N), "G1": ndarray (L, N, N)}``, normalized by
        ``n_{l-1}`` (``V[l, a1, a2, a3, a4] = V_{(a1a2)(a3a4)}``), and
        ``"G1_error"`` (L, N, N): G1's estimated absolute error from its
        fourth-derivative sources (ill-conditioned for nearly coinciding inputs of
        an activation without the Stein form), propagated layer by layer; the
        other averages' errors are not in it (``pdlt.statistics(..., error=True)``
        measures them).

    Raises
    ------
    ValueError
        Bad arguments, or an input of zero variance.
    FloatingPointError
        A statistic that overflowed.

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.theory.residual_multi import residual_vertex_metric_multi
    >>> m = pdlt.MLP(n0=2, width=8, depth=3, activation="relu", C_W=1.5, gamma=0.5)
    >>> out = residual_vertex_metric_multi(m, np.array([[1.0, 0.0], [0.6, 0.8]]))
    >>> out["V"].shape, out["G1"].shape
    ((3, 2, 2, 2, 2), (3, 2, 2))
    """
    return _ntk_multi(mlp, x, Ks, None, accuracy,
                      lambda m, K, _, acc: _vertex_metric_multi(m, K, acc), thetas=False)


# ---------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------


class _TrajectoryAverages(LayerAverages):
    """:class:`LayerAverages` whose four-point tensors (``quad``) at a variance above
    :data:`_EXACT_K` go through :func:`_expect` (smooth non-periodic activations, N > 1):
    the coinciding slots' one- and two-variable averages resolved at any K, the others by
    :func:`_expect_many` (reported to :func:`unresolved_averages`, moved within
    :func:`perturbed_unresolved`).
    Elsewhere the same tensors as :class:`LayerAverages`."""

    def quad(self, slots):
        if (self.N == 1 or not _plain_smooth(self.act, [])
                or float(np.max(np.diag(self.K))) <= _EXACT_K):
            return super().quad(slots)
        act, K = self.act, self.K

        def nd(name, fs, I, *, kinks=(), period=None, accuracy="default", growth=None, **_):
            # name = ("quad", slots per variable): identifies fs, rebuilt on every call
            return np.atleast_1d(_expect(act, fs, K[I[:, :, None], I[:, None, :]],
                                         accuracy=accuracy, kinks=kinks, growth=growth,
                                         names=[(name[0], k) for k in name[1]]))
        # not cached: the perturbed fold must see its own values
        return _quad_tensor(act, K, slots, self.accuracy, None, nd)


def _layer_tables(mlp, Ks, accuracy):
    """Each input's variance (L, N) and the same-depth averages of layers 1..L-1.

    Raises a ValueError naming the fix where an input has zero variance.
    """
    L = Ks.shape[0]
    diag = np.einsum("lii->li", Ks)
    if np.any(diag[:L - 1] <= 0):
        raise ValueError("an input has zero variance; the finite-width statistics need "
                         "K_aa > 0 (use C_b > 0 or nonzero inputs)")
    avg = [_TrajectoryAverages(mlp.activation, Ks[m],
                               OneVariableTable(mlp.activation, diag[m].copy()),
                         accuracy=accuracy) for m in range(L - 1)]
    return diag, avg


def _coefficients(mlp):
    """``a`` (L, L): ``z^(l) = sum_q a[l, q] w_q`` with independent increments ``w_q``."""
    L = mlp.depth
    a = np.zeros((L, L))
    a[0, 0] = 1.0
    for l in range(1, L):
        a[l, :l] = mlp.gamma[l] * a[l - 1, :l]
        a[l, l] = mlp.xi[l]
    return a


def _pairs(N):
    P = [(i, j) for i in range(N) for j in range(i, N)]
    idx = np.empty((N, N), dtype=int)
    for k, (i, j) in enumerate(P):
        idx[i, j] = idx[j, i] = k
    return P, idx


def _m_matrix(avg, P):
    """``Mop[p, p'] = d<sigma sigma_p>/dK_{p'}`` (symmetric change of the entry p')."""
    return _m_matrix_op(avg.Mss, avg.N, P)


def _m_matrix_op(op, N, P):
    """:func:`_m_matrix` for any derivative operator ``op`` (e.g. ``d<sigma' sigma'>/dK``)."""
    out = np.empty((len(P), len(P)))
    pi = np.array([i for i, _ in P]), np.array([j for _, j in P])
    for k, (e, f) in enumerate(P):
        E = np.zeros((N, N))
        E[e, f] = E[f, e] = 1.0
        out[:, k] = apply_M(op, E)[pi]
    return out


# ---------------------------------------------------------------------------
# the field picture shared by every N-input statistic (here and in residual_multi_mean)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Neuron:
    """One neuron's Gaussian trajectory over depths at N distinct inputs (infinite width).

    Attributes
    ----------
    avg : list of LayerAverages
        The same-depth averages of layers 1..L-1 (:func:`_layer_tables`).
    P : list of (int, int)
        The M = N (N + 1) / 2 unordered input pairs; ``pidx`` (N, N) their index,
        ``pa``, ``pb`` (M,) their inputs.
    a : ndarray (L, L)
        :func:`_coefficients`.
    varw : ndarray (L, N, N)
        Covariance of the independent increments ``w_q``.
    C : ndarray (L, L, N, N)
        ``C[l, m] = Cov(z^(l), z^(m))``.
    rho : ndarray (L, L - 1)
        Response of ``Khat_l`` to the field ``S_m`` (every pair).
    proj : ndarray (L, N, N)
        ``proj[q]`` (q >= 1): the orthogonal projector onto the range of ``varw[q]``.
        The bilinear forms of F, P, Q, R, T carry the increments as ``varw^+ w_q``
        (the conditioning ``E[W | w] = c sigma^T varw^+ w``), whose averages with
        anything are ``proj`` where the raw increments' carry ``varw``, so neither
        ``varw`` nor ``varw^+`` appears (``varw`` is nearly singular for nearly
        coinciding inputs: through it the forms' quadrature errors were amplified by
        its condition number squared). ``proj[0] = varw[0]``: ``U_0 = z^(1)`` enters
        raw (no form is conditioned on it).
    """

    avg: list
    P: list
    pidx: np.ndarray
    pa: np.ndarray
    pb: np.ndarray
    a: np.ndarray
    varw: np.ndarray
    C: np.ndarray
    rho: np.ndarray
    proj: np.ndarray

    @property
    def M(self):
        """The number of input pairs."""
        return len(self.P)

    @property
    def nf(self):
        """The number of field layers ``S_m``, m = 0..L-2."""
        return len(self.rho) - 1



def _gather(C, depths, inputs):
    """Covariances ``(B, d, d)`` of the variables ``z_{inputs[b, i]}^(depths[b, i])`` of one
    neuron, from ``C[l, m] = Cov(z^(l), z^(m))`` (L, L, N, N); ``depths``, ``inputs``
    integer arrays (B, d)."""
    dep, ins = np.asarray(depths, dtype=int), np.asarray(inputs, dtype=int)
    return C[dep[:, :, None], dep[:, None, :], ins[:, :, None], ins[:, None, :]]


def _neuron(mlp, Ks, accuracy) -> _Neuron:
    """:class:`_Neuron` of ``mlp`` at the kernels ``Ks`` (L, N, N), L >= 2."""
    L, N = Ks.shape[0], Ks.shape[1]
    _, avg = _layer_tables(mlp, Ks, accuracy)
    P, pidx = _pairs(N)
    a = _coefficients(mlp)
    CW, Cb = np.asarray(mlp.C_W, float), np.asarray(mlp.C_b, float)
    varw = np.empty((L, N, N))
    varw[0] = Ks[0]
    for q in range(1, L):
        varw[q] = Cb[q] + CW[q] * avg[q - 1].S
    C = np.einsum("lq,mq,qab->lmab", a, a, varw)
    rho = np.zeros((L, L - 1))
    for l in range(L):
        rho[l, :l] = a[l, 1:l + 1] ** 2 * CW[1:l + 1]
    return _Neuron(avg=avg, P=P, pidx=pidx, pa=np.array([i for i, _ in P]),
                   pb=np.array([j for _, j in P]), a=a, varw=varw, C=C, rho=rho,
                   proj=np.stack([varw[0]] + [_projector(v) for v in varw[1:]]))


def _projector(G, rtol=1e-12):
    """The orthogonal projector onto the range of the symmetric PSD matrix ``G``
    (eigenvalues below ``rtol`` of the largest count as zero: the round-off of an exactly
    singular covariance; a nonsingular ``G`` gives the identity to round-off)."""
    lam, V = np.linalg.eigh(G)
    keep = lam > rtol * max(float(lam[-1]), 1e-300)
    return V[:, keep] @ V[:, keep].T


def _s_response(nr):
    """``R`` (nf M, nf M): the response of the fields ``S_m`` to the earlier ``S_j``."""
    M, nf = nr.M, nr.nf
    R = np.zeros((nf * M, nf * M))
    for m in range(nf):
        Mop = _m_matrix(nr.avg[m], nr.P)
        for j in range(m):
            R[m * M:(m + 1) * M, j * M:(j + 1) * M] = nr.rho[m, j] * Mop
    return R


def _s_own(nr):
    """The one-depth blocks of the fields' own covariance (nf M, nf M), other blocks 0."""
    M, nf, pa, pb = nr.M, nr.nf, nr.pa, nr.pb
    own = np.zeros((nf * M, nf * M))
    for m in range(nf):
        sl = slice(m * M, (m + 1) * M)
        Q4, S = nr.avg[m].quad("ssss"), nr.avg[m].S
        own[sl, sl] = Q4[pa[:, None], pb[:, None], pa[None, :], pb[None, :]] - np.outer(
            S[pa, pb], S[pa, pb])
    return own


def _field_widths(mlp, nr, copies=1):
    """``nw`` (copies nf M,): the width ``n_{m+1}`` of each field's layer."""
    nw = np.repeat(np.array([mlp.widths[m + 1] for m in range(nr.nf)], float), nr.M)
    return np.tile(nw, copies) if copies > 1 else nw


def _dressed(R, own_n):
    """``(dress, Sigma)``: ``(1 - R)^-1`` and the field covariance from the own one
    ``own_n`` (divided by the widths)."""
    dress = np.linalg.inv(np.eye(len(R)) - R)
    ctil = own_n @ dress.T
    return dress, _stein_lyapunov(R, own_n + ctil @ R.T + R @ ctil.T)


def _c_zz(nr, l, nw, Th=None, upto=None):
    """(M, F): ``c(z_a z_b at layer l)``, the neuron's own covariance with every field
    ``m < upto`` (default all): ``2 M_m[sym(C_lm[a] C_lm[b])] / n_m`` on ``S_m`` and, given
    ``Th`` (L, M), ``2 M^pp_m[.] Theta_m / n_m`` on ``P_m`` (F = 2 nf M)."""
    M, nf, C, P, pa, pb = nr.M, nr.nf, nr.C, nr.P, nr.pa, nr.pb
    c = np.zeros((M, len(nw)))
    for m in range(nf if upto is None else min(upto, nf)):
        if not np.any(C[l, m] != 0.0):
            continue
        for k, (a1, a2) in enumerate(P):
            X = np.outer(C[l, m][a1], C[l, m][a2])
            X = 0.5 * (X + X.T)
            c[k, m * M:(m + 1) * M] = 2.0 * apply_M(nr.avg[m].Mss, X)[pa, pb]
            if Th is not None:
                c[k, (nf + m) * M:(nf + m + 1) * M] = (
                    2.0 * apply_M(nr.avg[m].Mpp, X)[pa, pb] * Th[m])
    return c / nw[None, :]


@dataclass(frozen=True)
class _SPFields:
    """The shared fields ``S_{m;p}`` (at ``m M + p``) and ``P_{m;p}`` (at ``(nf + m) M + p``)
    of A, D and H1 (derivation section 11), F = 2 nf M of them.

    Attributes
    ----------
    Th : ndarray (L, M)
        The NTK at every layer and pair.
    Sv, PPv : list of ndarray (M,)
        ``<sigma sigma>``, ``<sigma' sigma'>`` of layers 1..L-1; ``Mss``, ``Mpp`` (list of
        (M, M)) their responses to the kernel.
    H : ndarray (L, M, F)
        ``H[l]``: the response of ``H^(l)_p`` (the neuron's NTK mean given the fields).
    R, own : ndarray (F, F)
        The fields' responses and own covariance (unnormalized); ``kt``: the two-depth
        averages ``{(kind, kind, m, j): (M, M)}`` it used.
    nw : ndarray (F,)
        Each field's width; ``dress = (1 - R)^-1``, ``Sig`` the field covariance (F, F).
    """

    Th: np.ndarray
    Sv: list
    PPv: list
    Mss: list
    Mpp: list
    H: np.ndarray
    R: np.ndarray
    own: np.ndarray
    kt: dict
    nw: np.ndarray
    dress: np.ndarray
    Sig: np.ndarray


def _sp_fields(mlp, nr, Ths, accuracy) -> _SPFields:
    """:class:`_SPFields` of ``mlp`` (``Ths`` (L, N, N) the NTK at every layer)."""
    act, avg, P, M, nf, C, rho, pa, pb = (mlp.activation, nr.avg, nr.P, nr.M, nr.nf, nr.C,
                                          nr.rho, nr.pa, nr.pb)
    L, N = len(rho), len(nr.pidx)
    CW = np.asarray(mlp.C_W, float)
    lW, xi, g = (np.asarray(v, float) for v in (mlp.lambda_W, mlp.xi, mlp.gamma))
    b = np.zeros((L, L))                          # weight of layer q's NTK increment in H^(l)
    for l in range(L):
        b[l, l] = 1.0
        b[l, :l] = b[l - 1, :l] * g[l] ** 2 if l else 0.0
    F = 2 * nf * M

    def Sx(m):
        return slice(m * M, (m + 1) * M)

    def Px(m):
        return slice((nf + m) * M, (nf + m + 1) * M)

    H = np.zeros((L, M, F))
    for l in range(L):
        for m in range(l):
            w = b[l, m + 1] * xi[m + 1] ** 2
            H[l][:, Sx(m)] = w * lW[m + 1] * np.eye(M)
            H[l][:, Px(m)] = w * CW[m + 1] * np.eye(M)
    Th = np.array([Ths[m][pa, pb] for m in range(L)])
    Sv = [av.S[pa, pb] for av in avg]
    PPv = [av.PP[pa, pb] for av in avg]
    Mss = [_m_matrix(av, P) for av in avg]
    Mpp = [_m_matrix_op(av.Mpp, N, P) for av in avg]
    R, own, kt = np.zeros((F, F)), np.zeros((F, F)), {}
    for m in range(nf):
        for j in range(m):
            R[Sx(m), Sx(j)] = rho[m, j] * Mss[m]
            R[Px(m), Sx(j)] = Th[m][:, None] * rho[m, j] * Mpp[m]
        R[Px(m)] += PPv[m][:, None] * H[m]
    o = np.outer

    def put(r, c, v):                             # a block and its mirror
        own[r, c] = v
        own[c, r] = v.T

    for m in range(nf):
        ssss, sspp, pppp = (avg[m].quad(k)[pa[:, None], pb[:, None], pa[None, :], pb[None, :]]
                            for k in ("ssss", "sspp", "pppp"))
        put(Sx(m), Sx(m), ssss - o(Sv[m], Sv[m]))
        put(Sx(m), Px(m), (sspp - o(Sv[m], PPv[m])) * Th[m][None, :])
        put(Px(m), Px(m), (pppp - o(PPv[m], PPv[m])) * o(Th[m], Th[m]))
        for j in range(m):
            if not np.any(C[m, j] != 0.0):
                continue
            for k1, k2 in (("s", "s"), ("s", "p"), ("p", "s"), ("p", "p")):
                kt[(k1, k2, m, j)] = _kind_two_depth(act, C, m, j, P, k1, k2, accuracy)
            put(Sx(m), Sx(j), kt[("s", "s", m, j)] - o(Sv[m], Sv[j]))
            put(Sx(m), Px(j), (kt[("s", "p", m, j)] - o(Sv[m], PPv[j])) * Th[j][None, :])
            put(Px(m), Sx(j), (kt[("p", "s", m, j)] - o(PPv[m], Sv[j])) * Th[m][:, None])
            put(Px(m), Px(j), (kt[("p", "p", m, j)] - o(PPv[m], PPv[j])) * o(Th[m], Th[j]))
    nw = _field_widths(mlp, nr, 2)
    dress, Sig = _dressed(R, own / nw[None, :])
    return _SPFields(Th=Th, Sv=Sv, PPv=PPv, Mss=Mss, Mpp=Mpp, H=H, R=R, own=own, kt=kt, nw=nw,
                     dress=dress, Sig=Sig)


def _monomials(d):
    """Power tuples of the moments ``E[g F]`` and ``E[g F z_i z_j]`` (i <= j), d variables."""
    out = [(0,) * d]
    for i in range(d):
        for j in range(i, d):
            p = [0] * d
            p[i] += 1
            p[j] += 1
            out.append(tuple(p))
    return out


def _fn(f, k):
    if k == 0:
        return f
    if isinstance(f, PiecewiseMonomial):
        return PiecewiseMonomial(f.cp, f.cm, f.n + k)
    if isinstance(f, ExpPiecewise):
        return f.times_z(k)
    return lambda z: z ** k * f(z)


def _two_depth(act, C, todo, accuracy, stein=False):
    """One-neuron two-depth averages for every (m, l, p, f) in ``todo``.

    ``C[l, m]`` (N, N) is ``Cov(z^(l), z^(m))``. For each item, ``x`` = the distinct
    inputs of pair ``p`` at depth m (function ``g = sigma_p1 sigma_p2``), ``y`` those of
    pair ``f`` at depth l (``F = sigma_f1 sigma_f2``). Returns, per item,
    ``(E[g F], {(e, h): E[g(x) d_e d_h F(y)]})`` over the ordered pairs of y-inputs.

    The second derivatives: smooth activations take ``sigma'``, ``sigma''`` directly;
    the ReLU family ``sigma'`` (a step) and ``sigma'' = (a_+ - a_-) delta`` (conditioning
    on ``y_e = 0``), both exact; any other kinked activation uses Stein's lemma along
    ``e = y - B x`` (independent of x): ``E[g F (u_e u_h - Lam_eh)]``, ``u = Lam e``,
    ``Lam = Cov(e)^-1``, from the moments ``E[g F z_i z_j]`` (no derivative of sigma).
    ``stein=True`` takes that route for every activation (an independent check).
    """
    si = act.scale_invariant if act.name != "monomial" else None
    if si is not None:      # ReLU family: exact innermost axes (truncated Gaussian moments)
        s, s2 = PiecewiseMonomial(si[0], si[1], 1), PiecewiseMonomial(si[0] ** 2, si[1] ** 2, 2)
        p1 = PiecewiseMonomial(si[0], si[1], 0)
        dd = PiecewiseMonomial(2 * si[0] ** 2, 2 * si[1] ** 2, 0)     # (sigma^2)'' = 2 sigma'^2
        jump = si[0] - si[1]                                           # sigma'' = jump delta
    elif exp_family(act) is not None:     # elu: exponential polynomials (exact inner axis)
        s, p1, q2 = (exp_family(act, k) for k in ("sigma", "d1", "d2"))
        s2 = s ** 2
        dd = 2.0 * (p1 ** 2 + s * q2)
    else:
        s, p1, q2 = act.sigma, act.d1, act.d2
        s2 = lambda z: s(z) ** 2              # noqa: E731
        dd = lambda z: 2.0 * (p1(z) ** 2 + s(z) * q2(z))               # noqa: E731
    smooth = (si is not None or not act.kinks) and not stein
    byparts = (si is None and exp_family(act) is None and not act.kinks
               and act.period is None and third_derivative(act) is not None)
    kw = dict(kinks=act.kinks, accuracy=accuracy, growth=entire_growth(act))

    def nd(fs, cov):
        # two and three variables: one rule up (cheap; the powers sigma^2 of a merged pair
        # converge slowest), so that one input matches the one-input module to ~1e-12
        k = dict(kw, accuracy=_rule(accuracy, act, len(fs)))
        return np.atleast_1d(np.asarray(_expect(act, fs, cov, **k), dtype=float))

    groups = {}
    for it in todo:
        m, l, p, f = it
        groups.setdefault((len(set(p)), len(set(f))), []).append(
            (it, sorted(set(p)), sorted(set(f))))
    res = {}
    for (nx, ny), items in groups.items():
        d = nx + ny
        xf = [s2] if nx == 1 else [s, s]
        base = xf + ([s2] if ny == 1 else [s, s])
        cov = _gather(C, [[m] * nx + [l] * ny for (m, l, _, _), _, _ in items],
                      [list(xs) + list(ys) for _, xs, ys in items])
        m0 = nd(base, cov)
        if smooth:
            D = {}
            if ny == 1:
                D[(0, 0)] = nd(xf + [dd], cov)
                if nx == 1 and byparts:
                    D[(0, 0)] = _localized_dd(s, p1, cov, D[(0, 0)])
            else:
                D[(0, 1)] = D[(1, 0)] = nd(xf + [p1, p1], cov)
                for e, o in ((0, 1), (1, 0)):
                    ie, io = nx + e, nx + o
                    if si is None:
                        fs = xf + ([q2, s] if e == 0 else [s, q2])
                        D[(e, e)] = nd(fs, cov)
                        continue
                    # E[g(x) delta(y_e) sigma(y_o)] = phi_e(0) E[g(x) sigma(y_o) | y_e = 0]
                    keep = list(range(nx)) + [io]
                    Kee = cov[:, ie, ie]
                    ce = cov[:, keep, ie]
                    cc = cov[:, keep][:, :, keep] - ce[:, :, None] * ce[:, None, :] / Kee[:, None, None]
                    D[(e, e)] = jump * nd(xf + [s], cc) / np.sqrt(2.0 * np.pi * Kee)
            for k, (it, xs, ys) in enumerate(items):
                res[it] = (m0[k], {(ys[i], ys[j]): D[(i, j)][k] for (i, j) in D})
            continue
        mom = {(0,) * d: m0}
        for pw in _monomials(d)[1:]:
            mom[pw] = nd([_fn(base[i], pw[i]) for i in range(d)], cov)
        for k, (it, xs, ys) in enumerate(items):
            c = cov[k]
            Kxx, Cyx, Kyy = c[:nx, :nx], c[nx:, :nx], c[nx:, nx:]
            B = Cyx @ np.linalg.inv(Kxx)
            Lam = np.linalg.inv(Kyy - B @ Cyx.T)
            A = np.hstack([-Lam @ B, Lam])           # u = A (x, y)
            Mom = np.empty((d, d))
            for i in range(d):
                for j in range(i, d):
                    pw = [0] * d
                    pw[i] += 1
                    pw[j] += 1
                    Mom[i, j] = Mom[j, i] = mom[tuple(pw)][k]
            D2 = A @ Mom @ A.T - Lam * m0[k]          # E[g d_e d_h F], (ny, ny) over ys
            res[it] = (m0[k], {(ys[i], ys[j]): D2[i, j] for i in range(ny) for j in range(ny)})
    return res


def _localized_dd(s, p1, cov, direct):
    r"""``E[sigma^2(x) (sigma^2)''(y)]`` over the covariances ``cov`` (B, 2, 2) (x first),
    ``direct`` where both variances are within the fixed rule's ``2^16``; above it by one
    integration by parts along y (as
    :func:`pdlt.theory.residual_ntk._cov_second_derivative_ibp`),

    .. math::
        E[g(x) F''(y)] = -\frac{C_{xy}}{K_y} E[g'(x) F'(y)] + \frac{E[g(x)\, y F'(y)]}{K_y},

    ``g = F = sigma^2``, ``F' = 2 sigma sigma'`` the outer variable of
    :func:`pdlt.gaussian.expect2`: tanh's ``(sigma^2)''`` is a localized bump whose direct
    nested average cancels ~sqrt(K) (2.5e-9 relative at K = 1.5e9, the N-input G1 diagonal
    2.6e-9 of scale off the one-input module's form by parts, which is within 1.5e-15 of an
    independent panel rule)."""
    out = np.array(direct, dtype=float, copy=True)
    Kx, Ky, C = cov[:, 0, 0], cov[:, 1, 1], cov[:, 0, 1]
    huge = np.maximum(Kx, Ky) > gaussian._K_FIXED_MAX
    if not np.any(huge):
        return out
    F1 = lambda z: 2.0 * s(z) * p1(z)            # noqa: E731  (sigma^2)'
    out[huge] = _second_derivative_by_parts(lambda z: s(z) ** 2, F1, F1, Ky[huge], C[huge],
                                            Kx[huge])
    return out


def _vertex_metric_multi(mlp, Ks, accuracy, stein=False):
    act = mlp.activation
    L, N = Ks.shape[0], Ks.shape[1]
    P, pidx = _pairs(N)
    M = len(P)
    out = {"V": np.zeros((L,) + (N,) * 4), "G1": np.zeros((L, N, N))}
    if L == 1:
        return out
    nr = _neuron(mlp, Ks, accuracy)
    avg, C, rho, nf = nr.avg, nr.C, nr.rho, nr.nf
    CW = np.asarray(mlp.C_W, float)
    xi = np.asarray(mlp.xi, float)
    g = np.asarray(mlp.gamma, float)
    # fields S_m (m = 0..L-2, 0-based layers): index m * M + p
    R, own = _s_response(nr), _s_own(nr)
    # two-depth moments for m < l <= L-2 (own covariances and the G1 own term)
    todo = [(m, l, p, f) for l in range(nf) for m in range(l) if np.any(C[l, m] != 0.0)
            for p in P for f in P]
    td = _two_depth(act, C, todo, accuracy, stein) if todo else {}
    for (m, l, p, f), (m0, _) in td.items():
        v = m0 - avg[m].S[p] * avg[l].S[f]
        own[m * M + pidx[p], l * M + pidx[f]] = own[l * M + pidx[f], m * M + pidx[p]] = v
    nw = _field_widths(mlp, nr)
    dress, Sig = _dressed(R, own / nw[None, :])
    d2 = _d2_sigma(td)
    gm = np.zeros((N, N))                         # E[z z] - K, unnormalized
    dgm = np.zeros((N, N))                        # its estimated error (d4 sources)
    out["G1_error"] = np.zeros((L, N, N))
    for l in range(L):
        r = np.kron(rho[l], np.eye(M))            # (M, F): Khat_l^p response
        Vk = r @ Sig @ r.T                        # Var(Khat_l), pairs x pairs
        out["G1"][l] = mlp.widths[l] * gm
        out["G1_error"][l] = mlp.widths[l] * dgm
        if l >= 1:
            ct = _c_zz(nr, l, nw, upto=l) @ dress.T   # c~(z_a1 z_a2 at l), dressed (M, F)
            cr = ct @ r.T                         # [pa, pb] = rho . c~(z_pa)[., pb]
            Vp = mlp.widths[l] * (Vk + cr + cr.T)
            out["V"][l] = Vp[pidx[:, :, None, None], pidx[None, None, :, :]]
        if l == L - 1:
            break
        V4 = Vk[pidx[:, :, None, None], pidx[None, None, :, :]]
        shift = apply_M(avg[l].Mss, gm) + (avg[l].d4_source(V4) if np.any(V4) else 0.0)
        if l >= 1:      # the neuron's own term
            shift = shift + _own_shift(nr, l, dress, nw, avg[l].Mss, d2)
        gm = xi[l + 1] ** 2 * CW[l + 1] * shift + g[l + 1] ** 2 * gm
        e_ss = shift_error(avg[l], "s", dgm, source=avg[l].d4_error["s"] if np.any(V4) else 0.0)
        dgm = xi[l + 1] ** 2 * abs(CW[l + 1]) * e_ss + g[l + 1] ** 2 * dgm
    for k, arr in out.items():
        if k.endswith("_error"):
            continue
        if not np.all(np.isfinite(arr)):
            raise FloatingPointError(f"{k} overflowed; reduce the depth or initialize at "
                                     "criticality (pdlt.criticality)")
    return out


def _hess(op, f):
    """``Hs[e, h] = <d_e d_h (f_a f_b)>_K`` (N, N) for the pair ``f = (a, b)`` from the
    kernel-derivative operator ``op = (D1, D2, O)`` of ``<f_a f_b>``."""
    D1, D2, O = op
    N = D1.shape[0]
    a, b = f
    H = np.zeros((N, N))
    if a == b:
        H[a, a] = 2.0 * D1[a, a]                  # <(f^2)''> = 2 d<f^2>/dK
        return H
    H[a, a], H[b, b] = 2.0 * D1[a, b], 2.0 * D2[a, b]   # <f''_e f_other>
    H[a, b] = H[b, a] = O[a, b]                   # <f'_a f'_b>
    return H


def _d2_sigma(td):
    """:func:`_own_shift`'s ``d2`` from :func:`_two_depth`'s averages ``td``."""
    def d2(m, l, p, f):
        return td[(m, l, p, f)][1].items() if (m, l, p, f) in td else None
    return d2


def _own_shift(nr, l, dressS, nw, op, d2):
    """The neuron's own dressed term in ``delta_{f_a f_b}`` at layer l (N, N), unnormalized:
    ``(1/2) sum_{m'} rho_{lm'} sum_{(e,h) ordered} c~_{(m', eh)}[d_e d_h f_a f_b]``.

    ``dressS`` (nf M, nf M) is ``(1 - R)^-1`` of the fields ``S``, ``nw`` their widths, ``op``
    the kernel-derivative operator of ``<f_a f_b>`` at layer l, and ``d2(m, l, p, f)`` the
    pairs ``((e, h), E[sigma_p1 sigma_p2(z^(m)) d_e d_h f_f1 f_f2(z^(l))])`` (None where
    depths m and l are independent).
    """
    avg, P, pidx, M, rho = nr.avg, nr.P, nr.pidx, nr.M, nr.rho
    N = avg[l].N
    out = np.zeros((N, N))
    nS = dressS.shape[0]
    for f in P:
        Hs = _hess(op, f)
        derivs = {}
        for m in range(l):
            for p in P:
                pairs = d2(m, l, p, f)
                if pairs is None:
                    continue
                for q, v in pairs:
                    derivs.setdefault(q, np.zeros(nS))[m * M + pidx[p]] = (
                        v - avg[m].S[p] * Hs[q]) / nw[m * M]
        tot = 0.0
        for q, vec in derivs.items():
            dv = dressS @ vec
            tot += 0.5 * sum(rho[l, mp] * dv[mp * M + pidx[q]] for mp in range(l))
        out[f] = out[f[::-1]] = tot
    return out


# ---------------------------------------------------------------------------
# NTK variance B at N inputs (history recursion of attachments)
# ---------------------------------------------------------------------------


def residual_b_multi(mlp: MLP, x=None, *, Ks=None, Thetas=None, accuracy="default") -> np.ndarray:
    r"""Exact N-input NTK variance ``B`` of a residual MLP at every layer, any activation.

    ``B[l, a1, a2, a3, a4] = n_{l-1} E[H_{ik;a1a3} H_{ik;a2a4}]`` (i != k), the plain
    convention of :func:`pdlt.theory.ntk.ntk_B_step`. Given the trajectories,
    ``n E[H_{ik;a1a3} H_{ik;a2a4} | .] = beta_0 + sum_p beta^k_p sigma'_{a1} sigma'_{a2}(z_k^(p))
    + sum_p beta^i_p sigma'_{a3} sigma'_{a4}(z_i^(p))``: the half-skip terms attach pieces to
    one neuron, as functions of the *other* side's inputs; the recursion needs the one-neuron
    two-depth averages ``E[sigma'_e sigma'_f(z^(l)) sigma'_g sigma'_h(z^(p))]`` (up to four
    variables). Derivation: ``docs/derivations/residual_ntk_multi.md`` section 9. At
    gamma = 0 it is the plain recursion; for one input
    :func:`pdlt.theory.residual_ntk.residual_ntk_one_input`.

    Parameters
    ----------
    mlp : MLP
    x : array_like (N, n0), optional
        Inputs.
    Ks, Thetas : ndarray (L, N, N), optional
        The infinite-width kernel and NTK at every layer instead of ``x`` (both or neither).
    accuracy : {"fast", "default", "high"}

    Returns
    -------
    ndarray (L, N, N, N, N)
        ``B`` normalized by ``n_{l-1}``; layer 1 is 0.

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.theory.residual_multi import residual_b_multi
    >>> m = pdlt.MLP(n0=2, width=8, depth=3, activation="relu", C_W=1.5, gamma=0.5)
    >>> residual_b_multi(m, np.array([[1.0, 0.0], [0.6, 0.8]])).shape
    (3, 2, 2, 2, 2)
    """
    return _ntk_multi(mlp, x, Ks, Thetas, accuracy, lambda *a: {"B": _b_multi(*a)})["B"]


def _ntk_multi(mlp, x, Ks, Thetas, accuracy, core, thetas=True):
    """Validate, fold the kernels, merge repeated inputs, run ``core``, expand, check.

    ``core(mlp, Ks, Thetas, accuracy)`` returns ``{name: (L', M, ..., M)}`` over the M
    distinct inputs; the result has the N inputs' shape (L', N, ..., N). ``thetas=False``:
    ``Ks`` alone may be given instead of ``x`` (``Thetas`` is then None).
    """
    Ks, Thetas, reps, inv = _prepare(mlp, x, Ks, Thetas, accuracy, thetas)
    r2 = (slice(None), reps[:, None], reps[None, :])
    return _expand(core(mlp, Ks[r2], None if Thetas is None else Thetas[r2], accuracy),
                   reps, inv)


def _prepare(mlp, x, Ks, Thetas, accuracy, thetas=True):
    """Validate, fold the kernels if needed; the distinct inputs and the map back.

    ``thetas=False``: only the kernels are needed (``Thetas`` is ignored and returned as
    the folded NTK or None)."""
    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
    if not thetas:
        if (x is None) == (Ks is None):
            raise ValueError("give exactly one of x (inputs, shape (N, n0)) and Ks (kernels, "
                             "shape (L, N, N))")
    elif (x is None) == (Ks is None) or (Ks is None) != (Thetas is None):
        raise ValueError("give either x (inputs, shape (N, n0)) or both Ks and Thetas "
                         "(shape (L, N, N))")
    if accuracy not in ("fast", "default", "high"):
        raise ValueError(f"accuracy must be 'fast', 'default' or 'high'; got {accuracy!r}")
    if not thetas and Ks is not None:
        Ks = np.asarray(Ks, dtype=float)
        if Ks.ndim != 3 or Ks.shape[0] != mlp.depth or Ks.shape[1] != Ks.shape[2]:
            raise ValueError(f"Ks must have shape (L, N, N) with L = {mlp.depth}; got "
                             f"{Ks.shape}")
        return Ks, None, *representatives(Ks[0])
    if Ks is None:
        K, Th = first_layer_kernel(mlp, np.atleast_2d(np.asarray(x, dtype=float)))
        Ks, Thetas, _, _ = kernel_fold(mlp, K, Th, susceptibilities=False)
    Ks, Thetas = np.asarray(Ks, dtype=float), np.asarray(Thetas, dtype=float)
    if Ks.ndim != 3 or Ks.shape[0] != mlp.depth or Ks.shape[1] != Ks.shape[2] or \
            Thetas.shape != Ks.shape:
        raise ValueError(f"Ks and Thetas must have the same shape (L, N, N) with L = "
                         f"{mlp.depth}; got {Ks.shape} and {Thetas.shape}")
    reps, inv = representatives(Ks[0])
    return Ks, Thetas, reps, inv


def _expand(out, reps, inv):
    """``{name: (L', M, ..., M)}`` over the M distinct inputs ``reps`` -> over all inputs
    (``inv`` maps back); raises FloatingPointError naming a statistic that overflowed."""
    if len(reps) < len(inv):
        out = {k: v[np.ix_(np.arange(v.shape[0]), *(inv,) * (v.ndim - 1))]
               for k, v in out.items()}
    for k, v in out.items():
        if not k.endswith("_error") and not np.all(np.isfinite(v)):
            raise FloatingPointError(f"{k} overflowed; reduce the depth or initialize at "
                                     "criticality (pdlt.criticality)")
    return out


def _dprime_fns(act):
    """``(sigma', sigma'^2)`` as integrands of :func:`expect_nd` (exact pieces for ReLU)."""
    si = act.scale_invariant if act.name != "monomial" else None
    if si is not None:
        return (PiecewiseMonomial(si[0], si[1], 0),
                PiecewiseMonomial(si[0] ** 2, si[1] ** 2, 0))
    if exp_family(act) is not None:     # elu: exponential polynomials (exact inner axis)
        d1 = exp_family(act, "d1")
        return d1, d1 ** 2
    d1 = act.d1
    return d1, (lambda z: d1(z) ** 2)


def _pp_two_depth(act, C, l, p, P, accuracy):
    """``T[(ef), (gh)] = E[sigma'_e sigma'_f(z^(l)) sigma'_g sigma'_h(z^(p))]`` over pairs P."""
    return _kind_two_depth(act, C, l, p, P, "p", "p", accuracy)


def _b_multi(mlp, Ks, Ths, accuracy):
    act = mlp.activation
    L, N = Ks.shape[0], Ks.shape[1]
    B = np.zeros((L,) + (N,) * 4)
    if L == 1:
        return B
    nr = _neuron(mlp, Ks, accuracy)
    avg, P, pidx, C = nr.avg, nr.P, nr.pidx, nr.C
    CW = np.asarray(mlp.C_W, float)
    i1, i2 = np.arange(N)[:, None, None, None], np.arange(N)[None, :, None, None]
    i3, i4 = np.arange(N)[None, None, :, None], np.arange(N)[None, None, None, :]
    p12, p34 = pidx[i1, i2], pidx[i3, i4]          # pair index of each side, (N,)*4
    beta0 = np.zeros((N,) * 4)
    bk = np.zeros((L,) + (N,) * 4)     # attached to k: sigma'_{a1} sigma'_{a2}(z_k^(p))
    bi = np.zeros((L,) + (N,) * 4)     # attached to i: sigma'_{a3} sigma'_{a4}(z_i^(p))
    for l in range(L - 1):                          # step layer l+1 -> l+2 (0-based l)
        r = mlp.widths[l + 1] / mlp.widths[l]
        cw, g, xi = CW[l + 1], mlp.gamma[l + 1], mlp.xi[l + 1]
        s = avg[l].PP                               # <sigma'_e sigma'_f>_{K^(l)}
        s12, s34 = s[i1, i2], s[i3, i4]
        ThTh = Ths[l][i1, i3] * Ths[l][i2, i4]
        hist_i = np.zeros((N,) * 4)
        hist_k = np.zeros((N,) * 4)
        for p in range(l):
            if not (np.any(bi[p]) or np.any(bk[p])):
                continue
            T = _pp_two_depth(act, C, l, p, P, accuracy)
            hist_i += bi[p] * T[p12, p34]           # sigma'_{a1a2}(l) x sigma'_{a3a4}(p) on i
            hist_k += bk[p] * T[p34, p12]
        chi12, chi34 = xi * xi * cw * s12 + g * g, xi * xi * cw * s34 + g * g
        beta0 = (xi ** 4 * cw ** 2 * avg[l].quad("pppp") * ThTh
                 + r * (chi12 * chi34 * beta0 + xi * xi * cw * (chi34 * hist_i + chi12 * hist_k)))
        bk[:l] *= r * g * g * chi12
        bi[:l] *= r * g * g * chi34
        bk[l] = bi[l] = xi * xi * g * g * cw * ThTh
        S12 = np.array([avg[p].PP[i1, i2] for p in range(l + 1)])
        S34 = np.array([avg[p].PP[i3, i4] for p in range(l + 1)])
        B[l + 1] = beta0 + np.sum(bk[:l + 1] * S12 + bi[:l + 1] * S34, axis=0)
    return B


# ---------------------------------------------------------------------------
# NTK-preactivation correlation F at N inputs (bilinear features)
# ---------------------------------------------------------------------------


def residual_f_multi(mlp: MLP, x=None, *, Ks=None, Thetas=None, accuracy="default") -> np.ndarray:
    r"""Exact N-input ``F`` of a residual MLP at every layer, any activation.

    ``F[l, a1, a3, a2, a4] = n_{l-1} E[H_{ik;a1a2} z_{i;a3} z_{k;a4}]`` (i != k;
    ``shared/NOTATION.md``). Given the trajectories of neurons i and k,
    ``n E[H_{ik;ab} | .] = phi(i)^T M^{ab} phi(k)`` in the features ``U_{m;c}`` (the
    increment of layer m+1 at input c; ``U_0 = z^(1)``) and ``S_{p;(c,e)} =
    sigma_c sigma'_e(z^(p))`` (ordered pairs), with one-neuron two-depth averages
    ``E[sigma_c sigma'_e(z^(p)) sigma'_a sigma_d(z^(l))]``. Derivation:
    ``docs/derivations/residual_ntk_multi.md`` section 10. At gamma = 0 it is the plain
    recursion; for one input :func:`pdlt.theory.residual_ntk.residual_ntk_one_input`.

    Parameters and returns as :func:`residual_b_multi` (``F`` normalized by ``n_{l-1}``,
    shape (L, N, N, N, N), layer 1 is 0).

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.theory.residual_multi import residual_f_multi
    >>> m = pdlt.MLP(n0=2, width=8, depth=3, activation="relu", C_W=1.5, gamma=0.5)
    >>> residual_f_multi(m, np.array([[1.0, 0.0], [0.6, 0.8]])).shape
    (3, 2, 2, 2, 2)
    """
    return _ntk_multi(mlp, x, Ks, Thetas, accuracy, lambda *a: {"F": _f_multi(*a)})["F"]


def _fns_sd(act):
    """Integrands ``{"s": sigma, "d": sigma', "sd": sigma sigma'}`` for :func:`expect_nd`."""
    si = act.scale_invariant if act.name != "monomial" else None
    if si is not None:
        return {"s": PiecewiseMonomial(si[0], si[1], 1), "d": PiecewiseMonomial(si[0], si[1], 0),
                "sd": PiecewiseMonomial(si[0] ** 2, si[1] ** 2, 1)}
    if exp_family(act) is not None:     # elu: exponential polynomials (exact inner axis)
        s, d1 = exp_family(act, "sigma"), exp_family(act, "d1")
        return {"s": s, "d": d1, "sd": s * d1}
    s, d1 = act.sigma, act.d1
    return {"s": s, "d": d1, "sd": lambda z: s(z) * d1(z)}


def _sd_two_depth(act, C, l, p, N, accuracy):
    """``TT[c, e, a, d] = E[sigma_c sigma'_e(z^(p)) sigma'_a sigma_d(z^(l))]`` (p < l)."""
    fn = _fns_sd(act)
    kw = dict(kinks=act.kinks, growth=entire_growth(act))
    groups = {}
    for c in range(N):
        for e in range(N):
            for a in range(N):
                for d in range(N):
                    var = []          # (depth, input, name)
                    for dep, (i_s, i_d) in ((p, (c, e)), (l, (d, a))):
                        var += [(dep, i_s, "sd")] if i_s == i_d else [(dep, i_s, "s"),
                                                                       (dep, i_d, "d")]
                    names = tuple(v[2] for v in var)
                    groups.setdefault(names, []).append(((c, e, a, d), var))
    TT = np.empty((N,) * 4)
    for names, items in groups.items():
        dd = len(names)
        cov = _gather(C, [[v[0] for v in var] for _, var in items],
                      [[v[1] for v in var] for _, var in items])
        acc = _rule(accuracy, act, dd)
        vals = np.atleast_1d(np.asarray(_expect(act, [fn[n] for n in names], cov, accuracy=acc,
                                                **kw), dtype=float))
        for k, (ix, _) in enumerate(items):
            TT[ix] = vals[k]
    return TT


def _stein_sd(avg):
    """``J[a, c, f] = <d_f (sigma'_a sigma_c)>_K`` (one layer; sigma'' by the pointwise rule
    of :class:`LayerAverages`: ``Mss = (D1, D2, O)``, ``<sigma''_a sigma_c> = 2 D1[a, c]``)."""
    D1, _, O = avg.Mss
    N = avg.N
    J = np.zeros((N, N, N))
    for a in range(N):
        for c in range(N):
            if a == c:
                J[a, a, a] = D1[a, a]                 # <(sigma sigma')'>
            else:
                J[a, c, a] = 2.0 * D1[a, c]
                J[a, c, c] = O[a, c]
    return J


def _f_forms(mlp, nr, Ths, accuracy):
    """The bilinear forms of F, layer by layer: yields ``M`` (N, N, Fd, Fd) at layers
    2..L, ``n E[H_{ik;ab}^(l) | .] = phi(i)^T M[a, b] phi(k)`` (derivation section 10).

    Features: ``U_m`` (m = 0..L-1, N each) at ``m N``, ``S_p`` (ordered input pairs
    ``(c, e)``: ``sigma_c sigma'_e(z^(p))``) at ``L N + p N^2 + c N + e``. At layer 1 the
    form is 0. :func:`_f_multi` reads out F; ``residual_multi_mean`` keeps every layer.
    """
    act, avg, a, proj, C = mlp.activation, nr.avg, nr.a, nr.proj, nr.C
    L, N = len(nr.rho), len(nr.pidx)
    CW = np.asarray(mlp.C_W, float)
    J = [_stein_sd(av) for av in avg]
    nU = L * N
    Fd = nU + L * N * N

    def U(m):
        return slice(m * N, (m + 1) * N)

    def S(p):
        return slice(nU + p * N * N, nU + (p + 1) * N * N)

    M = np.zeros((N, N, Fd, Fd))
    for l in range(L - 1):                          # step layer l+1 -> l+2 (0-based l)
        r = mlp.widths[l + 1] / mlp.widths[l]
        cw, g, xi = CW[l + 1], mlp.gamma[l + 1], mlp.xi[l + 1]
        # E[W_ij | u_i] = c sigma_j^T G^+ u_i (u lies in the range of G, the increment's
        # covariance; G is singular for collinear inputs of a homogeneous network): the
        # feature is G^+ u_i, so G^+ here and G in the averages become the projector
        Gi = proj[l + 1]
        Th = Ths[l]
        # e[a, c, alpha] = E[phi_alpha sigma'_a sigma_c(z^(l))] (one neuron)
        E = np.zeros((N, N, Fd))
        for m in range(l + 1):
            E[:, :, U(m)] = a[l, m] * np.einsum("df,acf->acd", proj[m], J[l])
        for p in range(l):
            if np.any(C[l, p] != 0.0):
                TT = _sd_two_depth(act, C, l, p, N, accuracy)          # [c, e, a, d]
            else:       # independent depths (a gamma = 0 between them): products
                TT = np.einsum("ce,da->cead", _pair_sd(avg[p]), _pair_sd(avg[l]))
            E[:, :, S(p)] = TT.transpose(2, 3, 0, 1).reshape(N, N, N * N)
        eMi = np.einsum("acx,abxy->abcy", E, M)     # (e^{ac})^T M^{ab}
        Mek = np.einsum("abxy,bcy->abcx", M, E)     # M^{ab} e^{bc}
        eMe = np.einsum("abcy,bdy->abcd", eMi, E)
        Q4 = avg[l].quad("ppss")                    # <sigma'_a sigma'_b sigma_c sigma_d>
        M = r * g * g * M
        mix = xi * xi * cw * cw * (Q4 * Th[:, :, None, None] + r * eMe)
        M[:, :, U(l + 1), U(l + 1)] += np.einsum("abcd,ce,df->abef", mix, Gi, Gi)
        if g != 0.0:
            k = xi * g * cw
            # U_{l+1} (i side) x S_{l;(c, a)} (k side), and the mirror S_{l;(c, b)} x U_{l+1}
            for a_ in range(N):
                for b_ in range(N):
                    for c in range(N):
                        M[a_, b_, U(l + 1), nU + l * N * N + c * N + a_] += k * Th[a_, b_] * Gi[c]
                        M[a_, b_, nU + l * N * N + c * N + b_, U(l + 1)] += k * Th[a_, b_] * Gi[c]
            M[:, :, U(l + 1), :] += k * r * np.einsum("cu,abcy->abuy", Gi, eMi)
            M[:, :, :, U(l + 1)] += k * r * np.einsum("cu,abcx->abxu", Gi, Mek)
        yield M


def _f_multi(mlp, Ks, Ths, accuracy):
    L, N = Ks.shape[0], Ks.shape[1]
    F = np.zeros((L,) + (N,) * 4)
    if L == 1:
        return F
    nr = _neuron(mlp, Ks, accuracy)
    a, proj, C = nr.a, nr.proj, nr.C
    J = [_stein_sd(av) for av in nr.avg]
    nU = L * N
    Fd = nU + L * N * N
    for l, M in enumerate(_f_forms(mlp, nr, Ths, accuracy)):
        # readout at layer l+1: v[y, alpha] = E[phi_alpha z^(l+1)_y] (U features G^+ w)
        v = np.zeros((N, Fd))
        for m in range(l + 2):
            v[:, m * N:(m + 1) * N] = a[l + 1, m] * proj[m].T
        for p in range(l + 1):
            # E[sigma_c sigma'_e(z^(p)) z_y] = sum_f C[l+1, p][y, f] J_p[e, c, f]
            v[:, nU + p * N * N:nU + (p + 1) * N * N] = np.einsum(
                "yf,ecf->yce", C[l + 1, p], J[p]).reshape(N, N * N)
        # F[x, y, u, w] = v[y] . M^{xu} . v[w]
        F[l + 1] = np.einsum("ya,xuab,wb->xyuw", v, M, v)
    return F


def _pair_sd(avg):
    """``<sigma_c sigma'_e>_K`` as [c, e] (one layer)."""
    fn = _fns_sd(avg.act)
    N = avg.N
    out = np.empty((N, N))
    K = avg.K
    kw = dict(kinks=avg.act.kinks, growth=entire_growth(avg.act))
    for c in range(N):
        for e in range(N):
            if c == e:
                out[c, e] = float(_expect(avg.act, [fn["sd"]], K[[c]][:, [c]], accuracy="high",
                                          **kw))
            else:
                out[c, e] = float(_expect(avg.act, [fn["s"], fn["d"]], K[np.ix_([c, e], [c, e])],
                                            accuracy="high", **kw))
    return out


# ---------------------------------------------------------------------------
# A and D at N inputs: covariance of the shared fields S and P (derivation section 11)
# ---------------------------------------------------------------------------


def residual_ad_multi(mlp: MLP, x=None, *, Ks=None, Thetas=None, accuracy="default") -> dict:
    r"""Exact N-input ``A`` and ``D`` of a residual MLP at every layer, any activation.

    ``A[l, a1, a2, a3, a4] = n_{l-1} Cov(H_{ii;a1a2}, H_{jj;a3a4})`` and
    ``D[l, a1, a2, a3, a4] = n_{l-1} Cov(H_{ii;a1a2}, z_{j;a3} z_{j;a4})`` (i != j;
    ``shared/NOTATION.md``). The one-input field construction of
    :mod:`pdlt.theory.residual_ntk` (derivation ``residual_ntk.md`` section 5) with a
    field per (layer, unordered pair of inputs): ``S_{m;ab} = (1/n) sum_j sigma_a
    sigma_b(z_j^(m))`` and ``P_{m;ab} = (1/n) sum_j sigma'_a sigma'_b(z_j^(m))
    H_{jj;ab}^(m)``; with ``Sigma`` their covariance, ``rho`` the responses and
    ``c~`` the dressed own covariances,

    .. math::
        D = n\,[\rho(H)^T\Sigma\rho(zz) + \rho(H)^T\tilde c(zz)],\qquad
        A = n\,\rho(H)^T\Sigma\rho(H).

    Derivation: ``docs/derivations/residual_ntk_multi.md`` section 11. At gamma = 0 it
    is the plain recursion of :mod:`pdlt.theory.ntk`; for one input
    :func:`pdlt.theory.residual_ntk.residual_statistics` (A, D).

    Parameters and errors as :func:`residual_b_multi`.

    Returns
    -------
    dict
        ``{"A": ndarray (L, N, N, N, N), "D": ndarray (L, N, N, N, N)}``, normalized by
        ``n_{l-1}``; layer 1 is 0.

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.theory.residual_multi import residual_ad_multi
    >>> m = pdlt.MLP(n0=2, width=8, depth=3, activation="relu", C_W=1.5, gamma=0.5)
    >>> residual_ad_multi(m, np.array([[1.0, 0.0], [0.6, 0.8]]))["A"].shape
    (3, 2, 2, 2, 2)
    """
    return _ntk_multi(mlp, x, Ks, Thetas, accuracy, _ad_multi)


def _kind_fns(act, kind):
    """``(f, f^2)`` for ``kind`` "s" (sigma) or "p" (sigma') as :func:`expect_nd` integrands."""
    if kind == "p":
        return _dprime_fns(act)
    si = act.scale_invariant if act.name != "monomial" else None
    if si is not None:
        return PiecewiseMonomial(si[0], si[1], 1), PiecewiseMonomial(si[0] ** 2, si[1] ** 2, 2)
    if exp_family(act) is not None:     # elu: exponential polynomials (exact inner axis)
        s = exp_family(act, "sigma")
        return s, s ** 2
    s = act.sigma
    return s, (lambda z: s(z) ** 2)


def _kind_two_depth(act, C, l, p, P, kl, kp, accuracy):
    """``T[u, v] = E[f_{P[u]}(z^(l)) h_{P[v]}(z^(p))]`` (p != l), f of kind kl, h of kp:
    ``f_(ab) = f_a f_b`` (sigma or sigma', :func:`_kind_fns`)."""
    fl, fp = _kind_fns(act, kl), _kind_fns(act, kp)
    kw = dict(kinks=act.kinks, growth=entire_growth(act))
    T = np.empty((len(P), len(P)))
    groups = {}
    for u, f in enumerate(P):
        for v, h in enumerate(P):
            xs, ys = sorted(set(f)), sorted(set(h))
            groups.setdefault((len(xs), len(ys)), []).append((u, v, xs, ys))
    for (nx, ny), items in groups.items():
        d = nx + ny
        fs = ([fl[1]] if nx == 1 else [fl[0], fl[0]]) + ([fp[1]] if ny == 1 else [fp[0], fp[0]])
        cov = _gather(C, [[l] * nx + [p] * ny] * len(items),
                      [list(xs) + list(ys) for _, _, xs, ys in items])
        acc = _rule(accuracy, act, d)
        vals = np.atleast_1d(np.asarray(_expect(act, fs, cov, accuracy=acc, **kw), dtype=float))
        for k, (u, v, _, _) in enumerate(items):
            T[u, v] = vals[k]
    return T


def _ad_multi(mlp, Ks, Ths, accuracy):
    L, N = Ks.shape[0], Ks.shape[1]
    out = {"A": np.zeros((L,) + (N,) * 4), "D": np.zeros((L,) + (N,) * 4)}
    if L == 1:
        return out
    nr = _neuron(mlp, Ks, accuracy)
    M, nf, rho, pidx = nr.M, nr.nf, nr.rho, nr.pidx
    fx = _sp_fields(mlp, nr, Ths, accuracy)
    F = len(fx.R)
    for l in range(1, L):
        rz = np.zeros((M, F))
        rz[:, :nf * M] = np.kron(rho[l], np.eye(M))
        rH = fx.H[l]
        ct = _c_zz(nr, l, fx.nw, Th=fx.Th, upto=l) @ fx.dress.T   # c~(z_a3 z_a4 at l)
        n = mlp.widths[l]
        Dp = n * (rH @ fx.Sig @ rz.T + rH @ ct.T)
        Ap = n * (rH @ fx.Sig @ rH.T)
        sel = (pidx[:, :, None, None], pidx[None, None, :, :])
        out["D"][l], out["A"][l] = Dp[sel], Ap[sel]
    return out

