"""Layer-to-layer recursions of the effective theory (numpy/scipy only).

Every statistic is a step function from layer l to layer l+1, composed into a
flow over depth by :func:`flow`.
"""

from .kernel import Flow, KernelNotPSDError, LayerStatistics, first_layer, flow, kernel_step

__all__ = ["Flow", "KernelNotPSDError", "LayerStatistics", "first_layer", "flow", "kernel_step"]
