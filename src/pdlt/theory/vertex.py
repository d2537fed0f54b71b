r"""The four-point vertex V and the NLO metric G1: one layer step each, N inputs.

Definitions (``shared/NOTATION.md``; ``n = n_{l-1}``):
``E[z z z z]_conn = (1/n)[d d V + 2 perms]`` and ``E[z_{i;a} z_{i;b}] = K_ab +
G1_ab / n``; both vanish at layer 1. Derivation: ``docs/derivations/vertex.rst``
and ``docs/derivations/metric.rst`` (book ch. 4). Steps, with ``M`` the
operator ``d<sigma_a sigma_b>_K / dK`` and ``r = n_l / n_{l-1}``:

.. math::
    V' = C_W^2[\langle\sigma\sigma\sigma\sigma\rangle - \langle\sigma\sigma\rangle
         \langle\sigma\sigma\rangle] + r\,C_W^2\, M V M^T,\qquad
    G^{1\prime} = r\,C_W\big[M G^1 + \tfrac18\textstyle\sum V\langle\partial^4(\sigma\sigma)\rangle\big].

Residual layers (``z' = xi [b + W sigma] + gamma z``): the residual branches of
:func:`vertex_step` and :func:`metric_step` (``M~ = xi^2 C_W M + gamma^2`` and a
mixed same-neuron term) keep the leading two-depth terms only, a truncation
(exact for linear sigma and at gamma = 0), kept for :func:`pdlt.theory.statistics.layer_step`
callers and comparison. :func:`pdlt.statistics` does not use them: it serves
residual V and G1 exactly, for N inputs and any activation from
:func:`pdlt.theory.residual_multi.residual_vertex_metric_multi`
(``docs/derivations/residual_ntk_multi.md``), for one input from
:func:`pdlt.theory.residual_ntk.residual_vertex_metric`.

Array order: ``V[a1, a2, a3, a4] = V_{(a1a2)(a3a4)}``.
"""

from __future__ import annotations

import numpy as np

from ._averages import LayerAverages, OneVariableTable, apply_M

__all__ = ["vertex_step", "metric_step", "three_point_step", "vertex_slope",
           "kernel_derivative_operator", "apply_M"]


def _plain(hp):
    return hp.gamma == 0.0 and hp.xi == 1.0


def vertex_step(avg, st, hp):
    """``V^(l+1)`` (N, N, N, N) from layer l.

    Parameters
    ----------
    avg : LayerAverages
        Averages at ``K^(l)`` (:mod:`pdlt.theory._averages`).
    st : mapping
        Layer-l statistics; uses ``"V"`` (N, N, N, N) and ``"K"`` (N, N).
    hp : LayerHyper
        Hyperparameters of layer l+1 and ``ratio = n_l / n_{l-1}``.
    """
    V, S, M = st["V"], avg.S, avg.Mss
    C_W, r = hp.C_W, hp.ratio
    src = C_W ** 2 * (avg.quad("ssss") - S[:, :, None, None] * S[None, None, :, :])
    if _plain(hp):
        if not np.any(V):
            return src
        T = apply_M(M, V)
        T = apply_M(M, np.moveaxis(T, (2, 3), (0, 1)))
        return src + C_W ** 2 * r * np.moveaxis(T, (0, 1), (2, 3))
    x2, g2, K = hp.xi ** 2, hp.gamma ** 2, st["K"]
    out = x2 * x2 * src
    # same-neuron mixed term 2 sum_b M_{(12)(b1b2)} K_{b1 3} K_{b2 4}, plus its mirror
    KK = K[:, None, :, None] * K[None, :, None, :]
    KK = 0.5 * (KK + np.swapaxes(KK, 2, 3))
    X = 2.0 * apply_M(M, KK)
    out = out + x2 * g2 * C_W * (X + np.moveaxis(X, (0, 1), (2, 3)))
    if np.any(V):
        T = x2 * C_W * apply_M(M, V) + g2 * V
        T2 = np.moveaxis(T, (2, 3), (0, 1))
        T = x2 * C_W * apply_M(M, T2) + g2 * T2
        out = out + r * np.moveaxis(T, (0, 1), (2, 3))
    return out


