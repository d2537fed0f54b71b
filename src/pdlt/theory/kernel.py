r"""The kernel and the frozen NTK: one layer step, N inputs (book eqs. 4.118, 9.4).

.. math::
    K^{(1)}_{ab} = C_b + C_W \frac{1}{n_0}\sum_j x_{j;a} x_{j;b},\qquad
    K^{(l+1)} = \xi^2 [C_b + C_W \langle \sigma_a \sigma_b\rangle_{K^{(l)}}] + \gamma^2 K^{(l)},

    \Theta^{(l+1)} = \xi^2 [\lambda_b + \lambda_W\langle\sigma_a\sigma_b\rangle
        + C_W \langle\sigma'_a\sigma'_b\rangle \Theta^{(l)}] + \gamma^2\Theta^{(l)},

with the hyperparameters of layer l+1 (``gamma = 0, xi = 1`` for a plain
layer), and the susceptibilities ``chi_parallel = xi^2 C_W <sigma'^2 + sigma
sigma''> + gamma^2``, ``chi_perp = xi^2 C_W <sigma'^2> + gamma^2`` at each
input's own variance. Derivation: ``docs/derivations/kernel.rst``. The fold
over depth is :func:`pdlt.statistics` (and :func:`pdlt.flow`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import gaussian
from ..gaussian import KernelNotPSDError
from ..network import MLP, validate_inputs

__all__ = ["LayerHyper", "first_layer", "kernel_step", "kernel_update", "kernel_pairs",
           "single_input_moments", "first_layer_kernel", "kernel_fold", "KernelNotPSDError"]


@dataclasses.dataclass(frozen=True)
class LayerHyper:
    """The hyperparameters of the step l -> l+1: layer l+1's, and ``ratio = n_l / n_{l-1}``."""

    C_b: float
    C_W: float
    lambda_b: float
    lambda_W: float
    gamma: float = 0.0
    xi: float = 1.0
    ratio: float = 1.0

    @classmethod
    def of(cls, mlp, l):
        """Hyperparameters of the step from layer l to l+1 (l = 1..L-1)."""
        return cls(mlp.C_b[l], mlp.C_W[l], mlp.lambda_b[l], mlp.lambda_W[l], mlp.gamma[l],
                   mlp.xi[l], mlp.widths[l] / mlp.widths[l - 1])


def single_input_moments(act, K):
    """``<sigma^2>, <sigma'^2>, <sigma sigma''>`` at a scalar or array K (one variable).

    Closed forms for scale-invariant activations; otherwise one evaluation of
    sigma, sigma', sigma'' on the engine's fixed rule when it applies
    (:func:`pdlt.gaussian.expect`, error < 1e-14), else three calls of it.
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
        s, d1, d2 = act.values(z)          # one pass (bitwise the three calls)
        return float((s * s) @ w), float((d1 * d1) @ w), float((s * d2) @ w)
    kw = dict(kinks=act.kinks, period=act.period, periodic=True)   # functions of sigma only
    return (gaussian.expect(lambda z: act.sigma(z) ** 2, K, **kw),
            gaussian.expect(lambda z: act.d1(z) ** 2, K, **kw),
            gaussian.expect(lambda z: act.sigma(z) * act.d2(z), K, **kw))


def kernel_pairs(act, K, rtol=1e-12):
    """``<sigma_a sigma_b>_K`` and ``<sigma'_a sigma'_b>_K`` (N, N); one input by the fast rule."""
    if K.shape[0] == 1:
        ss, dd, _ = single_input_moments(act, float(K[0, 0]))
        return np.array([[ss]]), np.array([[dd]])
    e = gaussian.pair_expectations(act, K, (("sigma", "sigma"), ("d1", "d1")), rtol=rtol)
    return e[("sigma", "sigma")], e[("d1", "d1")]


def _res(new, old, hp):
    """``xi^2 new + gamma^2 old``; exactly ``new`` for a plain layer."""
    if hp.xi == 1.0 and hp.gamma == 0.0:
        return new
    return hp.xi ** 2 * new + hp.gamma ** 2 * old


def kernel_update(S, PP, K, Theta, hp):
    r"""``K^(l+1), Theta^(l+1)`` from the pair averages at layer l (book eqs. 4.118, 9.4).

    ``K' = xi^2 [C_b + C_W <s s>] + gamma^2 K`` and
    ``Theta' = xi^2 [lambda_b + lambda_W <s s> + C_W <p p> Theta] + gamma^2 Theta``
    (``docs/derivations/kernel.rst``).
    """
    return (_res(hp.C_b + hp.C_W * S, K, hp),
            _res(hp.lambda_b + hp.lambda_W * S + hp.C_W * PP * Theta, Theta, hp))




def first_layer(mlp: MLP, x):
    """``K^(1)`` and ``Theta^(1)`` (N, N) for inputs x of shape (N, n0)."""
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
    C_b, C_W, lambda_b, lambda_W, gamma, xi : float
        Hyperparameters of layer l+1.
    rtol : float
        Accuracy of the pair expectations (:func:`pdlt.gaussian.pair_expectations`).

    Returns
    -------
    K_next, Theta_next : ndarray (N, N)
    """
    K = np.asarray(K, dtype=float)
    S, PP = kernel_pairs(act, K, rtol)
    return kernel_update(S, PP, K, np.asarray(Theta, dtype=float),
                         LayerHyper(C_b, C_W, lambda_b, lambda_W, gamma, xi))


