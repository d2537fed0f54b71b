r"""Read a user's PyTorch model as the MLP of the theory (``pdlt.torch.diagnose``).

:func:`read_architecture` turns an ``nn.Module`` into an :class:`Architecture`:
the ``nn.Linear`` layers with their widths and biases, the activation
between them, and residual blocks with their ``gamma``, ``xi``. It reads the
module's computation graph with ``torch.fx`` (``nn.Sequential``, nested
containers and custom ``forward`` methods that are straight chains), and
then *checks* the reading: the MLP it describes, run with the model's own
parameters by :mod:`pdlt.experiment.ntk`, must reproduce the model's output
on random probe inputs to float64 round-off (:func:`check_forward`).

What the theory covers, and what is refused
-------------------------------------------
Accepted: ``nn.Linear`` (bias or not), one activation module between
consecutive layers (``nn.ReLU``, ``nn.LeakyReLU(a)``, ``nn.Tanh``,
``nn.GELU``, ``nn.SiLU``, ``nn.ELU(alpha)``, ``nn.Sigmoid``,
``nn.Softplus(beta)``; or the same functions from ``torch``/``torch.nn.
functional``), ``nn.Identity``, and residual blocks in the book's form
(appendix B; ``shared/NOTATION.md``)

.. math:: z^{(l+1)} = \gamma\, z^{(l)} + \xi\,[b + W \sigma(z^{(l)})],

written as :class:`Residual` ``(nn.Sequential(act, nn.Linear(n, n)),
gamma=, xi=)`` or, with ``gamma = xi = 1``, as ``z + block(z)`` in a custom
``forward``. Two Linear layers without an activation between them are the
linear activation there.

Refused with :class:`UnsupportedModelError` naming the module: convolutions,
attention and transformer layers, normalization layers, dropout, recurrent
layers, embeddings, pooling, any other module or operation, a model whose
activation differs between layers (``pdlt.MLP`` carries one activation),
a final activation after the last Linear (the theory describes the
preactivations ``z^(L)``), residual connections around anything but
``(activation, Linear)``, and parameters outside ``nn.Linear`` layers.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..activations import activation as _activation
from ..network import MLP
from .init import _spec_of_module

__all__ = ["Residual", "UnsupportedModelError", "Architecture", "LayerInfo", "InitEstimate",
           "read_architecture", "estimate_init", "check_forward", "model_parameters"]


class UnsupportedModelError(ValueError):
    """The model has a part the effective theory of MLPs does not cover."""


class Residual(nn.Module):
    r"""A residual block in the book's form: ``gamma * z + xi * block(z)``.

    ``block`` is ``nn.Sequential(activation, nn.Linear(n, n))``, so that
    ``z^(l+1) = gamma z^(l) + xi [b + W sigma(z^(l))]`` (book appendix B;
    :class:`pdlt.MLP` ``gamma``, ``xi``).

    Parameters
    ----------
    block : nn.Module
        The residual branch: an activation module followed by a square
        ``nn.Linear``.
    gamma : float, default 1
        Weight of the skip connection.
    xi : float, default 1
        Weight of the branch, > 0.

    Examples
    --------
    >>> import torch.nn as nn
    >>> from pdlt.torch import Residual
    >>> net = nn.Sequential(nn.Linear(3, 16),
    ...                     Residual(nn.Sequential(nn.Tanh(), nn.Linear(16, 16)), gamma=0.7),
    ...                     nn.Tanh(), nn.Linear(16, 1))
    """

    def __init__(self, block: nn.Module, gamma: float = 1.0, xi: float = 1.0):
        super().__init__()
        if not isinstance(block, nn.Module):
            raise TypeError(f"block must be an nn.Module; got {type(block).__name__}")
        gamma, xi = float(gamma), float(xi)
        if not math.isfinite(gamma):
            raise ValueError(f"gamma must be finite; got {gamma}")
        if not (math.isfinite(xi) and xi > 0):
            raise ValueError(f"xi must be a finite number > 0; got {xi}")
        self.block = block
        self.gamma = gamma
        self.xi = xi

    def forward(self, z):
        """``gamma * z + xi * block(z)``."""
        return self.gamma * z + self.xi * self.block(z)

    def extra_repr(self):
        return f"gamma={self.gamma:g}, xi={self.xi:g}"


# ---------------------------------------------------------------------------
# what is refused, by kind
# ---------------------------------------------------------------------------

def _types(*names, module=nn):
    return tuple(getattr(module, n) for n in names if hasattr(module, n))


_REFUSED = (
    ("a convolution", (nn.modules.conv._ConvNd,)),
    ("attention / a transformer layer",
     _types("MultiheadAttention", "Transformer", "TransformerEncoder", "TransformerDecoder",
            "TransformerEncoderLayer", "TransformerDecoderLayer")),
    ("a normalization layer",
     (nn.modules.batchnorm._NormBase,)
     + _types("LayerNorm", "GroupNorm", "LocalResponseNorm", "RMSNorm", "CrossMapLRN2d")),
    ("dropout", (nn.modules.dropout._DropoutNd,)),
    ("a recurrent layer", (nn.RNNBase, nn.RNNCellBase)),
    ("an embedding", _types("Embedding", "EmbeddingBag")),
    ("pooling", _types("MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d",
                       "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d",
                       "AdaptiveMaxPool1d", "AdaptiveMaxPool2d")),
    ("a bilinear layer", _types("Bilinear", "LazyLinear")),
)

_ACTIVATION_MODULES = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.ELU, nn.Sigmoid,
                       nn.Softplus, nn.Hardtanh, nn.Mish, nn.SELU, nn.CELU, nn.Softsign,
                       nn.PReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid,
                       nn.Tanhshrink)


def _refusal_kind(mod):
    for kind, types in _REFUSED:
        if types and isinstance(mod, types):
            return kind
    return None


def _refuse(path, mod, why):
    name = path or "<model>"
    raise UnsupportedModelError(
        f"module {name!r} ({type(mod).__name__}) is {why}; the effective theory (and "
        "pdlt.torch) covers MLPs of nn.Linear layers, one activation, and residual blocks "
        "z + f(z), so pdlt refuses rather than approximating")


# ---------------------------------------------------------------------------
# reading the graph
# ---------------------------------------------------------------------------

class _Tracer(torch.fx.Tracer):
    """Stops at Linear, activation, Residual and refused modules; traces through the rest."""

    def is_leaf_module(self, m, qualname):
        if isinstance(m, (nn.Linear, nn.Identity, Residual) + _ACTIVATION_MODULES):
            return True
        if _refusal_kind(m) is not None:
            return True
        return super().is_leaf_module(m, qualname)


def _function_spec(node):
    """An activation spec for a call_function / call_method node, or None."""
    t, kw = node.target, node.kwargs
    if node.op == "call_method":
        names = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
        return names.get(t)
    if t in (torch.relu, F.relu):
        return "relu"
    if t in (torch.tanh, F.tanh):
        return "tanh"
    if t in (torch.sigmoid, F.sigmoid):
        return "sigmoid"
    if t is F.silu:
        return "swish"
    if t is F.gelu:
        approx = kw.get("approximate", node.args[1] if len(node.args) > 1 else "none")
        return _spec_of_module(nn.GELU(approximate=approx))
    if t is F.leaky_relu:
        slope = kw.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
        return _spec_of_module(nn.LeakyReLU(slope))
    if t is F.elu:
        alpha = kw.get("alpha", node.args[1] if len(node.args) > 1 else 1.0)
        return _spec_of_module(nn.ELU(alpha))
    return None


def _op_name(node):
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", repr(t))


def _tokens(module, prefix):
    """The chain of (kind, payload, path) tokens of a module's forward pass.

    kind is "L" (payload the nn.Linear), "A" (an activation spec) or "R"
    (payload ``(activation spec, nn.Linear, gamma, xi, inner path)``).
    """
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds
        raise UnsupportedModelError(
            f"cannot read the forward pass of {prefix or '<model>'!r} "
            f"({type(module).__name__}) with torch.fx ({type(exc).__name__}: {exc}); write the "
            "model as an nn.Sequential of nn.Linear, activation modules and "
            "pdlt.torch.Residual blocks") from exc
    tokens = []
    position = {}  # fx node -> number of tokens before it (its place in the chain)
    current = None

    def sub(path):
        return f"{prefix}.{path}" if prefix else path

    def chain_input(node, what):
        args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if len(args) != 1 or args[0] is not current or any(
                isinstance(v, torch.fx.Node) for v in node.kwargs.values()):
            raise UnsupportedModelError(
                f"{what} in {prefix or '<model>'!r} does not act on the output of the previous "
                "layer alone: pdlt reads chains of layers (plus residual blocks z + f(z)) only")

    for node in graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                raise UnsupportedModelError(
                    f"{prefix or '<model>'!r} ({type(module).__name__}) takes several inputs; "
                    "pdlt reads models with one input x")
            current = node
            position[node] = len(tokens)
        elif node.op == "get_attr":
            raise UnsupportedModelError(
                f"{prefix or '<model>'!r} uses the tensor {node.target!r} directly in its "
                "forward pass; only nn.Linear parameters are covered")
        elif node.op == "call_module":
            mod = module.get_submodule(node.target)
            path = sub(node.target)
            kind = _refusal_kind(mod)
            if kind is not None:
                _refuse(path, mod, kind)
            chain_input(node, f"module {path!r}")
            if isinstance(mod, nn.Linear):
                tokens.append(("L", mod, path))
            elif isinstance(mod, nn.Identity):
                pass
            elif isinstance(mod, Residual):
                inner = _tokens(mod.block, f"{path}.block")
                if [t[0] for t in inner] != ["A", "L"]:
                    raise UnsupportedModelError(
                        f"residual block {path!r}: its branch must be (activation, nn.Linear), "
                        "the book's z + W sigma(z) + b; got "
                        f"{' -> '.join(_token_text(t) for t in inner) or 'nothing'}")
                tokens.append(("R", (inner[0][1], inner[1][1], mod.gamma, mod.xi), inner[1][2]))
            elif isinstance(mod, _ACTIVATION_MODULES):
                spec = _spec_of_module(mod)
                if spec is None:
                    _refuse(path, mod, "an activation pdlt has no numpy twin for")
                tokens.append(("A", spec, path))
            else:
                _refuse(path, mod, "not a layer the theory covers")
            current = node
            position[node] = len(tokens)
        elif node.op in ("call_function", "call_method"):
            spec = _function_spec(node)
            if spec is not None:
                chain_input(node, f"{_op_name(node)}()")
                tokens.append(("A", spec, f"{prefix or '<model>'}:{_op_name(node)}"))
                current = node
                position[node] = len(tokens)
                continue
            if node.target in (operator.add, torch.add) and len(node.args) == 2 and not node.kwargs:
                a, b = node.args
                if b is current and a in position:
                    skip = a
                elif a is current and b in position:
                    skip = b
                else:
                    skip = None
                if skip is not None:
                    inner = tokens[position[skip]:]
                    if [t[0] for t in inner] != ["A", "L"]:
                        raise UnsupportedModelError(
                            f"the residual connection in {prefix or '<model>'!r} wraps "
                            f"{' -> '.join(_token_text(t) for t in inner) or 'nothing'}; pdlt "
                            "covers z + [b + W sigma(z)] (activation, then nn.Linear): use "
                            "pdlt.torch.Residual(nn.Sequential(act, nn.Linear(n, n)), gamma, xi)")
                    del tokens[position[skip]:]
                    tokens.append(("R", (inner[0][1], inner[1][1], 1.0, 1.0), inner[1][2]))
                    current = node
                    position[node] = len(tokens)
                    continue
            raise UnsupportedModelError(
                f"the operation {_op_name(node)!r} in the forward pass of "
                f"{prefix or '<model>'!r} is not covered by the theory (pdlt reads chains of "
                "nn.Linear and activations, and residual blocks z + f(z) or "
                "pdlt.torch.Residual(block, gamma, xi)); refusing rather than approximating")
        elif node.op == "output":
            out = node.args[0]
            if out is not current:
                raise UnsupportedModelError(
                    f"{prefix or '<model>'!r} does not return the output of its last layer; "
                    "pdlt reads models that map x to one output tensor")
    return tokens


def _token_text(t):
    if t[0] == "L":
        return f"Linear({t[1].in_features}, {t[1].out_features})"
    if t[0] == "A":
        return str(t[1])
    return "Residual"


# ---------------------------------------------------------------------------
# the architecture
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerInfo:
    """One layer ``l`` of the model as the theory sees it.

    ``path`` is the module name of its ``nn.Linear``; ``gamma``, ``xi`` its
    residual hyperparameters (0 and 1 for a plain layer).
    """

    layer: int
    path: str
    n_in: int
    n_out: int
    bias: bool
    gamma: float = 0.0
    xi: float = 1.0

    def to_dict(self) -> dict:
        return dict(layer=self.layer, path=self.path, n_in=self.n_in, n_out=self.n_out,
                    bias=self.bias, gamma=self.gamma, xi=self.xi)


@dataclass(frozen=True)
class Architecture:
    """A PyTorch model read as an MLP: layers, activation, residual blocks.

    Attributes
    ----------
    layers : tuple of LayerInfo
        Layers ``l = 1..L``.
    activation : str or pdlt.Activation
        The activation spec shared by all layers (``"linear"`` for a deep
        linear network).
    linears : tuple of nn.Linear
        The model's own Linear modules, in layer order (not copied).
    """

    layers: tuple
    activation: object
    linears: tuple = field(repr=False, compare=False)

    @property
    def widths(self) -> tuple:
        """``(n_0, n_1, ..., n_L)``."""
        return (self.layers[0].n_in,) + tuple(l.n_out for l in self.layers)

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def activation_name(self) -> str:
        return _activation(self.activation).name

    def to_mlp(self, C_b=0.0, C_W=1.0, lambda_b=1.0, lambda_W=1.0) -> MLP:
        """The :class:`pdlt.MLP` of this architecture with the given hyperparameters."""
        gam = tuple(l.gamma for l in self.layers)
        xis = tuple(l.xi for l in self.layers)
        return MLP(n0=self.widths[0], widths=self.widths[1:-1], n_out=self.widths[-1],
                   activation=self.activation, C_b=C_b, C_W=C_W, lambda_b=lambda_b,
                   lambda_W=lambda_W, gamma=gam, xi=xis)

    def to_dict(self) -> dict:
        return dict(activation=self.activation_name, widths=list(self.widths),
                    layers=[l.to_dict() for l in self.layers])


def read_architecture(model: nn.Module) -> Architecture:
    """Read a PyTorch model as an MLP (module docstring: what is covered).

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    Architecture

    Raises
    ------
    UnsupportedModelError
        Naming the module or operation the theory does not cover.
    TypeError
        If ``model`` is not an ``nn.Module``.

    Examples
    --------
    >>> import torch.nn as nn
    >>> from pdlt.experiment.model import read_architecture
    >>> arch = read_architecture(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)))
    >>> arch.widths, arch.activation
    ((3, 8, 1), 'relu')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    # refuse uncovered modules wherever they sit, used in forward or not
    for path, mod in model.named_modules():
        kind = _refusal_kind(mod)
        if kind is not None:
            _refuse(path, mod, kind)
    tokens = _tokens(model, "")
    if not tokens or tokens[0][0] != "L":
        what = "nothing" if not tokens else _token_text(tokens[0])
        raise UnsupportedModelError(
            f"the model starts with {what}; the theory's first layer is an nn.Linear acting on "
            "the inputs x")
    if tokens[-1][0] == "A":
        raise UnsupportedModelError(
            f"the model ends with the activation {tokens[-1][1]!r} ({tokens[-1][2]}) after its "
            "last nn.Linear; the theory describes the preactivations z^(L): diagnose the model "
            "without it (e.g. model[:-1]) and apply the activation to its output")
    layers, linears, acts = [], [], []
    pending = None
    for i, tok in enumerate(tokens):
        kind, payload, path = tok
        if kind == "A":
            if pending is not None:
                raise UnsupportedModelError(
                    f"two activations in a row ({pending[0]!r} at {pending[1]}, {payload!r} at "
                    f"{path}); the theory has one activation between consecutive layers")
            pending = (payload, path)
            continue
        if kind == "L":
            if i == 0:
                act, gamma, xi = None, 0.0, 1.0
            else:
                act = "linear" if pending is None else pending[0]
                gamma, xi = 0.0, 1.0
            lin = payload
        else:  # residual block
            if pending is not None:
                raise UnsupportedModelError(
                    f"activation {pending[0]!r} ({pending[1]}) feeds the residual block at "
                    f"{path}; a residual block acts on the preactivations z^(l) directly")
            act, lin, gamma, xi = payload
            if lin.in_features != lin.out_features:
                raise UnsupportedModelError(
                    f"residual block at {path}: its nn.Linear maps {lin.in_features} -> "
                    f"{lin.out_features}; z + f(z) needs a square layer")
        pending = None
        if act is not None:
            acts.append((act, path))
        if any(lin is other for other in linears):
            raise UnsupportedModelError(
                f"module {path!r} is used by more than one layer (shared weights); the theory "
                "draws every layer's parameters independently")
        prev = linears[-1].out_features if linears else lin.in_features
        if lin.in_features != prev:
            raise UnsupportedModelError(
                f"layer {len(layers) + 1} ({path}) takes {lin.in_features} features but the "
                f"previous layer gives {prev}")
        linears.append(lin)
        layers.append(LayerInfo(len(layers) + 1, path, lin.in_features, lin.out_features,
                                lin.bias is not None, float(gamma), float(xi)))
    names = {}
    for spec, path in acts:
        names.setdefault(_activation(spec).name if not isinstance(spec, str) else spec, path)
    if len(names) > 1:
        listing = ", ".join(f"{k!r} (before {v})" for k, v in names.items())
        raise UnsupportedModelError(
            f"the model mixes activations: {listing}; pdlt.MLP and the theory here carry one "
            "activation for all layers, so a per-layer mix is refused rather than approximated")
    act = acts[0][0] if acts else "linear"
    # every parameter must belong to one of the Linear layers
    owned = {id(p) for lin in linears for p in lin.parameters()}
    for name, p in model.named_parameters():
        if id(p) not in owned:
            raise UnsupportedModelError(
                f"parameter {name!r} is not the weight or bias of an nn.Linear the theory reads; "
                "the theory covers MLP parameters only")
    return Architecture(tuple(layers), act, tuple(linears))


