"""What one :meth:`~pdlt.experiment.Ensemble.measure` call computes, and the
group sums of one network range.

A leaf of :mod:`pdlt.experiment` (numpy and :mod:`~pdlt.experiment.estimators`
only): the single-pass ensemble and the sharded driver
(:mod:`pdlt.experiment.distributed`) both use it, so neither imports the
other for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .estimators import GroupSums, group_of

__all__ = ["Plan", "DEFAULT_DERIVATIVE_NEURONS", "range_sums", "group_span", "merge_parts"]

#: default number of neurons per layer whose ordered pairs the P..U estimators
#: average over (see :meth:`pdlt.experiment.Ensemble.measure`, ``derivative_neurons``)
DEFAULT_DERIVATIVE_NEURONS = 2

NTK_STATS = frozenset({"Theta", "A", "B", "D", "F"})
DERIV_STATS = frozenset({"P", "Q", "R", "S", "T", "U"})
_FOUR_POINT = frozenset({"zzzz_pair", "zzzz_same", "HH_A", "HH_B", "Hzz_D", "Hzz_F"})


@dataclass(frozen=True, eq=False)
class Plan:
    """What one :meth:`~pdlt.experiment.Ensemble.measure` call computes (validated arguments).

    ``xs`` (N, n0) float64 inputs; ``stats`` as asked; ``base`` the
    estimators to run (``V`` expanded); ``need`` the sufficient statistics;
    ``layers`` sorted 1-based; ``K1`` the single-input kernel or None;
    ``Kt`` (L, N, N) infinite-width kernel for G1 or None; ``deriv_neurons``
    the neuron subset size of the P..U estimators.
    """

    xs: np.ndarray
    stats: tuple
    base: tuple
    need: frozenset
    layers: tuple
    K1: float | None = None
    Kt: np.ndarray | None = None
    deriv_neurons: int = DEFAULT_DERIVATIVE_NEURONS

    @property
    def need_ntk(self) -> bool:
        return bool(set(self.base) & NTK_STATS)

    @property
    def need_deriv(self) -> list:
        return [s for s in self.base if s in DERIV_STATS]

    @property
    def need_4pt(self) -> bool:
        return bool(self.need & _FOUR_POINT)


def group_span(start, stop, M):
    """``(g0, g1)``: the jackknife groups ``g0 .. g1 - 1`` that networks ``start..stop-1`` touch."""
    return int(group_of(start, M)), int(group_of(stop - 1, M)) + 1


def range_sums(ens, plan, start, stop) -> dict:
    """Group sums of networks ``start..stop-1``: ``{layer: {name: rows}}``.

    ``rows`` has shape ``(g1 - g0, ...)``: the sums of groups
    ``g0 = group_of(start) .. g1 - 1 = group_of(stop - 1)``, the only groups
    the range touches (:func:`group_span`).
    """
    M = ens.networks
    sums = {l: GroupSums(M) for l in plan.layers}
    ens._accumulate(plan, start, stop, sums)
    g0, g1 = group_span(start, stop, M)
    return {l: {name: np.ascontiguousarray(arr[g0:g1]) for name, arr in sums[l].sums.items()}
            for l in plan.layers}


def merge_parts(M, layers, parts) -> dict:
    """Add range parts ``{(start, stop): range_sums(...)}`` into whole-ensemble
    :class:`~pdlt.experiment.estimators.GroupSums`, in the order of the ranges."""
    covered = sum(b - a for a, b in parts)
    if covered != M:  # pragma: no cover - guarded by construction
        raise RuntimeError(f"shards cover {covered} of {M} networks")
    sums = {l: GroupSums(M) for l in layers}
    for (a, b) in sorted(parts):
        g0, g1 = group_span(a, b, M)
        for l in layers:
            for name, rows in parts[(a, b)][l].items():
                tot = sums[l].sums.setdefault(name, np.zeros((sums[l].G,) + rows.shape[1:]))
                tot[g0:g1] += rows
    return sums
