"""The pruned, halved product grid of the smooth four-variable rule (issue #15 cost).

What is checked: the points dropped by the pruning weigh at most the stated
``2 _PRUNE_MASS`` (outer axes and last axis), so for a bounded integrand the
pruned sum differs from the full tensor sum by at most that times the
integrand's bound; halving the grid for an integrand even under ``z -> -z``
is exact (to round-off); the parity test refuses what is not even.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from pdlt.gaussian import _multi as M


def _cov(seed, d, scale):
    A = np.random.default_rng(seed).normal(size=(d, d))
    return scale * (A @ A.T / d + 0.2 * np.eye(d))


def _full_sum(fs, K, accuracy="default"):
    """The same rule without pruning or halving: plain nested tensor sum (reference)."""
    order, L = M._factor(K[None])
    codes = M.axis_rules(np.max(np.abs(L), axis=1), accuracy)[0]
    rules = [M._axis_rule(int(q)) for q in codes]
    fo = [fs[i] for i in order[0]]
    d = len(fs)
    grids = np.meshgrid(*[r[0] for r in rules], indexing="ij")
    W = functools.reduce(np.multiply.outer, [r[1] for r in rules])
    z = [sum(L[0, k, j] * grids[j] for j in range(k + 1)) for k in range(d)]
    return float(np.sum(W * np.prod([f(zk) for f, zk in zip(fo, z)], axis=0))), codes


@pytest.mark.parametrize("d,scale", [(4, 0.3), (4, 1.0), (3, 1.0), (3, 3.0), (2, 3.0)])
def test_pruned_grid_drops_at_most_the_stated_mass(d, scale):
    K = _cov(d, d, scale)
    order, L = M._factor(K[None])
    codes = tuple(int(q) for q in M.axis_rules(np.max(np.abs(L), axis=1), "default")[0])
    for even in (False, True):
        levels = M._outer_grid(codes[:-1], even)
        inner = M._inner_ranges(codes, even)
        u, w = M._axis_rule(codes[-1])
        W_outer = levels[-1][3]
        kept = sum(float(np.sum(W_outer[sel]) * np.sum(w[j0:j1])) for sel, j0, j1 in inner[3])
        # the kept weights: the full rule's (1) less at most 2 _PRUNE_MASS, up to round-off
        assert 1.0 - 2 * M._PRUNE_MASS - 1e-15 <= kept <= 1.0 + 1e-15
        # and the pruning does drop something on these grids (the test could fail)
        full = np.prod([len(M._axis_rule(q)[0]) for q in codes])
        assert inner[0] < (0.5 if even else 1.0) * full


@pytest.mark.parametrize("d,scale", [(4, 0.3), (3, 1.0), (3, 3.0),
                                     pytest.param(4, 1.0, marks=pytest.mark.slow)])
def test_pruned_halved_sum_equals_full_tensor_sum(d, scale):
    # tanh^d is bounded by 1, so the pruned sum is within 2 _PRUNE_MASS (plus round-off
    # of ~1e6 terms, ~1e-15 relative) of the full tensor sum of the same rule
    K = _cov(10 + d, d, scale)
    fs = [np.tanh] * d
    want, codes = _full_sum(fs, K)
    got = float(M.expect_nd(fs, K))
    assert M._even_product(fs, 1.0) == (d % 2 == 0)
    assert abs(got - want) <= 2 * M._PRUNE_MASS + 1e-14 * max(abs(want), 1e-3)


def test_halving_is_exact_for_even_integrands():
    K = _cov(7, 4, 1.0)
    order, L = M._factor(K[None])
    qs = M.axis_rules(np.max(np.abs(L), axis=1), "default")
    fs = [np.tanh, lambda z: np.tanh(z) ** 2, np.tanh, np.cos]
    a = M._gh_sum(fs, order, L, qs, even=False)
    b = M._gh_sum(fs, order, L, qs, even=True)
    assert abs(a[0] - b[0]) <= 1e-14 * max(abs(a[0]), 1e-3)
    # an odd product integrates to zero, and halving would double it instead: refused
    assert not M._even_product([np.tanh, np.tanh, np.tanh], 1.0)
    assert not M._even_product([np.tanh, lambda z: np.tanh(z) + 0.1], 1.0)
    assert M._even_product([np.cos, np.tanh, np.sin], 2.0)


def test_trapezoid_sizes_round_up():
    # four equal axes of scale s: below the point budget (64^4) for these s, so the
    # sizes are the rule's count rounded up to the ladder, at most ~6 % more
    s = np.linspace(M._TRAP_FROM + 0.01, 1.25, 200)[:, None] * np.ones((1, 4))
    q = -M.axis_rules(s, "default")[:, 0]
    c = M._TRAP_C["default"]
    want = np.ceil(1.0 + 2.0 * M._TRAP_T * np.maximum(s[:, 0] * c / np.pi ** 2,
                                                      1.0 / M._TRAP_HMAX))
    assert np.all(q >= want) and np.all(q <= np.ceil(1.07 * want))
    assert set(np.unique(q).tolist()) <= set(M._TRAP_LADDER.tolist())
    assert len(np.unique(q)) < len(np.unique(want)) / 2      # fewer distinct grids


def test_threads_give_identical_results(monkeypatch):
    # several groups of covariances, enough points for the thread pool to be used
    Ks = np.stack([_cov(20 + i, 4, s) for i, s in enumerate((0.3, 0.7, 1.0, 1.5))])
    monkeypatch.setenv("PDLT_THREADS", "1")
    one = M.expect_nd([np.tanh] * 4, Ks)
    monkeypatch.setenv("PDLT_THREADS", "2")
    two = M.expect_nd([np.tanh] * 4, Ks)
    assert np.array_equal(one, two)
    monkeypatch.setenv("PDLT_THREADS", "zero")
    with pytest.raises(ValueError, match="PDLT_THREADS"):
        M.expect_nd([np.tanh] * 4, Ks)


def test_byte_cache_bounds_bytes_not_count():
    # the grid caches are bounded by the bytes of their arrays: ~600 distinct rules of
    # up to ~250 MB each (16 random tanh inputs at K1 = 30) filled a count-bounded
    # cache of 1024 past the machine's memory (issue #15)
    calls = []

    @M._byte_cache(1000)
    def grid(n, scale=1.0):
        calls.append(n)
        return [(np.full(n, scale), np.arange(n)), None]        # 16 n bytes

    assert grid(20)[0][0].sum() == 20.0        # 320 bytes, kept
    assert grid(20, 1.0) is grid(20)           # defaults applied in the key: one entry
    assert calls == [20] and grid.cache_bytes() == 320
    grid(30)                                   # 480: 800 held
    grid(20)                                   # hit: 20 becomes the most recent
    grid(25)                                   # 400: over 1000, the least recent (30) goes
    assert grid.cache_len() == 2 and grid.cache_bytes() == 720
    grid(20)
    assert calls == [20, 30, 25]
    grid(30)
    assert calls == [20, 30, 25, 30] and grid.cache_bytes() <= 1000
    grid(100)                                  # 1600 bytes: returned, never kept
    grid(100)
    assert calls[-2:] == [100, 100] and grid.cache_bytes() <= 1000
    grid.limit = 0                             # the bound is read at every call
    grid(5)
    assert grid.cache_len() <= 2 and grid.cache_bytes() <= 1000


def test_queued_grid_sums_flushed_by_bytes_are_bit_identical(monkeypatch):
    # _gh_sum runs its queued grid sums once their grids exceed _HELD_BYTES, so that
    # memory stays bounded; each sum writes its own entries, so flushing after every
    # rule (_HELD_BYTES = 0) gives the same bits as one run at the end
    rng = np.random.default_rng(3)
    K = np.stack([_cov(int(s), 4, sc) for s, sc in zip(rng.integers(0, 99, 6),
                                                          [0.3, 0.6, 1.0, 2.0, 3.0, 5.0])])
    fs = (np.tanh,) * 4
    ref = M.expect_nd(fs, K)
    M._outer_grid.cache_clear()
    M._inner_ranges.cache_clear()
    M._outer_bins.cache_clear()
    monkeypatch.setattr(M, "_HELD_BYTES", 0)
    monkeypatch.setattr(M._outer_grid, "limit", 0)        # nothing kept: rebuilt each time
    runs = []
    run = M._run_tasks
    monkeypatch.setattr(M, "_run_tasks", lambda tasks, L, out: (runs.append(len(tasks)),
                                                                run(tasks, L, out)))
    again = M.expect_nd(fs, K)
    assert np.array_equal(ref, again)
    # one run per rule (several rules here), none holding the grids of two
    assert sum(n > 0 for n in runs) >= 3
    assert M._outer_grid.cache_bytes() == 0
