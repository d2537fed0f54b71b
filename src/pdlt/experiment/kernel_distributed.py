r"""Infinite-width kernels beyond one machine: blocks as Ray tasks into files on disk, resumable.

The blocked kernel of :mod:`pdlt.theory.kernel_blocks` is embarrassingly
parallel: a block of input pairs needs only its own inputs and their
diagonal flows (``O(N L)`` numbers, computed once by the driver). So a
*task* is one block: it returns ``K`` and/or ``Theta`` of its pairs at the
requested layers, and the driver writes them (and, for one set of inputs,
their mirror image) into ``.npy`` memory maps in a directory:

``DIR/K.npy``, ``DIR/Theta.npy``
    arrays of shape ``(len(layers), N, M)``, float64, readable with
    ``np.load(..., mmap_mode="r")``;
``DIR/manifest.json``
    what is computed (a fingerprint of the MLP, the inputs, the layers, the
    statistics and the block size) and the blocks already written.

Resuming works like the ensembles' checkpoints
(:mod:`pdlt.experiment.distributed`): the manifest is rewritten (to a
temporary name, then renamed) at most every :data:`CHECKPOINT_INTERVAL`
seconds, at the end and when the run is interrupted, always *after* the
memory maps are flushed, so every block it lists is on disk. A rerun with the
same directory skips those blocks; a directory written for another kernel is
refused with an error that says what differs. The result does not depend on
the backend, the number of workers or the order in which blocks finish: each
entry is computed by the same :func:`~pdlt.theory.kernel_blocks.kernel_block`
from the same block, so for a given ``block_size`` it is the local result up
to the last-bit rounding of numpy's vectorized transcendental functions,
which may differ with the alignment of the buffers (measured: a few ulps;
tested to 1e-12 in ``tests/experiment/test_kernel_distributed.py``).

``backend="ray"`` submits one task per block (``num_cpus=1``, retried by Ray
when a worker dies: a block is a pure function of its inputs); without
``address`` a local Ray instance with ``workers`` CPUs is started and shut
down at the end. Ray is imported only for ``backend="ray"``. Nothing here
needs torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

from .._progress import counter
from ._ray import RaySession, as_completed, drain
from ..network import MLP
from ..theory.kernel_blocks import (KernelMatrices, _rows, block_ranges, check_kernel_call,
                                    diagonal_flow, kernel_block)

__all__ = ["distributed_kernel_matrix", "CHECKPOINT_INTERVAL"]

#: seconds between manifest writes while blocks finish (always written at the end)
CHECKPOINT_INTERVAL = 10.0
#: Ray retries of a block whose worker died
MAX_RETRIES = 3
_FORMAT = "pdlt-kernel-blocks"
_VERSION = 1
_DEFAULT_BLOCK = 1024

# Test hook: raise KeyboardInterrupt on the driver after this many blocks
# have been written, as a user pressing Ctrl-C would.
_INTERRUPT_AFTER = None


def _fingerprint_of(mlp, x, x2, layers, get, block_size):
    h = hashlib.sha256()
    h.update(repr(mlp).encode())
    for arr in (x, x2):
        if arr is not None:
            h.update(np.ascontiguousarray(arr, dtype=float).tobytes())
            h.update(str(arr.shape).encode())
    desc = {"mlp": repr(mlp), "N": int(x.shape[0]),
            "M": int(x.shape[0] if x2 is None else x2.shape[0]), "cross": x2 is not None,
            "layers": list(layers), "get": list(get), "block_size": int(block_size)}
    h.update(json.dumps(desc, sort_keys=True).encode())
    return h.hexdigest(), desc


def _load_manifest(path, fingerprint, desc):
    mpath = os.path.join(path, "manifest.json")
    if not os.path.exists(mpath):
        return None
    try:
        with open(mpath) as fh:
            man = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{mpath!r} is not a readable pdlt kernel manifest ({exc}); delete the "
                         "directory or pass another one") from exc
    if man.get("format") != _FORMAT or man.get("version") != _VERSION:
        raise ValueError(f"{path!r} does not hold pdlt kernel blocks of version {_VERSION}; "
                         "delete it or pass another directory")
    if man.get("fingerprint") != fingerprint:
        old = man.get("description", {})
        diff = [f"{k}: on disk {old.get(k)!r} vs now {desc[k]!r}" for k in desc
                if old.get(k) != desc[k]]
        what = "; ".join(diff) or "the inputs differ"
        raise ValueError(f"{path!r} holds a different kernel ({what}); "
                         "delete it, or pass another directory to start afresh")
    return {tuple(b) for b in man["done"]}


def _save_manifest(path, fingerprint, desc, done, arrays):
    for a in arrays.values():
        a.flush()
    man = {"format": _FORMAT, "version": _VERSION, "fingerprint": fingerprint,
           "description": desc, "done": sorted(list(b) for b in done)}
    mpath = os.path.join(path, "manifest.json")
    tmp = f"{mpath}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(man, fh)
    os.replace(tmp, mpath)


def _block_task(mlp, xa, xb, da, db, layers, get, on_diag):
    return kernel_block(mlp, xa, xb, da, db, layers, get, on_diagonal=on_diag)


def _local_executor(job, todo):
    for blk in todo:
        yield blk, _block_task(*job(blk))


def _ray_executor(job, todo, *, ray):
    # the task is pdlt.theory's kernel_block itself: workers import numpy/scipy
    # and pdlt.theory only (not this package, which imports torch)
    task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES,
                      retry_exceptions=[MemoryError])(kernel_block)
    mlp_ref = None
    refs = {}
    for blk in todo:
        mlp, xa, xb, da, db, layers, get, on_diag = job(blk)
        if mlp_ref is None:
            mlp_ref = ray.put(mlp)
        refs[task.remote(mlp_ref, xa, xb, da, db, layers, get, on_diagonal=on_diag)] = blk
    yield from as_completed(ray, refs)


def distributed_kernel_matrix(mlp: MLP, x, path, x2=None, *, layers=None, get=("K", "Theta"),
                              block_size=_DEFAULT_BLOCK, backend="local", workers=None,
                              address=None, progress=None) -> KernelMatrices:
    """K and/or Theta for many inputs, block by block into memory maps in ``path``; resumable.

    Parameters
    ----------
    mlp : MLP
    x : array_like (N, n0)
    path : str or os.PathLike
        Directory for ``K.npy``, ``Theta.npy`` and ``manifest.json``
        (created if missing; a rerun resumes there).
    x2 : array_like (M, n0), optional
        Second inputs (cross kernel), as in :func:`pdlt.kernel_matrix`.
    layers, get
        As in :func:`pdlt.kernel_matrix` (default: last layer, both).
    block_size : int, default 1024
        Rows and columns per task. Each task holds about 10 block-sized
        arrays plus its result (``len(layers) x len(get)`` of them).
    backend : {"local", "ray"}
    workers : int, optional
        CPUs of the local Ray instance started when Ray is not running and
        no ``address`` is given (default: all).
    address : str, optional
        Address of a running Ray cluster (every node needs pdlt).
    progress : bool, optional
        Progress bar (tqdm, when installed) on stderr; default after 2 s.

    Returns
    -------
    KernelMatrices
        With ``np.memmap`` arrays of shape (len(layers), N, M), opened
        read-write on the files in ``path``.

    Raises
    ------
    ValueError
        If ``path`` holds a different kernel or an unreadable manifest.
    ImportError
        ``backend="ray"`` without Ray installed.
    """
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray'; got {backend!r}")
    x, xb, sym, layers, get, _ = check_kernel_call(mlp, x, x2, layers, get)
    b = int(block_size)
    if b < 1:
        raise ValueError(f"block_size must be >= 1; got {block_size!r}")
    N, M = x.shape[0], xb.shape[0]
    shape = (len(layers), N, M)
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    fingerprint, desc = _fingerprint_of(mlp, x, None if sym else xb, layers, get, b)
    done = _load_manifest(path, fingerprint, desc)
    mode = "r+" if done is not None else "w+"
    arrays = {g: np.lib.format.open_memmap(os.path.join(path, f"{g}.npy"), mode=mode,
                                           dtype=np.float64, shape=shape) for g in get}
    done = set() if done is None else done
    if mode == "w+":  # claim the directory for this kernel before any block
        _save_manifest(path, fingerprint, desc, done, arrays)
    depth = layers[-1]
    da = diagonal_flow(mlp, x, depth=depth)
    db = da if sym else diagonal_flow(mlp, xb, depth=depth)
    todo = [blk for blk in block_ranges(N, None if sym else M, b) if blk not in done]

    def job(blk):
        r0, r1, c0, c1 = blk
        return (mlp, x[r0:r1], xb[c0:c1], _rows(da, r0, r1), _rows(db, c0, c1), layers, get,
                sym and r0 == c0)

    def write(blk, res):
        r0, r1, c0, c1 = blk
        for g in get:
            arrays[g][:, r0:r1, c0:c1] = res[g]
            if sym and r0 != c0:
                arrays[g][:, c0:c1, r0:r1] = res[g].transpose(0, 2, 1)
        done.add(blk)

    session = RaySession(address, workers) if backend == "ray" else None
    ray = session.__enter__() if session is not None else None
    bar = counter(len(done) + len(todo), progress, unit="block", desc="kernel blocks",
                  initial=len(done))
    try:
        it = _ray_executor(job, todo, ray=ray) if ray is not None else _local_executor(job, todo)
        drain(it, write, save=lambda: _save_manifest(path, fingerprint, desc, done, arrays),
              interval=CHECKPOINT_INTERVAL, interrupt_after=_INTERRUPT_AFTER, bar=bar)
    finally:
        if session is not None:
            session.__exit__(*sys.exc_info())
    return KernelMatrices(layers=layers, **{g: arrays[g] for g in get})
