r"""The NTK mean at order 1/n: ``H1`` (the book's ``H^{\{1\}}``).

Definition (``shared/NOTATION.md`` conventions; ``n = n_{l-1}``):

.. math::
    E[H^{(l)}_{i_1i_2;a_1a_2}] = \delta_{i_1i_2}\Big[\Theta^{(l)}_{a_1a_2}
        + \frac{1}{n_{l-1}} H^{\{1\}(l)}_{a_1a_2} + O(1/n^2)\Big],

the NTK-mean analogue of the NLO metric ``G1`` (book ch. 8, "NTK mean at
NLO"; eq. numbers to be checked). The ensemble estimator is ``Theta`` of
:class:`pdlt.experiment.Ensemble` (``E[H_ii]``), so ``n (m - Theta) -> H1``.
``H1^(1) = 0`` (the first layer's NTK is deterministic) and ``H1^(2) = 0``
(layer 1 is exactly Gaussian and its NTK deterministic, so the layer-2 mean
is exactly the infinite-width one).

Derivation (ours; the book's route, eq. numbers to be checked)
---------------------------------------------------------------
The forward equation (:mod:`pdlt.experiment.ntk`),
``H'_{i1i2} = d_{i1i2}[lambda_b + (lambda_W/n_l) sum_j s_j s_j]
+ sum_{jk} W_{i1j} W_{i2k} p_j p_k H_{jk}`` (``s = sigma``, ``p = sigma'``,
hyperparameters of layer l+1), averaged over layer l+1's weights
(``E[W_{ij} W_{ik}] = d_jk C_W / n_l``) gives, *exactly*,

.. math::
    E[H'_{ii;ab}] = \lambda_b + \lambda_W E[s_{j;a}s_{j;b}] + C_W E[p_{j;a}p_{j;b}H_{jj;ab}]

for one neuron j of layer l: the n_l terms of each neuron sum are identically
distributed, so no order-1/n_l "source" appears and the whole correction is
of order 1/n_{l-1} (width ratio ``r = n_l / n_{l-1}`` after normalizing by
n_l). The single-neuron averages at order 1/n (Edgeworth / Gaussian
integration by parts with the order-1/n cumulants of layer l):

* ``E[f(z_j)] = <f>_K + (1/n)[sum_{cd} M^f_{(ab)(cd)} G1_{cd}
  + (1/8) sum V_{(c1c2)(c3c4)} <d_c1 d_c2 d_c3 d_c4 f>_K]`` with
  ``M^f_{(ab)(cd)} = (1/2)<d_c d_d f_{ab}>_K = d<f_ab>/dK_cd`` (ordered
  pairs) -- the G1 step of :mod:`pdlt.theory.vertex`, once for ``f = s_a s_b``
  (``Delta_ss``) and once for ``f = p_a p_b`` (``Delta_pp``);
* ``E[p_a p_b H_{jj;ab}] = E[p_a p_b](Theta_ab + H1_ab/n)
  + Cov(p_a p_b, H_{jj;ab})``, and, with ``Delta H`` jointly cumulant-expanded
  with the preactivations of its own neuron (``kappa(DeltaH, z) = 0``,
  ``kappa(DeltaH, z_c, z_d) = X_{ab cd}/n``, higher ones O(1/n^2)),
  ``Cov(f(z_j), H_{jj;ab}) = (1/2n) sum_{cd} X_{abcd} <d_c d_d f>_K
  = (1/n) sum_{cd} M^{pp}_{(ab)(cd)} X_{abcd}``, where all four neuron
  indices of the D, F definition are equal:
  ``X_{abcd} = D_{abcd} + F_{acbd} + F_{adbc}``.

Collecting the order-1/n_{l-1} terms (everything at layer l, the
hyperparameters of layer l+1, ``PP = <p_a p_b>_K``):

.. math::
    H^{\{1\}(l+1)}_{ab} = r\Big[\lambda_W\,\Delta^{ss}_{ab}
        + C_W\big(\Theta_{ab}\,\Delta^{pp}_{ab} + PP_{ab} H^{\{1\}}_{ab}
        + \textstyle\sum_{cd} M^{pp}_{(ab)(cd)} X_{abcd}\big)\Big],

    \Delta^{ff}_{ab} = \textstyle\sum_{cd} M^{ff}_{(ab)(cd)} G^{\{1\}}_{cd}
        + \frac18\sum V_{(c_1c_2)(c_3c_4)}\langle\partial^4 (f_a f_b)\rangle_K .

The sum over ``c, d`` runs over ``{a, b}`` only (``p_a p_b`` depends on
``z_a, z_b``): ``sum_{cd} M_{(ab)(cd)} X_{abcd} = dK_aa X_{abaa} + dK_bb
X_{abbb} + dK_ab X_{abab}`` (total derivative by the off-diagonal entry).

Single input (``dss = d<s^2>/dK = chi_par / C_W``, ``dpp = d<p^2>/dK``,
``pp = <p^2> = chi_perp / C_W``, ``d4ss = <(s^2)''''>``, ``d4pp = <(p^2)''''>``):

.. math::
    H^{\{1\}\prime} = r\big[\lambda_W(dss\,G^{\{1\}} + \tfrac18 d4ss\,V)
        + C_W\big(\Theta\,(dpp\,G^{\{1\}} + \tfrac18 d4pp\,V) + pp\,H^{\{1\}}
        + dpp\,(D + 2F)\big)\big].

Exact cases (``tests/theory/test_ntk_mean.py``)
-----------------------------------------------
* Deep linear network (``sigma(z) = z``, any ``C_b``, ``C_W``, widths,
  learning rates): ``E[zz] = K`` exactly at any width, ``p = 1``, so
  ``E[H'] = lambda_b + lambda_W E[zz] + C_W E[H]`` holds exactly and
  ``H1 = 0`` at every layer (the recursion: ``G1 = 0``, ``Delta_pp = 0``,
  ``M^pp = 0``, ``H1' = r C_W H1``).
* ReLU family, one input, *any* ``C_b``, ``C_W``: ``<s^2>_K = K/2``
  and ``<p^2>_K = 1/2`` are linear / constant in K, so ``d4ss = d4pp = dpp =
  0``; the G1 step gives ``G1 = 0`` and then ``H1 = 0``: for one input the
  mean NTK of a ReLU network has no 1/n correction (it does for two distinct
  inputs, where ``d<p_a p_b>/dK_ab != 0``).

Gaussian averages and accuracy
------------------------------
``M^ss`` and ``M^pp`` are the operators of :mod:`pdlt.theory.ntk_multi`
(for kinked activations ``d<p_a p_b>/dK`` by the Hermite form, relative
error ~1e-7); the fourth-derivative sources use
:func:`pdlt.theory.vertex._fourth_derivative_source` (Hermite form, exact in
the distributional sense, so the jump of ReLU's sigma' is handled; it loses
``(1 - rho^2)^-2`` in relative accuracy and switches to the coinciding-input
limit when ``1 - rho^2 < 1e-4``). One input: one-variable rules, error <
1e-14 (:func:`pdlt.gaussian.expect`). Exactly coinciding inputs are merged
before the step (``d<p_a p_b>/dK_ab`` is infinite there for a kinked sigma').
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from .. import gaussian
from .._progress import layers
from ..network import MLP
from ._ntk_avg import single_input_terms
from .ntk import ntk_step_single
from .ntk_multi import (_apply, _operator, _pairs, _representatives, ntk_multi_flow,
                        positive_variances)
from .vertex import _fourth_derivative_source, finite_width_flow

__all__ = ["single_input_mean_terms", "ntk_mean_step_single", "ntk_mean_step", "h1_from_flow",
           "h1_single_from_flow", "ntk_mean_correction"]


# ---------------------------------------------------------------------------
# single input
# ---------------------------------------------------------------------------

def single_input_mean_terms(act, K):
    """One-variable averages of the single-input H1 step.

    Parameters
    ----------
    act : Activation
    K : float > 0 or ndarray of such
        Kernel K^(l) (an array evaluates every layer at once).

    Returns
    -------
    dict of float (or of ndarray shaped like K)
        ``dss = d<s^2>/dK``, ``dpp = d<p^2>/dK``, ``pp = <p^2>``,
        ``d4ss = <(s^2)''''>_K = <s^2 He_4(z/sqrt K)>/K^2`` and
        ``d4pp = <(p^2)''''>_K`` likewise (Stein: distributional derivatives,
        exact for kinks), each with error < 1e-14 (:func:`pdlt.gaussian.expect`).
    """
    t = single_input_terms(act, K, need_d3=False)
    K = np.asarray(K, dtype=float)
    scalar = K.ndim == 0
    s, p = act.sigma, act.d1
    kw = dict(kinks=act.kinks, period=act.period)
    sq = np.sqrt(K)

    def he4_avg(f):
        # <f He_4(z / sqrt K)>_K / K^2, K broadcast through the integrand's scale
        out = np.empty(K.shape)
        for idx in np.ndindex(K.shape):
            k, r = float(K[idx]), float(sq[idx])
            out[idx] = gaussian.expect(
                lambda z: f(z) * ((z / r) ** 4 - 6 * (z / r) ** 2 + 3), k, **kw) / (k * k)
        return float(out) if scalar else out
    return {"dss": t["dss"], "dpp": t["dpp"], "pp": t["pp"],
            "d4ss": he4_avg(lambda z: s(z) ** 2), "d4pp": he4_avg(lambda z: p(z) ** 2)}


def ntk_mean_step_single(t, Theta, H1, G1, V, D, F, C_W, lambda_W, ratio=1.0):
    """Single-input ``H1^(l+1)`` from layer l (module docstring; book ch. 8, eq. numbers to be checked).

    ``H1' = r [lambda_W (dss G1 + d4ss V / 8) + C_W (Theta (dpp G1 + d4pp V / 8)
    + pp H1 + dpp (D + 2 F))]``.

    Parameters
    ----------
    t : dict
        :func:`single_input_mean_terms` at K^(l).
    Theta, H1, G1, V, D, F : float
        Statistics at layer l (the order-1/n ones normalized by n_{l-1}).
    C_W, lambda_W : float
        Hyperparameters of layer l+1 (``lambda_b`` does not enter).
    ratio : float
        ``n_l / n_{l-1}``.

    Returns
    -------
    float
        ``H1^(l+1)``, normalized by n_l.
    """
    d_ss = t["dss"] * G1 + 0.125 * t["d4ss"] * V            # n (E[s^2] - <s^2>_K)
    d_pp = t["dpp"] * G1 + 0.125 * t["d4pp"] * V            # n (E[p^2] - <p^2>_K)
    cov_ppH = t["dpp"] * (D + 2.0 * F)                       # n Cov(p^2, H_jj)
    return ratio * (lambda_W * d_ss + C_W * (Theta * d_pp + t["pp"] * H1 + cov_ppH))


# ---------------------------------------------------------------------------
# N inputs
# ---------------------------------------------------------------------------

def _p_shim(act):
    """An activation-like object whose ``sigma`` is sigma' (for the fourth-derivative source)."""
    return SimpleNamespace(name="_ntk_mean_p", scale_invariant=None, kinks=act.kinks,
                           period=act.period, sigma=act.d1, d1=act.d2)


