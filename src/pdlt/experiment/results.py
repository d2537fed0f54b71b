"""Named results of :meth:`pdlt.experiment.Ensemble.measure`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .estimators import Estimate

__all__ = ["LayerMeasurement", "Measurement"]


@dataclass(frozen=True)
class LayerMeasurement:
    """Estimates of the requested statistics at one layer.

    Attributes
    ----------
    layer : int
        l, 1-based.
    estimates : dict of str -> Estimate
        By the names of ``shared/NOTATION.md`` (``"K"``, ``"V"``, ...).
        Also reachable as ``m["K"]`` and ``m.K``.
    """

    layer: int
    estimates: dict = field(default_factory=dict)

    def __getitem__(self, name) -> Estimate:
        try:
            return self.estimates[name]
        except KeyError:
            raise KeyError(f"statistic {name!r} was not measured at layer {self.layer}; "
                           f"measured: {', '.join(self.estimates)}") from None

    def __getattr__(self, name):
        est = self.__dict__.get("estimates", {})
        if name in est:
            return est[name]
        raise AttributeError(name)

    def to_dict(self) -> dict:
        """``{"layer": l, "K": {"mean": .., "stderr": ..}, ...}``."""
        return {"layer": self.layer, **{k: v.to_dict() for k, v in self.estimates.items()}}


class Measurement(tuple):
    """Per-layer estimates: a tuple of :class:`LayerMeasurement`.

    ``measurement["K"]`` stacks one statistic over the measured layers into
    one :class:`Estimate` with ``mean`` and ``stderr`` of shape (L', ...),
    like ``pdlt.flow(...).K`` on the theory side.

    Attributes
    ----------
    layers : tuple of int
        The measured layers.
    n_networks : int
    seed : int
    mlp : pdlt.MLP
    """

    def __new__(cls, layers, *, mlp=None, n_networks=0, seed=0):
        obj = super().__new__(cls, layers)
        obj.mlp = mlp
        obj.n_networks = n_networks
        obj.seed = seed
        return obj

    @property
    def layers(self) -> tuple:
        return tuple(m.layer for m in self)

    def __getitem__(self, item):
        if isinstance(item, str):
            ests = [m[item] for m in self]
            return Estimate(np.array([e.mean for e in ests]), np.array([e.stderr for e in ests]),
                            self.n_networks)
        return super().__getitem__(item)

    def layer(self, l: int) -> LayerMeasurement:
        """The :class:`LayerMeasurement` of layer ``l`` (1-based)."""
        for m in self:
            if m.layer == l:
                return m
        raise KeyError(f"layer {l} was not measured; measured layers: {self.layers}")

    def to_dict(self) -> dict:
        """JSON-ready, shaped like ``pdlt flow --json``: ``{"layers": [...], ...}``."""
        return {"layers": [m.to_dict() for m in self], "n_networks": self.n_networks,
                "seed": self.seed}
