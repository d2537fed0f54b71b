"""Four-point vertex V and NLO metric G1: theory against ensembles of real networks.

Theory: :func:`pdlt.statistics` (``get=["V", "G1"]``). Every comparison goes
through ``conftest.powered``: ``|measured - theory| <= 4 stderr + allowance``
must hold AND the same comparison must reject the theory x0.5, x2 and x0.

Method. The measured ``n x (connected correlator)`` (V) and ``n (E[z z] - K)``
(G1) equal the statistic plus ``c/n + O(1/n^2)``; each test measures widths n
and 2n and compares the Richardson extrapolation ``2 m(2n) - m(n)`` with the
theory, allowance ``|m(2n) - m(n)|/2`` for the remaining ``O(1/n^2)`` (measured,
not proportional to the theory). One input: the martingale control variates
of :func:`pdlt.report.suite.measure_cv` (exactly unbiased; G1's standard error
/25, V's /6-12 against the plain neuron averages at n = 64), which is what
makes G1 (0.5-4 % of K at these widths) resolvable at all. For ReLU the
control variate turns the metric into an identity (E[z z] = K exactly, G1 = 0),
so ReLU's G1 is checked with the plain estimator against 0 (an absolute bound).
"""

import numpy as np
import pytest

import pdlt

torch = pytest.importorskip("torch")
from pdlt.experiment import Ensemble  # noqa: E402

from conftest import powered  # noqa: E402
from pdlt.report.rows import width_extrapolation  # noqa: E402
from pdlt.report.suite import measure_cv  # noqa: E402


def _user_activation():
    def tanh_plus_linear(z):
        return np.tanh(z) + 0.25 * z

    act = pdlt.Activation.from_callable(
        tanh_plus_linear, lambda z: 1.25 - np.tanh(z) ** 2,
        lambda z: -2 * np.tanh(z) * (1 - np.tanh(z) ** 2))
    object.__setattr__(act, "torch_fn", lambda z: torch.tanh(z) + 0.25 * z)
    return act


def _gelu_critical():
    try:
        from pdlt.theory.criticality import criticality
        c = criticality("gelu")
        return dict(C_b=c.C_b, C_W=c.C_W), c.K_star
    except ImportError:  # fall back to a subcritical-ish setting
        return dict(C_b=0.05, C_W=1.7), 1.0


CONFIGS = {
    "relu": (dict(activation="relu", C_b=0.0, C_W=2.0), 1.0),
    "tanh": (dict(activation="tanh", C_b=0.0, C_W=1.0), 1.0),
    "gelu": (dict(activation="gelu", **_gelu_critical()[0]), _gelu_critical()[1]),
    "user": (dict(activation=_user_activation(), C_b=0.1, C_W=0.8), 1.0),
}


def _extrapolated(a, b):
    """(ext, se, allowance) of two Estimates (widths n, 2n)."""
    return width_extrapolation(a.mean, a.stderr, b.mean, b.stderr)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_single_input_powered(name):
    """V and G1 at layers 3..5 from widths 32 and 64 (control variates, 1500 networks).

    K1 = 1 for every activation (GELU's fixed point K* = 3.56 is where its G1 is smallest)."""
    kw, K1 = CONFIGS[name][0], 1.0
    depth, M = 5, 1500
    ms, ths = [], None
    for k, n in enumerate((32, 64)):
        mlp = pdlt.MLP(n0=2, width=n, depth=depth, n_out=n, **kw)
        ths = pdlt.statistics(mlp, K1=K1, get=["V", "G1"])
        ms.append(measure_cv(mlp, M, seed=11 + k, K1=K1))
    sl = slice(2, None)
    ext, se, al = _extrapolated(ms[0]["V"], ms[1]["V"])
    powered(ths["V"][sl], ext[sl], se[sl], al[sl], label=f"{name} V", max_resolution=0.5)
    if name != "relu":
        ext, se, al = _extrapolated(ms[0]["G1"], ms[1]["G1"])
        powered(ths["G1"][sl], ext[sl], se[sl], al[sl], label=f"{name} G1",
                max_resolution=0.5)


def test_relu_single_input_metric_is_exact():
    """ReLU, one input: E[z z] = K at every width (G1 = 0); the plain estimator agrees."""
    mlp = pdlt.MLP(n0=2, width=32, depth=5, n_out=32, **CONFIGS["relu"][0])
    th = pdlt.statistics(mlp, K1=1.0, get=["G1"])
    assert np.max(np.abs(th["G1"])) < 1e-12
    m = Ensemble(mlp, networks=1500, seed=3).measure(K1=1.0, stats=["G1"], K_theory=th,
                                                     progress=False)["G1"]
    c = powered(th["G1"], m.mean, m.stderr, label="relu G1 = 0", factors=())
    assert not c.relative  # an absolute bound
    # the control variate is the identity: every network gives exactly K
    cv = measure_cv(mlp, 50, seed=3)
    np.testing.assert_allclose(cv["K"].stderr, 0.0, atol=1e-14)


X3 = np.array([[1.0, 0.3, -0.5], [0.2, -0.9, 0.7], [0.8, 0.6, 0.1]])


@pytest.mark.parametrize("name", ["relu", "tanh", "gelu"])
def test_multi_input(name):
    """Three distinct inputs, widths 32 and 64, depth 3, 4000 networks, plain estimators
    (no control variate for several inputs yet): V at layer 3 is powered; G1 (a few % of
    K) is not resolvable at this cost and is checked for agreement only (listed as
    unresolved in the README)."""
    kw, K1 = CONFIGS[name]
    x = X3 * np.sqrt(max(K1 - kw["C_b"], 0.1) / kw["C_W"]) / np.sqrt(np.mean(X3 ** 2, axis=1,
                                                                          keepdims=True))
    layers = [3]
    ms = []
    for k, n in enumerate((32, 64)):
        mlp = pdlt.MLP(n0=3, width=n, depth=3, n_out=n, **kw)
        th = pdlt.statistics(mlp, x, get=["V", "G1"])
        ms.append(Ensemble(mlp, networks=4000, seed=12 + k).measure(
            x, stats=["V", "G1"], K_theory=th, layers=layers, progress=False))
    thV = th.V[[l - 1 for l in layers]]
    thG = th.G1[[l - 1 for l in layers]]
    ext, se, al = _extrapolated(ms[0]["V"], ms[1]["V"])
    powered(thV, ext, se, al, label=f"{name} multi V", max_resolution=0.5)
    ext, se, al = _extrapolated(ms[0]["G1"], ms[1]["G1"])
    powered(thG, ext, se, al, label=f"{name} multi G1", factors=(), zero=False)
