r"""Kernel regression at dataset scale: conjugate gradients with a blocked kernel operator.

The NNGP posterior mean (book §6.3) and the infinite-time NTK prediction
(book §10.2, kernel regression with the frozen NTK) both need
``alpha = (k_AA + noise I)^{-1} y`` and then ``k_BA alpha``. A dense
Cholesky needs the ``N x N`` kernel in memory and ``N^3 / 3`` flops; here the
solve is scipy's conjugate gradients (:func:`scipy.sparse.linalg.cg`) on a
:class:`KernelOperator`, which applies ``k_AA + noise I`` block by block:

* ``cache="memory"``: the kernel is computed once by
  :func:`pdlt.kernel_matrix` into RAM (when it fits ``memory_budget``); a
  product is then one BLAS matrix-vector product;
* ``cache=<directory>``: the same, into an ``np.memmap`` file on disk; a
  product streams it in row strips;
* ``cache=None``: nothing is stored; every product recomputes the kernel
  block by block (``O(N^2 L)`` work per iteration, memory ``O(N)``).

``cache="auto"`` (the default) stores in memory when the kernel fits the
budget and recomputes otherwise. Predictions stream ``k_BA`` in blocks of
test inputs, so the cross kernel is never held whole.

CG converges in about ``sqrt(cond(k_AA + noise I)) log(1/tol)`` iterations;
the noise (or a jitter) bounds the condition number by
``(lambda_max + noise) / noise``. By default CG is preconditioned with a
rank-200 pivoted Cholesky factor of the kernel (Woodbury inverse of
``L L^T + noise I``), which takes out the few large eigenvalues of a deep
network's kernel; the Jacobi preconditioner is the fallback.

For scikit-learn's :class:`~sklearn.gaussian_process.GaussianProcessRegressor`
see :class:`pdlt.learning.sklearn_kernel.PDLTKernel`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.sparse.linalg import LinearOperator, cg

from ..network import MLP, validate_inputs
from ..theory.kernel_blocks import (DEFAULT_MEMORY_BUDGET, _check_layers, block_work,
                                    diagonal_flow, kernel_block, kernel_matrix)
from ..theory.kernel_blocks import _rows
from ._common import check_noise

__all__ = ["KernelOperator", "CGRegression", "cg_regression", "pivoted_cholesky"]

_STATS = ("K", "Theta")


def _check_statistic(statistic):
    if statistic not in _STATS:
        raise ValueError(f"statistic must be 'K' (NNGP) or 'Theta' (frozen NTK); got {statistic!r}")
    return statistic


class KernelOperator(LinearOperator):
    """``k_AA + noise I`` as a scipy ``LinearOperator``, applied block by block.

    Parameters
    ----------
    mlp : MLP
    x : array_like (N, n0)
        Training inputs.
    statistic : {"K", "Theta"}
        NNGP kernel or frozen NTK, at ``layer`` (default: the last).
    noise : float, default 0
        Added to the diagonal.
    cache : "auto", "memory", None, or a directory path
        Where the kernel is kept between products (module docstring).
    memory_budget : int
        Bytes this operator may allocate (kernel cache and working blocks).
    block_size, threads
        As in :func:`pdlt.kernel_matrix`.

    Attributes
    ----------
    passes : int
        Kernel evaluations performed so far (1 when cached).
    cached : str or None
        "memory", "disk" or None.
    diagonal : ndarray (N,)
        ``k_aa + noise`` (the Jacobi preconditioner).
    """

    def __init__(self, mlp: MLP, x, *, statistic="K", layer=None, noise=0.0, cache="auto",
                 memory_budget=DEFAULT_MEMORY_BUDGET, block_size=None, threads=None):
        if not isinstance(mlp, MLP):
            raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
        self.mlp = mlp
        self.x = validate_inputs(x, mlp.n0, "x")
        self.statistic = _check_statistic(statistic)
        (self.layer,) = _check_layers(mlp, layer)
        self.noise = check_noise(noise)
        self.block_size = block_size
        self.threads = threads
        self.memory_budget = memory_budget
        N = self.x.shape[0]
        super().__init__(dtype=np.float64, shape=(N, N))
        d = diagonal_flow(mlp, self.x, depth=self.layer)
        self._diag = d
        self.diagonal = getattr(d, statistic)[self.layer - 1] + self.noise
        self.passes = 0
        self._K = None
        kernel_bytes = 8 * N * N
        if cache == "auto":
            cache = "memory" if (memory_budget is None or kernel_bytes < 0.8 * memory_budget) \
                else None
        if cache == "memory":
            self._K = self._compute(None)
            self.cached = "memory"
        elif cache is None:
            self.cached = None
        elif isinstance(cache, (str, os.PathLike)):
            os.makedirs(cache, exist_ok=True)
            fn = os.path.join(os.fspath(cache), f"{statistic}_layer{self.layer}.npy")
            mm = np.lib.format.open_memmap(fn, mode="w+", shape=(1, N, N))
            self._K = self._compute(mm)
            self.cached = "disk"
        else:
            raise ValueError(f"cache must be 'auto', 'memory', None or a directory; got {cache!r}")

    def _compute(self, out):
        km = kernel_matrix(self.mlp, self.x, layers=[self.layer], get=[self.statistic],
                           block_size=self.block_size, threads=self.threads,
                           memory_budget=None if out is not None else self.memory_budget,
                           out=None if out is None else {self.statistic: out})
        self.passes += 1
        return km[self.statistic][0]

    def _matmat(self, V):
        V = np.asarray(V, dtype=float)
        if self._K is not None:
            if self.cached == "memory":
                out = self._K @ V
            else:
                out = np.empty_like(V)
                step = max(1, int(2 ** 27 // (8 * self.shape[0])))  # ~128 MiB strips
                for r0 in range(0, self.shape[0], step):
                    out[r0:r0 + step] = np.asarray(self._K[r0:r0 + step]) @ V
        else:
            out = self._streamed(V)
        out += self.noise * V
        return out

    def _matvec(self, v):
        return self._matmat(np.asarray(v, dtype=float).reshape(-1, 1)).ravel()

    def _rmatvec(self, v):  # symmetric
        return self._matvec(v)

    def _streamed(self, V):
        """``k_AA V`` without storing k: upper-triangle blocks, each used twice."""
        N = self.shape[0]
        b = int(self.block_size or 512)
        x, d, layers, get = self.x, self._diag, (self.layer,), (self.statistic,)
        out = np.zeros_like(V)
        work = block_work(b * b)
        for r0 in range(0, N, b):
            r1 = min(N, r0 + b)
            for c0 in range(r0, N, b):
                c1 = min(N, c0 + b)
                blk = kernel_block(self.mlp, x[r0:r1], x[c0:c1], _rows(d, r0, r1),
                                   _rows(d, c0, c1), layers, get, on_diagonal=r0 == c0,
                                   work=work)[self.statistic][0]
                out[r0:r1] += blk @ V[c0:c1]
                if c0 != r0:
                    out[c0:c1] += blk.T @ V[r0:r1]
        self.passes += 1
        return out


@dataclass(frozen=True)
class CGRegression:
    """A fitted kernel regression (NNGP posterior mean or NTK prediction).

    Attributes
    ----------
    mlp : MLP
    statistic : str
        "K" or "Theta".
    layer : int
    x_train : ndarray (N, n0)
    alpha : ndarray (N,) or (N, n_out)
        ``(k_AA + noise I)^{-1} y``.
    iterations : int
        CG iterations (the largest over output columns).
    residual : float
        Largest final relative residual ``|y - (k + noise) alpha| / |y|``.
    kernel_passes : int
        Kernel evaluations the solve needed (1 when cached).
    cached : str or None
    seconds : float
        Wall time of the fit.
    """

    mlp: MLP
    statistic: str
    layer: int
    x_train: np.ndarray
    alpha: np.ndarray
    iterations: int
    residual: float
    kernel_passes: int
    cached: object
    seconds: float
    block_size: int | None = None
    threads: int | None = None
    extra: dict = field(default_factory=dict)

    def predict(self, x, *, batch=2048):
        """``k(x, x_train) alpha``, streamed in batches of test inputs.

        Parameters
        ----------
        x : array_like (M, n0)
        batch : int
            Test inputs per cross-kernel block (memory ``batch x N``).

        Returns
        -------
        ndarray (M,) or (M, n_out)
        """
        x = validate_inputs(x, self.mlp.n0, "x")
        out = np.empty((x.shape[0],) + self.alpha.shape[1:])
        for r0 in range(0, x.shape[0], batch):
            km = kernel_matrix(self.mlp, x[r0:r0 + batch], self.x_train, layers=[self.layer],
                               get=[self.statistic], block_size=self.block_size,
                               threads=self.threads, memory_budget=None)
            out[r0:r0 + batch] = km[self.statistic][0] @ self.alpha
        return out


def pivoted_cholesky(op: KernelOperator, rank):
    """Rank-``rank`` partial pivoted Cholesky factor L (N, r) of the kernel of ``op``.

    Greedy: the next pivot is the input with the largest remaining diagonal
    ``k_aa - sum_j L_aj^2``; its kernel column ``k(x, x_i)`` is one
    ``N x 1`` block (:func:`~pdlt.theory.kernel_blocks.kernel_block`), so the
    factor costs ``rank`` columns, ``O(N rank L)``. Stops early when the
    remaining diagonal is below ``1e-12`` of the largest.
    """
    N = op.shape[0]
    r = int(min(rank, N))
    d = op.diagonal - op.noise
    tiny = 1e-12 * float(np.max(d)) if N else 0.0
    L = np.zeros((N, r))
    layers, get = (op.layer,), (op.statistic,)
    for k in range(r):
        i = int(np.argmax(d))
        if d[i] <= tiny:
            return L[:, :k]
        col = kernel_block(op.mlp, op.x, op.x[i:i + 1], op._diag, _rows(op._diag, i, i + 1),
                           layers, get)[op.statistic][0][:, 0]
        col -= L[:, :k] @ L[i, :k]
        col /= math.sqrt(d[i])
        L[:, k] = col
        d -= col * col
        d[i] = 0.0
    return L


def _woodbury(L, noise):
    """``(L L^T + noise I)^{-1} v`` by the Woodbury identity (noise > 0)."""
    r = L.shape[1]
    # (L L^T + s I)^{-1} = [I - L (s I + L^T L)^{-1} L^T] / s; W = L (s I + L^T L)^{-1}
    # once, so that each application is two (N x r) matrix-vector products
    c = cho_factor(noise * np.eye(r) + L.T @ L)
    W = cho_solve(c, L.T).T

    def solve(v):
        v = np.ravel(v)
        return (v - W @ (L.T @ v)) / noise
    return solve


def cg_regression(mlp: MLP, x, y, *, noise=1e-6, statistic="K", layer=None, tol=1e-8,
                  maxiter=None, cache="auto", precondition="auto", rank=200,
                  memory_budget=DEFAULT_MEMORY_BUDGET, block_size=None,
                  threads=None) -> CGRegression:
    """Fit kernel regression with pdlt's NNGP or NTK by conjugate gradients.

    Solves ``(k_AA + noise I) alpha = y`` with :func:`scipy.sparse.linalg.cg`
    on a :class:`KernelOperator`; ``predict`` then gives the NNGP posterior
    mean (``statistic="K"``, book §6.3) or the infinite-time prediction
    of gradient descent with the frozen NTK (``statistic="Theta"``,
    ``noise`` a ridge; book ch. 10).

    Parameters
    ----------
    mlp : MLP
    x : array_like (N, n0)
    y : array_like (N,) or (N, n_out)
    noise : float, default 1e-6
        Observation-noise variance (or ridge); > 0 keeps CG well conditioned.
    statistic : {"K", "Theta"}
    layer : int, optional
        Default: the last layer.
    tol : float
        Relative residual ``|y - A alpha| / |y|`` at which CG stops.
    maxiter : int, optional
        Default ``10 N``; not converging raises an error.
    cache : "auto", "memory", None or a directory
        See :class:`KernelOperator`.
    precondition : {"auto", "cholesky", "jacobi", None}
        ``"cholesky"``: ``(L L^T + noise I)^{-1}`` with L the rank-``rank``
        pivoted Cholesky factor of the kernel (:func:`pivoted_cholesky`,
        ``rank`` kernel columns; the choice of GPyTorch's solvers), which
        removes the large eigenvalues that slow CG down; ``"jacobi"``: the
        diagonal; ``"auto"``: cholesky when ``noise > 0``, else jacobi.
    rank : int, default 200
        Rank of the pivoted Cholesky preconditioner.
    memory_budget, block_size, threads
        As in :func:`pdlt.kernel_matrix`.

    Returns
    -------
    CGRegression

    Raises
    ------
    RuntimeError
        If CG does not reach ``tol`` within ``maxiter`` iterations (the
        message suggests a larger noise or maxiter).

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.learning.large import cg_regression
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((200, 4)); y = np.sin(x[:, 0])
    >>> mlp = pdlt.MLP(n0=4, width=1, depth=3, activation="relu", C_W=2.0, C_b=0.1)
    >>> fit = cg_regression(mlp, x, y, noise=1e-2)
    >>> fit.residual < 1e-8
    True
    """
    t0 = time.perf_counter()
    op = KernelOperator(mlp, x, statistic=statistic, layer=layer, noise=noise, cache=cache,
                        memory_budget=memory_budget, block_size=block_size, threads=threads)
    N = op.shape[0]
    y = np.asarray(y, dtype=float)
    if y.ndim not in (1, 2) or y.shape[0] != N or not np.isfinite(y).all():
        raise ValueError(f"y must be finite with shape (N,) or (N, n_out), N = {N}; got "
                         f"shape {y.shape}")
    Y = y.reshape(N, -1)
    maxiter = 10 * N if maxiter is None else int(maxiter)
    if precondition == "auto":
        precondition = "cholesky" if op.noise > 0 else "jacobi"
    if precondition not in ("cholesky", "jacobi", None, False):
        raise ValueError(f"precondition must be 'auto', 'cholesky', 'jacobi' or None; got "
                         f"{precondition!r}")
    if precondition == "cholesky" and op.noise <= 0:
        raise ValueError("precondition='cholesky' needs noise > 0 (it inverts L L^T + noise I); "
                         "use precondition='jacobi' or add noise")
    M = None
    if precondition == "cholesky":
        M = LinearOperator((N, N), matvec=_woodbury(pivoted_cholesky(op, rank), op.noise),
                           dtype=np.float64)
    elif precondition == "jacobi":
        inv = 1.0 / op.diagonal
        M = LinearOperator((N, N), matvec=lambda v: inv * np.ravel(v), dtype=np.float64)
    alpha = np.empty_like(Y)
    iters, worst = 0, 0.0
    for j in range(Y.shape[1]):
        count = [0]

        def cb(_xk, count=count):
            count[0] += 1
        a, info = cg(op, Y[:, j], rtol=tol, atol=0.0, maxiter=maxiter, M=M, callback=cb)
        res = float(np.linalg.norm(Y[:, j] - op.matvec(a)) / max(np.linalg.norm(Y[:, j]), 1e-300))
        if info != 0 or not res <= 10 * tol:
            raise RuntimeError(
                f"conjugate gradients did not converge for output column {j} "
                f"(relative residual {res:.2e} after {count[0]} iterations, tol {tol:g}): "
                "raise noise (the condition number is about lambda_max / noise) or maxiter")
        alpha[:, j] = a
        iters, worst = max(iters, count[0]), max(worst, res)
    return CGRegression(mlp=mlp, statistic=statistic, layer=op.layer, x_train=op.x,
                        alpha=alpha.reshape(y.shape), iterations=iters, residual=worst,
                        kernel_passes=op.passes, cached=op.cached,
                        seconds=time.perf_counter() - t0, block_size=block_size,
                        threads=threads)
