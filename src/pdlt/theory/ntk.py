r"""NTK fluctuations A, B and NTK-preactivation cross-correlations D, F at order 1/n.

Definitions (``shared/NOTATION.md``, binding; ``n = n_{l-1}``):

.. math::
    E[\Delta H_{i_1i_2;a_1a_2}\Delta H_{i_3i_4;a_3a_4}] = \frac1n\big[
        \delta_{i_1i_2}\delta_{i_3i_4}A_{(a_1a_2)(a_3a_4)}
      + \delta_{i_1i_3}\delta_{i_2i_4}B_{(a_1a_3)(a_2a_4)}
      + \delta_{i_1i_4}\delta_{i_2i_3}B_{(a_1a_4)(a_2a_3)}\big],

    E[\Delta H_{i_1i_2;a_1a_2} z_{i_3;a_3} z_{i_4;a_4}] = \frac1n\big[
        \delta_{i_1i_2}\delta_{i_3i_4}D_{a_1a_2a_3a_4}
      + \delta_{i_1i_3}\delta_{i_2i_4}F_{a_1a_3a_2a_4}
      + \delta_{i_1i_4}\delta_{i_2i_3}F_{a_1a_4a_2a_3}\big].

The first layer's NTK is deterministic, so ``A = B = D = F = 0`` at l = 1.

Derivation (book ch. 8, eqs. 8.89-8.97 for one input and 8.79-8.86 for N
inputs; eq. numbers to be checked)
---------------------------------------------------------------------------
Condition on layer l (``z_j``, ``H_jk``, ``j, k = 1..n_l``) and integrate out
layer l+1's weights (variance ``c = C_W / n_l``) and biases. With
``Omega_{jk;a1a2} = sigma'_{j;a1} sigma'_{k;a2} H_{jk;a1a2}`` the forward
equation ``H'_{i1i2} = delta_{i1i2}[lambda_b + (lambda_W/n_l) sum_j sigma_j
sigma_j] + sum_{jk} W_{i1j} W_{i2k} Omega_{jk}`` is a Gaussian chaos in W;
Wick's theorem gives

* the conditional mean ``delta_{i1i2} Hhat_{a1a2}``,
  ``Hhat = lambda_b + (1/n_l) sum_j Y_j``,
  ``Y_{j;a1a2} = lambda_W sigma_{j;a1}sigma_{j;a2} + C_W Omega_{jj;a1a2}``;
* the conditional covariance ``c^2 [d13 d24 sum_{jk} Omega^{a1a2}_{jk}
  Omega^{a3a4}_{jk} + d14 d23 (...)]``, which is B;
* for D, F the Wick pairings between the W's of H' and of
  ``z'_i = b_i + sum_j W_ij sigma_j``: ``D/n_l = Cov(Hhat, Ghat)`` with
  ``Ghat = C_b + (C_W/n_l) sum sigma sigma``, and
  ``F_{a1a3a2a4}/n_l = c^2 E sum_{jk} Omega_{jk;a1a2} sigma_{j;a3} sigma_{k;a4}``.

Every sum over neurons splits into ``j = k`` (n_l terms, evaluated with
layer l at infinite width: the "source", weight 1/n_l) and ``j != k``
(n_l^2 terms, each O(1/n_{l-1}): the "propagation", whence the width ratio
``r = n_l / n_{l-1}``). The cross-neuron expectations use the order-1/n
joint cumulants of layer l (an Edgeworth step): for ``j != k``,
``Cov(f(z_j), g(z_k)) = (1/n) sum V <d f/dK><d g/dK>``,
``E[Delta H_jj f(z_j) g(z_k)] - E[f(z_j)] E[Delta H_jj g(z_k)] = (1/n) sum D <f><dg/dK>``-type
terms, ``E[H_jk f(z_j) g(z_k)] = (1/n) sum_{b1b2} F_{a1b1a2b2} <d_b1 f><d_b2 g>``,
``E[Delta H_jj Delta H_kk] = A/n`` and ``E[H_jk H_jk] = B/n``.

Result (single input; ``chi_par = C_W <(sigma sigma')'>``, ``chi_perp = C_W <sigma'^2>``,
``y = lambda_W sigma^2 + C_W Theta sigma'^2``, ``<y>' = d<y>_K/dK``; the
hyperparameters are those of layer l+1):

.. math::
    A' &= \mathrm{Var}_K(y) + r\,[\langle y\rangle'^2 V + 2\chi_\perp\langle y\rangle' D + \chi_\perp^2 A],\\
    B' &= C_W^2\Theta^2\langle\sigma'^4\rangle + r\,\chi_\perp^2 B,\\
    D' &= C_W\,\mathrm{Cov}_K(y, \sigma^2) + r\,[\chi_\parallel\langle y\rangle' V + \chi_\parallel\chi_\perp D],\\
    F' &= C_W^2\Theta\langle\sigma^2\sigma'^2\rangle + r\,\chi_\parallel^2 F.

N inputs: the same with ``<.>'`` the matrix derivative ``d<.>/dK_{b1b2}``
and the contractions written out in :func:`~pdlt.theory.ntk_multi.ntk_step`.

Exact cases (tests): deep linear network (``sigma(z) = z``, ``C_b = 0``,
equal widths, constant ``C_W``, ``lambda``): ``B^(l) = C_W^2 sum_{m<l}
C_W^{2(l-1-m)} Theta_m^2`` etc.; ReLU at criticality (``C_W = 2``, ``C_b =
0``, ``lambda_b = 0``): ``Theta^(l) = lambda_W K l``, and the recursions add
a polynomial in l per layer (see ``tests/theory/test_ntk.py``).
"""

from __future__ import annotations

import numpy as np

from ._ntk_avg import single_input_terms

__all__ = ["ntk_step_single", "single_input_terms"]


def ntk_step_single(t, Theta, V, A, B, D, F, C_W, lambda_W, ratio=1.0):
    """Single-input A, B, D, F at layer l+1 from layer l.

    Parameters
    ----------
    t : dict
        :func:`single_input_terms` at K^(l).
    Theta, V, A, B, D, F : float
        Statistics at layer l (normalized by n_{l-1}).
    C_W, lambda_W : float
        Hyperparameters of layer l+1.
    ratio : float
        ``n_l / n_{l-1}``.

    Returns
    -------
    A, B, D, F : float
        At layer l+1 (normalized by n_l).
    """
    chi_par, chi_perp = C_W * t["dss"], C_W * t["pp"]
    var_y = (lambda_W ** 2 * (t["ssss"] - t["ss"] ** 2)
             + 2 * lambda_W * C_W * Theta * (t["sspp"] - t["ss"] * t["pp"])
             + (C_W * Theta) ** 2 * (t["pppp"] - t["pp"] ** 2))
    cov_ys = lambda_W * (t["ssss"] - t["ss"] ** 2) + C_W * Theta * (t["sspp"] - t["ss"] * t["pp"])
    dy = lambda_W * t["dss"] + C_W * Theta * t["dpp"]
    A_new = var_y + ratio * (dy * dy * V + 2 * chi_perp * dy * D + chi_perp ** 2 * A)
    B_new = (C_W * Theta) ** 2 * t["pppp"] + ratio * chi_perp ** 2 * B
    D_new = C_W * cov_ys + ratio * (chi_par * dy * V + chi_par * chi_perp * D)
    F_new = C_W ** 2 * Theta * t["sspp"] + ratio * chi_par ** 2 * F
    return A_new, B_new, D_new, F_new
