"""Monte Carlo ensembles of real networks: the referee of the theory (needs PyTorch).

The only pdlt package that imports torch. :class:`Ensemble` draws M
finite-width MLPs, batched over the network axis, and
:meth:`Ensemble.measure` returns every statistic of ``shared/NOTATION.md``
with a standard error, per layer, with the names and shapes of the theory
side (:func:`pdlt.flow`).

Examples
--------
>>> import pdlt
>>> from pdlt.experiment import Ensemble
>>> mlp = pdlt.MLP(n0=1, width=16, depth=3, activation="relu", C_W=2.0)
>>> m = Ensemble(mlp, networks=200, seed=0).measure(K1=1.0, stats=["K"])
>>> m.layers
(1, 2, 3)
"""

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without torch
    raise ImportError(
        "pdlt.experiment needs PyTorch: pip install 'pdlt[torch]' (torch==2.13.0)") from exc

from .activations import TorchActivation, torch_activation
from .ensemble import DEFAULT_DERIVATIVE_NEURONS, DEFAULT_MEMORY_BUDGET, Ensemble
from .estimators import STATISTICS, Estimate
from .ntk import (DerivativePairs, ddntk_autodiff, derivative_pairs,
                  dntk_autodiff, network_function, ntk_autodiff, ntk_forward, preactivations)
from .results import LayerMeasurement, Measurement

__all__ = [
    "Ensemble",
    "Estimate",
    "Measurement",
    "LayerMeasurement",
    "STATISTICS",
    "DEFAULT_MEMORY_BUDGET",
    "preactivations",
    "ntk_forward",
    "ntk_autodiff",
    "dntk_autodiff",
    "ddntk_autodiff",
    "network_function",
    "derivative_pairs",
    "DerivativePairs",
    "DEFAULT_DERIVATIVE_NEURONS",
    "torch_activation",
    "TorchActivation",
]
