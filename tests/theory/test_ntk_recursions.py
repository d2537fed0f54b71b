"""A, B, D, F recursions: exact closed forms, structure, errors (no torch).

Closed forms below were derived by hand from the single-input recursions of
pdlt.theory.ntk (module docstring), independently of the code:

* deep linear net, C_W = 1, C_b = 0, lambda_b = 0, lambda_W = 1, K1 = 1:
  K = 1, Theta_l = l, V_l = 2 (l - 1), B_l = sum_{m<l} m^2, F_l = sum_{m<l} m,
  D_l = l (l - 1), A_l = 2 sum_{m<l} m^2;
* ReLU at criticality (C_W = 2, C_b = 0), lambda_b = 0, lambda_W = 1, K1 = 1:
  Theta_l = l / 2, B' = B + 2 Theta^2 so B_l = sum_{m<l} m^2 / 2,
  F' = F + 2 Theta so F_l = l (l - 1) / 2.
"""

import numpy as np
import pytest

import pdlt
from pdlt.theory.ntk_criticality import NTK_STATISTICS


def ntk_fluctuation_flow(mlp, x=None, **kw):
    return pdlt.statistics(mlp, x, get=NTK_STATISTICS, **kw)

EPS = np.finfo(float).eps
L = 7


def _cum(f):
    return np.array([sum(f(m) for m in range(1, l)) for l in range(1, L + 1)], dtype=float)


