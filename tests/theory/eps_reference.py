"""The eps-polynomial reference of the nearly-coinciding-input tests (issue #15).

Two inputs ``x_1 = x_0 + eps e``: every Gaussian average of the fold is analytic in the
pair's angle, itself analytic in eps > 0, so the last layer's statistics are fitted by a
polynomial in eps through the engine at ``eps = 0`` (the inputs merged) and at nodes where
``1 - rho^2 >= 1e-3`` at every layer (paths that are right there), with the near-pair
forms under test switched off (``patches``). Two degrees (11 and 9) give the reference's
own accuracy. Shared by ``test_kinked_coinciding_n3.py`` and ``_n4.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import pdlt

NODES = np.concatenate([[0.0], np.linspace(0.045, 0.2, 12)])
_P = np.polynomial.polynomial


def eps_reference(mlp, x_of_eps, names, patches):
    """``{X: (coefficients of degree 11, of degree 9)}`` of the last layer's entries in eps;
    ``patches``: ``(module, attribute, replacement)`` applied while the nodes run."""
    vals = []
    mp = pytest.MonkeyPatch()
    for module, attr, repl in patches:
        mp.setattr(module, attr, repl)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for e in NODES:
                s = pdlt.statistics(mlp, x_of_eps(e), get=names)
                K = s.K[:-1, :2, :2]
                rel = 1.0 - K[:, 0, 1] ** 2 / (K[:, 0, 0] * K[:, 1, 1])
                assert e == 0.0 or np.min(rel) >= 1e-3
                vals.append({X: getattr(s, X)[-1] for X in names})
    finally:
        mp.undo()
    return {X: tuple(_P.polyfit(NODES, np.array([v[X].ravel() for v in vals]), deg)
                     for deg in (11, 9)) for X in names}


def ref_at(coefs, eps, shape):
    """The reference at eps and its accuracy (degree 11 - degree 9), of shape ``shape``."""
    c11, c9 = coefs
    return (_P.polyval(eps, c11).reshape(shape),
            np.abs(_P.polyval(eps, c11) - _P.polyval(eps, c9)).reshape(shape))


def assert_mixed_entries(s, reference, eps, names, mixed):
    """Each statistic's ``mixed`` entries at the last layer: the reference resolves 1e-10
    of scale; the engine is within 1e-8 of scale and within its stated estimate (plus the
    fold's own rounding, which the estimate leaves out: 1e-12 of scale); and the entries
    move with eps by > 100 x 1e-8 of scale (the comparison has power), V excepted."""
    for X in names:
        T = getattr(s, X)[-1]
        ref, acc = ref_at(reference[X], eps, T.shape)
        ref0, _ = ref_at(reference[X], 0.0, T.shape)
        scale = np.max(np.abs(ref))
        mix = mixed(T.shape)
        assert np.max(acc[mix]) <= 1e-10 * scale, X                 # the reference's accuracy
        d = np.abs(T - ref)[mix]
        assert np.max(d) <= 1e-8 * scale, X
        assert np.all(d <= s.error[X][-1][mix] + acc[mix] + 1e-12 * scale), X
        if X != "V":
            assert np.max(np.abs(ref - ref0)[mix]) > 100 * 1e-8 * scale, X