def ntk_mean_step(act, K, Theta, H1, G1, V, D, F, C_W, lambda_W, ratio=1.0, *, merge=True):
    """N-input ``H1^(l+1)`` from layer l (module docstring; book ch. 8, eq. numbers to be checked).

    Parameters
    ----------
    act : Activation
    K, Theta, H1, G1 : ndarray (N, N)
        Kernel, NTK mean and their order-1/n corrections at layer l
        (normalized by n_{l-1}).
    V, D, F : ndarray (N, N, N, N)
        Layer-l statistics in NOTATION.md's index order
        (``V[a1,a2,a3,a4] = V_{(a1a2)(a3a4)}``, ``D[a1,a2,a3,a4] = D_{a1a2a3a4}``,
        ``F[a1,a2,a3,a4] = F_{a1a2a3a4}``).
    C_W, lambda_W : float
        Hyperparameters of layer l+1.
    ratio : float
        ``n_l / n_{l-1}``.
    merge : bool
        Merge exactly coinciding inputs first (needed for kinked activations;
        the result is the same matrix, expanded back).

    Returns
    -------
    ndarray (N, N)
        ``H1^(l+1)``, symmetric, normalized by n_l.
    """
    K = np.asarray(K, dtype=float)
    N = K.shape[0]
    Th, H1, G1 = (np.asarray(a, dtype=float) for a in (Theta, H1, G1))
    V, D, F = (np.asarray(a, dtype=float) for a in (V, D, F))
    if merge and N > 1:
        reps, inv = _representatives(K)
        if len(reps) < N:
            i2, i4 = np.ix_(reps, reps), np.ix_(reps, reps, reps, reps)
            sub = ntk_mean_step(act, K[i2], Th[i2], H1[i2], G1[i2], V[i4], D[i4], F[i4],
                                C_W, lambda_W, ratio, merge=False)
            return sub[np.ix_(inv, inv)]
    pr = _pairs(act, K)
    PP, t = pr["PP"], pr["t"]
    Mss = _operator(0.5 * pr["dps"], PP, t["dss"])              # d<s_a s_b>/dK_cd
    Mpp = _operator(pr["Mpp_d"], pr["Mpp_o"], t["dpp"])         # d<p_a p_b>/dK_cd
    anyV = bool(np.any(V))
    # n (E[s_a s_b] - <s_a s_b>_K) and n (E[p_a p_b] - <p_a p_b>_K): G1 shift + V source
    d_ss = _apply(Mss, G1) + (_fourth_derivative_source(act, K, V) if anyV else 0.0)
    d_pp = _apply(Mpp, G1) + (_fourth_derivative_source(_p_shim(act), K, V) if anyV else 0.0)
    # n Cov(p_a p_b, H_jj;ab): X_abcd = D_abcd + F_acbd + F_adbc (one neuron), contracted
    # with M^pp_(ab)(cd) over c, d in {a, b}
    X = D + np.einsum("acbd->abcd", F) + np.einsum("adbc->abcd", F)
    ar = np.arange(N)
    A_, B_ = ar[:, None], ar[None, :]
    D1, D2, O = Mpp
    cov = D1 * X[A_, B_, A_, A_] + D2 * X[A_, B_, B_, B_] + O * X[A_, B_, A_, B_]
    return ratio * (lambda_W * d_ss + C_W * (Th * d_pp + PP * H1 + cov))


