r"""Two nearby inputs: the delta expansion of the four-point vertex V.

For ``x_+- = x_0 +- delta/2`` the two-input vertex (a symmetric 3x3 matrix
over the pairs ``(++), (--), (+-)``) is written in the components
``V_[i][j]`` (``i, j`` in ``0, 1, 2``, the kernel's decomposition of
:mod:`pdlt.theory.delta_expansion` on each pair slot), with
``V_[i][j] = O(delta^(i+j))``: ``V_[0][0]`` is the midpoint vertex,
``V_[0][1]`` and ``V_[1][2]`` are odd under ``x_+ <-> x_-``.
:func:`vertex_components` and :func:`vertex_from_components` change basis;
:func:`vertex_delta_flow` follows the components over depth, each at its
leading order in delta (relative error ``O(delta^2)``) and ``V_[0][0]``
through ``O(delta^2)``; halving delta divides the error of the reassembled
tensor by 16 (even part) and 8 (odd part).

Smooth activations only (a kink adds ``|delta|^3`` terms; the exact two-input
V of such activations is :func:`pdlt.statistics` with
``x`` of shape (2, n0)). Residual MLPs are not covered.
Derivation: ``docs/derivations/delta_expansion.rst``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import gaussian
from ..network import MLP
from . import _kernel_map as _kmap
from . import delta_expansion as _dexp

__all__ = [
    "vertex_components",
    "vertex_from_components",
    "vertex_delta_coefficients",
    "vertex_delta_step",
    "VertexDeltaFlow",
    "vertex_delta_flow",
]

# pairs (++), (--), (+-)  ->  components [0], [1], [2]
_T = np.array([[0.25, 0.25, 0.5],
               [0.5, -0.5, 0.0],
               [0.25, 0.25, -0.5]])
# components -> pairs: rows (++), (--), (+-); columns gamma^[0], gamma^[1], gamma^[2]
_G = np.array([[1.0, 1.0, 1.0],
               [1.0, -1.0, 1.0],
               [1.0, 0.0, -1.0]])
_PAIRS = ((0, 0), (1, 1), (0, 1))


def vertex_components(V):
    """Components ``V_[i][j]`` of two-input vertices (``docs/derivations/delta_expansion.rst``).

    Parameters
    ----------
    V : array_like of shape (..., 2, 2, 2, 2)
        ``V[..., a1, a2, a3, a4] = V_{(a1a2)(a3a4)}`` over the pair ``(x_+, x_-)``.

    Returns
    -------
    ndarray of shape (..., 3, 3)
        ``out[..., i, j] = V_[i][j]``, symmetric in (i, j) when V has the
        vertex's symmetries (the mixed pair ``(+-)`` is averaged with ``(-+)``).
    """
    V = np.asarray(V, dtype=float)
    if V.shape[-4:] != (2, 2, 2, 2):
        raise ValueError(f"V must have shape (..., 2, 2, 2, 2) for a pair of inputs; "
                         f"got {V.shape}")
    Vs = 0.5 * (V + np.swapaxes(V, -4, -3))
    Vs = 0.5 * (Vs + np.swapaxes(Vs, -2, -1))
    P = np.empty(V.shape[:-4] + (3, 3))
    for p, (a1, a2) in enumerate(_PAIRS):
        for q, (a3, a4) in enumerate(_PAIRS):
            P[..., p, q] = Vs[..., a1, a2, a3, a4]
    return np.einsum("ip,...pq,jq->...ij", _T, P, _T)


def vertex_from_components(C):
    """The 2x2x2x2 vertex from its components (inverse of :func:`vertex_components`).

    Parameters
    ----------
    C : array_like of shape (..., 3, 3)
        ``C[..., i, j] = V_[i][j]``.

    Returns
    -------
    ndarray of shape (..., 2, 2, 2, 2)
        ``sum_ij V_[i][j] gamma^[i]_{a1a2} gamma^[j]_{a3a4}``.
    """
    C = np.asarray(C, dtype=float)
    if C.shape[-2:] != (3, 3):
        raise ValueError(f"components must have shape (..., 3, 3); got {C.shape}")
    P = np.einsum("pi,...ij,qj->...pq", _G, C, _G)
    V = np.empty(C.shape[:-2] + (2, 2, 2, 2))
    for p, (a1, a2) in enumerate(_PAIRS):
        for q, (a3, a4) in enumerate(_PAIRS):
            for b1, b2 in {(a1, a2), (a2, a1)}:
                for b3, b4 in {(a3, a4), (a4, a3)}:
                    V[..., b1, b2, b3, b4] = P[..., p, q]
    return V


# ---------------------------------------------------------------------------
# single-input averages at the midpoint
# ---------------------------------------------------------------------------

def _derivative_averages(act, fn, K, orders):
    """``{m: <fn^(m)>_K}`` via Stein, ``<f^(m)> = <f He_m(z/sqrt K)> / K^(m/2)``.

    K is an array (all layers at once); m in ``orders`` (subset of 0..4).
    """
    top = max(orders)
    R = [gaussian.expect(lambda z, j=j: z ** j * fn(z), K) for j in range(top + 1)]
    out = {}
    for m in orders:
        if m == 0:
            out[m] = R[0]
        elif m == 1:
            out[m] = R[1] / K
        elif m == 2:
            out[m] = (R[2] / K - R[0]) / K
        elif m == 3:
            out[m] = (R[3] / K - 3.0 * R[1]) / (K * K)
        else:  # He_4 = u^4 - 6 u^2 + 3
            out[m] = (R[4] / (K * K) - 6.0 * R[2] / K + 3.0 * R[0]) / (K * K)
    return out


def vertex_delta_coefficients(activation, K0):
    """Single-input averages at the midpoint kernel that the expansion needs.

    Parameters
    ----------
    activation : str, Activation or callable
        A smooth activation (no kinks).
    K0 : float or array_like of shape (L,)
        Midpoint kernels ``K_[0] > 0``.

    Returns
    -------
    dict of ndarray of shape (L,) (or float arrays of shape ())
        ``g, g1, g2`` (``<sigma^2>`` and its first two K-derivatives),
        ``a, a1, a2`` (``<sigma sigma''>``, ...), ``b, b1, b2`` (``<sigma'^2>``, ...),
        ``q, q1`` (``<sigma^4>``), ``c, c1`` (``<sigma^3 sigma''>``),
        ``e, e1`` (``<sigma^2 sigma'^2>``), ``p1, p3`` (``<p'>``, ``<p'''>`` of
        ``p = sigma sigma'^3``), ``w0, w2, w4`` (``<w>, <w''>, <w''''>`` of
        ``w = sigma'^4``). ``d/dK <f> = <f''>/2``, ``d^2/dK^2 <f> = <f''''>/4``.
    """
    act = _smooth_iv(activation)
    K = np.asarray(K0, dtype=float)
    if not np.all(np.isfinite(K)) or np.any(K <= 0):
        raise ValueError(f"K0 must be finite and > 0 (the midpoint kernel); got {K0!r}")
    s, d1, d2 = act.sigma, act.d1, act.d2
    fns = {
        "g": (lambda z: s(z) ** 2, (0, 2, 4)),
        "a": (lambda z: s(z) * d2(z), (0, 2, 4)),
        "b": (lambda z: d1(z) ** 2, (0, 2, 4)),
        "q": (lambda z: s(z) ** 4, (0, 2)),
        "c": (lambda z: s(z) ** 3 * d2(z), (0, 2)),
        "e": (lambda z: (s(z) * d1(z)) ** 2, (0, 2)),
        "p": (lambda z: s(z) * d1(z) ** 3, (1, 3)),
        "w": (lambda z: d1(z) ** 4, (0, 2, 4)),
    }
    out = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for name, (fn, orders) in fns.items():
            av = _derivative_averages(act, fn, K, orders)
            if name in ("p", "w"):
                for m in orders:
                    out[f"{name}{m}"] = av[m]
            else:
                # <f>, d<f>/dK = <f''>/2, d^2<f>/dK^2 = <f''''>/4
                out[name] = av[0]
                out[name + "1"] = 0.5 * av[2]
                if 4 in orders:
                    out[name + "2"] = 0.25 * av[4]
    return out


def _smooth_iv(activation):
    act = _kmap.resolve_activation(activation)
    slopes = _kmap.scale_invariant_slopes(act)
    if act.is_smooth or (slopes is not None and slopes[0] == slopes[1]):
        return act
    raise ValueError(
        f"the delta expansion of V needs a smooth activation; {act.name!r} has kinks at "
        f"{act.kinks}, where the two-input vertex is not analytic in delta. Use "
        "pdlt.statistics(mlp, x, get='V') with the two inputs for the exact "
        "two-input V")


def _step(t, K0, K1, K2, C, C_W, ratio):
    """One layer of the truncated component recursion (``docs/derivations/delta_expansion.rst``); t at K0."""
    g, g1, g2, a, a1, a2 = (t[k] for k in ("g", "g1", "g2", "a", "a1", "a2"))
    b, b1, b2 = t["b"], t["b1"], t["b2"]
    K11 = K1 * K1
    P2 = b * K2 + 0.5 * b1 * K11
    src = np.empty((3, 3))
    src[0, 0] = t["q"] - g * g + 2.0 * (t["c"] - g * a) * K2 + (t["c1"] - g * a1) * K11
    src[0, 1] = (0.5 * t["q1"] - g * g1) * K1
    src[0, 2] = (t["e"] - g * b) * K2 + 0.5 * (t["e1"] - g * b1) * K11
    src[1, 1] = 4.0 * t["e"] * K2 + (2.0 * t["e1"] - g1 * g1) * K11
    src[1, 2] = 3.0 * t["p1"] * K1 * K2 + 0.25 * t["p3"] * K11 * K1 - g1 * K1 * P2
    src[2, 2] = (3.0 * t["w0"] * K2 * K2 + 1.5 * t["w2"] * K11 * K2
                 + t["w4"] * K11 * K11 / 16.0 - P2 * P2)
    src[1, 0], src[2, 0], src[2, 1] = src[0, 1], src[0, 2], src[1, 2]
    M = np.array([[g1 + a1 * K2 + 0.5 * a2 * K11, a1 * K1, a],
                  [g2 * K1, g1, 0.0],
                  [b1 * K2 + 0.5 * b2 * K11, b1 * K1, b]])
    out = C_W * C_W * (src + ratio * M @ C @ M.T)
    return 0.5 * (out + out.T)


def vertex_delta_step(activation, K0, K1, K2, components, C_W, ratio=1.0):
    """One layer of the delta-expanded two-input vertex (``docs/derivations/delta_expansion.rst``).

    Parameters
    ----------
    activation : str, Activation or callable
        Smooth (no kinks).
    K0, K1, K2 : float
        Kernel components ``K_[0] > 0``, ``K_[1]``, ``K_[2] >= 0`` at layer l.
    components : array_like of shape (3, 3)
        ``V_[i][j]`` at layer l (symmetric).
    C_W : float
        Weight variance of layer l+1.
    ratio : float
        ``n_l / n_{l-1}``.

    Returns
    -------
    ndarray of shape (3, 3)
        ``V_[i][j]`` at layer l+1, each at its leading order in delta and
        ``V_[0][0]`` through ``O(delta^2)``.
    """
    C_W = _kmap.check_variances(C_W)
    C = np.asarray(components, dtype=float)
    if C.shape != (3, 3) or not np.all(np.isfinite(C)):
        raise ValueError(f"components must be a finite (3, 3) array V_[i][j]; got shape "
                         f"{C.shape}")
    K0, K1, K2 = float(K0), float(K1), float(K2)
    if not (K0 > 0 and K2 >= 0 and math.isfinite(K1)):
        raise ValueError(f"need K0 > 0, K2 >= 0 and a finite K1; got {(K0, K1, K2)!r}")
    ratio = float(ratio)
    if not (math.isfinite(ratio) and ratio >= 0):
        raise ValueError(f"ratio = n_l / n_(l-1) must be finite and >= 0; got {ratio!r}")
    t = {k: float(v) for k, v in vertex_delta_coefficients(activation, K0).items()}
    return _step(t, K0, K1, K2, C, C_W, ratio)


@dataclass(frozen=True)
class VertexDeltaFlow:
    """Delta-expanded kernel and vertex components at every layer.

    Attributes
    ----------
    K0, K1, K2 : ndarray of shape (L,)
        Kernel components (:class:`pdlt.theory.delta_expansion.DeltaFlow`).
    components : ndarray of shape (L, 3, 3)
        ``components[l-1, i, j] = V_[i][j]^(l)``, normalized by ``n_{l-1}``
        like V; ``V^(1) = 0``.
    chi_parallel, chi_perp : ndarray of shape (L,)
        At ``K_[0]^(l)``.
    """

    K0: np.ndarray
    K1: np.ndarray
    K2: np.ndarray
    components: np.ndarray
    chi_parallel: np.ndarray
    chi_perp: np.ndarray

    @property
    def K(self):
        """The 2x2 kernels reassembled: shape (L, 2, 2)."""
        return _dexp.delta_kernel(self.K0, self.K1, self.K2)

    @property
    def V(self):
        """The 2x2x2x2 vertices reassembled: shape (L, 2, 2, 2, 2)."""
        return vertex_from_components(self.components)

    def __getitem__(self, key):
        """``flow["V00"]`` ... ``flow["V22"]``: one component over depth, shape (L,)."""
        if isinstance(key, str) and len(key) == 3 and key[0] == "V" and key[1:] in {
                "00", "01", "02", "11", "12", "22"}:
            return self.components[:, int(key[1]), int(key[2])]
        raise KeyError(f"unknown component {key!r}; use 'V00', 'V01', 'V02', 'V11', 'V12' "
                       "or 'V22'")


def vertex_delta_flow(mlp: MLP, x=None, *, components=None) -> VertexDeltaFlow:
    """Flow of the delta-expanded two-input vertex through an MLP.

    Composes with :func:`pdlt.theory.delta_expansion.delta_flow`: the kernel
    components at each layer are its output, and the vertex components obey
    the truncated recursion of the module docstring.

    Parameters
    ----------
    mlp : MLP
        Plain (non-residual) MLP with a smooth activation; any widths and
        per-layer ``(C_b, C_W)``.
    x : array_like of shape (2, n0), optional
        The two nearby inputs ``(x_+, x_-)``.
    components : (float, float, float), optional
        Or the first-layer kernel components ``(K_[0], K_[1], K_[2])``.

    Returns
    -------
    VertexDeltaFlow

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.theory.delta_expansion_vertex import vertex_delta_flow
    >>> mlp = pdlt.MLP(n0=2, width=64, depth=3, activation="tanh", C_W=1.0)
    >>> f = vertex_delta_flow(mlp, components=(1.0, 0.0, 0.0))
    >>> bool(np.all(f.components[:, 1:, :] == 0))   # coinciding inputs
    True
    """
    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
    if mlp.is_residual:
        raise NotImplementedError("vertex_delta_flow covers plain MLPs; for a residual MLP "
                                  "use pdlt.statistics(mlp, x, get='V')")
    act = _smooth_iv(mlp.activation)
    kf = _dexp.delta_flow(mlp, x, components=components)
    L = mlp.depth
    if np.any(kf.K0 <= 0):
        raise ValueError("K_[0] vanishes at some layer; the expansion needs K_[0] > 0 "
                         "(use C_b > 0 or a nonzero midpoint input)")
    coef = vertex_delta_coefficients(act, kf.K0)
    C = np.zeros((L, 3, 3))
    for l in range(1, L):
        t = {k: float(v[l - 1]) for k, v in coef.items()}
        ratio = mlp.widths[l] / mlp.widths[l - 1]
        C[l] = _step(t, kf.K0[l - 1], kf.K1[l - 1], kf.K2[l - 1], C[l - 1], mlp.C_W[l], ratio)
        if not np.all(np.isfinite(C[l])):
            raise FloatingPointError(f"V overflowed at layer {l + 1}; reduce the depth or "
                                     "initialize at criticality")
    return VertexDeltaFlow(kf.K0, kf.K1, kf.K2, C, kf.chi_parallel, kf.chi_perp)