def model_parameters(arch: Architecture, dtype=torch.float64):
    """One network's weights and biases, batched over one network.

    Returns
    -------
    weights : list of tensors (1, n_l, n_{l-1}); biases : list of tensors (1, n_l)
        Detached CPU copies; a layer without bias gets zeros.
    """
    Ws, bs = [], []
    for lin in arch.linears:
        W = lin.weight.detach().to(device="cpu", dtype=dtype)
        b = (lin.bias.detach().to(device="cpu", dtype=dtype) if lin.bias is not None
             else torch.zeros(lin.out_features, dtype=dtype))
        Ws.append(W[None].clone())
        bs.append(b[None].clone())
    return Ws, bs


#: a misread architecture changes the output by O(1); float64 round-off of a
#: forward pass is ~ depth * sqrt(width) * eps ~ 1e-13 relative for the sizes
#: pdlt handles; sqrt(eps) ~ 1.5e-8 lies safely between the two
_FORWARD_RTOL = math.sqrt(np.finfo(float).eps)


@torch.no_grad()
def check_forward(model: nn.Module, arch: Architecture, *, probes=8, seed=0):
    """Check that ``arch`` reproduces ``model``'s output (float64, random probe inputs).

    Runs a float64 CPU copy of the model and the MLP forward pass of
    :mod:`pdlt.experiment.ntk` with the model's parameters on ``probes``
    standard-normal inputs, and requires agreement within ``sqrt(eps)``
    relative to the output's scale (a misread architecture differs by O(1);
    round-off is ~1e-13).

    Raises
    ------
    UnsupportedModelError
        If they differ: the model computes something the reading missed.
    """
    from .ntk import preactivations

    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn((int(probes), arch.widths[0]), generator=g, dtype=torch.float64)
    twin = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    twin.eval()
    try:
        out = twin(x)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedModelError(
            f"running the model on inputs of shape {tuple(x.shape)} failed ({exc}); pdlt reads "
            "models that map a batch (N, n0) to outputs (N, n_L)") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (x.shape[0], arch.widths[-1]):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UnsupportedModelError(
            f"the model maps inputs (N, {arch.widths[0]}) to {shape}, not (N, "
            f"{arch.widths[-1]}); pdlt reads models whose output is the last layer's z")
    Ws, bs = model_parameters(arch)
    z = preactivations(Ws, bs, x, arch.to_mlp())[-1][0].T  # (N, n_L)
    scale = float(out.abs().max()) or 1.0
    err = float((out - z).abs().max())
    if not err <= _FORWARD_RTOL * scale:
        raise UnsupportedModelError(
            f"the model's output differs from the MLP pdlt read from it (max |difference| "
            f"{err:.3g} for outputs of size {scale:.3g}): its forward pass computes something "
            "else than the chain of layers "
            f"{' -> '.join(l.path for l in arch.layers)}; write it as an nn.Sequential")


