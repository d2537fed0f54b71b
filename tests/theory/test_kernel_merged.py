"""Merged inputs in the N-input kernel fold (``pdlt.theory.kernel._merged``): the fast case.

Once every entry of K is the same number the inputs coincide and the fold
takes each pair average from the one-variable moments at that K. The general
path (the pair engine: closed forms, the collinear rule, the series) returns
the same values up to its own rounding (the collinear rule: bitwise), so the
two folds agree to round-off accumulated over the layers: asserted 1e-13
relative per entry of K, Theta and the susceptibilities. The same check
rejects the fold read one layer off, and a kernel that differs from merged
in one entry's last bit is never cut short.
"""

import math

import numpy as np
import pytest

import pdlt
from pdlt.network import MLP
from pdlt.theory import kernel as km

TOL = 1e-13


def _rel(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def _folds(monkeypatch, mlp, K0, T0, susceptibilities=True):
    calls = []
    orig = km._merged
    with monkeypatch.context() as m:
        m.setattr(km, "_merged", lambda K: orig(K) and not calls.append(1))
        fast = km.kernel_fold(mlp, K0, T0, susceptibilities=susceptibilities)
    with monkeypatch.context() as m:
        m.setattr(km, "_merged", lambda K: False)
        general = km.kernel_fold(mlp, K0, T0, susceptibilities=susceptibilities)
    return fast, general, len(calls)


def _user():
    # a user's activation (no joint evaluator), with exact derivatives: finite
    # differences would turn an ulp of K into ~1e-12 of the susceptibilities
    def d2(z):
        t = np.tanh(z)
        return -2.0 * t * (1.0 - t * t)
    return pdlt.Activation.from_callable(lambda z: np.tanh(z) + 0.1 * z,
                                         lambda z: 1.1 - np.tanh(z) ** 2, d2, name="mine")


@pytest.mark.parametrize("N", [2, 3])
@pytest.mark.parametrize("name", ["tanh", "swish", "gelu", "relu", "sin", "user"])
def test_duplicated_inputs_equal_the_general_fold(monkeypatch, name, N):
    """Copies of one input. N = 2: the general path is the collinear rule (smooth), a
    closed form (relu, sin): round-off apart, asserted 1e-13. N = 3: the Mehler series
    or nested quadrature, each pair within rtol = 1e-12 of its scale (= the value, for
    coincident inputs) per layer, accumulated with gains ~1 over L layers: asserted
    2 L rtol; the fast case is the exact one-variable value."""
    act = _user() if name == "user" else name
    crit = pdlt.criticality("tanh" if name in ("sin", "user") else name)
    L = 30
    mlp = MLP(n0=3, width=50, depth=L, activation=act, C_b=crit.C_b, C_W=0.9 * crit.C_W,
              lambda_b=0.3, lambda_W=1.2)
    x = np.array([[0.7, -1.1, 0.4]] * N)
    K0, T0 = km.first_layer(mlp, x)
    fast, general, n = _folds(monkeypatch, mlp, K0, T0)
    assert n == mlp.depth - 1                              # every step on the fast case
    tol = TOL if N == 2 else 2 * L * 1e-12
    for a, b in zip(fast, general):
        assert _rel(a, b) <= tol
    # powered: the general fold read one layer off is rejected by the same check
    assert _rel(fast[0][1:], general[0][:-1]) > 1e3 * tol


def test_swish_reference_problem_merges_and_stays_equal(monkeypatch):
    """Two orthogonal inputs of a critical swish network merge to round-off at layer
    ~1456; from there the fast case, before it the pair path (the same numbers)."""
    c = pdlt.criticality("swish")
    L = 1600
    mlp = MLP(n0=2, width=100, depth=L, n_out=1, activation="swish", C_b=c.C_b, C_W=c.C_W)
    s = math.sqrt(2 * (1.0 - c.C_b) / c.C_W)
    K0, T0 = km.first_layer(mlp, s * np.eye(2))
    fast, general, n = _folds(monkeypatch, mlp, K0, T0, susceptibilities=False)
    assert 50 <= n <= 300                                  # merged for the last n layers
    first = L - 1 - n
    # the pair path keeps the kernel merged (the collinear rule returns the diagonal)
    assert all(general[0][l].min() == general[0][l].max() for l in range(first, L))
    assert np.array_equal(fast[0][:first + 1], general[0][:first + 1])
    assert _rel(fast[0], general[0]) <= TOL and _rel(fast[1], general[1]) <= TOL


def test_a_kernel_not_merged_is_never_cut_short(monkeypatch):
    K = np.full((2, 2), 1.7)
    assert km._merged(K)
    for i, j in ((0, 1), (1, 1)):
        K2 = K.copy()
        K2[i, j] = np.nextafter(K2[i, j], 0.0)
        if i != j:
            K2[j, i] = K2[i, j]
        assert not km._merged(K2)
    # inputs 1e-3 apart stay apart for 40 layers: no step on the fast case, bitwise equal
    mlp = MLP(n0=2, width=50, depth=40, activation="tanh", C_b=0.0, C_W=1.0)
    x = np.array([[1.0, 0.0], [math.cos(1e-3), math.sin(1e-3)]])
    K0, T0 = km.first_layer(mlp, x)
    fast, general, n = _folds(monkeypatch, mlp, K0, T0)
    assert n == 0
    for a, b in zip(fast, general):
        assert np.array_equal(a, b)
