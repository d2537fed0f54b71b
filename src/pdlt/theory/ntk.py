r"""NTK fluctuations A, B and NTK-preactivation cross-correlations D, F: one step each.

Definitions (``shared/NOTATION.md``; ``n = n_{l-1}``, ``i != j``):
``A_{(a1a2)(a3a4)} = n Cov(H_{ii;a1a2}, H_{jj;a3a4})``,
``B_{(a1a2)(a3a4)} = n E[H_{ij;a1a3} H_{ij;a2a4}]``,
``D_{a1a2a3a4} = n Cov(H_{ii;a1a2}, z_{j;a3} z_{j;a4})``,
``F_{a1a2a3a4} = n E[H_{ij;a1a3} z_{i;a2} z_{j;a4}]``; arrays are indexed in
that order (``B[a1, a2, a3, a4] = B_{(a1a2)(a3a4)}``). All vanish at layer 1.
Derivation: ``docs/derivations/ntk_fluctuations.rst`` (book ch. 8). With
``y_ab = lambda_W s_a s_b + C_W Theta_ab p_a p_b``, ``U = d<y>/dK``,
``PP = <p_a p_b>``, ``G_{(a1a2)b} = <d_b (p_a1 s_a2)>`` and ``r = n_l / n_{l-1}``:

.. math::
    A' &= \mathrm{Cov}(y_{12}, y_{34}) + r[U V U^T + C_W PP_{34} (U D_{34\cdot})_{12}
          + C_W PP_{12} (U D_{12\cdot})_{34} + C_W^2 PP_{12} PP_{34} A],\\
    B' &= C_W^2 \Theta_{13}\Theta_{24}\langle p_1p_2p_3p_4\rangle + r C_W^2 PP_{12} PP_{34} B,\\
    D' &= C_W \mathrm{Cov}(y_{12}, s_3 s_4) + r[C_W (U V M^{ss\,T}) + C_W^2 PP_{12} (D M^{ss\,T})],\\
    F' &= C_W^2 \Theta_{13}\langle p_1 s_2 p_3 s_4\rangle + r C_W^2 \textstyle\sum G F G.

Plain MLPs only (one input of a residual MLP: :mod:`pdlt.theory.residual_ntk`).
"""

from __future__ import annotations

import numpy as np

from ._averages import apply_M, apply_M2

__all__ = ["ntk_A_step", "ntk_B_step", "ntk_D_step", "ntk_F_step"]


def _U(avg, Th, hp):
    """``U = d<y>/dK``, ``y_ab = lambda_W s_a s_b + C_W Theta_ab p_a p_b`` (an operator)."""
    return tuple(hp.lambda_W * a + hp.C_W * Th * b for a, b in zip(avg.Mss, avg.Mpp))


def _covariances(avg):
    """``Cov_K(s s, s s)``, ``Cov(s s, p p)``, ``Cov(p p, s s)``, ``Cov(p p, p p)``."""
    S, PP = avg.S, avg.PP
    o = np.multiply.outer
    SSPP = avg.quad("sspp")
    return (avg.quad("ssss") - o(S, S), SSPP - o(S, PP),
            np.moveaxis(SSPP, (0, 1), (2, 3)) - o(PP, S), avg.quad("pppp") - o(PP, PP))


def ntk_A_step(avg, st, hp):
    """``A^(l+1)`` (N, N, N, N); uses Theta, V, D, A of ``st`` (layer l)."""
    Th, C_W, lW, PP = st["Theta"], hp.C_W, hp.lambda_W, avg.PP
    cSS, cSP, cPS, cPP = _covariances(avg)
    T12, T34 = Th[:, :, None, None], Th[None, None, :, :]
    out = lW ** 2 * cSS + lW * C_W * (T34 * cSP + T12 * cPS) + C_W ** 2 * T12 * T34 * cPP
    U = _U(avg, Th, hp)
    PP12, PP34 = PP[:, :, None, None], PP[None, None, :, :]
    UD = apply_M(U, np.moveaxis(st["D"], (2, 3), (0, 1)))     # (U D_{34.})_{12}
    return out + hp.ratio * (apply_M2(U, apply_M(U, st["V"])) + C_W * PP34 * UD
                             + C_W * PP12 * np.moveaxis(UD, (0, 1), (2, 3))
                             + C_W ** 2 * PP12 * PP34 * st["A"])


def ntk_B_step(avg, st, hp):
    """``B^(l+1)``; uses Theta, B."""
    Th, C_W, PP = st["Theta"], hp.C_W, avg.PP
    src = C_W ** 2 * Th[:, None, :, None] * Th[None, :, None, :] * avg.quad("pppp")
    return src + hp.ratio * C_W ** 2 * PP[:, :, None, None] * PP[None, None, :, :] * st["B"]


def ntk_D_step(avg, st, hp):
    """``D^(l+1)``; uses Theta, V, D."""
    Th, C_W, lW = st["Theta"], hp.C_W, hp.lambda_W
    cSS, _, cPS, _ = _covariances(avg)
    src = C_W * (lW * cSS + C_W * Th[:, :, None, None] * cPS)
    UV = apply_M(_U(avg, Th, hp), st["V"])
    return src + hp.ratio * (C_W * apply_M2(avg.Mss, UV)
                             + C_W ** 2 * avg.PP[:, :, None, None] * apply_M2(avg.Mss, st["D"]))


def ntk_F_step(avg, st, hp):
    """``F^(l+1)``; uses Theta, F."""
    Th, C_W, G = st["Theta"], hp.C_W, avg.G
    src = C_W ** 2 * Th[:, None, :, None] * np.transpose(avg.quad("sspp"), (2, 0, 3, 1))
    return src + hp.ratio * C_W ** 2 * np.einsum("ibx,ixky,kdy->ibkd", G, st["F"], G)
