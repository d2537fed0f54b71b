"""Three ReLU-family pieces with one nearly coinciding pair: uniform in rho (issue #15).

Against the 30-digit reference of ``benchmarks/relu_triple_reference.py`` (stored in
``benchmarks/relu_triple_reference.json``; it shares no code with the engine: the
average over the third variable and the radius in closed form, the pair's angle by
``mp.quad``), at ``1 - rho = 1e-2 .. 1e-12`` and 0: every value within 1e-12 of its
scale (measured: 3.7e-13 at worst, at 1e-10; a few ulps at 1e-6 and above) and within
its stated estimate. The orthant / split path it replaces was 1.2e-6 off
``<theta theta theta>`` at ``1 - rho = 1e-6`` (checked below: the comparison resolves it).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from pdlt.gaussian import _multi
from pdlt.gaussian._multi import PiecewiseMonomial, expect_nd

REF = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "relu_triple_reference.json"


def _rows():
    return json.loads(REF.read_text())


def _fs(row):
    return [PiecewiseMonomial(cp, cm, n) for n, cp, cm in row["fs"]]


def _scale(fs, K):
    """``prod_k <|f_k|^3>^(1/3)`` (Hoelder): the size of the average."""
    s = 1.0
    for k, f in enumerate(fs):
        g = PiecewiseMonomial(abs(f.cp) ** 3, abs(f.cm) ** 3, 3 * f.n)
        s *= float(expect_nd([g], K[k:k + 1, k:k + 1])) ** (1.0 / 3.0)
    return s


@pytest.mark.parametrize("row", _rows(), ids=lambda r: f"{r['one_minus_rho']:g}-{r['fs']}")
def test_against_reference(row):
    K, fs, ref = np.array(row["K"]), _fs(row), float(row["value"])
    val, err = expect_nd(fs, K, return_error=True)
    scale = _scale(fs, K)
    assert abs(val - ref) <= 1e-12 * scale
    assert abs(val - ref) <= err
    # the same average with the pair in other slots (the pair is found, not assumed)
    for perm in ((2, 0, 1), (1, 2, 0)):
        Kp = K[np.ix_(perm, perm)]
        assert abs(expect_nd([fs[i] for i in perm], Kp) - ref) <= 1e-12 * scale


def test_old_path_fails_the_comparison(monkeypatch):
    """Resolution: the orthant / split path misses the same comparison by far."""
    row = next(r for r in _rows() if r["one_minus_rho"] == 1e-6 and r["fs"][2][0] == 0
               and r["fs"][0][0] == 0)
    K, fs, ref = np.array(row["K"]), _fs(row), float(row["value"])
    monkeypatch.setattr(_multi, "_near_pair_triple", _multi._piecewise_path)
    assert abs(expect_nd(fs, K) - ref) > 1e3 * 1e-12 * _scale(fs, K)


def test_batch_mixes_paths():
    """A batch of covariances: near pairs (any position) and well separated ones, each as
    alone."""
    rows = _rows()
    fs = _fs(rows[0])
    Ks = [np.array(r["K"]) for r in rows if r["fs"] == rows[0]["fs"]]
    Ks.append(np.array([[1.0, 0.3, -0.2], [0.3, 1.2, 0.1], [-0.2, 0.1, 0.8]]))
    Ks.append(np.array(Ks[2])[np.ix_((1, 2, 0), (1, 2, 0))])
    batch = expect_nd(fs, np.stack(Ks))
    one = np.array([expect_nd(fs, K) for K in Ks])
    assert np.max(np.abs(batch - one)) <= 1e-15


ELU_REF = REF.parent / "elu_triple_reference.json"


def _elu_fns():
    from pdlt.activations import activation
    from pdlt.gaussian._multi import normal_family
    act = activation("elu")
    fn = {"s": normal_family(act, "sigma"), "p": normal_family(act, "d1")}
    fn["ss"] = fn["s"] * fn["s"]
    return fn


@pytest.mark.parametrize("row", [r for r in json.loads(ELU_REF.read_text())
                                 if r["one_minus_rho"] < 1e-3],
                         ids=lambda r: f"{r['one_minus_rho']:g}-{r['s']}-{''.join(r['fs'])}")
def test_elu_against_reference(row):
    """elu's sigma, sigma', sigma^2 (kinked at 0): the sphere with a radial rule, within
    1e-13 (measured <= 1e-14) of an independent reference (``elu_triple_reference.py``:
    the conditional closed form over the third variable, nested scipy quad) and within its
    estimate; the exp path was 4.3e-6 off ``<p p p>`` at ``1 - rho = 1e-4`` (estimate
    1.1e-7)."""
    fn = _elu_fns()
    fs, K, ref = [fn[n] for n in row["fs"]], np.array(row["K"]), float(row["value"])
    val, err = expect_nd(fs, K, kinks=(0.0,), return_error=True)
    assert abs(val - ref) <= 1e-13
    assert abs(val - ref) <= err
    if row["one_minus_rho"] == 1e-4 and row["fs"] == ["p", "p", "p"] and row["s"] == 0.6:
        old = _multi._exp_path(fs, K[None], *_multi._factor(K[None]), (0.0,), "default", False)[0]
        assert abs(old[0] - ref) > 1e4 * 1e-13          # the comparison resolves the old path


def test_int_power_within_ulps_of_pow():
    """``_triple_sum``'s ``cos(beta)^m`` by repeated multiplication (h66): numpy's own bits
    for m <= 2, within (m - 1) ulp of ``x ** m`` for m = 3 .. 7 on [-1, 1] (measured 1, 2, 2, 3, 3);
    the power one too high is told apart."""
    x = np.random.default_rng(2).uniform(-1.0, 1.0, 20000)
    for m in range(8):
        v, ref = _multi._int_power(x, m), x ** m
        if m <= 2:
            assert np.array_equal(v, ref)
        else:
            assert np.all(np.abs(v - ref) <= (m - 1) * np.spacing(np.abs(ref)))
        assert np.max(np.abs(_multi._int_power(x, m + 1) - ref)) > 0.1
