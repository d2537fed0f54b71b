r"""Entropy, mutual information and the optimal aspect ratio (book appendix A).

* Infinite width (book §A.2): :func:`gaussian_entropy` and
  :func:`gaussian_mutual_information` of Gaussian preactivations; different
  neurons share no information.
* Finite width (book §A.3): :func:`nearly_gaussian_entropy` and
  :func:`nearly_gaussian_mutual_information` from (K, V, G1); groups of
  ``m_A`` and ``m_B`` neurons share ``I = m_A m_B <V, V> / (8 n^2)``.
* One input, next order: the output of a plain last layer is a Gaussian
  scale mixture; :func:`scale_mixture_mi_series` gives its mutual
  information ``m_A m_B [k2^2/8 - (3(m_A + m_B) + 20) k2^3 / 48]`` in the
  variance ``k2 = V/(n K^2)`` of the scale, and
  :func:`scale_mixture_mutual_information` the exact value.
  :func:`optimal_vertex` maximizes the series, ``k2* = 4/(20 + 3 n_L)``, and
  :func:`optimal_aspect_ratio` turns it into ``r* = (L/n)* = 4/((20 + 3 n_L) nu)``
  with ``nu`` the vertex slope (:func:`pdlt.theory.vertex.vertex_slope`;
  residual MLPs: :func:`pdlt.theory.residual.residual_vertex_slope`).
  The depth it counts is the number of layers that build the vertex: the
  first layer is Gaussian (``V^(1) = 0``), so the output's
  ``k2 = V^(L)/(n K^(L)^2) ~ nu (L - 1)/n`` and the optimal network has
  ``L - 1 = r* n`` (one layer more than ``r* n``; the asymptotic slope
  ignores that difference, :func:`pdlt.statistics` gives the finite-depth k2).

Caveats: the optimum is a property of the truncated series (the exact mixture
information keeps growing with k2); converting ``k2*`` to ``L/n`` with the
next order shifts r* by O(k2*) relative (-8 % at n_L = 1). For n_L = 1 the
value is the formula's (there is no pair of output neurons).

Derivation: ``docs/derivations/information.rst``.
"""

from __future__ import annotations

import math

import numpy as np

from ._aspect_ratio import neuron_count, optimal_aspect_ratio_from_slope, optimal_vertex
# the residual-aware r*(activation, gamma) lives with the residual vertex slope
from .residual import optimal_aspect_ratio

__all__ = [
    "gaussian_entropy",
    "gaussian_mutual_information",
    "nearly_gaussian_entropy",
    "nearly_gaussian_mutual_information",
    "scale_mixture_mi_series",
    "scale_mixture_mutual_information",
    "optimal_vertex",
    "optimal_aspect_ratio_from_slope",
    "optimal_aspect_ratio",
]


def _K_iv(K):
    K = np.atleast_2d(np.asarray(K, dtype=float))
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be a scalar or a square (N, N) matrix; got shape {K.shape}")
    sign, logdet = np.linalg.slogdet(K)
    if sign <= 0 or not np.isfinite(logdet):
        raise np.linalg.LinAlgError(
            "K is not positive definite: the entropy of coinciding inputs diverges; drop "
            "duplicate inputs or add C_b > 0")
    return K, logdet


def gaussian_entropy(K, neurons=1):
    """Differential entropy (nats) of ``neurons`` independent Gaussian neurons with kernel K.

    Parameters
    ----------
    K : float or ndarray (N, N)
    neurons : int

    Returns
    -------
    float
        ``neurons * (1/2) log det(2 pi e K)``.
    """
    K, logdet = _K_iv(K)
    N = K.shape[0]
    return neuron_count(neurons, "neurons") * 0.5 * (N * math.log(2 * math.pi * math.e) + logdet)


def gaussian_mutual_information(K, A, B):
    """Mutual information between one neuron's preactivations on input sets A and B.

    Parameters
    ----------
    K : ndarray (N, N)
    A, B : sequences of int
        Disjoint input indices.

    Returns
    -------
    float
        ``(1/2)[log det K_AA + log det K_BB - log det K_{A+B}]`` (nats); for two
        inputs ``-(1/2) log(1 - rho^2)``.
    """
    K, _ = _K_iv(K)
    A, B = list(A), list(B)
    if set(A) & set(B):
        raise ValueError(f"A and B must be disjoint input sets; got {A} and {B}")
    AB = A + B
    ld = lambda idx: _K_iv(K[np.ix_(idx, idx)])[1]  # noqa: E731
    return 0.5 * (ld(A) + ld(B) - ld(AB))


def _vv(K, V):
    K, _ = _K_iv(K)
    N = K.shape[0]
    V = np.asarray(V, dtype=float).reshape((N,) * 4)
    Ki = np.linalg.inv(K)
    Vup = np.einsum("abcd,ai,bj,ck,dl->ijkl", V, Ki, Ki, Ki, Ki)
    return float(np.einsum("abcd,abcd->", V, Vup)), float(np.einsum("abcd,acbd->", V, Vup))