# ---------------------------------------------------------------------------
# the flow
# ---------------------------------------------------------------------------

def _first_layers(mlp, depth):
    """The plain MLP made of layers 1..depth of ``mlp`` (same widths and hyperparameters)."""
    cut = slice(0, depth)
    return MLP(mlp.n0, widths=mlp.widths[1:depth], n_out=mlp.widths[depth],
               activation=mlp.activation, C_b=mlp.C_b[cut], C_W=mlp.C_W[cut],
               lambda_b=mlp.lambda_b[cut], lambda_W=mlp.lambda_W[cut])


def ntk_mean_correction(mlp: MLP, x=None, *, K1=None, accuracy="default") -> np.ndarray:
    """``H1`` at every layer: ``E[H_ii] = Theta + H1 / n_{l-1} + O(1/n^2)``.

    Parameters
    ----------
    mlp : MLP
        Plain MLP (``gamma = 0, xi = 1``): widths (unequal allowed), per-layer
        ``C_b``, ``C_W``, ``lambda_b``, ``lambda_W``.
    x : array_like (N, n0), optional
        Inputs (N-input path).
    K1 : float, optional
        Single input: the first-layer kernel (as in :func:`pdlt.flow`). Give
        exactly one of ``x`` and ``K1``.
    accuracy : {"fast", "default", "high"}
        Rule of the three- and four-variable expectations behind V, D, F
        (:func:`pdlt.theory.vertex.finite_width_flow`,
        :func:`pdlt.theory.ntk_multi.ntk_step`).

    Returns
    -------
    ndarray of shape (L,) (``K1``) or (L, N, N) (``x``)
        ``H1^(l)`` for l = 1..L, normalized by ``n_{l-1}`` like every
        order-1/n statistic; entries 0 and 1 (layers 1, 2) are exactly 0.

    Raises
    ------
    NotImplementedError
        For a residual MLP.
    ValueError
        For K1 <= 0 or an input with zero variance at a hidden layer.
    FloatingPointError
        If H1 overflows (deep, far from criticality).

    Examples
    --------
    >>> import pdlt
    >>> from pdlt.theory.ntk_mean import ntk_mean_correction
    >>> mlp = pdlt.MLP(n0=1, width=64, depth=4, activation="tanh", C_W=1.0)
    >>> [round(float(h), 6) for h in ntk_mean_correction(mlp, K1=1.0)]
    [0.0, 0.0, 0.003773, 0.026621]
    >>> relu = pdlt.MLP(n0=1, width=64, depth=4, C_W=2.0)   # one ReLU input: no 1/n shift
    >>> bool(abs(ntk_mean_correction(relu, K1=1.0)).max() < 1e-12)
    True
    """
    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
    if mlp.is_residual:
        raise NotImplementedError(
            "ntk_mean_correction is derived for plain MLPs only: a residual MLP (gamma != 0 "
            "or xi != 1) has cross terms xi gamma W sigma' H between the skip and the new "
            "layer whose order-1/n averages (and, for non-odd sigma, the three-point "
            "function) the recursion does not include; set gamma = 0, xi = 1")
    if (x is None) == (K1 is None):
        raise ValueError("give exactly one of x (inputs, shape (N, n0)) and K1 (single input)")
    if accuracy not in ("fast", "default", "high"):
        raise ValueError(f"accuracy must be 'fast', 'default' or 'high'; got {accuracy!r}")
    act = mlp.activation
    L = mlp.depth
    if K1 is not None and not K1 > 0:
        raise ValueError(f"K1 must be > 0 for the finite-width statistics; got {K1}")
    if L <= 2:
        # layers 1 and 2 have no 1/n shift; validate the inputs all the same
        K = np.asarray(finite_width_flow(mlp, x, K1=K1, accuracy=accuracy).K)
        return np.zeros(K.shape)
    # H1 at layer L needs layers 1..L-1 only: the layer-L step of V, D, F is skipped
    head = _first_layers(mlp, L - 1)
    base = finite_width_flow(head, x, K1=K1, accuracy=accuracy)
    if K1 is not None:
        # D, F at layers 1..L-1 by the single-input NTK step (D = F = 0 at layer 1)
        K = np.asarray(base.K, dtype=float)
        t_ntk = single_input_terms(act, K[:L - 1], need_d3=False)
        D, F = np.zeros(L - 1), np.zeros(L - 1)
        A = B = 0.0
        for l in range(1, L - 1):
            s = base[l - 1]
            tn = {k: float(v[l - 1]) for k, v in t_ntk.items()}
            A, B, D[l], F[l] = ntk_step_single(tn, float(s.Theta), float(s.extra["V"]), A, B,
                                               D[l - 1], F[l - 1], mlp.C_W[l], mlp.lambda_W[l],
                                               mlp.widths[l] / mlp.widths[l - 1])
        return h1_single_from_flow(mlp, base, D, F)
    DF = ntk_multi_flow(head, base, accuracy=accuracy, stats=["D", "F"])
    return h1_from_flow(mlp, base, DF["D"], DF["F"])


