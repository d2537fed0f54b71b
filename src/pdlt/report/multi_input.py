"""G1 and P..U at several distinct inputs.

The one-input G1 rows of the report (:mod:`pdlt.report.suite`) use
:func:`pdlt.experiment.estimators.metric_martingale`; here the N-input version
:func:`pdlt.experiment.estimators.metric_martingale_multi` measures every entry
``G1_ab`` of the NLO metric at N = 2 or 3 distinct inputs, as ``n (mean Y - K)``
at two widths n and 2n, compared at the last layer through the two-width
extrapolation ``2 m(2n) - m(n)`` (:func:`pdlt.report.rows.width_extrapolation`:
allowance ``|m(2n) - m(n)| / 2``, measured). Each row carries its resolution and
its negative controls (:func:`pdlt.report.rows.make_row`).

:func:`g1_multi_rows` returns the rows; :data:`G1_MULTI_CASES` the default cases;
:func:`g1_multi_study` wraps them as a report :class:`pdlt.report.rows.Study`
(``pdlt.report.suite.default_studies`` runs the first case in every report, all
three with ``--full``).

P, Q, R, S, T, U at N distinct inputs: :func:`derivative_multi_rows` (plain
estimators, the entries that mix the inputs, the same two-width extrapolation),
:data:`DERIVATIVE_MULTI_CASES`, :func:`derivative_multi_study`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .rows import Study, critical_mlp, make_row, width_extrapolation

__all__ = ["MultiInputCase", "G1_MULTI_CASES", "inputs_for_kernel", "measure_g1_multi",
           "g1_multi_rows", "g1_multi_study", "DerivativeMultiCase", "DERIVATIVE_MULTI_CASES",
           "measure_derivative_multi", "derivative_multi_rows", "derivative_multi_study",
           "H1MultiCase", "H1_MULTI_CASES", "measure_h1_multi", "h1_multi_rows",
           "h1_multi_study"]


@dataclass(frozen=True)
class MultiInputCase:
    """One G1 comparison at N distinct inputs: ``activation`` at criticality.

    ``K1`` is the first-layer kernel of the inputs (N x N, as nested tuples);
    ``widths`` the two widths n, 2n of the extrapolation, ``networks`` the
    ensemble size at each width, ``seed`` the first width's seed (the second
    uses ``seed + 1``).
    """

    activation: str
    depth: int
    K1: tuple
    widths: tuple = (16, 32)
    networks: int = 2000
    seed: int = 0

    def __post_init__(self):
        K = np.asarray(self.K1, float)
        if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] < 2:
            raise ValueError(f"K1 must be an N x N kernel with N >= 2; got shape {K.shape}")
        if len(self.widths) != 2 or self.widths[1] != 2 * self.widths[0]:
            raise ValueError(f"widths must be (n, 2n); got {self.widths}")
        if int(self.networks) < 2:
            raise ValueError(f"networks={self.networks} must be >= 2")


def inputs_for_kernel(mlp, K1) -> np.ndarray:
    """Inputs ``x`` (N, n0) whose first-layer kernel ``C_b + C_W x_a . x_b / n0`` is ``K1``.

    Needs ``n0 >= N`` and ``(K1 - C_b) / C_W`` positive definite.
    """
    K1 = np.asarray(K1, float)
    N = K1.shape[0]
    if mlp.n0 < N:
        raise ValueError(f"the MLP has n0={mlp.n0} input features; {N} inputs with a "
                         f"prescribed kernel need n0 >= {N}")
    A = (K1 - mlp.C_b[0]) / mlp.C_W[0]
    try:
        Lc = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        raise ValueError(f"K1 - C_b = {A.tolist()} (divided by C_W) must be positive definite "
                         "for distinct inputs; choose K1 with K1_aa > C_b and |K1_ab - C_b| "
                         "smaller") from None
    x = np.zeros((N, mlp.n0))
    x[:, :N] = np.sqrt(mlp.n0) * Lc
    return x


def measure_g1_multi(mlp, x, networks, seed=0, chunk=1000):
    """G1 per layer at the inputs ``x`` from ``networks`` networks, with the control variate.

    Returns
    -------
    dict
        ``"G1"``, ``"stderr"`` (L, N, N): ``n (mean Y - K)`` and its i.i.d.
        standard error; ``"K"``, ``"theory"`` (L, N, N): the infinite-width
        kernel and G1 of :func:`pdlt.statistics`; ``"plain_stderr"`` (L, N, N):
        the same without the control variate (raw neuron averages), for the
        variance reduction; ``"seconds"``.
    """
    from ..experiment import Ensemble
    from ..experiment.activations import torch_activation
    from ..experiment.estimators import (gaussian_pair_expectation, kernel_map_jacobian,
                                         metric_martingale_multi)
    from ..theory.statistics import statistics

    t0 = time.perf_counter()
    act = mlp.activation
    if not act.is_smooth:
        raise ValueError(f"activation {act.name!r}: the pair rule of the control variate "
                         "needs a smooth activation (tanh, gelu)")
    st = statistics(mlp, x, get=("G1",))
    K, G1 = np.asarray(st.K, float), np.asarray(st["G1"], float)
    ens = Ensemble(mlp, networks=networks, seed=seed)
    tact = torch_activation(act)
    S, raw = [], []
    for start in range(0, networks, chunk):
        stop = min(networks, start + chunk)
        zs = ens.preactivations(x, start, stop)
        s_l, r_l = [], []
        for z in zs:
            sg = tact.sigma(z)
            n_l = z.shape[1]
            s_l.append((sg.transpose(1, 2) @ sg) / n_l)
            r_l.append((z.transpose(1, 2) @ z) / n_l)
        S.append(np.stack([t.double().cpu().numpy() for t in s_l], 1))
        raw.append(np.stack([t.double().cpu().numpy() for t in r_l], 1))
    S, raw = np.concatenate(S), np.concatenate(raw)

    def g(G):
        return gaussian_pair_expectation(act, G)

    chi = kernel_map_jacobian(g, K, mlp.C_W)
    Y = metric_martingale_multi(S, K[0], mlp.C_b, mlp.C_W, g, chi)["Y"]
    n = np.array([mlp.fan_in(l) for l in range(1, mlp.depth + 1)], float)[:, None, None]
    root = np.sqrt(networks)
    return {"G1": n * (Y.mean(0) - K), "stderr": n * Y.std(0, ddof=1) / root, "K": K,
            "theory": G1, "plain_stderr": n * raw.std(0, ddof=1) / root,
            "seconds": time.perf_counter() - t0}


#: default cases of :func:`g1_multi_rows` (networks per width). Measured on 2 busy cores:
#: tanh N = 2, 4000 networks: resolution 12-20 % in 21 s; tanh N = 3, 6000 networks:
#: 10-35 % in 36 s (G1_02, the least correlated pair, the weakest); gelu N = 2
#: (K1_01 = 0.8) at widths 32, 64 with 4000 networks: 15-21 % in 24 s. GELU at widths
#: 16, 32 (8000 networks: 12-17 %) sat at z = 3.8 of the 4 allowed on G1_11: its
#: measured G1 at depth 6 is ~6-9 % below the theory at every width pair tried, with one
#: input too (the one-input control variate of pdlt.report.suite.measure_cv, widths 32,
#: 64: 1.30 +- 0.05 against 1.42), so the wider pair is used.
G1_MULTI_CASES = (
    MultiInputCase("tanh", 10, ((1.0, 0.7), (0.7, 1.0)), networks=4000, seed=211),
    MultiInputCase("tanh", 10, ((1.0, 0.7, 0.4), (0.7, 1.0, 0.6), (0.4, 0.6, 1.0)),
                   networks=6000, seed=223),
    MultiInputCase("gelu", 6, ((1.0, 0.8), (0.8, 1.0)), widths=(32, 64), networks=4000,
                   seed=229),
)


def g1_multi_rows(cases=G1_MULTI_CASES, progress=False) -> tuple:
    """Report rows for G1 at N distinct inputs: every entry ``a <= b``, last layer.

    Per case, ``G1_ab`` measured at widths n and 2n (:func:`measure_g1_multi`)
    and compared through ``2 m(2n) - m(n)`` with allowance ``|m(2n) - m(n)| / 2``
    (:func:`pdlt.report.rows.width_extrapolation`), as the one-input G1 rows are.

    Returns
    -------
    rows : tuple of :class:`pdlt.report.rows.Row`
        Family ``"G1 (N inputs)"``; the statistic names the entry, N and the
        first input kernel's off-diagonal entries.
    info : tuple of dict
        Per case: ``case``, ``seconds`` (wall time of both widths), ``networks``,
        ``resolution`` (dict entry -> resolution), ``cv_gain`` (the plain
        estimator's stderr over the control variate's, last layer, width 2n,
        smallest entry), and (N, N) arrays ``theory``, ``extrapolated``,
        ``stderr``, ``allowance`` at the last layer.
    """
    rows, info = [], []
    for case in cases:
        K1 = np.asarray(case.K1, float)
        N = K1.shape[0]
        res = []
        for j, n in enumerate(case.widths):
            mlp = critical_mlp(case.activation, n, case.depth, n0=N)
            x = inputs_for_kernel(mlp, K1)
            res.append(measure_g1_multi(mlp, x, case.networks, seed=case.seed + j))
            if progress:
                print(f"G1 multi-input {case.activation} N={N} n={n}: "
                      f"{res[-1]['seconds']:.1f} s", flush=True)
        a_, b_ = res
        L = case.depth
        th = a_["theory"][L - 1]
        ext, se, allow = width_extrapolation(a_["G1"][L - 1], a_["stderr"][L - 1],
                                             b_["G1"][L - 1], b_["stderr"][L - 1])
        offd = ",".join(f"{K1[i, k]:g}" for i in range(N) for k in range(i + 1, N))
        resol = {}
        for a in range(N):
            for b in range(a, N):
                row = make_row(f"G1[{a}{b}] (N={N} inputs, K1 off-diag {offd}, n,2n extrap.)",
                               case.activation, case.widths[0], L, th[a, b], ext[a, b],
                               se[a, b], allow[a, b], key="G1 (N inputs)")
                rows.append(row)
                resol[f"{a}{b}"] = row.resolution
        gain = b_["plain_stderr"][L - 1] / b_["stderr"][L - 1]
        info.append(dict(case=case, seconds=a_["seconds"] + b_["seconds"],
                         networks=2 * case.networks, resolution=resol,
                         cv_gain=float(np.min(gain)), theory=th, extrapolated=ext,
                         stderr=se, allowance=allow))
    return tuple(rows), tuple(info)


def g1_multi_study(cases=G1_MULTI_CASES, progress=False) -> Study:
    """:func:`g1_multi_rows` as a report :class:`pdlt.report.rows.Study` with its figure.

    The figure shows, per case, every entry ``G1_ab`` (``a <= b``) extrapolated
    to infinite width with its ``4 stderr + allowance`` bar, against the theory.
    """
    rows, info = g1_multi_rows(cases, progress=progress)

    def figure():
        from .figures import pyplot

        plt = pyplot()
        fig, axes = plt.subplots(1, len(info), figsize=(3.6 * len(info), 3.4), squeeze=False)
        for ax, d in zip(axes[0], info):
            c = d["case"]
            N = d["theory"].shape[0]
            ent = [(a, b) for a in range(N) for b in range(a, N)]
            pos = np.arange(len(ent))
            ax.plot(pos, [d["theory"][e] for e in ent], "k_", ms=18, mew=2, label="theory G1")
            ax.errorbar(pos, [d["extrapolated"][e] for e in ent],
                        yerr=[4 * d["stderr"][e] + d["allowance"][e] for e in ent], fmt="o",
                        capsize=3, label="2 m(2n) - m(n), 4 se + allowance")
            ax.set_xticks(pos, [f"{a}{b}" for a, b in ent])
            ax.set_title(f"{c.activation}, N={N}, L={c.depth}, n={c.widths[0]},{c.widths[1]}",
                         fontsize=8)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("G1_ab at the last layer")
        axes[0][0].legend(fontsize=7)
        return fig

    cost = "; ".join(f"{d['case'].activation} N={d['theory'].shape[0]}: {d['networks']} "
                     f"networks, {d['seconds']:.0f} s, control variate {d['cv_gain']:.0f}x "
                     "smaller stderr" for d in info)
    note = ("G1 at N distinct inputs, measured with the exactly unbiased N-input metric control "
            "variate (pdlt.experiment.estimators.metric_martingale_multi) at widths n and 2n and "
            "compared through 2 m(2n) - m(n) with allowance |m(2n) - m(n)|/2 (measured). "
            + cost + ".")
    return Study("G1 at several distinct inputs", note, rows, figure)


# ---------------------------------------------------------------------------
# P..U (dNTK, ddNTKs) at N distinct inputs
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DerivativeMultiCase:
    """One P..U comparison at N distinct inputs: ``activation`` at criticality.

    ``K1`` the first-layer kernel of the inputs (N x N, nested tuples);
    ``widths`` (n, 2n); ``networks`` per width; ``neurons`` the neurons per
    network whose ordered pairs the estimators average over
    (:meth:`pdlt.experiment.Ensemble.measure`'s ``derivative_neurons``);
    ``stats`` a subset of ``"PQRSTU"``; ``entries`` the tensor entries
    ``(a0, a1, a2, a3)`` that become rows (default: those that mix the inputs).
    """

    activation: str
    depth: int
    K1: tuple
    widths: tuple = (16, 32)
    networks: int = 3500
    neurons: int = 4
    stats: str = "PQRSTU"
    entries: tuple = ((0, 0, 1, 1), (0, 1, 0, 1), (0, 1, 1, 0), (0, 0, 0, 1))
    seed: int = 0

    def __post_init__(self):
        MultiInputCase(self.activation, self.depth, self.K1, self.widths, self.networks,
                       self.seed)  # the same checks
        bad = [s for s in self.stats if s not in "PQRSTU"]
        if bad or not self.stats:
            raise ValueError(f"stats={self.stats!r}: choose a nonempty subset of 'PQRSTU'")
        if int(self.neurons) < 2:
            raise ValueError(f"neurons={self.neurons} must be >= 2 (ordered pairs i != j)")
        N = len(self.K1)
        for e in self.entries:
            if len(e) != 4 or any(not 0 <= int(a) < N for a in e):
                raise ValueError(f"entries: {e!r} is not a 4-index entry of {N} inputs")


#: default case of :func:`derivative_multi_rows`: tanh at two inputs (K1 off-diagonal 0.7),
#: depth 4, widths 16 and 32, 3500 networks each, the ordered pairs of 4 neurons (the cost
#: of the N-input autodiff jumps ~20x from 4 to 8 neurons at width 8, and 4 neurons on more
#: networks resolve better per CPU second). Measured on 2 busy cores, every entry, 2000
#: networks per width (13 s CPU): P 25-39 %, Q 31-180 % (Q[0101] = 0.18 is small), R 17-24 %,
#: S 10-16 %, T 23-41 %, U 27-31 %; widths 8, 16 with 4000 networks (16 s): P 18-34 %,
#: Q 24-130 %, R 25-42 %, S 11-23 %, T 27-52 %, U 36-47 % (the O(1/n^2) allowance is larger).
#: This case (3500 networks per width, 22 s CPU): best mixed entry P 20 %, Q 20 %, R 12 %,
#: S 7 %, T 16 %, U 19 %; Q[0101] (theory 0.18) stays unresolved (126 %).
DERIVATIVE_MULTI_CASES = (
    DerivativeMultiCase("tanh", 4, ((1.0, 0.7), (0.7, 1.0)), widths=(16, 32), networks=3500,
                        seed=307),
)


def measure_derivative_multi(mlp, x, stats, networks, neurons, seed=0) -> dict:
    """P..U at the last layer at the inputs ``x`` (N, n0): ``{stat: Estimate (N,N,N,N)}``.

    Plain estimators of :meth:`pdlt.experiment.Ensemble.measure` (unbiased for
    ``n x`` the finite-width correlator), plus ``"seconds"`` (wall).
    """
    from ..experiment import Ensemble

    t0 = time.perf_counter()
    m = Ensemble(mlp, networks=networks, seed=seed).measure(
        x, stats=list(stats), layers=[mlp.depth], progress=False, derivative_neurons=neurons)
    last = list(m)[-1]
    out = {s: last[s] for s in stats}
    out["seconds"] = time.perf_counter() - t0
    return out


def derivative_multi_rows(cases=DERIVATIVE_MULTI_CASES) -> tuple:
    """Report rows for P..U at N distinct inputs: the case's entries, last layer.

    Per case, each statistic at widths n and 2n (:func:`measure_derivative_multi`)
    compared through ``2 m(2n) - m(n)`` with allowance ``|m(2n) - m(n)| / 2``
    (:func:`pdlt.report.rows.width_extrapolation`) against
    :func:`pdlt.statistics` at the inputs.

    Returns
    -------
    rows : tuple of :class:`pdlt.report.rows.Row`
        Family ``"<stat> (N inputs)"``.
    info : tuple of dict
        Per case: ``case``, ``seconds``, ``networks`` (both widths), ``rows``.
    """
    from ..theory.statistics import statistics

    rows, info = [], []
    for case in cases:
        K1 = np.asarray(case.K1, float)
        N = K1.shape[0]
        stats = tuple(case.stats)
        res = []
        for j, n in enumerate(case.widths):
            mlp = critical_mlp(case.activation, n, case.depth, n0=N)
            x = inputs_for_kernel(mlp, K1)
            res.append(measure_derivative_multi(mlp, x, stats, case.networks, case.neurons,
                                                seed=case.seed + j))
        mlp = critical_mlp(case.activation, case.widths[0], case.depth, n0=N)
        th = statistics(mlp, inputs_for_kernel(mlp, K1), get=stats)
        L = case.depth
        offd = ",".join(f"{K1[i, k]:g}" for i in range(N) for k in range(i + 1, N))
        mine = []
        for s in stats:
            a_, b_ = res[0][s], res[1][s]
            ext, se, allow = width_extrapolation(a_.mean, a_.stderr, b_.mean, b_.stderr)
            T = np.asarray(th[s], float)[L - 1]
            for e in case.entries:
                e = tuple(int(i) for i in e)
                lab = "".join(map(str, e))
                mine.append(make_row(
                    f"{s}[{lab}] (N={N} inputs, K1 off-diag {offd}, s={case.neurons} neurons, "
                    "n,2n extrap.)", case.activation, case.widths[0], L, T[e], ext[e], se[e],
                    allow[e], key=f"{s} (N inputs)"))
        rows += mine
        info.append(dict(case=case, seconds=res[0]["seconds"] + res[1]["seconds"],
                         networks=2 * case.networks, rows=tuple(mine)))
    return tuple(rows), tuple(info)


def derivative_multi_study(cases=DERIVATIVE_MULTI_CASES) -> Study:
    """:func:`derivative_multi_rows` as a report :class:`pdlt.report.rows.Study`.

    The figure shows, per statistic, each entry's ``2 m(2n) - m(n)`` divided by
    its theory with the ``(4 stderr + allowance) / |theory|`` bar (1 is the theory).
    """
    rows, info = derivative_multi_rows(cases)

    def figure():
        from .figures import pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7.5, 3.4))
        rel = [r for r in rows if r.relative]
        pos = np.arange(len(rel))
        ax.axhline(1.0, color="k", lw=1)
        ax.errorbar(pos, [r.measured / r.theory for r in rel],
                    yerr=[r.resolution for r in rel], fmt="o", capsize=2,
                    label="(2 m(2n) - m(n)) / theory, (4 se + allowance) / |theory|")
        ax.set_xticks(pos, [r.statistic.split(" ")[0] for r in rel], rotation=90, fontsize=6)
        ax.set_ylim(-0.5, 2.5)
        ax.set_ylabel("measured / theory")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return fig

    cost = "; ".join(f"{d['case'].activation} N={len(d['case'].K1)} depth {d['case'].depth} "
                     f"widths {d['case'].widths}: {d['networks']} networks, "
                     f"{d['seconds']:.0f} s" for d in info)
    note = ("P, Q (dNTK) and R, S, T, U (ddNTKs) at N distinct inputs, last layer: the entries "
            "that mix the inputs, measured by the plain estimators on the ordered pairs of s "
            "neurons per network at widths n and 2n and compared through 2 m(2n) - m(n) with "
            "allowance |m(2n) - m(n)|/2 (measured). " + cost + ".")
    return Study("P..U at several distinct inputs", note, rows, figure)


# ---------------------------------------------------------------------------
# H1 (the NTK mean at order 1/n) at N distinct inputs, with zero-mean controls
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class H1MultiCase:
    """One H1 comparison at N distinct inputs (``activation`` at criticality,
    learning-rate weights ``lambda_b``, ``lambda_W``); the rest as :class:`MultiInputCase`."""

    activation: str
    depth: int
    K1: tuple
    widths: tuple = (8, 16)
    networks: int = 40000
    seed: int = 0
    lambda_b: float = 0.5
    lambda_W: float = 1.5

    def __post_init__(self):
        MultiInputCase(self.activation, self.depth, self.K1, self.widths, self.networks,
                       self.seed)  # the same checks
        if self.networks < 40:
            raise ValueError(f"networks={self.networks}: the cross-fitted control needs >= 40")


#: default case of :func:`h1_multi_rows`: ReLU (whose one-input H1 vanishes exactly, so
#: only distinct inputs test it) at two nearly orthogonal inputs, depth 8 (H1_01 grows
#: fast with depth: 0.58, 3.1, 8.2 at depths 4, 6, 8, faster than its noise), widths 8
#: and 16, 60,000 networks each (~18 CPU s). Measured at 20,000 networks: n (E[H_01] -
#: Theta_01) = 6.02 +- 0.26 (n = 8), 6.70 +- 0.20 (n = 16) against H1 = 8.21, resolution
#: 28 %; at 40,000: 27 % (12 CPU s; the allowance ``|m(16) - m(8)|/2`` = 0.82 is the larger
#: part); widths 12, 24 with 30,000: 25 % at twice the cost. The control removes 1.9-2.8x
#: of the plain estimator's stderr (0.59 -> 0.26 at n = 8). This case (60,000, 17.5 CPU
#: s): 8.77 +- 0.29, allowance 0.77, resolution 23 %, controls x0/x0.5/x2 at z 18, 9.7,
#: 15.9; the extrapolation read 8.93, 8.77 (40k, 60k) against 8.21, inside the allowance
#: (the 1/n^2 term is large at depth/width = 1). At depth 8 and width 8 the
#: per-network values are heavy-tailed (depth/width = 1), so the stderr is rougher than
#: at the report's other sizes.
H1_MULTI_CASES = (
    H1MultiCase("relu", 8, ((1.04, -0.08), (-0.08, 1.30)), networks=60000, seed=331),
)


def measure_h1_multi(mlp, x, networks, seed=0, chunk=2000) -> dict:
    """``n (E[H_ii;ab] - Theta_ab)`` at the last layer, with exactly zero-mean controls.

    Per network, the neuron average of the last layer's NTK diagonal
    ``mean_i H_{ii;ab}``; its scatter is reduced by a cross-fitted (two
    halves: each half's coefficients fitted on the other) linear regression on
    the metric martingale differences ``d_l = S_l - <sigma sigma>_{G_l}``
    of the hidden layers (:func:`pdlt.experiment.estimators.metric_martingale_multi`;
    each entry has mean exactly zero given the layer below, with closed-form or
    exact pair rules: :func:`pdlt.report.learning.hidden_kernel_martingale`),
    so the estimate keeps the plain one's mean exactly.

    Returns
    -------
    dict
        ``"H1"``, ``"stderr"``, ``"plain_stderr"``, ``"theory"`` (N, N); ``"seconds"``.
    """
    import torch

    from ..experiment import Ensemble
    from ..experiment.activations import torch_activation
    from ..experiment.estimators import kernel_map_jacobian, metric_martingale_multi
    from ..theory.statistics import statistics
    from .learning import _pair_rule

    t0 = time.perf_counter()
    act = mlp.activation
    g = _pair_rule(act)
    st = statistics(mlp, x, get=("H1",))
    K, Th, H1 = (np.asarray(v, float) for v in (st.K, st.Theta, st["H1"]))
    L, N = mlp.depth, len(x)
    ens = Ensemble(mlp, networks=networks, seed=seed)
    tact = torch_activation(act)
    S = np.zeros((networks, L, N, N))
    h = np.zeros((networks, N, N))
    for s0 in range(0, networks, chunk):
        s1 = min(networks, s0 + chunk)
        zs = ens.preactivations(x, s0, s1)
        for l, z in enumerate(zs[:-1]):
            sg = tact.sigma(z)
            S[s0:s1, l] = (torch.einsum("mja,mjb->mab", sg, sg) / sg.shape[1]).double().numpy()
        H = ens.ntk(x, s0, s1)[-1]                               # (m, n, n, N, N)
        h[s0:s1] = torch.diagonal(H, dim1=1, dim2=2).mean(-1).double().numpy()
    S[:, -1] = S[:, -2]                                          # unused (no layer above L)
    chi = kernel_map_jacobian(g, K, mlp.C_W)
    d = metric_martingale_multi(S, K[0], mlp.C_b, mlp.C_W, g, chi)["d"][:, :-1]
    iu = np.triu_indices(N)
    F = d[:, :, iu[0], iu[1]].reshape(networks, -1)
    y = h.reshape(networks, -1)
    adj = y.copy()
    half = np.zeros(networks, bool)
    half[: networks // 2] = True
    for inside in (half, ~half):
        beta = np.linalg.lstsq(np.c_[np.ones((~inside).sum()), F[~inside]], y[~inside],
                               rcond=None)[0][1:]
        adj[inside] -= F[inside] @ beta
    n = mlp.fan_in(L)
    root = np.sqrt(networks)
    return {"H1": n * (adj.mean(0).reshape(N, N) - Th[-1]),
            "stderr": n * adj.std(0, ddof=1).reshape(N, N) / root,
            "plain_stderr": n * y.std(0, ddof=1).reshape(N, N) / root, "theory": H1[-1],
            "seconds": time.perf_counter() - t0}


def h1_multi_rows(cases=H1_MULTI_CASES) -> tuple:
    """Report rows for H1 at N distinct inputs: every entry ``a <= b``, last layer.

    :func:`measure_h1_multi` at widths n and 2n, compared through ``2 m(2n) - m(n)``
    with allowance ``|m(2n) - m(n)| / 2``. Family ``"H1 (N inputs)"`` (ReLU's
    diagonal entries are exactly zero: absolute bounds). Returns ``(rows, info)``,
    info per case: ``case``, ``seconds``, ``networks``, ``cv_gain`` (plain over
    controlled stderr at width 2n, smallest entry).
    """
    rows, info = [], []
    for case in cases:
        K1 = np.asarray(case.K1, float)
        N = K1.shape[0]
        res = []
        for j, n in enumerate(case.widths):
            mlp = critical_mlp(case.activation, n, case.depth, case.lambda_b, case.lambda_W,
                               n0=N)
            res.append(measure_h1_multi(mlp, inputs_for_kernel(mlp, K1), case.networks,
                                        seed=case.seed + j))
        a_, b_ = res
        ext, se, allow = width_extrapolation(a_["H1"], a_["stderr"], b_["H1"], b_["stderr"])
        offd = ",".join(f"{K1[i, k]:g}" for i in range(N) for k in range(i + 1, N))
        for a in range(N):
            for b in range(a, N):
                rows.append(make_row(
                    f"H1[{a}{b}] (N={N} inputs, K1 off-diag {offd}, lambda_b="
                    f"{case.lambda_b:g}, lambda_W={case.lambda_W:g}, n,2n extrap.)",
                    case.activation, case.widths[0], case.depth, a_["theory"][a, b],
                    ext[a, b], se[a, b], allow[a, b], key="H1 (N inputs)"))
        info.append(dict(case=case, seconds=a_["seconds"] + b_["seconds"],
                         networks=2 * case.networks,
                         cv_gain=float(np.min(b_["plain_stderr"] / b_["stderr"]))))
    return tuple(rows), tuple(info)


def h1_multi_study(cases=H1_MULTI_CASES) -> Study:
    """:func:`h1_multi_rows` as a report :class:`pdlt.report.rows.Study` (no figure of
    its own: the rows carry the comparison)."""
    rows, info = h1_multi_rows(cases)
    cost = "; ".join(f"{d['case'].activation} N={len(d['case'].K1)} depth {d['case'].depth} "
                     f"widths {d['case'].widths}: {d['networks']} networks, "
                     f"{d['seconds']:.0f} s, control {d['cv_gain']:.1f}x smaller stderr"
                     for d in info)
    note = ("H1 (the NTK mean at order 1/n) at N distinct inputs, last layer: n (mean_i "
            "H_ii;ab - Theta_ab) with a cross-fitted linear control on the metric martingale "
            "differences (each of mean exactly zero), at widths n and 2n, compared through "
            "2 m(2n) - m(n) with allowance |m(2n) - m(n)|/2 (measured). ReLU's one-input H1 "
            "vanishes exactly, so distinct inputs are where it is tested. " + cost + ".")
    return Study("H1 at several distinct inputs", note, rows, lambda: {})
