"""pdlt: the effective theory of deep neural networks, computable and checked.

The theory of *The Principles of Deep Learning Theory* (Roberts & Yaida, with
Hanin; arXiv:2106.10165) as functions, each checked against ensembles of real
networks (``pdlt.experiment``, which needs PyTorch). Conventions:
``shared/NOTATION.md``.
"""

from ._validation import ValidityWarning
from .activations import Activation, ActivationError, activation, available_activations
from .network import MLP
from .theory.criticality import criticality
from .theory.information import optimal_aspect_ratio
from .theory.statistics import Statistics, flow, statistics
from .theory.kernel_blocks import kernel_matrix
from .theory.residual import residual_criticality

__version__ = "0.1.0"

__all__ = ["Activation", "ActivationError", "activation", "available_activations", "MLP",
           "flow", "statistics", "Statistics", "kernel_matrix", "criticality", "optimal_aspect_ratio",
           "residual_criticality", "ValidityWarning", "__version__"]
