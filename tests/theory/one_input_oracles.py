"""One-input recursions written out by hand: test oracles for pdlt.statistics with K1=.

These are the single-input forms of every step (book chs. 4, 8, 11 and "The
End of Training"; ``docs/derivations/``), in terms of the one-variable
averages of :class:`pdlt.theory._averages.OneVariableTable`. The library has
one step per statistic, written for N inputs; its one-input fold must agree
with these independent scalar lines (tests/theory/test_statistics.py).
``t`` is a mapping of one-variable averages at K^(l); the hyperparameters are
layer l+1's and ``r = n_l / n_{l-1}``.
"""


def vertex(t, V, C_W, r):
    """``V' = C_W^2 (<s^4> - <s^2>^2) + r chi_par^2 V``."""
    chi = C_W * t["dss"]
    return C_W ** 2 * (t["ssss"] - t["ss"] ** 2) + r * chi * chi * V


def metric(t, V, G1, C_W, r):
    """``G1' = r [chi_par G1 + (C_W / 8) <(s^2)''''> V]``."""
    return r * (C_W * t["dss"] * G1 + 0.125 * C_W * t["d4ss"] * V)


def ntk_fluctuations(t, Th, V, A, B, D, F, C_W, lW, r):
    """A', B', D', F' with ``y = lW s^2 + C_W Theta p^2``."""
    chi_par, chi_perp = C_W * t["dss"], C_W * t["pp"]
    var_y = (lW ** 2 * (t["ssss"] - t["ss"] ** 2)
             + 2 * lW * C_W * Th * (t["sspp"] - t["ss"] * t["pp"])
             + (C_W * Th) ** 2 * (t["pppp"] - t["pp"] ** 2))
    cov_ys = lW * (t["ssss"] - t["ss"] ** 2) + C_W * Th * (t["sspp"] - t["ss"] * t["pp"])
    dy = lW * t["dss"] + C_W * Th * t["dpp"]
    return (var_y + r * (dy * dy * V + 2 * chi_perp * dy * D + chi_perp ** 2 * A),
            (C_W * Th) ** 2 * t["pppp"] + r * chi_perp ** 2 * B,
            C_W * cov_ys + r * (chi_par * dy * V + chi_par * chi_perp * D),
            C_W ** 2 * Th * t["sspp"] + r * chi_par ** 2 * F)


def dntk(t, Th, B, F, P, Q, C_W, lW, r):
    """P', Q'."""
    chi_par, chi_perp = C_W * t["dss"], C_W * t["pp"]
    P_new = (C_W * Th) ** 2 * t["qspp"] + r * (chi_perp * C_W * t["qs"] * B
                                                + chi_perp * chi_par * P)
    dphi = C_W * Th * t["dqp"] + lW * t["dss"]
    Q_new = ((C_W * Th) ** 2 * t["qspp"] + lW * C_W * Th * t["sspp"]
             + r * (chi_par * dphi * F + chi_perp * chi_par * Q))
    return P_new, Q_new


def ddntk(t, Th, B, F, P, Q, R, S, T, U, C_W, lW, r):
    """R', S', T', U' (S's B term carries C_W^2 <q^2><p^2>: four layer-(l+1) weights)."""
    chi_perp = C_W * t["pp"]
    R_new = (C_W ** 2 * Th ** 3 * t["q3ppp"] + lW * C_W * Th ** 2 * t["qspp"]
             + r * (chi_perp * (C_W * Th * t["q3p"] * B + C_W * Th * t["dqp"] * P
                                + chi_perp * R)
                    + lW * chi_perp * (t["qs"] * B + t["dss"] * P)))
    S_new = (C_W ** 2 * Th ** 3 * t["qqpp"] + lW * C_W * Th ** 2 * t["pppp"]
             + r * (C_W ** 2 * Th * t["qq"] * t["pp"] * B + chi_perp ** 2 * S
                    + lW * chi_perp ** 2 / C_W * B))
    phi2 = ((C_W * Th) ** 2 * t["qqpp"] + 2 * C_W * Th * lW * t["qspp"]
            + lW ** 2 * t["sspp"])
    dphi = C_W * Th * t["dqp"] + lW * t["dss"]
    T_new = Th * phi2 + r * (F * dphi ** 2 + 2 * chi_perp * Q * dphi + chi_perp ** 2 * T)
    U_new = C_W ** 2 * Th ** 3 * t["qqpp"] + r * chi_perp ** 2 * U
    return R_new, S_new, T_new, U_new


