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

When even one kernel pass per CG iteration is too much (N = 10^5: the
kernel is 80 GB, one streamed product ~ an hour on one core),
:func:`nystrom_regression` replaces the kernel by a rank-m Nystrom
approximation on landmarks chosen by pivoted Cholesky: memory ``O(N m)``,
time ``O(N m L + N m^2)``, and a certified bound on the distance of each
prediction from the exact regression (:meth:`NystromRegression.predict`).

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

__all__ = ["KernelOperator", "CGRegression", "cg_regression", "pivoted_cholesky",
           "NystromRegression", "nystrom_features", "nystrom_regression"]

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


# ---------------------------------------------------------------------------
# Low rank: Nystrom regression with pivoted-Cholesky landmarks
# ---------------------------------------------------------------------------

def _select_pivots(d, b, how, rng):
    """``b`` candidate pivots: sampled with probability proportional to d, or the b largest."""
    live = np.flatnonzero(d > 0)
    b = min(int(b), live.size)
    if b == 0:
        return live
    if how == "random":
        p = d[live] / d[live].sum()
        return np.sort(rng.choice(live, size=b, replace=False, p=p))
    return np.sort(live[np.argpartition(d[live], -b)[-b:]])


def nystrom_features(mlp: MLP, x, m, *, statistic="K", layer=None, pivots="random", seed=0,
                     rtol=0.0, block=128, memory_budget=DEFAULT_MEMORY_BUDGET, block_size=None,
                     threads=None):
    r"""Low-rank factor ``k_AA ~ F F^T`` by blocked, pivoted partial Cholesky.

    After r pivots (landmarks) ``P``, ``F F^T = k_AP k_PP^{-1} k_PA`` exactly
    (the Nystrom approximation with landmarks P), and the residual
    ``E = k_AA - F F^T`` is positive semi-definite with diagonal ``d`` known
    at every step: ``||E||_2 <= tr E = sum(d)``. Pivots are taken ``block`` at
    a time: ``"random"`` samples them with probability proportional to the
    remaining diagonal (randomly pivoted Cholesky, Chen, Epperly, Tropp and
    Webber 2023: expected trace error within ``1 + delta`` of the best rank-k
    one, ``sum_{i>k} lambda_i``, for ``r >~ k / delta + k log(1/(delta eta))``,
    ``eta`` the relative tail), ``"greedy"`` takes the largest remaining
    diagonals; within a block, LAPACK's pivoted Cholesky (``dpstrf``) orders
    them and drops the numerically dependent ones.

    Kernel columns come from :func:`pdlt.kernel_matrix` (``N x block``
    cross kernels); memory ``O(N m)``, time ``O(N m L)`` for the kernel and
    ``O(N m^2)`` for the updates (matrix products).

    Parameters
    ----------
    mlp : MLP
    x : array_like (N, n0)
    m : int
        Largest rank (number of landmarks).
    statistic : {"K", "Theta"}
    layer : int, optional
        Default: the last layer.
    pivots : {"random", "greedy"}
    seed : int
        Seed of the random pivots.
    rtol : float, default 0
        Stop early once ``tr E <= rtol tr k_AA``.
    block : int, default 128
        Pivots per step.
    memory_budget, block_size, threads
        As in :func:`pdlt.kernel_matrix`.

    Returns
    -------
    F : ndarray (N, r)
        ``F[P]`` is lower triangular (rows in pivot order).
    P : ndarray of int (r,)
        Landmark indices in pivot order.
    d : ndarray (N,)
        Residual diagonal ``diag(E)`` (>= 0, zero at the landmarks).
    diag : ndarray (N,)
        ``diag(k_AA)``.
    """
    from scipy.linalg import lapack, solve_triangular

    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
    x = validate_inputs(x, mlp.n0, "x")
    statistic = _check_statistic(statistic)
    (layer,) = _check_layers(mlp, layer)
    if pivots not in ("random", "greedy"):
        raise ValueError(f"pivots must be 'random' or 'greedy'; got {pivots!r}")
    N = x.shape[0]
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m (the number of landmarks) must be an integer >= 1; got {m!r}")
    m = int(min(m, N))
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be an integer >= 1; got {block!r}")
    rtol = float(rtol)
    if not (0.0 <= rtol < 1.0):
        raise ValueError(f"rtol must lie in [0, 1); got {rtol!r}")
    if memory_budget is not None and 8 * N * m > 0.8 * float(memory_budget):
        raise MemoryError(
            f"the rank-{m} factor of {N} inputs needs {8 * N * m / 2**30:.2f} GiB but "
            f"memory_budget is {float(memory_budget) / 2**30:.2f} GiB: lower m or raise "
            "memory_budget")
    rng = np.random.default_rng(seed)
    diag = getattr(diagonal_flow(mlp, x, depth=layer), statistic)[layer - 1].copy()
    d = diag.copy()
    trace = float(diag.sum())
    # a pivot whose remaining diagonal is below this is numerical noise
    tiny = 1e-12 * float(diag.max()) if N else 0.0
    F = np.zeros((N, m))
    P = np.empty(m, dtype=np.intp)
    k = 0
    while k < m and float(d.sum()) > rtol * trace and float(d.max()) > tiny:
        S = _select_pivots(np.where(d > tiny, d, 0.0), min(block, m - k), pivots, rng)
        if S.size == 0:
            break
        C = kernel_matrix(mlp, x, x[S], layers=[layer], get=[statistic], block_size=block_size,
                          threads=threads, memory_budget=memory_budget)[statistic][0]
        if k:
            C -= F[:, :k] @ F[S, :k].T           # columns of the residual kernel E
        G = C[S]
        G = 0.5 * (G + G.T)
        c, piv, rank, info = lapack.dpstrf(G, lower=1, tol=tiny)
        if info < 0:  # pragma: no cover - LAPACK argument error
            raise RuntimeError(f"dpstrf failed (info {info})")
        rank = int(min(rank, m - k))
        if rank == 0:
            d[S] = 0.0  # their residual is below the noise floor
            continue
        order = S[piv[:rank] - 1]
        Lf = np.tril(c[:rank, :rank])
        new = solve_triangular(Lf, C[:, piv[:rank] - 1].T, lower=True, check_finite=False).T
        new[P[:k]] = 0.0          # exact zeros on earlier landmarks: F[P] lower triangular
        new[order] = Lf
        F[:, k:k + rank] = new
        P[k:k + rank] = order
        d -= np.einsum("ij,ij->i", new, new)
        d[order] = 0.0
        np.maximum(d, 0.0, out=d)
        k += rank
    return F[:, :k], P[:k], d, diag


