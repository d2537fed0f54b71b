r"""The ddNTK statistics R, S, T, U at order 1/n."""
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
             + ratio * (chi_perp * C_W ** 2 * Th * t["qq"] * B + chi_perp ** 2 * S
                        + lambda_W * chi_perp ** 2 / C_W * B))
    phi2 = ((C_W * Th) ** 2 * t["qqpp"] + 2 * C_W * Th * lambda_W * t["qspp"]
            + lambda_W ** 2 * t["sspp"])
    dphi = C_W * Th * t["dqp"] + lambda_W * t["dss"]
    T_new = Th * phi2 + ratio * (F * dphi ** 2 + 2 * chi_perp * Q * dphi + chi_perp ** 2 * T)
    U_new = C_W ** 2 * Th ** 3 * t["qqpp"] + ratio * chi_perp ** 2 * U
    return R_new, S_new, T_new, U_new
