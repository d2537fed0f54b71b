"""P..U at two distinct inputs (report.multi_input.derivative_multi_rows): powered CI case.

tanh at criticality, depth 3, first-layer kernel [[1, 0.7], [0.7, 1]], widths 8 and
16 with 1500 networks each, the ordered pairs of 4 neurons (~7 s CPU on 2 busy
cores), the entries that mix the two inputs compared through the two-width
extrapolation. Measured when written: best entry per statistic resolved to P 31 %,
Q 34 %, R 36 %, S 15 %, T 31 %, U 36 %; every row within its tolerance.
"""

import pytest

pytest.importorskip("torch")

from conftest import powered  # noqa: E402

from pdlt.report.multi_input import (DerivativeMultiCase,  # noqa: E402
                                     derivative_multi_rows)

CASE = DerivativeMultiCase("tanh", 3, ((1.0, 0.7), (0.7, 1.0)), widths=(8, 16),
                           networks=1500, seed=1)


def test_derivative_two_inputs_powered():
    rows, (info,) = derivative_multi_rows([CASE])
    assert len(rows) == 6 * 4 and info["networks"] == 3000
    assert {r.family for r in rows} == {f"{s} (N inputs)" for s in "PQRSTU"}
    assert all(r.passed for r in rows), [r for r in rows if not r.passed]
    for s in "PQRSTU":
        mine = [r for r in rows if r.family == f"{s} (N inputs)"]
        best = min(mine, key=lambda r: r.resolution)
        # the best-resolved mixed entry of each statistic rejects x0, x0.5 and x2
        powered(best.theory, best.measured, best.stderr, best.allowance,
                label=best.statistic, max_resolution=0.5)


def test_derivative_case_validation():
    with pytest.raises(ValueError, match="stats"):
        DerivativeMultiCase("tanh", 3, ((1.0, 0.7), (0.7, 1.0)), stats="PX")
    with pytest.raises(ValueError, match="entries"):
        DerivativeMultiCase("tanh", 3, ((1.0, 0.7), (0.7, 1.0)), entries=((0, 0, 2, 1),))
    with pytest.raises(ValueError, match="neurons"):
        DerivativeMultiCase("tanh", 3, ((1.0, 0.7), (0.7, 1.0)), neurons=1)
    with pytest.raises(ValueError, match="widths"):
        DerivativeMultiCase("tanh", 3, ((1.0, 0.7), (0.7, 1.0)), widths=(8, 12))
