"""Learning at infinite width: Bayesian inference, gradient descent, generalization.

Numpy/scipy only (no torch). The NNGP kernel ``K^(L)`` and the frozen NTK
``Theta^(L)`` of :func:`pdlt.flow` turn into

- :mod:`~pdlt.learning.bayes`: the NNGP posterior, the log evidence and model
  comparison (book ch. 6), :class:`NNGPRegressor`;
- :mod:`~pdlt.learning.kernel_learning`: gradient descent with the frozen NTK
  (discrete steps, infinite time, Newton's step, the stability bound, the
  kernel prediction over initializations; book ch. 7, 10), :class:`NTKRegressor`;
- :mod:`~pdlt.learning.finite_training`: the trained network at order 1/n
  (mean, covariance, NTK change) for any step schedule, from H1, A..U;
- :mod:`~pdlt.learning.generalization`: the bias-variance decomposition of the
  test error against C_W and depth, interpolation versus extrapolation
  (book §10.3), and the data sets used by the report.

The trained-network referee is :func:`pdlt.experiment.training.train_ensemble`.
"""

from ._common import SingularKernelError, UnstableLearningRateError
from .bayes import (EvidenceScan, NNGPRegressor, Posterior, evidence_scan, gp_posterior,
                    log_evidence, nngp_posterior)
from .generalization import (BiasVariance, Task, bias_variance, bias_variance_scan,
                             diabetes_task, interpolation_extrapolation, sine_task)
from .kernel_learning import (KernelPrediction, NTKRegressor, check_learning_rate, kernel_prediction,
                              linear_model_outputs, newton_step, ntk_prediction, propagator,
                              stability_bound)

from .finite_bayes import (FiniteWidthPosterior, ImportancePosterior, RepresentationShift,
                           finite_width_posterior, hebbian_kernel_shift, importance_posterior,
                           nearly_gaussian_posterior)
from .nearly_kernel import MetaKernels, meta_kernels, quadratic_model, quadratic_step
from .finite_training import (FiniteWidthTraining, TrainingStatistics, algorithm_schedule,
                              end_of_training, finite_width_learning_size, finite_width_training,
                              training_statistics)

__all__ = [
    # bayes
    "Posterior", "EvidenceScan", "gp_posterior", "log_evidence", "nngp_posterior",
    "evidence_scan", "NNGPRegressor",
    # kernel learning
    "KernelPrediction", "stability_bound", "check_learning_rate", "propagator",
    "linear_model_outputs", "newton_step", "kernel_prediction", "ntk_prediction",
    "NTKRegressor",
    # generalization
    "BiasVariance", "Task", "bias_variance", "bias_variance_scan",
    "interpolation_extrapolation", "sine_task", "diabetes_task",
    # finite width (Bayesian, nearly-kernel)
    "FiniteWidthPosterior", "ImportancePosterior", "RepresentationShift",
    "finite_width_posterior", "hebbian_kernel_shift", "importance_posterior",
    "nearly_gaussian_posterior", "MetaKernels", "meta_kernels", "quadratic_model",
    "quadratic_step",
    # finite width (the end of training)
    "FiniteWidthTraining", "TrainingStatistics", "algorithm_schedule", "end_of_training",
    "finite_width_training", "finite_width_learning_size", "training_statistics",
    # errors
    "SingularKernelError", "UnstableLearningRateError",
]
