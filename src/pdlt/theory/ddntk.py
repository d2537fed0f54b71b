r"""The ddNTK statistics R, S, T, U: one step each, N inputs.

Definitions (``shared/NOTATION.md``; ``i != j``): ``R_{a0a1a2a3} = n
E[ddIH_{iijj}]``, ``S = n E[ddIIH_{iijj}]``, ``T = n E[ddIIH_{ijij}]``,
``U = n E[ddIIH_{ijji}]``, indexed in that order; all vanish at layer 1.
Derivation: ``docs/derivations/ddntk.rst`` (book "The End of Training",
§∞.2-∞.3). ``q = sigma''`` and ``sigma'''`` are pointwise (0 for the ReLU
family); ``<sigma''' ...>`` is taken by Stein along ``z_a0`` from ``x = z
sigma''``, so R is refused for an activation whose sigma'' jumps at a kink.
Plain MLPs only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ddntk_R_step", "ddntk_S_step", "ddntk_T_step", "ddntk_U_step"]

_e = np.einsum


def _Phi(avg, Th, hp):
    """``Phi[a, c, b] = C_W Theta_ac <d_b (q_a p_c)> + lambda_W <d_b (p_a s_c)>``."""
    return hp.C_W * Th[:, :, None] * avg.G2 + hp.lambda_W * avg.G


def ddntk_R_step(avg, st, hp):
    """``R^(l+1)`` (N, N, N, N); uses Theta, B, P, R of ``st`` (layer l)."""
    Th, C_W, lW, K, PP = st["Theta"], hp.C_W, hp.lambda_W, avg.K, avg.PP
    avg.t["q3p"]                                     # refuses a jumping sigma''
    QQPP = avg.quad("qqpp")
    # <sigma'''_a0 p1 p2 p3> by Stein along z_a0 (x = z sigma'')
    Q3PPP = (avg.quad("xppp") - K[:, :, None, None] * QQPP
             - K[:, None, :, None] * _e("acbd->abcd", QQPP)
             - K[:, None, None, :] * _e("adbc->abcd", QQPP)) / avg.diag[:, None, None, None]
    T01, T02, T03 = Th[:, :, None, None], Th[:, None, :, None], Th[:, None, None, :]
    src = C_W ** 2 * T01 * T02 * T03 * Q3PPP + lW * C_W * T02 * T03 * avg.quad("qspp")
    psi = C_W * Th * avg.dqp + lW * avg.QS       # C_W Th01 <q'_0 p_1> + lW <q_0 s_1>
    B = st["B"]
    ar = np.arange(B.shape[0])
    prop = (psi[:, :, None, None] * B[ar, ar][:, None, :, :]
            + _e("ikly,ijy->ijkl", st["P"], _Phi(avg, Th, hp))
            + C_W * PP[:, :, None, None] * st["R"])
    return src + hp.ratio * C_W * PP[None, None, :, :] * prop


def ddntk_S_step(avg, st, hp):
    """``S^(l+1)``; uses Theta, B, S."""
    Th, C_W, lW, PP, B = st["Theta"], hp.C_W, hp.lambda_W, avg.PP, st["B"]
    T01, T02, T13 = Th[:, :, None, None], Th[:, None, :, None], Th[None, :, None, :]
    P01 = PP[:, :, None, None]
    src = C_W ** 2 * T01 * T02 * T13 * avg.quad("qqpp") + lW * C_W * T02 * T13 * avg.quad("pppp")
    prop = C_W * T01 * avg.QQ[:, :, None, None] * B + C_W * P01 * st["S"] + lW * P01 * B
    return src + hp.ratio * C_W * PP[None, None, :, :] * prop


def ddntk_T_step(avg, st, hp):
    """``T^(l+1)``; uses Theta, F, Q, T."""
    Th, C_W, lW, PP = st["Theta"], hp.C_W, hp.lambda_W, avg.PP
    T01, T02, T13 = Th[:, :, None, None], Th[:, None, :, None], Th[None, :, None, :]
    QPPS = avg.quad("qpps")
    phi2 = (C_W ** 2 * T02 * T13 * avg.quad("qqpp") + lW * C_W * T13 * _e("badc->abcd", QPPS)
            + lW * C_W * T02 * QPPS
            + lW ** 2 * np.moveaxis(avg.quad("sspp"), (0, 1), (2, 3)))   # <phi_02 phi_13>
    Phi = _Phi(avg, Th, hp)
    P02, P13 = PP[:, None, :, None], PP[None, :, None, :]
    prop = (_e("ixjy,ikx,jly->ijkl", st["F"], Phi, Phi)
            + C_W * P13 * _e("jlib,ikb->ijkl", st["Q"], Phi)
            + C_W * P02 * _e("ikjb,jlb->ijkl", st["Q"], Phi)
            + C_W ** 2 * P02 * P13 * st["T"])
    return T01 * phi2 + hp.ratio * prop


def ddntk_U_step(avg, st, hp):
    """``U^(l+1)``; uses Theta, U."""
    Th, C_W, PP = st["Theta"], hp.C_W, avg.PP
    src = C_W ** 2 * Th[:, :, None, None] * Th[:, None, :, None] * Th[None, :, None, :] \
        * avg.quad("qqpp")
    return src + hp.ratio * C_W ** 2 * PP[:, None, None, :] * PP[None, :, :, None] * st["U"]
