"""Four elu variables with one nearly coinciding pair (``_quad_sum_exp``, issue #15).

Against ``benchmarks/elu_quad_reference.json`` (``benchmarks/elu_quad_check.py``: mpmath
factor, ``(g_1, g_2)`` polar with the pair's sliver a piece of its own, elu's slots along
each ray, ``g_3`` split at ``z_2``'s kink, the last slot's average in closed form; no code
shared with the engine; its own accuracy <= 2e-15 from 1.5x the nodes). Products of
sigma, sigma', sigma'', z sigma'' slots as the statistics use them, as fractions of the
Cauchy-Schwarz scale ``prod_k <|f_k|^4>^(1/4)``: the default path within 1e-11 of scale
(measured <= 1.5e-12 on 15 products x 3 covariances x ``1 - rho^2 = 1e-1 .. 1e-10``) and
within its estimate; the former exp path was up to 1.6e-3 of scale off (sigma'' on the
pair: its jump's sliver) with estimates down to 1e-9 of the distance, and fails the same
comparison.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

import pdlt
from pdlt.gaussian import _multi
from pdlt.gaussian._multi import expect_nd, normal_family

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
TOL = 1e-11          # of the Cauchy-Schwarz scale


def _load():
    spec = importlib.util.spec_from_file_location("elu_quad_check_load",
                                                  BENCH / "elu_quad_check.py")
    sys.path.insert(0, str(BENCH))
    try:
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod.load(BENCH / "elu_quad_reference.json")


ROWS = _load()


def _fns():
    act = pdlt.MLP(n0=2, width=8, depth=1, activation="elu").activation
    b = {"s": normal_family(act, "sigma"), "p": normal_family(act, "d1"),
         "q": normal_family(act, "d2")}
    b["x"] = b["q"].times_z()
    return b


def _rows(slots, omr2s, Ks=(0, 1, 2)):
    out = [r for r in ROWS if r["slots"] == slots and r["one_minus_rho2"] in omr2s
           and r["K_index"] in Ks]
    assert len(out) == len(omr2s) * len(Ks)
    return out


def _engine(slots, rows):
    fn = _fns()
    K = np.array([r["K"] for r in rows])
    return expect_nd([fn[n] for n in slots], K, kinks=(0.0,), return_error=True)


CASES = [("qqpp", (1e-6, 1e-9), (0, 2)), ("qpqp", (1e-3,), (1,)), ("xppp", (1e-1,), (2,))]


@pytest.mark.parametrize("slots,omr2s,Ks", CASES, ids=[c[0] for c in CASES])
def test_against_reference(slots, omr2s, Ks):
    rows = _rows(slots, omr2s, Ks)
    v, e = _engine(slots, rows)
    for r, vk, ek in zip(rows, v, e):
        ref, sc = float(r["value"]), r["scale"]
        assert r["check"] <= 1e-14 * sc
        d = abs(vk - ref)
        assert d <= TOL * sc
        assert d <= ek + r["check"]
        assert ek <= 1e-10 * sc
        # resolution: theory x0.5 and x2 are far outside (|ref| >> TOL scale)
        assert 0.5 * abs(ref) > 1000 * TOL * sc


def test_former_path_fails_the_same_comparison(monkeypatch):
    """sigma'' on the pair (``<q q p p>``) at ``1 - rho^2 = 1e-6``: the exp path was 8.5e-5 of
    scale off with an estimate of 5.5e-11 of scale."""
    monkeypatch.setattr(_multi, "_EXP_QUAD_NEAR", 0.0)
    rows = _rows("qqpp", (1e-6,), (0,))
    v, e = _engine("qqpp", rows)
    r = rows[0]
    d = abs(v[0] - float(r["value"]))
    assert d > 1000 * TOL * r["scale"] and d > e[0] + r["check"]


def test_well_separated_untouched(monkeypatch):
    """Four random covariances in 8 dims (no pair below ``1 - rho^2 = 0.15``) keep the exp
    path: the new form is never reached."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3, 4, 8))
    K = np.einsum("bia,bja->bij", X, X) / 8
    d = np.sqrt(np.einsum("bii->bi", K))
    rho = K / (d[:, :, None] * d[:, None, :])
    assert np.min(1 - rho ** 2 + np.eye(4)) > _multi._EXP_QUAD_NEAR
    monkeypatch.setattr(_multi, "_quad_sum_exp", lambda *a: pytest.fail("reached"))
    seen = []
    monkeypatch.setattr(_multi, "_exp_path",
                        lambda fs, K, *a: seen.append(len(K)) or (np.zeros(len(K)), None))
    fn = _fns()
    expect_nd([fn[n] for n in "ssss"], K, kinks=(0.0,))
    assert seen == [3]
