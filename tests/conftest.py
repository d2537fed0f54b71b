"""Shared configurations, tolerances and helpers for the test suite."""

import numpy as np
import pytest

EPS = np.finfo(float).eps

# named configurations used across tests
SMOOTH = ["tanh", "erf", "sin", "sigmoid", "softplus", "swish", "gelu"]
KINKED = ["relu", "leaky_relu", "elu"]
ALL_NAMED = SMOOTH + KINKED + ["linear"]


def max_zscore(mean, stderr, theory, allowance=0.0):
    """Largest |mean - theory| / (stderr + allowance / 4) over all entries.

    ``allowance`` is a stated systematic (e.g. the O(1/n^2) truncation) added
    to 4 sigma: ``|dev| <= 4 stderr + allowance`` iff the result is < 4.
    """
    mean, stderr, theory = (np.asarray(a, float) for a in (mean, stderr, theory))
    dev = np.abs(mean - theory)
    return float(np.max(dev / (stderr + np.asarray(allowance, float) / 4.0 + 1e-300)))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