def h1_single_from_flow(mlp: MLP, base, D, F) -> np.ndarray:
    """Single-input ``H1`` at every layer from a computed flow and its D, F.

    The one-input twin of :func:`h1_from_flow`: ``base`` is
    :func:`pdlt.theory.vertex.finite_width_flow` of ``mlp`` with ``K1`` (at
    least L - 1 layers), ``D``, ``F`` (>= L - 1,) per layer. Returns (L,).
    """
    L = mlp.depth
    H1 = np.zeros(L)
    if L <= 2:
        return H1
    K = np.asarray(base.K, dtype=float)
    t_mean = single_input_mean_terms(mlp.activation, K[:L - 1])
    for l in range(1, L):
        s = base[l - 1]
        tm = {k: float(v[l - 1]) for k, v in t_mean.items()}
        H1[l] = ntk_mean_step_single(tm, float(s.Theta), H1[l - 1], float(s.extra["G1"]),
                                     float(s.extra["V"]), float(D[l - 1]), float(F[l - 1]),
                                     mlp.C_W[l], mlp.lambda_W[l],
                                     mlp.widths[l] / mlp.widths[l - 1])
        if not math.isfinite(H1[l]):
            raise FloatingPointError(
                f"H1 overflowed at layer {l + 1}; reduce the depth or initialize at "
                "criticality (pdlt.criticality)")
    return H1


