"""pdlt.torch: reading a user's model, its initialization, verify, learning rates.

Statistical checks state their resolution ``(4 stderr + allowance)/|theory|``
and are shown to reject wrong values (negative controls); seeds are fixed.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import pdlt  # noqa: E402
import pdlt.torch  # noqa: E402
from pdlt.experiment.bridge import verify_model  # noqa: E402
from pdlt.experiment.model import (UnsupportedModelError, check_forward, estimate_init,  # noqa: E402
                                   read_architecture)
from pdlt.theory.diagnosis import diagnose_mlp  # noqa: E402

Residual = pdlt.torch.Residual


def mlp_seq(*widths, act=nn.ReLU, bias=True):
    layers = []
    for i in range(len(widths) - 1):
        if i:
            layers.append(act())
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------
# architecture reading: a zoo of models
# ---------------------------------------------------------------------------

class Chain(nn.Module):
    """A custom forward that is a chain with functional activations and z + f(z)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 2)

    def forward(self, x):
        z = self.a(x)
        z = z + self.b(torch.tanh(z))
        return self.c(F.tanh(z))


class PostActivationResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 1)

    def forward(self, x):
        z = self.a(x)
        z = z + torch.relu(self.b(z))       # x + sigma(W x): not the book's block
        return self.c(torch.relu(z))


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.b(torch.relu(2.0 * self.a(x)))


class SneakyLinear(nn.Linear):
    """An nn.Linear whose forward does something else: only the forward check sees it."""

    def forward(self, x):
        return 2.0 * super().forward(x)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.h, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 1)

    def forward(self, x):
        z = self.h(torch.relu(self.a(x)))
        return self.c(torch.relu(self.h(torch.relu(z))))


class ExtraParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp_seq(3, 8, 1)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.net(x)


def test_plain_nested_and_biasless_models_are_read():
    m = nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.Sequential(nn.Linear(8, 8), nn.GELU()),
                      nn.Identity(), nn.Linear(8, 2, bias=False))
    arch = read_architecture(m)
    assert arch.widths == (3, 8, 8, 2)
    assert arch.activation == "gelu"
    assert [l.bias for l in arch.layers] == [True, True, False]
    assert [l.path for l in arch.layers] == ["0", "2.0", "4"]
    check_forward(m, arch)
    est = estimate_init(arch)
    assert est[2].C_b == 0.0 and est[2].C_b_stderr == 0.0       # no bias: exactly 0
    # two Linear layers without activation in between: the deep linear network
    lin = nn.Sequential(nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 1))
    assert read_architecture(lin).activation == "linear"


def test_residual_blocks_map_to_gamma_xi():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 16),
                      Residual(nn.Sequential(nn.Tanh(), nn.Linear(16, 16)), gamma=0.6, xi=0.8),
                      Residual(nn.Sequential(nn.Tanh(), nn.Linear(16, 16)), gamma=0.6, xi=0.8),
                      nn.Tanh(), nn.Linear(16, 1))
    arch = read_architecture(m)
    assert [l.gamma for l in arch.layers] == [0.0, 0.6, 0.6, 0.0]
    assert [l.xi for l in arch.layers] == [1.0, 0.8, 0.8, 1.0]
    check_forward(m, arch)   # the MLP's residual forward reproduces the model
    mlp = arch.to_mlp(C_W=1.0)
    assert mlp.gamma == (0.0, 0.6, 0.6, 0.0) and mlp.xi == (1.0, 0.8, 0.8, 1.0)
    # the diagnosis propagates K through the residual layers like pdlt.flow
    d = pdlt.torch.diagnose(m, learning=False)
    ref = pdlt.flow(d.mlp, K1=d.theory.K1)
    np.testing.assert_allclose(d.theory.K, ref.K, rtol=1e-12)
    # A (and H1) of one input are derived for residual MLPs (pdlt.theory.residual_ntk)
    np.testing.assert_allclose(d.theory.A, pdlt.statistics(d.mlp, K1=d.theory.K1,
                                                           get=["A"]).A, rtol=1e-12)
    # measured on copies, the residual forward (gamma, xi) follows the residual theory
    v = pdlt.torch.diagnose(m, verify=True, networks=300, learning=False).verification
    assert v.agrees, str(v)
    assert {r.name for r in v.rows} == {"K", "Theta", "V", "A"}
    k = [r for r in v.rows if r.name == "K"]
    assert all(r.resolution < 0.5 for r in k)
    plain = diagnose_mlp(v.mlp.with_(gamma=0.0, xi=1.0), v.K1, learning=False)
    assert not all(r.agrees for r in v.compare({"K": plain.K_nlo}))  # gamma, xi matter
    # a custom forward z + f(z) is the gamma = xi = 1 block
    c = Chain()
    arch = read_architecture(c)
    assert [(l.gamma, l.xi) for l in arch.layers] == [(0.0, 1.0), (1.0, 1.0), (0.0, 1.0)]
    assert arch.activation == "tanh"
    check_forward(c, arch)


