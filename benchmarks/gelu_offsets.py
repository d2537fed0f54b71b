"""Why GELU read low (#14): the trained mean after leap + steps, and G1 at depth 6.

Two measurements, each against pdlt's order-1/n theory:

``python benchmarks/gelu_offsets.py split [--activation gelu] [--depth 3] [--widths 32 64]
[--networks 8000] [--steps 5]``
    Task 'circle-far' of :mod:`pdlt.report.finite_training`, one Newton leap and
    ``steps`` gradient steps. Every network's trained output is split into the
    frozen kernel map of its own initial NTK ``H0``,
    ``z - F(H0) (z_A - y)``, and the rest (the dynamics: dNTK, ddNTKs). The
    frozen part is expanded about ``Theta`` per network: linear (H1), quadratic
    (the A, B term) and the remainder (third and higher order in ``DeltaH =
    H0 - Theta``, order 1/n^2 in the mean). Printed per piece: ``n`` times the
    ensemble mean (antithetic pairs) +- stderr, against the theory's
    ``parts`` (H1, AB, dynamics) of :func:`pdlt.learning.finite_training.end_of_training`.

``python benchmarks/gelu_offsets.py g1 [--networks 20000]``
    G1 and V of critical GELU at depth 6, K1 = 1, widths 32 and 64, by the
    control-variate estimator of the report (:func:`pdlt.report.suite.measure_cv`),
    with the extrapolation ``2 m(64) - m(32)``.

Cost (2026-12-03, loaded 2-core machine, one thread): ``split`` 8000 networks at
n = 32 and 64, ~40 CPU s; ``g1`` ~28 CPU s. Results are in the module docstring of
:mod:`pdlt.report.finite_training` (``GELU_MEAN_CASES``) and in the h38 report.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def split(activation="gelu", depth=3, widths=(32, 64), networks=8000, steps=5, seed=77):
    from pdlt.experiment.training import train_ensemble
    from pdlt.learning.finite_training import (_end_of_training, _kernel_map_jets,
                                               algorithm_schedule, training_statistics)
    from pdlt.network import MLP
    from pdlt.report.finite_training import _task
    from pdlt.theory.criticality import criticality

    X, y, Xt = _task("circle-far")
    crit = criticality(activation)
    mlp = MLP(n0=2, width=widths[0], depth=depth, n_out=1, activation=activation,
              C_b=crit.C_b, C_W=crit.C_W)
    st = training_statistics(mlp, X, Xt)
    Na, N, Th = X.shape[0], X.shape[0] + Xt.shape[0], st.Theta
    ThA = Th[:Na, :Na]
    sched = algorithm_schedule(ThA, "newton+gd", learning_rate=1.0 / np.linalg.eigvalsh(ThA)[-1],
                               steps=steps)
    m_inf, m1, *_, parts = _end_of_training(st, y, sched)
    print(f"{activation}, depth {depth}, 'circle-far', leap + {steps} steps; inputs: 4 train, "
          "1 test")
    print("theory m1        ", np.round(m1, 4))
    for k in ("H1", "AB", "dynamics"):
        print(f"theory {k:10s}", np.round(parts[k], 4))
    F0y = _kernel_map_jets(Th, np.zeros((0, N, N)), sched, Na)[0] @ y
    for n in widths:
        t = time.process_time()
        te = train_ensemble(mlp.with_(width=n), X, y, Xt, networks=networks, step_matrices=sched,
                            seed=seed + n, antithetic=True, ntk=True)
        zT = np.concatenate([te.train[:, -1, :, 0], te.test[:, -1, :, 0]], axis=1)
        H0 = te.ntk[:, 0]
        lin, quad, full = (np.empty((networks, N)) for _ in range(3))
        for m in range(networks):
            _, f1, f2 = _kernel_map_jets(Th, (H0[m] - Th)[None], sched, Na)
            lin[m], quad[m] = f1[0] @ y, 0.5 * f2[0] @ y
            Fm = _kernel_map_jets(H0[m], np.zeros((0, N, N)), sched, Na)[0]
            full[m] = Fm @ y
        # frozen kernel map: z0 - F(H0)(z0_A - y); its y-part is F(H0) y (the z0 part is odd
        # under the antithetic sign flip and cancels in the pair average)
        frozen = full - F0y[None]
        pieces = {"total n(E z - m_inf)": zT - m_inf[None], "frozen map (y part)": frozen,
                  "  linear in DeltaH": lin, "  quadratic (AB)": quad,
                  "  beyond quadratic": full - F0y[None] - lin - quad,
                  "dynamics (rest)": zT - m_inf[None] - frozen}
        print(f"n = {n}, {networks} networks ({time.process_time() - t:.0f} CPU s)")
        for name, v in pieces.items():
            u = 0.5 * (v[0::2] + v[1::2])
            print(f"  {name:22s}", np.round(n * u.mean(0), 4), "+-",
                  np.round(n * u.std(0, ddof=1) / np.sqrt(u.shape[0]), 4))


def g1(networks=20000):
    import pdlt
    from pdlt.report.suite import measure_cv
    from pdlt.theory.criticality import criticality

    c = criticality("gelu")
    res = {}
    for n in (32, 64):
        t = time.process_time()
        mlp = pdlt.MLP(n0=n, width=n, depth=6, n_out=n, activation="gelu", C_b=c.C_b, C_W=c.C_W)
        out = measure_cv(mlp, networks, seed=11 + n, K1=1.0)
        th = np.ravel(pdlt.statistics(mlp, K1=1.0, get=("G1",)).G1)
        res[n] = (out["G1"].mean, out["G1"].stderr)
        print(f"n = {n}, {networks} networks ({time.process_time() - t:.0f} CPU s); layers 3-6")
        print("  G1 theory  ", np.round(th[2:], 4))
        print("  measured   ", np.round(res[n][0][2:], 4), "+-", np.round(res[n][1][2:], 4))
        print("  ratio      ", np.round(res[n][0][2:] / th[2:], 4))
    ex = 2 * res[64][0] - res[32][0]
    se = np.sqrt(4 * res[64][1] ** 2 + res[32][1] ** 2)
    print("  2m(64)-m(32) ratio", np.round(ex[2:] / th[2:], 4), "+-", np.round(se[2:] / th[2:], 4))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("--activation", default="gelu")
    s.add_argument("--depth", type=int, default=3)
    s.add_argument("--widths", type=int, nargs="+", default=[32, 64])
    s.add_argument("--networks", type=int, default=8000)
    s.add_argument("--steps", type=int, default=5)
    g = sub.add_parser("g1")
    g.add_argument("--networks", type=int, default=20000)
    a = p.parse_args(argv)
    if a.cmd == "split":
        split(a.activation, a.depth, tuple(a.widths), a.networks, a.steps)
    else:
        g1(a.networks)


if __name__ == "__main__":
    main()
