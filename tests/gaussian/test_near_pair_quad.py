"""Four ReLU-family variables with one nearly coinciding pair (``_near_pair_quad``).

Against ``benchmarks/relu_quad_reference.json`` (mpmath factor, nested Gauss-Legendre with
the last axis in closed form: no code shared with the engine; its own accuracy ~1e-16):
the default path within 1e-12 (measured <= 6.3e-14) and within its estimate at ``1 -
rho^2 = 1e-6, 1e-10``; the former path (the orthant form's split-path fallback) was up to
2.2e-5 off with estimates ~1e-14, and fails the same comparison. A rank-3 covariance (four
inputs in two dims, the first layer's) with a pair at ``1 - rho^2 = 6.7e-4``: within 1e-11
of the orthant closed form (its cone form, exact on rank-deficient K: independent code).
Well-separated covariances do not reach the new form (bit-identical).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from pdlt.gaussian import _multi
from pdlt.gaussian._multi import PiecewiseMonomial, expect_nd
from pdlt.gaussian._orthant import orthant_expect

REF = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "relu_quad_reference.json"
TOL = 1e-12


def _rows():
    rows = json.loads(REF.read_text())
    pick = [r for r in rows if r["one_minus_rho2"] in (1e-6, 1e-10)]
    return [r for k, r in enumerate(pick) if k % 2 == 0]      # 12 rows, every function set


def _fs(r):
    return [PiecewiseMonomial(cp, cm, n) for n, cp, cm in r["fs"]]


@pytest.mark.parametrize("row", _rows(), ids=lambda r: f"{r['one_minus_rho2']:g}-{r['fs']}")
def test_against_reference(row):
    K, ref = np.array(row["K"]), float(row["value"])
    v, e = expect_nd(_fs(row), K, return_error=True)
    assert row["check"] <= 1e-15
    assert abs(v - ref) <= TOL
    assert abs(v - ref) <= e + row["check"]
    assert e <= 1e-10


def test_former_path_fails_the_same_comparison(monkeypatch):
    """theta^4 and theta theta relu relu at 1 - rho^2 = 1e-6: the split path was 2.2e-5 and
    1.4e-5 off (estimate ~1e-14); the comparison also rejects theory x0.5 and x2."""
    monkeypatch.setattr(_multi, "_near_pair_quad",
                        lambda fs, K, a, r: (np.zeros(len(K), bool), np.zeros(len(K)),
                                             np.zeros(len(K))))
    rows = [r for r in json.loads(REF.read_text())
            if r["one_minus_rho2"] == 1e-6 and r["fs"][0] == [0, 1, 0] and r["fs"][1] == [0, 1, 0]]
    assert len(rows) == 4
    for r in rows:
        ref = float(r["value"])
        v, e = expect_nd(_fs(r), np.array(r["K"]), return_error=True)
        assert abs(v - ref) > 1000 * TOL and abs(v - ref) > e
        assert abs(0.5 * ref - ref) > 1000 * TOL and abs(2 * ref - ref) > 1000 * TOL


def test_rank3_pair_against_orthant_cone_form():
    x = np.array([[1.0, 0.3], [1.0, 0.33], [0.2, -1.0], [-0.7, 0.4]])
    K = 0.1 + 0.75 * x @ x.T                   # rank 3; 1 - rho^2 = 6.7e-4 for (0, 1)
    fs = [PiecewiseMonomial(1, 0.1, 0)] * 2 + [PiecewiseMonomial(1, 0.1, 1)] * 2
    ref, rerr, ok = orthant_expect(fs, K[None], True)
    took, v, e = _multi._near_pair_quad(fs, K[None], "default", True)
    assert ok[0] and took[0] and rerr[0] < 1e-13
    assert abs(v[0] - ref[0]) <= 1e-11 and abs(v[0] - ref[0]) <= e[0] + rerr[0]


def test_well_separated_untouched(monkeypatch):
    """Four random covariances in 8 dims never reach the near-pair form."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3, 4, 8))
    K = np.einsum("bia,bja->bij", X, X) / 8
    monkeypatch.setattr(_multi, "_near_pair_quad", lambda *a: pytest.fail("reached"))
    for f in (PiecewiseMonomial(1, 0, 1), PiecewiseMonomial(1, 0.1, 0)):
        expect_nd([f] * 4, K, return_error=True)