@pytest.mark.parametrize("model,match", [
    (nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.1), nn.ReLU(), nn.Linear(8, 1)),
     r"module '1' \(Dropout\) is dropout"),
    (nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 1)),
     r"module '1' \(LayerNorm\) is a normalization layer"),
    (nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)),
     r"module '1' \(BatchNorm1d\) is a normalization layer"),
    (nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU()), r"module '0' \(Conv1d\) is a convolution"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.MultiheadAttention(4, 2))),
     r"module '2.0' \(MultiheadAttention\) is attention"),
    (nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)),
     "mixes activations: 'relu' .*'tanh'"),
    (nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid()),
     "ends with the activation 'sigmoid'"),
    (nn.Sequential(nn.ReLU(), nn.Linear(3, 1)), "starts with relu"),
    (nn.Sequential(nn.Linear(3, 8), nn.Mish(), nn.Linear(8, 1)), r"\(Mish\) is an activation"),
    (nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1)),
     r"module '2' \(Flatten\) is not a layer"),
    (PostActivationResidual(), "residual connection .* wraps Linear"),
    (Scaled(), "operation 'mul'"),
    (ExtraParameter(), "parameter 'scale' is not"),
    (Shared(), "used by more than one layer"),
    (nn.Sequential(nn.Linear(3, 8), Residual(nn.Sequential(nn.Linear(8, 8), nn.ReLU())),
                   nn.Linear(8, 1)), r"residual block '1'.*must be \(activation, nn.Linear\)"),
])
def test_uncovered_models_are_refused_naming_the_module(model, match):
    with pytest.raises(UnsupportedModelError, match=match):
        read_architecture(model)
    with pytest.raises(UnsupportedModelError):
        pdlt.torch.diagnose(model)


