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


def test_names_of_the_former_core_module_still_import():
    # gaussian/_core.py was split by idea (_rule, _nested, _mehler, _closed, _pairs); code
    # that imports its names from pdlt.gaussian._core keeps working, with the same objects
    from pdlt import gaussian
    from pdlt.gaussian import _core
    names = ["KernelNotPSDError", "T_TRUNC", "_BLOCK_NODES", "_EPS", "_GH_MAX_SPREAD",
             "_GH_NODES", "_GRADE", "_KMAX", "_KMAX_FIRST", "_K_FIXED_MAX", "_PARITY_SHARE",
             "_PHI_NORM", "_Q", "_Q2", "_RULE_CACHE", "_RULE_CACHE_SIZE", "_STRIP", "_SeriesGrid",
             "_TILE_COLS", "_TRIL", "_T_RULE", "_as_float", "_check_psd2", "_chunks",
             "_closed_forms", "_coefficients_from_values", "_dger", "_expect_uniform_blocked",
             "_fixed_rule", "_gauss_legendre", "_gelu_pair", "_hermite_design", "_hermite_e",
             "_horner_block", "_inv_sqrt", "_mehler_offdiag", "_nested", "_panels", "_rule",
             "_rule_uncached", "_series_coefficients", "_tril", "_validate_kernel",
             "closed_family", "closed_form_pair", "expect", "expect2", "hermite_coefficients",
             "pair_expectations", "pair_terms"]
    missing = [n for n in names if not hasattr(_core, n)]
    assert not missing
    assert _core._RULE_CACHE is _rule._RULE_CACHE
    for n in ("_fixed_rule", "_K_FIXED_MAX", "expect", "expect2", "pair_expectations",
              "hermite_coefficients", "closed_form_pair", "KernelNotPSDError", "T_TRUNC"):
        assert getattr(gaussian, n) is getattr(_core, n)
