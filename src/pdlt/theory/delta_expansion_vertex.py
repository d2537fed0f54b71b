r"""Two nearby inputs: the delta expansion of the four-point vertex V (book ch. 5).

For a pair of inputs ``x_+- = x_0 +- delta/2`` the two-input vertex
``V_{(a1a2)(a3a4)}`` (``shared/NOTATION.md``) is a 2x2x2x2 tensor with the
symmetries ``V_{(a1a2)(a3a4)} = V_{(a2a1)(a3a4)} = V_{(a3a4)(a1a2)}``: a
symmetric 3x3 matrix over the pairs ``(++), (--), (+-)``. This module expands
it in delta, as :mod:`pdlt.theory.delta_expansion` expands the kernel.

Components (the gamma basis; book §4.x/§5.x, eq. numbers to be checked)
------------------------------------------------------------------------
Each pair slot is decomposed like the kernel, ``X_[0] = (X_++ + X_-- + 2X_+-)/4``,
``X_[1] = (X_++ - X_--)/2``, ``X_[2] = (X_++ + X_-- - 2X_+-)/4``, i.e.

.. math::
    V_{(a_1a_2)(a_3a_4)} = \sum_{i,j=0}^{2} V_{[i][j]}\,
        \gamma^{[i]}_{a_1a_2}\gamma^{[j]}_{a_3a_4},\qquad
    \gamma^{[0]} = \begin{pmatrix}1&1\\1&1\end{pmatrix},\;
    \gamma^{[1]} = \begin{pmatrix}1&0\\0&-1\end{pmatrix},\;
    \gamma^{[2]} = \begin{pmatrix}1&-1\\-1&1\end{pmatrix},

with ``V_[i][j] = V_[j][i]``: six components. Under ``x_+ <-> x_-`` the index
``[1]`` is odd and ``[0], [2]`` even, so ``V_[0][1]`` and ``V_[1][2]`` are odd
in delta. Writing ``z_+- = u +- v`` (``Var u = K_[0]``, ``Cov(u, v) = K_[1]/2``,
``Var v = K_[2]``), the pair products are ``Phi_0 = s^2``, ``Phi_1 = 2 s d``,
``Phi_2 = d^2`` with ``s = (sigma_+ + sigma_-)/2 = O(1)`` and
``d = (sigma_+ - sigma_-)/2 = O(v) = O(delta)``, hence
``V_[i][j] = O(delta^(i+j))``: ``V_[0][0] = O(1)`` (the midpoint vertex),
``V_[0][1] = O(delta)``, ``V_[0][2], V_[1][1] = O(delta^2)``,
``V_[1][2] = O(delta^3)``, ``V_[2][2] = O(delta^4)``.

Exact recursion in components (derived here from ``pdlt.theory.vertex``)
------------------------------------------------------------------------
The N-input recursion (book eq. 4.90, to be checked)
``V' = C_W^2 [<s s s s> - <s s><s s>] + C_W^2 r M V M^T``, with
``M = d<sigma sigma>/dK`` and ``r = n_l / n_{l-1}``, is linear in each pair
slot, so the same change of basis on both slots gives, exactly for N = 2,

.. math::
    V'_{[i][j]} = C_W^2\Big[\mathrm{Cov}_K(\Phi_i, \Phi_j)
        + r \sum_{k,l} \mathcal M_{ik} V_{[k][l]} \mathcal M_{jl}\Big],\qquad
    \mathcal M_{ik} = \frac{\partial S_{[i]}}{\partial K_{[k]}},

``S_[i]`` the components of ``<sigma_a sigma_b>_K`` (``C_W M`` is the Jacobian
of the kernel map in components).

Expansion around the midpoint
-----------------------------
Gaussian averages over ``(u, v)`` obey the heat equation
``d/dK_[0] = (1/2) d_u^2``, ``d/dK_[1] = (1/2) d_u d_v``,
``d/dK_[2] = (1/2) d_v^2``; at ``K_[1] = K_[2] = 0`` v vanishes, so

.. math::
    \langle F\rangle = \sum_{m,n} \frac{K_{[1]}^m K_{[2]}^n}{m!\,n!\,2^{m+n}}
        \langle \partial_u^m \partial_v^{m+2n} F(u, 0)\rangle_{K_{[0]}},

a term of order ``delta^(m+2n)``. In particular (exact, a finite sum)
``<f(u) v^k> = sum_{m+2n=k} k! K_[1]^m K_[2]^n / (m! n! 2^(m+n)) <f^(m)>``,
and ``<f^(m)>_K = <f(z) He_m(z/sqrt K)>_K / K^(m/2)`` (Stein), so only
``sigma, sigma', sigma''`` are ever evaluated. All averages below are single
input at ``K_[0]``; primes on ``g, a, b, ...`` are ``d/dK``.

*Kernel map.* With ``g = <sigma^2>``, ``a = <sigma sigma''>``, ``b = <sigma'^2>``
(``g' = a + b``): ``S_[1] = [g(K_[0]+K_[2]+K_[1]) - g(K_[0]+K_[2]-K_[1])]/2``
exactly (the diagonal entries are single-input), and the expansion of
``<sigma_+ sigma_->`` gives ``S_[0] = g + a K_[2] + a' K_[1]^2/2 + O(d^4)``,
``S_[2] = b K_[2] + b' K_[1]^2/2 + O(d^4)`` (:mod:`pdlt.theory.delta_expansion`). Then

.. math::
    C_W\mathcal M = \begin{pmatrix}
      \chi_\parallel + C_W(a' K_{[2]} + \tfrac12 a'' K_{[1]}^2) & C_W a' K_{[1]} & C_W a\\
      \chi_\parallel' K_{[1]} & \chi_\parallel & \cdot\\
      \chi_\perp' K_{[2]} + \tfrac12\chi_\perp'' K_{[1]}^2 & \chi_\perp' K_{[1]} & \chi_\perp
    \end{pmatrix},

``chi_par = C_W g'``, ``chi_perp = C_W b`` and their K-derivatives: the
lower triangle at leading order is all the leading orders need (a term
``M_ik V_kl M_jl`` with ``k > i`` or ``l > j`` is down by ``delta^2``); the
first row is kept through ``O(delta^2)`` for ``V_[0][0]``. The entry ``(1,2)``
(``O(delta)``) only enters beyond the kept orders and is set to 0.

*Sources* ``Cov(Phi_i, Phi_j)`` from ``s = sigma + sigma'' v^2/2 + O(v^4)``,
``d = sigma' v + O(v^3)`` and the ``<f v^k>`` rule, with ``q = <sigma^4>``,
``c = <sigma^3 sigma''>``, ``e = <sigma^2 sigma'^2>``, ``p = sigma sigma'^3``,
``w = sigma'^4``, ``P_2 = b K_[2] + b' K_[1]^2/2`` (``= <Phi_2>``):

.. math::
    \mathrm{Cov}_{00} &= q - g^2 + 2(c - g a) K_{[2]} + (c' - g a') K_{[1]}^2 + O(\delta^4)\\
    \mathrm{Cov}_{01} &= (q'/2 - g g') K_{[1]} + O(\delta^3)\\
    \mathrm{Cov}_{02} &= (e - g b) K_{[2]} + \tfrac12 (e' - g b') K_{[1]}^2 + O(\delta^4)\\
    \mathrm{Cov}_{11} &= 4 e K_{[2]} + (2 e' - g'^2) K_{[1]}^2 + O(\delta^4)\\
    \mathrm{Cov}_{12} &= 3\langle p'\rangle K_{[1]}K_{[2]} + \tfrac14\langle p'''\rangle K_{[1]}^3
        - g' K_{[1]} P_2 + O(\delta^5)\\
    \mathrm{Cov}_{22} &= 3\langle w\rangle K_{[2]}^2 + \tfrac32\langle w''\rangle K_{[1]}^2 K_{[2]}
        + \tfrac1{16}\langle w''''\rangle K_{[1]}^4 - P_2^2 + O(\delta^6).

At ``K_[1] = K_[2] = 0`` the ``[0][0]`` recursion is the single-input one,
``V_[0][0]' = C_W^2(<sigma^4> - <sigma^2>^2) + r chi_par^2 V_[0][0]`` (book eq.
4.90 / 5.x, to be checked), and every other component stays 0.

Truncation and accuracy (a checkable claim)
-------------------------------------------
Like :mod:`pdlt.theory.delta_expansion` for the kernel, every component is kept at its
leading order in delta (relative error ``O(delta^2)``) and ``V_[0][0]`` through
``O(delta^2)`` (absolute error ``O(delta^4)``). The kernel components come from
:func:`pdlt.theory.delta_expansion.delta_flow` (``K_[0]`` to ``O(delta^4)``, ``K_[1]``,
``K_[2]`` to relative ``O(delta^2)``). So the reassembled 2x2x2x2 tensor has
error ``O(delta^4)`` in its part even under ``x_+ <-> x_-`` and ``O(delta^3)``
in its odd part (relative ``O(delta^2)`` there, as the odd part is
``O(delta)``): halving delta divides these by 16 and 8, and the relative
errors of the components ``[0][1] ... [2][2]`` by 4
(``tests/theory/test_delta_expansion_vertex.py``).

Smooth activations only: for a kink (ReLU family, ELU) ``sigma''`` has a
delta function and the two-input averages pick up terms of order ``|delta|^3``
(relative) that no Taylor expansion sees (as for the kernel in
:mod:`pdlt.theory.delta_expansion`); the exact two-input V of such activations is
:func:`pdlt.theory.vertex.finite_width_flow` with ``x`` of shape (2, n0).
Residual MLPs are not covered.
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
    """Components ``V_[i][j]`` of two-input vertices (module docstring).

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
        "pdlt.theory.vertex.finite_width_flow(mlp, x) with the two inputs for the exact "
        "two-input V")


def _step(t, K0, K1, K2, C, C_W, ratio):
    """One layer of the truncated component recursion (module docstring); t at K0."""
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
    """One layer of the delta-expanded two-input vertex (module docstring).

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
                                  "use pdlt.theory.vertex.finite_width_flow(mlp, x)")
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
