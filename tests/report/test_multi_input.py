"""G1 at two distinct inputs (report.multi_input): a powered CI case with negative controls.

tanh at criticality, depth 10, first-layer kernel [[1, 0.7], [0.7, 1]], widths 16
and 32 with 2000 networks each (~11 s on 2 busy cores), compared through the
two-width extrapolation (allowance |m(2n) - m(n)| / 2, measured). Resolution
measured when written: 21 % (G1_00), 34 % (G1_01, the entry that needs distinct
inputs), 19 % (G1_11); controls rejected at 7-21 sigma-units. Without the
control variate the raw neuron averages scatter ~7x more at width 32 (the row
would need ~50x the networks). With 1000 networks G1_01 sat at 49.98 %, too
close to the 50 % bound to be a stable test.
"""

import numpy as np
import pytest

pytest.importorskip("torch")

from conftest import powered  # noqa: E402

from pdlt.report.multi_input import (MultiInputCase, g1_multi_rows,  # noqa: E402
                                     inputs_for_kernel)
from pdlt.report.rows import critical_mlp  # noqa: E402

CASE = MultiInputCase("tanh", 10, ((1.0, 0.7), (0.7, 1.0)), widths=(16, 32), networks=2000,
                      seed=5)


@pytest.fixture(scope="module")
def result():
    return g1_multi_rows([CASE])


def test_g1_two_inputs_powered(result):
    rows, info = result
    assert [r.statistic.split(" ")[0] for r in rows] == ["G1[00]", "G1[01]", "G1[11]"]
    assert all(r.family == "G1 (N inputs)" for r in rows)
    for r in rows:
        # every entry passes and rejects the theory x0, x0.5 and x2, resolved to <= 50 %
        powered(r.theory, r.measured, r.stderr, r.allowance, label=r.statistic,
                max_resolution=0.5)
        assert r.status == "pass"
        assert dict(r.control_z)[0.5] > 4 and dict(r.control_z)[2.0] > 4
    (i,) = info
    assert i["networks"] == 4000 and i["cv_gain"] > 5
    assert set(i["resolution"]) == {"00", "01", "11"}


def test_inputs_for_kernel_and_bad_input():
    mlp = critical_mlp("gelu", 8, 3, n0=3)
    K1 = np.array([[1.0, 0.5, 0.3], [0.5, 1.2, 0.4], [0.3, 0.4, 0.9]])
    x = inputs_for_kernel(mlp, K1)
    np.testing.assert_allclose(mlp.C_b[0] + mlp.C_W[0] * x @ x.T / mlp.n0, K1, rtol=1e-13)
    with pytest.raises(ValueError, match="n0"):
        inputs_for_kernel(critical_mlp("tanh", 8, 3, n0=1), K1)
    with pytest.raises(ValueError, match="positive definite"):
        inputs_for_kernel(critical_mlp("tanh", 8, 3, n0=2), [[1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="widths"):
        MultiInputCase("tanh", 4, ((1.0, 0.5), (0.5, 1.0)), widths=(16, 64))
    with pytest.raises(ValueError, match="K1"):
        MultiInputCase("tanh", 4, ((1.0,),))
    with pytest.raises(ValueError, match="smooth"):
        g1_multi_rows([MultiInputCase("relu", 3, ((1.0, 0.5), (0.5, 1.0)), networks=10)])


def test_study_wraps_rows_and_draws():
    pytest.importorskip("matplotlib")
    from pdlt.report.multi_input import g1_multi_study

    small = MultiInputCase("gelu", 3, ((1.0, 0.5, 0.2), (0.5, 1.0, 0.3), (0.2, 0.3, 1.0)),
                           widths=(4, 8), networks=60, seed=1)
    st = g1_multi_study([small])
    assert len(st.rows) == 6 and "120 networks" in st.note
    fig = st.figure()
    assert len(fig.axes) == 1
