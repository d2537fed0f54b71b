"""Gaussian expectations: the one integration engine of pdlt.

``pdlt.gaussian`` is a package only so that its pieces stay small; import
from here. The pieces, by idea:

* ``_rule`` -- the one-variable rule and :func:`expect`;
* ``_nested`` -- two variables by nested quadrature, :func:`expect2`;
* ``_mehler`` -- the Mehler (Hermite) series, :func:`hermite_coefficients`;
* ``_closed`` -- closed forms (:func:`closed_form_pair`), stable at any scale;
* ``_collinear`` -- two nearly collinear inputs of a smooth function (the
  fixed rule with a few-node inner Gauss-Hermite);
* ``_pairs`` -- all pairs of N inputs, :func:`pair_expectations` (closed
  forms, then the collinear rule for two inputs, then the series, then
  nested quadrature);
* ``_multi`` -- three and four variables, :func:`expect_nd`,
  :func:`quad_expectations`;
* ``_orthant`` -- products of piecewise monomials (ReLU family) in closed
  form, used by ``_multi``.

The methods and their measured accuracy follow (each module's own
docstring).
"""

from . import _closed, _collinear, _mehler, _multi, _nested, _orthant, _rule
from ._closed import closed_form_pair  # noqa: F401
from ._mehler import hermite_coefficients  # noqa: F401
from ._multi import expect_nd, quad_expectations  # noqa: F401
from ._nested import expect2  # noqa: F401
from ._pairs import pair_expectations  # noqa: F401
from ._rule import T_TRUNC, KernelNotPSDError, _fixed_rule, _K_FIXED_MAX, expect  # noqa: F401

__doc__ = (__doc__ or "") + "".join(
    "\n" + (m.__doc__ or "") for m in (_rule, _nested, _mehler, _collinear, _closed, _multi, _orthant))

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
