r"""pdlt's infinite-width kernels as a scikit-learn ``Kernel``.

:class:`PDLTKernel` makes the NNGP kernel ``K^(l)`` or the frozen NTK
``Theta^(l)`` of an MLP usable wherever scikit-learn takes a kernel, first of
all :class:`sklearn.gaussian_process.GaussianProcessRegressor`, alone or
combined with sklearn's kernels (``ConstantKernel() * PDLTKernel(mlp) +
WhiteKernel()`` learns an output scale and the noise by maximizing the
evidence). The kernel has no hyperparameters of its own (the MLP's are
fixed); values come from :func:`pdlt.kernel_matrix` (blocked closed forms or
the Mehler series), diagonals from the diagonal flow.

Needs scikit-learn (``pip install 'pdlt[learning]'``).
"""

from __future__ import annotations

import numpy as np

try:
    from sklearn.gaussian_process.kernels import Kernel
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("pdlt.learning.sklearn_kernel needs scikit-learn: "
                      "pip install 'pdlt[learning]'") from exc

from ..network import MLP
from ..theory.kernel_blocks import _check_layers, diagonal_flow, kernel_matrix

__all__ = ["PDLTKernel"]


class PDLTKernel(Kernel):
    """The NNGP kernel or frozen NTK of an MLP as a scikit-learn kernel.

    Parameters
    ----------
    mlp : MLP
        Its ``n0`` must equal the number of features.
    statistic : {"K", "Theta"}, default "K"
    layer : int, optional
        Default: the last layer.

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from sklearn.gaussian_process import GaussianProcessRegressor
    >>> from pdlt.learning.sklearn_kernel import PDLTKernel
    >>> X = np.random.default_rng(0).standard_normal((30, 3)); y = np.sin(X[:, 0])
    >>> mlp = pdlt.MLP(n0=3, width=1, depth=4, activation="erf", C_W=1.0, C_b=0.1)
    >>> gpr = GaussianProcessRegressor(PDLTKernel(mlp), alpha=1e-4, optimizer=None).fit(X, y)
    >>> bool(gpr.score(X, y) > 0.99)
    True
    """

    def __init__(self, mlp, statistic="K", layer=None):
        self.mlp = mlp
        self.statistic = statistic
        self.layer = layer

    def _checked(self):
        if not isinstance(self.mlp, MLP):
            raise TypeError(f"mlp must be a pdlt.MLP; got {type(self.mlp).__name__}")
        if self.statistic not in ("K", "Theta"):
            raise ValueError(f"statistic must be 'K' or 'Theta'; got {self.statistic!r}")
        (layer,) = _check_layers(self.mlp, self.layer)
        return layer

    def __call__(self, X, Y=None, eval_gradient=False):
        """Kernel ``k(X, Y)`` (N, M); with ``eval_gradient`` also an empty (N, N, 0) gradient."""
        layer = self._checked()
        if Y is not None and eval_gradient:
            raise ValueError("gradient can only be evaluated when Y is None")
        km = kernel_matrix(self.mlp, X, Y, layers=[layer], get=[self.statistic],
                           memory_budget=None)
        k = np.asarray(km[self.statistic][0])
        if eval_gradient:
            return k, np.empty((k.shape[0], k.shape[0], 0))
        return k

    def diag(self, X):
        """``k(x_a, x_a)`` (N,), from the diagonal flow (O(N) memory)."""
        layer = self._checked()
        d = diagonal_flow(self.mlp, X, depth=layer)
        return getattr(d, self.statistic)[layer - 1].copy()

    def is_stationary(self):
        return False

    @property
    def requires_vector_input(self):
        return True

    def __repr__(self):
        return (f"PDLTKernel({self.mlp.activation.name}, depth={self.mlp.depth}, "
                f"statistic={self.statistic!r}, layer={self.layer})")
