"""The theory-versus-experiment suite behind ``pdlt report``.

A *case* is one critical MLP (activation, width, depth) measured on an
ensemble; a *statistic spec* says how to get its theory value per layer and
what systematic allowance the comparison grants. Each later piece of theory
adds one :class:`StatSpec` to :data:`STAT_SPECS`; nothing else changes.

Pass criterion for a row: ``|measured - theory| <= 4 stderr + allowance``
(:mod:`pdlt.report.rows`). Every per-layer statistic is compared as the
two-width extrapolation ``2 m(2n) - m(n)`` with the allowance
``|m(2n) - m(n)| / 2`` for the remaining ``O(1/n^2)`` term: measured, never
proportional to the theory value under test. Each row also carries its
resolution ``(4 stderr + allowance) / |theory|``; rows resolved worse than
50 % are "unresolved" and do not count as passes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

__all__ = ["Case", "StatSpec", "STAT_SPECS", "Row", "CaseResult", "SuiteResult",
           "default_cases", "default_studies", "run_case", "run_suite", "critical_mlp"]

from .finite_training import finite_training_study
from .information import information_study
from .learning import finite_bayes_study
from .multi_input import (DERIVATIVE_MULTI_CASES, G1_MULTI_CASES, H1_MULTI_CASES,
                          derivative_multi_study, g1_multi_study, h1_multi_study)
from .rows import Row, critical_mlp, make_row, width_extrapolation  # noqa: F401 (re-exported)
from .studies import histogram_study, learning_study, linear_kurtosis_study, residual_study


@dataclass(frozen=True)
class Case:
    """One ensemble: a critical MLP of equal hidden widths, single input K1.

    ``derivative_networks``: networks for the dNTK/ddNTK statistics P..U
    (the first ones of the same seed; default ``networks``; 0: not measured in
    this case). They are measured at the last layer only (the one the rows
    compare), over the ordered pairs of the first ``derivative_neurons``
    neurons of each network (:meth:`pdlt.experiment.Ensemble.measure`), and
    are NaN at the other layers. ``derivative_passes``: instead, several
    passes ``((statistics, networks, neurons), ...)`` (e.g. ``(("P", 2000,
    128), ("QRSTU", 3000, 8))``): P's scatter falls like 1/neurons up to all
    of them, and alone it needs only same-neuron second-order jets, while
    Q..U's scatter levels off at a few neurons (``benchmarks/README.md``,
    "Report cost"). ``cv_networks``: networks for the
    control-variate statistics (:data:`CONTROL_VARIATE_STATS`, :func:`measure_cv`;
    default ``networks``; 0: measure them with the plain estimators instead).
    ``cv_ntk``: False measures Theta and H1 with the plain estimators (which
    run anyway for A, B, D, F) and keeps only the NTK-free control variates
    (K, G1, V: forward passes only, cheap at any width).
    ``stats``: this case's statistics (default: the suite's). ``lambda_b``,
    ``lambda_W``: learning-rate weights of the NTK (every layer).
    """

    activation: str
    width: int
    depth: int
    networks: int
    K1: float = 1.0
    seed: int = 0
    derivative_networks: int | None = None
    cv_networks: int | None = None
    stats: tuple | None = None
    lambda_b: float = 1.0
    lambda_W: float = 1.0
    derivative_neurons: int = 2
    derivative_passes: tuple | None = None
    cv_ntk: bool = True


@dataclass(frozen=True)
class StatSpec:
    """How to compare one statistic.

    Attributes
    ----------
    theory : callable (statistics, mlp) -> ndarray (L,)
        Theory per layer from :func:`pdlt.statistics` (one input), including
        every order the library implements.
    allowance : callable (theory (L,), statistics, mlp) -> ndarray (L,)
        Systematic allowance per layer (the first omitted order).
    normalize : callable (values (L,), flow, mlp) -> (L,), optional
        What the figure plots (e.g. V / (n K^2)).
    extrapolate : bool
        Compare the width extrapolation ``2 m(2n) - m(n)`` of two cases
        instead of each width alone (for statistics whose O(1/n) shift is
        large at the widths an ensemble can afford).
    label : str
    note : str
        The justification of the allowance, printed in the report.
    """

    theory: Callable
    allowance: Callable
    label: str
    note: str
    normalize: Callable | None = None
    ylabel: str = ""
    extrapolate: bool = False


def _fan_in(mlp):
    return np.array([mlp.fan_in(l) for l in range(1, mlp.depth + 1)], dtype=float)


def _H1_theory(ff, mlp):
    """H1 per layer (one input)."""
    return np.asarray(ff["H1"], float)


_EXTRAP_NOTE = ("compared as the two-width extrapolation 2 m(2n) - m(n), which removes the "
                "O(1/n) term, with allowance |m(2n) - m(n)|/2 for the remaining O(1/n^2) term "
                "(the expansion at least halves from n to 2n): measured, not proportional to "
                "the theory")

#: statistics measured from another one: name -> (measured statistic, theory of the base)
DERIVED = {"G1": ("K", lambda ff, mlp: np.asarray(ff.K, float)),
           "H1": ("Theta", lambda ff, mlp: np.asarray(ff.Theta, float))}


STAT_SPECS = {
    "K": StatSpec(
        theory=lambda ff, mlp: np.asarray(ff.K, float),
        allowance=lambda th, ff, mlp: np.zeros_like(th),
        label="K", extrapolate=True, ylabel="E[z z]",
        note="metric E[z z] = K + G1/n + O(1/n^2) against the infinite-width K (ch. 4), "
             + _EXTRAP_NOTE),
    "G1": StatSpec(
        theory=lambda ff, mlp: np.asarray(ff["G1"], float),
        allowance=lambda th, ff, mlp: np.zeros_like(th),
        label="G1", extrapolate=True, ylabel="n (E[z z] - K)",
        note="NLO metric measured as n (E[z z] - K) = G1 + O(1/n) (ch. 4), " + _EXTRAP_NOTE),
    "Theta": StatSpec(
        theory=lambda ff, mlp: np.asarray(ff.Theta, float),
        allowance=lambda th, ff, mlp: np.zeros_like(th),
        label="Theta", extrapolate=True, ylabel="E[H]",
        note="NTK mean E[H] = Theta + H1/n + O(1/n^2) against the frozen NTK (ch. 8), "
             + _EXTRAP_NOTE),
    "H1": StatSpec(
        theory=_H1_theory,
        allowance=lambda th, ff, mlp: np.zeros_like(th),
        label="H1", extrapolate=True, ylabel="n (E[H] - Theta)",
        note="NTK mean shift measured as n (E[H] - Theta) = H1 + O(1/n) "
             "(pdlt.theory.ntk_mean; exactly zero for one ReLU input, so its rows are "
             "absolute bounds), " + _EXTRAP_NOTE),
    "V": StatSpec(
        theory=lambda ff, mlp: np.asarray(ff["V"], float),
        allowance=lambda th, ff, mlp: np.zeros_like(th),
        normalize=lambda v, ff, mlp: np.asarray(v) / (_fan_in(mlp) * np.asarray(ff.K) ** 2),
        label="V", extrapolate=True, ylabel="V / (n K^2)",
        note="four-point vertex measured as n x (connected 4-point function) = V + O(1/n) "
             "(ch. 4), " + _EXTRAP_NOTE),
}


def _ntk_spec(name, ylabel, note=None):
    """An extrapolated (two-width) comparison of one NTK-family statistic."""
    return StatSpec(
        theory=lambda ff, mlp: np.asarray(ff[name], float),
        allowance=lambda th, ff, mlp: np.zeros_like(th),
        label=name, ylabel=ylabel, extrapolate=True,
        note=note or (
            f"NTK statistic {name} (ch. 8) measured as n x (connected correlator), whose O(1/n) "
            "shift is several standard errors at these widths; compared as the two-width "
            "extrapolation 2 m(2n) - m(n) with allowance |m(2n) - m(n)|/2 for the remaining "
            "O(1/n^2) term (the expansion at least halves from n to 2n)"))


for _name, _ylabel in (("A", "A"), ("B", "B"), ("D", "D"), ("F", "F")):
    STAT_SPECS[_name] = _ntk_spec(_name, _ylabel)
STAT_SPECS["D"] = _ntk_spec(
    "D", "D",
    note="NTK-metric cross-correlation D (ch. 8) measured as n Cov(H_ii, z_j z_j) (i != j); "
         "for ReLU by its exact martingale form (pdlt.experiment.estimators."
         "relu_ntk_metric_martingale: the products of the layer-to-layer martingale "
         "differences replaced by their exact conditional means, unbiased at every width, "
         "3-6x smaller stderr), else by the plain estimator; compared as the two-width "
         "extrapolation 2 m(2n) - m(n) with allowance |m(2n) - m(n)|/2 for the remaining "
         "O(1/n^2) term")


def _deriv_spec(name):
    chapter = "ch. 11, dNTK" if name in "PQ" else "'The End of Training', ddNTKs"
    return _ntk_spec(
        name, name,
        note=f"{name} ({chapter}) measured at the last layer as n x (connected correlator) on "
             "the ordered pairs of the first s neurons of each network (unbiased by "
             "exchangeability; networks and s per pass: Case.derivative_passes, in the default "
             "report s = 8, and every neuron for GELU's P) and compared as the two-width "
             "extrapolation 2 m(2n) - m(n) with allowance |m(2n) - m(n)|/2 for the remaining "
             "O(1/n^2) term")


#: the dNTK (P, Q) and ddNTK (R, S, T, U) statistics: autodiff, separate network count
DERIVATIVE_STATS = ("P", "Q", "R", "S", "T", "U")
for _name in DERIVATIVE_STATS:
    STAT_SPECS[_name] = _deriv_spec(_name)


@dataclass(frozen=True)
class CaseResult:
    case: Case
    mlp: object
    C_b: float
    C_W: float
    theory: dict          # stat -> (L,) theory per layer
    allowance: dict       # stat -> (L,)
    measured: dict        # stat -> Estimate with (L,) mean/stderr
    normalized: dict = field(default_factory=dict)  # stat -> (theory (L,), mean (L,), err (L,))
    seconds: float = 0.0
    #: piece -> (wall s, CPU s): "theory", "plain", "derivative", "control variates"
    timings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SuiteResult:
    cases: tuple
    rows: tuple
    seconds: float
    studies: tuple = ()
    #: (label, wall s, CPU s) per case piece and per study (the report page's
    #: "Cost per piece" table)
    timings: tuple = ()

    @property
    def passed(self) -> bool:
        """No row fails (unresolved rows pass their tolerance but are not counted as passes)."""
        return all(r.passed for r in self.rows)

    @property
    def counts(self) -> dict:
        """``{"pass": ..., "unresolved": ..., "FAIL": ...}`` over the rows."""
        out = {"pass": 0, "unresolved": 0, "FAIL": 0}
        for r in self.rows:
            out[r.status] += 1
        return out

    def summary(self) -> list:
        """The opening table (:func:`pdlt.report.rows.summarize`)."""
        from .rows import summarize
        return summarize(self.rows)

    def to_dict(self):
        return {"passed": self.passed, "seconds": self.seconds, "counts": self.counts,
                "timings": [list(t) for t in self.timings],
                "summary": [{k: (v.to_dict() if k == "best" else v) for k, v in d.items()}
                            for d in self.summary()],
                "rows": [r.to_dict() for r in self.rows]}


def default_cases(quick=False, full=False):
    """The suite: relu, tanh and gelu at criticality, two or three widths, plus H1 cases.

    Main cases: widths 32, 64, 128 at depth 6 (``quick``: 32, 64 at depth 4),
    every statistic; the plain estimators on 12,000 networks (tanh at 128:
    :data:`PLAIN_NETWORKS`); the control-variate statistics (K, G1, Theta,
    H1, V for tanh and gelu; V and D for relu) on :data:`CV_NETWORKS` networks, at
    width 128 only the NTK-free ones for tanh and gelu (K, G1, V; Theta and H1
    from the plain pass there; relu's D runs the NTK pass at every width). P..U in
    the passes of :data:`DERIVATIVE_PASSES` at widths 64 and 128 (their (64, 128) rows; ``quick``: one pass on
    :data:`QUICK_DERIVATIVE_NETWORKS` networks, 2 neurons). H1 cases (:data:`H1_CASES`):
    one input, widths 16 and 32, where H1 is resolved to <= 25 % by the
    control variate (tanh needs lambda_b = 0: its bias term dominates the NTK's
    scatter). ``full`` doubles every ensemble, runs the NTK control variates
    at every width and P..U at width 32 too (``pdlt report --full``).
    """
    f = 2 if full else 1
    if quick:
        cases = [Case(a, n, 4, f * 10000, seed=17 * i + j,
                      derivative_networks=f * QUICK_DERIVATIVE_NETWORKS,
                      cv_networks=f * CV_NETWORKS[min(n, 64)])
                 for i, a in enumerate(("relu", "tanh", "gelu"))
                 for j, n in enumerate((32, 64))]
    else:
        cases = []
        for i, a in enumerate(("relu", "tanh", "gelu")):
            for j, n in enumerate((32, 64, 128)):
                passes = (() if n == 32 and not full else
                          tuple((st, f * M, s) for st, M, s in DERIVATIVE_PASSES[a]))
                cases.append(Case(
                    a, n, 6, f * (12000 if full else PLAIN_NETWORKS.get((a, n), 12000)),
                    seed=17 * i + j,
                    derivative_passes=passes,
                    cv_networks=f * (CV_NETWORKS[64] if full and n == 128 else CV_NETWORKS[n]),
                    cv_ntk=full or n < 128 or a == "relu"))
    cases += [Case(a, n, L, f * M, seed=101 + 7 * i + j, stats=("G1", "H1", "V"),
                   lambda_b=lb, lambda_W=lw)
              for i, (a, lb, lw, L, M) in enumerate(H1_CASES)
              for j, n in enumerate((16, 32))]
    return cases


#: control-variate networks per width in the default report (at 128: K, G1 and V only)
CV_NETWORKS = {32: 3000, 64: 2000, 128: 2000}
#: plain-estimator networks where they differ from 12,000: tanh's rows from width 128
#: were at 0-5 % (K, Theta, B, F) and its A, D rows best at (32, 64); relu's width-128
#: plain pass (60 s, the report's largest) carries rows whose best resolution is at
#: (32, 64) (A 24 %) or that stay resolved with fewer networks (K, Theta, B, F, V at
#: (64, 128): 1-17 % at 12,000), and relu's D comes from its control pass
PLAIN_NETWORKS = {("tanh", 128): 5000, ("relu", 128): 8000}
#: (activation, lambda_b, lambda_W, depth, networks) of the H1 cases at widths 16, 32
#: (measured: H1 resolved to 15 % (tanh) and 24 % (gelu) at these sizes, 6 s each)
H1_CASES = (("tanh", 0.0, 1.0, 10, 1500), ("gelu", 0.5, 1.5, 6, 2000))


DEFAULT_STATS = ("K", "G1", "Theta", "H1", "V", "A", "B", "D", "F") + DERIVATIVE_STATS

#: P..U passes ``(statistics, networks, neurons)`` per activation at widths 64 and 128 of
#: the default report (see :attr:`Case.derivative_passes`): over the ordered pairs of 8
#: neurons per network (Q..U's scatter levels off there: gelu, width 128, R's per-network
#: sd 441, 418, 405 at s = 8, 16, 32), and GELU's P over all of them in a pass of its own
#: (P's scatter falls like 1/neurons: sd 30, 17, 14 at s = 16, 64, 128 against P = 19).
#: Network counts from the measured scatter for <= 25 % resolution of the (64, 128) rows
#: (``benchmarks/README.md``, "Report cost").
DERIVATIVE_PASSES = {"relu": (("PQRSTU", 2200, 8),),
                     "tanh": (("PQRSTU", 1200, 8),),
                     "gelu": (("P", 2500, 128), ("QRSTU", 3500, 8))}
#: networks per case for P..U in the quick report (one pass, 2 neurons)
QUICK_DERIVATIVE_NETWORKS = 2500


#: statistics measured with the martingale control variates of
#: :mod:`pdlt.experiment.estimators` (one input, plain MLP): K, G1, Theta and H1 for
#: smooth activations (for ReLU the control variates turn the metric and the NTK mean
#: into identities, E[z z] = K and E[H] = Theta exactly, so the raw neuron averages are
#: compared instead), V always; and D for ReLU
#: (:func:`pdlt.experiment.estimators.relu_ntk_metric_martingale`, in the NTK pass of
#: :func:`measure_cv`: relu at widths 32, 64, 128 on 3000, 2000, 2000 networks gave D at
#: se 1.06, 0.80, 0.52 against the plain estimator's 3.6, 3.8, 3.0 on the same networks)
CONTROL_VARIATE_STATS = ("K", "G1", "Theta", "H1", "V")


def measure_cv(mlp, networks, seed=0, K1=1.0, ntk=False, chunk=None):
    """K (= E[z z]), G1, V and (``ntk``) Theta (= E[H]), H1 per layer, with control variates.

    For ReLU with ``ntk``: D instead of Theta and H1
    (:func:`pdlt.experiment.estimators.relu_ntk_metric_martingale`).

    Draws the same networks as ``Ensemble(mlp, networks, seed)`` and reduces
    each to neuron averages per layer (:func:`pdlt.experiment.estimators.metric_martingale`
    and :func:`~pdlt.experiment.estimators.ntk_martingale` hold the derivations).
    Returns a dict of :class:`pdlt.experiment.Estimate` with (L,) mean and
    stderr (i.i.d. networks); G1 and H1 against the infinite-width K and Theta.
    """
    import torch

    from ..experiment import Ensemble, Estimate
    from ..experiment.activations import torch_activation
    from ..experiment.estimators import (gaussian_expectation, metric_martingale,
                                         ntk_martingale, relu_ntk_metric_martingale,
                                         vertex_from_martingale)
    from ..theory.statistics import flow as _flow

    if mlp.is_residual:
        raise ValueError("measure_cv: residual networks (gamma != 0 or xi != 1) are not "
                         "conditionally Gaussian layer to layer; use Ensemble.measure")
    act = mlp.activation
    ens = Ensemble(mlp, networks=networks, seed=seed)
    x = ens.single_input(K1)
    tact = torch_activation(act)
    chunk = chunk or max(50, min(2000, int(2e7 // (max(mlp.widths[1:]) ** 2 * mlp.depth))) if ntk
                         else 2000)
    cols = {k: [] for k in ("s", "u", "q")}
    for start in range(0, networks, chunk):
        stop = min(networks, start + chunk)
        zs = ens.preactivations(x, start, stop)
        Hs = ens.ntk(x, start, stop) if ntk else [None] * len(zs)
        per = {k: [] for k in cols}
        for z, H in zip(zs, Hs):
            z = z[..., 0]
            sg = tact.sigma(z)
            per["s"].append((sg ** 2).mean(1))
            if ntk:
                H = H[..., 0, 0]
                sp = tact.d1(z)
                dH = torch.diagonal(H, dim1=1, dim2=2)
                per["u"].append((sp ** 2 * dH).mean(1))
                a = sg * sp
                per["q"].append(torch.einsum("mi,mij,mj->m", a, H, a))
        for k in cols:
            if per[k]:
                cols[k].append(torch.stack(per[k], 1).double().cpu().numpy())
    s = np.concatenate(cols["s"])
    L = mlp.depth
    fl = _flow(mlp, K1=K1)
    K, Th = np.asarray(fl.K, float), np.asarray(fl.Theta, float)
    E = gaussian_expectation

    def sq(z):
        return np.asarray(act(z), float) ** 2

    def d1sq(z):
        return np.asarray(act.d1(z), float) ** 2

    def g(G):
        return E(sq, G)

    def v(G):
        return E(lambda z: sq(z) ** 2, G) - g(G) ** 2

    def slope(f, k):
        # d/dK E_{N(0,K)}[f] = E[(z^2/K - 1) f] / (2K)
        return E(lambda z: f(z) * z * z, k) / (2 * k * k) - E(f, k) / (2 * k)

    C_W = np.asarray(mlp.C_W, float)
    Kp = K[:-1]
    chi = np.r_[0.0, C_W[1:] * slope(sq, Kp)]
    widths = np.array([mlp.widths[l] for l in range(1, L + 1)], float)
    met = metric_martingale(s, K1, mlp.C_b, C_W, g, chi, v=v, widths=widths)
    n = _fan_in(mlp)
    Y = met["Y"]
    mY, sY = Y.mean(0), Y.std(0, ddof=1) / np.sqrt(networks)
    V, sV = vertex_from_martingale(met, K, n)
    out = {"K": Estimate(mY, sY, networks), "G1": Estimate(n * (mY - K), n * sY, networks),
           "V": Estimate(V, sV, networks)}
    if ntk and act.name == "relu":
        # ReLU: the metric and NTK-mean control variates are identities (E[zz] = K,
        # E[H] = Theta exactly), but D has an exact martingale form
        lw, lb = np.asarray(mlp.lambda_W, float), np.asarray(mlp.lambda_b, float)
        Dn = relu_ntk_metric_martingale(s, np.concatenate(cols["u"]), np.concatenate(cols["q"]),
                                        K1, Th[0], mlp.C_b, C_W, lb, lw, widths)
        out["D"] = Estimate(Dn.mean(0), Dn.std(0, ddof=1) / np.sqrt(networks), networks)
        return out
    if ntk:
        lw, lb = np.asarray(mlp.lambda_W, float), np.asarray(mlp.lambda_b, float)
        cK = np.r_[0.0, lw[1:] * slope(sq, Kp) + C_W[1:] * slope(d1sq, Kp) * Th[:-1]]
        cT = np.r_[0.0, C_W[1:] * E(d1sq, Kp)]
        Z = ntk_martingale(met, s, np.concatenate(cols["u"]), np.concatenate(cols["q"]), Th[0],
                           C_W, lb, lw, lambda G: E(d1sq, G),
                           lambda G: E(lambda z: z * z * d1sq(z), G), cK, cT, widths)
        mZ, sZ = Z.mean(0), Z.std(0, ddof=1) / np.sqrt(networks)
        out["Theta"] = Estimate(mZ, sZ, networks)
        out["H1"] = Estimate(n * (mZ - Th), n * sZ, networks)
    return out


class _Clock:
    """Wall and CPU (process, all threads) seconds between laps: ``laps[name] = (wall, cpu)``."""

    def __init__(self):
        self.laps = {}
        self._t = (time.perf_counter(), time.process_time())

    def lap(self, name):
        t = (time.perf_counter(), time.process_time())
        w, c = self.laps.get(name, (0.0, 0.0))
        self.laps[name] = (w + t[0] - self._t[0], c + t[1] - self._t[1])
        self._t = t
        return self.laps[name]


def case_label(case) -> str:
    """``"tanh n=64 L=6"`` (with the lambdas and the statistics of a special case)."""
    lab = f"{case.activation} n={case.width} L={case.depth}"
    if (case.lambda_b, case.lambda_W) != (1.0, 1.0):
        lab += f" lambda_b={case.lambda_b:g} lambda_W={case.lambda_W:g}"
    if case.stats is not None:
        lab += f" [{','.join(case.stats)}]"
    return lab


def _case_stats(case, stats):
    """The statistics a case measures: its own (those among ``stats``) or ``stats``."""
    return tuple(s for s in case.stats if s in stats) if case.stats is not None else tuple(stats)


def _derivative_groups(case):
    """The P..U passes of a case: ``[(networks, neurons, statistics), ...]``.

    :attr:`Case.derivative_passes` when given, else one pass of every
    statistic with ``derivative_networks`` and ``derivative_neurons``; passes
    with 0 networks are left out.

    Raises
    ------
    ValueError
        If a pass names a statistic outside P..U, or a statistic twice.
    """
    if case.derivative_passes is None:
        M = case.networks if case.derivative_networks is None else case.derivative_networks
        groups = [(int(M), int(case.derivative_neurons), DERIVATIVE_STATS)]
    else:
        groups, seen = [], set()
        for stats, M, s in case.derivative_passes:
            stats = tuple(stats)
            bad = [x for x in stats if x not in DERIVATIVE_STATS or x in seen]
            if bad:
                raise ValueError(f"derivative_passes: {bad} are not P..U or appear twice in "
                                 f"{case.derivative_passes!r}; give each of "
                                 f"{''.join(DERIVATIVE_STATS)} at most once")
            seen.update(stats)
            groups.append((int(M), int(s), stats))
    return [g for g in groups if g[0] > 0]


def run_case(case: Case, stats=DEFAULT_STATS, progress=False) -> CaseResult:
    from ..experiment import Ensemble, Estimate
    from ..theory.statistics import ORDER_ONE_OVER_N, statistics

    t0 = time.perf_counter()
    clock = _Clock()
    mlp = critical_mlp(case.activation, case.width, case.depth, case.lambda_b, case.lambda_W)
    stats = _case_stats(case, stats)
    ff = statistics(mlp, K1=case.K1,
                    get=("V", "G1") + tuple(s for s in stats if s in ORDER_ONE_OVER_N))
    clock.lap("theory")
    smooth = mlp.activation.is_smooth
    groups = _derivative_groups(case)
    measured_deriv = {s for g in groups for s in g[2]}
    stats = tuple(s for s in stats if s not in DERIVATIVE_STATS or s in measured_deriv)
    relu = mlp.activation.name == "relu"
    cv_stats = [s for s in stats if case.cv_networks != 0
                and ((s in CONTROL_VARIATE_STATS and (smooth or s == "V")
                      and (case.cv_ntk or s not in ("Theta", "H1")))
                     or (s == "D" and relu and case.cv_ntk))]
    cv_ntk = any(s in ("Theta", "H1", "D") for s in cv_stats)
    base = list(dict.fromkeys(DERIVED[s][0] if s in DERIVED else s for s in stats
                              if s not in cv_stats))
    plain = [s for s in base if s not in DERIVATIVE_STATS]
    deriv = [s for s in base if s in DERIVATIVE_STATS]
    meas = {}
    if plain:
        m = Ensemble(mlp, networks=case.networks, seed=case.seed).measure(
            K1=case.K1, stats=plain, progress=progress)
        meas.update({s: m[s] for s in plain})
        clock.lap("plain")
    for M, neurons, group in groups:
        group = [s for s in group if s in deriv]
        if not group:
            continue
        last = Ensemble(mlp, networks=M, seed=case.seed).measure(
            K1=case.K1, stats=group, layers=[case.depth], progress=progress,
            derivative_neurons=neurons)
        for s in group:
            e = last[s]
            mean, se = np.full(case.depth, np.nan), np.full(case.depth, np.nan)
            mean[-1], se[-1] = float(np.ravel(e.mean)[0]), float(np.ravel(e.stderr)[0])
            meas[s] = Estimate(mean, se, M)
        clock.lap("derivative")
    if cv_stats:
        cv = measure_cv(mlp, case.cv_networks or case.networks, seed=case.seed, K1=case.K1,
                        ntk=cv_ntk)
        meas.update({s: cv[s] for s in cv_stats})
        clock.lap("control variates")
    n = _fan_in(mlp)
    for s in stats:
        if s in DERIVED and s not in cv_stats:
            src, th0 = DERIVED[s]
            e = meas[src]
            # n (m - theory_0): the 1/n coefficient (G1, H1), with its stderr scaled alike
            meas[s] = Estimate(n * (np.asarray(e.mean) - th0(ff, mlp)), n * np.asarray(e.stderr),
                               e.n_networks)
    theory, allowance, measured, normalized = {}, {}, {}, {}
    for s in stats:
        spec = STAT_SPECS[s]
        th = np.asarray(spec.theory(ff, mlp), float)
        theory[s] = th
        allowance[s] = np.asarray(spec.allowance(th, ff, mlp), float)
        est = meas[s]
        measured[s] = est
        if spec.normalize is not None:
            normalized[s] = tuple(np.asarray(spec.normalize(v, ff, mlp), float)
                                  for v in (th, est.mean, est.stderr))
    return CaseResult(case, mlp, mlp.C_b[0], mlp.C_W[0], theory, allowance, measured,
                      normalized, time.perf_counter() - t0, dict(clock.laps))


def _extrapolated_rows(results):
    """Rows ``2 m(2n) - m(n)`` against theory at the last layer, for every width pair."""
    rows = []
    def key(r):
        c = r.case
        return (c.activation, c.depth, c.lambda_b, c.lambda_W, c.stats)

    by_key = {key(r) + (r.case.width,): r for r in results}
    for k, a in by_key.items():
        act, L, n = k[0], k[1], k[-1]
        b = by_key.get(k[:-1] + (2 * n,))
        if b is None:
            continue
        for s, th in a.theory.items():
            if s not in b.measured:
                continue
            ea, eb = a.measured[s], b.measured[s]
            ext, se, allow = width_extrapolation(ea.mean[L - 1], ea.stderr[L - 1],
                                                 eb.mean[L - 1], eb.stderr[L - 1])
            lam = ("" if (a.case.lambda_b, a.case.lambda_W) == (1.0, 1.0) else
                   f", lambda_b={a.case.lambda_b:g}, lambda_W={a.case.lambda_W:g}")
            rows.append(make_row(f"{s} (n,2n extrap.{lam})", act, n, L, th[L - 1], ext, se,
                                 allow, key=s))
    return rows


def default_studies(quick=False, full=False):
    """The extra studies (:mod:`pdlt.report.studies`) as zero-argument callables.

    ``full`` adds width 256 to the finite-width training study
    (:func:`pdlt.report.finite_training.default_training_cases`) and runs every
    N-input G1 case (:data:`pdlt.report.multi_input.G1_MULTI_CASES`: tanh N = 2 and 3,
    gelu N = 2, ~55 CPU s); the default and the quick report run the first (tanh N = 2,
    ~15 CPU s), so that G1 at distinct inputs has a resolved row in every report. P..U
    at two distinct inputs (:data:`pdlt.report.multi_input.DERIVATIVE_MULTI_CASES`,
    ~25 CPU s) and ReLU's H1 at two distinct inputs
    (:data:`pdlt.report.multi_input.H1_MULTI_CASES`, ~15 CPU s) run in the default
    report (``full``: twice the networks), not in the quick one.
    """
    g1_cases = G1_MULTI_CASES if full else G1_MULTI_CASES[:1]
    deriv_cases, h1_cases = (tuple(replace(c, networks=2 * c.networks) if full else c
                                   for c in cases)
                             for cases in (DERIVATIVE_MULTI_CASES, H1_MULTI_CASES))
    if quick:
        return [lambda: linear_kurtosis_study(networks=4000),
                lambda: histogram_study(networks=1500),
                lambda: learning_study(widths=(32, 64), networks=120, steps=20),
                lambda: residual_study(networks=1500),
                lambda: finite_training_study(quick=True),
                lambda: g1_multi_study(g1_cases),
                lambda: finite_bayes_study(quick=True)]
    return [lambda: linear_kurtosis_study(networks=20000),
            lambda: histogram_study(networks=3000),   # tail at ~7 %, 7 CPU s
            lambda: learning_study(),
            lambda: residual_study(ntk=True, full=full),
            lambda: finite_training_study(full=full),
            lambda: g1_multi_study(g1_cases),
            lambda: derivative_multi_study(deriv_cases),
            lambda: h1_multi_study(h1_cases),
            *([information_study] if full else []),  # r*'s inputs: ~26 CPU s, --full only
            lambda: finite_bayes_study(full=full)]


def run_suite(cases=None, stats=DEFAULT_STATS, *, quick=False, full=False, progress=None,
              log=None, studies=None) -> SuiteResult:
    """Run every case and compare at the last layer. ``log(msg)`` reports progress.

    ``studies``: zero-argument callables returning a
    :class:`pdlt.report.rows.Study`; default :func:`default_studies` when
    ``cases`` is None, none otherwise.
    """
    if studies is None:
        studies = default_studies(quick, full) if cases is None else []
    cases = default_cases(quick, full) if cases is None else list(cases)
    t0 = time.perf_counter()
    results, rows, timings = [], [], []
    cases = [c for c in cases if _case_stats(c, stats)]
    for k, case in enumerate(cases):
        if log:
            log(f"[{k + 1}/{len(cases)}] {case.activation} n={case.width} L={case.depth} "
                f"M={case.networks}")
        res = run_case(case, stats, progress=progress)
        results.append(res)
        for piece, (w, c) in res.timings.items():
            timings.append((f"{case_label(case)}: {piece}", w, c))
    rows.extend(_extrapolated_rows(results))
    done = []
    for k, make in enumerate(studies):
        if log:
            log(f"[study {k + 1}/{len(studies)}]")
        clock = _Clock()
        study = make()
        w, c = clock.lap("study")
        timings.append((f"study: {study.title}", w, c))
        done.append(study)
        rows.extend(study.rows)
    return SuiteResult(tuple(results), tuple(rows), time.perf_counter() - t0, tuple(done),
                       tuple(timings))
