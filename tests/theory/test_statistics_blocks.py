"""The two-input fold with its K-only averages evaluated per block of layers.

``pdlt.statistics`` on two inputs (the reference problem of ``pdlt diagnose``)
evaluates the averages that depend on the kernel only (four-variable tensors,
the kinked ``d<p p>/dK``, the ReLU family's pair moments) for a block of
layers in one vectorized call (``statistics._BLOCK_LAYERS``) and then steps
the statistics layer by layer as before. These tests prove the block path
equal to the layer-by-layer one (``_BLOCK_LAYERS = 0``, and no factorized
pair averages of uncorrelated inputs: ``_averages._INDEPENDENT``, which
tanh's reference problem uses at every layer), and the ReLU
family's exact angular pair moments equal to the Mehler / nested-quadrature
ones of :func:`pdlt.gaussian.pair_expectations`.

Tolerances. The block path evaluates the same integrals with the same rules;
only the order of floating-point sums differs, so each average differs by a
few ulps. Every statistic but G1 and H1 then agrees to ~1e-15 of its scale
(asserted at 1e-12: round-off of a 50-layer fold). G1 and H1 are
ill-conditioned for nearly coinciding inputs: their fourth-derivative source
(``LayerAverages.d4_source``) divides by powers of ``1 - rho^2``, and one ulp
of ``<sigma sigma sigma sigma>`` at every layer moves their off-diagonal entry
by ~1e-6 relative at depth 50 (relu, gelu; measured here, in the test, as
``sens``). Their tolerance is 8 such ulps: ``8 sens + 1e-12``. Each
comparison is shown able to fail: the same comparison rejects a block whose
rows are shifted by one layer.
"""

import math

import numpy as np
import pytest

import pdlt
from pdlt import gaussian
from pdlt.theory import _averages, statistics as stats_mod
from pdlt.theory._averages import _MOMENTS, Integrands, _piecewise_pair_moments

_NAMES = ("V", "G1", "A", "B", "D", "F", "P", "Q", "R", "S", "T", "U", "H1")
_ILL = ("G1", "H1")
_ULP = 2.0 ** -52


def _reference(act, depth):
    crit = pdlt.criticality(act)
    mlp = pdlt.MLP(n0=2, width=100, depth=depth, activation=act, C_b=crit.C_b, C_W=crit.C_W)
    x = np.sqrt(2.0 * (1.0 - crit.C_b) / crit.C_W) * np.eye(2)   # K^(1) = 1, orthogonal
    return mlp, x


def _fold(mlp, x, monkeypatch, block, perturb=False):
    monkeypatch.setattr(stats_mod, "_BLOCK_LAYERS", block)
    monkeypatch.setattr(stats_mod, "_AFFINE_TWO_INPUT", False)  # its own test: test_diagnosis_fast
    if not block:       # the general path throughout: no factorized uncorrelated pairs
        monkeypatch.setattr(_averages, "_INDEPENDENT", -1.0)
    if perturb:
        orig = _averages.LayerAverages._quad

        def one_ulp(self, slots):
            T = orig(self, slots)
            return T * (1.0 + _ULP) if slots == "ssss" else T
        monkeypatch.setattr(_averages.LayerAverages, "_quad", one_ulp)
    try:
        return stats_mod.statistics(mlp, x, get=_NAMES)
    finally:
        monkeypatch.undo()


def _rel(a, b):
    scale = max(float(np.max(np.abs(a))), 1e-300)
    return float(np.max(np.abs(a - b))) / scale


@pytest.mark.parametrize("act", ["relu", "tanh",
                                 pytest.param("gelu", marks=pytest.mark.slow)])  # 14 s