def h1_from_flow(mlp: MLP, base, D, F) -> np.ndarray:
    """N-input ``H1`` at every layer from a computed flow and its D, F tensors.

    For callers that already have them (:func:`pdlt.theory.finite_ntk.ntk_fluctuation_flow`):
    ``base`` is :func:`pdlt.theory.vertex.finite_width_flow` of ``mlp`` on the inputs
    (at least L - 1 layers), ``D``, ``F`` the (>= L - 1, N, N, N, N) tensors of
    :func:`pdlt.theory.ntk_multi.ntk_multi_flow`. Returns (L, N, N).
    """
    act = mlp.activation
    L = mlp.depth
    N = np.asarray(base[0].K).shape[0]
    H1 = np.zeros((L, N, N))
    for l in layers(range(1, L), f"H1, {N} inputs"):
        s = base[l - 1]
        K = positive_variances(s.K, l)
        r = mlp.widths[l] / mlp.widths[l - 1]
        H1[l] = ntk_mean_step(act, K, s.Theta, H1[l - 1], s.extra["G1"], s.extra["V"],
                              D[l - 1], F[l - 1], mlp.C_W[l], mlp.lambda_W[l], r)
        if not np.all(np.isfinite(H1[l])):
            raise FloatingPointError(
                f"H1 overflowed at layer {l + 1}; reduce the depth or initialize at "
                "criticality (pdlt.criticality)")
    return H1