# ---------------------------------------------------------------------------
# the initialization as it is
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class InitEstimate:
    r"""``C_W``, ``C_b`` of one layer estimated from its parameters, with standard errors.

    ``C_W = n_{l-1} mean(W^2)`` over the ``n_l n_{l-1}`` weights and ``C_b =
    mean(b^2)`` over the ``n_l`` biases (NOTATION.md: ``E[W^2] = C_W /
    n_{l-1}``, ``E[b^2] = C_b``, zero means), each with the standard error
    ``std(values) / sqrt(count)`` of a mean of i.i.d. draws. ``C_b = 0``
    exactly (stderr 0) for a layer without bias; one bias gives stderr NaN.
    ``W_mean_z`` is ``mean(W) / stderr(mean(W))``: the theory assumes
    zero-mean weights, so ``|W_mean_z| > 4`` is flagged. ``W_excess_kurtosis``
    is ``mean(W^4)/mean(W^2)^2 - 3``: 0 for Gaussian weights, -1.2 for
    PyTorch's default uniform ones; ``W_excess_kurtosis_stderr = sqrt(24 /
    count)`` is its standard error for Gaussian weights (the null hypothesis).
    """

    layer: int
    C_W: float
    C_W_stderr: float
    C_b: float
    C_b_stderr: float
    W_mean_z: float
    W_excess_kurtosis: float
    W_excess_kurtosis_stderr: float

    def to_dict(self) -> dict:
        return dict(layer=self.layer, C_W=self.C_W, C_W_stderr=self.C_W_stderr, C_b=self.C_b,
                    C_b_stderr=self.C_b_stderr, W_mean_z=self.W_mean_z,
                    W_excess_kurtosis=self.W_excess_kurtosis,
                    W_excess_kurtosis_stderr=self.W_excess_kurtosis_stderr)


