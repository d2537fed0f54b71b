"""Depth slopes of the residual NTK statistics (pdlt.theory.residual.residual_slopes).

Checks: at gamma = 0 (and gamma = 1e-7, through the residual recursions) they are the
plain :func:`pdlt.theory.ntk_criticality.ntk_slopes`; at gamma = 0.5 they agree with a
direct fit of :func:`pdlt.statistics` of the residual MLP (Richardson extrapolation
of the normalized statistic from depths L/2 and L, an independent estimator).
"""

import numpy as np
import pytest

import pdlt
from pdlt.theory.ntk_criticality import SLOPE_DEPTH_POWERS, SLOPE_NORMALIZATIONS, ntk_slopes
from pdlt.theory.residual import residual_mlp, residual_slopes

NAMES = tuple("ABDFPQRSTU")


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_gamma_zero_and_the_limit_gamma_to_zero_are_the_plain_slopes(act):
    """Plain slopes: Richardson at depth 2048 (scale-invariant, relative error ~2e-7
    for ReLU's A = 17/27) or exact finite differences (half-stable). gamma = 1e-7 runs
    the residual recursions (two-depth averages); the slopes are analytic in gamma
    with O(1) first derivatives (measured ~1.6), so they move by <= 2e-7."""
    plain = ntk_slopes(act)
    for g in (0.0, 1e-7):
        s = residual_slopes(act, g, depth=24)
        assert s["universality_class"] == plain["universality_class"]
        for k in NAMES:
            scale = max(abs(plain[k]), 1e-6 * max(abs(plain[x]) for x in NAMES))
            assert abs(s[k] - plain[k]) <= 1e-6 * scale, (g, k, s[k], plain[k])
    assert s["nu_V"] == pytest.approx(pdlt.theory.vertex.vertex_slope(act), rel=1e-6)


