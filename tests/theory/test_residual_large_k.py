"""Residual N-input statistics of smooth activations at large kernels (issue #15).

``benchmarks/residual_large_k.py`` has the full table; these are its cheapest rows.
"""

import warnings

import numpy as np
import pytest

import pdlt
from pdlt.theory import residual_multi, residual_ntk

X0 = np.random.default_rng(0).standard_normal((2, 3))


def _mlp(act="tanh"):
    return pdlt.MLP(n0=3, width=16, depth=3, activation=act, C_b=0.1, C_W=1.0, gamma=0.5)


def _one_input(m, K1, name):
    return pdlt.statistics(m, K1=float(K1), get=[name])[name]


def test_diagonal_is_the_one_input_module_at_large_kernels(monkeypatch):
    # K up to 1.5e3 over the layers read: the diagonal reads one- and two-variable
    # averages only, resolved at any K (before: G1 3e-2, H1 0.2 of scale off, unwarned).
    # The off-diagonal entries' four-variable trajectory averages (four distinct
    # directions) take the sheared 2-D table within graded_four's budget (session 16):
    # silent, estimate below 1e-8. Without the budget they reach expect_nd's point budget
    # and pdlt.statistics warns from their propagated estimate, which integration_error
    # carries (before h61 tanh H1 was 20 % off at K ~ 1.5e3, behind a K > 64 warning)
    m = _mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        st = pdlt.statistics(m, 100.0 * X0, get=["G1", "H1"])
    assert st.integration_error[-1] < 1e-8 * np.max(np.abs(st.H1[-1]))
    assert np.max(np.einsum("lii->li", st.K[:-1])) > 1e3
    for name in ("G1", "H1"):
        for a in range(2):
            one = _one_input(m, st.K[0, a, a], name)
            dist = np.max(np.abs(st[name][:, a, a] - one)) / np.max(np.abs(one))
            assert dist < 1e-10, (name, a, dist)
    monkeypatch.setattr(residual_multi, "_FOUR_BUDGET", 0.0)
    with pytest.warns(RuntimeWarning, match="point budget"):
        old = pdlt.statistics(m, 100.0 * X0, get=["G1", "H1"])
    assert old.integration_error[-1] > 1e-8 * np.max(np.abs(old.H1[-1]))       # why it warns
    assert np.array_equal(np.einsum("lii->li", old.H1), np.einsum("lii->li", st.H1))


def test_collinear_off_diagonal_is_resolved_at_large_kernels():
    # inputs x and (1 + eta) x: the off-diagonal entry is the mean of the two one-input
    # statistics to O(eta^2); its three- and four-variable averages at K ~ 1.5e3 take the
    # nested rule graded in z (before, on expect_nd's capped rules: G1 3e-3, H1 3e-2 off,
    # flagged). Measured 1e-11 (G1) .. 4e-11 (H1); the floor of the check (eta 1e-6 and
    # 1e-5 give the same) is the one-input reference's and the averages' ~1e-14 times the
    # entry's K^1/2 cancellation
    m = _mlp()
    x = 100.0 * np.stack([X0[0], (1.0 + 1e-5) * X0[0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # nothing flagged
        st = pdlt.statistics(m, x, get=["G1"], error=True)
    assert np.max(np.einsum("lii->li", st.K[:-1])) > 1e3
    ref = 0.5 * (_one_input(m, st.K[0, 0, 0], "G1") + _one_input(m, st.K[0, 1, 1], "G1"))
    dist = np.max(np.abs(st["G1"][:, 0, 1] - ref)) / np.max(np.abs(ref))
    assert dist < 1e-9, dist
    assert np.max(st.error["G1"][:, 0, 1]) < 1e-8 * np.max(np.abs(ref))


def test_error_estimate_covers_the_rounding_of_huge_kernels_and_warns():
    # K ~ 1.5e11: the averages are right to their covariance's own float64 rounding
    # (eps K in its entries moves G1 by 2.5e-5 of scale); the estimate (d eps sqrt(K) of
    # an average's scale, propagated by the perturbed fold) covers the distance, 9e-6
    m = _mlp()
    x = 1e6 * np.stack([X0[0], (1.0 + 1e-9) * X0[0]])
    with pytest.warns(RuntimeWarning, match="float64 rounding"):
        st = pdlt.statistics(m, x, get=["G1"], error=True)
    ref = 0.5 * (_one_input(m, st.K[0, 0, 0], "G1") + _one_input(m, st.K[0, 1, 1], "G1"))
    dist = np.abs(st["G1"][:, 0, 1] - ref)
    assert np.max(dist) > 1e-7 * np.max(np.abs(ref))          # the check bites
    assert np.all(st.error["G1"][:, 0, 1] >= dist), (dist, st.error["G1"][:, 0, 1])
    assert np.all(st.integration_error >= dist)               # per layer


def test_moderate_kernels_are_unchanged():
    # K <= 10 at every layer read: every average is expect_nd as before, bit for bit
    m = _mlp()
    x = 2.0 * X0
    st = pdlt.statistics(m, x, get=["G1", "H1"])
    assert np.max(np.einsum("lii->li", st.K[:-1])) < residual_multi._EXACT_K
    old = residual_multi._EXACT_K, residual_ntk._DIRECT_K
    residual_multi._EXACT_K = residual_ntk._DIRECT_K = np.inf
    try:
        ref = pdlt.statistics(m, x, get=["G1", "H1"])
    finally:
        residual_multi._EXACT_K, residual_ntk._DIRECT_K = old
    for name in ("G1", "H1"):
        assert np.array_equal(st[name], ref[name]), name


def test_one_input_metric_follows_its_large_kernel_asymptote():
    # tanh saturates: G1 at the last layer falls like K^-1/2 (two-depth averages of
    # sigma'^2-like functions); the Stein form of Cov(sigma^2, (sigma^2)'') lost ~sqrt(K)
    # and gave 2 % at K = 1.5e9, the wrong sign at 1.5e11
    m = _mlp()
    K1 = 1.4848e9
    g_lo = residual_ntk.residual_vertex_metric(m, K1)["G1"][-1]
    g_hi = residual_ntk.residual_vertex_metric(m, 100.0 * K1)["G1"][-1]
    assert g_lo < 0 and g_hi < 0
    assert abs(g_hi / g_lo - 0.1) < 1e-3 * 0.1
