r"""The ddNTK statistics R, S, T, U at order 1/n (book "The End of Training").

Definitions (``shared/NOTATION.md``, binding): the means at order 1/n of
``ddIH_{i0i1i2i3} = sum l l l (d1 d2 d3 z_{i0})(d1 z_{i1})(d2 z_{i2})(d3 z_{i3})``
(pattern ``d_{i0i1} d_{i2i3} R_{a0a1a2a3} + 2 perms``) and of
``ddIIH_{i0i1i2i3} = sum l l l (d1 d2 z_{i0})(d1 d3 z_{i1})(d2 z_{i2})(d3 z_{i3})``
(``d_{i0i1}d_{i2i3} S + d_{i0i2}d_{i1i3} T + d_{i0i3}d_{i1i2} U``).
All vanish at l = 1. Book chapter "The End of Training", §∞.2-∞.3 (eq.
numbers to be checked); where the book orders sample indices differently,
NOTATION.md's order is kept.

Derivation
----------
Differentiating ``z'_i`` three times (a weight ``W_pq`` of layer l+1 enters
at most once in a nonzero derivative, biases never)::

    ddIH' = sum W_{i0j} W_{i1k1} W_{i2k2} W_{i3k3} sigma'_k1 sigma'_k2 sigma'_k3
            [sigma'''_j H H H + sigma''_j (dH H + 2 perms) + sigma'_j ddIH]
          + (lambda_W/n_l) [delta_{i0i1} sum_q sigma_{q;a1} sum W W sigma' sigma'
            (sigma''_q H H + sigma'_q dH) + 2 perms],

and ``ddIIH'`` has one all-earlier term (sigma''sigma'' HHH, sigma''sigma'
H dH twice, sigma'sigma' ddIIH), one with the new weight in the shared
derivative (delta_{i0i1}), two with it in one of the others (delta_{i0i2},
delta_{i1i3}) and one with two new weights (delta_{i0i2} delta_{i1i3}
(lambda_W/n_l)^2). Take the mean with the neuron pattern of each statistic,
integrate layer l+1 by Wick, and split neuron sums as for the NTK (source
1/n_l, propagation ``r = n_l/n_{l-1}`` with B, F, P, Q, R, S, T, U of layer
l; products of an off-diagonal H with a dH, or of three off-diagonal H, are
O(n^-3/2) or smaller). Single input, with
``phi = C_W Theta sigma'' sigma' + lambda_W sigma' sigma``::

    R' = C_W^2 Theta^3 <sigma''' sigma'^3> + lambda_W C_W Theta^2 <sigma'' sigma sigma'^2>
         + r {chi_perp [C_W Theta (<sigma''' sigma'> B + <(sigma'' sigma')'> P) + chi_perp R]
              + lambda_W chi_perp [<sigma'' sigma> B + <(sigma' sigma)'> P]},
    S' = C_W^2 Theta^3 <sigma''^2 sigma'^2> + lambda_W C_W Theta^2 <sigma'^4>
         + r [chi_perp C_W^2 Theta <sigma''^2> B + chi_perp^2 S + lambda_W chi_perp^2 B / C_W],
    T' = Theta <phi^2> + r [F <phi'>^2 + 2 chi_perp Q <phi'> + chi_perp^2 T],
    U' = C_W^2 Theta^3 <sigma''^2 sigma'^2> + r chi_perp^2 U.

Pointwise sigma'', sigma''' in sources (0 for ReLU, as autodiff sees it);
``<(.)'>`` by Stein. Exact cases: ReLU and linear nets have ``R = U = 0``;
deep linear (``C_W = 1``, ``lambda_b = 0``, ``lambda_W = 1``, ``K = 1``):
``S' = S + m^2 + B_m``, ``T' = T + m + F_m + 2 Q_m`` at layer m.
"""
from __future__ import annotations

__all__ = ["ddntk_step_single"]


def ddntk_step_single(t, Theta, B, F, P, Q, R, S, T, U, C_W, lambda_W, ratio=1.0):
    """Single-input R, S, T, U at layer l+1 from layer l."""
    chi_par, chi_perp = C_W * t["dss"], C_W * t["pp"]
    Th = Theta
    R_new = (C_W ** 2 * Th ** 3 * t["q3ppp"] + lambda_W * C_W * Th ** 2 * t["qspp"]
             + ratio * (chi_perp * (C_W * Th * t["q3p"] * B + C_W * Th * t["dqp"] * P
                                    + chi_perp * R)
                        + lambda_W * chi_perp * (t["qs"] * B + t["dss"] * P)))
    S_new = (C_W ** 2 * Th ** 3 * t["qqpp"] + lambda_W * C_W * Th ** 2 * t["pppp"]
             # four layer-(l+1) weights: C_W^2 <q^2><p^2> Theta B (not chi_perp C_W^2,
             # which is C_W^3: caught by a C_W = 3 ensemble, see theory/ntk_multi.py)
             + ratio * (C_W ** 2 * Th * t["qq"] * t["pp"] * B + chi_perp ** 2 * S
                        + lambda_W * chi_perp ** 2 / C_W * B))
    phi2 = ((C_W * Th) ** 2 * t["qqpp"] + 2 * C_W * Th * lambda_W * t["qspp"]
            + lambda_W ** 2 * t["sspp"])
    dphi = C_W * Th * t["dqp"] + lambda_W * t["dss"]
    T_new = Th * phi2 + ratio * (F * dphi ** 2 + 2 * chi_perp * Q * dphi + chi_perp ** 2 * T)
    U_new = C_W ** 2 * Th ** 3 * t["qqpp"] + ratio * chi_perp ** 2 * U
    return R_new, S_new, T_new, U_new