def nearly_gaussian_entropy(K, V, n, *, G1=0.0, neurons=1):
    """Entropy of ``neurons`` neurons of a layer at finite width, to O(1/n^2).

    Parameters
    ----------
    K : float or ndarray (N, N)
    V : float or ndarray (N, N, N, N)
        Four-point vertex (``shared/NOTATION.md``), normalized by ``n``.
    n : float
        ``n_{l-1}``.
    G1 : float or ndarray (N, N)
        NLO metric; enters at O(1/n) through ``kappa2 = K + G1/n``.
    neurons : int

    Returns
    -------
    float
        ``(m/2) log det(2 pi e kappa2) - [3 m^2 <V,V> + 6 m <V,V>_x] / (48 n^2)``.
    """
    m = neuron_count(neurons, "neurons")
    K, _ = _K_iv(K)
    n = float(n)
    if not n > 0:
        raise ValueError(f"n must be > 0; got {n}")
    kappa2 = K + np.asarray(G1, dtype=float) / n
    same, cross = _vv(K, V)
    return gaussian_entropy(kappa2, m) - (3 * m * m * same + 6 * m * cross) / (48 * n * n)


def nearly_gaussian_mutual_information(K, V, n, m_A=1, m_B=1):
    """Mutual information between two groups of neurons of one layer, O(1/n^2).

    ``I = m_A m_B <V, V> / (8 n^2)``; single input ``m_A m_B (V/(n K^2))^2 / 8``.
    """
    m_A, m_B = neuron_count(m_A, "m_A"), neuron_count(m_B, "m_B")
    same, _ = _vv(K, V)
    return m_A * m_B * same / (8.0 * float(n) ** 2)


def scale_mixture_mi_series(k2, m_A=1, m_B=1):
    """``I(A; B)`` of a Gaussian scale mixture to third order in ``k2 = Var(eps)``.

    ``m_A m_B [k2^2/8 - (3 (m_A + m_B) + 20) k2^3 / 48]`` (module docstring).
    """
    m_A, m_B = neuron_count(m_A, "m_A"), neuron_count(m_B, "m_B")
    k2 = np.asarray(k2, dtype=float)
    return m_A * m_B * (k2 ** 2 / 8.0 - (3.0 * (m_A + m_B) + 20.0) * k2 ** 3 / 48.0)


def _mixture_entropy(G, w, m, u):
    """Entropy of the m-dim mixture sum_k w_k N(0, G_k I), by the radial integral on u = log r."""
    r = np.exp(u)
    logG = np.log(G)
    # log density of the radius of component k and log p(z) at |z| = r
    c = 0.5 * m * math.log(2 * math.pi)
    logp_comp = -c - 0.5 * m * logG[:, None] - 0.5 * r[None, :] ** 2 / G[:, None]   # (k, u)
    lw = np.log(w)[:, None]
    a = lw + logp_comp
    amax = a.max(axis=0)
    logp = amax + np.log(np.exp(a - amax).sum(axis=0))                              # (u,)
    # surface of the unit sphere S^{m-1}, times r^m (dr = r du)
    log_surf = math.log(2.0) + 0.5 * m * math.log(math.pi) - math.lgamma(0.5 * m)
    f = np.exp(logp + log_surf + m * u)               # radial density in u
    du = u[1] - u[0]
    return float(-(f * logp).sum() * du), float(f.sum() * du)


def scale_mixture_mutual_information(G, weights=None, m_A=1, m_B=1, *, points=4001):
    """Exact ``I(A; B)`` between two groups of a Gaussian scale mixture, by quadrature.

    The neurons are i.i.d. ``N(0, G)`` given G, with G drawn from the discrete
    distribution ``(G, weights)`` (e.g. the per-network ``Ghat`` of an
    ensemble, or quadrature nodes of a continuous law).

    Parameters
    ----------
    G : array_like (k,)
        Mixing variances, > 0.
    weights : array_like (k,), optional
        Probabilities (default equal).
    m_A, m_B : int
    points : int
        Trapezoid nodes in ``log |z|`` (the integrand is analytic and decays
        double-exponentially, so the rule converges exponentially; 4001 nodes
        give ~1e-13 absolute, checked in the tests by doubling).

    Returns
    -------
    float
        ``S_A + S_B - S_{A+B}`` in nats.
    """
    m_A, m_B = neuron_count(m_A, "m_A"), neuron_count(m_B, "m_B")
    G = np.asarray(G, dtype=float).ravel()
    if G.size == 0 or not np.all(np.isfinite(G)) or np.any(G <= 0):
        raise ValueError("G must be a non-empty array of finite variances > 0")
    w = np.full(G.size, 1.0 / G.size) if weights is None else np.asarray(weights, float).ravel()
    if w.shape != G.shape or np.any(w < 0) or not math.isclose(w.sum(), 1.0, rel_tol=1e-9):
        raise ValueError("weights must be non-negative, one per G, summing to 1")
    keep = w > 0
    G, w = G[keep], w[keep]
    scale = math.sqrt(float(np.sum(w * G)))
    G = G / scale ** 2                       # I is scale invariant
    lo = 0.5 * math.log(G.min()) - 40.0 / max(m_A + m_B, 1) ** 0.5 - 10.0
    hi = 0.5 * math.log(G.max()) + 0.5 * math.log(2.0 * (m_A + m_B) + 80.0) + 0.5
    u = np.linspace(lo, hi, int(points))
    ents = [_mixture_entropy(G, w, m, u)[0] for m in (m_A, m_B, m_A + m_B)]
    return ents[0] + ents[1] - ents[2]
