r"""The dNTK statistics P and Q at order 1/n."""
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
