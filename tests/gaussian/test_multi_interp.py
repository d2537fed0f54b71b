"""The smooth path's last axis by interpolation in the conditional mean (issue #15 cost).

What is checked: ``_inner_interp`` reproduces the direct sums of the full last-axis
rule to ~1e-14 of ``max |g|`` for tanh (poles at ``i pi / 2``), its merged powers and
swish (unbounded), across inner-axis scales; its check refuses what it cannot
resolve (a kink smoothed on a scale far below the grid spacing, which the direct
sums then take); it leaves to the direct sums what it would not make cheaper; and
``expect_nd`` with and without it agrees on three- and four-variable tanh averages.
"""

from __future__ import annotations

import numpy as np
import pytest

from pdlt.gaussian import _multi as M


def _direct(f, m, l, u, w):
    return np.stack([f(mi[:, None] + li * u) @ w for mi, li in zip(m, l)])


def _swish(z):
    return z / (1.0 + np.exp(-z))


@pytest.mark.parametrize("f", [np.tanh, lambda z: np.tanh(z) ** 3, _swish])
@pytest.mark.parametrize("code", [12, 24, -44])
def test_interpolated_inner_sums_match_the_direct_ones(f, code):
    u, w = M._axis_rule(code)
    rng = np.random.default_rng(abs(code))
    m = rng.normal(scale=3.0, size=(3, 3000))
    l = np.array([0.05, 0.3, 1.0])
    acc = np.full(m.shape, np.nan)
    left = M._inner_interp(f, m, l, u, w, 1e18, acc)
    assert len(left) == 0
    want = _direct(f, m, l, u, w)
    scale = np.max(np.abs(want), axis=1, keepdims=True)
    assert np.max(np.abs(acc - want) / scale) <= 2e-14


def test_the_check_refuses_an_unresolved_inner_function():
    # |z| on a finite rule: g(m) = sum_j w_j |m + l u_j| is kinked at every m = -l u_j
    # (a kink on the inner axis of scale 1e-3 is also far below the grid spacing):
    # piecewise linear, interpolation error ~1e-3, the check must see it; the smooth
    # tanh on the same rule passes
    u, w = M._axis_rule(16)
    m = np.random.default_rng(0).normal(size=(2, 4000))
    acc = np.zeros(m.shape)
    left = M._inner_interp(np.abs, m, np.array([1e-3, 1.0]), u, w, 1e18, acc)
    assert left.tolist() == [0, 1]
    assert not acc.any()
    assert len(M._inner_interp(np.tanh, m, np.array([1e-3, 1.0]), u, w, 1e18, acc)) == 0


def test_interpolation_only_where_cheaper():
    u, w = M._axis_rule(-44)
    m = np.random.default_rng(1).normal(size=(2, 300))
    acc = np.zeros(m.shape)
    # direct: 300 points x 44 nodes per covariance, less than the grid alone
    left = M._inner_interp(np.tanh, m, np.array([0.5, 0.5]), u, w, 300 * 44, acc)
    assert left.tolist() == [0, 1]
    assert not acc.any()


@pytest.mark.parametrize("d,scale", [(4, 1.0), (4, 0.3), (3, 1.5)])
def test_expect_nd_with_and_without_interpolation_agree(monkeypatch, d, scale):
    A = np.random.default_rng(5 + d).normal(size=(3, d, d))
    K = scale * (A @ np.swapaxes(A, 1, 2) / d + 0.2 * np.eye(d))
    fs = [np.tanh] * d if d == 4 else [lambda z: np.tanh(z) ** 2, np.tanh, np.tanh]
    calls = []
    orig = M._inner_interp

    def spy(*a):
        left = orig(*a)
        calls.append(len(a[1]) - len(left))
        return left
    monkeypatch.setattr(M, "_inner_interp", spy)
    on, e_on = M.expect_nd(fs, K, return_error=True)
    assert sum(calls) > 0                      # the interpolation did take some averages
    monkeypatch.setattr(M, "_INTERP", False)
    off, e_off = M.expect_nd(fs, K, return_error=True)
    assert np.max(np.abs(on - off)) <= 1e-13 * np.max(np.abs(off))
    # the error estimates alike (both at round-off here: compared above 1e-12)
    assert np.allclose(e_on, e_off, rtol=0.5, atol=1e-12 * np.max(np.abs(off)))
