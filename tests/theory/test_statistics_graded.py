"""Plain MLPs, N >= 3 inputs, named smooth activations at large kernels (issue #15).

Within ``pdlt.statistics`` the two-, three- and four-variable averages of the
sigma-only tensor (V, G1) and of the four-slot tensors (A, D, H1, ...) whose covariance
has a variance above ``_averages._GRADED_K`` take the nested rule graded in z
(:func:`pdlt.gaussian._graded.expect_graded`) under a modelled budget
(:class:`pdlt.theory._averages._GradedPlain`); before, :func:`expect_nd`'s capped
product rules missed 1e-8 there and ``statistics`` only warned.
"""

import contextlib
import importlib.util
import pathlib
import warnings

import numpy as np
import pytest

import pdlt
from pdlt.gaussian._multi import quad_expectations
from pdlt.theory import _averages

# the orthant reference of tests/gaussian/test_graded_four.py (scipy only, no pdlt code)
_spec = importlib.util.spec_from_file_location(
    "graded_four_reference",
    pathlib.Path(__file__).parents[1] / "gaussian" / "test_graded_four.py")
_g4 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_g4)

NAMES = ["V", "G1", "A", "D", "H1"]


def test_erf_four_variable_average_through_the_routing():
    # <erf erf erf erf>_K at four random directions, K = 100, as the fold asks for V's
    # four-distinct entry (LayerAverages._nd within graded_plain) against the exact
    # orthant form at K + I/2 (Plackett's 1-D integral, its own error ~2e-15)
    act = pdlt.MLP(n0=1, width=4, depth=2, activation="erf").activation
    C = _g4._directions(2, 100.0)
    ref, res = _g4._sign4(C + 0.5 * np.eye(4))
    tol = _g4._tol(C, res)                               # 1e-13 + 4 eps sqrt(K) + res
    sigma = _averages.normal_family(act, "sigma")
    with _averages.graded_plain():
        avg = _averages.LayerAverages(act, C, None)
        val, est = avg._nd(("ssss", (1, 1, 1, 1)), [sigma] * 4, np.array([[0, 1, 2, 3]]),
                           accuracy="default", return_error=True)
    assert abs(val[0] - ref) < tol, (val, ref, tol)
    assert abs(val[0] * (1.0 + 10.0 * tol) - ref) > tol  # the comparison bites
    assert est[0] < 1e-10
    old = quad_expectations(act, C)[0, 1, 2, 3]            # the capped rule: rejected
    assert abs(old - ref) > 100.0 * tol


def _collinear(K1=1000.0, eta=1e-5):
    # x, (1 + eta) x, (1 - eta) x: first-layer K ~ 600 (K1 overstates it: lambda_W / n0)
    x0 = np.random.default_rng(0).standard_normal(3)
    m = pdlt.MLP(n0=3, width=16, depth=3, activation="tanh", C_b=0.1, C_W=1.0)
    x = np.stack([x0, (1 + eta) * x0, (1 - eta) * x0])
    return m, x * np.sqrt(K1 / (0.1 + np.dot(x0, x0) / 3))


def _symmetric_distance(m, st, plus=1, minus=2, K1=None):
    # entries with as many (1 + eta) inputs (index ``plus``) as (1 - eta) ones (``minus``),
    # within each pair for rank 4, are the one-input statistic at x0 (first-layer kernel K1,
    # default input 0's) to O(eta^2) (the first order cancels by the entry's symmetry);
    # relative to its largest value
    K1 = float(st.K[0, 0, 0]) if K1 is None else K1
    out = {}
    for name in NAMES:
        one = pdlt.statistics(m, K1=K1, get=[name])[name]
        T = st[name]
        idx = np.indices(T.shape[1:]).reshape(T.ndim - 1, -1)
        groups = (idx[:2], idx[2:]) if len(idx) == 4 else (idx,)
        sel = np.all([np.sum(g == plus, axis=0) == np.sum(g == minus, axis=0)
                      for g in groups], axis=0)
        d = np.abs(T.reshape(T.shape[0], -1)[:, sel] - one[:, None])
        out[name] = float(np.max(d) / np.max(np.abs(one)))
    return out


def test_collinear_inputs_at_large_kernels_are_resolved(monkeypatch):
    # measured 2e-11 (V) .. 6e-10 (H1), the floor eta^2 times the entries' curvature in
    # the input's scale; before (expect_nd's capped rules) 3e-5 (V) .. 7e-3 (H1), warned
    m, x = _collinear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # nothing flagged
        st = pdlt.statistics(m, x, get=NAMES)
    assert st.K[0, 0, 0] > 500
    dist = _symmetric_distance(m, st)
    assert max(dist.values()) < 1e-8, dist
    assert np.max(st.integration_error) < 1e-8 * np.max(np.abs(st.V))
    # the budget at 0: every average keeps the capped rule, off and flagged
    monkeypatch.setattr(_averages, "_GRADED_BUDGET", 0.0)
    with pytest.warns(RuntimeWarning, match="past the graded rule's budget"):
        old = pdlt.statistics(m, x, get=NAMES)
    assert min(_symmetric_distance(m, old)[k] for k in ("V", "G1", "A", "H1")) > 1e-6


