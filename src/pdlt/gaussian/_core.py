"""Former home of the one- and two-variable engine; kept so old imports work.

The engine is split by idea: :mod:`._rule` (the one-variable rule and
:func:`expect`), :mod:`._nested` (:func:`expect2`), :mod:`._mehler` (the
Mehler series, :func:`hermite_coefficients`), :mod:`._closed` (closed
forms) and :mod:`._pairs` (:func:`pair_expectations`). Import from
:mod:`pdlt.gaussian`; the names below are re-exported unchanged (the same
objects) for code that still imports them from here (all but the unused
``_TILE`` and ``_warn``, which were dead code).
"""

from ._closed import _gelu_pair, closed_family, closed_form_pair, pair_terms  # noqa: F401
from ._closed import closed_forms_nn as _closed_forms  # noqa: F401
from ._mehler import (  # noqa: F401
    _KMAX,
    _KMAX_FIRST,
    _PARITY_SHARE,
    _STRIP,
    _TILE_COLS,
    _TRIL,
    _dger,
    _coefficients_from_values,
    _hermite_design,
    _horner_block,
    _inv_sqrt,
    _mehler_offdiag,
    _series_coefficients,
    _SeriesGrid,
    _tril,
    hermite_coefficients,
)
from ._nested import _GH_MAX_SPREAD, _GH_NODES, _check_psd2, _nested, expect2  # noqa: F401
from ._pairs import _validate_kernel, pair_expectations  # noqa: F401
from ._rule import (  # noqa: F401
    _BLOCK_NODES,
    _EPS,
    _GRADE,
    _K_FIXED_MAX,
    _PHI_NORM,
    _Q,
    _Q2,
    _RULE_CACHE,
    _RULE_CACHE_SIZE,
    _T_RULE,
    T_TRUNC,
    KernelNotPSDError,
    _as_float,
    _chunks,
    _expect_uniform_blocked,
    _fixed_rule,
    _gauss_legendre,
    _hermite_e,
    _panels,
    _rule,
    _rule_uncached,
    expect,
)