def first_layer_kernel(mlp: MLP, x=None, K1=None):
    """``K^(1)``, ``Theta^(1)`` (N, N) from inputs x (N, n0), or (1, 1) from one input's ``K1``."""
    if K1 is not None and x is None:
        K1 = float(K1)
        if not math.isfinite(K1) or K1 < 0:
            raise ValueError(f"K1 must be a finite variance >= 0; got {K1}")
        G0 = (K1 - mlp.C_b[0]) / mlp.C_W[0]
        if G0 < 0:
            raise ValueError(
                f"K1={K1} is smaller than C_b of the first layer ({mlp.C_b[0]}): the input "
                "norm |x|^2/n0 = (K1 - C_b)/C_W would be negative")
        K, Theta = np.array([[K1]]), np.array([[mlp.lambda_b[0] + mlp.lambda_W[0] * G0]])
    else:
        K, Theta = first_layer(mlp, x)
    return K, Theta


def _check_finite(value, layer, what):
    if not np.all(np.isfinite(value)):
        raise FloatingPointError(
            f"{what} overflowed at layer {layer} (the network is deep in the chaotic or "
            "exploding phase); reduce C_W or the depth, or initialize at criticality "
            "(pdlt.criticality)")


def _check_averages(values, layer, K, act):
    if not all(np.all(np.isfinite(v)) for v in values):
        raise FloatingPointError(
            f"the Gaussian averages of activation {act.name!r} are not finite at layer {layer} "
            f"(K = {float(np.max(K)):.4g}): <sigma^2>_K or <sigma'^2>_K overflows float64, so "
            "K, the NTK and the susceptibilities there are not defined; the activation grows "
            "too fast for this depth and initialization (use fewer layers, a smaller C_W, or "
            "an activation of at most polynomial growth)")


def _merged(K):
    """True if every entry of the (N, N) kernel is the same number: merged inputs.

    Then every pair average is the one-variable average at that K (the inputs
    coincide, ``rho = 1`` for every pair), the next K is again one number, and
    so on: merged inputs are a fixed point of the N-input map, which the fold
    then steps as one input (:func:`kernel_fold`). Deep critical networks
    merge distinct inputs to round-off (swish's reference problem after ~10^3
    layers): once the pair path returns the diagonal for ``K_ab = K_aa = K_bb``
    (the collinear rule does, bitwise), the kernel stays merged.
    """
    return K.min() == K.max()


