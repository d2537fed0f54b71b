"""N-input residual R and T (pdlt.theory.residual_multi_ddi) against real residual networks.

Two distinct inputs ``(1, 0)``, ``(0.6, 0.8)``, tanh at residual criticality, gamma = 0.5,
``lambda_b = 0.5``, depth 3, widths 16 and 32 (extrapolated ``2 m(32) - m(16)`` with the
measured allowance ``|m(32) - m(16)|/2``), the autodiff ddNTK estimators of
pdlt.experiment.Ensemble on the ordered pairs of 4 neurons per network
(pdlt.report.residual.residual_multi_ddi_measure). Every entry of R and T at layer 3 must
pass; the comparison must reject the theory x0, x0.5 and x2 (conftest.powered) and resolve
its best entry to <= 25 %. The estimator costs ~0.1 s per network on two shared cores, so
the check is slow (~2.5 min) and runs in ``pdlt report --full``
(pdlt.report.residual.residual_multi_ddi_rows); CI runs the wiring on tiny ensembles.
Seeds fixed.
"""

import numpy as np
import pytest

import pdlt
from conftest import powered
from pdlt.report.residual import (RESIDUAL_DDI_ENTRIES, residual_multi_ddi_measure,
                                  residual_multi_ddi_rows)
from pdlt.theory.residual import residual_mlp

X2 = np.array([[1.0, 0.0], [0.6, 0.8]])


@pytest.mark.slow
def test_residual_r_t_two_inputs_against_real_networks():
    d = residual_multi_ddi_measure("tanh", 0.5, x=X2, depth=3, networks=1500, seed=4200)
    for s in ("R", "T"):
        t, ext, se, al = d[s]
        c = powered(t.ravel(), ext.ravel(), se.ravel(), al.ravel(),
                    label=f"residual tanh N-input {s}", max_resolution=0.25)
        # the resolved entries include ones that mix the inputs (T[0110], R[0011], ...)
        mixed = [q for q in np.ndindex(2, 2, 2, 2) if len(set(q)) > 1]
        best_mixed = min(float(c.resolution_each.reshape(t.shape)[q]) for q in mixed)
        assert best_mixed <= 0.25, f"{s}: no mixed entry resolved ({best_mixed:.2f})"


def test_rows_are_the_statistics_entries():
    """residual_multi_ddi_rows (pdlt report --full): one row per entry and statistic, the
    theory column is pdlt.statistics at the inputs (tiny ensembles: wiring only)."""
    rows = residual_multi_ddi_rows(("tanh",), 0.5, x=X2, widths=(4, 8), depth=3, networks=6,
                                   neurons=2, seed=5)
    assert len(rows) == 2 * len(RESIDUAL_DDI_ENTRIES)
    m = residual_mlp("tanh", 0.5, n0=2, width=8, depth=3, n_out=8, lambda_b=0.5)
    th = pdlt.statistics(m, X2, get=["R", "T"])
    for r, (s, q) in zip(rows, [(s, q) for s in "RT" for q in RESIDUAL_DDI_ENTRIES]):
        assert r.key == f"residual {s} (N inputs)"
        assert r.theory == pytest.approx(float(getattr(th, s)[2][q]), rel=1e-12)
