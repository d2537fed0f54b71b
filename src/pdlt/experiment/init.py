"""Critical initialization of PyTorch models (``pdlt.torch.init_critical_``).

Every ``nn.Linear`` gets weights ``W_ij ~ N(0, C_W / fan_in)`` and biases
``b_i ~ N(0, C_b)`` at the critical ``(C_b, C_W)`` of the model's activation
(:func:`pdlt.theory.criticality.criticality`), the book's initialization
(``shared/NOTATION.md``) in place, like the ``torch.nn.init`` functions.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

from ..activations import Activation, activation as _activation
from ..theory.criticality import NoCriticalPointError, criticality

__all__ = ["init_critical_", "detect_activation"]


def _np_softplus(beta):
    def softplus(z):
        z = np.asarray(z, dtype=float)
        return np.logaddexp(0.0, beta * z) / beta
    softplus.__name__ = f"softplus_beta{beta:g}"
    return softplus


def _np_gelu_tanh(z):
    z = np.asarray(z, dtype=float)
    return 0.5 * z * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z ** 3)))


def _spec_of_module(mod):
    """A pdlt activation name for a torch module, a numpy callable, or None."""
    if isinstance(mod, nn.ReLU):
        return "relu"
    if isinstance(mod, nn.LeakyReLU):
        return f"leaky_relu({float(mod.negative_slope)!r})"
    if isinstance(mod, nn.Tanh):
        return "tanh"
    if isinstance(mod, nn.GELU):
        return "gelu" if mod.approximate == "none" else _GELU_TANH
    if isinstance(mod, nn.SiLU):
        return "swish"
    if isinstance(mod, nn.ELU):
        return f"elu({float(mod.alpha)!r})"
    if isinstance(mod, nn.Sigmoid):
        return "sigmoid"
    if isinstance(mod, nn.Softplus):
        return "softplus" if float(mod.beta) == 1.0 else _softplus_activation(float(mod.beta))
    if isinstance(mod, nn.Identity):
        return "linear"
    return None


def _from_module(mod) -> Activation | None:
    """The pdlt activation of a torch activation module, or None if not one."""
    spec = _spec_of_module(mod)
    return None if spec is None else _activation(spec)


_GELU_TANH = Activation.from_callable(_np_gelu_tanh, name="gelu_tanh")


@functools.lru_cache(maxsize=16)
def _softplus_activation(beta):
    return Activation.from_callable(_np_softplus(beta))


@functools.lru_cache(maxsize=32)
def _criticality_of(spec):
    return criticality(spec)


_ACTIVATION_TYPES = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.ELU, nn.Sigmoid,
                     nn.Softplus, nn.Identity, nn.Hardtanh, nn.Mish, nn.SELU, nn.CELU,
                     nn.Softsign, nn.PReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid,
                     nn.LogSigmoid, nn.Tanhshrink)


def detect_activation(model: nn.Module) -> Activation:
    """The single activation used by ``model``'s activation modules.

    Raises
    ------
    ValueError
        If the model has no activation module, several different ones, or one
        pdlt has no numpy twin for: pass ``activation=`` explicitly.
    """
    return _activation(_spec_of_module(_detect_module(model)))


def _detect_module(model: nn.Module):
    """The single activation used by ``model``'s activation modules.

    Raises
    ------
    ValueError
        If the model has no activation module (its forward may call
        ``torch.nn.functional`` directly), several different ones, or one
        pdlt has no numpy twin for: pass ``activation=`` explicitly.
    """
    found = {}
    for mod in model.modules():
        if isinstance(mod, _ACTIVATION_TYPES):
            key = repr(mod)
            found.setdefault(key, mod)
    if not found:
        raise ValueError(
            "init_critical_: no activation module (nn.ReLU, nn.Tanh, nn.GELU, ...) found in the "
            "model; pass activation='tanh' (a name, a pdlt.Activation or a numpy callable)")
    # nn.Identity is an activation only when nothing else is
    real = {k: m for k, m in found.items() if not isinstance(m, nn.Identity)} or found
    if len(real) > 1:
        raise ValueError(
            f"init_critical_: the model uses several activations ({', '.join(sorted(real))}); "
            "critical initialization needs one: pass activation= explicitly")
    (key, mod), = real.items()
    if _spec_of_module(mod) is None:
        raise ValueError(
            f"init_critical_: pdlt has no numpy twin for {key}; pass activation= as a vectorized "
            "numpy callable computing the same function")
    return mod


def _generator(generator, seed):
    if generator is not None and seed is not None:
        raise ValueError("give either generator or seed, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
        return generator
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


@torch.no_grad()
def init_critical_(model: nn.Module, activation=None, *, generator=None, seed=None,
                   return_criticality=False, gamma=0.0, xi=1.0):
    """Initialize every ``nn.Linear`` of ``model`` at criticality, in place.

    Weights ``W ~ N(0, C_W / fan_in)`` and biases ``b ~ N(0, C_b)`` with the
    critical ``(C_b, C_W)`` of the activation (book ch. 5). All layers, the
    first included, use the same ``(C_b, C_W)`` (``shared/NOTATION.md``).

    Parameters
    ----------
    model : torch.nn.Module
        Typically an ``nn.Sequential`` MLP.
    activation : str, pdlt.Activation, numpy callable or nn.Module, optional
        Default: detected from the model's activation modules (``nn.ReLU``,
        ``nn.LeakyReLU(a)``, ``nn.Tanh``, ``nn.GELU`` (exact or tanh form),
        ``nn.SiLU``, ``nn.ELU(alpha)``, ``nn.Sigmoid``, ``nn.Softplus(beta)``,
        ``nn.Identity``).
    generator : torch.Generator, optional
        Source of randomness (a CPU or device generator).
    seed : int, optional
        Seed for a fresh CPU generator (alternative to ``generator``).
    return_criticality : bool
        Also return the :class:`~pdlt.theory.criticality.Criticality` used.
    gamma, xi : float, default 0 and 1
        Residual strength of a model whose forward computes
        ``z' = xi [b + W sigma(z)] + gamma z`` in its residual layers (book
        appendix B). As in :class:`pdlt.MLP`, the residual layers are the
        ``nn.Linear`` layers after the first whose input and output widths
        agree; they get ``(1 - gamma^2)/xi^2`` times the plain critical
        ``(C_b, C_W)``, and the other layers (the first, a plain output layer)
        keep the plain critical values, so every layer maps K* to K*
        (:mod:`pdlt.theory.residual`, "the convention"; ``|gamma| < 1``).

    Returns
    -------
    model, or (model, Criticality)

    Raises
    ------
    NoCriticalPointError
        If the activation has no critical point (sigmoid, softplus, ...).
    ValueError
        If the activation cannot be detected, or the model has no ``nn.Linear``.

    Examples
    --------
    >>> import torch.nn as nn
    >>> from pdlt.torch import init_critical_
    >>> net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> _ = init_critical_(net, seed=0)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if activation is None:
        spec = _spec_of_module(_detect_module(model))
    elif isinstance(activation, nn.Module):
        spec = _spec_of_module(activation)
        if spec is None:
            raise ValueError(f"pdlt has no numpy twin for {activation!r}; pass a numpy callable")
    else:
        spec = activation
    # named activations and detected modules are cached; other callables are solved afresh
    res = _criticality_of(spec) if isinstance(spec, (str, Activation)) else criticality(spec)
    if res.universality_class == "none":
        raise NoCriticalPointError(f"activation {res.activation!r}: {res.reason}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("init_critical_: the model has no nn.Linear layer to initialize")
    scale = [1.0] * len(linears)
    if gamma != 0.0 or xi != 1.0:
        from ..theory.residual import _gamma_iv
        gamma, xi = _gamma_iv(gamma, xi)
        f = (1.0 - gamma * gamma) / (xi * xi)
        scale = [f if i > 0 and lin.in_features == lin.out_features else 1.0
                 for i, lin in enumerate(linears)]
    g = _generator(generator, seed)
    for lin, f in zip(linears, scale):
        fan_in = lin.weight.shape[1]
        w = torch.randn(lin.weight.shape, generator=g, device=g.device, dtype=lin.weight.dtype)
        lin.weight.copy_(w * math.sqrt(f * res.C_W / fan_in))
        if lin.bias is not None:
            b = torch.randn(lin.bias.shape, generator=g, device=g.device, dtype=lin.bias.dtype)
            lin.bias.copy_(b * math.sqrt(f * res.C_b))
    return (model, res) if return_criticality else model