def _richardson_fit(act, gamma, L):
    """Per statistic: ``2 g(L) - g(L/2)`` of ``g = X/(Theta^a K^b l^k)`` and its
    accuracy estimate ``|R(L) - R(L/2)|`` (the O(1/L^2) remainder shrinks 4x per
    doubling, so the estimate is ~3x the error)."""
    cr = pdlt.criticality(act)
    cls = cr.universality_class
    K1 = cr.K_star or 1.0
    st = pdlt.statistics(residual_mlp(act, gamma, width=8, depth=L, n_out=8), K1=K1,
                         get=NAMES)
    l = np.arange(1, L + 1)
    out = {}
    for k, (a, b) in SLOPE_NORMALIZATIONS[cls].items():
        g = np.asarray(st[k]) / (st.Theta ** a * st.K ** b * l ** SLOPE_DEPTH_POWERS[cls][k])
        r1, r2 = 2 * g[L - 1] - g[L // 2 - 1], 2 * g[L // 2 - 1] - g[L // 4 - 1]
        out[k] = (r1, abs(r1 - r2))
    return out


def test_relu_gamma_half_against_a_direct_fit():
    s = residual_slopes("relu", 0.5, depth=24)
    fit = _richardson_fit("relu", 0.5, 96)
    for k in "ABDFQST":
        v, tol = fit[k]
        assert tol < 3e-3 * abs(v), k               # the fit resolves the slope (<= 0.3 %)
        assert abs(s[k] - v) <= tol, (k, s[k], v, tol)
        # and would reject a slope off by its resolution's worth of 1 %
        assert abs(1.01 * s[k] - v) > tol, k
    for k in "PRU":                                  # sigma'' = 0 almost everywhere
        assert s[k] == 0.0 and fit[k][0] == 0.0
    # the gamma dependence is real: far outside the fit's accuracy from gamma = 0
    plain = ntk_slopes("relu")
    assert all(abs(s[k] - plain[k]) > 20 * fit[k][1] for k in "ABDFQST")
    assert s["learning_to_fluctuation"] == pytest.approx(
        (s["P"] + 2 * s["Q"]) / (s["A"] + 2 * s["B"]), rel=1e-15)


@pytest.mark.slow
def test_gelu_gamma_half_against_a_direct_fit():
    """Half-stable (P, R, U nonzero). A and T grow like l^3 Theta^a with tiny leading
    coefficients (~1e-3 of the subleading l terms) and are not resolved by a fit at
    depth 64; they are skipped (their extraction is the same finite difference)."""
    s = residual_slopes("gelu", 0.5, depth=40)
    assert s["learning_to_fluctuation"] is None
    fit = _richardson_fit("gelu", 0.5, 64)
    checked = []
    for k in NAMES:
        v, tol = fit[k]
        if tol > 0.2 * abs(v):
            continue
        checked.append(k)
        assert abs(s[k] - v) <= tol, (k, s[k], v, tol)
        assert abs(1.25 * s[k] - v) > tol and abs(0.8 * s[k] - v) > tol, k
    assert set("BFPRSU") <= set(checked), checked


def test_k0_class_at_gamma_zero_is_the_plain_slopes():
    """K*=0 (tanh): at gamma = 0 the fitted slopes equal the plain ntk_slopes (depth
    8192, Richardson; itself within ~1e-3 of the limit: B = 1/3 to 3.3e-4, U = 2 to
    7.9e-4) to within the fit's own slope_error plus 1e-3 relative; the fit's error
    estimate is not vacuous (< 3e-3), so a 1 % change is rejected."""
    s, ref = residual_slopes("tanh", 0.0), ntk_slopes("tanh", depth=8192)
    assert s["universality_class"] == "K*=0"
    for k in NAMES:
        tol = s["slope_error"][k] + 1e-3 * abs(ref[k])
        assert s["slope_error"][k] < 3e-3 * abs(ref[k]), k
        assert abs(s[k] - ref[k]) <= tol, (k, s[k], ref[k], tol)
        assert abs(1.01 * s[k] - ref[k]) > tol and abs(0.99 * s[k] - ref[k]) > tol, k


def test_k0_class_residual_fit_is_consistent():
    """gamma = 0.5: (i) the same fit applied to V/(K^2 l) gives the exact
    nu_V = (2/3)(1 - gamma^4) to 1e-3 relative; (ii) the slopes from depth 64 and 128
    agree within the depth-64 slope_error (the estimate bounds the change)."""
    from pdlt.theory.ntk_criticality import critical_learning_rates
    from pdlt.theory.residual import _k0_fit
    from pdlt.theory.statistics import statistics
    L = 128
    lr = critical_learning_rates("tanh", L)
    m = residual_mlp("tanh", 0.5, width=8, depth=L, n_out=8, lambda_b=lr["lambda_b"],
                     lambda_W=lr["lambda_W"])
    st = statistics(m, K1=1.0, get=["V"])
    l = np.arange(1, L + 1, dtype=float)
    nu = _k0_fit(np.asarray(st.V) / (np.asarray(st.K) ** 2 * l), l, L / 4, L)
    assert abs(nu - (2 / 3) * (1 - 0.5 ** 4)) < 1e-3 * 0.625
    a, b = residual_slopes("tanh", 0.5, depth=64), residual_slopes("tanh", 0.5, depth=128)
    for k in NAMES:
        assert abs(a[k] - b[k]) <= a["slope_error"][k], (k, a[k], b[k], a["slope_error"][k])
    assert a["nu_V"] == pytest.approx((2 / 3) * (1 - 0.5 ** 4), rel=1e-12)


@pytest.mark.parametrize("bad, match", [(dict(activation="tanh", depth=32), ">= 64"),
                                        (dict(depth=5), "depth must be")])
def test_bad_input(bad, match):
    kw = dict(activation="relu", gamma=0.5, depth=24) | bad
    with pytest.raises(ValueError, match=match):
        residual_slopes(kw.pop("activation"), kw.pop("gamma"), **kw)


def test_aspect_ratio_figure_draws_the_representation_learning_slopes():
    """The report figure carries the slopes of residual_slopes and the ratio; at gamma = 0
    ReLU's (P + 2Q)/(A + 2B) is (2/9)/(17/27 + 4/3) = 6/53 (plain closed forms,
    lambda_b = lambda_W = 1; exact finite differences, round-off ~1e-10)."""
    pytest.importorskip("matplotlib")
    from pdlt.report.residual import residual_aspect_ratio_figure
    fig, d = residual_aspect_ratio_figure(("relu", "tanh"), gammas=[0.0, 0.5], depth=24)
    r = d["relu"]
    assert r["learning_to_fluctuation"][0] == pytest.approx(6 / 53, rel=1e-8)
    s = residual_slopes("relu", 0.5, depth=24)
    for k in NAMES:
        assert r[f"nu_{k}"][1] == s[k]
    assert r["learning_to_fluctuation"][1] == s["learning_to_fluctuation"]
    assert "nu_Q" not in d["tanh"] and len(d["tanh"]["r_star_exact"]) == 2   # K*=0: r* only
    assert len(fig.axes) == 7                          # six panels and r*'s second axis
