"""The MLP specification shared by theory and experiment.

Conventions (``shared/NOTATION.md``): layers ``l = 1..L`` with widths
``n_0, n_1, ..., n_L``; layer l has fan-in ``n_{l-1}``; biases have variance
``C_b^(l)`` and weights ``C_W^(l) / n_{l-1}``; the NTK learning rates are
``lambda_b^(l)`` for biases and ``lambda_W^(l) / n_{l-1}`` for weights.

Residual connections (book appendix B; ``shared/NOTATION.md``):
``z^(l) = xi^(l) [b^(l) + W^(l) sigma(z^(l-1))] + gamma^(l) z^(l-1)`` for
``l >= 2``; ``gamma = 0, xi = 1`` is the plain MLP. The first layer has no
residual connection (its input is x, not a preactivation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .activations import Activation, activation as _activation

__all__ = ["MLP", "validate_inputs"]


def _positive_int(value, name):
    try:
        ok = int(value) == value and int(value) >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _per_layer(value, depth, name, *, allow_zero):
    arr = np.atleast_1d(np.asarray(value, dtype=float))
    if arr.ndim != 1 or arr.size not in (1, depth):
        raise ValueError(
            f"{name} must be a scalar or a sequence of one value per layer "
            f"(depth {depth}); got {arr.size} values")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; got {value!r}")
    if allow_zero and np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0 (it is a variance or a learning rate); got {value!r}")
    if not allow_zero and np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0; got {value!r}")
    return tuple(float(v) for v in np.broadcast_to(arr, (depth,)))


def _residual_layers(widths):
    """Layers l (1-based) that can carry a residual connection: l >= 2, n_{l-1} == n_l."""
    return tuple(l for l in range(2, len(widths)) if widths[l - 1] == widths[l])


def _residual(value, widths, name, default):
    """Per-layer gamma or xi. A scalar applies to the residual layers only."""
    L = len(widths) - 1
    arr = np.atleast_1d(np.asarray(value, dtype=float))
    if arr.ndim != 1 or arr.size not in (1, L):
        raise ValueError(
            f"{name} must be a scalar or a sequence of one value per layer (depth {L}); "
            f"got {arr.size} values")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; got {value!r}")
    if name == "xi" and np.any(arr <= 0):
        raise ValueError(f"xi must be > 0 (it scales the layer's own contribution); got {value!r}")
    res = _residual_layers(widths)
    if arr.size == 1:
        out = [default] * L
        for l in res:
            out[l - 1] = float(arr[0])
        return tuple(out)
    out = tuple(float(v) for v in arr)
    if out[0] != default:
        raise ValueError(
            f"{name}[0] = {out[0]:g}, but layer 1 has no residual connection (its input is x, "
            f"not a preactivation): set {name}[0] = {default:g}"
            + (" and fold a first-layer scale into C_b and C_W (C_b*xi^2, C_W*xi^2)"
               if name == "xi" else ""))
    if name == "gamma":
        for l in range(2, L + 1):
            if out[l - 1] != 0.0 and l not in res:
                raise ValueError(
                    f"gamma[{l - 1}] = {out[l - 1]:g} for layer {l}, but a residual connection "
                    f"needs equal widths n_{l - 1} == n_{l}; got {widths[l - 1]} and "
                    f"{widths[l]}. Set gamma = 0 there (a scalar gamma does this for you)")
    return out


@dataclass(frozen=True, init=False)
class MLP:
    """A deep multilayer perceptron, as the theory sees it.

    Parameters
    ----------
    n0 : int
        Input width.
    width, depth : int, optional
        Equal hidden widths and the number of layers L (``L - 1`` hidden
        layers). Give either these or ``widths``.
    widths : sequence of int, optional
        Hidden widths ``(n_1, ..., n_{L-1})``; ``depth = len(widths) + 1``.
    n_out : int, default 1
        Output width ``n_L``.
    activation : str, Activation or callable, default "relu"
    C_b, C_W : float or sequence of L floats
        Bias and weight variances per layer (scalars broadcast); C_W > 0.
    lambda_b, lambda_W : float or sequence of L floats
        NTK learning-rate hyperparameters per layer, default 1.
    gamma, xi : float or sequence of L floats, default 0 and 1
        Residual hyperparameters (book appendix B):
        ``z^(l) = xi^(l) [b + W sigma(z^(l-1))] + gamma^(l) z^(l-1)``.
        A *scalar* applies to the residual layers only, the layers
        ``l >= 2`` whose input and output widths agree (``n_{l-1} == n_l``);
        the other layers get ``gamma = 0, xi = 1`` (so with ``n_out = 1`` the
        output layer is plain). A sequence gives every layer's value; layer 1
        must have ``gamma = 0, xi = 1``, and a nonzero gamma where the widths
        differ is an error. ``xi > 0``.

    Attributes
    ----------
    widths : tuple of int
        All widths ``(n_0, n_1, ..., n_L)``.
    depth : int
        Number of layers L.

    Examples
    --------
    >>> from pdlt import MLP
    >>> mlp = MLP(n0=3, width=64, depth=4, activation="tanh", C_W=1.0)
    >>> mlp.widths
    (3, 64, 64, 64, 1)
    >>> MLP(n0=3, width=64, depth=4, gamma=0.5).gamma   # residual in layers 2, 3
    (0.0, 0.5, 0.5, 0.0)
    """

    widths: tuple
    activation: Activation
    C_b: tuple
    C_W: tuple
    lambda_b: tuple
    lambda_W: tuple
    gamma: tuple
    xi: tuple

    def __init__(self, n0, width=None, depth=None, *, widths=None, n_out=1,
                 activation="relu", C_b=0.0, C_W=1.0, lambda_b=1.0, lambda_W=1.0,
                 gamma=0.0, xi=1.0):
        n0 = _positive_int(n0, "n0")
        n_out = _positive_int(n_out, "n_out")
        if widths is not None:
            if width is not None:
                raise ValueError("give either `widths` or `width` and `depth`, not both")
            hidden = tuple(_positive_int(w, f"widths[{i}]") for i, w in enumerate(widths))
            if depth is not None and depth != len(hidden) + 1:
                raise ValueError(
                    f"depth={depth} disagrees with {len(hidden)} hidden widths "
                    f"(depth must be len(widths) + 1)")
        else:
            if depth is None:
                raise ValueError("depth is required (the number of layers L >= 1)")
            depth = _positive_int(depth, "depth")
            if depth > 1:
                if width is None:
                    raise ValueError("width is required for depth > 1 (or pass `widths`)")
                width = _positive_int(width, "width")
            hidden = (width,) * (depth - 1)
        L = len(hidden) + 1
        object.__setattr__(self, "widths", (n0, *hidden, n_out))
        object.__setattr__(self, "activation", _activation(activation))
        object.__setattr__(self, "C_b", _per_layer(C_b, L, "C_b", allow_zero=True))
        object.__setattr__(self, "C_W", _per_layer(C_W, L, "C_W", allow_zero=False))
        object.__setattr__(self, "lambda_b", _per_layer(lambda_b, L, "lambda_b", allow_zero=True))
        object.__setattr__(self, "lambda_W", _per_layer(lambda_W, L, "lambda_W", allow_zero=True))
        object.__setattr__(self, "gamma", _residual(gamma, self.widths, "gamma", 0.0))
        object.__setattr__(self, "xi", _residual(xi, self.widths, "xi", 1.0))

    @property
    def is_residual(self) -> bool:
        """True if any layer has ``gamma != 0`` or ``xi != 1``."""
        return any(g != 0.0 for g in self.gamma) or any(x != 1.0 for x in self.xi)

    @property
    def depth(self) -> int:
        """Number of layers L."""
        return len(self.widths) - 1

    @property
    def n0(self) -> int:
        return self.widths[0]

    @property
    def n_out(self) -> int:
        return self.widths[-1]

    @property
    def hidden_widths(self) -> tuple:
        return self.widths[1:-1]

    def fan_in(self, layer: int) -> int:
        """``n_{l-1}``, the width feeding layer ``l`` (1-based)."""
        return self.widths[layer - 1]

    def with_(self, **changes) -> "MLP":
        """A copy with some constructor arguments changed.

        ``mlp.with_(C_W=2.0, depth=10)`` keeps everything else; ``depth`` and
        ``width`` rebuild equal hidden widths.
        """
        kw = dict(n0=self.n0, n_out=self.n_out, activation=self.activation,
                  C_b=self.C_b, C_W=self.C_W, lambda_b=self.lambda_b, lambda_W=self.lambda_W,
                  gamma=self._residual_spec("gamma", 0.0), xi=self._residual_spec("xi", 1.0))
        if "depth" in changes or "width" in changes:
            depth = changes.pop("depth", self.depth)
            width = changes.pop("width", self.hidden_widths[0] if self.hidden_widths else 1)
            kw.update(width=width, depth=depth)
            if depth != self.depth:
                for key in ("C_b", "C_W", "lambda_b", "lambda_W"):
                    vals = kw[key]
                    if len(set(vals)) == 1:
                        kw[key] = vals[0]
        else:
            kw["widths"] = self.hidden_widths
        kw.update(changes)
        return MLP(**kw)

    def _residual_spec(self, name, default):
        """The scalar that rebuilds ``gamma``/``xi`` if there is one, else the tuple."""
        vals = getattr(self, name)
        res = _residual_layers(self.widths)
        on = {vals[l - 1] for l in res}
        off = {v for l, v in enumerate(vals, start=1) if l not in res}
        if len(on) <= 1 and off <= {default}:
            return on.pop() if on else default
        return vals

    def __repr__(self) -> str:
        def short(t):
            return f"{t[0]:g}" if len(set(t)) == 1 else "(" + ", ".join(f"{v:g}" for v in t) + ")"
        return (f"MLP(widths={self.widths}, activation={self.activation.name!r}, "
                f"C_b={short(self.C_b)}, C_W={short(self.C_W)}, "
                f"lambda_b={short(self.lambda_b)}, lambda_W={short(self.lambda_W)}"
                + (f", gamma={short(self.gamma)}, xi={short(self.xi)}" if self.is_residual else "")
                + ")")


def validate_inputs(x, n0=None, name="x") -> np.ndarray:
    """Return inputs as a float64 array of shape (N, n0), or raise.

    Raises
    ------
    ValueError
        Wrong dimensionality, a feature count that is not ``n0``, no inputs,
        or NaN/inf entries (the message says which row).
    """
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, n0); got an array of shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} holds no inputs (shape {arr.shape})")
    if n0 is not None and arr.shape[1] != n0:
        raise ValueError(f"{name} has {arr.shape[1]} features per input but the MLP has n0={n0}")
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise ValueError(f"{name} contains NaN or inf (first in input row {row}); clean or impute the data")
    return np.ascontiguousarray(arr)

