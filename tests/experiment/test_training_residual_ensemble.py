"""Trained residual networks against the order-1/n end-of-training prediction.

Residual tanh MLPs (gamma = 0.5 at residual criticality, plain output layer, depth 3),
N-input case: two training inputs and a test input, gradient descent; one-input case:
one training input with K1 = 1 and target 1.5, one Newton leap; measured by
:func:`pdlt.report.residual.residual_training_case` (antithetic pairs, NTK recorded).
Every comparison goes through ``powered``: it must pass and reject the theory x0.5 and
x2 (and x0). Measured numbers: :data:`pdlt.report.residual.RESIDUAL_TRAINING_CASES`.
"""

import dataclasses

import numpy as np
import pytest

from conftest import needs_torch, powered

pytestmark = needs_torch


def _case(**kw):
    from pdlt.report.residual import RESIDUAL_TRAINING_CASES
    return dataclasses.replace(RESIDUAL_TRAINING_CASES[0], **kw)


def test_residual_ntk_change_and_variance_during_training():
    """n E[H(1) - H(0)] and n Var z(1) extrapolated from n = 16, 32 (8000 networks, ~5 s),
    allowance the whole change |m(32) - m(16)| (the report rows' rule): resolution ~22 %
    and ~26 % (NTK: stderr 0.24, allowance ~1.0 against -8.76)."""
    from pdlt.report.residual import residual_training_case, residual_training_case_rows

    res = residual_training_case(_case(networks=8000, seed=4))
    rows = {r.key: r for r in residual_training_case_rows(res)}
    r = rows["residual NTK change (1/n)"]
    assert r.theory == pytest.approx(-8.7552, rel=1e-4)
    powered(r.theory, r.measured, r.stderr, r.allowance, label="residual NTK change",
            max_resolution=0.3)
    # the variance at the training input after the leap is all 1/n (v_inf = 0): n Var
    # extrapolated from 16, 32, resolution ~26 %
    r = rows["residual trained variance (1/n)"]
    assert r.theory == pytest.approx(2.4537, rel=1e-4) and res["tv_inf"][0] == 0.0
    powered(r.theory, r.measured, r.stderr, r.allowance, label="residual trained variance",
            max_resolution=0.35)


@pytest.mark.slow
def test_residual_trained_mean_and_ntk_change_default_case():
    """The report's case (40 000 networks, n = 16, 32; ~25 s): the trained mean at the
    training input (resolution ~25 %), the NTK change (~18 %) and the variance (~22 %)."""
    from pdlt.report.residual import residual_training_case, residual_training_case_rows

    rows = residual_training_case_rows(residual_training_case(_case()))
    keys = [r.key for r in rows]
    assert keys == ["residual trained mean (1/n)", "residual NTK change (1/n)",
                    "residual trained variance (1/n)"]
    for r, res_max in zip(rows, (0.35, 0.25, 0.3)):
        powered(r.theory, r.measured, r.stderr, r.allowance, label=r.statistic,
                max_resolution=res_max)


def test_n_input_residual_ntk_change_at_a_test_input():
    """Two training inputs and one test input (N = 3, theory ~2.5 s), gradient descent to
    convergence (100 steps), n = 16, 32, 3000 networks (~4 s of training): the NTK change
    at the test input ``n E[H_BB(T) - H_BB(0)]`` (the largest predicted entry, 2.42) at
    n = 32, allowance ``|m(16) - m(32)|`` (the trained-mean rows' rule: the 1/n^2 term at
    n = 32 is what the 16-to-32 change measures). Seeds 5 / 6 / 7: 2.63(9) / 2.61(9) /
    2.47(8), resolution 0.17 / 0.16 / 0.23, x0.5 rejected at z >= 9, x2 at z >= 17. At
    24 000 networks (report case, 3 test inputs): 2.69(3) / 2.58(3) at n = 16 / 32."""
    import math

    from pdlt.report.residual import (RESIDUAL_TRAINING_N_INPUT_CASES, residual_training_case,
                                      residual_training_case_rows)

    case = dataclasses.replace(RESIDUAL_TRAINING_N_INPUT_CASES[0],
                               X_test=((math.cos(0.25 * math.pi), math.sin(0.25 * math.pi)),),
                               widths=(16, 32), networks=3000, seed=6)
    res = residual_training_case(case)
    th = res["ntk_change"]
    assert np.unravel_index(np.argmax(np.abs(th)), th.shape) == (2, 2)
    assert th[2, 2] == pytest.approx(2.4205, rel=1e-3)
    dh, se = res["dh"][:, 2, 2], res["dh_se"][:, 2, 2]
    powered(th[2, 2], dh[-1], se[-1], abs(dh[-2] - dh[-1]), label="N-input residual NTK change",
            max_resolution=0.3)
    # the rows: no training-input rows after gradient descent (outputs pinned to targets)
    keys = [r.key for r in residual_training_case_rows(res)]
    assert keys == ["residual trained mean (1/n)", "residual NTK change (1/n)"]
    assert np.all(np.abs(res["d"][:, :2]) < 1e-3)
