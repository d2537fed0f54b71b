"""Gaussian expectations: the one integration engine of pdlt.

``pdlt.gaussian`` is a package only so that its pieces stay small; import
from here. One variable and two variables (all pairs of N inputs) live in
``_core``; three- and four-variable expectations (for the four-point vertex)
live in ``_multi`` when present. See ``_core``'s docstring for the methods and
their measured accuracy.
"""

from ._core import (  # noqa: F401
    T_TRUNC,
    KernelNotPSDError,
    _fixed_rule,
    _K_FIXED_MAX,
    closed_form_pair,
    expect,
    expect2,
    hermite_coefficients,
    pair_expectations,
)
from ._core import __doc__ as _methods_doc
from ._multi import expect_nd, quad_expectations  # noqa: F401

__doc__ = (__doc__ or "") + "\n" + (_methods_doc or "")

__all__ = [
    "expect",
    "expect2",
    "pair_expectations",
    "hermite_coefficients",
    "closed_form_pair",
    "expect_nd",
    "quad_expectations",
    "KernelNotPSDError",
    "T_TRUNC",
]