def test_a_forward_the_reading_misses_is_caught():
    m = nn.Sequential(SneakyLinear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    arch = read_architecture(m)         # looks like an MLP ...
    with pytest.raises(UnsupportedModelError, match="differs from the MLP pdlt read"):
        check_forward(m, arch)          # ... but does not compute one
    with pytest.raises(UnsupportedModelError, match="differs"):
        pdlt.torch.diagnose(m)


# ---------------------------------------------------------------------------
# the initialization as it is: C_W, C_b against known inits
# ---------------------------------------------------------------------------

def test_pytorch_default_init_is_estimated_within_its_error():
    # PyTorch's nn.Linear default: kaiming_uniform(a=sqrt(5)) -> W ~ U(+-1/sqrt(fan_in)),
    # so E[W^2] = 1/(3 fan_in), C_W = 1/3; b ~ U(+-1/sqrt(fan_in)), C_b = 1/(3 fan_in)
    torch.manual_seed(1)
    m = mlp_seq(512, 256, 128, act=nn.Tanh)
    est = estimate_init(read_architecture(m))
    for e, n_in in zip(est, (512, 256)):
        assert abs(e.C_W - 1 / 3) <= 4 * e.C_W_stderr
        assert abs(e.C_b - 1 / (3 * n_in)) <= 4 * e.C_b_stderr
        # resolution: 4 stderr is < 3 % of C_W and < 40 % of C_b, so wrong values are rejected
        assert 4 * e.C_W_stderr / (1 / 3) < 0.03 and 4 * e.C_b_stderr * 3 * n_in < 0.4
        for wrong in (0.9 / 3, 1.1 / 3, 0.5, 2.0):
            assert abs(e.C_W - wrong) > 4 * e.C_W_stderr
        for f in (0.5, 2.0):
            assert abs(e.C_b - f / (3 * n_in)) > 4 * e.C_b_stderr
        assert abs(e.W_excess_kurtosis + 1.2) < 0.05      # uniform weights
        assert abs(e.W_mean_z) < 4
    d = pdlt.torch.diagnose(m, learning=False)
    assert any("PyTorch's default initialization" in n for n in d.notes)
    assert not d.theory.at_criticality.any()


def test_critical_gaussian_init_is_estimated_within_its_error():
    m = mlp_seq(64, 256, 256, 8, act=nn.Tanh)
    pdlt.torch.init_critical_(m, seed=3)           # tanh: C_b = 0, C_W = 1
    est = estimate_init(read_architecture(m))
    for e in est:
        assert abs(e.C_W - 1.0) <= 4 * e.C_W_stderr
        assert abs(e.C_W - 0.8) > 4 * e.C_W_stderr and abs(e.C_W - 1.2) > 4 * e.C_W_stderr
        assert e.C_b == 0.0
        assert abs(e.W_excess_kurtosis) <= 4 * e.W_excess_kurtosis_stderr
    d = pdlt.torch.diagnose(m, learning=False)
    assert d.theory.at_criticality.all()
    assert any(n.startswith("at criticality") for n in d.notes)
    assert not any("not Gaussian" in n for n in d.notes)


def test_diagnosis_values_and_outputs(tmp_path):
    torch.manual_seed(0)
    m = mlp_seq(6, 48, 48, 1)
    x = np.random.default_rng(0).standard_normal((20, 6)) * 1.5
    d = pdlt.torch.diagnose(m, x)
    est = d.estimates
    # the theory is the MLP with the estimated variances, at the inputs' mean norm
    G0 = float(np.mean(np.sum(x * x, 1)) / 6)
    assert d.G0 == pytest.approx(G0, rel=1e-14)
    assert d.theory.K[0] == pytest.approx(est[0].C_b + est[0].C_W * G0, rel=1e-14)
    ref = diagnose_mlp(d.mlp, d.theory.K1, learning=False)
    np.testing.assert_array_equal(d.theory.V_over_nK2, ref.V_over_nK2)
    # each input's own kernel: the single-input flow from its own K^(1)
    i = 7
    own = pdlt.flow(d.mlp, K1=est[0].C_b + est[0].C_W * float(x[i] @ x[i]) / 6).K
    np.testing.assert_allclose(d.K_inputs[:, i], own, rtol=1e-12)
    # relu off criticality: chi = C_W / 2 at every K, depth scales 1/|ln chi|
    np.testing.assert_allclose(d.theory.chi_perp[:-1], [e.C_W / 2 for e in est[1:]], rtol=1e-12)
    assert d.theory.signal_depth < d.architecture.depth
    assert d.theory.representation_learning is not None
    dd = d.to_dict()
    assert [r["layer"] for r in dd["layers"]] == [1, 2, 3]
    assert set(dd["layers"][0]) >= {"C_W", "C_W_stderr", "C_b", "K", "chi_parallel", "chi_perp",
                                    "xi_perp", "V_over_nK2", "A_over_nTheta2", "module"}
    text = str(d)
    assert "chi_perp" in text and "what the theory says" in text
    for name in ("d.png", "d.html"):
        p = d.save_figure(tmp_path / name)
        assert p.stat().st_size > 5000
    with pytest.raises(ValueError, match=r"must end in .png or .html"):
        d.save_figure(tmp_path / "d.pdf")
    with pytest.raises(ValueError, match="features per input but the MLP has n0=6"):
        pdlt.torch.diagnose(m, np.ones((3, 5)))


# ---------------------------------------------------------------------------
# verify=True: theory against re-initialized copies
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def critical_verification():
    m = mlp_seq(4, 32, 32, 32, act=nn.ReLU)
    pdlt.torch.init_critical_(m, seed=0)
    arch = read_architecture(m)
    return arch, verify_model(m, arch, G0=1.0, networks=1000, seed=0)


def test_verify_agrees_at_criticality_and_resolves(critical_verification):
    arch, v = critical_verification
    assert v.init == "init_critical_" and v.networks == 1000
    assert v.mlp.C_W == (2.0,) * 3 and v.mlp.C_b == (0.0,) * 3
    assert v.agrees, str(v)
    names = {(r.layer, r.name) for r in v.rows}
    assert {(l, s) for l in (1, 2, 3) for s in ("K", "Theta")} <= names
    assert {(l, s) for l in (2, 3) for s in ("V", "A")} <= names   # width 32 output: pairs
    # resolution: every row resolves a factor 2 (< 0.5); the measured 1/n statistics too
    worst = max(r.resolution for r in v.rows)
    assert worst < 0.5, f"worst resolution {worst:.2f}"


def test_verify_rejects_wrong_theories(critical_verification):
    arch, v = critical_verification
    th = v.theory
    for f in (0.5, 2.0):
        scaled = {"K": th.K_nlo * f, "Theta": th.Theta_nlo * f, "V": th.V * f, "A": th.A * f}
        rows = v.compare(scaled)
        assert len(rows) == len(v.rows)
        assert not any(r.agrees for r in rows if r.layer > 1 or r.name == "K"), (
            f"theory x{f} not rejected")
    # a wrong C_W (1.6 instead of the critical 2): K decays, and the comparison says so
    wrong = diagnose_mlp(v.mlp.with_(C_W=1.6), v.K1 * 0.8, learning=False)
    rows = v.compare({"K": wrong.K_nlo, "Theta": wrong.Theta_nlo, "V": wrong.V, "A": wrong.A})
    assert not any(r.agrees for r in rows if r.name == "K")
    assert not any(r.agrees for r in rows if r.layer >= 3)


def test_verify_with_the_users_init_function():
    # an off-critical Gaussian init (C_W = 1.2 for relu): the theory follows the init the
    # function actually produces (pooled estimates), and the diagnosis of the model is
    # independent of it
    def my_init(model):
        for mod in model.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=math.sqrt(1.2 / mod.in_features))
                nn.init.normal_(mod.bias, std=math.sqrt(0.1))

    m = mlp_seq(4, 32, 32, 32, act=nn.ReLU)
    d = pdlt.torch.diagnose(m, verify=True, networks=600, init=my_init, seed=1, learning=False)
    v = d.verification
    assert v.init == "my_init"
    np.testing.assert_allclose(v.mlp.C_W, 1.2, rtol=0.02)
    np.testing.assert_allclose(v.mlp.C_b, 0.1, rtol=0.1)
    assert v.agrees, str(v)
    k = [r for r in v.rows if r.name == "K"]
    assert k[-1].theory < 0.6 * k[0].theory            # ordered phase: K decays
    assert all(r.resolution < 0.25 for r in k)
    rows = v.compare({"K": np.full(3, k[0].theory)})   # "K stays put" (criticality) is rejected
    assert not any(r.agrees for r in rows if r.layer >= 2)
    with pytest.raises(ValueError, match="init must be None"):
        pdlt.torch.diagnose(m, verify=True, init="kaiming")


