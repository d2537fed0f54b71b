r"""The dNTK statistics P and Q: one step each, N inputs.

Definition (``shared/NOTATION.md``): ``E[dH_{i0i1i2;a0a1a2} z_{i3;a3}] =
(1/n)[d_{i0i3} d_{i1i2} P_{a0a1a2a3} + d_{i0i1} d_{i2i3} Q_{a0a1a2a3} +
d_{i0i2} d_{i1i3} Q_{a0a2a1a3}]``; ``P[a0, a1, a2, a3] = P_{a0a1a2a3}``, likewise
Q; both vanish at layer 1. Derivation: ``docs/derivations/dntk.rst`` (book
§11.2). With ``q = sigma''`` pointwise (0 for the ReLU family, as autodiff sees
it), ``G_{(a0a1)b} = <d_b (p_a0 s_a1)>``, ``G2_{(a0a1)b} = <d_b (q_a0 p_a1)>``
and ``Phi = C_W Theta_{01} G2 + lambda_W G``:

.. math::
    P' &= C_W^2\Theta_{01}\Theta_{02}\langle q_0 p_1 p_2 s_3\rangle
        + r\,C_W^2 PP_{12}\big[\langle q_0 s_3\rangle B_{(00)(12)}
        + \textstyle\sum_b P_{012b} G_{(03)b}\big],\\
    Q' &= C_W^2\Theta_{01}\Theta_{02}\langle q_0 p_1 p_2 s_3\rangle
        + \lambda_W C_W \Theta_{02}\langle p_0 s_1 p_2 s_3\rangle
        + r\,C_W\big[\textstyle\sum \Phi_{(01)b_1} F_{0b_1 2b_2} G_{(23)b_2}
        + C_W PP_{01} \sum_b Q_{012b} G_{(23)b}\big].
"""

from __future__ import annotations

import numpy as np

__all__ = ["dntk_P_step", "dntk_Q_step"]


def _source(avg, Th, C_W):
    return C_W ** 2 * Th[:, :, None, None] * Th[:, None, :, None] * avg.quad("qpps")


def dntk_P_step(avg, st, hp):
    """``P^(l+1)`` (N, N, N, N); uses Theta, B, P of ``st`` (layer l)."""
    Th, C_W, B = st["Theta"], hp.C_W, st["B"]
    ar = np.arange(B.shape[0])
    prop = (avg.QS[:, None, None, :] * B[ar, ar][:, :, :, None]
            + np.einsum("ijkb,ilb->ijkl", st["P"], avg.G))
    return _source(avg, Th, C_W) + hp.ratio * C_W ** 2 * avg.PP[None, :, :, None] * prop


def dntk_Q_step(avg, st, hp):
    """``Q^(l+1)``; uses Theta, F, Q."""
    Th, C_W, lW, G = st["Theta"], hp.C_W, hp.lambda_W, avg.G
    psps = np.transpose(avg.quad("sspp"), (2, 0, 3, 1))       # <p_a0 s_a1 p_a2 s_a3>
    src = _source(avg, Th, C_W) + lW * C_W * Th[:, None, :, None] * psps
    Phi = C_W * Th[:, :, None] * avg.G2 + lW * G
    return src + hp.ratio * C_W * (
        np.einsum("ijx,ixky,kly->ijkl", Phi, st["F"], G)
        + C_W * avg.PP[:, :, None, None] * np.einsum("ijkb,klb->ijkl", st["Q"], G))
