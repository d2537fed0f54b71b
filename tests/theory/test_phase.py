"""Off criticality (pdlt.theory.phase): fixed points, depth scales, phase diagram.

Reference values: ReLU's fixed point ``K* = C_b/(1 - C_W/2)`` with
``chi = C_W/2`` (closed form); the approach to a fixed point against the
kernel flow of :func:`pdlt.flow`; the critical line against ``chi_perp = 1``.
"""

import math

import numpy as np
import pytest

import pdlt
from pdlt.theory import criticality as C
from pdlt.theory import phase as P

EPS = np.finfo(float).eps


def test_depth_scales_relu_closed_form():
    # ReLU: K* = C_b/(1 - C_W/2), chi = C_W/2
    d = P.depth_scales("relu", 0.2, 1.5)
    assert d.K_star == pytest.approx(0.8) and d.phase == "ordered"
    assert d.xi_parallel == pytest.approx(-1 / math.log(0.75))
    assert P.depth_scales("relu", 0.2, 2.5).phase == "exploding"


def test_depth_scale_governs_the_approach():
    d = P.depth_scales("tanh", 0.1, 1.5, K1=1.0)
    f = pdlt.flow(pdlt.MLP(n0=1, width=1, depth=60, activation="tanh", C_b=0.1, C_W=1.5), K1=1.0)
    dev = np.abs(f.K - d.K_star)
    # near K*: dev' = chi dev (1 + O(dev)); rounding of dev is eps K*/dev
    l = 20
    ratio = dev[l + 1] / dev[l]
    tol = 10 * dev[l] / d.K_star + 64 * EPS * d.K_star / dev[l]
    assert ratio == pytest.approx(math.exp(-1 / d.xi_parallel), rel=tol)
    assert abs(C.kernel_map("tanh", d.K_star, 0.1, 1.5) - d.K_star) < 1e-13


def test_phase_diagram_tanh():
    pd = P.phase_diagram("tanh", C_b=[0.0, 0.3], C_W=[0.8, 1.0, 1.5, 2.9])
    assert pd.phase.shape == (2, 4)
    assert pd.phase[0, 0] == "ordered" and pd.phase[0, 1] == "critical"
    assert pd.phase[0, 2] == "chaotic" and pd.phase[1, 0] == "ordered"
    # the critical line has chi_perp = 1 along it
    line = pd.critical_line
    i = len(line["K_star"]) // 2
    assert C.chi_perp("tanh", line["K_star"][i], line["C_W"][i]) == pytest.approx(1, rel=1e-12)


def test_fixed_points_of_half_stable_map():
    res = C.criticality("swish")
    ks = [p.K for p in P.fixed_points("swish", res.C_b, res.C_W)]
    assert any(abs(k - 14.593) < 0.01 for k in ks)