# ---------------------------------------------------------------------------
# learning rates
# ---------------------------------------------------------------------------

def test_param_groups_one_sgd_step_is_the_learning_rate_tensor():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 12, bias=False), nn.Tanh(),
                      nn.Linear(12, 2)).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    y = torch.randn(7, 2, dtype=torch.float64)
    eta, lb, lw = 0.3, [0.5, 0.0, 2.0], [1.0, 3.0, 0.25]
    groups = pdlt.torch.param_groups(m, eta, lambda_b=lb, lambda_W=lw, momentum=0.0)
    assert [g["name"] for g in groups] == ["0.weight", "0.bias", "2.weight", "4.weight",
                                           "4.bias"]
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.SGD(groups)
    loss = 0.5 * ((m(x) - y) ** 2).sum()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in m.named_parameters()}
    opt.step()
    # NOTATION.md: theta_mu <- theta_mu - eta lambda_mu dL/dtheta_mu with
    # lambda_mu = lambda_b^(l) (bias) or lambda_W^(l) / n_{l-1} (weight)
    lam = {"0.weight": lw[0] / 5, "0.bias": lb[0], "2.weight": lw[1] / 16,
           "4.weight": lw[2] / 12, "4.bias": lb[2]}
    for g in groups:   # the rate of each parameter is eta lambda_mu, exactly
        assert g["lr"] == eta * lam[g["name"]]
    eps = np.finfo(np.float64).eps
    for n, p in m.named_parameters():
        # the step torch takes (one fused multiply-add: p + alpha g, alpha = -eta lambda_mu) ...
        assert torch.equal(p.detach(), before[n].add(grads[n], alpha=-(eta * lam[n]))), n
        # ... is the formula up to the rounding of one multiply and one add
        expected = before[n] - (eta * lam[n]) * grads[n]
        bound = 2 * eps * (before[n].abs() + (eta * lam[n] * grads[n]).abs())
        assert bool(((p.detach() - expected).abs() <= bound).all()), n
        if lam[n] != 0.0:
            assert not torch.equal(p.detach(), before[n]), n
        else:
            assert torch.equal(p.detach(), before[n]), n   # lambda_b = 0: frozen biases
    # the depth scaling of critical_learning_rates (relu: lambda / L in every layer)
    r = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    gs = pdlt.torch.param_groups(r, 1.0, critical_depth_scaling=True)
    assert [g["lr"] for g in gs] == pytest.approx([1 / 3 / 3, 1 / 3, 1 / 3 / 8, 1 / 3,
                                                   1 / 3 / 8, 1 / 3], rel=1e-15)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        pdlt.torch.param_groups(m, -1.0)
    with pytest.raises(ValueError, match="lambda_W must be a scalar or one value per layer"):
        pdlt.torch.param_groups(m, 1.0, lambda_W=[1.0, 2.0])


