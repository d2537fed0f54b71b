"""Conditioning of the reference problem's prediction correction (``pdlt diagnose``).

For critical networks (width 1000) of increasing depth, prints the train/test
correlation's distance from 1 at the output (``1 - rho``), the 1/n coefficient
of the prediction correction, and how far it moves when ``<sigma sigma sigma
sigma>`` is raised by one ulp at every layer (the round-off scale of the
result). ``finite_width_learning_size`` withholds the number where
``1 - rho < 5e-3`` (``_RHO_RELIABLE``); this scan is the measurement behind
that threshold (benchmarks/README.md, "Cost of `pdlt diagnose` at depth").

    python benchmarks/prediction_conditioning.py relu,gelu 25,50,100,200
"""

import sys
import time
import warnings

import numpy as np

import pdlt
from pdlt.learning import finite_training
from pdlt.theory import _averages


def main(acts, depths):
    orig = _averages.LayerAverages._quad

    def bumped(self, slots):
        T = orig(self, slots)
        return T * (1.0 + 2.0 ** -52) if slots == "ssss" else T

    warnings.simplefilter("ignore")
    old = finite_training._RHO_RELIABLE
    finite_training._RHO_RELIABLE = 0.0          # measure every depth, reliable or not
    try:
        for act in acts:
            c = pdlt.criticality(act)
            for L in depths:
                m = pdlt.MLP(n0=2, width=1000, depth=L, n_out=1, activation=act,
                             C_b=c.C_b, C_W=c.C_W)
                t = time.process_time()
                r = finite_training.finite_width_learning_size(m)
                _averages.LayerAverages._quad = bumped
                try:
                    rb = finite_training.finite_width_learning_size(m)
                finally:
                    _averages.LayerAverages._quad = orig
                pc, pcb = r["mean_correction_coefficient"], rb["mean_correction_coefficient"]
                print(f"{act:5s} depth {L:5d}  1 - rho {r['one_minus_rho']:.2e}  "
                      f"coefficient {pc:+.6g}  moved by one ulp {abs(pcb - pc) / abs(pc):.1e}  "
                      f"({time.process_time() - t:.1f} CPU s)", flush=True)
    finally:
        finite_training._RHO_RELIABLE = old


if __name__ == "__main__":
    acts = sys.argv[1].split(",") if len(sys.argv) > 1 else ["relu", "gelu"]
    depths = [int(v) for v in sys.argv[2].split(",")] if len(sys.argv) > 2 else [50, 100, 200]
    main(acts, depths)