def _mean_and_stderr(v):
    v = np.asarray(v, dtype=float).ravel()
    m = float(v.mean())
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    return m, se


def estimate_layer(W, b, layer=0) -> InitEstimate:
    """:class:`InitEstimate` from one layer's weights (n_l, n_{l-1}) and biases (n_l,) or None.

    ``W`` may carry a leading network axis (M, n_l, n_{l-1}) (and ``b`` (M,
    n_l)): the estimate then pools the M networks' draws.
    """
    W = np.asarray(W, dtype=float)
    n_in = W.shape[-1]
    cw, cw_se = _mean_and_stderr(n_in * W * W)
    wm, wm_se = _mean_and_stderr(W)
    m2 = float(np.mean(W * W))
    kurt = float(np.mean(W ** 4) / m2 ** 2 - 3.0) if m2 > 0 else math.nan
    if b is None:
        cb, cb_se = 0.0, 0.0
    else:
        cb, cb_se = _mean_and_stderr(np.asarray(b, dtype=float) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        mz = wm / wm_se if wm_se > 0 else (0.0 if wm == 0 else math.inf)
    return InitEstimate(int(layer), cw, cw_se, cb, cb_se, float(mz), kurt,
                        math.sqrt(24.0 / W.size))


def estimate_init(arch: Architecture) -> tuple:
    """Per-layer :class:`InitEstimate` of the model's parameters as they are now."""
    out = []
    for i, lin in enumerate(arch.linears, start=1):
        W = lin.weight.detach().to(device="cpu", dtype=torch.float64).numpy()
        b = None if lin.bias is None else lin.bias.detach().to("cpu", torch.float64).numpy()
        out.append(estimate_layer(W, b, i))
    return tuple(out)