def kernel_fold(mlp: MLP, K, Theta, *, rtol=1e-12, susceptibilities=True):
    """K, Theta (and chi_parallel, chi_perp) at every layer from the first layer's.

    Parameters
    ----------
    mlp : MLP
    K, Theta : ndarray (N, N)
        ``K^(1)``, ``Theta^(1)`` (:func:`first_layer_kernel`).
    rtol : float
        Accuracy of the pair expectations.
    susceptibilities : bool
        Also return ``chi_parallel``, ``chi_perp`` (L, N); else None.

    Returns
    -------
    Ks, Thetas : ndarray (L, N, N)
    chi_parallel, chi_perp : ndarray (L, N) or None

    Notes
    -----
    One input runs the same :func:`kernel_update` on floats, with the three
    one-variable moments of :func:`single_input_moments` serving both the
    step and the susceptibilities (10,000 layers in well under a second).
    N inputs whose kernel has merged (:func:`_merged`: every entry the same
    number) take their pair averages from the same one-variable moments: the
    exact value for coincident inputs, not an approximation; a kernel with
    two entries that differ in the last bit takes the pair path
    (``tests/theory/test_kernel_merged.py``).
    """
    act, L, N = mlp.activation, mlp.depth, K.shape[0]
    hps = [LayerHyper.of(mlp, l) for l in range(max(L, 1))]
    Ks, Ths = np.empty((L, N, N)), np.empty((L, N, N))
    cpar = cperp = None
    if susceptibilities:
        cpar, cperp = np.empty((L, N)), np.empty((L, N))
    one = N == 1
    if one:
        K, Theta = float(K[0, 0]), float(Theta[0, 0])
    # overflow of a fast-growing sigma becomes a non-finite average, which the checks
    # below turn into one clear error (no numpy RuntimeWarnings on the way)
    with np.errstate(over="ignore", invalid="ignore"):
        for l in range(1, L + 1):
            Ks[l - 1], Ths[l - 1] = K, Theta
            diag = K if one else np.diag(K).copy()
            if one:
                # the three one-variable moments serve the step and the susceptibilities
                ss, dd, sdd = single_input_moments(act, K)
            if susceptibilities:
                hp = hps[l if l < L else L - 1]          # chi governs the next step
                if not one:
                    _, dd, sdd = single_input_moments(act, diag)
                cpar[l - 1] = _res(hp.C_W * (np.asarray(dd) + np.asarray(sdd)), 1.0, hp)
                cperp[l - 1] = _res(hp.C_W * np.asarray(dd), 1.0, hp)
                _check_averages((cpar[l - 1], cperp[l - 1]), l, diag, act)
            if l == L:
                break
            if one:
                S, PP = ss, dd
                if not (math.isfinite(S) and math.isfinite(PP)):
                    _check_averages((S, PP), l, K, act)
            elif _merged(K):
                # coincident inputs (every entry of K equal: the fold's fixed point of
                # merged inputs, reached to round-off by deep critical networks): each pair
                # is the one-variable average at that K, and stays so at every later layer
                ss, dd, _ = single_input_moments(act, float(K[0, 0]))
                S, PP = np.full((N, N), ss), np.full((N, N), dd)
                _check_averages((S, PP), l, K, act)
            else:
                try:
                    S, PP = kernel_pairs(act, K, rtol)
                except KernelNotPSDError as exc:
                    raise KernelNotPSDError(
                        f"kernel at layer {l} is not positive semi-definite: {exc}. Check the "
                        "inputs for NaN or huge values, or move (C_b, C_W) toward criticality"
                    ) from exc
                _check_averages((S, PP), l, K, act)
            K, Theta = kernel_update(S, PP, K, Theta, hps[l])
            if not (one and math.isfinite(K) and math.isfinite(Theta)):
                _check_finite(K, l + 1, "the kernel")
                _check_finite(Theta, l + 1, "the NTK")
    return Ks, Ths, cpar, cperp
