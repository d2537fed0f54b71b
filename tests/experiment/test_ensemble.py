"""The ensemble engine: reproducibility, and measurements with exact answers.

Every Monte Carlo comparison below is against a result that is exact at any
width (so no O(1/n^2) allowance is needed) and uses 4 standard errors.
"""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pdlt  # noqa: E402
from pdlt import gaussian  # noqa: E402
from pdlt.experiment import Ensemble, Estimate, Measurement  # noqa: E402

from conftest import max_zscore, powered  # noqa: E402

RELU_CRIT = dict(activation="relu", C_b=0.0, C_W=2.0)


# ---------------------------------------------------------------------------
# reproducibility
# ---------------------------------------------------------------------------

def test_same_seed_same_networks_whatever_the_chunking():
    mlp = pdlt.MLP(n0=3, width=5, depth=3, activation="tanh", C_b=0.1)
    ens = Ensemble(mlp, networks=50, seed=3)
    W, b = ens.parameters()
    W2, b2 = ens.parameters(17, 41)
    for l in range(3):
        assert torch.equal(W[l][17:41], W2[l]) and torch.equal(b[l][17:41], b2[l])
    # a larger ensemble starts with the smaller one; another seed differs
    W3, _ = Ensemble(mlp, networks=80, seed=3).parameters()
    assert torch.equal(W3[0][:50], W[0])
    W4, _ = Ensemble(mlp, networks=50, seed=4).parameters()
    assert not torch.equal(W4[0], W[0])
    x = np.random.default_rng(0).normal(size=(2, 3))
    stats = ["K", "V", "Theta", "A", "B", "D", "F"]
    ref = Ensemble(mlp, networks=50, seed=3).measure(x, stats=stats)
    for chunk in (1, 7, 50):
        m = Ensemble(mlp, networks=50, seed=3, chunk_size=chunk).measure(x, stats=stats)
        for s in stats:
            np.testing.assert_allclose(m[s].mean, ref[s].mean, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(m[s].stderr, ref[s].stderr, rtol=1e-10, atol=1e-14)


def test_block_size_depends_on_the_mlp_only():
    mlp = pdlt.MLP(n0=3, width=5, depth=3)
    a = Ensemble(mlp, networks=10, memory_budget=10_000)
    b = Ensemble(mlp, networks=10_000, memory_budget=1 << 33)
    assert a.block_size == b.block_size
    W, _ = a.parameters()
    W2, _ = b.parameters(0, 10)
    assert torch.equal(W[1], W2[1])


def test_float32_matches_float64():
    mlp = pdlt.MLP(n0=2, width=8, depth=3, activation="gelu")
    m64 = Ensemble(mlp, networks=40, seed=1).measure(K1=1.0, stats=["K", "Theta"])
    m32 = Ensemble(mlp, networks=40, seed=1, dtype=torch.float32).measure(K1=1.0, stats=["K", "Theta"])
    np.testing.assert_allclose(m32["K"].mean, m64["K"].mean, rtol=1e-5)
    np.testing.assert_allclose(m32["Theta"].mean, m64["Theta"].mean, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    mlp = pdlt.MLP(n0=2, width=16, depth=3, activation="tanh")
    x = np.random.default_rng(0).normal(size=(3, 2))
    cpu = Ensemble(mlp, networks=64, seed=5).measure(x, stats=["K", "V", "Theta", "B"])
    gpu = Ensemble(mlp, networks=64, seed=5, device="cuda").measure(x, stats=["K", "V", "Theta", "B"])
    Wc, _ = Ensemble(mlp, networks=64, seed=5).parameters()
    Wg, _ = Ensemble(mlp, networks=64, seed=5, device="cuda").parameters()
    assert torch.equal(Wc[1], Wg[1].cpu())
    for s in ("K", "V", "Theta", "B"):
        np.testing.assert_allclose(gpu[s].mean, cpu[s].mean, rtol=1e-10, atol=1e-12)


def test_bad_input_errors():
    mlp = pdlt.MLP(n0=2, width=4, depth=2)
    with pytest.raises(ValueError, match="networks"):
        Ensemble(mlp, networks=0)
    with pytest.raises(TypeError, match="pdlt.MLP"):
        Ensemble("relu")
    ens = Ensemble(mlp, networks=4)
    with pytest.raises(ValueError, match="unknown statistic"):
        ens.measure(K1=1.0, stats=["K", "Z"])
    with pytest.raises(ValueError, match="exactly one"):
        ens.measure(stats=["K"])
    with pytest.raises(ValueError, match="n0=2"):
        ens.measure(np.ones((3, 5)))
    with pytest.raises(ValueError, match="layers"):
        ens.measure(K1=1.0, layers=[3])
    with pytest.raises(ValueError, match="K_theory"):
        ens.measure(K1=1.0, stats=["G1"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            Ensemble(mlp, device="cuda")


# ---------------------------------------------------------------------------
# exact results
# ---------------------------------------------------------------------------

def test_deep_linear_fourth_moment_exact_at_any_width():
    """Deep linear net (C_b = 0, C_W = 1), equal widths n, one input with K1 = 1:
    E[z^2] = 1 and E[z^4] / (3 E[z^2]^2) = (1 + 2/n)^(l-1) exactly, so
    V_same = V_pair = n ((1 + 2/n)^(l-1) - 1) (NOTATION.md)."""
    n, L = 6, 4
    mlp = pdlt.MLP(n0=3, width=n, depth=L, n_out=n, activation="linear", C_b=0.0, C_W=1.0)
    m = Ensemble(mlp, networks=4000, seed=0).measure(K1=1.0, stats=["K", "V"])
    l = np.arange(1, L + 1)
    fan_in = np.array(mlp.widths[:-1])
    exact = fan_in * ((1 + 2 / n) ** (l - 1) - 1)
    powered(np.ones(L), m["K"].mean, m["K"].stderr, label="linear K")
    for name in ("V_pair", "V_same", "V"):
        powered(exact[1:], m[name].mean[1:], m[name].stderr[1:], label=f"linear {name}",
                max_resolution=0.5)
    # layer 1 is exactly Gaussian: V^(1) = 0
    assert abs(m["V_pair"].mean[0]) < 4 * m["V_pair"].stderr[0]


def test_relu_criticality_K_constant_Theta_linear():
    """ReLU at C_b = 0, C_W = 2, one input: E[z_i^2] = K1 and E[H_ii] = Theta^(l) exactly at
    any width (sign symmetry of z_j makes E[theta(z_j) X] = E[X]/2 for any X even in z_j);
    the theory gives Theta^(l) = l (lambda_b + lambda_W K1 / 2) ... here linear in l."""
    mlp = pdlt.MLP(n0=4, width=16, depth=5, **RELU_CRIT)
    m = Ensemble(mlp, networks=3000, seed=1).measure(K1=1.0, stats=["K", "Theta"])
    f = pdlt.flow(mlp, K1=1.0)
    powered(f.K, m["K"].mean, m["K"].stderr, label="relu K")
    # layer 1 Theta is deterministic (stderr 0): compare it exactly
    assert m["Theta"].mean[0] == pytest.approx(f.Theta[0], rel=1e-12)
    powered(f.Theta[1:], m["Theta"].mean[1:], m["Theta"].stderr[1:], label="relu Theta")
    np.testing.assert_allclose(np.diff(f.Theta), f.Theta[1] - f.Theta[0], rtol=1e-12)


def test_second_layer_kernel_exact_for_several_inputs():
    """Layer-1 preactivations are exactly Gaussian with kernel K^(1), so E[z^(2) z^(2)] = K^(2)
    and E[H^(2)] = Theta^(2) exactly at any width, for any activation."""
    x = np.random.default_rng(3).normal(size=(3, 4))
    mlp = pdlt.MLP(n0=4, width=10, depth=2, n_out=4, activation="tanh", C_b=0.1, C_W=1.3,
                   lambda_b=0.5, lambda_W=1.5)
    m = Ensemble(mlp, networks=3000, seed=2).measure(x, stats=["K", "Theta"], layers=[2])
    f = pdlt.flow(mlp, x)
    assert m["K"].mean.shape == (1, 3, 3)
    powered(f.K[1], m["K"].mean[0], m["K"].stderr[0], label="layer-2 K")
    powered(f.Theta[1], m["Theta"].mean[0], m["Theta"].stderr[0], label="layer-2 Theta")


#: tanh's layer-2 V, A, D (3000 networks) resolve to 81 %, 68 %, 55 %: they reject x0 and
#: x2 (z 4.8-8.3) but not x0.5 (2.5-2.6); relu's and tanh's B, F, relu's V, A, D resolve to
#: 5-22 % and reject all three
LAYER2_UNRESOLVED = {("tanh", "V"), ("tanh", "A"), ("tanh", "D")}


def _moments(act, K):
    kw = dict(kinks=act.kinks, period=act.period)
    e = lambda fn: float(gaussian.expect(fn, K, **kw))  # noqa: E731
    return e


@pytest.mark.parametrize("name", ["tanh", "relu"])
def test_second_layer_four_point_statistics_exact(name):
    """Single input, layer 2 (fan-in n1). Conditionally on layer 1 the neurons of layer 2
    are independent, so at any width, with s, s' = sigma(z), sigma'(z), z ~ N(0, K1):
      V  = C_W^2 Var(s^2)                                      (V^(1) = 0)
      A  = Var(lambda_W s^2 + C_W Theta1 s'^2)
      D  = C_W Cov(lambda_W s^2 + C_W Theta1 s'^2, s^2)
      B  = C_W^2 Theta1^2 <s'^4>,   F = C_W^2 Theta1 <s'^2 s^2>."""
    cw, lb, lw, K1 = (2.0 if name == "relu" else 1.2), 0.6, 1.4, 0.9
    mlp = pdlt.MLP(n0=2, width=12, depth=2, n_out=6, activation=name, C_b=0.0, C_W=cw,
                   lambda_b=lb, lambda_W=lw)
    act = mlp.activation
    e = _moments(act, K1)
    G0 = K1 / cw
    th1 = lb + lw * G0
    s2, s4 = e(lambda z: act.sigma(z) ** 2), e(lambda z: act.sigma(z) ** 4)
    d2, d4 = e(lambda z: act.d1(z) ** 2), e(lambda z: act.d1(z) ** 4)
    s2d2 = e(lambda z: act.sigma(z) ** 2 * act.d1(z) ** 2)
    exact = {
        "V": cw ** 2 * (s4 - s2 ** 2),
        "A": lw ** 2 * (s4 - s2 ** 2) + 2 * lw * cw * th1 * (s2d2 - s2 * d2)
        + (cw * th1) ** 2 * (d4 - d2 ** 2),
        "D": cw * (lw * (s4 - s2 ** 2) + cw * th1 * (s2d2 - s2 * d2)),
        "B": cw ** 2 * th1 ** 2 * d4,
        "F": cw ** 2 * th1 * s2d2,
    }
    m = Ensemble(mlp, networks=3000, seed=4).measure(K1=K1, stats=list(exact))
    for s, v in exact.items():
        est = m.layer(2)[s]
        if (name, s) in LAYER2_UNRESOLVED:
            powered(v, est.mean, est.stderr, label=f"{name} layer-2 {s}", factors=(2.0,))
        else:
            powered(v, est.mean, est.stderr, label=f"{name} layer-2 {s}", max_resolution=0.5)
        if s in ("V", "A", "D"):
            assert abs(m.layer(1)[s].mean) <= 4 * m.layer(1)[s].stderr + 1e-12
    assert m.layer(2)["V_pair"].stderr > 0 and m.layer(2)["V_same"].stderr > 0


def test_pair_patterns_of_derivative_statistics():
    """P, Q, R, S, T, U pick the documented neuron patterns (checked against loops),
    and vanish at layer 1 (z^(1) is linear in the parameters)."""
    from pdlt.experiment.ensemble import _deriv_sufficient
    from pdlt.experiment.ntk import ddntk_autodiff, dntk_autodiff, preactivations
    mlp = pdlt.MLP(n0=2, width=3, depth=2, n_out=3, activation="tanh")
    ens = Ensemble(mlp, networks=2, seed=0)
    W, b = ens.parameters()
    x = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
    z = preactivations(W, b, x, mlp.activation)[-1]
    out = _deriv_sufficient(W, b, x, mlp, 2, z, ["P", "Q", "R", "S", "T", "U"])
    dH = dntk_autodiff(W, b, x, mlp, 2)[..., 0, 0, 0]
    ddI, ddII = (t[..., 0, 0, 0, 0] for t in ddntk_autodiff(W, b, x, mlp, 2))
    n = 3
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    zz = z[..., 0]
    for m in range(2):
        ref = {
            "dHz_P": np.mean([(dH[m, i, j, j] * zz[m, i]).item() for i, j in pairs]),
            "dHz_Q": np.mean([(dH[m, i, i, j] * zz[m, j]).item() for i, j in pairs]),
            "ddI_R": np.mean([ddI[m, i, i, j, j].item() for i, j in pairs]),
            "ddII_S": np.mean([ddII[m, i, i, j, j].item() for i, j in pairs]),
            "ddII_T": np.mean([ddII[m, i, j, i, j].item() for i, j in pairs]),
            "ddII_U": np.mean([ddII[m, i, j, j, i].item() for i, j in pairs]),
        }
        for k, v in ref.items():
            assert out[k][m].reshape(-1)[0] == pytest.approx(v, rel=1e-12, abs=1e-15), k
    res = Ensemble(mlp, networks=4, seed=0).measure(K1=1.0, stats=["P", "Q", "R", "S", "T", "U"])
    for s in "PQRSTU":
        assert res.layer(1)[s].mean == 0.0


def test_measurement_api_and_json_shape():
    mlp = pdlt.MLP(n0=2, width=4, depth=3, activation="erf")
    x = np.random.default_rng(0).normal(size=(2, 2))
    m = Ensemble(mlp, networks=30, seed=0).measure(x, stats=["K", "Theta"], layers=[1, 3])
    assert isinstance(m, Measurement) and m.layers == (1, 3)
    assert isinstance(m.layer(3)["K"], Estimate) and m.layer(3).K.mean.shape == (2, 2)
    assert m["K"].mean.shape == (2, 2, 2) and m["K"].n_networks == 30
    d = m.to_dict()
    assert [row["layer"] for row in d["layers"]] == [1, 3]
    assert set(d["layers"][0]["K"]) == {"mean", "stderr"}
    s = Ensemble(mlp, networks=30, seed=0).measure(K1=2.0, stats=["K", "V"])
    assert isinstance(s.layer(2)["K"].mean, float) and s["V"].mean.shape == (3,)
    assert list(s.layer(2).estimates) == ["K", "V", "V_pair", "V_same"]


def test_theory_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import pdlt, pdlt.theory\n"
            "print(pdlt.flow(pdlt.MLP(n0=1, width=3, depth=2), K1=1.0).K)\n"
            "try:\n    import pdlt.experiment\nexcept ImportError as e:\n"
            "    assert 'pip install' in str(e), e\n    print('blocked')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "blocked" in r.stdout
