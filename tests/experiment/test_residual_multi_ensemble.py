"""N-input residual V and G1 (pdlt.theory.residual_multi) against real residual networks.

Two distinct inputs, residual criticality, gamma = 0.5, depth 4, widths 16 and 32
(Richardson extrapolation 2 m(32) - m(16) with the measured allowance |m(32) - m(16)|/2),
estimator pdlt.report.residual.residual_multi_measure (numpy networks; Rao-Blackwellized
last layer and cross-fitted zero-mean controls: unbiased at every width). Every entry of V
at layers 2-4, off-diagonal ones included, must pass ``conftest.powered`` with resolution
<= 50 % and reject the theory x0, x0.5 and x2. G1 is an agreement check only: its
off-diagonal entries are 2-5 % of K against per-network fluctuations of order sqrt(V/n) K,
which these controls do not remove (resolution 60-130 % at 8000 networks; the one-input
G1 is resolved by pdlt.experiment.estimators.residual_metric_martingale, whose d-controls
need per-neuron Gaussian averages with a mean shift that are not written for N inputs).
Seeds fixed.
"""

import numpy as np
import pytest

import pdlt
from conftest import powered
from pdlt.report.residual import residual_multi_measure
from pdlt.report.rows import width_extrapolation
from pdlt.theory.residual import residual_mlp

X2 = np.array([[1.0, 0.0], [0.6, 0.8]])


@pytest.mark.parametrize("act,networks", [("relu", 8000), ("tanh", 8000)])
def test_multi_input_vertex_and_metric_against_real_networks(act, networks):
    ms = []
    for k, n in enumerate((16, 32)):
        m = residual_mlp(act, 0.5, n0=2, width=n, depth=4, n_out=n)
        ms.append(residual_multi_measure(m, X2, networks, seed=71 + k))
    theory = pdlt.statistics(m, X2, get=["V", "G1"])
    for name in ("V", "G1"):
        ext, se, al = width_extrapolation(ms[0][name][0], ms[0][name][1], ms[1][name][0],
                                          ms[1][name][1])
        first = 1 if name == "V" else 2        # G1 = 0 at layer 2 (exactly, any width)
        t, e, s_, a = (v[first:].ravel() for v in (theory[name], ext, se, al))
        if name == "V":
            powered(t, e, s_, a, label=f"residual {act} N-input V", max_resolution=0.5)
        else:
            powered(t, e, s_, a, label=f"residual {act} N-input G1", factors=(), zero=False)
