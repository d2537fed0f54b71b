r"""Infinite-width kernels at dataset scale: blocked, memory-bounded, only what is asked for.

:func:`pdlt.flow` keeps K and Theta of every layer, ``2 L N^2`` numbers (35 GB
at N = 10^4, L = 10). But an entry of an MLP kernel at layer l depends only on
its own pair and on the two diagonal entries (book eq. 4.118 and 9.4 /
``shared/NOTATION.md``):

.. math::
    K^{(l+1)}_{ab} = C_b + C_W \langle\sigma_a\sigma_b\rangle_{K^{(l)}_{aa},
        K^{(l)}_{ab}, K^{(l)}_{bb}},\qquad
    \Theta^{(l+1)}_{ab} = \lambda_b + \lambda_W\langle\sigma_a\sigma_b\rangle
        + C_W\langle\sigma'_a\sigma'_b\rangle\,\Theta^{(l)}_{ab}

(residual MLPs: :mod:`pdlt.theory.kernel`'s docstring). So this module

1. runs the *diagonal* flow ``K_aa^(l), Theta_aa^(l)`` of every input once
   (``O(N L)``, :func:`diagonal_flow`);
2. cuts the ``N x M`` matrix into blocks of pairs and runs each block through
   all layers up to the last one asked for, keeping only the block's own
   ``K_ab, Theta_ab`` (a few arrays of ``block_size^2`` numbers) and writing
   the requested layers into the output (:func:`kernel_block`);
3. for one set of inputs computes only the blocks on or above the diagonal and
   mirrors them (exactly symmetric results).

Peak memory is the output plus, per thread, 8 block-sized scratch arrays and
the block's results (``len(layers) x len(get)`` arrays): flat in depth. The
output may be any array-like that supports slice
assignment, e.g. an ``np.memmap`` on disk (:func:`kernel_matrix`'s ``out``);
:mod:`pdlt.experiment.kernel_distributed` runs the blocks as Ray tasks into
such a file, resumably.

Elementwise work: closed forms (ReLU and the other scale-invariant
activations, erf, sin, GELU) through :func:`pdlt.gaussian._closed.pair_terms`,
fused as in-place passes over a block that stays in cache, on ``threads``
threads (numpy releases the GIL inside ufuncs). Any other activation goes
through :func:`pdlt.gaussian.pair_expectations` (Mehler series and
quadrature, accuracy ``rtol``) on the square kernel of the block's row and
column inputs (a block of rows A and columns B carries the kernel of the
inputs ``A u B``; 1x-4x the work of the pairs themselves).

Accuracy: the closed forms are evaluated to a few ulps of each entry's
Cauchy-Schwarz scale at any input scale (:mod:`pdlt.gaussian._closed`); the
blocked kernel equals :func:`pdlt.flow`'s up to that round-off
(``tests/theory/test_kernel_blocks.py``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import gaussian
from ..gaussian import _closed
from ..gaussian._closed import closed_family, pair_terms
from ..network import MLP, validate_inputs

__all__ = ["KernelMatrices", "kernel_matrix", "kernel_block", "block_work", "diagonal_flow",
           "check_kernel_call",
           "block_ranges", "diagonal_bytes", "block_bytes_per_pair", "DEFAULT_MEMORY_BUDGET",
           "STATISTICS"]

#: default bound on the memory one :func:`kernel_matrix` call allocates, bytes (4 GiB)
DEFAULT_MEMORY_BUDGET = 4 * 2 ** 30
#: statistics :func:`kernel_matrix` can return
STATISTICS = ("K", "Theta")
#: working arrays of one block (state, pair terms and their temporaries)
_ARRAYS_PER_BLOCK = 10  # 8 scratch arrays (state and pair terms) + slack
_DEFAULT_BLOCK = 256


@dataclass(frozen=True)
class KernelMatrices:
    """Kernels of requested layers.

    Attributes
    ----------
    layers : tuple of int
        The layers l (1-based) computed, in increasing order.
    K : ndarray or array-like (len(layers), N, M) or None
        NNGP kernel ``K^(l)_{ab}`` between inputs ``x_a`` and ``x2_b``
        (``x2 = x`` by default), None when not requested.
    Theta : ndarray or array-like (len(layers), N, M) or None
        Frozen NTK mean ``Theta^(l)_{ab}``.
    """

    layers: tuple
    K: object = None
    Theta: object = None

    def __getitem__(self, name):
        if name not in STATISTICS:
            raise KeyError(f"{name!r}; KernelMatrices holds {STATISTICS}")
        return getattr(self, name)


@dataclass(frozen=True)
class DiagonalFlow:
    """``K_aa^(l)`` and ``Theta_aa^(l)`` of every input at every layer: arrays (L, N)."""

    K: np.ndarray
    Theta: np.ndarray


def _res(new, old, xi2, gamma2):
    if xi2 == 1.0 and gamma2 == 0.0:
        return new
    return xi2 * new + gamma2 * old


def _first_layer_diag(mlp, x):
    g0 = np.einsum("ij,ij->i", x, x) / mlp.n0
    return mlp.C_b[0] + mlp.C_W[0] * g0, mlp.lambda_b[0] + mlp.lambda_W[0] * g0


def diagonal_flow(mlp: MLP, x, *, depth=None, rtol=1e-12) -> DiagonalFlow:
    """The diagonal ``K_aa, Theta_aa`` of every input through the layers.

    Parameters
    ----------
    mlp : MLP
    x : array_like (N, n0)
    depth : int, optional
        Last layer computed (default ``mlp.depth``).
    rtol : float
        Accuracy of the one-variable expectations for activations without a
        closed form (:func:`pdlt.gaussian.expect`).

    Returns
    -------
    DiagonalFlow
        ``K``, ``Theta`` of shape (depth, N).
    """
    x = validate_inputs(x, mlp.n0)
    L = mlp.depth if depth is None else int(depth)
    act = mlp.activation
    family = closed_family(act)
    N = x.shape[0]
    Ks, Ts = np.empty((L, N)), np.empty((L, N))
    K, T = _first_layer_diag(mlp, x)
    for l in range(1, L + 1):
        Ks[l - 1], Ts[l - 1] = K, T
        if l == L:
            break
        if family is not None:
            with np.errstate(over="ignore", invalid="ignore"):  # checked below
                e = pair_terms(family, K, K, K)
            ss, dd = e["sigma"], e["d1"]
        else:
            kw = dict(kinks=act.kinks, period=act.period)
            ss = gaussian.expect(lambda z: act.sigma(z) ** 2, K, **kw)
            dd = gaussian.expect(lambda z: act.d1(z) ** 2, K, **kw)
        x2, g2 = mlp.xi[l] ** 2, mlp.gamma[l] ** 2
        Kn = _res(mlp.C_b[l] + mlp.C_W[l] * ss, K, x2, g2)
        T = _res(mlp.lambda_b[l] + mlp.lambda_W[l] * ss + mlp.C_W[l] * dd * T, T, x2, g2)
        K = Kn
        if not (np.all(np.isfinite(K)) and np.all(np.isfinite(T))):
            raise FloatingPointError(
                f"the kernel overflowed at layer {l + 1} (deep exploding phase); reduce C_W "
                "or the depth, or initialize at criticality (pdlt.criticality)")
    return DiagonalFlow(Ks, Ts)


def block_ranges(N, M=None, block_size=_DEFAULT_BLOCK):
    """Blocks ``(r0, r1, c0, c1)`` covering an N x M matrix.

    With ``M=None`` (one set of inputs) only blocks on or above the diagonal
    (``c0 >= r0``): their mirror images are the rest.
    """
    b = int(block_size)
    sym = M is None
    M = N if sym else M
    out = []
    for r0 in range(0, N, b):
        for c0 in range(r0 if sym else 0, M, b):
            out.append((r0, min(N, r0 + b), c0, min(M, c0 + b)))
    return out


def _check_layers(mlp, layers):
    L = mlp.depth
    if layers is None:
        return (L,)
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be None (last), 'all' or a sequence of layers in "
                             f"1..{L}; got {layers!r}")
        return tuple(range(1, L + 1))
    if isinstance(layers, (int, np.integer)):
        layers = (int(layers),)
    out = sorted({int(l) for l in layers})
    if not out or out[0] < 1 or out[-1] > L:
        raise ValueError(f"layers must lie in 1..{L} (the depth of the MLP); got {list(layers)}")
    return tuple(out)


def _check_get(get):
    get = (get,) if isinstance(get, str) else tuple(get)
    bad = [g for g in get if g not in STATISTICS]
    if bad or not get:
        raise ValueError(f"get must name some of {STATISTICS}; got {get!r}")
    return tuple(g for g in STATISTICS if g in get)


def kernel_block(mlp: MLP, xa, xb, diag_a: DiagonalFlow, diag_b: DiagonalFlow, layers,
                 get=STATISTICS, *, on_diagonal=False, rtol=1e-12, work=None):
    """K and/or Theta of the pairs ``(xa_i, xb_j)`` at the requested layers.

    The unit of work of :func:`kernel_matrix` (and of its Ray tasks). Memory:
    the returned arrays plus ``WORK_ARRAYS + 2`` block-sized scratch arrays
    (passed in ``work`` to allocate nothing), whatever the depth.

    Parameters
    ----------
    mlp : MLP
    xa, xb : ndarray (B, n0), (C, n0)
    diag_a, diag_b : DiagonalFlow
        Diagonal flows of ``xa`` and ``xb`` (their own rows of
        :func:`diagonal_flow`), to the last requested layer at least.
    layers : tuple of int
        Sorted 1-based layers to return.
    get : tuple of {"K", "Theta"}
    on_diagonal : bool
        ``xa`` is ``xb`` (a diagonal block): the block is made exactly
        symmetric and its diagonal set to the diagonal flow.
    work : list of ndarray, optional
        ``WORK_ARRAYS + 2`` 1-d float arrays of at least ``B * C`` elements.

    Returns
    -------
    dict
        ``{"K": (len(layers), B, C), "Theta": ...}`` for the names in ``get``.
    """
    family = closed_family(mlp.activation)
    want_T = "Theta" in get
    B, C = len(xa), len(xb)
    out = {g: np.empty((len(layers), B, C)) for g in get}
    if family is None:
        return _kernel_block_series(mlp, xa, xb, layers, out, on_diagonal, rtol)
    if work is None:
        work = block_work(B * C)
    shape = (B, C)
    K = work[-2][:B * C].reshape(shape)
    T = work[-1][:B * C].reshape(shape)
    # layer 1: K = C_b + C_W x.x'/n0, Theta = lambda_b + lambda_W x.x'/n0
    np.matmul(xa, xb.T, out=T)
    T /= mlp.n0
    np.multiply(T, mlp.C_W[0], out=K)
    K += mlp.C_b[0]
    T *= mlp.lambda_W[0]
    T += mlp.lambda_b[0]
    last = layers[-1]
    idx = 0
    scratch = work[:_closed.WORK_ARRAYS]
    for l in range(1, last + 1):
        if l == layers[idx]:
            _store(out, idx, K, T, diag_a, diag_b, l, on_diagonal)
            idx += 1
        if l == last:
            break
        ka = diag_a.K[l - 1][:, None]
        kb = diag_b.K[l - 1][None, :]
        cw, cb, lw, lb = mlp.C_W[l], mlp.C_b[l], mlp.lambda_W[l], mlp.lambda_b[l]
        x2, g2 = mlp.xi[l] ** 2, mlp.gamma[l] ** 2
        residual = not (x2 == 1.0 and g2 == 0.0)
        s0 = cw if cw != 0 else 1.0   # C_W folded into the closed forms
        e = pair_terms(family, ka, K, kb, ("sigma", "d1") if want_T else ("sigma",),
                       scale=(s0, cw), work=scratch)
        ss = e["sigma"]                                  # s0 <sigma sigma>
        if want_T:
            # Theta' = lambda_b + lambda_W <sigma sigma> + C_W <sigma' sigma'> Theta
            old = T.copy() if residual else None
            dd = e["d1"]
            T *= dd
            if lw == s0:
                T += ss
            elif lw != 0:
                T += np.multiply(ss, lw / s0, out=dd)
            T += lb
            if residual:
                T *= x2
                T += g2 * old
        # K' = C_b + C_W <sigma sigma>
        old = K.copy() if residual else None
        if cw != 0:
            np.add(ss, cb, out=K)
        else:
            K.fill(cb)
        if residual:
            K *= x2
            K += g2 * old
    return out


def block_work(n):
    """Scratch arrays for :func:`kernel_block` on blocks of up to n pairs."""
    # one allocation, arrays staggered by an odd number of cache lines: equal
    # power-of-two offsets between the operands of a ufunc (separately
    # page-aligned arrays of 2^k bytes) thrash the cache sets (measured 3x
    # slower at 128 x 128 blocks)
    m = _closed.WORK_ARRAYS + 2
    stride = int(n) + 8 * (2 * (int(n) // 8 // 64) + 1) + 8 * 5
    pool = np.empty(m * stride)
    return [pool[i * stride:i * stride + n] for i in range(m)]


def _store(out, idx, K, T, diag_a, diag_b, l, on_diagonal):
    for name, M, d in (("K", K, diag_a.K), ("Theta", T, diag_a.Theta)):
        if name not in out:
            continue
        dst = out[name][idx]
        dst[...] = M
        if on_diagonal:
            il = _lower(dst.shape[0])
            dst[il] = dst.T[il]
            np.fill_diagonal(dst, d[l - 1])


@functools.lru_cache(maxsize=8)
def _lower(n):
    """``np.tril_indices(n, -1)`` (every requested layer of a diagonal block asks for it)."""
    return np.tril_indices(n, -1)


def _kernel_block_series(mlp, xa, xb, layers, out, on_diagonal, rtol):
    """Activations without a closed form: the engine on the union of row and column inputs."""
    from .kernel import kernel_step
    if on_diagonal:
        xu, ia, ib = xa, slice(None), slice(None)
    else:
        xu = np.concatenate([xa, xb])
        ia, ib = slice(0, len(xa)), slice(len(xa), None)
    G0 = xu @ xu.T / mlp.n0
    G0 = 0.5 * (G0 + G0.T)
    Ku = mlp.C_b[0] + mlp.C_W[0] * G0
    Tu = mlp.lambda_b[0] + mlp.lambda_W[0] * G0
    idx, last = 0, layers[-1]
    act = mlp.activation
    for l in range(1, last + 1):
        if l == layers[idx]:
            for name, M in (("K", Ku), ("Theta", Tu)):
                if name in out:
                    out[name][idx] = M[ia, ib]
            idx += 1
        if l == last:
            break
        Ku, Tu = kernel_step(act, Ku, Tu, mlp.C_b[l], mlp.C_W[l], mlp.lambda_b[l],
                             mlp.lambda_W[l], gamma=mlp.gamma[l], xi=mlp.xi[l], rtol=rtol)
    return out


def _parse_budget(memory_budget):
    if memory_budget is None:
        return None
    b = float(memory_budget)
    if not math.isfinite(b) or b <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes (or None for no "
                         f"limit); got {memory_budget!r}")
    return int(b)


def _default_threads():
    n = os.cpu_count() or 1
    return max(1, min(n, 8))


def check_kernel_call(mlp, x, x2, layers, get):
    """Validated arguments of a kernel-matrix call (shared by every backend).

    Returns
    -------
    x, x2 : ndarray (N, n0), (M, n0)
        ``x2`` is ``x`` itself when None was given (``sym`` True).
    sym : bool
    layers : tuple of int
    get : tuple of str
    shape : tuple
        ``(len(layers), N, M)``, the shape of each output.
    """
    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
    x = validate_inputs(x, mlp.n0, "x")
    sym = x2 is None
    xb = x if sym else validate_inputs(x2, mlp.n0, "x2")
    layers = _check_layers(mlp, layers)
    get = _check_get(get)
    return x, xb, sym, layers, get, (len(layers), x.shape[0], xb.shape[0])


def kernel_matrix(mlp: MLP, x, x2=None, *, layers=None, get=("K", "Theta"), block_size=None,
                  memory_budget=DEFAULT_MEMORY_BUDGET, out=None, threads=None,
                  rtol=1e-12) -> KernelMatrices:
    """Infinite-width K and/or Theta at chosen layers for many inputs, in bounded memory.

    Blocks of input pairs run through the layers independently (module
    docstring); only the requested layers are kept. For one set of inputs,
    only the upper triangle of blocks is computed and mirrored.

    Parameters
    ----------
    mlp : MLP
    x : array_like (N, n0)
        Inputs.
    x2 : array_like (M, n0), optional
        Second inputs: the result is the (N, M) cross kernel ``k(x_a, x2_b)``
        (e.g. test against training inputs). Default: ``x`` (N x N,
        symmetric).
    layers : None, int, sequence of int, or "all"
        1-based layers to return; default the last layer only.
    get : sequence of {"K", "Theta"}
        Statistics to return (default both); the NTK costs one more array
        pass per layer.
    block_size : int, optional
        Rows (and columns) per block. Default 256, lowered to fit the budget.
    memory_budget : int or None, default 4 GiB
        Bound in bytes on what this call allocates: the outputs it allocates
        (none for the arrays passed in ``out``), the per-input diagonal flows
        (:func:`diagonal_bytes`), and ``threads`` blocks of working arrays
        (:func:`block_bytes_per_pair` per pair), up to a fixed overhead of
        Python objects that does not grow with N, depth or the block.
        Exceeding it is an error that says what to change.
        None: no bound.
    out : dict, optional
        ``{"K": array, "Theta": array}``, each of shape
        ``(len(layers), N, M)`` and supporting slice assignment (e.g. an
        ``np.memmap``), written in place and returned in the result.
    threads : int, optional
        Blocks computed concurrently (default: the CPU count, at most 8).
    rtol : float
        Accuracy target for activations without a closed form
        (:func:`pdlt.gaussian.pair_expectations`).

    Returns
    -------
    KernelMatrices
        ``layers``, ``K``, ``Theta`` with arrays of shape (len(layers), N, M).

    Raises
    ------
    MemoryError
        If the outputs and working blocks would exceed ``memory_budget``;
        the message says how much they need and how to proceed (``out=``
        memory maps, fewer ``layers``, one statistic, a larger budget).
    FloatingPointError
        If the kernel overflows (deep exploding phase).

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> mlp = pdlt.MLP(n0=3, width=8, depth=10, activation="relu", C_W=2.0)
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> km = pdlt.kernel_matrix(mlp, x)
    >>> km.layers, km.K.shape
    ((10,), (1, 5, 5))
    >>> bool(np.allclose(km.K[0], pdlt.flow(mlp, x)[-1].K, rtol=1e-13))
    True
    """
    x, xb, sym, layers, get, shape = check_kernel_call(mlp, x, x2, layers, get)
    N, M = shape[1:]
    budget = _parse_budget(memory_budget)
    threads = _default_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    out = dict(out or {})
    for g in out:
        if g not in get:
            raise ValueError(f"out has {g!r}, which is not requested in get={get}")
        if tuple(out[g].shape) != shape:
            raise ValueError(f"out[{g!r}] must have shape (len(layers), N, M) = {shape}; "
                             f"got {tuple(out[g].shape)}")
    alloc = [g for g in get if g not in out]
    out_bytes = len(alloc) * 8 * math.prod(shape)
    # the diagonal flows: K and Theta of every input at every layer up to the last asked
    out_bytes += diagonal_bytes(layers[-1], N if sym else N + M)
    per_elem = block_bytes_per_pair(mlp, layers, get)
    series = closed_family(mlp.activation) is None
    b = _DEFAULT_BLOCK if block_size is None else int(block_size)
    if b < 1:
        raise ValueError(f"block_size must be >= 1; got {block_size!r}")
    if budget is not None:
        free = budget - out_bytes
        if free <= 0 or (block_size is not None and free < threads * per_elem * b * b):
            need = out_bytes + threads * per_elem * b * b
            raise MemoryError(
                f"kernel_matrix needs {need / 2**30:.2f} GiB ({out_bytes / 2**30:.2f} GiB of "
                f"output for {len(alloc)} statistic(s) x {len(layers)} layer(s) x {N} x {M} "
                f"float64, with the per-input diagonal flows) but memory_budget is "
                f"{budget / 2**30:.2f} GiB: pass out= arrays "
                "(e.g. np.memmap files on disk, or pdlt.experiment.kernel_distributed), ask for "
                "fewer layers= or one statistic in get=, or raise memory_budget")
        if block_size is None:
            fit = int(math.sqrt(free / (threads * per_elem)))
            b = max(16, min(b, fit))
    for g in alloc:
        out[g] = np.empty(shape)
    depth = layers[-1]
    da = diagonal_flow(mlp, x, depth=depth, rtol=rtol)
    db = da if sym else diagonal_flow(mlp, xb, depth=depth, rtol=rtol)
    blocks = block_ranges(N, None if sym else M, b)

    local = threading.local()

    def run(blk):
        r0, r1, c0, c1 = blk
        on_diag = sym and r0 == c0
        if not hasattr(local, "work"):
            local.work = None if series else block_work(b * b)
        res = kernel_block(mlp, x[r0:r1], xb[c0:c1], _rows(da, r0, r1), _rows(db, c0, c1),
                           layers, get, on_diagonal=on_diag, rtol=rtol, work=local.work)
        for g in get:
            if not np.isfinite(res[g][-1]).all():
                raise FloatingPointError(
                    f"{g} overflowed (deep exploding phase); reduce C_W or the depth, or "
                    "initialize at criticality (pdlt.criticality)")
            out[g][:, r0:r1, c0:c1] = res[g]
            if sym and not on_diag:
                out[g][:, c0:c1, r0:r1] = res[g].transpose(0, 2, 1)
        return None

    with _single_threaded_blas():
        if threads == 1 or len(blocks) == 1:
            for blk in blocks:
                run(blk)
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for _ in pool.map(run, blocks):
                    pass
    return KernelMatrices(layers=layers, **{g: out[g] for g in get})


def diagonal_bytes(depth: int, n_inputs: int) -> int:
    """Bytes of the diagonal flows :func:`kernel_matrix` keeps: K and Theta, (depth, inputs)."""
    return 2 * 8 * int(depth) * int(n_inputs)


def block_bytes_per_pair(mlp: MLP, layers, get) -> int:
    """Working bytes per input pair of one block, as :func:`kernel_matrix` budgets them.

    ``_ARRAYS_PER_BLOCK`` scratch arrays plus the block's kept layers (two
    copies while they are written out), four times that for activations
    evaluated by a series (no closed form).
    """
    series = closed_family(mlp.activation) is None
    return 8 * (_ARRAYS_PER_BLOCK + 2 * len(layers) * len(get)) * (4 if series else 1)


def _single_threaded_blas():
    """One BLAS thread while the blocks run (they are parallel themselves).

    The only BLAS call per block is the first-layer Gram product; a threaded
    BLAS spins its idle threads after each such call, which cost 2-3x in CPU
    time here (measured with OpenBLAS). Uses threadpoolctl when it is
    installed (scikit-learn depends on it); otherwise nothing changes.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _rows(d: DiagonalFlow, a, b) -> DiagonalFlow:
    return DiagonalFlow(d.K[:, a:b], d.Theta[:, a:b])
