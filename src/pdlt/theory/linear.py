r"""Deep linear networks, exact at every width (book ch. 3).

For ``sigma(z) = z`` and ``C_b = 0`` one preactivation of layer l is a
Gaussian scale mixture, ``z^(l) = sqrt(K^(l)) u prod_{k<l} sqrt(X_k/n_k)``
with ``u ~ N(0, 1)`` and independent ``X_k ~ chi^2_{n_k}``, so its moments and
density are known exactly at any widths: ``G1 = 0``,
``E[z^4]/(3 E[z^2]^2) = prod_k (1 + 2/n_k)`` and, at large depth with
``r = L/n`` fixed, ``E[z^{2m}]/((2m-1)!! K^m) -> exp(m (m - 1) r)``. These
are the exact references the finite-width recursions are tested against.

Derivation: ``docs/derivations/linear.rst``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from ..network import MLP

__all__ = ["linear_moments", "linear_kurtosis", "linear_density",
           "large_depth_moments", "large_depth_density"]


def _spec(mlp, K1):
    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
    act = mlp.activation
    if act.scale_invariant != (1.0, 1.0):
        raise ValueError(f"deep linear results need activation='linear'; got {act.name!r}")
    if any(c != 0 for c in mlp.C_b):
        raise ValueError(f"deep linear results are exact only for C_b = 0; got C_b={mlp.C_b}")
    K1 = float(K1)
    if not (K1 > 0 and math.isfinite(K1)):
        raise ValueError(f"K1 must be a finite variance > 0; got {K1}")
    L = mlp.depth
    K = K1 * np.concatenate([[1.0], np.cumprod(mlp.C_W[1:])])      # (L,)
    return K, np.array(mlp.widths[1:L], dtype=float), L


def linear_moments(mlp, orders=(1, 2), *, K1=1.0):
    """Exact even moments ``E[(z^(l))^{2m}]`` of one preactivation at every layer.

    Parameters
    ----------
    mlp : MLP
        ``activation="linear"``, ``C_b = 0``; any widths and per-layer C_W.
    orders : sequence of int
        The m's (``2m`` is the power).
    K1 : float
        First-layer kernel ``C_W^(1) |x|^2 / n_0``.

    Returns
    -------
    ndarray (L, len(orders))

    Examples
    --------
    >>> import pdlt
    >>> from pdlt.theory.linear import linear_moments
    >>> mlp = pdlt.MLP(n0=1, width=4, depth=3, activation="linear")
    >>> linear_moments(mlp, orders=[2])[:, 0] / 3     # (1 + 2/4)^(l-1)
    array([1.  , 1.5 , 2.25])
    """
    K, n, L = _spec(mlp, K1)
    orders = [int(m) for m in np.atleast_1d(orders)]
    if any(m < 0 for m in orders):
        raise ValueError(f"orders must be >= 0; got {orders}")
    out = np.empty((L, len(orders)))
    for i, m in enumerate(orders):
        dfact = float(special.factorial2(2 * m - 1)) if m > 0 else 1.0
        j = np.arange(m)
        per_layer = np.prod(1.0 + 2.0 * j[None, :] / n[:, None], axis=1) if m else np.ones(len(n))
        cum = np.concatenate([[1.0], np.cumprod(per_layer)])
        out[:, i] = dfact * K ** m * cum
    return out


def linear_kurtosis(mlp, *, K1=1.0):
    """``E[z^4] / (3 E[z^2]^2) = prod_{k<l} (1 + 2/n_k)`` at every layer, shape (L,)."""
    m = linear_moments(mlp, (1, 2), K1=K1)
    return m[:, 1] / (3.0 * m[:, 0] ** 2)


def _log_scale_density(n, grid):
    """Density of ``t = sum_k log(X_k / n_k)`` on a uniform grid (by convolution)."""
    h = grid[1] - grid[0]
    dens = None
    for nk in n:
        a = nk / 2.0
        # Y = X/n ~ Gamma(a, rate a); t = log Y has density a^a/Gamma(a) exp(a t - a e^t)
        g = np.exp(a * math.log(a) - special.gammaln(a) + a * grid - a * np.exp(grid))
        if dens is None:
            dens = g
        else:
            full = np.convolve(dens, g) * h
            # grid is symmetric around 0: the sum of two grid points lives on the doubled grid
            mid = len(grid) - 1
            dens = full[mid - (len(grid) - 1) // 2: mid + (len(grid) - 1) // 2 + 1]
    return dens


def linear_density(z, mlp, layer, *, K1=1.0, grid_points=4001):
    """Exact density of one preactivation of layer ``layer`` (any widths).

    ``p(z) = E_S[N(z; 0, K^(l) S)]`` with ``log S`` the sum of independent
    log-gamma variables (module doc). For ``layer = 2`` this is the Bessel-K
    (variance-gamma) density; in general a Meijer-G function, evaluated here
    by convolving the log-gamma densities on a uniform grid in ``log S`` of
    half-width ``max(12 sqrt(sum 2/n_k) + 1, 80/min n_k)`` and integrating the Gaussian
    mixture (trapezoid rule on a smooth, rapidly decaying integrand: relative
    error below 1e-8 for the moments up to ``z^8`` at widths >= 2,
    ``tests/theory/test_linear.py``).

    Parameters
    ----------
    z : array_like
    mlp : MLP
    layer : int
        1-based.
    K1 : float
    grid_points : int
        Odd number of grid points in ``log S``.

    Returns
    -------
    ndarray of the shape of z
    """
    K, n, L = _spec(mlp, K1)
    layer = int(layer)
    if not 1 <= layer <= L:
        raise ValueError(f"layer must lie in 1..{L}; got {layer}")
    z = np.asarray(z, dtype=float)
    Kl = K[layer - 1]
    if layer == 1:
        return np.exp(-0.5 * z * z / Kl) / math.sqrt(2 * math.pi * Kl)
    nk = n[: layer - 1]
    # right tail of log S is doubly exponential; left tail ~ exp(n_min t / 2)
    half = max(12.0 * math.sqrt(np.sum(2.0 / nk)) + 1.0, 80.0 / np.min(nk))
    grid_points = int(grid_points) | 1
    t = np.linspace(-half, half, grid_points)
    w = _log_scale_density(nk, t) * (t[1] - t[0])
    keep = w > 1e-300 * w.max()
    var, w = Kl * np.exp(t[keep]), w[keep]
    flat = z.ravel()
    out = np.empty(flat.shape)
    step = max(1, 2 ** 21 // len(w))
    for i in range(0, len(flat), step):   # bounded memory
        zz = flat[i:i + step, None]
        out[i:i + step] = (np.exp(-0.5 * zz * zz / var) / np.sqrt(2 * math.pi * var)) @ w
    return out.reshape(z.shape)


def large_depth_moments(ratio, orders=(1, 2), *, K=1.0):
    """``E[z^{2m}]`` in the limit ``L, n -> inf`` at fixed ``ratio = L/n``.

    ``(2m-1)!! K^m exp(m (m-1) ratio)``; shape ``(len(orders),)``.
    """
    ratio = float(ratio)
    if ratio < 0:
        raise ValueError(f"ratio = L/n must be >= 0; got {ratio}")
    orders = np.atleast_1d(orders).astype(int)
    dfact = np.array([special.factorial2(2 * m - 1) if m > 0 else 1.0 for m in orders])
    return dfact * K ** orders * np.exp(orders * (orders - 1) * ratio)


def large_depth_density(z, ratio, *, K=1.0, nodes=64):
    """Density of one preactivation at fixed ``L/n = ratio``, ``L, n -> inf``.

    ``z = sqrt(K S) u`` with ``log S ~ N(-ratio, 2 ratio)`` (a Gaussian with
    log-normal variance); Gauss-Hermite over ``log S`` with ``nodes`` nodes
    (64: relative error below 1e-6 in the moments up to ``z^4`` for
    ``ratio <= 0.5``, ``tests/theory/test_linear.py``).
    """
    ratio = float(ratio)
    if ratio < 0:
        raise ValueError(f"ratio = L/n must be >= 0; got {ratio}")
    z = np.asarray(z, dtype=float)
    if ratio == 0:
        return np.exp(-0.5 * z * z / K) / math.sqrt(2 * math.pi * K)
    x, w = np.polynomial.hermite_e.hermegauss(int(nodes))
    w = w / w.sum()
    var = K * np.exp(-ratio + math.sqrt(2 * ratio) * x)
    zz = z.reshape(-1, 1)
    p = np.exp(-0.5 * zz * zz / var) / np.sqrt(2 * math.pi * var)
    return (p @ w).reshape(z.shape)