def ntk_mean(t, Th, H1, G1, V, D, F, C_W, lW, r):
    """``H1' = r [lW (dss G1 + d4ss V/8) + C_W (Theta (dpp G1 + d4pp V/8) + pp H1 + dpp (D + 2F))]``."""
    d_ss = t["dss"] * G1 + 0.125 * t["d4ss"] * V
    d_pp = t["dpp"] * G1 + 0.125 * t["d4pp"] * V
    return r * (lW * d_ss + C_W * (Th * d_pp + t["pp"] * H1 + t["dpp"] * (D + 2.0 * F)))


def fold(mlp, K, Theta, table):
    """Every order-1/n statistic at every layer from the one-input lines (dict of lists).

    ``K``, ``Theta`` (L,) from the kernel flow; ``table`` a OneVariableTable at K[:L-1].
    """
    L = mlp.depth
    names = ("V", "G1", "A", "B", "D", "F", "P", "Q", "R", "S", "T", "U", "H1")
    st = dict.fromkeys(names, 0.0)
    out = {k: [0.0] for k in names}
    for l in range(1, L):
        t = {k: float(table[k][l - 1]) for k in (
            "ss", "ssss", "pp", "pppp", "sspp", "dss", "dpp", "qs", "qspp", "dqp", "qq",
            "qqpp", "d4ss", "d4pp", "q3p", "q3ppp")}
        C_W, lW, r = mlp.C_W[l], mlp.lambda_W[l], mlp.widths[l] / mlp.widths[l - 1]
        Th = float(Theta[l - 1])
        new = dict(V=vertex(t, st["V"], C_W, r), G1=metric(t, st["V"], st["G1"], C_W, r))
        new.update(zip("ABDF", ntk_fluctuations(t, Th, st["V"], st["A"], st["B"], st["D"],
                                                st["F"], C_W, lW, r)))
        new.update(zip("PQ", dntk(t, Th, st["B"], st["F"], st["P"], st["Q"], C_W, lW, r)))
        new.update(zip("RSTU", ddntk(t, Th, st["B"], st["F"], st["P"], st["Q"], st["R"],
                                     st["S"], st["T"], st["U"], C_W, lW, r)))
        new["H1"] = ntk_mean(t, Th, st["H1"], st["G1"], st["V"], st["D"], st["F"], C_W, lW, r)
        st = new
        for k in names:
            out[k].append(st[k])
    return out


def residual_vertex(t, K, V, C_W, r, gamma, xi):
    """Residual layer, truncated at the leading two-depth terms (what N inputs compute):
    ``V' = xi^4 C_W^2 (<s^4> - <s^2>^2) + 4 xi^2 gamma^2 C_W dss K^2 + r chi^2 V``."""
    x2, g2 = xi * xi, gamma * gamma
    chi = x2 * C_W * t["dss"] + g2
    return (x2 * x2 * C_W ** 2 * (t["ssss"] - t["ss"] ** 2)
            + 4.0 * x2 * g2 * C_W * t["dss"] * K * K + r * chi * chi * V)


def residual_metric(t, V, G1, C_W, r, gamma, xi):
    """``G1' = r [chi G1 + xi^2 (C_W / 8) <(s^2)''''> V]``, ``chi = xi^2 C_W dss + gamma^2``."""
    x2 = xi * xi
    return r * ((x2 * C_W * t["dss"] + gamma * gamma) * G1 + 0.125 * x2 * C_W * t["d4ss"] * V)
