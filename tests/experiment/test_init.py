"""init_critical_: torch models at criticality reproduce the predicted kernel.

Exactness used for the tolerances: at layer 2 the preactivations of layer 1
are exactly Gaussian with variance K^(1) at any width, so E[z^(2)^2] = K^(2)
exactly; for ReLU and linear networks E[z^(l)^2] = K^(l) exactly at every
depth (the mean of z^2 obeys the infinite-width recursion: each neuron is
symmetric given the previous layer). The only error is then statistical:
4 standard errors of the mean over independent models.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import pdlt  # noqa: E402
from conftest import powered  # noqa: E402
from pdlt.theory.criticality import NoCriticalPointError, criticality  # noqa: E402
from pdlt.torch import detect_activation, init_critical_  # noqa: E402

MODELS = 2000


def _mlp(n0, width, depth, act_module):
    layers = [nn.Linear(n0, width)]
    for _ in range(depth - 2):
        layers += [act_module(), nn.Linear(width, width)]
    layers += [act_module(), nn.Linear(width, width)]
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("module, name, depth", [
    (nn.GELU, "gelu", 2),
    (nn.Tanh, "tanh", 2),
    (nn.SiLU, "swish", 2),
    (nn.ReLU, "relu", 6),
    (lambda: nn.LeakyReLU(0.2), "leaky_relu(0.2)", 5),
])
def test_ensemble_reproduces_the_kernel(module, name, depth):
    n0, width = 4, 16
    x = torch.linspace(-1.0, 1.5, n0, dtype=torch.float64)
    model = _mlp(n0, width, depth, module)
    g = torch.Generator().manual_seed(1234)
    per_model = np.empty(MODELS)
    with torch.no_grad():
        for m in range(MODELS):
            _, res = init_critical_(model, generator=g, return_criticality=True)
            z = model(x)
            per_model[m] = float((z * z).mean())  # average over the output neurons
    mean, se = per_model.mean(), per_model.std(ddof=1) / math.sqrt(MODELS)
    mlp = pdlt.MLP(n0=n0, width=width, depth=depth, activation=name, C_b=res.C_b, C_W=res.C_W)
    K1 = res.C_b + res.C_W * float((x * x).mean())
    K_L = pdlt.flow(mlp, K1=K1).K[-1]
    powered(K_L, mean, se, label=f"{name} depth {depth} K")  # with controls x0, x0.5, x2


def test_weights_and_biases_have_the_critical_variances():
    model = nn.Sequential(nn.Linear(400, 300), nn.GELU(), nn.Linear(300, 200))
    init_critical_(model, seed=0)
    res = criticality("gelu")
    for lin in (model[0], model[2]):
        w = lin.weight.detach().double().numpy().ravel()
        var = res.C_W / lin.weight.shape[1]
        # sample variance of N Gaussians: relative stderr sqrt(2/N)
        assert abs(w.var() / var - 1) < 4 * math.sqrt(2 / w.size)
    b = torch.cat([model[0].bias, model[2].bias]).detach().double().numpy()
    assert abs(b.var() / res.C_b - 1) < 4 * math.sqrt(2 / b.size) + 4 / math.sqrt(b.size)


def test_seed_and_generator_are_reproducible():
    a = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    b = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    init_critical_(a, seed=7)
    init_critical_(b, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a[2].bias, b[2].bias)
    assert float(a[0].bias.detach().abs().max()) == 0.0  # tanh: C_b = 0


@pytest.mark.parametrize("module, name, params", [
    (nn.ReLU(), "relu", {}), (nn.LeakyReLU(0.3), "leaky_relu", {"slope": 0.3}),
    (nn.Tanh(), "tanh", {}), (nn.GELU(), "gelu", {}), (nn.SiLU(), "swish", {}),
    (nn.ELU(alpha=0.5), "elu", {"alpha": 0.5}), (nn.Sigmoid(), "sigmoid", {}),
    (nn.Softplus(), "softplus", {}),
])
def test_detection(module, name, params):
    act = detect_activation(nn.Sequential(nn.Linear(2, 3), module, nn.Linear(3, 1)))
    assert act.name == name and act.parameters == params


def test_gelu_tanh_approximation_is_its_own_function():
    res = criticality(detect_activation(nn.Sequential(nn.Linear(2, 3),
                                                      nn.GELU(approximate="tanh"))))
    exact = criticality("gelu")
    assert res.universality_class == "half-stable"
    assert res.K_star != pytest.approx(exact.K_star, rel=1e-6)
    assert res.K_star == pytest.approx(exact.K_star, rel=1e-2)


def test_errors():
    with pytest.raises(NoCriticalPointError, match="sigmoid"):
        init_critical_(nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1)))
    with pytest.raises(ValueError, match="several activations"):
        init_critical_(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 3), nn.ReLU()))
    with pytest.raises(ValueError, match="no activation module"):
        init_critical_(nn.Sequential(nn.Linear(2, 3)))
    with pytest.raises(ValueError, match="seed"):
        init_critical_(nn.Sequential(nn.Linear(2, 3), nn.ReLU()), seed=1,
                       generator=torch.Generator())
    # explicit activation overrides detection (and works without activation modules)
    m = nn.Sequential(nn.Linear(2, 3))
    init_critical_(m, activation="relu", seed=0)
    with pytest.raises(pdlt.ActivationError):
        init_critical_(m, activation=lambda z: np.where(z > 0, np.nan, z))
