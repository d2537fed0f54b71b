r"""A PyTorch backend for :func:`pdlt.kernel_matrix`: the same blocks, on a GPU when present.

:func:`torch_kernel_matrix` computes exactly what :func:`pdlt.kernel_matrix`
does (infinite-width K and/or Theta at chosen layers, only the upper triangle
of blocks for one set of inputs, mirrored) with the elementwise work in
torch, on ``device`` (default: CUDA when available, else the CPU). The
diagonal flow ``K_aa^(l), Theta_aa^(l)`` (``O(N L)``) comes from
:func:`pdlt.theory.kernel_blocks.diagonal_flow` (numpy); each block of
input pairs is then run through the layers on the device, keeping only the
requested layers, and copied into the host output.

The closed forms are those of :mod:`pdlt.gaussian._closed` (ReLU and the
other scale-invariant activations, linear, erf, sin, GELU), written with the
same stable rearrangements (the Gram determinant from the angle, angles by
``atan2``, no overflowing ``sinh``); activations without a closed form are
refused (use :func:`pdlt.kernel_matrix`, whose Mehler series runs on the
CPU). float64 throughout: on the CPU the result equals numpy's to float64
round-off (a few ulps of each entry's Cauchy-Schwarz scale per layer,
``tests/experiment/test_kernel_torch.py``).

numpy stays the reference and the CPU path: torch on the CPU is about 10x
slower than :func:`pdlt.kernel_matrix` (4000 inputs, ReLU, depth 10, K and
Theta: 55 s against 4.8 s on the loaded 2-core development machine; no
fusion, a fresh tensor per operation). The point of this backend is a GPU,
where a block of ``4096 x 4096`` pairs is one set of kernel launches per
layer. The CUDA path is tested only where CUDA is present (it was not on the
machine this was written on).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..gaussian._closed import closed_family
from ..network import MLP
from .ensemble import check_device
from ..theory.kernel_blocks import (DEFAULT_MEMORY_BUDGET, KernelMatrices, _parse_budget,
                                    block_ranges, check_kernel_call, diagonal_flow)

__all__ = ["torch_kernel_matrix", "default_device"]

_TWO_PI = 2.0 * math.pi
_PROD_MAX = 1e300
#: block-sized temporaries alive at once in one block step (state, pair terms)
_ARRAYS_PER_BLOCK = 12


def default_device():
    """``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _gram(ka, kab, kb):
    """``(den, G)``: ``den = sqrt(ka kb)``, ``G = (den - kab)(den + kab) >= 0``."""
    if float(ka.max()) * float(kb.max()) < _PROD_MAX:
        den = torch.sqrt(ka * kb)
    else:
        den = torch.sqrt(ka) * torch.sqrt(kb)
    G = ((den - kab) * (den + kab)).clamp_min_(0.0)
    return den, G


