"""init_critical_(model, gamma=...): the residual convention of pdlt.theory.residual.

Residual layers (nn.Linear after the first with equal in/out widths) get
(1 - gamma^2)/xi^2 times the plain critical variances; the first and a plain
output layer keep the plain ones. The weights are checked through their
empirical variance: with m = fan_in * fan_out draws, the relative standard
error of the sample variance is sqrt(2/m): 1.1 % for the first layer
(64 x 256), 0.55 % for the hidden ones, 3.1 % for the 256 x 8 output layer.
The bands (5 %, 5 %, 12 %: >= 4 se) reject a wrong factor 0.75 at >= 8 se.
"""

import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from pdlt.torch import init_critical_  # noqa: E402


def test_only_residual_layers_are_scaled():
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8))
    init_critical_(net, seed=0, gamma=0.5)
    lins = [m for m in net if isinstance(m, nn.Linear)]
    var = [float(lin.weight.detach().var()) * lin.in_features for lin in lins]
    assert var[0] == pytest.approx(2.0, rel=0.05)         # first layer: plain
    assert var[1] == pytest.approx(1.5, rel=0.05)         # residual layers: (1 - 0.25) * 2
    assert var[2] == pytest.approx(1.5, rel=0.05)
    assert var[3] == pytest.approx(2.0, rel=0.12)         # plain output layer (256 -> 8)
    with pytest.raises(Exception, match=r"\|gamma\| < 1"):
        init_critical_(net, seed=0, gamma=1.0)


def test_gamma_zero_is_unchanged():
    a = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    b = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    init_critical_(a, seed=1)
    init_critical_(b, seed=1, gamma=0.0)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert math.isfinite(float(a[0].weight.detach().sum()))