def metric_step(avg, st, hp):
    """``G1^(l+1)`` (N, N) from layer l; uses ``"V"`` and ``"G1"`` of ``st``."""
    V, G1 = st["V"], st["G1"]
    inner = apply_M(avg.Mss, G1) + (avg.d4_source(V, "s") if np.any(V) else 0.0)
    if _plain(hp):
        return hp.ratio * hp.C_W * inner
    return hp.ratio * (hp.xi ** 2 * hp.C_W * inner + hp.gamma ** 2 * G1)


def three_point_step(avg, st, hp):
    r"""One input of a residual MLP: ``kappa3^(l+1)``, ``E[z_i z_j z_k] = (kappa3/n)(d_ij + d_ik + d_jk)``.

    ``kappa3' = xi^2 gamma C_W K <(sigma^2)'> + r gamma chi_par kappa3`` with
    ``chi_par = xi^2 C_W <(sigma sigma')'> + gamma^2`` (zero for odd sigma).
    (1, 1) in and out; N inputs: :func:`pdlt.theory.residual_multi_mean.residual_kappa3_multi`.
    """
    t, x2, g = avg.t, hp.xi ** 2, hp.gamma
    chi = x2 * hp.C_W * t["dss"] + g * g
    K = st["K"]
    return x2 * g * hp.C_W * K * t["d1ss"] + hp.ratio * g * chi * st["kappa3"]


def vertex_slope(act, *, C_W=None, K_star=None):
    r"""Asymptotic slope ``nu`` of ``V^(l) / (n K^(l)^2) ~ nu l / n`` at criticality.

    * ``K* > 0`` (scale-invariant class, or any activation with a nontrivial
      critical fixed point): ``chi_par = 1`` at ``K*`` and the one-input step
      adds a constant per layer, ``nu = C_W^2 (<sigma^4> - <sigma^2>^2) / K*^2``
      (ReLU 5, linear 2; slopes ``a_+, a_-``:
      ``6 (a_+^4 + a_-^4) / (a_+^2 + a_-^2)^2 - 1``).
    * ``K* = 0`` class (tanh, sin, erf, ...): ``nu = 2/3`` for every
      activation (book §5.4).

    Parameters
    ----------
    act : str, Activation or callable
    C_W, K_star : float, optional
        The critical point; found with :func:`pdlt.criticality` when omitted.

    Returns
    -------
    float
    """
    from ..activations import activation as _activation
    act = _activation(act)
    if act.scale_invariant is not None and act.name != "monomial":
        ap, am = act.scale_invariant
        return 6.0 * (ap ** 4 + am ** 4) / (ap ** 2 + am ** 2) ** 2 - 1.0
    if C_W is None or K_star is None:
        from .criticality import criticality
        crit = criticality(act)
        C_W = crit.C_W if C_W is None else C_W
        K_star = crit.K_star if K_star is None else K_star
    if K_star == 0:
        return 2.0 / 3.0
    t = OneVariableTable(act, K_star)
    return float(C_W ** 2 * (t["ssss"] - t["ss"] ** 2) / K_star ** 2)


def kernel_derivative_operator(act, K):
    """The operator ``M_{(a1a2)(b1b2)} = d<sigma_a1 sigma_a2>_K / dK_{b1b2}`` at a kernel (N, N).

    Apply it with :func:`apply_M` (``sum_b M_{(a1a2)(b1b2)} X_{b1b2...}`` on
    the first two axes of X); the V and G1 steps and the Hebbian
    representation shift of :mod:`pdlt.learning.finite_bayes` use it.
    """
    K = np.asarray(K, dtype=float)
    return LayerAverages(act, K, OneVariableTable(act, np.diag(K).copy())).Mss
