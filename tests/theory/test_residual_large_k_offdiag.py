"""Three- and four-variable averages of smooth activations at large variance (issue #15).

:func:`pdlt.gaussian._graded.expect_graded` (the residual modules' averages of distinct
inputs above ``K = 10``) against an independent reference: nested ``scipy.integrate.quad``
in z-space with graded breakpoints and a closed-form last variable, no pdlt code
(``benchmarks/residual_offdiag_reference.py``, stored in its JSON).
"""

import json
import pathlib
import warnings

import numpy as np
import pytest
from scipy import special

import pdlt
from pdlt.gaussian._graded import expect_graded, graded_axes
from pdlt.gaussian._multi import expect_nd
from pdlt.theory import residual_multi

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROWS = json.loads((ROOT / "benchmarks" / "residual_offdiag_reference.json").read_text())
EPS = np.finfo(float).eps


def _d1(z):
    e = np.exp(-2.0 * np.abs(z))
    return 4.0 * e / (1.0 + e) ** 2


FUNCS = {"tanh": np.tanh, "d1": _d1, "tanh2": lambda z: np.tanh(z) ** 2,
         "ztanh": lambda z: z * np.tanh(z), "gelu": lambda z: z * special.ndtr(z)}


def _tol(row):
    # the rule's stated accuracy (1e-13 of scale: measured <= 1e-15) plus the float64
    # rounding of the covariance (d eps sqrt(K)), plus the reference's own
    K = np.array(row["K"])
    return 1e-13 + len(K) * EPS * np.sqrt(np.max(np.diag(K))) + row["resolution"]


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_graded_rule_matches_the_independent_reference(row):
    fs = [FUNCS[n] for n in row["functions"]]
    K = np.array(row["K"])
    val, err = expect_graded(fs, K, return_error=True)
    tol = _tol(row) * row["scale"]
    assert abs(val - row["value"]) < tol, (val, row["value"], tol)
    assert abs(val + 10.0 * tol - row["value"]) > tol         # the comparison bites
    assert err < 1e-10 * row["scale"]
    if np.max(np.diag(K)) >= 1e3:                             # the old path is rejected
        old = expect_nd(fs, K, accuracy="high")
        assert abs(old - row["value"]) > 100.0 * tol, row["name"]


def test_rank_deficient_and_near_duplicate_axes():
    # a pair of one variable (collinear inputs at one depth): the exact duplicate is a zero
    # axis, a near duplicate (conditional sd 1e-4) a Gauss-Hermite one; both agree with
    # the merged three-variable average to round-off
    row = next(r for r in ROWS if r["name"] == "gelu4 K=1000")
    K = np.array(row["K"])
    fs = [FUNCS[n] for n in row["functions"]]
    assert graded_axes(K[None])[0] == 2         # the last (sd 0.05) Gauss-Hermite
    near = K.copy()
    near[1, 1] += 1e-8
    v_exact, v_near = expect_graded(fs, K), expect_graded(fs, near)
    assert abs(v_exact - row["value"]) < _tol(row) * row["scale"]
    assert abs(v_near - v_exact) < 1e-11 * row["scale"]


def test_small_kernels_keep_expect_nd_bit_for_bit():
    # at K <= 10 (and in a batch mixed with larger ones) the residual modules' three- and
    # four-variable averages are expect_nd's, unchanged
    rng = np.random.default_rng(3)
    act = pdlt.activation("tanh")
    fs = [np.tanh, lambda z: np.tanh(z) ** 2, lambda z: z * np.tanh(z)]
    Ks = []
    for sc in (2.0, 5.0, 40.0, 8.0):
        A = rng.standard_normal((3, 3))
        Ks.append(sc * A @ A.T / 3)
    Kb = np.array(Ks)
    small = np.max(np.einsum("bii->bi", Kb), axis=1) <= residual_multi._EXACT_K
    assert small.any() and not small.all()
    kw = dict(accuracy="high", kinks=(), growth=None)
    mixed = residual_multi._expect(act, fs, Kb, **kw)
    assert np.array_equal(mixed[small], expect_nd(fs, Kb, **kw)[small])
    assert np.array_equal(residual_multi._expect(act, fs, Kb[small], **kw),
                          expect_nd(fs, Kb[small], **kw))
    assert abs(mixed[~small][0] - expect_graded(fs, Kb[~small])[0]) == 0.0


def test_four_direction_tables_in_the_residual_fold(monkeypatch):
    # two random tanh inputs of a residual MLP (first-layer K ~ 21): the averages over four
    # distinct directions (two inputs at two depths) take the sheared 2-D table within
    # graded_four's budget (since session 16; before, the capped rule and the warning).
    # Against the capped rule at "high" (expect_nd's product rule: other code), every
    # entry within that rule's own estimate, which flags it; the table's estimate is ~0
    x = 12.0 * np.random.default_rng(0).standard_normal((2, 3))
    m = pdlt.MLP(n0=3, width=16, depth=3, activation="tanh", C_b=0.1, C_W=1.0, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = pdlt.statistics(m, x, get=["G1"], error=True)
    assert np.max(new.K) > 20
    monkeypatch.setattr(residual_multi, "_FOUR_BUDGET", 0.0)
    with pytest.warns(RuntimeWarning, match="past the 2-D table's budget"):
        old = pdlt.statistics(m, x, get=["G1"], error=True, accuracy="high")
    for k in ("V", "G1"):
        scale = np.max(np.abs(new[k]))
        assert np.max(new.error[k]) < 1e-8 * scale
        assert np.all(np.abs(new[k] - old[k]) <= old.error[k] + 1e-13 * scale), k
