r"""Ensembles of real finite-width MLPs, batched over the network axis.

:class:`Ensemble` draws M independent networks initialized as
``shared/NOTATION.md`` says (``b ~ N(0, C_b)``, ``W ~ N(0, C_W / n_{l-1})``),
runs them in chunks that fit a memory budget (weights (B, n_l, n_{l-1}), one
batched matmul per layer), and measures the statistics of NOTATION.md with
standard errors (:mod:`pdlt.experiment.estimators`).

Reproducibility
---------------
Randomness is drawn per *block* of networks: block k holds networks
``k*b .. (k+1)*b - 1`` with a block size ``b`` that depends on the MLP only
(:attr:`Ensemble.block_size`), and its parameters come from a CPU
``torch.Generator`` in float64 seeded by ``numpy.random.SeedSequence(seed,
spawn_key=(k,))``, then are cast and moved to ``dtype``/``device``. So network
m has the same parameters whatever the chunk size, the memory budget, the
ensemble size M, and the device; the networks of a smaller ensemble are the
first networks of a larger one with the same seed.

Because of that, any range of networks can be regenerated anywhere:
``measure(..., shards=S)``, ``checkpoint=FILE`` and ``backend="ray"`` split
the ensemble into network ranges whose sufficient-statistic sums are merged
before estimating (:mod:`pdlt.experiment.distributed`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .._progress import counter
from .._validation import check_checkpoint_path
from ..network import MLP, validate_inputs
from . import ntk as _ntk
from ._plan import DEFAULT_DERIVATIVE_NEURONS, Plan
from .activations import torch_activation
from .distributed import sharded_sums
from .estimators import STATISTICS, SUFFICIENT, Estimate, GroupSums, estimate_statistic
from .estimators_derivative import batched_bytes_per_network, derivative_pairs_batched
from .results import LayerMeasurement, Measurement

__all__ = ["Ensemble", "DEFAULT_MEMORY_BUDGET", "DEFAULT_DERIVATIVE_NEURONS"]

#: default working-memory budget per chunk, bytes (1 GiB)
DEFAULT_MEMORY_BUDGET = 1 << 30

_PAIR_STATS = {"V_pair", "A", "B", "D", "F", "P", "Q", "R", "S", "T", "U"}


def check_device(device, name="device"):
    """A torch device that exists here; raises ``ValueError`` naming ``name`` otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"{name}={device!r} is not a torch device ({str(exc).splitlines()[0]}); "
                         "use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r} asked for CUDA but torch.cuda.is_available() is "
                             "False; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r}: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s); use cuda:0 .. cuda:N-1 or 'cpu'")
    elif dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}={device!r}: pdlt runs on 'cpu' or 'cuda' devices; got device "
                         f"type {dev.type!r}")
    return dev


