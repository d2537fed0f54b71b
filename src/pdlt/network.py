"""The MLP specification shared by theory and experiment.

Conventions (``shared/NOTATION.md``): layers ``l = 1..L`` with widths
``n_0, n_1, ..., n_L``; layer l has fan-in ``n_{l-1}``; biases have variance
``C_b^(l)`` and weights ``C_W^(l) / n_{l-1}``; the NTK learning rates are
``lambda_b^(l)`` for biases and ``lambda_W^(l) / n_{l-1}`` for weights.
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
    """

    widths: tuple
    activation: Activation
    C_b: tuple
    C_W: tuple
    lambda_b: tuple
    lambda_W: tuple

    def __init__(self, n0, width=None, depth=None, *, widths=None, n_out=1,
                 activation="relu", C_b=0.0, C_W=1.0, lambda_b=1.0, lambda_W=1.0):
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
                  C_b=self.C_b, C_W=self.C_W, lambda_b=self.lambda_b, lambda_W=self.lambda_W)
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

    def __repr__(self) -> str:
        def short(t):
            return f"{t[0]:g}" if len(set(t)) == 1 else "(" + ", ".join(f"{v:g}" for v in t) + ")"
        return (f"MLP(widths={self.widths}, activation={self.activation.name!r}, "
                f"C_b={short(self.C_b)}, C_W={short(self.C_W)}, "
                f"lambda_b={short(self.lambda_b)}, lambda_W={short(self.lambda_W)})")


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

