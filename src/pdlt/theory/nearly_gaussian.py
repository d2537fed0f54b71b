r"""The nearly-Gaussian distribution of one neuron's preactivations at O(1/n).

For one neuron and N inputs the cumulants to O(1/n) are
``kappa_ab = K_ab + G1_ab/n`` and
``kappa_abcd = (V_(ab)(cd) + V_(ac)(bd) + V_(ad)(bc))/n``
(``shared/NOTATION.md``). :func:`density` returns the Edgeworth form
``N(z; kappa_2) [1 + (1/24) kappa_abcd H^abcd(z)]`` (``form="edgeworth"``:
normalized, with exactly these cumulants) or the expanded quartic action of
the book (``form="action"``), which agrees to O(1/n). Both hold only while
the correction is small, ``3 V / (n K^2) << 1``. One input:
``E[z^4]/E[z^2]^2 - 3 = 3 V / (n K^2) + O(1/n^2)``.

Derivation: ``docs/derivations/nearly_gaussian.rst``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["NearlyGaussian", "nearly_gaussian", "density", "excess_kurtosis"]


class NearlyGaussian:
    """Cumulants and action of one neuron's preactivations at O(1/n).

    Parameters
    ----------
    K : float or ndarray (N, N)
    V : float or ndarray (N, N, N, N)
    G1 : float or ndarray (N, N), default 0
    n : int
        ``n_{l-1}``, the width feeding the layer.

    Attributes
    ----------
    kappa2 : ndarray (N, N)
    kappa4 : ndarray (N, N, N, N)
    g : ndarray (N, N)
        Quadratic coupling's inverse.
    lam : ndarray (N, N, N, N)
        Quartic coupling ``lambda^{abcd}``.
    """

    def __init__(self, K, V, G1=0.0, n=1):
        K = np.atleast_2d(np.asarray(K, dtype=float))
        N = K.shape[0]
        if K.shape != (N, N):
            raise ValueError(f"K must be a scalar or (N, N); got shape {K.shape}")
        V = np.asarray(V, dtype=float).reshape((N,) * 4) if np.ndim(V) else np.full((1,) * 4, float(V))
        G1 = np.broadcast_to(np.asarray(G1, dtype=float), (N, N)) if np.ndim(G1) else np.full((N, N), float(G1))
        if V.shape != (N,) * 4:
            raise ValueError(f"V must have shape {(N,) * 4}; got {V.shape}")
        n = float(n)
        if not n > 0:
            raise ValueError(f"n (the width n_{{l-1}}) must be > 0; got {n}")
        self.N, self.n = N, n
        self.K = K
        self.kappa2 = K + G1 / n
        self.kappa4 = (V + np.swapaxes(V, 1, 2) + np.swapaxes(V, 1, 3)) / n
        Kinv = np.linalg.inv(K)
        self.lam = np.einsum("abcd,ai,bj,ck,dl->ijkl", self.kappa4, Kinv, Kinv, Kinv, Kinv)
        self.g = self.kappa2 - 0.5 * np.einsum("abcd,cd->ab", self.kappa4, Kinv)

    def excess_kurtosis(self):
        """``kappa4_aaaa / kappa2_aa^2`` per input, shape (N,)."""
        a = np.arange(self.N)
        return self.kappa4[a, a, a, a] / self.kappa2[a, a] ** 2

    def density(self, z, form="edgeworth"):
        """Density at points z of shape (..., N) (or (...) for one input)."""
        z = np.asarray(z, dtype=float)
        single = self.N == 1 and (z.ndim == 0 or z.shape[-1] != 1)
        if single:
            z = z[..., None]
        if z.shape[-1] != self.N:
            raise ValueError(f"z must have a last axis of length N={self.N}; got shape {z.shape}")
        if form == "edgeworth":
            C = self.kappa2
            Ci = np.linalg.inv(C)
            y = z @ Ci
            q = np.einsum("...a,...a->...", z, y)
            k4 = self.kappa4
            t4 = np.einsum("abcd,...a,...b,...c,...d->...", k4, y, y, y, y)
            t2 = np.einsum("abcd,ab,...c,...d->...", k4, Ci, y, y)
            t0 = np.einsum("abcd,ab,cd->", k4, Ci, Ci)
            corr = 1.0 + (t4 - 6.0 * t2 + 3.0 * t0) / 24.0
        elif form == "action":
            C = self.g
            Ci = np.linalg.inv(C)
            q = np.einsum("...a,ab,...b->...", z, Ci, z)
            zzzz = np.einsum("abcd,...a,...b,...c,...d->...", self.lam, z, z, z, z)
            # normalize at O(1/n): subtract <lambda zzzz>_g = 3 lambda:(g g)
            mean = 3.0 * np.einsum("abcd,ab,cd->", self.lam, C, C)
            corr = 1.0 + (zzzz - mean) / 24.0
        else:
            raise ValueError(f"form must be 'edgeworth' or 'action'; got {form!r}")
        sign, logdet = np.linalg.slogdet(C)
        if sign <= 0:
            raise np.linalg.LinAlgError("the O(1/n) covariance is not positive definite; "
                                        "the width is too small for the 1/n expansion")
        base = np.exp(-0.5 * q - 0.5 * logdet - 0.5 * self.N * math.log(2 * math.pi))
        return base * corr


def nearly_gaussian(stats, n, layer=-1):
    """:class:`NearlyGaussian` at one layer of a :class:`pdlt.Statistics` with V (and G1).

    ``n`` is the width feeding that layer, ``n_{l-1}``; ``layer`` indexes the
    layers from 0 (default: the last).
    """
    G1 = stats.G1[layer] if stats.G1 is not None else 0.0
    return NearlyGaussian(stats.K[layer], stats["V"][layer], G1, n)


def density(z, K, V, G1=0.0, n=1, form="edgeworth"):
    """Density of one neuron's preactivation(s); see :class:`NearlyGaussian`."""
    return NearlyGaussian(K, V, G1, n).density(z, form=form)


def excess_kurtosis(K, V, n):
    """``3 V / (n K^2)``: excess kurtosis of one input at O(1/n)."""
    return 3.0 * np.asarray(V, float) / (float(n) * np.asarray(K, float) ** 2)
