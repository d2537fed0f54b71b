"""P, Q recursions: exact closed forms (hand-derived from the single-input recursions).

Deep linear net, C_W = 1, C_b = 0, lambda_b = 0, lambda_W = 1, K1 = 1:
Theta_m = m, F_m = m (m - 1) / 2, so Q' = Q + m + F_m and P = 0.
ReLU at criticality: sigma'' = 0 pointwise, so P = 0; Q' = Q + lambda_W C_W Theta <sigma'^2 sigma^2>
+ chi_par^2 (lambda_W / C_W) F = Q + 2 Theta (K/2) + F / 2 with Theta_m = m / 2, F_m = m (m-1)/2.
"""

import numpy as np
import pytest

import pdlt
from pdlt.theory.ntk_criticality import NTK_STATISTICS


def ntk_fluctuation_flow(mlp, x=None, **kw):
    return pdlt.statistics(mlp, x, get=NTK_STATISTICS, **kw)

L = 7


def _rec(step):
    out, x = [0.0], 0.0
    for m in range(1, L):
        x = step(m, x)
        out.append(x)
    return np.array(out)


def test_deep_linear_closed_forms():
    mlp = pdlt.MLP(n0=3, width=16, depth=L, activation="linear", C_W=1.0, lambda_b=0.0)
    f = ntk_fluctuation_flow(mlp, K1=1.0)
    assert np.all(f["P"] == 0.0)
    np.testing.assert_allclose(f["Q"], _rec(lambda m, q: q + m + m * (m - 1) / 2), rtol=1e-12)


def test_relu_critical_closed_forms():
    mlp = pdlt.MLP(n0=2, width=16, depth=L, activation="relu", C_W=2.0, lambda_b=0.0)
    f = ntk_fluctuation_flow(mlp, K1=1.0)
    assert np.all(f["P"] == 0.0)
    np.testing.assert_allclose(
        f["Q"], _rec(lambda m, q: q + m / 2 + m * (m - 1) / 4), rtol=1e-12)


@pytest.mark.parametrize("act", ["tanh", "gelu", "erf", "relu"])
def test_quadratic_in_learning_rates(act):
    mlp = pdlt.MLP(n0=2, width=8, depth=4, activation=act, C_W=1.2, C_b=0.1,
                   lambda_b=0.3, lambda_W=0.7)
    f1 = ntk_fluctuation_flow(mlp, K1=0.8)
    f2 = ntk_fluctuation_flow(mlp.with_(lambda_b=0.9, lambda_W=2.1), K1=0.8)
    for k in ("P", "Q"):
        np.testing.assert_allclose(f2[k], 9.0 * f1[k], rtol=1e-12, atol=1e-14)


def test_odd_activation_signs():
    """tanh: sigma'' sigma <= 0 pointwise, so the P source is negative."""
    mlp = pdlt.MLP(n0=2, width=8, depth=3, activation="tanh", C_W=1.0)
    assert ntk_fluctuation_flow(mlp, K1=1.0)["P"][1] < 0
