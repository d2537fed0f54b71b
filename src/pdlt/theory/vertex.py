r"""Order 1/n at initialization: the four-point vertex V and the NLO metric G1.

Definitions (``shared/NOTATION.md``, binding): with ``n = n_{l-1}`` the width
feeding layer l,

.. math::
    E[z_{i1;a1} z_{i2;a2} z_{i3;a3} z_{i4;a4}]_{conn}
      = \frac1n [\delta_{i1i2}\delta_{i3i4} V_{(a1a2)(a3a4)} + \text{2 perms}],\qquad
    E[z_{i;a1} z_{i;a2}] = K_{a1a2} + \frac1n G^{1}_{a1a2},

``V^(1) = G1^(1) = 0`` (the first layer is exactly Gaussian).

Derivation (book ch. 4; eq. numbers to be checked: 4.90 for V, 4.115 for G1)
-------------------------------------------------------------------------------
Condition on layer l. Layer l+1 is then Gaussian with covariance
``delta_ij Ghat_ab``, ``Ghat_ab = C_b + (C_W / n_l) sum_j sigma_{j;a} sigma_{j;b}``,
so ``Cov(z_i z_i, z_j z_j) = Cov(Ghat, Ghat)`` for ``i != j``. Splitting the
double sum over neurons into equal (n_l terms) and different
(n_l (n_l - 1) terms) neurons, and evaluating the cross-neuron covariance
with the 1/n_{l-1} quartic cumulant of layer l (Edgeworth: the cumulant
``V/n_{l-1}`` between neurons j and k acts as
``(1/4) sum V <d d F_j> <d d F_k>``),

.. math::
    V^{(l+1)}_{(a1a2)(a3a4)} = C_W^2 \big[\langle\sigma_{a1}\sigma_{a2}\sigma_{a3}\sigma_{a4}\rangle
        - \langle\sigma_{a1}\sigma_{a2}\rangle\langle\sigma_{a3}\sigma_{a4}\rangle\big]
      + C_W^2 \frac{n_l}{n_{l-1}} \sum_{b} M_{(a1a2)(b1b2)} V^{(l)}_{(b1b2)(b3b4)} M_{(a3a4)(b3b4)},

with ``M_{(a1a2)(b1b2)} = (1/2) <d_{b1} d_{b2} (sigma_a1 sigma_a2)>_K``
``= d<sigma_a1 sigma_a2>_K / dK_{b1b2}``; the first term is from equal
neurons (1/n_l), the second from different neurons (1/n_{l-1}): hence the
width ratio. For the mean of one neuron, ``E[F] = <F>_{K + G1/n}
+ (1/8n) sum V <d^4 F>_K``, so

.. math::
    G^{1(l+1)}_{ab} = \frac{n_l}{n_{l-1}} C_W \Big[\sum_{cd} M_{(ab)(cd)} G^{1(l)}_{cd}
        + \frac18 \sum_{b} V^{(l)}_{(b1b2)(b3b4)} \langle d_{b1}d_{b2}d_{b3}d_{b4}(\sigma_a\sigma_b)\rangle_K\Big].

Single input: ``V' = C_W^2 (<sigma^4> - <sigma^2>^2) + (n_l/n_{l-1}) chi_par^2 V``
and ``G1' = (n_l/n_{l-1}) [chi_par G1 + (C_W/8) <(sigma^2)''''> V]``.

How the Gaussian averages are computed (no sigma'' deltas, no sigma''')
----------------------------------------------------------------------------
* ``<sigma'^2 + sigma sigma''>_K = <z sigma sigma'>_K / K`` and
  ``<(sigma^2)''''>_K = <sigma^2 He_4(z / sqrt K)>_K / K^2`` (Stein), so kinks
  (ReLU's sigma'' = delta) are handled exactly by the one-variable rule.
* ``M`` only involves the pair terms ``<sigma'_a sigma'_b>`` and
  ``(1/2)<sigma''_a sigma_b> = (1/2)[<z_a sigma'_a sigma_b>/K_aa
  - (K_ab/K_aa) <sigma'_a sigma'_b>]`` (Stein along z_a with
  ``z_b - (K_ab/K_aa) z_a`` held fixed).
* The fourth-derivative source of G1 for a pair a != b uses the 2 x 2
  Hermite tensor: ``<d^4 F> = <F H_4(K^{-1} z)>`` expanded into the moments
  ``<z_a^i sigma_a z_b^j sigma_b>`` (Mehler series, rtol 1e-13). It loses
  ``~(1 - rho^2)^{-2}`` in relative accuracy; pairs with ``1 - rho^2 < 1e-4``
  use the coinciding-input limit at the midpoint kernel instead (error
  O(1 - rho)).
* ``<sigma_a1 sigma_a2 sigma_a3 sigma_a4>``:
  :func:`pdlt.gaussian._multi.quad_expectations` (accuracy stated there).

Residual MLPs (book appendix B; derivation ours, eq. numbers to be checked)
----------------------------------------------------------------------------
``z'_i = xi u_i + gamma z_i`` with ``u_i = b_i + sum_j W_ij sigma_j``. Given
layer l, ``u_i`` is Gaussian with covariance ``delta_ij Ghat`` and independent
across i, so for ``i != j``
``E[z'_{i;a1} z'_{i;a2} | layer l] = xi^2 Ghat_{a1a2} + gamma^2 z_{i;a1} z_{i;a2}`` and

.. math::
    \frac{V'}{n_l} = \mathrm{Cov}(\xi^2\hat G_{12} + \gamma^2 z_{i1}z_{i2},\,
                                   \xi^2\hat G_{34} + \gamma^2 z_{j3}z_{j4}).

The ``xi^4`` piece is the plain step; ``gamma^4`` gives ``V/n_{l-1}``; the
mixed piece ``xi^2 gamma^2 Cov(Ghat_12, z_j3 z_j4)`` has a same-neuron part
``(C_W/n_l)[<sigma_1 sigma_2 z_3 z_4> - <sigma_1 sigma_2> K_34]
= (C_W/n_l) 2 sum_b M_{(12)(b1b2)} K_{b1 3} K_{b2 4}`` (Stein twice) and a
cross-neuron part ``(C_W/n_{l-1}) (M V)_{(12)(34)}``. Altogether

.. math::
    V^{(l+1)} = \xi^4 C_W^2[\langle\sigma^4\rangle - \langle\sigma\sigma\rangle
        \langle\sigma\sigma\rangle] + 2\xi^2\gamma^2 C_W [M(KK) + (M(KK))^T]
        + \frac{n_l}{n_{l-1}} \tilde M V \tilde M^T,\qquad
    \tilde M = \xi^2 C_W M + \gamma^2 \mathbb 1,

and, from ``E[z'z'] = xi^2 (C_b + C_W E[sigma sigma]) + gamma^2 E[z z]``,

.. math::
    G^{1(l+1)} = \frac{n_l}{n_{l-1}}\big[\tilde M G^{1(l)} + \xi^2 C_W \cdot
        \tfrac18\textstyle\sum V \langle\partial^4(\sigma\sigma)\rangle\big].

Single input: ``V' = xi^4 C_W^2 (<sigma^4> - <sigma^2>^2) + 4 xi^2 gamma^2 C_W
<sigma'^2 + sigma sigma''> K^2 + (n_l/n_{l-1}) chi_par^2 V`` with the residual
``chi_par = xi^2 C_W <sigma'^2 + sigma sigma''> + gamma^2``. At ``gamma = 0,
xi = 1`` the plain code path runs, bit for bit.

The three-point function of residual MLPs. The above assumes that odd
cumulants vanish, which the plain MLP guarantees (flip the signs of W and b
of one layer). A residual layer breaks that symmetry unless sigma is odd:
``E[z'_i z'_i z'_k] = xi^2 gamma E[Ghat z_k] + gamma^3 E[z_i z_i z_k]`` and
``E[Ghat z_k] = (C_W/n_l) <sigma^2 z>_K + ...`` is O(1/n). For one input,

.. math::
    E[z_i z_j z_k] = \frac{\kappa_3}{n}(\delta_{ij} + \delta_{ik} + \delta_{jk}),\qquad
    \kappa_3' = \xi^2\gamma C_W K D_1 + \frac{n_l}{n_{l-1}}\gamma\chi_\parallel\kappa_3,

with ``D_1 = <(sigma^2)'>_K = <z sigma^2>_K / K`` (the all-different-neuron
part stays zero and the all-equal part carries no extra term). It feeds the
order-1/n recursions through Edgeworth's cubic term:
``V' = (source) + (n_l/n_{l-1}) chi_par [chi_par V + 2 xi^2 C_W D_1 kappa3]`` and
``G1' = (n_l/n_{l-1}) [chi_par G1 + xi^2 C_W (<(sigma^2)^(4)> V / 8
+ <(sigma^2)^(3)> kappa3 / 2)]``. For odd sigma ``D_1 = 0`` and ``kappa3 = 0``.

Two-depth terms: why the above is a truncation. A residual neuron carries its
own past, so the recursions need one neuron's averages at two depths,
``Cov(sigma^2(z^(l+1)), sigma^2(z^(p)))`` and ``Cov((sigma^2)''(z^(l)),
sigma^2(z^(p)))`` with ``Cov(z^(l), z^(p)) = gamma^(p+1)...gamma^(l) K^(p)``.
Their Hermite expansion starts with the terms the recursions above keep
(``kappa3``: first order; the mixed ``M(KK)`` term: second order); the rest
(order >= 3 for non-odd, >= 4 for odd sigma) is dropped. It vanishes for
linear sigma and at gamma = 0 and is ~1-4 % otherwise (ReLU, gamma = 0.5:
V^(3) 8.6179 vs 8.5574, G1^(3) 0.3426 vs 0.3581; tanh ~0.5-15 %). Hence:

* the single-input flow of a residual MLP serves the exact V and G1,
  :func:`pdlt.theory.residual_ntk.residual_vertex_metric` (field covariances
  with the neuron's dressed self-influence; derivation
  ``docs/derivations/residual_ntk.md``; checked: gamma = 0 = plain to 1e-15,
  linear = closed form, V^(3) by a direct formula, G1^(3), G1^(4) by a Monte
  Carlo of real networks) and ``extra["kappa3"]`` from the recursion above
  (its two-depth average ``Cov(g(z^(p)), z^(l))`` has a single Hermite term, so
  the truncation does not touch it; the dressed cross-neuron part was not
  re-derived here);
* :func:`vertex_step_single`, :func:`metric_step_single`, :func:`vertex_step`,
  :func:`metric_step` with ``gamma != 0`` are the truncated steps, and the
  N-input flow of a residual MLP (odd sigma only) uses them: its V and G1 are
  the truncation (exact for linear sigma, ~1 % off for tanh);
* the N-input flow of a residual MLP with non-odd sigma raises: it would need
  the N-input three-point tensor and the N-input two-depth averages
  ``<f(z^(l)_a) g(z^(p)_b)>`` over four Gaussian variables, not derived.

Cost of the N-input step: ``C(N+3, 4)`` four-point expectations (full
permutation symmetry of ``<sigma sigma sigma sigma>``), O(N^2) pair terms and
an O(N^4) contraction; memory ``N^4`` floats per tensor. V is stored as the
full (N, N, N, N) tensor with the symmetries ``V_{(ab)(cd)} = V_{(ba)(cd)}
= V_{(cd)(ab)}``.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np

from .. import gaussian
from .._progress import layers
from ..gaussian._multi import quad_expectations
from ..network import MLP
from .kernel import Flow, flow as _kernel_flow

__all__ = [
    "single_input_vertex_terms",
    "vertex_step_single",
    "metric_step_single",
    "vertex_step",
    "metric_step",
    "finite_width_flow",
    "vertex_slope",
]

_PAIR_RTOL = 1e-13
_COINCIDE = 1e-4   # 1 - rho^2 below which a pair is treated as coinciding in G1's source


# ---------------------------------------------------------------------------
# single input
# ---------------------------------------------------------------------------

def single_input_vertex_terms(act, K):
    """One-variable averages the single-input recursions need.

    Parameters
    ----------
    act : Activation
    K : float > 0

    Returns
    -------
    dict with ``s2 = <sigma^2>``, ``s4 = <sigma^4>``,
    ``dchi = <sigma'^2 + sigma sigma''> = <z sigma sigma'>/K`` and
    ``d4 = <(sigma^2)''''> = <sigma^2 He_4(z/sqrt K)>/K^2``.
    """
    K = float(K)
    if not K > 0:
        raise ValueError(f"the kernel must be > 0 for the finite-width recursions; got K={K}")
    s, d1 = act.sigma, act.d1
    kw = dict(kinks=act.kinks, period=act.period)
    sq = math.sqrt(K)
    s2, s4, zss, h4 = (float(v) for v in (
        gaussian.expect(lambda z: s(z) ** 2, K, **kw),
        gaussian.expect(lambda z: s(z) ** 4, K, **kw),
        gaussian.expect(lambda z: z * s(z) * d1(z), K, **kw),
        gaussian.expect(lambda z: s(z) ** 2 * ((z / sq) ** 4 - 6 * (z / sq) ** 2 + 3), K, **kw)))
    return {"s2": s2, "s4": s4, "dchi": zss / K, "d4": h4 / (K * K)}


def vertex_step_single(act, K, V, C_W, ratio=1.0, *, gamma=0.0, xi=1.0, terms=None):
    """Single-input V^(l+1) from V^(l) (book eq. 4.90, eq. numbers to be checked).

    ``V' = C_W^2 (<sigma^4>_K - <sigma^2>_K^2) + ratio chi_par^2 V`` with
    ``chi_par = C_W <sigma'^2 + sigma sigma''>_K`` and ``ratio = n_l / n_{l-1}``.

    Parameters
    ----------
    act : Activation
    K, V : float
        K^(l) and V^(l).
    C_W : float
        Weight variance of layer l+1.
    ratio : float
        ``n_l / n_{l-1}``.
    gamma, xi : float
        Residual hyperparameters of layer l+1 (module docstring).

    Returns
    -------
    float
    """
    t = terms or single_input_vertex_terms(act, K)
    if gamma == 0.0 and xi == 1.0:
        chi = C_W * t["dchi"]
        return C_W ** 2 * (t["s4"] - t["s2"] ** 2) + ratio * chi * chi * V
    x2, g2 = xi * xi, gamma * gamma
    chi = x2 * C_W * t["dchi"] + g2
    return (x2 * x2 * C_W ** 2 * (t["s4"] - t["s2"] ** 2)
            + 4.0 * x2 * g2 * C_W * t["dchi"] * K * K + ratio * chi * chi * V)


def metric_step_single(act, K, V, G1, C_W, ratio=1.0, *, gamma=0.0, xi=1.0, terms=None):
    """Single-input G1^(l+1) (book eq. 4.115, eq. numbers to be checked).

    ``G1' = ratio [chi_par G1 + xi^2 (C_W / 8) <(sigma^2)''''>_K V]`` with
    ``chi_par = xi^2 C_W <sigma'^2 + sigma sigma''> + gamma^2``.
    """
    t = terms or single_input_vertex_terms(act, K)
    if gamma == 0.0 and xi == 1.0:
        return ratio * (C_W * t["dchi"] * G1 + 0.125 * C_W * t["d4"] * V)
    x2 = xi * xi
    return ratio * ((x2 * C_W * t["dchi"] + gamma * gamma) * G1 + 0.125 * x2 * C_W * t["d4"] * V)


def odd_terms(act, K):
    """``D1 = <(sigma^2)'>_K = <z sigma^2>/K`` and ``D3 = <(sigma^2)^(3)>_K`` (Stein).

    Both vanish for an odd activation; they drive the three-point function of
    residual MLPs (module docstring).
    """
    K = float(K)
    sq = math.sqrt(K)
    kw = dict(kinks=act.kinks, period=act.period)
    zs2 = gaussian.expect(lambda z: z * act.sigma(z) ** 2, K, **kw)
    h3 = gaussian.expect(lambda z: act.sigma(z) ** 2 * ((z / sq) ** 3 - 3 * (z / sq)), K, **kw)
    return float(zs2) / K, float(h3) / (K * sq)


def residual_three_point_step(act, K, kappa3, C_W, ratio=1.0, *, gamma=0.0, xi=1.0,
                              terms=None, odd=None):
    """Single-input ``kappa3^(l+1)`` of a residual MLP (module docstring).

    ``E[z_i z_j z_k] = (kappa3 / n)(d_ij + d_ik + d_jk)``;
    ``kappa3' = xi^2 gamma C_W K D1 + ratio gamma chi_par kappa3``.
    """
    t = terms or single_input_vertex_terms(act, K)
    D1, _ = odd or odd_terms(act, K)
    chi = xi * xi * C_W * t["dchi"] + gamma * gamma
    return xi * xi * gamma * C_W * K * D1 + ratio * gamma * chi * kappa3


def _odd_activation(act):
    z = np.linspace(0.05, 6.0, 37)
    s_p, s_m = act.sigma(z), act.sigma(-z)
    return bool(np.allclose(s_m, -s_p, rtol=1e-12, atol=1e-14))


def _single(mlp, kflow):
    act = mlp.activation
    L = mlp.depth
    if mlp.is_residual:
        return _single_residual(mlp, kflow)
    V, G1 = 0.0, 0.0
    out = []
    for l in range(1, L + 1):
        s = kflow[l - 1]
        out.append(dataclasses.replace(s, extra={**s.extra, "V": float(V), "G1": float(G1)}))
        if l == L:
            break
        ratio = mlp.widths[l] / mlp.widths[l - 1]
        t = single_input_vertex_terms(act, s.K)
        C_W = mlp.C_W[l]
        V, G1 = (vertex_step_single(act, s.K, V, C_W, ratio, terms=t),
                 metric_step_single(act, s.K, V, G1, C_W, ratio, terms=t))
        if not (math.isfinite(V) and math.isfinite(G1)):
            raise FloatingPointError(
                f"V or G1 overflowed at layer {l + 1}; reduce the depth or initialize at "
                "criticality")
    return Flow(out, mlp)


def _single_residual(mlp, kflow):
    """Residual MLP, one input: the exact V and G1 (two-depth averages, module docstring)
    from :func:`pdlt.theory.residual_ntk.residual_vertex_metric`, and kappa3."""
    from .residual_ntk import residual_vertex_metric

    act = mlp.activation
    L = mlp.depth
    exact = residual_vertex_metric(mlp, float(kflow[0].K))
    track3 = not _odd_activation(act)
    k3 = 0.0
    out = []
    for l in range(1, L + 1):
        s = kflow[l - 1]
        out.append(dataclasses.replace(s, extra={
            **s.extra, "V": float(exact["V"][l - 1]), "G1": float(exact["G1"][l - 1]),
            "kappa3": float(k3)}))
        if l < L and track3:
            ratio = mlp.widths[l] / mlp.widths[l - 1]
            k3 = residual_three_point_step(act, s.K, k3, mlp.C_W[l], ratio,
                                           gamma=mlp.gamma[l], xi=mlp.xi[l])
    return Flow(out, mlp)


# ---------------------------------------------------------------------------
# N inputs
# ---------------------------------------------------------------------------

def _shim(act, **fns):
    """An object pair_expectations accepts, with extra named functions."""
    return SimpleNamespace(name="_vertex_shim", scale_invariant=None, kinks=act.kinks,
                           period=act.period, **fns)


def _derivative_matrices(act, K, rtol=_PAIR_RTOL):
    """``S = <sigma_a sigma_b>``, ``A = (1/2)<sigma''_a sigma_b>``, ``B = <sigma'_a sigma'_b>``."""
    e = gaussian.pair_expectations(act, K, (("sigma", "sigma"), ("d1", "d1")), rtol=rtol)
    S, B = e[("sigma", "sigma")], e[("d1", "d1")]
    sh = _shim(act, sigma=act.sigma, zd1=lambda z: z * act.d1(z))
    ZS = gaussian.pair_expectations(sh, K, (("zd1", "sigma"),), rtol=rtol)[("zd1", "sigma")]
    diag = np.diag(K)
    A = 0.5 * (ZS - K * B) / diag[:, None]
    return S, A, B


def _apply_M(A, B, X):
    """``sum_{b1 b2} M_{(a1a2)(b1b2)} X_{(b1b2)...}`` on the first two axes of X."""
    N = A.shape[0]
    ar = np.arange(N)
    Xd = X[ar, ar]                                   # (N, ...) = X_{(bb)...}
    extra = (None,) * (X.ndim - 2)
    return (A[(...,) + extra] * Xd[:, None] + A.T[(...,) + extra] * Xd[None, :]
            + B[(...,) + extra] * X)


def vertex_step(act, K, V, C_W, ratio=1.0, *, gamma=0.0, xi=1.0, accuracy="default",
                _mats=None, _err=None, _where=""):
    """N-input V^(l+1) from V^(l) (book eq. 4.90, eq. numbers to be checked).

    Parameters
    ----------
    act : Activation
    K : ndarray (N, N)
        K^(l).
    V : ndarray (N, N, N, N)
        V^(l), ``V[a1, a2, a3, a4] = V_{(a1a2)(a3a4)}``.
    C_W : float
        Weight variance of layer l+1.
    ratio : float
        ``n_l / n_{l-1}``.
    gamma, xi : float
        Residual hyperparameters of layer l+1 (module docstring).
    accuracy : {"fast", "default", "high"}
        Rule of the four-variable expectations (:mod:`pdlt.gaussian._multi`).

    Returns
    -------
    ndarray (N, N, N, N)
    """
    S, A, B = _mats or _derivative_matrices(act, K)
    if _err is None:
        S4 = quad_expectations(act, K, accuracy=accuracy, where=_where)
    else:
        # the four-point averages with their error estimate (pdlt.gaussian._multi),
        # as an absolute error of V's source term C_W^2 (xi^4) <s s s s>
        S4, E4 = quad_expectations(act, K, accuracy=accuracy, return_error=True, where=_where)
        _err["V"] = float(np.max(E4)) * C_W ** 2 * xi ** 4
    if gamma == 0.0 and xi == 1.0:
        out = C_W ** 2 * (S4 - S[:, :, None, None] * S[None, None, :, :])
        if ratio != 0 and np.any(V):
            T = _apply_M(A, B, V)                                 # first pair
            T = _apply_M(A, B, np.moveaxis(T, (2, 3), (0, 1)))    # second pair
            out = out + C_W ** 2 * ratio * np.moveaxis(T, (0, 1), (2, 3))
        return out
    x2, g2 = xi * xi, gamma * gamma
    out = x2 * x2 * C_W ** 2 * (S4 - S[:, :, None, None] * S[None, None, :, :])
    # same-neuron mixed term 2 sum_b M_{(12)(b1b2)} K_{b1 3} K_{b2 4}, plus its mirror
    KK = K[:, None, :, None] * K[None, :, None, :]            # KK[b1, b2, a3, a4]
    KK = 0.5 * (KK + np.swapaxes(KK, 2, 3))
    X = 2.0 * _apply_M(A, B, KK)
    out = out + x2 * g2 * C_W * (X + np.moveaxis(X, (0, 1), (2, 3)))
    if ratio != 0 and np.any(V):
        T = x2 * C_W * _apply_M(A, B, V) + g2 * V                  # first pair
        T2 = np.moveaxis(T, (2, 3), (0, 1))
        T = x2 * C_W * _apply_M(A, B, T2) + g2 * T2                # second pair
        out = out + ratio * np.moveaxis(T, (0, 1), (2, 3))
    return out


def _pair_moments(act, K):
    """``m[i, j][a, b] = <z_a^i sigma_a z_b^j sigma_b>`` for i + j in {0, 2, 4}."""
    s = act.sigma
    fns = {f"f{i}": (lambda i: lambda z: z ** i * s(z))(i) for i in range(5)}
    sh = _shim(act, **fns)
    terms = (("f0", "f0"), ("f1", "f1"), ("f2", "f2"), ("f2", "f0"), ("f4", "f0"), ("f3", "f1"))
    e = gaussian.pair_expectations(sh, K, terms, rtol=_PAIR_RTOL)
    m = {(int(a[1]), int(b[1])): v for (a, b), v in e.items()}
    for (i, j) in list(m):
        m[(j, i)] = m[(i, j)].T
    return m


def _fourth_derivative_source(act, K, V):
    """``Q_ab = (1/8) sum_{b's in {a,b}} V_{(b1b2)(b3b4)} <d^4 (sigma_a sigma_b)>_K``."""
    N = K.shape[0]
    diag = np.diag(K).copy()
    Q = np.zeros((N, N))
    # diagonal and coinciding pairs: (1/8) V_aaaa <(sigma^2)''''>_K  (1-D Stein)
    d4 = np.array([single_input_vertex_terms(act, k)["d4"] for k in diag])
    ar = np.arange(N)
    Q[ar, ar] = 0.125 * V[ar, ar, ar, ar] * d4
    if N == 1:
        return Q
    a, b = np.triu_indices(N, 1)
    Kaa, Kbb, Kab = diag[a], diag[b], K[a, b]
    det = Kaa * Kbb - Kab * Kab
    rel = det / (Kaa * Kbb)
    # 2x2 blocks of V over {a, b}, fully symmetrized (<d^4 F> is symmetric)
    idx = np.stack([a, b], axis=1)                       # (P, 2)
    I = idx[:, :, None, None, None]
    J = idx[:, None, :, None, None]
    Kk = idx[:, None, None, :, None]
    Ll = idx[:, None, None, None, :]
    W = V[I, J, Kk, Ll]                                  # (P, 2, 2, 2, 2)
    W = (W + np.swapaxes(W, 2, 3) + np.swapaxes(W, 2, 4)) / 3.0
    far = rel >= _COINCIDE
    out = np.empty(len(a))
    if far.any():
        m = _pair_moments(act, K)
        P = np.flatnonzero(far)
        Lam = np.empty((len(P), 2, 2))
        Lam[:, 0, 0] = Kbb[P] / det[P]
        Lam[:, 1, 1] = Kaa[P] / det[P]
        Lam[:, 0, 1] = Lam[:, 1, 0] = -Kab[P] / det[P]
        Wf = W[P]
        Wp = np.einsum("pijkl,pia,pjb,pkc,pld->pabcd", Wf, Lam, Lam, Lam, Lam)
        U = np.einsum("pijkl,pij->pkl", Wf, Lam)
        R = np.einsum("pak,pkl,plb->pab", Lam, U, Lam)
        c0 = 3.0 * np.einsum("pkl,pkl->p", U, Lam)
        aa, bb = a[P], b[P]
        mm = {k: v[aa, bb] for k, v in m.items()}
        quartic = (Wp[:, 0, 0, 0, 0] * mm[(4, 0)] + 4 * Wp[:, 0, 0, 0, 1] * mm[(3, 1)]
                   + 6 * Wp[:, 0, 0, 1, 1] * mm[(2, 2)] + 4 * Wp[:, 0, 1, 1, 1] * mm[(1, 3)]
                   + Wp[:, 1, 1, 1, 1] * mm[(0, 4)])
        quad = R[:, 0, 0] * mm[(2, 0)] + 2 * R[:, 0, 1] * mm[(1, 1)] + R[:, 1, 1] * mm[(0, 2)]
        out[P] = 0.125 * (quartic - 6.0 * quad + c0 * mm[(0, 0)])
    if (~far).any():
        # coinciding inputs: <d_a^p d_b^q F> -> <sigma^(p) sigma^(q)>, summed with binomial
        # weights this is (1/16) sum_b W times <(sigma^2)''''> at the midpoint kernel
        P = np.flatnonzero(~far)
        Wbar = W[P].reshape(len(P), -1).mean(axis=1)
        mid = np.array([single_input_vertex_terms(act, k)["d4"]
                        for k in 0.5 * (Kaa[P] + Kbb[P])])
        out[P] = 0.125 * Wbar * mid
    Q[a, b] = out
    Q[b, a] = out
    return Q


def metric_step(act, K, V, G1, C_W, ratio=1.0, *, gamma=0.0, xi=1.0, _mats=None):
    """N-input G1^(l+1) (book eq. 4.115, eq. numbers to be checked).

    Parameters
    ----------
    act : Activation
    K, G1 : ndarray (N, N)
    V : ndarray (N, N, N, N)
    C_W, ratio : float
        Weight variance of layer l+1 and ``n_l / n_{l-1}``.
    gamma, xi : float
        Residual hyperparameters of layer l+1.

    Returns
    -------
    ndarray (N, N)
    """
    S, A, B = _mats or _derivative_matrices(act, K)
    src = _fourth_derivative_source(act, K, V) if np.any(V) else 0.0
    if gamma == 0.0 and xi == 1.0:
        return ratio * C_W * (_apply_M(A, B, G1) + src)
    return ratio * (xi * xi * C_W * (_apply_M(A, B, G1) + src) + gamma * gamma * G1)


def _multi(mlp, kflow, accuracy):
    act = mlp.activation
    if mlp.is_residual and not _odd_activation(act):
        raise NotImplementedError(
            f"the N-input finite-width flow of a residual MLP with the non-odd activation "
            f"{act.name!r} is not derived: it needs the O(1/n) three-point function "
            "E[z_a z_b z_c] as an N-input tensor and, because a residual neuron carries its "
            "own past, one neuron's averages at two depths <f(z_a^(l)) g(z_b^(p))> over the "
            "inputs (the single-input versions are pdlt.theory.residual_ntk."
            "residual_vertex_metric). Use finite_width_flow(mlp, K1=...) per input (exact), "
            "an odd activation (tanh, erf, sin, linear; N-input V, G1 then keep only the "
            "leading two-depth terms), or gamma = 0")
    L = mlp.depth
    N = kflow[0].K.shape[0]
    V = np.zeros((N, N, N, N))
    G1 = np.zeros((N, N))
    out = []
    errors = [0.0]
    for l in layers(range(1, L + 1), f"V, G1, {N} inputs"):
        s = kflow[l - 1]
        # integration_error: estimated absolute error of the four-point averages that
        # entered V at this layer's step (not propagated through the recursion)
        out.append(dataclasses.replace(s, extra={**s.extra, "V": V, "G1": G1,
                                                 "integration_error": errors[-1]}))
        if l == L:
            break
        K = s.K
        if np.any(np.diag(K) <= 0):
            raise ValueError(
                f"an input has zero variance at layer {l}; the finite-width recursions need "
                "K_aa > 0 (use C_b > 0 or nonzero inputs)")
        ratio = mlp.widths[l] / mlp.widths[l - 1]
        mats = _derivative_matrices(act, K)
        C_W, rk = mlp.C_W[l], dict(gamma=mlp.gamma[l], xi=mlp.xi[l])
        err = {}
        V_new = vertex_step(act, K, V, C_W, ratio, accuracy=accuracy, _mats=mats, _err=err,
                            _where=f" at layer {l} (inputs of the flow)", **rk)
        errors.append(err["V"])
        G1 = metric_step(act, K, V, G1, C_W, ratio, _mats=mats, **rk)
        V = V_new
        if not (np.all(np.isfinite(V)) and np.all(np.isfinite(G1))):
            raise FloatingPointError(
                f"V or G1 overflowed at layer {l + 1}; reduce the depth or initialize at "
                "criticality")
    return Flow(out, mlp)


def finite_width_flow(mlp: MLP, x=None, *, K1=None, accuracy="default", rtol=1e-12) -> Flow:
    """Kernel flow with the order-1/n statistics V and G1 at every layer.

    Parameters
    ----------
    mlp : MLP
        Widths, per-layer ``C_b``, ``C_W``; ``V^(l)`` and ``G1^(l)`` are
        normalized by ``n_{l-1}`` (``shared/NOTATION.md``).
    x : array_like (N, n0), optional
        Inputs (multi-input path).
    K1 : float, optional
        Single-input path: the first-layer kernel. Give exactly one of x, K1.
    accuracy : {"fast", "default", "high"}
        Rule for the four-variable expectations (multi-input path; errors
        stated in :mod:`pdlt.gaussian._multi`). "fast" meets the benchmark
        target (N = 16, depth 10, tanh, under 10 s; ``benchmarks/vertex.py``).
    rtol : float
        Passed to :func:`pdlt.theory.kernel.flow`.

    Returns
    -------
    Flow
        Each :class:`LayerStatistics` has ``extra["V"]`` (float, or
        (N, N, N, N) with ``V[a1,a2,a3,a4] = V_{(a1a2)(a3a4)}``) and
        ``extra["G1"]`` (float or (N, N)); ``flow["V"]`` stacks them.

    Examples
    --------
    >>> import pdlt
    >>> from pdlt.theory.vertex import finite_width_flow
    >>> f = finite_width_flow(pdlt.MLP(n0=1, width=64, depth=4, C_W=2.0), K1=1.0)
    >>> [round(float(v), 10) for v in f["V"]]   # ReLU at criticality: 5 (l-1) K^2
    [0.0, 5.0, 10.0, 15.0]
    """
    kflow = _kernel_flow(mlp, x, K1=K1, rtol=rtol)
    if K1 is not None:
        if not K1 > 0:
            raise ValueError(f"K1 must be > 0 for the finite-width statistics; got {K1}")
        return _single(mlp, kflow)
    if accuracy not in ("fast", "default", "high"):
        raise ValueError(f"accuracy must be 'fast', 'default' or 'high'; got {accuracy!r}")
    return _multi(mlp, kflow, accuracy)


# ---------------------------------------------------------------------------
# asymptotic slope at criticality
# ---------------------------------------------------------------------------

def vertex_slope(act, *, C_W=None, K_star=None):
    r"""Asymptotic slope ``nu`` of ``V^(l) / (n K^(l)^2) ~ nu l / n`` at criticality.

    * ``K* > 0`` (scale-invariant class, or any activation with a nontrivial
      critical fixed point): with ``chi_par = 1`` at ``K*`` the single-input
      recursion adds a constant per layer,
      ``nu = C_W^2 (<sigma^4>_{K*} - <sigma^2>_{K*}^2) / K*^2``
      (ReLU 5, linear 2; for slopes ``a_+, a_-``:
      ``6 (a_+^4 + a_-^4) / (a_+^2 + a_-^2)^2 - 1``).
    * ``K* = 0`` class (tanh, sin, erf, ...): ``K ~ 1/(-a_1 l)``,
      ``chi_par ~ 1 - 2/l`` and ``V' = (1 - 4/l) V + 2 K^2`` give ``nu = 2/3``
      independently of the activation (book §5.4, eq. numbers to be checked).

    Parameters
    ----------
    act : str, Activation or callable
    C_W, K_star : float, optional
        The critical point; found with :func:`pdlt.theory.criticality.criticality`
        when omitted (scale-invariant activations need neither).

    Returns
    -------
    float
    """
    from ..activations import activation as _activation
    act = _activation(act)
    if act.scale_invariant is not None and act.name != "monomial":
        ap, am = act.scale_invariant
        return 6.0 * (ap ** 4 + am ** 4) / (ap ** 2 + am ** 2) ** 2 - 1.0
    if C_W is None or K_star is None:
        try:
            from .criticality import criticality
        except ImportError as exc:  # pragma: no cover - depends on the criticality module
            raise ValueError(
                "vertex_slope needs the critical point: pass C_W and K_star, or install a "
                "pdlt with pdlt.theory.criticality") from exc
        crit = criticality(act)
        C_W = crit.C_W if C_W is None else C_W
        K_star = crit.K_star if K_star is None else K_star
    if K_star == 0:
        return 2.0 / 3.0
    t = single_input_vertex_terms(act, K_star)
    return C_W ** 2 * (t["s4"] - t["s2"] ** 2) / K_star ** 2