def _train(model, x, y, lr, steps):
    opt = torch.optim.SGD(pdlt.torch.param_groups(model, lr))
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((model(x) - y) ** 2).sum()
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
    return losses


def test_max_stable_learning_rate_separates_convergence_from_divergence():
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((6, 3))
    x = torch.as_tensor(xs)
    y = torch.as_tensor(rng.standard_normal((6, 1)))
    make = lambda: nn.Sequential(nn.Linear(3, 512), nn.Tanh(),  # noqa: E731
                                 nn.Linear(512, 1)).double()
    m = make()
    pdlt.torch.init_critical_(m, seed=0)
    eta = pdlt.torch.max_stable_learning_rate(m, xs)
    Theta = pdlt.flow(read_architecture(m).to_mlp(
        C_b=[e.C_b for e in estimate_init(read_architecture(m))],
        C_W=[e.C_W for e in estimate_init(read_architecture(m))]), xs).Theta[-1]
    assert eta == pytest.approx(2 / np.linalg.eigvalsh(Theta)[-1], rel=1e-12)
    assert pdlt.torch.max_stable_learning_rate(m, xs, reduction="mean") == pytest.approx(
        eta * 6 / 2, rel=1e-15)
    # width 512: H = Theta (1 + O(1/sqrt(n)) ~ 5 %); 0.8 and 1.25 x the bound lie outside that.
    # Below the bound the top kernel mode shrinks by |1 - 1.6| per step; above it, it grows
    # by 1.5 per step (loss x 2.25) until the network leaves the kernel regime (it may then
    # "catapult" to a flatter region rather than diverge, so only the growth is asserted)
    stable = _train(m, x, y, 0.8 * eta, 40)
    m2 = make()
    pdlt.torch.init_critical_(m2, seed=0)
    unstable = _train(m2, x, y, 1.25 * eta, 15)
    assert max(stable[1:]) < stable[0] and stable[-1] < 0.3 * stable[0], stable[::5]
    assert max(unstable) > 30 * unstable[0], unstable


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_model_is_diagnosed_and_stepped_on_its_device():
    m = mlp_seq(4, 32, 32, 1, act=nn.Tanh).cuda()
    pdlt.torch.init_critical_(m, generator=torch.Generator(device="cuda").manual_seed(0))
    d = pdlt.torch.diagnose(m, np.ones((3, 4)), verify=True, networks=50, learning=False)
    assert d.theory.at_criticality.all() and d.verification.agrees
    opt = torch.optim.SGD(pdlt.torch.param_groups(m, 0.1))
    x = torch.randn(5, 4, device="cuda")
    (0.5 * m(x).pow(2).sum()).backward()
    opt.step()
    assert all(p.device.type == "cuda" for p in m.parameters())