def test_deep_linear_closed_forms():
    mlp = pdlt.MLP(n0=3, width=16, depth=L, activation="linear", C_W=1.0, lambda_b=0.0,
                   lambda_W=1.0)
    f = ntk_fluctuation_flow(mlp, K1=1.0)
    l = np.arange(1, L + 1)
    np.testing.assert_allclose(f.Theta, l, rtol=100 * EPS)
    np.testing.assert_allclose(f["B"], _cum(lambda m: m * m), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f["F"], _cum(lambda m: m), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f["D"], l * (l - 1.0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f["A"], 2 * _cum(lambda m: m * m), rtol=1e-12, atol=1e-12)


def test_relu_critical_closed_forms():
    mlp = pdlt.MLP(n0=2, width=16, depth=L, activation="relu", C_W=2.0, lambda_b=0.0,
                   lambda_W=1.0)
    f = ntk_fluctuation_flow(mlp, K1=1.0)
    l = np.arange(1, L + 1)
    np.testing.assert_allclose(f.Theta, l / 2.0, rtol=1e-12)   # exactly linear in l
    np.testing.assert_allclose(f["B"], 0.5 * _cum(lambda m: m * m), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f["F"], l * (l - 1) / 2.0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu", "erf"])
def test_first_layer_zero_and_scaling_with_learning_rates(act):
    """A, B ~ lambda^2 and D, F ~ lambda (all learning rates scaled together)."""
    mlp = pdlt.MLP(n0=2, width=8, depth=4, activation=act, C_W=1.5, C_b=0.1,
                   lambda_b=0.3, lambda_W=0.7)
    f1 = ntk_fluctuation_flow(mlp, K1=0.8)
    f2 = ntk_fluctuation_flow(mlp.with_(lambda_b=0.6, lambda_W=1.4), K1=0.8)
    for k in NTK_STATISTICS:
        assert f1[k][0] == 0.0
    for k, p in (("A", 2), ("B", 2), ("D", 1), ("F", 1)):
        np.testing.assert_allclose(f2[k], 2.0 ** p * f1[k], rtol=1e-12, atol=1e-14)


def test_unequal_widths_ratio():
    """Propagation terms carry n_l / n_{l-1}: B' = source + r chi_perp^2 B."""
    a = ntk_fluctuation_flow(pdlt.MLP(n0=2, widths=(10, 20, 40), activation="linear"), K1=1.0)
    # linear, C_W = 1: B' = Theta^2 + r B, Theta_l = l + 1 (lambda_b = lambda_W = 1)
    Th = a.Theta
    B2 = Th[0] ** 2
    B3 = Th[1] ** 2 + (20 / 10) * B2
    B4 = Th[2] ** 2 + (40 / 20) * B3
    np.testing.assert_allclose(a["B"][1:], [B2, B3, B4], rtol=1e-12)


def test_bad_kernel():
    mlp = pdlt.MLP(n0=2, width=8, depth=3, C_b=0.0)
    with pytest.raises(ValueError, match="zero variance at layer 1"):
        ntk_fluctuation_flow(mlp, K1=0.0)


def test_slopes_scale_invariant_closed_forms():
    """ReLU, lambda_b = 0: Theta = theta l, B' = B + 2 Theta^2 -> B/Theta^2 ~ (2/3) l;
    F' = F + 2 Theta K/2... -> F/(K Theta) ~ l. Linear: B ~ l/3 Theta^2, F ~ l/2 K Theta."""
    from pdlt.theory.ntk_criticality import ntk_slopes
    r = ntk_slopes("relu", lambda_b=0.0)
    assert abs(r["B"] - 2 / 3) < 1e-5 and abs(r["F"] - 1.0) < 1e-5
    assert r["P"] == 0.0 and r["R"] == 0.0 and r["U"] == 0.0
    lin = ntk_slopes("linear", lambda_b=0.0)
    assert abs(lin["B"] - 1 / 3) < 1e-5 and abs(lin["F"] - 0.5) < 1e-5


def test_slopes_k0_class_converge_in_depth():
    from pdlt.theory.ntk_criticality import ntk_slopes
    a, b = ntk_slopes("tanh", depth=1024), ntk_slopes("tanh", depth=4096)
    for k in ("A", "B", "D", "F", "P", "Q", "R", "S", "T", "U"):
        assert abs(a[k] - b[k]) <= 2e-2 * abs(b[k]) + 1e-6, (k, a[k], b[k])
    assert a["universality_class"] == "K*=0"


def test_critical_learning_rates_keep_theta_finite():
    from pdlt.theory.ntk_criticality import critical_learning_rates
    for act in ("relu", "tanh"):
        th = []
        for L in (64, 256):
            lr = critical_learning_rates(act, L)
            mlp = pdlt.MLP(n0=1, width=1, depth=L, activation=act, C_b=lr["C_b"],
                           C_W=lr["C_W"], lambda_b=lr["lambda_b"], lambda_W=lr["lambda_W"])
            th.append(pdlt.flow(mlp, K1=1.0).Theta[-1])
        assert abs(th[1] - th[0]) < 0.05 * th[1], (act, th)
    with pytest.raises(ValueError, match="depth"):
        critical_learning_rates("relu", 0)
    with pytest.raises(ValueError, match="no critical point"):
        critical_learning_rates("sigmoid", 8)   # no critical point at all


@pytest.mark.parametrize("act", ["gelu", "swish"])
def test_half_stable_learning_rates_keep_theta_finite(act):
    """K^(1) = K*: K stays at K*, chi_perp = 1, so lambda ~ 1/L gives
    Theta^(L) = lambda_b + lambda_W <sigma^2>_{K*} = lambda_b + lambda_W (K* - C_b) / C_W."""
    from pdlt.theory.ntk_criticality import critical_learning_rates
    crit = pdlt.criticality(act)
    want = 0.7 + 1.3 * (crit.K_star - crit.C_b) / crit.C_W
    for L in (64, 256):
        lr = critical_learning_rates(act, L, lambda_b=0.7, lambda_W=1.3)
        assert lr["universality_class"] == "half-stable" and lr["p_perp"] == 0.0
        mlp = pdlt.MLP(n0=1, width=1, depth=L, activation=act, C_b=lr["C_b"], C_W=lr["C_W"],
                       lambda_b=lr["lambda_b"], lambda_W=lr["lambda_W"])
        f = pdlt.flow(mlp, K1=crit.K_star)
        np.testing.assert_allclose(f.K, crit.K_star, rtol=1e-13)
        np.testing.assert_allclose(f.Theta, want * np.arange(1, L + 1) / L, rtol=1e-12)


@pytest.mark.parametrize("act", ["gelu", "swish"])
def test_half_stable_slopes(act):
    """At K* the recursions have layer-independent coefficients: X^(l) is a polynomial
    in l of degree a + k (k from SLOPE_DEPTH_POWERS). Checked: the (d+1)-th difference
    vanishes and the d-th does not; the finite-difference slopes agree between depths
    and with an independent two-step Richardson extrapolation of X / (Theta^a K^b l^k)."""
    from pdlt.theory.ntk_criticality import SLOPE_DEPTH_POWERS, SLOPE_NORMALIZATIONS, ntk_slopes
    a, b = ntk_slopes(act, depth=16), ntk_slopes(act, depth=1024)
    assert a["universality_class"] == "half-stable"
    norms, powers = SLOPE_NORMALIZATIONS["half-stable"], SLOPE_DEPTH_POWERS["half-stable"]
    for k in NTK_STATISTICS:
        assert isinstance(b[k], float) and b[k] != 0.0
        assert abs(a[k] - b[k]) <= 1e-9 * abs(b[k]), (k, a[k], b[k])
    crit = pdlt.criticality(act)
    L = 2048
    lr = pdlt.theory.critical_learning_rates(act, L)
    mlp = pdlt.MLP(n0=1, width=1, depth=L, activation=act, C_b=crit.C_b, C_W=crit.C_W,
                   lambda_b=lr["lambda_b"], lambda_W=lr["lambda_W"])
    f = st = pdlt.statistics(mlp, K1=crit.K_star, get=NTK_STATISTICS)
    l = np.arange(1, L + 1)
    for k in NTK_STATISTICS:
        (pa, pb), q = norms[k], powers[k]
        x = st[k][9:40]
        n = pa + q
        dd, dd1 = np.diff(x, n=n), np.diff(x, n=n + 1)
        # float64 floor of the (n+1)-th difference: each x_l carries the rounding of
        # the l <= 40 recursion steps before it (a few flops each: <= 16 l eps |x_l|),
        # and the difference sums 2^(n+1) of them with unit-or-larger binomial weights
        floor = 2.0 ** (n + 1) * 16 * 40 * EPS * np.max(np.abs(x))
        assert np.max(np.abs(dd1)) < max(1e-7 * np.max(np.abs(dd)), floor), k   # degree <= a + k
        assert np.ptp(dd) < 1e-6 * abs(dd[0]), k                     # degree == a + k
        g = st[k] / (f.Theta ** pa * f.K ** pb * l ** q)
        rich = (8 * g[L - 1] - 6 * g[L // 2 - 1] + g[L // 4 - 1]) / 3
        assert abs(rich - b[k]) < 2e-4 * abs(b[k]), (k, rich, b[k])
    # B and F: O(1) and close to the ReLU-like values (B ~ 2/3 + ..., F ~ 1 + ...)
    assert 0.6 < b["B"] < 0.75 and 0.95 < b["F"] < 1.05


def test_residual_mlp_refused_not_ignored():
    """N inputs of a residual MLP are served by the residual modules (not by the plain
    steps, which would ignore the skip connections): the flow equals
    pdlt.theory.residual_multi's A and differs from the gamma = 0 network's."""
    from pdlt.theory.residual_multi import residual_ad_multi
    mlp = pdlt.MLP(n0=2, width=8, depth=3, n_out=8, gamma=0.5)
    x = np.array([[1.0, 0.0], [0.6, 0.8]])
    f = pdlt.statistics(mlp, x, get=("A",)).A
    np.testing.assert_allclose(f, residual_ad_multi(mlp, x)["A"], rtol=1e-12, atol=1e-14)
    plain = pdlt.statistics(mlp.with_(gamma=0.0), x, get=("A",)).A
    assert np.max(np.abs(f[-1] - plain[-1])) > 0.1 * np.max(np.abs(plain[-1]))


def test_half_stable_recursions_vs_ensemble_at_k_star():
    """GELU at its critical point with K^(1) = K* (the half-stable class): B, F, D, A of the
    recursions against ensembles of real networks (torch; skipped without it). Two widths,
    n = 32 and 64, 5000 networks each, seed fixed; the Richardson extrapolation
    2 m(2n) - m(n) removes the 1/n term; tolerance 4 se plus half the observed
    first-order shift |m(2n) - m(n)| for the residual O(1/n^2) term, as in
    tests/experiment/test_ntk_ensemble.py. Measured z: all < 1 (about 5 s). At layer 4
    each statistic also rejects the theory x0, x0.5 and x2 (negative controls)."""
    pytest.importorskip("torch")
    from pdlt.experiment import Ensemble
    from pdlt.report.rows import compare
    from conftest import powered
    crit = pdlt.criticality("gelu")

    def mlp(n):
        return pdlt.MLP(n0=2, width=n, depth=4, n_out=n, activation="gelu", C_b=crit.C_b,
                        C_W=crit.C_W, lambda_b=0.5, lambda_W=1.5)

    stats = ["A", "B", "D", "F"]
    m1 = Ensemble(mlp(32), networks=5000, seed=11).measure(K1=crit.K_star, stats=stats,
                                                           progress=False)
    m2 = Ensemble(mlp(64), networks=5000, seed=11).measure(K1=crit.K_star, stats=stats,
                                                           progress=False)
    th = ntk_fluctuation_flow(mlp(32), K1=crit.K_star)
    np.testing.assert_allclose(th.K, crit.K_star, rtol=1e-13)
    for s in stats:
        a, b = np.asarray(m1[s].mean), np.asarray(m2[s].mean)
        ext = 2 * b - a
        se = np.sqrt(4 * np.asarray(m2[s].stderr) ** 2 + np.asarray(m1[s].stderr) ** 2)
        allowance = 0.5 * np.abs(b - a)
        c = compare(th[s][1:], ext[1:], se[1:], allowance[1:])
        assert c.passed, f"{s}: {c.describe()}"
        # with power: at the deepest layer the same comparison rejects x0, x0.5 and x2
        powered(th[s][-1], ext[-1], se[-1], allowance[-1], label=f"gelu {s} at layer 4")