@dataclass(frozen=True)
class NystromRegression:
    r"""A fitted Nystrom (low-rank) kernel regression, with a certified error bound.

    The kernel ``k`` is replaced by ``q(x, x') = k(x, X_P) k_PP^{-1} k(X_P, x')``
    (landmarks ``X_P``); the prediction is ``q(x, X) (q_AA + noise I)^{-1} y
    = k(x, X_P) beta``.

    Attributes
    ----------
    mlp : MLP
    statistic : str
    layer : int
    landmarks : ndarray (r, n0)
        The inputs ``X_P``, in pivot order.
    landmark_index : ndarray of int (r,)
        Their rows in the training inputs.
    beta : ndarray (r,) or (r, n_out)
        Weights of ``k(x, X_P)``.
    rank : int
        r (at most m).
    noise : float
    trace : float
        ``tr k_AA``.
    trace_residual : float
        Certified ``tr E >= ||E||_2``, ``E = k_AA - q_AA`` (sum of the residual
        diagonal, plus its float64 round-off allowance).
    alpha_norm : ndarray (n_out,)
        ``|(q_AA + noise I)^{-1} y|`` per output column.
    y_norm : ndarray (n_out,)
        ``|y|`` per output column.
    seconds : float
    """

    mlp: MLP
    statistic: str
    layer: int
    landmarks: np.ndarray
    landmark_index: np.ndarray
    beta: np.ndarray
    rank: int
    noise: float
    trace: float
    trace_residual: float
    alpha_norm: np.ndarray
    y_norm: np.ndarray
    seconds: float
    _T: np.ndarray = field(repr=False, default=None)
    _G: np.ndarray = field(repr=False, default=None)
    _A: tuple = field(repr=False, default=None)
    block_size: int | None = None
    threads: int | None = None

    def predict(self, x, *, return_bound=False, batch=4096):
        r"""Predictions ``k(x, X_P) beta``, optionally with a bound on their distance to exact.

        The bound is on ``|f(x) - f_exact(x)|``, ``f_exact`` the regression with
        the exact kernel (``k_xA (k_AA + noise I)^{-1} y``, what
        :func:`cg_regression` solves). With ``E`` the residual kernel (positive
        semi-definite on the training inputs and x together), ``e = E(X, x)``,
        ``alpha`` and ``alpha_q`` the exact and low-rank weights,
        ``f - f_exact = -e^T alpha + q_xA (q_AA + s)^{-1} E alpha``, and

        .. math::
            |f - f_\mathrm{exact}| \le |\alpha_q| (1 + \epsilon/s)
            \left[\sqrt{E_{xx}\,\epsilon} + \epsilon\,|(q_{AA} + s)^{-1} q_{Ax}|\right]

        with ``epsilon = trace_residual >= ||E||_2``, ``E_xx`` the residual
        variance at x (``|e|^2 <= E_xx tr E`` by Cauchy-Schwarz) and
        ``|alpha| <= |alpha_q| (1 + epsilon / s)``, or ``|alpha| <= |y| / s``
        where that is smaller (it then replaces ``|alpha_q| (1 + epsilon / s)``
        above). A worst case: the true distance is usually orders of
        magnitude smaller.

        Parameters
        ----------
        x : array_like (M, n0)
        return_bound : bool
        batch : int
            Test inputs per cross-kernel block.

        Returns
        -------
        pred : ndarray (M,) or (M, n_out)
        bound : ndarray, same shape as ``pred`` (with ``return_bound``)
        """
        from scipy.linalg import solve_triangular

        x = validate_inputs(x, self.mlp.n0, "x")
        M = x.shape[0]
        out = np.empty((M,) + self.beta.shape[1:])
        bound = np.empty_like(out) if return_bound else None
        s, eps = self.noise, self.trace_residual
        for r0 in range(0, M, batch):
            xb = x[r0:r0 + batch]
            kx = kernel_matrix(self.mlp, xb, self.landmarks, layers=[self.layer],
                               get=[self.statistic], block_size=self.block_size,
                               threads=self.threads, memory_budget=None)[self.statistic][0]
            out[r0:r0 + batch] = kx @ self.beta
            if not return_bound:
                continue
            kxx = getattr(diagonal_flow(self.mlp, xb, depth=self.layer),
                          self.statistic)[self.layer - 1]
            U = solve_triangular(self._T, kx.T, lower=True, check_finite=False)  # (r, B)
            uu = np.einsum("ij,ij->j", U, U)
            # residual variance at x, with the round-off of k_xx - |u|^2
            Exx = np.maximum(kxx - uu, 0.0) + 4 * (self.rank + 1) * np.finfo(float).eps * kxx
            Z = cho_solve(self._A, U)                            # (q_AA + s)^{-1} q_Ax = F Z
            qn = np.sqrt(np.maximum(np.einsum("ij,ij->j", Z, self._G @ Z), 0.0))
            b = np.sqrt(Exx * eps) + eps * qn
            a = np.minimum(self.alpha_norm * (1 + eps / s), self.y_norm / s)  # >= |alpha|
            bound[r0:r0 + batch] = b.reshape((-1,) + (1,) * (self.beta.ndim - 1)) * \
                a.reshape(self.beta.shape[1:] or ())
        return (out, bound) if return_bound else out


