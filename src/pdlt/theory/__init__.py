"""Layer-to-layer recursions of the effective theory (numpy/scipy only).

Every statistic has one step from layer l to layer l+1, written for N inputs
(:mod:`pdlt.theory.kernel`, :mod:`~pdlt.theory.vertex`, :mod:`~pdlt.theory.ntk`,
:mod:`~pdlt.theory.dntk`, :mod:`~pdlt.theory.ddntk`, :mod:`~pdlt.theory.ntk_mean`),
folded over depth by :func:`pdlt.statistics` (:mod:`pdlt.theory.statistics`).
"""

from . import criticality  # the module; the function is pdlt.criticality
from . import statistics  # the module; the function is pdlt.statistics
from . import (delta_expansion, delta_expansion_vertex, information, linear, nearly_gaussian, phase,
               residual)
from .criticality import NoCriticalPointError, chi_parallel, chi_perp
from .information import optimal_aspect_ratio
from .kernel import KernelNotPSDError, first_layer, kernel_step
from .phase import depth_scales, phase_diagram
from .kernel_blocks import KernelMatrices, kernel_matrix
from .ntk_criticality import NTK_STATISTICS, critical_learning_rates, ntk_slopes
from .residual import residual_criticality
from .statistics import Flow, LayerStatistics, Statistics, flow
from .vertex import vertex_slope

__all__ = ["Flow", "KernelNotPSDError", "LayerStatistics", "Statistics", "first_layer", "flow",
           "kernel_step", "statistics", "KernelMatrices", "kernel_matrix",
           "criticality", "chi_parallel", "chi_perp", "NoCriticalPointError", "depth_scales",
           "phase_diagram", "vertex_slope", "linear", "nearly_gaussian",
           "ntk_slopes", "critical_learning_rates", "NTK_STATISTICS",
           "information", "residual", "optimal_aspect_ratio", "residual_criticality",
           "delta_expansion", "delta_expansion_vertex", "phase"]