class Ensemble:
    """M independent randomly initialized copies of an MLP.

    Parameters
    ----------
    mlp : pdlt.MLP
    networks : int, default 1000
        Number of networks M.
    seed : int, default 0
        Seed of the whole ensemble (see the module docstring).
    dtype : torch.dtype, default torch.float64
        float64 or float32. Parameters are always drawn in float64 and cast.
    device : str or torch.device, default "cpu"
        ``"cuda"`` (or ``"cuda:1"``) runs on a GPU; an error says so if CUDA
        is not available.
    memory_budget : int, default 1 GiB
        Bytes of working memory per chunk of networks (weights, activations,
        NTKs, estimator temporaries, by a conservative count).
    chunk_size : int, optional
        Force the number of networks per chunk (overrides the budget).

    Examples
    --------
    >>> import pdlt
    >>> from pdlt.experiment import Ensemble
    >>> mlp = pdlt.MLP(n0=2, width=32, depth=3, activation="relu", C_W=2.0)
    >>> m = Ensemble(mlp, networks=500, seed=0).measure(K1=1.0, stats=["K", "Theta"])
    >>> m["K"].mean.shape
    (3,)
    """

    def __init__(self, mlp, networks=1000, seed=0, dtype=torch.float64, device="cpu",
                 memory_budget=DEFAULT_MEMORY_BUDGET, chunk_size=None):
        if not isinstance(mlp, MLP):
            raise TypeError(f"mlp must be a pdlt.MLP; got {type(mlp).__name__}")
        if int(networks) != networks or networks < 1:
            raise ValueError(f"networks must be a positive integer; got {networks!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(f"dtype must be torch.float64 or torch.float32; got {dtype}")
        dev = check_device(device, "device")
        if not memory_budget or memory_budget <= 0:
            raise ValueError(f"memory_budget must be a positive number of bytes; got {memory_budget!r}")
        if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or None; got {chunk_size!r}")
        self.mlp = mlp
        self.networks = int(networks)
        self.seed = int(seed)
        self.dtype = dtype
        self.device = dev
        self.memory_budget = int(memory_budget)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self._tact = torch_activation(mlp.activation)

    def __repr__(self):
        return (f"Ensemble({self.mlp!r}, networks={self.networks}, seed={self.seed}, "
                f"dtype={self.dtype}, device={str(self.device)!r})")

    # ------------------------------------------------------------------
    # parameters
    # ------------------------------------------------------------------

    @property
    def n_parameters(self) -> int:
        """Parameters per network."""
        w = self.mlp.widths
        return sum(w[l] * w[l + 1] + w[l + 1] for l in range(len(w) - 1))

    @property
    def block_size(self) -> int:
        """Networks per random block: ``clip(2**22 // n_parameters, 1, 256)`` (MLP only)."""
        return int(min(256, max(1, (1 << 22) // self.n_parameters)))

    def _draw_block(self, k):
        mlp = self.mlp
        b = self.block_size
        state = np.random.SeedSequence(self.seed, spawn_key=(k,)).generate_state(1, np.uint64)[0]
        g = torch.Generator(device="cpu")
        g.manual_seed(int(state))
        Ws, bs = [], []
        for l in range(mlp.depth):
            n_in, n_out = mlp.widths[l], mlp.widths[l + 1]
            W = torch.randn((b, n_out, n_in), generator=g, dtype=torch.float64)
            W.mul_(math.sqrt(mlp.C_W[l] / n_in))
            bias = torch.randn((b, n_out), generator=g, dtype=torch.float64)
            bias.mul_(math.sqrt(mlp.C_b[l]))
            Ws.append(W)
            bs.append(bias)
        return Ws, bs

    def parameters(self, start=0, stop=None):
        """Weights and biases of networks ``start .. stop-1``.

        Returns
        -------
        weights : list of tensors (stop-start, n_l, n_{l-1}), l = 1..L
        biases : list of tensors (stop-start, n_l)
        """
        stop = self.networks if stop is None else stop
        if not 0 <= start < stop <= self.networks:
            raise ValueError(f"need 0 <= start < stop <= networks={self.networks}; got "
                             f"start={start}, stop={stop}")
        b = self.block_size
        Ws = [[] for _ in range(self.mlp.depth)]
        bs = [[] for _ in range(self.mlp.depth)]
        for k in range(start // b, (stop - 1) // b + 1):
            lo, hi = max(start, k * b) - k * b, min(stop, (k + 1) * b) - k * b
            W_k, b_k = self._draw_block(k)
            for l in range(self.mlp.depth):
                Ws[l].append(W_k[l][lo:hi])
                bs[l].append(b_k[l][lo:hi])
        conv = dict(dtype=self.dtype, device=self.device)
        return ([torch.cat(w).to(**conv) for w in Ws], [torch.cat(v).to(**conv) for v in bs])

    # ------------------------------------------------------------------
    # inputs and per-network quantities
    # ------------------------------------------------------------------

    def single_input(self, K1: float) -> np.ndarray:
        """An input ``x`` (1, n0) with ``C_b + C_W |x|^2 / n0 = K1`` (first-layer kernel)."""
        K1 = float(K1)
        G0 = (K1 - self.mlp.C_b[0]) / self.mlp.C_W[0]
        if not math.isfinite(K1) or G0 < 0:
            raise ValueError(f"K1={K1} must be finite and >= C_b of the first layer "
                             f"({self.mlp.C_b[0]}), since |x|^2/n0 = (K1 - C_b)/C_W >= 0")
        return np.full((1, self.mlp.n0), math.sqrt(G0))

    def _inputs(self, x):
        x = validate_inputs(x, self.mlp.n0)
        return torch.as_tensor(x, dtype=self.dtype, device=self.device)

    def preactivations(self, x, start=0, stop=None):
        """Preactivations of networks ``start..stop-1``: list of (m, n_l, N), l = 1..L."""
        Ws, bs = self.parameters(start, stop)
        return _ntk.preactivations(Ws, bs, self._inputs(x), self.mlp)

    def ntk(self, x, start=0, stop=None):
        """NTK by the forward equation: list of (m, n_l, n_l, N, N), l = 1..L."""
        Ws, bs = self.parameters(start, stop)
        return _ntk.ntk_forward(Ws, bs, self._inputs(x), self.mlp)

    # ------------------------------------------------------------------
    # measurement
    # ------------------------------------------------------------------

    def _bytes_per_network(self, N, need_ntk, need_4pt):
        w = self.mlp.widths
        item = torch.finfo(self.dtype).bits // 8
        nmax = max(w[1:])
        count = 2 * self.n_parameters + 6 * sum(w[1:]) * N
        if need_ntk:
            count += 5 * nmax * nmax * N * N + 2 * nmax * N ** 3
        if need_4pt:
            count += 4 * N ** 4 + 2 * nmax * N ** 2
        return item * count

    def _deriv_bytes_per_network(self, N, layer, neurons, stats=None):
        """Working memory of the P..U pair patterns per network.

        Plain MLPs: :func:`pdlt.experiment.estimators_derivative.batched_bytes_per_network`
        (the batched recursions). Residual MLPs take the autodiff path
        (:func:`pdlt.experiment.ntk.derivative_pairs`), whose outputs are ``J``
        (s N, P), ``G`` ((s N)^2, P) and the third derivatives (s^2 N^3, P) with
        ``s = min(neurons, n_layer)``; autodiff temporaries are counted as three
        times that. ``stats``: the statistics among P..U computed (default all).
        """
        if not self.mlp.is_residual:
            fields = [_PAIR_SOURCE[k] for k in (stats or _PAIR_SOURCE)]
            return batched_bytes_per_network(self.mlp, N, layer, neurons, fields,
                                             item=torch.finfo(self.dtype).bits // 8)
        w = self.mlp.widths
        s = min(neurons, w[layer])
        P = sum(w[l] * w[l + 1] + w[l + 1] for l in range(layer))
        item = torch.finfo(self.dtype).bits // 8
        return item * 3 * (s * N + (s * N) ** 2 + s * s * N ** 3) * P

    def measure(self, x=None, stats=("K", "Theta"), layers=None, *, K1=None, K_theory=None,
                progress=None, backend="local", address=None, shards=None, checkpoint=None,
                workers=None, derivative_neurons=None) -> Measurement:
        """Measure statistics of ``shared/NOTATION.md`` with standard errors.

        Parameters
        ----------
        x : array_like (N, n0), optional
            Inputs. Give exactly one of ``x`` and ``K1``.
        stats : sequence of str
            Names from NOTATION.md: ``K, G1, V, Theta, A, B, D, F, P, Q, R,
            S, T, U``, plus ``V_pair`` and ``V_same`` (the two V estimators;
            asking for ``V`` returns all three).
        layers : sequence of int, optional
            Layers to measure (1-based); default all.
        K1 : float, optional
            Single input with first-layer kernel ``K1`` (:meth:`single_input`);
            every statistic is then returned as a scalar, like
            ``pdlt.flow(mlp, K1=...)``.
        K_theory : array_like, optional
            Infinite-width kernel at every layer, shape (L,) or (L, N, N), or
            a ``pdlt.theory.Flow``; needed for ``G1``.
        progress : bool, optional
            tqdm progress bar on stderr; default: shown when a run lasts
            more than 2 s. Over networks for the plain local run, over
            shards when the ensemble is sharded.
        backend : {"local", "ray"}, default "local"
            ``"ray"`` runs the shards as Ray tasks (needs ``pip install
            'pdlt[ray]'``; see :mod:`pdlt.experiment.distributed`).
        address : str, optional
            Ray cluster to connect to (``ray.init(address=...)``, e.g.
            ``"auto"`` or ``"ray://head:10001"``); default: start a local Ray
            instance with ``workers`` CPUs and shut it down afterwards. An
            already initialized Ray session is used as it is.
        shards : int, optional
            Number of shards (contiguous ranges of network indices). Default:
            the plain single pass for ``backend="local"`` without a
            checkpoint; otherwise chosen from the ensemble size and the
            number of Ray CPUs. The result does not depend on it beyond
            float rounding.
        checkpoint : str or path, optional
            File (``.npz``) holding the sufficient-statistic sums of the
            shards already done; an interrupted run given the same file
            resumes from it. Refused with an error if it was written for a
            different measurement.
        workers : int, optional
            CPUs of the local Ray instance started when ``address`` is None
            (default ``os.cpu_count()``); ignored otherwise.
        derivative_neurons : int, optional
            ``s >= 2``: the P, Q, R, S, T, U estimators average over the
            ordered pairs ``i != j`` of the first ``s`` neurons of each layer
            (all of them where the layer has at most ``s``). Neurons are
            exchangeable at initialization, so every ``s`` gives an unbiased
            estimator; the cost per network grows like ``s^2`` and the
            standard error falls with ``s`` until the network-to-network
            scatter dominates. Default :data:`DEFAULT_DERIVATIVE_NEURONS`
            (the best standard error per CPU second measured; see the
            Notes). Sharded and Ray runs pass it on; checkpoints record it.

        Returns
        -------
        Measurement
            ``result["K"]`` is an :class:`Estimate` with mean and stderr of
            shape (L', N, N) (or (L',) for ``K1``); ``result.layer(l)["V"]``
            the estimate at one layer. Shapes per layer: ``K, G1, Theta``
            (N, N); ``V, A, B, D, F, P, Q, R, S, T, U`` (N, N, N, N).

        Notes
        -----
        Statistics whose estimator needs two different neurons (``V_pair,
        A, B, D, F, P, Q, R, S, T, U``) are NaN at a layer of width 1 (the
        usual output layer); ``V`` there falls back to ``V_same`` for one
        input. ``V`` is ``V_pair`` for several inputs (``V_same`` only
        gives the pairing-symmetrized vertex) and, for one input, whichever
        of ``V_pair``, ``V_same`` has the smaller standard error.
        ``P .. U`` use autodiff on ``s = min(derivative_neurons, n_l)``
        neurons (:func:`pdlt.experiment.ntk.derivative_pairs`): per network
        about ``(s N)^2 + s^2 N^3`` reverse passes and ``(s N)^2 (1 + N) P``
        floats of memory, ``P`` the parameters up to the layer, independent
        of the width beyond ``P``. Default ``s = 2``: on tanh and relu
        networks of width 128, depth 6, one input, the variance times the
        CPU time per network of each of P..U was smallest at ``s = 2`` or
        within a factor 2 of it (``s = 2, 4, 8``: 20, 75, 279 ms per
        network; the standard error falls more slowly than ``1/s`` because
        network-to-network scatter dominates); ``s >= n`` gives the
        estimator over all ordered pairs.

        Sharded runs (``shards``, ``checkpoint`` or ``backend="ray"``)
        compute the per-group sums of the sufficient statistics for each
        network range separately and add them on the driver in the order of
        the ranges, so the result equals the single-pass one up to float
        rounding (exactly, when shard boundaries fall on group boundaries).
        """
        if backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray'; got {backend!r}")
        if shards is not None and (isinstance(shards, bool) or int(shards) != shards
                                   or shards < 1):
            raise ValueError(f"shards must be a positive integer or None; got {shards!r}")
        if workers is not None and (isinstance(workers, bool) or int(workers) != workers
                                    or workers < 1):
            raise ValueError(f"workers must be a positive integer or None; got {workers!r}")
        if address is not None and backend != "ray":
            raise ValueError(f"address={address!r} is only used by backend='ray'; pass "
                             "backend='ray' or drop address")
        if checkpoint is not None:
            # before any network is drawn: a path that cannot be written would
            # otherwise lose the whole run at its end
            check_checkpoint_path(checkpoint, "checkpoint")
        plan = self._plan(x, stats, layers, K1, K_theory, derivative_neurons)
        if backend == "local" and shards is None and checkpoint is None:
            sums = {l: GroupSums(self.networks) for l in plan.layers}
            bar = counter(self.networks, progress, unit="net", desc="networks")
            try:
                self._accumulate(plan, 0, self.networks, sums, bar)
            finally:
                if bar is not None:
                    bar.close()
        else:
            sums = sharded_sums(self, plan, backend=backend, address=address, shards=shards,
                                checkpoint=checkpoint, workers=workers, progress=progress)
        return self._estimate(plan, sums)

    # -- the three steps of measure(): plan, sums over a network range, estimates --

    def _plan(self, x, stats, layers, K1, K_theory, derivative_neurons=None) -> Plan:
        """Validate the arguments of :meth:`measure` once; what to compute."""
        mlp = self.mlp
        dn = derivative_neurons
        if dn is None:
            dn = DEFAULT_DERIVATIVE_NEURONS
        elif isinstance(dn, bool) or not isinstance(dn, (int, np.integer)) or dn < 2:
            raise ValueError("derivative_neurons must be an integer >= 2 (the P..U estimators "
                             f"average over pairs of different neurons) or None; got {dn!r}")
        if (x is None) == (K1 is None):
            raise ValueError("give exactly one of x (inputs, shape (N, n0)) and K1 (single input)")
        xs = self.single_input(K1) if K1 is not None else validate_inputs(x, mlp.n0)
        N = xs.shape[0]
        if isinstance(stats, str):
            stats = [s.strip() for s in stats.split(",") if s.strip()]
        stats = list(dict.fromkeys(stats))
        for s in stats:
            if s not in STATISTICS:
                raise ValueError(f"unknown statistic {s!r} in stats; choose from "
                                 f"{', '.join(STATISTICS)}")
        if layers is None:
            layers = list(range(1, mlp.depth + 1))
        layers = sorted(set(int(l) for l in layers))
        if not layers or layers[0] < 1 or layers[-1] > mlp.depth:
            raise ValueError(f"layers must lie in 1..{mlp.depth}; got {layers}")
        Kt = None
        if "G1" in stats:
            if K_theory is None:
                raise ValueError("G1 = n (E[zz] - K) needs the infinite-width kernel: pass "
                                 "K_theory=pdlt.flow(mlp, x).K (or the Flow itself)")
            Kt = np.asarray(K_theory.K if hasattr(K_theory, "K") else K_theory, dtype=float)
            if Kt.shape[0] != mlp.depth:
                raise ValueError(f"K_theory must hold one kernel per layer ({mlp.depth}); got "
                                 f"shape {Kt.shape}")
            Kt = Kt.reshape(mlp.depth, N, N)
        expanded = []
        for s in stats:
            expanded += ["V_pair", "V_same"] if s == "V" else [s]
        base = tuple(dict.fromkeys(expanded))
        need = set()
        for s in base:
            need.update(SUFFICIENT[s])
        return Plan(xs=np.ascontiguousarray(xs, dtype=float), stats=tuple(stats), base=base,
                     need=frozenset(need), layers=tuple(layers), K1=K1, Kt=Kt,
                     deriv_neurons=int(dn))

    def _chunk(self, plan) -> int:
        """Networks per chunk (a multiple of the block size when it can be)."""
        M = self.networks
        per_net = self._bytes_per_network(plan.xs.shape[0], plan.need_ntk, plan.need_4pt)
        chunk = self.chunk_size or int(max(1, min(M, self.memory_budget // per_net)))
        if self.chunk_size is None and chunk >= self.block_size and chunk < M:
            chunk -= chunk % self.block_size  # whole random blocks: each drawn once
        return chunk

    def _accumulate(self, plan, start, stop, sums, bar=None) -> None:
        """Add the sufficient statistics of networks ``start..stop-1`` to ``sums``.

        ``sums`` maps layer -> :class:`GroupSums` of the whole ensemble. Chunks
        follow one global grid (multiples of :meth:`_chunk`), so a network is
        computed in the same chunk whichever range it is asked for in, except
        where the range cuts a chunk.
        """
        mlp = self.mlp
        xt = self._inputs(plan.xs)
        N = xt.shape[0]
        need, need_deriv, layers = plan.need, plan.need_deriv, plan.layers
        upto = layers[-1]
        chunk = self._chunk(plan)
        lo = start
        while lo < stop:
            hi = min(stop, (lo // chunk + 1) * chunk)
            Ws, bs = self.parameters(lo, hi)
            for l, z, H in _ntk._forward(Ws, bs, xt, self._tact, upto, ntk=plan.need_ntk,
                                         mlp=mlp):
                if l in sums:
                    for name, val in _sufficient(z, H, need).items():
                        sums[l].add(name, val, lo)
            if need_deriv:
                for l in layers:
                    if mlp.widths[l] < 2:
                        continue
                    per_net = self._deriv_bytes_per_network(N, l, plan.deriv_neurons,
                                                           need_deriv)
                    sub = int(max(1, min(chunk, self.memory_budget // per_net)))
                    for s0 in range(0, hi - lo, sub):
                        s1 = min(hi - lo, s0 + sub)
                        sl = [w[s0:s1] for w in Ws], [b[s0:s1] for b in bs]
                        zl = _ntk.preactivations(sl[0], sl[1], xt, mlp, l)[-1]
                        for name, val in _deriv_sufficient(sl[0], sl[1], xt, mlp, l, zl,
                                                           need_deriv,
                                                           plan.deriv_neurons).items():
                            sums[l].add(name, val, lo + s0)
            if bar is not None:
                bar.update(hi - lo)
            lo = hi

    def _estimate(self, plan, sums) -> Measurement:
        """Estimates with jackknife errors from the per-layer group sums."""
        mlp, M = self.mlp, self.networks
        N = plan.xs.shape[0]
        out = []
        for l in plan.layers:
            n_prev = mlp.widths[l - 1]
            ests = {}
            for s in plan.base:
                if s in _PAIR_STATS and mlp.widths[l] < 2:
                    shape = (N,) * 4
                    ests[s] = _nan_estimate(shape, M)
                    continue
                ests[s] = estimate_statistic(s, sums[l], n_prev,
                                             None if plan.Kt is None else plan.Kt[l - 1])
            if "V" in plan.stats:
                ests["V"] = _choose_V(ests["V_pair"], ests["V_same"], N, mlp.widths[l])
            ordered = {}
            for s in plan.stats:
                ordered[s] = ests[s]
                if s == "V":
                    ordered["V_pair"], ordered["V_same"] = ests["V_pair"], ests["V_same"]
            for s in plan.base:
                ordered.setdefault(s, ests[s])
            if plan.K1 is not None:
                ordered = {k: _squeeze(v) for k, v in ordered.items()}
            out.append(LayerMeasurement(l, ordered))
        return Measurement(out, mlp=mlp, n_networks=M, seed=self.seed)


# ----------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------

def _nan_estimate(shape, M):
    return Estimate(np.full(shape, np.nan), np.full(shape, np.nan), M)


def _squeeze(est):
    m = np.asarray(est.mean)
    return Estimate(float(m.reshape(-1)[0]) if m.size == 1 else m,
                    float(np.asarray(est.stderr).reshape(-1)[0]) if m.size == 1 else est.stderr,
                    est.n_networks)


def _choose_V(pair, same, N, width):
    if width < 2:
        if N == 1:
            return same
        warnings.warn("V at a layer of width 1 with several inputs cannot be separated from "
                      "its pairing-symmetrized form; V is NaN there (see V_same)", stacklevel=3)
        return pair
    if N > 1:
        return pair
    return pair if float(np.max(pair.stderr)) <= float(np.max(same.stderr)) else same


def _np(t):
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


def _sufficient(z, H, need):
    """Per-network neuron averages (sufficient statistics) at one layer.

    z : (B, n, N); H : (B, N, n, N, n) internal NTK layout ``H[(a1,i1),(a2,i2)]`` or None.
    Returns a dict name -> ndarray (B, ...).
    """
    B, n, N = z.shape
    out = {}
    q = z[:, :, :, None] * z[:, :, None, :]  # (B, n, N, N): z_{i;a} z_{i;b}
    if "zz" in need:
        out["zz"] = _np(q.mean(1))
    if need & {"zzzz_same", "zzzz_pair"}:
        qq = torch.einsum("Biab,Bicd->Babcd", q, q)  # sum_i q_i (x) q_i
        if "zzzz_same" in need:
            out["zzzz_same"] = _np(qq / n)
        if "zzzz_pair" in need and n >= 2:
            Sq = q.sum(1)
            out["zzzz_pair"] = _np((Sq[:, :, :, None, None] * Sq[:, None, None] - qq) / (n * (n - 1)))
    if H is None:
        return out
    hd = H.diagonal(dim1=2, dim2=4)  # (B, N, N, n): H_{ii;ab}
    if "Hd" in need:
        out["Hd"] = _np(hd.mean(-1))
    if n < 2:
        return out
    norm = n * (n - 1)
    if "HH_A" in need:
        Sh = hd.sum(-1)
        out["HH_A"] = _np((Sh[:, :, :, None, None] * Sh[:, None, None]
                           - torch.einsum("Babi,Bcdi->Babcd", hd, hd)) / norm)
    if "HH_B" in need:
        # B[a,b,c,d] = mean_{i!=j} H_{ij;ac} H_{ij;bd}
        full = torch.einsum("Baicj,Bbidj->Babcd", H, H)
        diag = torch.einsum("Baci,Bbdi->Babcd", hd, hd)
        out["HH_B"] = _np((full - diag) / norm)
    if "Hzz_D" in need:
        Sh, Sq = hd.sum(-1), q.sum(1)
        out["Hzz_D"] = _np((Sh[:, :, :, None, None] * Sq[:, None, None]
                            - torch.einsum("Babi,Bicd->Babcd", hd, q)) / norm)
    if "Hzz_F" in need:
        # F[a,b,c,d] = mean_{i!=j} H_{ij;ac} z_{i;b} z_{j;d}
        Y = torch.einsum("Baicj,Bjd->Baicd", H, z)
        full = torch.einsum("Baicd,Bib->Babcd", Y, z)
        diag = torch.einsum("Baci,Bibd->Babcd", hd, q)
        out["Hzz_F"] = _np((full - diag) / norm)
    return out


def _offdiag_mean(t):
    """Mean over ordered pairs i != j of a pair tensor (B, s, s, ...)."""
    s = t.shape[1]
    diag = torch.diagonal(t, dim1=1, dim2=2)  # (B, ..., s)
    return (t.sum((1, 2)) - diag.sum(-1)) / (s * (s - 1))


#: sufficient statistic -> the DerivativePairs field it is made from
_PAIR_SOURCE = {"P": "dH_ijj", "Q": "dH_iij", "R": "ddI_iijj", "S": "ddII_iijj",
                "T": "ddII_ijij", "U": "ddII_ijji"}


def _deriv_sufficient(Ws, bs, x, mlp, layer, z, need, neurons=None):
    """Sufficient statistics of P, Q (dNTK) and R, S, T, U (ddNTKs).

    Averages over the ordered pairs ``i != j`` of the first ``neurons`` neurons
    of the layer (all when None or >= the width; exchangeability of the neurons
    keeps the average unbiased), from
    :func:`pdlt.experiment.estimators_derivative.derivative_pairs_batched` (the
    numbers of :func:`pdlt.experiment.ntk.derivative_pairs`, by batched recursions).
    z : (B, n, N) preactivations of the layer. Returns name -> ndarray (B, N, N, N, N).
    """
    n = z.shape[1]
    s = n if neurons is None else int(min(neurons, n))
    need = [k for k in _PAIR_SOURCE if k in set(need)]
    # batched layer recursions (autodiff for residual MLPs): same numbers, ~10x faster
    pairs = derivative_pairs_batched(Ws, bs, x, mlp, layer, s,
                                     fields=[_PAIR_SOURCE[k] for k in need])
    zs = z[:, :s]
    out = {}
    if "P" in need:  # dH_{i j j; a0 a1 a2} z_{i; a3}
        out["dHz_P"] = _np(_offdiag_mean(torch.einsum("Bijabc,Bid->Bijabcd", pairs.dH_ijj, zs)))
    if "Q" in need:  # dH_{i i j; a0 a1 a2} z_{j; a3}
        out["dHz_Q"] = _np(_offdiag_mean(torch.einsum("Bijabc,Bjd->Bijabcd", pairs.dH_iij, zs)))
    for k, name in (("R", "ddI_R"), ("S", "ddII_S"), ("T", "ddII_T"), ("U", "ddII_U")):
        if k in need:
            out[name] = _np(_offdiag_mean(getattr(pairs, _PAIR_SOURCE[k])))
    return out