def nystrom_regression(mlp: MLP, x, y, *, m=1000, noise=1e-2, statistic="K", layer=None,
                       pivots="random", seed=0, rtol=0.0, block=128,
                       memory_budget=DEFAULT_MEMORY_BUDGET, block_size=None,
                       threads=None) -> NystromRegression:
    r"""Kernel regression with a rank-m Nystrom kernel: memory ``O(N m)``, time ``O(N m^2)``.

    For N beyond what the exact kernel allows (at N = 10^5 it is 80 GB and
    :func:`cg_regression` would recompute it at every iteration): the kernel
    is replaced by its Nystrom approximation on ``m`` landmarks chosen by
    pivoted Cholesky (:func:`nystrom_features`), ``k ~ F F^T``, and

    .. math::
        f(x) = k(x, X_P)\,\beta,\qquad
        \beta = F_P^{-T} (F^T F + s I)^{-1} F^T y,

    i.e. ``q(x, X)(q_AA + s I)^{-1} y`` with ``q`` the Nystrom kernel
    (``s = noise``; Woodbury). The kernel enters only through
    :func:`pdlt.kernel_matrix` blocks of ``N x block`` pairs.

    Accuracy against the exact regression: ``predict(x, return_bound=True)``
    gives a certified bound per test input from the neglected part of the
    kernel, ``trace_residual = tr(k - q) >= ||k - q||_2``
    (:meth:`NystromRegression.predict`). Raise ``m`` (or set ``rtol``) until
    it is below what you need; ``trace_residual`` is at least the neglected
    spectrum ``sum_{i > m} lambda_i(k_AA)``, and random pivots come within a
    small factor of it (:func:`nystrom_features`).

    Parameters
    ----------
    mlp : MLP
    x : array_like (N, n0)
    y : array_like (N,) or (N, n_out)
    m : int, default 1000
        Largest number of landmarks (rank).
    noise : float, default 1e-2
        Observation-noise variance (or ridge), > 0.
    statistic : {"K", "Theta"}
        NNGP posterior mean or frozen-NTK prediction (as :func:`cg_regression`).
    layer : int, optional
        Default: the last layer.
    pivots : {"random", "greedy"}
        Landmark choice (:func:`nystrom_features`).
    seed : int
    rtol : float, default 0
        Stop adding landmarks once ``tr(k - q) <= rtol tr k``.
    block : int
        Landmarks per pivoting step.
    memory_budget, block_size, threads
        As in :func:`pdlt.kernel_matrix`; the factor takes ``8 N m`` bytes.

    Returns
    -------
    NystromRegression

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.learning.large import nystrom_regression
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((500, 4)); y = np.sin(x[:, 0])
    >>> mlp = pdlt.MLP(n0=4, width=1, depth=3, activation="relu", C_W=2.0, C_b=0.1)
    >>> fit = nystrom_regression(mlp, x, y, m=200, noise=1e-2)
    >>> pred, bound = fit.predict(x[:5], return_bound=True)
    >>> pred.shape, fit.rank
    ((5,), 200)
    """
    t0 = time.perf_counter()
    s = check_noise(noise)
    if s <= 0:
        raise ValueError("noise must be > 0 for nystrom_regression (the low-rank kernel is "
                         "singular); pass the observation-noise variance or a small ridge")
    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
    x = validate_inputs(x, mlp.n0, "x")
    N = x.shape[0]
    y = np.asarray(y, dtype=float)
    if y.ndim not in (1, 2) or y.shape[0] != N or not np.isfinite(y).all():
        raise ValueError(f"y must be finite with shape (N,) or (N, n_out), N = {N}; got "
                         f"shape {y.shape}")
    Y = y.reshape(N, -1)
    F, P, d, diag = nystrom_features(mlp, x, m, statistic=statistic, layer=layer,
                                     pivots=pivots, seed=seed, rtol=rtol, block=block,
                                     memory_budget=memory_budget, block_size=block_size,
                                     threads=threads)
    r = F.shape[1]
    G = F.T @ F
    A = cho_factor(G + s * np.eye(r))
    W = cho_solve(A, F.T @ Y)                      # (F^T F + s)^{-1} F^T y
    alpha_norm = np.linalg.norm(Y - F @ W, axis=0) / s   # (F F^T + s)^{-1} y = (y - F W) / s
    from scipy.linalg import solve_triangular
    T = F[P]
    beta = solve_triangular(T, W, lower=True, trans="T", check_finite=False)
    eps = float(d.sum()) + N * 4 * (r + 1) * np.finfo(float).eps * float(diag.max())
    (lay,) = _check_layers(mlp, layer)
    return NystromRegression(
        mlp=mlp, statistic=statistic, layer=lay, landmarks=x[P], landmark_index=P,
        beta=beta.reshape((r,) + y.shape[1:]), rank=r, noise=s, trace=float(diag.sum()),
        trace_residual=eps, alpha_norm=alpha_norm, y_norm=np.linalg.norm(Y, axis=0),
        seconds=time.perf_counter() - t0,
        _T=T, _G=G, _A=A, block_size=block_size, threads=threads)