def test_block_fold_equals_layer_fold(act, monkeypatch):
    mlp, x = _reference(act, 50)
    layer = _fold(mlp, x, monkeypatch, 0)
    block = _fold(mlp, x, monkeypatch, 128)
    bumped = _fold(mlp, x, monkeypatch, 128, perturb=True)
    tol = {k: 1e-12 + (8.0 * _rel(block[k], bumped[k]) if k in _ILL else 0.0)
           for k in _NAMES}
    for k in _NAMES:
        assert _rel(layer[k], block[k]) <= tol[k], (k, _rel(layer[k], block[k]), tol[k])
    assert max(tol[k] for k in _ILL) < 1e-4

    # the same comparison rejects averages taken one layer off
    class Shifted(_averages.LayerBlock):
        def __init__(self, Ks):
            super().__init__(np.concatenate([Ks[1:], Ks[-1:]]))
    monkeypatch.setattr(stats_mod, "LayerBlock", Shifted)
    wrong = _fold(mlp, x, monkeypatch, 128)
    assert any(_rel(layer[k], wrong[k]) > 100 * tol[k] for k in _NAMES)


@pytest.mark.parametrize("name", ["relu", "leaky_relu"])
def test_relu_family_pair_moments_match_pair_expectations(name):
    act = pdlt.MLP(n0=1, width=2, depth=1, activation=name).activation
    si = act.scale_invariant
    for rho in (-0.3, 0.3183, 0.99963, 1 - 1e-7):
        for Ka, Kb in ((0.3, 2.5),):
            c = rho * math.sqrt(Ka * Kb)
            K = np.array([[Ka, c], [c, Kb]])
            for deg, f in ((1, act.sigma), (0, act.d1)):
                fns = {f"f{i}": (lambda i: lambda z: z ** i * f(z))(i) for i in range(5)}
                terms = tuple({(f"f{i}", f"f{j}") for i, j in _MOMENTS}
                              | {(f"f{i}", f"f{i}") for i in range(5)})
                ref = gaussian.pair_expectations(Integrands(act, **fns), K, terms, rtol=1e-13)
                new = _piecewise_pair_moments(si, deg, K)
                for (i, j) in _MOMENTS:
                    r, n = ref[(f"f{i}", f"f{j}")], new[(i, j)]
                    # off-diagonal (what d4_source reads): pair_expectations' rtol 1e-13
                    # of the Cauchy-Schwarz scale, 10x
                    cs = math.sqrt(abs(ref[(f"f{i}", f"f{i}")][0, 0] * ref[(f"f{j}", f"f{j}")][1, 1]))
                    assert abs(r[0, 1] - n[0, 1]) <= 1e-12 * cs, (rho, Ka, Kb, deg, i, j)
                    assert np.allclose(new[(j, i)], n.T, rtol=0, atol=0)


def test_relu_pair_moments_closed_forms():
    # arc-cosine kernels: <relu relu> = sqrt(Ka Kb) (sin t + (pi - t) cos t) / (2 pi),
    # <step step> = (pi - t) / (2 pi), with cos t = rho; exact to round-off
    rng = np.random.default_rng(3)
    for _ in range(20):
        Ka, Kb = rng.uniform(0.1, 5.0, 2)
        rho = rng.uniform(-1, 1)
        c = rho * math.sqrt(Ka * Kb)
        K = np.array([[Ka, c], [c, Kb]])
        t = math.acos(rho)
        s = _piecewise_pair_moments((1.0, 0.0), 1, K)[(0, 0)][0, 1]
        p = _piecewise_pair_moments((1.0, 0.0), 0, K)[(0, 0)][0, 1]
        want_s = math.sqrt(Ka * Kb) * (math.sin(t) + (math.pi - t) * math.cos(t)) / (2 * math.pi)
        assert abs(s - want_s) <= 1e-14 * math.sqrt(Ka * Kb)
        assert abs(p - (math.pi - t) / (2 * math.pi)) <= 1e-14
    # the diagonal: <relu^2> = K/2, <z^4 relu^2> = <z^6>/2 = 15 K^3 / 2
    K = np.array([[2.0, 0.5], [0.5, 1.0]])
    m = _piecewise_pair_moments((1.0, 0.0), 1, K)
    assert abs(m[(0, 0)][0, 0] - 1.0) <= 1e-15
    assert abs(m[(2, 2)][0, 0] - 7.5 * 2.0 ** 3) <= 1e-14 * 60
