"""Where the N-input residual trained mean's finite-width shift sits (#17): a split.

``python benchmarks/residual_training_split.py [--case 0] [--gamma 0.5] [--widths 16 32]
[--networks 4000] [--seed 21]``

Case ``--case`` of :data:`pdlt.report.residual.RESIDUAL_TRAINING_N_INPUT_CASES` (0:
the 'pair' task by gradient descent, 100 steps; 1: one Newton leap), ``gamma`` (0: the
plain MLP of the same depth). Every network's trained output is split, as
``benchmarks/gelu_offsets.py split`` does, into the frozen kernel map of its own
initial NTK ``H0`` (``F(H0) y``: the ``z0`` part cancels in the antithetic pair) and
the rest (the dynamics: dNTK, ddNTKs); the frozen part is expanded about ``Theta``
per network: linear in ``DeltaH = H0 - Theta`` (the H1 term), quadratic (the A, B
term) and the remainder (third and higher order in DeltaH, order 1/n^2 in the mean).
Printed per piece: ``n`` times the ensemble mean +- stderr over the training then test
inputs, against the theory's ``parts`` of
:func:`pdlt.learning.finite_training.end_of_training`. Results: the docstring of
:data:`pdlt.report.residual.RESIDUAL_TRAINING_N_INPUT_CASES`.

Cost (2026-12-04, one thread): case 0 (100 gradient steps), 4000 networks, ~13-15 CPU s
per width at n = 16, 32 (the per-network kernel maps dominate); case 1 (Newton leap),
16 000 networks, 2 / 6 CPU s at n = 16 / 32; plus the theory (~18 CPU s, N = 5).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np


def split(case=0, gamma=0.5, widths=(16, 32), networks=4000, seed=21):
    from pdlt.experiment.training import train_ensemble
    from pdlt.learning.finite_training import (_end_of_training, _kernel_map_jets,
                                               algorithm_schedule, training_statistics)
    from pdlt.report.residual import RESIDUAL_TRAINING_N_INPUT_CASES
    from pdlt.theory.residual import residual_mlp

    c = dataclasses.replace(RESIDUAL_TRAINING_N_INPUT_CASES[case], gamma=gamma)
    X, y, Xt = np.asarray(c.X, float), np.asarray(c.y, float), np.asarray(c.X_test, float)
    mlp = residual_mlp(c.activation, gamma, n0=2, width=widths[0], depth=c.depth)
    st = training_statistics(mlp, X, Xt)
    Na, N, Th = X.shape[0], X.shape[0] + Xt.shape[0], st.Theta
    ThA = Th[:Na, :Na]
    kw = {} if c.algorithm == "newton" else dict(
        learning_rate=1.0 / np.linalg.eigvalsh(ThA)[-1], steps=c.steps)
    sched = algorithm_schedule(ThA, c.algorithm, **kw)
    m_inf, m1, *_, parts = _end_of_training(st, y, sched)
    print(f"{c.activation}, gamma {gamma:g}, depth {c.depth}, {c.label}")
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
            full[m] = _kernel_map_jets(H0[m], np.zeros((0, N, N)), sched, Na)[0] @ y
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", type=int, default=0)
    p.add_argument("--gamma", type=float, default=0.5)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    p.add_argument("--networks", type=int, default=4000)
    p.add_argument("--seed", type=int, default=21)
    a = p.parse_args(argv)
    split(a.case, a.gamma, tuple(a.widths), a.networks, a.seed)


if __name__ == "__main__":
    main()