def _pair_terms(family, ka, kab, kb, want_d1):
    """``(<sigma sigma>, <sigma' sigma'>)`` (the second None unless ``want_d1``)."""
    kind = family[0]
    if kind == "linear":
        p2 = family[1] ** 2
        return p2 * kab, (torch.full_like(kab, p2) if want_d1 else None)
    if kind == "arccos":
        ap, am = family[1], family[2]
        a1, a2 = ap * ap + am * am, 2.0 * ap * am
        _, G = _gram(ka, kab, kb)
        sg = torch.sqrt(G)
        psi = torch.atan2(sg, kab)
        zero = (ka <= 0) | (kb <= 0)
        if bool(zero.any()):
            psi = torch.where(zero, torch.full_like(psi, 0.5 * math.pi), psi)
        d1 = (a2 - a1) / _TWO_PI * psi + 0.5 * a1
        ss = (ap - am) ** 2 / _TWO_PI * sg + kab * d1
        return ss, (d1 if want_d1 else None)
    if kind == "erf":
        _, G = _gram(ka, kab, kb)
        q = torch.sqrt(G + ((0.5 * ka + 0.5 * kb) + 0.25))
        ss = (2.0 / math.pi) * torch.atan2(kab, q)
        return ss, ((2.0 / math.pi) / q if want_d1 else None)
    if kind == "sin":
        m = kab.abs()
        e = torch.exp((m - 0.5 * (ka + kb)).clamp_max_(0.0))
        t = torch.expm1(-2.0 * m)
        ss = -0.5 * e * t * torch.sign(kab)
        return ss, (0.5 * (t + 2.0) * e if want_d1 else None)
    if kind == "gelu":
        h = 1.0 / (1.0 + ka) + 1.0 / (1.0 + kb)
        _, G = _gram(ka, kab, kb)
        D = (ka + kb) + 1.0 + G
        sq = torch.sqrt(D)
        P = torch.atan2(sq, -kab) / _TWO_PI
        c = 1.0 / (_TWO_PI * sq)
        ss = (kab * kab * h + G) * c + kab * P
        return ss, ((1.0 / D + h) * c * kab + P if want_d1 else None)
    raise ValueError(f"unknown closed-form family {family!r}")  # pragma: no cover


def _block(mlp, family, xa, xb, dKa, dTa, dKb, dTb, layers, get, on_diagonal):
    """K/Theta of one block at ``layers``: dict of tensors (len(layers), B, C)."""
    want_T = "Theta" in get
    g0 = xa @ xb.T / mlp.n0
    K = mlp.C_b[0] + mlp.C_W[0] * g0
    T = mlp.lambda_b[0] + mlp.lambda_W[0] * g0
    out = {g: [] for g in get}
    last, idx = layers[-1], 0
    for l in range(1, last + 1):
        if l == layers[idx]:
            for g, M, d in (("K", K, dKa), ("Theta", T, dTa)):
                if g in out:
                    if on_diagonal:
                        M = torch.triu(M) + torch.triu(M, 1).T
                        M.diagonal().copy_(d[l - 1])
                    out[g].append(M)
            idx += 1
        if l == last:
            break
        ka, kb = dKa[l - 1][:, None], dKb[l - 1][None, :]
        cw, cb, lw, lb = mlp.C_W[l], mlp.C_b[l], mlp.lambda_W[l], mlp.lambda_b[l]
        x2, g2 = mlp.xi[l] ** 2, mlp.gamma[l] ** 2
        ss, dd = _pair_terms(family, ka, K, kb, want_T)
        Kn = cb + cw * ss
        if want_T:
            Tn = lb + lw * ss + cw * dd * T
            T = Tn if (x2 == 1.0 and g2 == 0.0) else x2 * Tn + g2 * T
        K = Kn if (x2 == 1.0 and g2 == 0.0) else x2 * Kn + g2 * K
    return {g: torch.stack(v) for g, v in out.items()}


