r"""``<f(z_a) g(z_b)>_K`` for all pairs of N inputs: :func:`pair_expectations`.

The workhorse of the kernel flow: closed forms where they exist
(:mod:`pdlt.gaussian._closed`), for two nearly collinear inputs of a smooth
function the fixed rule with a few-node inner Gauss-Hermite
(:mod:`pdlt.gaussian._collinear`), the Mehler series with a rigorous tail
bound otherwise (:mod:`pdlt.gaussian._mehler`), and nested quadrature
(:mod:`pdlt.gaussian._nested`) for the pairs where the series would
converge slowly or on request (``method="quadrature"``).
"""

from __future__ import annotations

import numpy as np

from . import _trig
from ._collinear import collinear_pairs
from ._closed import closed_forms_nn
from ._mehler import _SeriesGrid, _mehler_offdiag
from ._nested import expect2
from ._rule import _EPS, KernelNotPSDError, expect

__all__ = ["pair_expectations"]


def _validate_kernel(K, where=""):
    """Clean (N, N) float kernel, its diagonal, and the correlations rho.

    Few passes over N^2 values (it runs at every layer of a flow): finiteness,
    exact-or-near symmetry, and ``|rho_ab| <= 1`` up to round-off, which is
    the pairwise PSD condition the 2x2 expectations need. Returns
    ``(K, diag, rho, den)`` with ``den = sqrt(K_aa K_bb)`` (``rho = 0`` where
    ``den = 0``) and ``rho_aa = 1`` exactly for ``K_aa > 0``.
    """
    K = np.asarray(K, dtype=float)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"kernel{where} must be a square (N, N) matrix; got shape {K.shape}")
    if not np.isfinite(K).all():
        raise ValueError(f"kernel{where} contains NaN or inf (the flow overflowed or the inputs are bad)")
    diag = np.diag(K).copy()
    if np.any(diag < 0):
        raise KernelNotPSDError(f"kernel{where} has a negative variance on its diagonal")
    if not np.array_equal(K, K.T):
        sym = np.max(np.abs(K - K.T))
        if sym > 1e3 * _EPS * max(np.max(np.abs(K)), 1.0):
            raise ValueError(f"kernel{where} is not symmetric (max |K - K^T| = {sym:.2e})")
        K = 0.5 * (K + K.T)
    s = np.sqrt(diag)
    den = np.multiply.outer(s, s)
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
    rho = K * np.multiply.outer(inv, inv)
    np.fill_diagonal(rho, np.where(diag > 0, 1.0, 0.0))
    amax = max(rho.max(), -rho.min()) if rho.size else 0.0
    bad = None
    if amax > 1.0 + 64 * _EPS:
        bad = np.abs(rho) > 1.0 + 64 * _EPS
    elif not s.all():
        zero = s == 0  # a covariance with a zero-variance input must vanish
        zero_var_cov = (zero[:, None] | zero[None, :]) & (K != 0)
        bad = zero_var_cov if zero_var_cov.any() else None
    if bad is not None:
        a, b = np.argwhere(bad)[0]
        raise KernelNotPSDError(
            f"kernel{where} is not positive semi-definite: inputs {a} and {b} have "
            f"K_ab^2 > K_aa K_bb (K_aa={K[a, a]:.6g}, K_ab={K[a, b]:.6g}, K_bb={K[b, b]:.6g})")
    np.clip(rho, -1.0, 1.0, out=rho)
    return K, diag, rho, den



def pair_expectations(act, K, terms=(("sigma", "sigma"),), *, rtol=1e-12, method="auto"):
    """``<fa(z_a) fb(z_b)>_K`` for all pairs of N inputs, for several terms.

    Parameters
    ----------
    act : Activation
    K : ndarray (N, N)
        Kernel over the inputs; symmetric PSD (checked pairwise).
    terms : sequence of (str, str)
        Names of Activation attributes, e.g. ``("sigma", "sigma")`` and
        ``("d1", "d1")`` for the NNGP and NTK recursions.
    rtol : float
        Target accuracy of the series: absolute error at most
        ``rtol * sqrt(<fa_a^2> <fb_b^2>)`` for each pair.
    method : {"auto", "series", "quadrature"}
        ``"auto"`` uses closed forms, then, for N = 2 inputs of a smooth
        non-periodic function whose conditional spread
        ``sqrt(K_bb - K_ab^2 / K_aa)`` is at most 1e-2, the collinear rule
        (:mod:`pdlt.gaussian._collinear`: ~1e3 evaluations where the series
        stalls and nested quadrature takes ~1e5; the diagonal bitwise the
        series path's), then the Mehler series with nested quadrature for
        slow pairs; ``"series"`` skips the closed forms and the collinear rule;
        ``"quadrature"`` forces nested quadrature for every off-diagonal pair
        (slow; a reference).

    Returns
    -------
    dict mapping each term to an (N, N) ndarray
        Exactly symmetric when ``fa == fb``.
    """
    if method not in ("auto", "series", "quadrature"):
        raise ValueError(f"method must be 'auto', 'series' or 'quadrature'; got {method!r}")
    K, diag, rho, den = _validate_kernel(K)
    N = K.shape[0]
    closed = closed_forms_nn(act, list(terms), K, diag, rho, den) if method == "auto" else {}
    rest = [t for t in terms if t not in closed]
    if rest and method == "auto" and _trig.active(getattr(act, "period", None)) \
            and not getattr(act, "kinks", ()):
        # sin and its products: closed form at any scale (pdlt.gaussian._trig), or None
        closed.update(_trig.trig_pairs(act, K, rest) or {})
    if rest and N == 2 and method == "auto":
        # two nearly collinear inputs of a smooth function (pdlt.gaussian._collinear):
        # the fixed rule with a few-node inner Gauss-Hermite, where the series would
        # not converge and nested quadrature would cost ~1e5 evaluations per term
        near = collinear_pairs(act, K, diag, rest, rtol)
        if near is not None:
            closed.update(near)
    out = {}
    grid = None  # what the series terms share: rho, the rule's nodes, f values
    for fa, fb in terms:
        if (fa, fb) in closed:
            out[(fa, fb)] = closed[(fa, fb)]
            continue
        f, g = getattr(act, fa), getattr(act, fb)
        if N > 1 and method != "quadrature":
            if grid is None:
                grid = _SeriesGrid(act, K, diag)
            out[(fa, fb)] = _mehler_offdiag(grid, fa, fb, rtol)
            continue
        res = np.empty((N, N))
        # the diagonal is a one-variable integral
        res[np.diag_indices(N)] = expect(lambda z: f(z) * g(z), diag, kinks=act.kinks,
                                         period=act.period)
        if N > 1:
            iu = np.triu_indices(N, 1)
            vals = expect2(f, g, diag[iu[0]], K[iu], diag[iu[1]],
                           kinks_f=act.kinks, kinks_g=act.kinks)
            res[iu] = vals
            lower = np.tril_indices(N, -1)
            if fa == fb:
                res[lower] = res.T[lower]
            else:
                res[lower] = expect2(f, g, diag[lower[0]], K[lower], diag[lower[1]],
                                     kinks_f=act.kinks, kinks_g=act.kinks)
        out[(fa, fb)] = res
    return out

