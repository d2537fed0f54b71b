r"""Sharded ensembles: the Monte Carlo engine over network ranges, locally or on Ray.

:meth:`pdlt.experiment.Ensemble.measure` with ``shards``, ``checkpoint`` or
``backend="ray"`` lands here. The design rests on two facts of the engine:

* network ``m`` is a pure function of ``(mlp, seed, m)`` (its random block is
  seeded by ``SeedSequence(seed, spawn_key=(k,))``), so any network range
  ``[start, stop)`` can be regenerated on any machine;
* every estimator is a function of per-*group* sums of per-network
  sufficient statistics (groups: ``G = min(M, 100)`` contiguous ranges of
  network indices, :mod:`pdlt.experiment.estimators`).

So a *shard* is a network range; its task returns, for each measured layer,
the group sums of the groups it touches (rows ``g0 .. g1-1`` of the
``(G, ...)`` arrays). The driver adds those rows into the ensemble's
:class:`~pdlt.experiment.estimators.GroupSums` in the order of the ranges
(not in the order tasks finish) and runs the estimators of the local
engine. A group cut by a shard boundary is the sum of its two partial sums:
sums are merged, never estimates. Hence the result is the local one up to
float rounding of those additions, whatever the number of shards, workers
or machines, and it is the same bit for bit for one shard layout whatever
the order in which the shards finish. By default shard boundaries fall on
group boundaries.

Ray
---
``backend="ray"`` submits one task per shard (``num_cpus=1`` each, or one
GPU for a CUDA ensemble) with ``max_retries``: a worker that dies (killed,
out of memory, node lost) has its shard re-run by Ray, and since a shard is
regenerated from its seed range the retry returns the same sums. Without
``address`` a local Ray instance with ``workers`` CPUs is started
(``ray.init(num_cpus=..., include_dashboard=False, log_to_driver=False)``)
and shut down at the end; with ``address`` the driver connects to that
cluster (every node needs pdlt and torch installed). ``ray`` is imported
only here, and only for ``backend="ray"``.

Checkpoints
-----------
With ``checkpoint=FILE`` the driver writes, at most every
:data:`CHECKPOINT_INTERVAL` seconds, when the run ends, and when it is
interrupted (Ctrl-C, SIGTERM -- turned into
:class:`pdlt._validation.Interrupted` while the driver runs in the main
thread -- or any error), an ``.npz`` file holding
the group sums of every finished shard keyed by its network range, and a
fingerprint of what is measured (MLP, seed, networks, statistics, layers,
inputs, dtype). A rerun with the same file skips the ranges already done;
a file written for another measurement is refused with an error. The
file is written to a temporary name and renamed, so a crash while writing
leaves the previous checkpoint intact; SIGINT and SIGTERM are held back
while it is written. The path is checked before any network is drawn
(its folder must exist and be writable). Only numeric arrays and a JSON
header are stored (loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys

import numpy as np

from .._progress import counter
from .._validation import Interrupted, sigterm_as_interrupt
from ._plan import Plan, merge_parts, range_sums
from ._ray import RaySession, as_completed, drain
from .estimators import n_groups

__all__ = ["shard_ranges", "sharded_sums", "CHECKPOINT_INTERVAL"]

#: seconds between checkpoint writes while shards finish (always written at the end)
CHECKPOINT_INTERVAL = 10.0
#: Ray retries of a shard whose worker died
MAX_RETRIES = 3

_FORMAT = "pdlt-ensemble-checkpoint"
_VERSION = 1

# Test hooks (driver side). ``_FAULT = {"marker": path, "start": s}`` makes the
# Ray task of the shard starting at network ``s`` kill its own worker process
# (SIGKILL) the first time it runs, i.e. while ``marker`` does not exist yet.
# ``_INTERRUPT_AFTER = k`` raises KeyboardInterrupt on the driver after k shards
# have been merged, as a user pressing Ctrl-C would.
_FAULT = None
_INTERRUPT_AFTER = None


# ---------------------------------------------------------------------------
# shard layout
# ---------------------------------------------------------------------------

def shard_ranges(n_networks: int, shards: int) -> list:
    """Split networks ``0 .. M-1`` into ``shards`` contiguous ranges.

    Parameters
    ----------
    n_networks : int
        Ensemble size M.
    shards : int
        Number of ranges S (clipped to M).

    Returns
    -------
    list of (start, stop)
        Near-equal ranges covering ``[0, M)`` in order. For ``S <= G`` (the
        number of jackknife groups) every boundary is a group boundary, so
        no group is split; for more shards groups are split and their sums
        merged.
    """
    M = int(n_networks)
    S = int(min(max(1, shards), M))
    G = n_groups(M)
    if S <= G:
        # group g starts at network ceil(g M / G) (group_of(i) = floor(i G / M))
        gb = [(k * G) // S for k in range(S + 1)]
        bounds = [-((-g * M) // G) for g in gb]
    else:
        bounds = [(k * M) // S for k in range(S + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _default_shards(ens, plan, backend, cpus):
    M = ens.networks
    if backend == "ray":
        # a few tasks per CPU for balance; at least a random block per shard
        return max(1, min(4 * cpus, math.ceil(M / ens.block_size)))
    # local with a checkpoint: one shard per chunk, at most one per group
    return max(1, min(n_groups(M), math.ceil(M / ens._chunk(plan))))


def _subtract(ranges, done):
    """Parts of ``ranges`` not covered by the ``done`` ranges, in order."""
    out = []
    done = sorted(done)
    for a, b in ranges:
        lo = a
        for c, d in done:
            if d <= lo or c >= b:
                continue
            if c > lo:
                out.append((lo, c))
            lo = max(lo, d)
            if lo >= b:
                break
        if lo < b:
            out.append((lo, b))
    return out


# ---------------------------------------------------------------------------
# one shard (runs on a worker or in process)
# ---------------------------------------------------------------------------

def _spec(ens, plan) -> dict:
    """Everything a worker needs to rebuild the ensemble and the plan (picklable).

    ``ensemble`` is the ensemble's class (pickled by reference), so this module
    needs no import of :mod:`pdlt.experiment.ensemble`.
    """
    return dict(ensemble=type(ens), mlp=ens.mlp, networks=ens.networks, seed=ens.seed,
                dtype=str(ens.dtype).replace("torch.", ""), device=str(ens.device),
                memory_budget=ens.memory_budget, chunk_size=ens.chunk_size,
                xs=plan.xs, stats=plan.stats, base=plan.base, need=sorted(plan.need),
                layers=plan.layers, deriv_neurons=plan.deriv_neurons)


def _rebuild(spec):
    import torch

    ens = spec["ensemble"](spec["mlp"], networks=spec["networks"], seed=spec["seed"],
                           dtype=getattr(torch, spec["dtype"]), device=spec["device"],
                           memory_budget=spec["memory_budget"], chunk_size=spec["chunk_size"])
    plan = Plan(xs=spec["xs"], stats=tuple(spec["stats"]), base=tuple(spec["base"]),
                need=frozenset(spec["need"]), layers=tuple(spec["layers"]),
                deriv_neurons=spec["deriv_neurons"])
    return ens, plan


def _shard_task(spec, start, stop, fault=None):
    """Body of one shard task: rebuild, compute, return the group-sum rows."""
    if fault is not None and fault["start"] == start and not os.path.exists(fault["marker"]):
        with open(fault["marker"], "w") as fh:
            fh.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)  # a worker dying mid-run
    ens, plan = _rebuild(spec)
    return range_sums(ens, plan, start, stop)


# ---------------------------------------------------------------------------
# fingerprint and checkpoint file
# ---------------------------------------------------------------------------

def _description(ens, plan) -> dict:
    """What the sums depend on, as JSON-ready values (floats at full precision)."""
    mlp = ens.mlp
    extra = {"derivative_neurons": plan.deriv_neurons} if plan.need_deriv else {}
    return {
        **extra,
        "widths": list(mlp.widths),
        "activation": mlp.activation.name,
        "C_b": [repr(v) for v in mlp.C_b], "C_W": [repr(v) for v in mlp.C_W],
        "lambda_b": [repr(v) for v in mlp.lambda_b], "lambda_W": [repr(v) for v in mlp.lambda_W],
        "seed": ens.seed, "networks": ens.networks,
        "dtype": str(ens.dtype).replace("torch.", ""),
        "stats": sorted(plan.base), "layers": list(plan.layers),
        "inputs_shape": list(plan.xs.shape),
        "inputs_sha256": hashlib.sha256(np.ascontiguousarray(plan.xs, "<f8").tobytes()).hexdigest(),
    }


def _fingerprint(desc) -> str:
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def _load_checkpoint(path, desc) -> dict:
    """Shard parts stored in ``path``: ``{(start, stop): {layer: {name: rows}}}``."""
    if not os.path.exists(path):
        return {}
    try:
        with np.load(path, allow_pickle=False) as f:
            header = json.loads(str(f["__header__"]))
            arrays = {k: f[k] for k in f.files if k != "__header__"}
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"checkpoint {str(path)!r} is not a readable pdlt checkpoint ({exc}); "
                         "delete it or pass another checkpoint path") from exc
    if header.get("format") != _FORMAT or header.get("version") != _VERSION:
        raise ValueError(f"checkpoint {str(path)!r} is not a pdlt ensemble checkpoint of version "
                         f"{_VERSION}; delete it or pass another checkpoint path")
    if header["fingerprint"] != _fingerprint(desc):
        old = header.get("description", {})
        diff = [f"{k}: checkpoint {old.get(k)!r} vs now {desc[k]!r}" for k in desc
                if old.get(k) != desc[k]]
        raise ValueError(f"checkpoint {str(path)!r} was written for a different measurement "
                         f"({'; '.join(diff) or 'fingerprint differs'}); delete it, or pass "
                         "another checkpoint path to start afresh")
    parts = {}
    for a, b in header["done"]:
        parts[(a, b)] = {l: {} for l in desc["layers"]}
    for key, arr in arrays.items():
        a, b, l, name = key.split(":")
        parts[(int(a), int(b))][int(l)][name] = arr
    return parts


def _save_checkpoint(path, desc, parts) -> None:
    header = {"format": _FORMAT, "version": _VERSION, "fingerprint": _fingerprint(desc),
              "description": desc, "done": sorted([a, b] for a, b in parts)}
    arrays = {f"{a}:{b}:{l}:{name}": rows
              for (a, b), part in parts.items() for l, named in part.items()
              for name, rows in named.items()}
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    # SIGINT/SIGTERM wait until the file is complete and renamed (delivered right after)
    block = hasattr(signal, "pthread_sigmask")
    if block:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        np.savez(tmp, __header__=np.array(json.dumps(header)), **arrays)
        os.replace(tmp, path)
    finally:
        if block:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---------------------------------------------------------------------------
# executors: yield (range, part) as shards finish
# ---------------------------------------------------------------------------

def _local_executor(spec, todo, **_):
    ens, plan = _rebuild(spec)
    for a, b in todo:
        yield (a, b), range_sums(ens, plan, a, b)


def _ray_executor(spec, todo, *, ray, gpu=False):
    import torch
    retry_on = [MemoryError]
    if hasattr(torch, "OutOfMemoryError"):
        retry_on.append(torch.OutOfMemoryError)
    task = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=MAX_RETRIES,
                      retry_exceptions=retry_on)(_shard_task)
    spec_ref = ray.put(spec)
    refs = {task.remote(spec_ref, a, b, _FAULT): (a, b) for a, b in todo}
    yield from as_completed(ray, refs)


# ---------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------

def sharded_sums(ens, plan, *, backend="local", address=None, shards=None, checkpoint=None,
                 workers=None, progress=None) -> dict:
    """Per-layer :class:`~pdlt.experiment.estimators.GroupSums` of the whole ensemble, computed shard by shard.

    Parameters
    ----------
    ens : Ensemble
    plan : pdlt.experiment._plan.Plan
        Validated arguments of :meth:`Ensemble.measure`.
    backend : {"local", "ray"}
    address, shards, checkpoint, workers, progress
        As in :meth:`Ensemble.measure`.

    Returns
    -------
    dict of int -> GroupSums
        What the single-pass engine would have accumulated, up to float
        rounding: the shard parts added in the order of their ranges.
    """
    M = ens.networks
    desc = _description(ens, plan)
    parts = _load_checkpoint(checkpoint, desc) if checkpoint is not None else {}
    spec = _spec(ens, plan)
    total = None
    try:
        with sigterm_as_interrupt():
            session = RaySession(address, workers) if backend == "ray" else None
            ray = session.__enter__() if session is not None else None
            try:
                if shards is None:
                    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray is not None else 1
                    shards = _default_shards(ens, plan, backend, cpus)
                todo = _subtract(shard_ranges(M, shards), list(parts))
                total = len(parts) + len(todo)
                _run_shards(ens, spec, todo, parts, ray, checkpoint, desc,
                            counter(total, progress, unit="shard", desc="shards",
                                    initial=len(parts)))
            finally:
                if session is not None:
                    session.__exit__(*sys.exc_info())
    except KeyboardInterrupt as exc:
        # Ctrl-C or SIGTERM: the finished shards are in the checkpoint (saved by
        # _run_shards on the way out); say where, once
        raise Interrupted(getattr(exc, "signum", signal.SIGINT),
                          checkpoint=None if checkpoint is None else os.fspath(checkpoint),
                          done=len(parts), total=total) from None
    return merge_parts(M, plan.layers, parts)


def _run_shards(ens, spec, todo, parts, ray, checkpoint, desc, bar):
    """Merge shards into ``parts`` as they finish; checkpoint periodically and on the way out."""
    if ray is not None:
        it = _ray_executor(spec, todo, ray=ray, gpu=ens.device.type == "cuda")
    else:
        it = _local_executor(spec, todo)
    save = None if checkpoint is None else lambda: _save_checkpoint(checkpoint, desc, parts)
    drain(it, parts.__setitem__, save=save, interval=CHECKPOINT_INTERVAL,
          interrupt_after=_INTERRUPT_AFTER, bar=bar)
