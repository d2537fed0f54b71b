r"""The NTK mean at order 1/n, ``H1``: one step, N inputs.

``E[H_{i1i2;a1a2}] = d_{i1i2} [Theta_{a1a2} + H1_{a1a2} / n_{l-1} + O(1/n^2)]``;
``H1 = 0`` at layers 1 and 2. Derivation: ``docs/derivations/ntk_mean.rst``
(book ch. 8, NTK mean at NLO). With ``Delta^ff = M^ff G1 + (1/8) sum V
<d^4 (f_a f_b)>`` (f = sigma, sigma'), ``X_abcd = D_abcd + F_acbd + F_adbc``
and ``r = n_l / n_{l-1}``:

.. math::
    H^{1\prime}_{ab} = r\big[\lambda_W\Delta^{ss}_{ab} + C_W\big(\Theta_{ab}\Delta^{pp}_{ab}
        + PP_{ab} H^1_{ab} + \textstyle\sum_{cd\in\{a,b\}} M^{pp}_{(ab)(cd)} X_{abcd}\big)\big].

Exact checks: deep linear networks and one input of the ReLU family have
``H1 = 0`` at every layer. Plain MLPs only.
"""

from __future__ import annotations

import numpy as np

from ._averages import apply_M

__all__ = ["ntk_mean_step"]


def ntk_mean_step(avg, st, hp):
    """``H1^(l+1)`` (N, N); uses Theta, H1, G1, V, D, F of ``st`` (layer l)."""
    V, G1, D, F = st["V"], st["G1"], st["D"], st["F"]
    anyV = bool(np.any(V))
    d_ss = apply_M(avg.Mss, G1) + (avg.d4_source(V, "s") if anyV else 0.0)
    d_pp = apply_M(avg.Mpp, G1) + (avg.d4_source(V, "p") if anyV else 0.0)
    X = D + np.einsum("acbd->abcd", F) + np.einsum("adbc->abcd", F)
    ar = np.arange(avg.N)
    a, b = ar[:, None], ar[None, :]
    D1, D2, O = avg.Mpp
    cov = D1 * X[a, b, a, a] + D2 * X[a, b, b, b] + O * X[a, b, a, b]
    return hp.ratio * (hp.lambda_W * d_ss
                       + hp.C_W * (st["Theta"] * d_pp + avg.PP * st["H1"] + cov))