def torch_kernel_matrix(mlp: MLP, x, x2=None, *, layers=None, get=("K", "Theta"), device=None,
                        block_size=None, memory_budget=DEFAULT_MEMORY_BUDGET,
                        device_memory=None) -> KernelMatrices:
    """:func:`pdlt.kernel_matrix` with the block work in torch, on ``device``.

    Parameters
    ----------
    mlp : MLP
        Its activation must have a closed form (ReLU family, linear, erf,
        sin, GELU).
    x : array_like (N, n0)
    x2 : array_like (M, n0), optional
        Second inputs (cross kernel); default ``x``.
    layers, get
        As in :func:`pdlt.kernel_matrix`.
    device : str or torch.device, optional
        Default :func:`default_device` (CUDA when available).
    block_size : int, optional
        Rows (and columns) per block. Default: 4096 on a GPU, 256 on the CPU,
        lowered to fit ``device_memory``.
    memory_budget : int or None, default 4 GiB
        Bound on the host output this call allocates (float64
        ``len(get) x len(layers) x N x M``); exceeding it is an error.
    device_memory : int, optional
        Bytes the block temporaries may take on the device (default 2 GiB).

    Returns
    -------
    KernelMatrices
        numpy arrays (len(layers), N, M) on the host, as :func:`pdlt.kernel_matrix`.

    Raises
    ------
    ValueError
        If the activation has no closed form (use :func:`pdlt.kernel_matrix`).
    MemoryError
        If the output exceeds ``memory_budget``.
    FloatingPointError
        If the kernel overflows (deep exploding phase).

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.experiment.kernel_torch import torch_kernel_matrix
    >>> mlp = pdlt.MLP(n0=3, width=8, depth=10, activation="relu", C_W=2.0)
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> km = torch_kernel_matrix(mlp, x, device="cpu")
    >>> bool(np.allclose(km.K, pdlt.kernel_matrix(mlp, x).K, rtol=1e-13))
    True
    """
    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
    family = closed_family(mlp.activation)
    if family is None:
        raise ValueError(
            f"activation {mlp.activation.name!r} has no closed form, which the torch backend "
            "needs; use pdlt.kernel_matrix (numpy, Mehler series per block)")
    dev = default_device() if device is None else check_device(device, "device")
    x, xb, sym, layers, get, shape = check_kernel_call(mlp, x, x2, layers, get)
    N, M = shape[1:]
    budget = _parse_budget(memory_budget)
    out_bytes = len(get) * 8 * math.prod(shape)
    if budget is not None and out_bytes > budget:
        raise MemoryError(
            f"torch_kernel_matrix needs {out_bytes / 2**30:.2f} GiB of host output "
            f"({len(get)} statistic(s) x {len(layers)} layer(s) x {N} x {M} float64) but "
            f"memory_budget is {budget / 2**30:.2f} GiB: ask for fewer layers= or one statistic "
            "in get=, raise memory_budget, or use pdlt.kernel_matrix with out= memory maps")
    dmem = 2 * 2 ** 30 if device_memory is None else _parse_budget(device_memory)
    per_elem = 8 * (_ARRAYS_PER_BLOCK + 2 * len(layers) * len(get))
    fit = max(16, int(math.sqrt(dmem / per_elem)))
    if block_size is None:
        b = min(4096 if dev.type == "cuda" else 256, fit)
    else:
        b = int(block_size)
        if b < 1:
            raise ValueError(f"block_size must be >= 1; got {block_size!r}")
    depth = layers[-1]
    da = diagonal_flow(mlp, x, depth=depth)
    db = da if sym else diagonal_flow(mlp, xb, depth=depth)

    def to(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64, device=dev)

    tx, tdKa, tdTa = to(x), to(da.K), to(da.Theta)
    if sym:
        txb, tdKb, tdTb = tx, tdKa, tdTa
    else:
        txb, tdKb, tdTb = to(xb), to(db.K), to(db.Theta)
    out = {g: np.empty(shape) for g in get}
    with torch.no_grad():
        for r0, r1, c0, c1 in block_ranges(N, None if sym else M, b):
            on_diag = sym and r0 == c0
            res = _block(mlp, family, tx[r0:r1], txb[c0:c1], tdKa[:, r0:r1], tdTa[:, r0:r1],
                         tdKb[:, c0:c1], tdTb[:, c0:c1], layers, get, on_diag)
            for g in get:
                if not bool(torch.isfinite(res[g][-1]).all()):
                    raise FloatingPointError(
                        f"{g} overflowed (deep exploding phase); reduce C_W or the depth, or "
                        "initialize at criticality (pdlt.criticality)")
                host = res[g].cpu().numpy()
                out[g][:, r0:r1, c0:c1] = host
                if sym and not on_diag:
                    out[g][:, c0:c1, r0:r1] = host.transpose(0, 2, 1)
    return KernelMatrices(layers=layers, **out)
