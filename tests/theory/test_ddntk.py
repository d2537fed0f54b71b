"""R, S, T, U recursions: exact closed forms (hand-derived from the single-input recursions).

Deep linear net, C_W = 1, C_b = 0, lambda_b = 0, lambda_W = 1, K1 = 1 (Theta_m = m,
B_m = sum_{k<m} k^2, F_m = m (m-1)/2, Q from test_dntk): R = U = 0,
S' = S + m^2 + B_m, T' = T + m + F_m + 2 Q_m.
ReLU at criticality (C_W = 2, lambda_b = 0): R = U = 0 (sigma'' = 0 pointwise),
S' = S + 2 Theta^2 <sigma'^4> + B / 2 = S + m^2 / 4 + B_m / 2 with Theta_m = m/2, B_m = sum k^2 / 2.
"""

import numpy as np
import pytest

import pdlt
from pdlt.theory.ntk_criticality import NTK_STATISTICS


def ntk_fluctuation_flow(mlp, x=None, **kw):
    return pdlt.statistics(mlp, x, get=NTK_STATISTICS, **kw)

L = 7


def _seq(step):
    out, x = [0.0], 0.0
    for m in range(1, L):
        x = step(m, x)
        out.append(x)
    return np.array(out)


def _B(m, c=1.0):
    return c * sum(k * k for k in range(1, m))


def test_deep_linear_closed_forms():
    mlp = pdlt.MLP(n0=3, width=16, depth=L, activation="linear", C_W=1.0, lambda_b=0.0)
    f = ntk_fluctuation_flow(mlp, K1=1.0)
    assert np.all(f["R"] == 0.0) and np.all(f["U"] == 0.0)
    Q = _seq(lambda m, q: q + m + m * (m - 1) / 2)
    np.testing.assert_allclose(f["S"], _seq(lambda m, s: s + m * m + _B(m)), rtol=1e-12)
    np.testing.assert_allclose(
        f["T"], _seq(lambda m, t: t + m + m * (m - 1) / 2 + 2 * Q[m - 1]), rtol=1e-12)


def test_relu_critical_closed_forms():
    mlp = pdlt.MLP(n0=2, width=16, depth=L, activation="relu", C_W=2.0, lambda_b=0.0)
    f = ntk_fluctuation_flow(mlp, K1=1.0)
    assert np.all(f["R"] == 0.0) and np.all(f["U"] == 0.0)
    np.testing.assert_allclose(
        f["S"], _seq(lambda m, s: s + m * m / 4 + _B(m, 0.5) / 2), rtol=1e-12)


@pytest.mark.parametrize("act", ["tanh", "gelu", "erf"])
def test_cubic_in_learning_rates(act):
    mlp = pdlt.MLP(n0=2, width=8, depth=4, activation=act, C_W=1.2, C_b=0.1,
                   lambda_b=0.3, lambda_W=0.7)
    f1 = ntk_fluctuation_flow(mlp, K1=0.8)
    f2 = ntk_fluctuation_flow(mlp.with_(lambda_b=0.6, lambda_W=1.4), K1=0.8)
    for k in ("R", "S", "T", "U"):
        np.testing.assert_allclose(f2[k], 8.0 * f1[k], rtol=1e-12, atol=1e-14)


def test_elu_rejected_for_R():
    mlp = pdlt.MLP(n0=2, width=8, depth=3, activation="elu", C_W=1.0)
    with pytest.raises(ValueError, match="jumps"):
        ntk_fluctuation_flow(mlp, K1=1.0)