@pytest.mark.parametrize("act", ["tanh", "gelu"])
def test_moderate_kernels_are_bit_identical(monkeypatch, act):
    # every variance <= 10: the routing does not act (the same numbers without it)
    x = np.random.default_rng(3).standard_normal((3, 4))
    m = pdlt.MLP(n0=4, width=16, depth=3, activation=act, C_b=0.1,
                 C_W=1.0 if act == "tanh" else 1.98)
    new = pdlt.statistics(m, x, get=NAMES, error=True)
    assert np.max(np.einsum("lii->li", new.K)) < 10
    monkeypatch.setattr(_averages, "graded_plain", lambda *a: contextlib.nullcontext())
    old = pdlt.statistics(m, x, get=NAMES, error=True)
    for name in NAMES:
        assert np.array_equal(new[name], old[name]), name
        assert np.array_equal(new.error[name], old.error[name]), name
    assert np.array_equal(new.integration_error, old.integration_error)


def test_averages_past_the_budget_are_estimated_and_flagged(monkeypatch):
    # three distinct tanh inputs at first-layer K ~ 100 with a budget that covers V's
    # averages (the sigma-only tensor comes first) but not all of A's: V stays resolved,
    # A's capped averages (2e-4 of A off before) are flagged, and error=True's estimate
    # covers A's distance to the fully graded value (its second fold reads them moved by
    # their estimate)
    x = np.random.default_rng(0).standard_normal((3, 8))
    m = pdlt.MLP(n0=8, width=64, depth=3, activation="tanh", C_b=0.0, C_W=1.0)
    x = 10.0 * x / np.sqrt(np.max(np.sum(x * x, axis=1) / 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = pdlt.statistics(m, x, get=["V", "A"])
    assert np.max(full.K[0]) > 50
    monkeypatch.setattr(_averages, "_GRADED_BUDGET", 0.3)
    with pytest.warns(RuntimeWarning, match="past the graded rule's budget"):
        part = pdlt.statistics(m, x, get=["V", "A"], error=True)
    assert np.array_equal(part.V, full.V)
    assert part.integration_error[1] < 1e-8 * np.max(np.abs(part.V[1]))
    dist = np.abs(part.A - full.A)
    assert np.max(dist) > 1e-8 * np.max(np.abs(full.A))      # the capped rule is off
    assert np.all(part.error["A"] >= dist)                     # and estimated
    with warnings.catch_warnings():
        warnings.simplefilter("error")         # accuracy="high": 10x the budget, all graded
        high = pdlt.statistics(m, x, get=["V", "A"], accuracy="high")
    assert np.max(np.abs(high.A - full.A)) < 1e-10 * np.max(np.abs(full.A))


def test_two_inputs_at_large_kernels_are_resolved(monkeypatch):
    # N = 2 (the layer blocks' path until session 15: expect_nd's capped pair rules, tanh
    # A 3e-6 .. D 1e-1 of scale off at first-layer K ~ 70 .. 650, warned): inputs
    # (1 +- eta) x at K ~ 600; entries with as many of each input in each pair equal the
    # one-input statistic at x to O(eta^2)
    eta = 1e-5
    x0 = np.random.default_rng(0).standard_normal(3)
    m = pdlt.MLP(n0=3, width=16, depth=3, activation="tanh", C_b=0.1, C_W=1.0)
    xs = x0 * np.sqrt(1000.0 / (0.1 + x0 @ x0 / 3))
    x = np.stack([(1 + eta) * xs, (1 - eta) * xs])
    K1 = 0.1 + xs @ xs / 3                                    # the one input x

    def distance(st):
        return _symmetric_distance(m, st, plus=0, minus=1, K1=K1)

    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # nothing flagged
        st = pdlt.statistics(m, x, get=NAMES)
    assert st.K[0, 0, 0] > 500
    dist = distance(st)
    assert max(dist.values()) < 1e-8, dist
    monkeypatch.setattr(_averages, "graded_plain", lambda *a: contextlib.nullcontext())
    with pytest.warns(RuntimeWarning):
        old = pdlt.statistics(m, x, get=NAMES)
    assert max(distance(old).values()) > 1e-6


def test_four_inputs_in_three_dimensions_are_resolved(monkeypatch):
    # N > n0 without a bias (the random-input case): the first-layer kernel has
    # rank 3, so V's four-distinct average is a rank-deficient four-variable one (the 2-D
    # table with c = 0 since session 16; before, three graded axes point by point, ~40-60 s,
    # so the capped rule, 1.7e-4 off at K ~ 1e4). erf: the exact orthant form at K + I/2
    # minus the product of two arcsine laws
    x = np.random.default_rng(0).standard_normal((4, 3))
    x = 100.0 * x / np.sqrt(np.mean(x * x, axis=1, keepdims=True))
    m = pdlt.MLP(n0=3, width=16, depth=2, activation="erf", C_b=0.0, C_W=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # nothing flagged
        st = pdlt.statistics(m, x, get=["V"], error=True)
    K = st.K[0]
    assert np.linalg.matrix_rank(K, tol=1e-9 * np.max(K)) == 3 and np.max(K) >= 1e4

    def pair(i, j):
        return 2 / np.pi * np.arcsin(2 * K[i, j] / np.sqrt((1 + 2 * K[i, i]) * (1 + 2 * K[j, j])))

    four, res = _g4._sign4(K + 0.5 * np.eye(4))
    ref, tol = four - pair(0, 1) * pair(2, 3), 2 * _g4._tol(K, res)
    assert abs(st.V[1, 0, 1, 2, 3] - ref) < tol, (st.V[1, 0, 1, 2, 3], ref, tol)
    assert st.error["V"][1, 0, 1, 2, 3] < 1e-8 * np.max(np.abs(st.V[1]))
    monkeypatch.setattr(_averages, "_GRADED_BUDGET", 0.0)    # the capped rule: off, flagged
    with pytest.warns(RuntimeWarning, match="past the graded rule's budget"):
        old = pdlt.statistics(m, x, get=["V"])
    assert abs(old.V[1, 0, 1, 2, 3] - ref) > 1e3 * tol
