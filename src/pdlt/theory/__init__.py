"""Layer-to-layer recursions of the effective theory (numpy/scipy only).

Every statistic is a step function from layer l to layer l+1, composed into a
flow over depth by :func:`flow`.
"""

from . import criticality  # the module; the function is pdlt.criticality
from . import delta_expansion, delta_expansion_vertex, information, linear, nearly_gaussian, phase, residual
from .information import optimal_aspect_ratio
from .residual import residual_criticality
from .criticality import NoCriticalPointError, chi_parallel, chi_perp
from .phase import depth_scales, phase_diagram
from .finite_ntk import NTK_STATISTICS, critical_learning_rates, ntk_fluctuation_flow, ntk_slopes
from .ntk_mean import ntk_mean_correction
from .kernel import Flow, KernelNotPSDError, LayerStatistics, first_layer, flow, kernel_step
from .kernel_blocks import KernelMatrices, kernel_matrix
from .vertex import (finite_width_flow, metric_step, metric_step_single, vertex_slope,
                     vertex_step, vertex_step_single)

__all__ = ["Flow", "KernelNotPSDError", "LayerStatistics", "first_layer", "flow", "kernel_step",
           "KernelMatrices", "kernel_matrix",
           "criticality", "chi_parallel", "chi_perp", "NoCriticalPointError", "depth_scales",
           "phase_diagram",
           "finite_width_flow", "vertex_slope", "vertex_step", "vertex_step_single",
           "metric_step", "metric_step_single", "linear", "nearly_gaussian",
           "ntk_fluctuation_flow", "ntk_mean_correction", "ntk_slopes", "critical_learning_rates", "NTK_STATISTICS",
           "information", "residual", "optimal_aspect_ratio", "residual_criticality",
           "delta_expansion", "delta_expansion_vertex", "phase"]
