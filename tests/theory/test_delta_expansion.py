"""Two nearby inputs: delta expansion and finite-angle flow against the full two-input flow.

The delta expansion keeps every component to O(delta^2) relative accuracy
(K_[0] to O(delta^4)), so halving delta must shrink the relative error of
K_[1] and K_[2] by 4 and of K_[0] by 16 (within 10 %: the next order is
O(delta^2) smaller). The finite-angle flow of ReLU is exact and must equal
pdlt.flow's closed-form two-input flow to its precision (1e-9).
"""

import math

import numpy as np
import pytest

import pdlt
from pdlt.theory import criticality as C
from pdlt.theory import delta_expansion as N


def test_components_roundtrip():
    K = np.array([[2.0, 1.2], [1.2, 1.5]])
    K0, K1, K2 = N.delta_components(K)
    np.testing.assert_allclose(N.delta_kernel(K0, K1, K2), K, rtol=1e-15)
    with pytest.raises(ValueError, match="2, 2"):
        N.delta_components(np.eye(3))


def _pair(delta):
    x0 = np.array([1.0, 0.5])
    dx = np.array([0.3, -0.8]) * delta
    return np.stack([x0 + dx / 2, x0 - dx / 2])


@pytest.mark.parametrize("name", ["tanh", "gelu", "erf"])
def test_delta_expansion_converges_like_delta_squared(name):
    res = C.criticality(name)
    mlp = pdlt.MLP(n0=2, width=1, depth=30, activation=name, C_b=res.C_b, C_W=res.C_W)
    errs = []
    for delta in (0.04, 0.02):
        x = _pair(delta)
        K0, K1, K2 = N.delta_components(pdlt.flow(mlp, x).K)
        df = N.delta_flow(mlp, x)
        errs.append([np.max(np.abs(df.K0 - K0) / K0), np.max(np.abs(df.K1 - K1) / np.abs(K1)),
                     np.max(np.abs(df.K2 - K2) / K2)])
        # first layer is exact
        assert df.K2[0] == pytest.approx(K2[0], rel=1e-12)
    ratio = np.array(errs[0]) / np.array(errs[1])
    assert ratio[0] == pytest.approx(16, rel=0.1)
    assert ratio[1] == pytest.approx(4, rel=0.1) and ratio[2] == pytest.approx(4, rel=0.1)
    assert max(errs[1]) < 1e-3


def test_delta_flow_chis_match_single_input_flow():
    mlp = pdlt.MLP(n0=2, width=1, depth=10, activation="tanh", C_b=0.1, C_W=1.3)
    x = _pair(1e-3)
    df = N.delta_flow(mlp, x)
    single = pdlt.flow(mlp, K1=df.K0[0])
    np.testing.assert_allclose(df.chi_perp, single.chi_perp, rtol=1e-5)
    np.testing.assert_allclose(df.chi_parallel, single.chi_parallel, rtol=1e-5)


@pytest.mark.parametrize("name", ["relu", "leaky_relu(0.2)"])
def test_finite_angle_flow_equals_two_input_flow(name):
    res = C.criticality(name)
    mlp = pdlt.MLP(n0=2, width=1, depth=1000, activation=name, C_b=0.0, C_W=res.C_W)
    psi1 = 1.0
    x = np.array([[1.0, 0.0], [2.0 * math.cos(psi1), 2.0 * math.sin(psi1)]])
    K = pdlt.flow(mlp, x).K
    cos_full = K[:, 0, 1] / np.sqrt(K[:, 0, 0] * K[:, 1, 1])
    af = N.angle_flow(name, psi1, 1000)
    np.testing.assert_allclose(af.cos_psi, cos_full, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(af.psi[::50], np.arccos(np.clip(cos_full, -1, 1))[::50], rtol=1e-5)


def test_angle_power_law_relu():
    # series of cos psi' = cos psi + (2c/pi)(sin psi - psi cos psi) (sympy):
    # psi' = psi - a psi^2 - (a^2/2) psi^3 - (2c(10c^2 + 3pi^2)/(135 pi^3)) psi^4, a = 2c/(3pi);
    # y = a psi then obeys 1/y' - 1/y = 1 + (3/2) y + (5/2 + 3 pi^2/(20 c^2)) y^2 + O(y^3)
    c = 0.5
    af = N.angle_flow("relu", 2.0, 3000)
    assert af.alpha == pytest.approx(1 / (3 * math.pi), rel=1e-15)
    y = af.alpha * af.psi
    inc = 1 / y[1:] - 1 / y[:-1]
    q = 2.5 + 3 * math.pi ** 2 / (20 * c * c)
    resid = inc - 1 - 1.5 * y[:-1] - q * y[:-1] ** 2
    yy = y[:-1][99:]
    # O(y^3) bound at the scale of the known coefficients, q^2 y^3
    assert np.all(np.abs(resid[99:]) <= q * q * yy ** 3 + 1e-9)
    assert np.max(np.abs(resid[99:]) / yy ** 2) < 0.05 * q  # the y^2 term is the right one
    # psi^(l) ~ 3 pi / l at depth >= 1000, with a log l / l correction
    for L in (1000, 3000):
        assert L * af.psi[L - 1] / (3 * math.pi) == pytest.approx(1, abs=2 * math.log(L) / L + 0.01)


def test_linear_preserves_angle_and_errors():
    assert np.allclose(N.angle_flow("linear", 0.7, 20).psi, 0.7)
    with pytest.raises(ValueError, match="scale-invariant"):
        N.angle_flow("tanh", 0.5, 10)
    with pytest.raises(ValueError, match="angle"):
        N.angle_flow("relu", 4.0, 10)
