r"""The dNTK statistics P and Q at order 1/n (book ch. 11).

Definition (``shared/NOTATION.md``, binding): with
``dH_{i0i1i2} = sum lambda_mu lambda_nu (d_mu d_nu z_{i0})(d_mu z_{i1})(d_nu z_{i2})``,
``E[dH_{i0i1i2;a0a1a2} z_{i3;a3}] = (1/n)[d_{i0i3} d_{i1i2} P_{a0a1a2a3}
+ d_{i0i1} d_{i2i3} Q_{a0a1a2a3} + d_{i0i2} d_{i1i3} Q_{a0a2a1a3}]``.
``P = Q = 0`` at l = 1 (z^(1) is linear in the parameters).

Derivation (book §11.2: forward equation near eq. 11.9, P and Q recursions
near eqs. 11.46-11.53; eq. numbers to be checked)
----------------------------------------------------------------------------
Differentiating ``z'_i = b_i + sum_j W_ij sigma_j`` twice gives the forward
equation::

    dH'_{i0i1i2} = sum_{jkm} W_{i0j} W_{i1k} W_{i2m} sigma'_k sigma'_m
                   [sigma''_j H_jk H_jm + sigma'_j dH_jkm]
                 + (lambda_W/n_l) [delta_{i0i1} sum_{qm} sigma'_{q;a0} sigma_{q;a1}
                   W_{i2m} sigma'_{m;a2} H_{qm;a0a2} + (1 <-> 2)].

Multiply by ``z'_{i3}`` and integrate out layer l+1 (Wick in W); the
pairing ``d_{i0i3} d_{i1i2}`` gives P, ``d_{i0i1} d_{i2i3}`` gives Q. Each
neuron sum splits into equal neurons (source, 1/n_l) and different neurons
(propagation, ``r = n_l/n_{l-1}``), where ``E[H_jk H_jk] = B/n``,
``E[H_jk f(z_j) g(z_k)] = (1/n) sum F <d f><d g>`` and
``E[dH_jkk f(z_j) g(z_k)] = (1/n) sum_b P_{..b} <d_b f><g>``. Products such
as ``dH_jjk H_jk`` are O(n^-3/2) and drop out. Single input, with
``phi = C_W Theta sigma'' sigma' + lambda_W sigma' sigma``:

    P' = C_W^2 Theta^2 <sigma'' sigma'^2 sigma>
         + r [chi_perp C_W <sigma'' sigma> B + chi_perp chi_par P],
    Q' = C_W^2 Theta^2 <sigma'' sigma'^2 sigma> + lambda_W C_W Theta <sigma'^2 sigma^2>
         + r [chi_par <phi'> F + chi_perp chi_par Q].

``sigma''`` in a source is pointwise (``act.d2``: 0 for ReLU, as autodiff
sees it); ``<phi'>`` is a distributional Gaussian derivative (Stein).
Exact cases: ReLU and linear nets have ``P = 0`` at every layer; a deep
linear net with ``C_W = 1, lambda_b = 0, lambda_W = 1, K = 1`` has
``Q' = Q + m + m (m - 1) / 2`` at layer m.
"""
from __future__ import annotations

__all__ = ["dntk_step_single"]


def dntk_step_single(t, Theta, B, F, P, Q, C_W, lambda_W, ratio=1.0):
    """Single-input P, Q at layer l+1 from layer l."""
    chi_par, chi_perp = C_W * t["dss"], C_W * t["pp"]
    P_new = (C_W * Theta) ** 2 * t["qspp"] + ratio * (chi_perp * C_W * t["qs"] * B
                                                       + chi_perp * chi_par * P)
    dphi = C_W * Theta * t["dqp"] + lambda_W * t["dss"]
    Q_new = ((C_W * Theta) ** 2 * t["qspp"] + lambda_W * C_W * Theta * t["sspp"]
             + ratio * (chi_par * dphi * F + chi_perp * chi_par * Q))
    return P_new, Q_new
