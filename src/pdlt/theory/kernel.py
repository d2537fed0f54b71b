r"""Infinite-width kernel and frozen NTK: one step per layer, folded over depth.

Recursions (``shared/NOTATION.md``; book eqs. 4.118 and 9.4 / 8.63):

.. math::
    K^{(1)}_{ab} = C_b + C_W \frac{1}{n_0}\sum_j x_{j;a} x_{j;b},\qquad
    K^{(l+1)}_{ab} = C_b + C_W \langle \sigma_a \sigma_b\rangle_{K^{(l)}},

    \Theta^{(1)}_{ab} = \lambda_b + \lambda_W \frac{1}{n_0}\sum_j x_{j;a}x_{j;b},\qquad
    \Theta^{(l+1)}_{ab} = \lambda_b + \lambda_W\langle\sigma_a\sigma_b\rangle_{K^{(l)}}
        + C_W \langle\sigma'_a\sigma'_b\rangle_{K^{(l)}} \Theta^{(l)}_{ab},

with the hyperparameters of layer l+1 in the step l -> l+1. The
susceptibilities (book eqs. 5.50-5.51) at layer l,

.. math::
    \chi_\parallel = C_W \langle \sigma'^2 + \sigma\sigma''\rangle_{K^{(l)}},\qquad
    \chi_\perp = C_W \langle \sigma'^2\rangle_{K^{(l)}},

use the C_W of the step they govern, layer l+1 (layer L's own at l = L).

Residual MLPs (book appendix B; ``z^(l+1) = xi [b + W sigma(z^(l))] + gamma z^(l)``)
------------------------------------------------------------------------------------
With ``u = b + W sigma(z^(l))`` independent of nothing but layer l's
preactivations, and W, b of layer l+1 zero-mean and independent of layer l,
every cross term ``E[u z]`` vanishes: ``E[u_i z_j] = E[b_i] E[z_j] + sum_k
E[W_ik] E[sigma_k z_j] = 0``. Hence

.. math::
    K' = \xi^2 [C_b + C_W\langle\sigma_a\sigma_b\rangle_K] + \gamma^2 K .

For the NTK, ``dz'_i/dtheta = xi sum_j W_ij sigma'_j dz_j/dtheta + gamma dz_i/dtheta``
for the parameters of layers <= l, and ``xi`` times the plain derivative for
layer l+1's own. So ``H' = xi^2 [lambda_b + lambda_W sigma.sigma/n] delta
+ Y H Y^T`` with ``Y = xi W diag(sigma') + gamma I``. The cross terms
``xi gamma (W diag(sigma') H + H diag(sigma') W^T)`` are linear in W of
layer l+1 and average to zero, leaving

.. math::
    \Theta' = \xi^2 [\lambda_b + \lambda_W \langle\sigma_a\sigma_b\rangle_K
        + C_W\langle\sigma'_a\sigma'_b\rangle_K \Theta] + \gamma^2\Theta .

The susceptibilities are the derivatives of the kernel map:
``chi_par = xi^2 C_W <sigma'^2 + sigma sigma''> + gamma^2`` and
``chi_perp = xi^2 C_W <sigma'^2> + gamma^2``. The hyperparameters are layer
l+1's; at ``gamma = 0, xi = 1`` the code path is the plain one, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import gaussian
from ..gaussian import KernelNotPSDError
from ..network import MLP, validate_inputs

__all__ = [
    "LayerStatistics",
    "Flow",
    "flow",
    "kernel_step",
    "first_layer",
    "single_input_moments",
    "KernelNotPSDError",
]


@dataclass(frozen=True)
class LayerStatistics:
    """Statistics of one layer.

    Attributes
    ----------
    layer : int
        l, 1-based.
    K : float or ndarray (N, N)
        Kernel K^(l) (a float on the single-input path).
    Theta : float or ndarray (N, N)
        Frozen NTK mean Theta^(l).
    chi_parallel, chi_perp : float or ndarray (N,)
        Susceptibilities at K^(l) (per input's own K_aa on the multi-input path).
    extra : dict
        Statistics added by later modules (V, G1, ...), by the names of
        ``shared/NOTATION.md``.
    """

    layer: int
    K: np.ndarray | float
    Theta: np.ndarray | float
    chi_parallel: np.ndarray | float | None = None
    chi_perp: np.ndarray | float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict (arrays as nested lists)."""
        def conv(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, (np.floating, np.integer)):
                return v.item()
            return v
        d = {"layer": self.layer, "K": conv(self.K), "Theta": conv(self.Theta)}
        if self.chi_parallel is not None:
            d["chi_parallel"] = conv(self.chi_parallel)
            d["chi_perp"] = conv(self.chi_perp)
        for k, v in self.extra.items():
            d[k] = conv(v)
        return d


class Flow(tuple):
    """The statistics at every layer: a tuple of :class:`LayerStatistics`.

    ``flow.K`` stacks ``K`` over layers: shape (L,) single input or
    (L, N, N); likewise ``flow.Theta``, ``flow.chi_parallel``, ``flow.chi_perp``.
    """

    def __new__(cls, layers, mlp=None):
        obj = super().__new__(cls, layers)
        obj.mlp = mlp
        return obj

    def _stack(self, name):
        return np.array([getattr(s, name) if hasattr(s, name) else s.extra[name] for s in self])

    @property
    def K(self):
        return self._stack("K")

    @property
    def Theta(self):
        return self._stack("Theta")

    @property
    def chi_parallel(self):
        return self._stack("chi_parallel")

    @property
    def chi_perp(self):
        return self._stack("chi_perp")

    def __getitem__(self, item):
        if isinstance(item, str):
            return self._stack(item)
        return super().__getitem__(item)

    def to_dict(self) -> dict:
        return {"layers": [s.to_dict() for s in self]}


# ---------------------------------------------------------------------------
# single input
# ---------------------------------------------------------------------------

def single_input_moments(act, K):
    """``<sigma^2>, <sigma'^2>, <sigma sigma''>`` at a scalar or array K.

    Closed forms for scale-invariant activations; otherwise one evaluation of
    sigma, sigma', sigma'' on the engine's rule (:func:`pdlt.gaussian.expect`).
    """
    K = np.asarray(K, dtype=float)
    if act.scale_invariant is not None and act.name != "monomial":
        ap, am = act.scale_invariant
        m = 0.5 * (ap * ap + am * am)
        return m * K, m + 0.0 * K, 0.0 * K
    periodic_ok = act.period is None or K.ndim == 0 and K <= (0.5 * act.period) ** 2
    if K.ndim == 0 and 0 < K <= gaussian._K_FIXED_MAX and not act.kinks and periodic_ok:
        u, w = gaussian._fixed_rule()
        z = math.sqrt(float(K)) * u
        s, d1, d2 = act.sigma(z), act.d1(z), act.d2(z)
        return float((s * s) @ w), float((d1 * d1) @ w), float((s * d2) @ w)
    kw = dict(kinks=act.kinks, period=act.period)
    return (gaussian.expect(lambda z: act.sigma(z) ** 2, K, **kw),
            gaussian.expect(lambda z: act.d1(z) ** 2, K, **kw),
            gaussian.expect(lambda z: act.sigma(z) * act.d2(z), K, **kw))


def _res(new, old, xi2, gamma2):
    """``xi^2 new + gamma^2 old``; exactly ``new`` for the plain MLP (xi = 1, gamma = 0)."""
    if xi2 == 1.0 and gamma2 == 0.0:
        return new
    return xi2 * new + gamma2 * old


def _check_finite(value, layer, what):
    if not np.all(np.isfinite(value)):
        raise FloatingPointError(
            f"{what} overflowed at layer {layer} (the network is deep in the chaotic or "
            "exploding phase); reduce C_W or the depth, or initialize at criticality "
            "(pdlt.criticality)")


def _check_averages(values, layer, K, act):
    """Refuse non-finite Gaussian averages (an activation growing too fast to integrate)."""
    if not all(np.all(np.isfinite(v)) for v in values):
        Kmax = float(np.max(K))
        raise FloatingPointError(
            f"the Gaussian averages of activation {act.name!r} are not finite at layer {layer} "
            f"(K = {Kmax:.4g}): <sigma^2>_K or <sigma'^2>_K overflows float64, so K, the NTK "
            "and the susceptibilities there are not defined; the activation grows too fast "
            "for this depth and initialization (use fewer layers, a smaller C_W, or an "
            "activation of at most polynomial growth)")


def _single_flow(mlp: MLP, K1: float) -> Flow:
    act = mlp.activation
    C_b, C_W, lb, lW = mlp.C_b, mlp.C_W, mlp.lambda_b, mlp.lambda_W
    g2 = [g * g for g in mlp.gamma]
    x2 = [x * x for x in mlp.xi]
    L = mlp.depth
    # G0 = |x|^2 / n0 is fixed by K1 = C_b + C_W G0
    G0 = (K1 - C_b[0]) / C_W[0]
    if G0 < 0:
        raise ValueError(
            f"K1={K1} is smaller than C_b of the first layer ({C_b[0]}): the input "
            "norm |x|^2/n0 = (K1 - C_b)/C_W would be negative")
    K = float(K1)
    Theta = lb[0] + lW[0] * G0
    layers = []
    for l in range(1, L + 1):
        ss, dd, sdd = single_input_moments(act, K)
        nxt = l if l < L else L - 1
        cw_next = C_W[nxt]
        _check_averages((ss, dd, sdd), l, K, act)
        layers.append(LayerStatistics(l, K, float(Theta),
                                      _res(float(cw_next * (dd + sdd)), 1.0, x2[nxt], g2[nxt]),
                                      _res(float(cw_next * dd), 1.0, x2[nxt], g2[nxt])))
        if l == L:
            break
        K_new = _res(C_b[l] + C_W[l] * float(ss), K, x2[l], g2[l])
        Theta = _res(lb[l] + lW[l] * float(ss) + C_W[l] * float(dd) * Theta, Theta, x2[l], g2[l])
        _check_finite((K_new, Theta), l + 1, "the kernel")
        K = K_new
    return Flow(layers, mlp)


# ---------------------------------------------------------------------------
# N inputs
# ---------------------------------------------------------------------------

def first_layer(mlp: MLP, x):
    """``K^(1)`` and ``Theta^(1)`` for inputs x of shape (N, n0)."""
    x = validate_inputs(x, mlp.n0)
    G0 = x @ x.T / mlp.n0
    return mlp.C_b[0] + mlp.C_W[0] * G0, mlp.lambda_b[0] + mlp.lambda_W[0] * G0


def kernel_step(act, K, Theta, C_b, C_W, lambda_b, lambda_W, *, gamma=0.0, xi=1.0, rtol=1e-12):
    """One layer of the kernel and NTK recursions, N inputs.

    Parameters
    ----------
    act : Activation
    K, Theta : ndarray (N, N)
        K^(l), Theta^(l).
    C_b, C_W, lambda_b, lambda_W : float
        Hyperparameters of layer l+1.
    gamma, xi : float
        Residual hyperparameters of layer l+1 (module docstring):
        ``K' = xi^2 [C_b + C_W <sigma sigma>] + gamma^2 K`` and likewise Theta.

    Returns
    -------
    K_next, Theta_next : ndarray (N, N)
    """
    e = gaussian.pair_expectations(act, K, (("sigma", "sigma"), ("d1", "d1")), rtol=rtol)
    ss, dd = e[("sigma", "sigma")], e[("d1", "d1")]
    x2, g2 = float(xi) ** 2, float(gamma) ** 2
    return (_res(C_b + C_W * ss, K, x2, g2),
            _res(lambda_b + lambda_W * ss + C_W * dd * Theta, Theta, x2, g2))


def _chis(act, diag, C_W, xi2=1.0, gamma2=0.0):
    _, dd, sdd = single_input_moments(act, diag)
    return (_res(C_W * (np.asarray(dd) + np.asarray(sdd)), 1.0, xi2, gamma2),
            _res(C_W * np.asarray(dd), 1.0, xi2, gamma2))


def _multi_flow(mlp: MLP, x, rtol, susceptibilities=True) -> Flow:
    act = mlp.activation
    K, Theta = first_layer(mlp, x)
    L = mlp.depth
    layers = []
    for l in range(1, L + 1):
        nxt = l if l < L else L - 1
        cpar = cperp = None
        if susceptibilities:
            cpar, cperp = _chis(act, np.diag(K).copy(), mlp.C_W[nxt], mlp.xi[nxt] ** 2,
                                mlp.gamma[nxt] ** 2)
            _check_averages((cpar, cperp), l, np.diag(K), act)
        layers.append(LayerStatistics(l, K, Theta, cpar, cperp))
        if l == L:
            break
        try:
            K, Theta = kernel_step(act, K, Theta, mlp.C_b[l], mlp.C_W[l], mlp.lambda_b[l],
                                   mlp.lambda_W[l], gamma=mlp.gamma[l], xi=mlp.xi[l], rtol=rtol)
        except KernelNotPSDError as exc:
            raise KernelNotPSDError(
                f"kernel at layer {l} is not positive semi-definite: {exc}. Check the inputs "
                "for NaN or huge values, or move (C_b, C_W) toward criticality") from exc
        _check_finite(K, l + 1, "the kernel")
        _check_finite(Theta, l + 1, "the NTK")
    return Flow(layers, mlp)


def flow(mlp: MLP, x=None, *, K1=None, rtol=1e-12, susceptibilities=True) -> Flow:
    """Infinite-width kernel and NTK at every layer (the book's RG flow).

    Parameters
    ----------
    mlp : MLP
    x : array_like (N, n0), optional
        Inputs. The multi-input path returns (N, N) matrices.
    K1 : float, optional
        Single-input path: the first-layer kernel value ``K^(1)``; the input's
        ``|x|^2/n0 = (K1 - C_b)/C_W`` then fixes ``Theta^(1)``. Give exactly
        one of ``x`` and ``K1``. Runs 10,000 layers in about 0.1-0.3 s.
    rtol : float
        Accuracy target of the pair expectations (see
        :func:`pdlt.gaussian.pair_expectations`).

    susceptibilities : bool, default True
        Multi-input path: also compute ``chi_parallel``, ``chi_perp`` per
        input (three one-variable integrals per input and layer); ``False``
        leaves them ``None`` when only K and Theta are wanted.

    Returns
    -------
    Flow
        One :class:`LayerStatistics` per layer l = 1..L.

    Raises
    ------
    KernelNotPSDError
        If a layer's kernel is not positive semi-definite.
    FloatingPointError
        If the kernel overflows (deep exploding phase).

    Examples
    --------
    >>> import pdlt
    >>> f = pdlt.flow(pdlt.MLP(n0=1, width=10, depth=3, activation="relu", C_W=2.0), K1=1.0)
    >>> [round(s.K, 12) for s in f]
    [1.0, 1.0, 1.0]
    """
    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
    if (x is None) == (K1 is None):
        raise ValueError("give exactly one of x (inputs, shape (N, n0)) and K1 (single input)")
    if K1 is not None:
        K1 = float(K1)
        if not math.isfinite(K1) or K1 < 0:
            raise ValueError(f"K1 must be a finite variance >= 0; got {K1}")
        return _single_flow(mlp, K1)
    return _multi_flow(mlp, x, rtol, susceptibilities)
