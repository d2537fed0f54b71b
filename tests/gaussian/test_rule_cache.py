"""The remembered quadrature rules of pdlt.gaussian._rule give bitwise the same rules."""

import numpy as np
import pytest

from pdlt.gaussian import _rule


def test_remembered_rule_is_the_computed_rule_and_read_only():
    centers = np.array([[0.0, 0.37], [0.0, -1.2]])
    widths = np.array([[1.0, 0.01], [0.5, 0.0]])
    u, w = _rule._rule(centers, widths)
    u2, w2 = _rule._rule(centers.copy(), widths.copy())          # a hit: same objects
    assert u2 is u and w2 is w
    ref_u, ref_w = _rule._rule_uncached(centers, widths)
    assert np.array_equal(u, ref_u) and np.array_equal(w, ref_w)
    with pytest.raises(ValueError):
        u[0, 0] = 1.0                                            # callers cannot corrupt it
    # a different argument is a different rule
    u3, _ = _rule._rule(centers, widths * 0.5)
    assert not np.array_equal(u3, u)


def test_rule_memory_is_bounded():
    for k in range(3 * _rule._RULE_CACHE_SIZE):
        _rule._rule(np.array([[0.0, 0.1 * k]]), np.array([[1.0, 0.0]]))
    assert len(_rule._RULE_CACHE) <= _rule._RULE_CACHE_SIZE
