"""Three ReLU-family inputs, one pair nearly coinciding: every entry (issue #15).

Two inputs ``[1, 0.3]``, ``[1, 0.3 + eps]`` and a third ``[0.2, -1]`` (n0 = 2, width 32,
depth 4; relu C_W = 2, leaky_relu C_W = 1.5, C_b = 0.1).

* Mixed entries (indices 1 and 2 both present) of V, A, B, D, F, H1 against a reference
  that shares no code with the path under test: the engine at ``eps = 0`` (the inputs
  merged: two-input averages) and at 12 nodes ``eps = 0.045 .. 0.2`` (``1 - rho^2 >=
  1e-3`` at every layer: the orthant closed forms, right there; the near-pair form of
  ``pdlt.gaussian._multi._near_pair_triple`` switched off), a polynomial in eps through
  them (every average is analytic in the pair's angle, itself analytic in eps > 0).
  Its accuracy: degrees 9 and 11 agree to ~1e-12 of scale (asserted <= 1e-10). At
  ``1 - rho^2 = 6.7e-7`` and ``6.7e-9`` the engine is within 1e-8 of scale (measured
  <= 2e-11) and within its stated estimate; the old three-variable averages (orthant /
  split path) were 8e-6 of scale off B, A, D, F there, unreported, and fail it.
* The (0, 1) sub-block against the 40-digit two-input reference
  (``benchmarks/relu_coinciding_reference.json``): A within 1e-8 of scale where it does
  not warn (``1 - rho^2 >= 1e-6``); H1, which is not resolved at either N below
  ``1 - rho^2 ~ 1e-4`` (its fourth-derivative source weighs V's rounding by
  ``(1 - rho^2)^-3/2``), within its stated estimate, and warned about.
"""

from __future__ import annotations

import functools
import json
import pathlib
import warnings

import numpy as np
import pytest

import pdlt
from pdlt.gaussian import _multi

from eps_reference import assert_mixed_entries, eps_reference, ref_at  # tests/theory

REF = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "relu_coinciding_reference.json"
CASES = {"relu": dict(activation="relu", C_b=0.1, C_W=2.0),
         "leaky": dict(activation="leaky_relu", C_b=0.1, C_W=1.5)}
NAMES = ("V", "A", "B", "D", "F", "H1")


def _x(eps):
    return np.array([[1.0, 0.3], [1.0, 0.3 + eps], [0.2, -1.0]])


def _mlp(name):
    return pdlt.MLP(n0=2, width=32, depth=4, **CASES[name])


def _mixed(shape):
    idx = np.indices(shape).reshape(len(shape), -1)
    return (np.any(idx == 1, axis=0) & np.any(idx == 2, axis=0)).reshape(shape)


@functools.lru_cache(maxsize=None)
def _reference(name):
    return eps_reference(_mlp(name), _x, NAMES,
                         [(_multi, "_near_pair_triple", _multi._piecewise_path)])


def _ref_at(name, X, eps, shape):
    return ref_at(_reference(name)[X], eps, shape)


@functools.lru_cache(maxsize=None)
def _run(name, eps):
    """The statistics (error=True) and the warnings' texts (shared by the tests)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = pdlt.statistics(_mlp(name), _x(eps), get=NAMES, error=True)
    return s, tuple(str(w.message) for w in caught)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("eps", [1e-3, 1e-4])
def test_mixed_entries_against_reference(name, eps):
    s, warned = _run(name, eps)
    assert_mixed_entries(s, _reference(name), eps, NAMES, _mixed)
    assert not [w for w in warned if w[:2] in ("B[", "D[", "F[", "V[")]


def test_old_three_variable_averages_fail(monkeypatch):
    """The same comparison rejects the orthant / split path (B's mixed entries)."""
    monkeypatch.setattr(_multi, "_near_pair_triple", _multi._piecewise_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = pdlt.statistics(_mlp("relu"), _x(1e-3), get=["B"])
    ref, _ = _ref_at("relu", "B", 1e-3, s.B[-1].shape)
    mix = _mixed(ref.shape)
    assert np.max(np.abs(s.B[-1] - ref)[mix]) > 100 * 1e-8 * np.max(np.abs(ref))


def _two_input_rows():
    table = json.loads(REF.read_text())
    return [(name, row) for name in CASES for row in table[name] if row["eps"] in (1e-3, 1e-4)]


@pytest.mark.parametrize("name, row", _two_input_rows(), ids=lambda v: v if isinstance(v, str)
                         else f"eps{v['eps']:g}")
def test_pair_block_against_two_input_reference(name, row):
    s, warned = _run(name, row["eps"])
    rA = np.array([float(v) for v in row["A"]]).reshape(2, 2, 2, 2)
    rH = np.array([float(v) for v in row["H1"]]).reshape(2, 2)
    scale = np.sqrt(abs(rA[0, 0, 0, 0] * rA[1, 1, 1, 1]))
    A, H = s.A[-1][:2, :2, :2, :2], s.H1[-1][:2, :2]
    dA, dH = np.abs(A - rA), np.abs(H - rH)
    estA = s.error["A"][-1][:2, :2, :2, :2]
    estH = np.maximum(s.error["H1"][-1][:2, :2], s.integration_error[-1])
    assert np.all(dH <= estH)
    if row["one_minus_rho2"] >= 1e-6:
        assert np.max(dA) <= 1e-8 * scale
        assert not [w for w in warned if w.startswith("A[")]
    if np.max(estA) > 1e-8 * scale:
        # unresolved: warned, and the estimate covers the distance (but for the fold's own
        # rounding, ~1e-13 of scale). (Below 1e-8 it need not: leaky, eps = 1e-3, A_0101
        # is 1.8e-10 of scale off at N = 2 and 3 alike, and N = 3's spread says 1.5e-10.)
        assert np.all(dA <= estA + 1e-13 * scale)
        assert [w for w in warned if w.startswith("A[")]
    # H1 (relu: H1_aa = 0, its scale is |H1_01|): warned wherever its estimate says > 1e-8
    if np.max(estH) > 1e-8 * abs(rH[0, 1]):
        assert [w for w in warned if w.startswith("H1 of inputs")]
