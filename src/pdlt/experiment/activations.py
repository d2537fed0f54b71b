"""Torch versions of pdlt's activations: sigma and its first derivative.

Named activations map to closed forms (the same functions as
:mod:`pdlt.activations`, written in torch). A user's own activation needs a
torch twin: set ``act.torch_fn`` (an elementwise torch callable) on the
:class:`pdlt.Activation`; its derivative is then taken by autograd.
"""

from __future__ import annotations

import math

import torch

__all__ = ["TorchActivation", "torch_activation"]

_SQRT2 = math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TWO_OVER_SQRTPI = 2.0 / math.sqrt(math.pi)


class TorchActivation:
    """An elementwise torch nonlinearity with its derivative.

    Attributes
    ----------
    name : str
    sigma : callable
        ``sigma(z)`` for a tensor ``z`` (differentiable by ``torch.func``).
    d1 : callable
        ``sigma'(z)``; used by the NTK forward equation.
    """

    def __init__(self, name, sigma, d1):
        self.name = name
        self.sigma = sigma
        self.d1 = d1

    def __repr__(self):
        return f"TorchActivation({self.name!r})"


def _autograd_d1(fn):
    def d1(z):
        return torch.func.vmap(torch.func.grad(lambda t: fn(t)))(z.reshape(-1)).reshape(z.shape)
    return d1


def torch_activation(act) -> TorchActivation:
    """The torch twin of a :class:`pdlt.Activation`.

    Parameters
    ----------
    act : pdlt.Activation

    Returns
    -------
    TorchActivation

    Raises
    ------
    ValueError
        For a user-defined activation without a ``torch_fn`` attribute.
    """
    name = act.name
    p = act.parameters
    user_fn = getattr(act, "torch_fn", None)
    if user_fn is not None:
        return TorchActivation(name, user_fn, _autograd_d1(user_fn))
    if name == "relu":
        return TorchActivation(name, torch.relu, lambda z: (z > 0).to(z.dtype))
    if name == "leaky_relu":
        a = float(p.get("slope", 0.01))
        return TorchActivation(name, lambda z: torch.where(z > 0, z, a * z),
                               lambda z: torch.where(z > 0, torch.ones_like(z), a * torch.ones_like(z)))
    if name == "linear":
        return TorchActivation(name, lambda z: z, torch.ones_like)
    if name == "tanh":
        return TorchActivation(name, torch.tanh, lambda z: 1.0 - torch.tanh(z) ** 2)
    if name == "sin":
        return TorchActivation(name, torch.sin, torch.cos)
    if name == "erf":
        return TorchActivation(name, torch.erf, lambda z: _TWO_OVER_SQRTPI * torch.exp(-z * z))
    if name == "sigmoid":
        def ds(z):
            s = torch.sigmoid(z)
            return s * (1.0 - s)
        return TorchActivation(name, torch.sigmoid, ds)
    if name == "softplus":
        return TorchActivation(name, lambda z: torch.logaddexp(z, torch.zeros_like(z)), torch.sigmoid)
    if name in ("swish", "silu"):
        def dswish(z):
            s = torch.sigmoid(z)
            return s + z * s * (1.0 - s)
        return TorchActivation(name, lambda z: z * torch.sigmoid(z), dswish)
    if name == "gelu":
        def phi_cdf(z):
            return 0.5 * (1.0 + torch.erf(z / _SQRT2))
        return TorchActivation(name, lambda z: z * phi_cdf(z),
                               lambda z: phi_cdf(z) + z * torch.exp(-0.5 * z * z) * _INV_SQRT2PI)
    if name == "elu":
        alpha = float(p.get("alpha", 1.0))
        return TorchActivation(
            name, lambda z: torch.where(z > 0, z, alpha * torch.expm1(torch.clamp(z, max=0.0))),
            lambda z: torch.where(z > 0, torch.ones_like(z), alpha * torch.exp(torch.clamp(z, max=0.0))))
    if name == "monomial":
        k = int(p["p"])
        if k == 1:
            return TorchActivation(name, lambda z: z, torch.ones_like)
        return TorchActivation(name, lambda z: z ** k, lambda z: k * z ** (k - 1))
    raise ValueError(
        f"activation {name!r} has no torch equivalent: pdlt.experiment needs one to run real "
        "networks. Set a torch version on it, e.g. "
        "`object.__setattr__(act, 'torch_fn', lambda z: torch.tanh(z) * z)`, or use a named "
        "activation")
