r"""Two nearby inputs: the delta expansion of the kernel and the finite-angle flow.

For inputs ``x_+-`` the 2x2 kernel is split into components
``K_[0]`` (the midpoint), ``K_[1] = O(delta)`` and ``K_[2] = O(delta^2)``
(the perpendicular part):
``K_++ = K_[0] + K_[1] + K_[2]``, ``K_-- = K_[0] - K_[1] + K_[2]``,
``K_+- = K_[0] - K_[2]`` (book §5.1). :func:`delta_flow` follows them over
depth, each to relative ``O(delta^2)``; ``K_[1]`` grows with
``chi_parallel`` and ``K_[2]`` with ``chi_perp``. It needs a smooth
activation: for a kink (ReLU family) the exact two-input map has an
``|delta|^3`` term no Taylor expansion sees, and :func:`angle_flow` gives the
exact finite-angle flow of the scale-invariant class instead (book §5.5:
ReLU's angle closes as ``3 pi / l``).

The four-point vertex of two nearby inputs: :mod:`pdlt.theory.delta_expansion_vertex`.
Derivation: ``docs/derivations/delta_expansion.rst``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..network import MLP
from . import _kernel_map as _kmap
from .kernel import first_layer

__all__ = [
    "delta_components",
    "delta_kernel",
    "delta_step",
    "DeltaFlow",
    "delta_flow",
    "AngleFlow",
    "angle_flow",
    "angle_alpha",
]


def delta_components(K):
    """``(K_[0], K_[1], K_[2])`` of 2x2 kernels.

    Parameters
    ----------
    K : array_like of shape (..., 2, 2)
        Kernels of the pair ``(x_+, x_-)``.

    Returns
    -------
    K0, K1, K2 : ndarray of shape (...)
    """
    K = np.asarray(K, dtype=float)
    if K.shape[-2:] != (2, 2):
        raise ValueError(f"K must have shape (..., 2, 2) for a pair of inputs; got {K.shape}")
    kpp, kmm, kpm = K[..., 0, 0], K[..., 1, 1], 0.5 * (K[..., 0, 1] + K[..., 1, 0])
    return (kpp + kmm + 2 * kpm) / 4, (kpp - kmm) / 2, (kpp + kmm - 2 * kpm) / 4


def delta_kernel(K0, K1, K2):
    """The 2x2 kernel ``[[K++, K+-], [K+-, K--]]`` from its delta components.

    Returns
    -------
    ndarray of shape (..., 2, 2)
    """
    K0, K1, K2 = np.broadcast_arrays(*(np.asarray(k, dtype=float) for k in (K0, K1, K2)))
    out = np.empty(K0.shape + (2, 2))
    out[..., 0, 0] = K0 + K1 + K2
    out[..., 1, 1] = K0 - K1 + K2
    out[..., 0, 1] = out[..., 1, 0] = K0 - K2
    return out


def _coefficients(act, K0, C_W, slopes):
    """<sigma^2>, chi_par, chi_perp, dchi_perp/dK, <sigma sigma''>, d<sigma sigma''>/dK."""
    if slopes is not None:
        m = 0.5 * (slopes[0] ** 2 + slopes[1] ** 2)
        return m * K0, C_W * m, C_W * m, 0.0, 0.0, 0.0
    if K0 <= 0:
        raise ValueError("the delta expansion needs K_[0] > 0")
    S, S1, S2, _, D, D1 = _kmap.derivatives(act, K0)
    H, H1 = S1 - D, S2 - D1
    return S, C_W * S1, C_W * D, C_W * D1, H, H1


def delta_step(activation, K0, K1, K2, C_b, C_W):
    """One layer of the delta-expansion recursions (module docstring).

    Parameters
    ----------
    activation : str, Activation or callable
    K0, K1, K2 : float
        ``K_[0]``, ``K_[1]``, ``K_[2]`` at layer l.
    C_b, C_W : float
        Hyperparameters of layer l+1.

    Returns
    -------
    (K0, K1, K2) at layer l+1 : tuple of float
    """
    act = _kmap.resolve_activation(activation)
    C_b, C_W = _kmap.check_variances(C_W, C_b)
    return _delta_step(act, float(K0), float(K1), float(K2), C_b, C_W,
                       _kmap.scale_invariant_slopes(act))


def _delta_step(act, K0, K1, K2, C_b, C_W, slopes):
    S, cpar, cperp, dcperp, H, H1 = _coefficients(act, K0, C_W, slopes)
    K0n = C_b + C_W * S + C_W * H * K2 + 0.5 * C_W * H1 * K1 * K1
    return K0n, cpar * K1, cperp * K2 + 0.5 * dcperp * K1 * K1


@dataclass(frozen=True)
class DeltaFlow:
    """Delta-expansion components at every layer.

    Attributes
    ----------
    K0, K1, K2 : ndarray of shape (L,)
        ``K_[0]^(l)``, ``K_[1]^(l)``, ``K_[2]^(l)`` for l = 1..L.
    chi_parallel, chi_perp : ndarray of shape (L,)
        At ``K_[0]^(l)``, with the C_W of the step they govern.
    """

    K0: np.ndarray
    K1: np.ndarray
    K2: np.ndarray
    chi_parallel: np.ndarray
    chi_perp: np.ndarray

    @property
    def K(self):
        """The 2x2 kernels reassembled: shape (L, 2, 2)."""
        return delta_kernel(self.K0, self.K1, self.K2)


def delta_flow(mlp: MLP, x=None, *, components=None) -> DeltaFlow:
    """Flow of ``K_[0]``, ``K_[1]``, ``K_[2]`` through an MLP.

    Parameters
    ----------
    mlp : MLP
    x : array_like of shape (2, n0), optional
        The two nearby inputs ``(x_+, x_-)``; the first layer is exact.
    components : (float, float, float), optional
        Or the first-layer ``(K_[0], K_[1], K_[2])`` directly.

    Returns
    -------
    DeltaFlow
    """
    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
    if mlp.is_residual:
        raise NotImplementedError(
            "delta_flow does not support residual MLPs yet (gamma != 0 or xi != 1); use "
            "pdlt.flow on the two inputs for the full two-input kernel")
    if (x is None) == (components is None):
        raise ValueError("give exactly one of x (shape (2, n0)) and components (K0, K1, K2)")
    if x is not None:
        x = np.asarray(x, dtype=float)
        if x.ndim != 2 or x.shape[0] != 2:
            raise ValueError(f"x must hold two inputs, shape (2, n0); got {x.shape}")
        K, _ = first_layer(mlp, x)
        K0, K1, K2 = (float(v) for v in delta_components(K))
    else:
        K0, K1, K2 = (float(v) for v in components)
        if not all(math.isfinite(v) for v in (K0, K1, K2)) or K0 <= 0 or K2 < 0:
            raise ValueError(f"components must be finite with K0 > 0 and K2 >= 0; got {components!r}")
    act = mlp.activation
    slopes = _kmap.scale_invariant_slopes(act)
    L = mlp.depth
    out = np.empty((5, L))
    for l in range(1, L + 1):
        cw = mlp.C_W[l] if l < L else mlp.C_W[L - 1]
        _, cpar, cperp, _, _, _ = _coefficients(act, K0, cw, slopes)
        out[:, l - 1] = K0, K1, K2, cpar, cperp
        if l == L:
            break
        K0, K1, K2 = _delta_step(act, K0, K1, K2, mlp.C_b[l], mlp.C_W[l], slopes)
    return DeltaFlow(*out)


def angle_alpha(activation) -> float:
    """``alpha = 2c/(3 pi)`` of ``psi^(l) ~ 1/(alpha l)`` (scale-invariant class).

    Raises
    ------
    ValueError
        If the activation is not scale invariant.
    """
    act = _kmap.resolve_activation(activation)
    c = _angle_c(act)
    return 2.0 * c / (3.0 * math.pi)


def _angle_c(act):
    slopes = _kmap.scale_invariant_slopes(act)
    if slopes is None:
        raise ValueError(f"the finite-angle flow is for scale-invariant activations (ReLU, leaky "
                         f"ReLU, linear); {act.name!r} is not one: use delta_flow")
    ap, am = slopes
    p2, q2 = 0.25 * (ap + am) ** 2, 0.25 * (ap - am) ** 2
    return q2 / (p2 + q2)


@dataclass(frozen=True)
class AngleFlow:
    """Angle between two inputs at every layer (scale-invariant class, criticality).

    Attributes
    ----------
    psi : ndarray of shape (L,)
        ``psi^(l)`` in radians, l = 1..L.
    alpha : float
        ``psi^(l) ~ 1/(alpha l)`` at large l (0: the angle is preserved).
    """

    psi: np.ndarray
    alpha: float

    @property
    def cos_psi(self):
        return np.cos(self.psi)


def angle_flow(activation, psi1, depth) -> AngleFlow:
    """Exact finite-angle flow of a scale-invariant activation at criticality.

    Parameters
    ----------
    activation : str, Activation or callable
        Scale invariant (ReLU, leaky ReLU, linear).
    psi1 : float
        First-layer angle in [0, pi]: ``cos psi1 = K12 / sqrt(K11 K22)``.
    depth : int
        Number of layers L.

    Returns
    -------
    AngleFlow
    """
    act = _kmap.resolve_activation(activation)
    c = _angle_c(act)
    psi = float(psi1)
    if not (0 <= psi <= math.pi):
        raise ValueError(f"psi1 must be an angle in [0, pi]; got {psi1!r}")
    depth = int(depth)
    if depth < 1:
        raise ValueError(f"depth must be >= 1; got {depth}")
    out = np.empty(depth)
    k = 2.0 * c / math.pi
    for l in range(depth):
        out[l] = psi
        # 1 - cos psi' = 2 sin^2(psi/2) - k (sin psi - psi cos psi), both terms
        # computed without cancellation, so small angles keep full relative precision
        one_minus_cos = 2.0 * math.sin(0.5 * psi) ** 2 - k * _sin_minus_psi_cos(psi)
        psi = 2.0 * math.asin(math.sqrt(max(0.0, min(1.0, 0.5 * one_minus_cos))))
    return AngleFlow(out, 2.0 * c / (3.0 * math.pi))


def _sin_minus_psi_cos(psi):
    """``sin psi - psi cos psi`` without cancellation at small psi."""
    if psi > 0.5:
        return math.sin(psi) - psi * math.cos(psi)
    # sum_{n>=1} (-1)^(n+1) 2n psi^(2n+1) / (2n+1)!; 12 terms reach 1e-17 relative at 0.5
    total, term = 0.0, psi
    for n in range(1, 13):
        term *= psi * psi / ((2 * n) * (2 * n + 1)) if n > 1 else psi * psi / 6.0
        total += (-1) ** (n + 1) * 2 * n * term
    return total
