"""The end of training at finite width in the report: trained networks against 1/n theory.

For each task (two synthetic ones on the unit circle and scikit-learn's
diabetes data) and each training algorithm (one Newton "giant leap", the leap
followed by small gradient steps, many gradient steps), ensembles of real
critical tanh MLPs (and gelu MLPs by one Newton leap, :data:`GELU_MEAN_CASES`) are
trained at several widths
(:func:`pdlt.experiment.training.train_ensemble`, antithetic pairs; the
default report runs the tanh cases pair/gd and diabetes of
:func:`default_training_cases`, ``--full`` all five) and the
measured shift of the trained mean from the infinite-width prediction,

    d(n) = n (E[z(T)] - mean_infinite),

is compared with the predicted 1/n coefficient ``m1``
(:func:`pdlt.learning.finite_training.end_of_training`). At order 1/n
``d(n) = m1 + m2 / n + ...``: the residual ``d(n) - m1`` shrinks like 1/n,
i.e. the trained mean's residual like 1/n^2 while the correction itself is
1/n.

Rows (largest width n_max, previous width n_max/2):

* ``trained mean shift``: ``d(n_max)`` against ``m1`` at every test input and at
  the training input with the largest ``|m1|`` (none after gradient descent to
  convergence, which pins the training outputs to the targets); allowance
  ``|d(n_max/2) - d(n_max)|``, the measured size of the 1/n^2 term at n_max;
* ``1/n extrapolation``: the intercept of a weighted least-squares fit of
  ``d(n) = a + c/n`` over all widths against ``m1`` (4 standard errors of
  ``a``, no allowance): the residual is O(1/n^2);
* ``NTK change``: ``n E[H(T) - H(0)]`` (largest entry) against the prediction,
  at n_max (same allowance) and extrapolated (no allowance);
* ``trained variance shift`` (cases with ``variance=True``,
  :data:`VARIANCE_CASES`): ``n (Var z(T) - v_inf)`` at each test input against
  the 1/n coefficient of the trained covariance, at n_max with the allowance
  ``|d(n_max/2) - d(n_max)|``. The variance is measured with the exactly
  zero-mean control variate of
  :meth:`pdlt.experiment.training.TrainedEnsemble.variance` (the initial
  outputs mapped to the trained ones at infinite width, squared, minus their
  conditional mean given the network's own last-layer kernel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .figures import pyplot
from .rows import Study, make_row

__all__ = ["TrainingCase", "default_training_cases", "run_training_case",
           "finite_training_study", "VARIANCE_CASES", "GELU_MEAN_CASES"]


@dataclass(frozen=True)
class TrainingCase:
    task: str            # "circle", "pair" or "diabetes"
    algorithm: str       # "newton", "newton+gd", "gd"
    steps: int = 0
    widths: tuple = (32, 64, 128, 256)
    networks: int = 4000
    activation: str = "tanh"
    depth: int = 3
    seed: int = 0
    ntk: bool = True        # record the NTK (the NTK change rows)
    variance: bool = False  # the trained variance rows (control variate, needs Khat)
    mean: bool = True       # the trained mean rows

    @property
    def label(self):
        alg = self.algorithm + (f" ({self.steps} steps)" if self.algorithm != "newton" else "")
        act = "" if self.activation == "tanh" else f", {self.activation}"
        return f"{self.task}, {alg}{act}" + (", variance" if self.variance else "")


#: networks per width of the default report's diabetes case (antithetic pairs)
TRAINING_NETWORKS = 6000


def default_training_cases(quick=False, full=False):
    """The study's cases; ``quick`` keeps two widths and the cheap algorithms.

    Default (``pdlt report``): the two mean/NTK cases that carry the study's best
    resolution per row family at the least cost, measured on 400-network runs
    of every case (``benchmarks/README.md``, "Report cost (#14)"):

    * diabetes, Newton leap + 5 gradient steps, widths 32, 64, 128 with
      :data:`TRAINING_NETWORKS` networks: the best-resolved trained-mean shift
      (projected ~22 %, the other tasks 40-90 %) and NTK change (~5 %);
    * pair, gradient descent to convergence (100 steps), widths 16, 32, 64:
      the only algorithm whose training outputs are pinned, and cheap;
    * the trained variance (the first of :data:`VARIANCE_CASES`: gelu,
      'circle-far', widths 16, 32, 20 000 networks);
    * gelu's trained mean and NTK change (the first of :data:`GELU_MEAN_CASES`: the
      'circle' task, one Newton leap, widths 16, 32, 12 000 networks).

    ``full`` (``pdlt report --full``) runs the five cases with widths 32-256
    (pair/gd: 16-64) at 8000 networks (pair/gd: 6000) and the other two
    :data:`VARIANCE_CASES`: also the circle task
    (Newton leap; leap + 5 steps) and the pair task by a Newton leap, i.e. the
    algorithm dependence at one infinite-width prediction, and gelu's Newton leap at
    widths 16, 32, 64 (:data:`GELU_MEAN_CASES`). Why width 256 left
    the default: the scatter of ``d(n) = n (E[z(T)] - m_inf)`` grows like
    ``sqrt(n)`` (antithetic pairs leave an O(1/sqrt(n)) spread of z), that of
    the NTK change is flat in n, and the cost per network grows like ``n^2``,
    so width 256 cost 3/4 of a four-width case for the least precision.
    """
    if quick:
        return [TrainingCase("circle", "newton+gd", 5, widths=(32, 64), networks=3000),
                TrainingCase("diabetes", "newton", widths=(32, 64), networks=3000, seed=1)]
    if not full:
        return [TrainingCase("pair", "gd", 100, widths=(16, 32, 64), networks=3000, seed=2),
                TrainingCase("diabetes", "newton+gd", 5, widths=(32, 64, 128),
                             networks=TRAINING_NETWORKS, seed=1),
                VARIANCE_CASES[0], GELU_MEAN_CASES[0]]
    widths, M = (32, 64, 128, 256), 8000
    # the "pair" task twice: one Newton leap against gradient descent to convergence
    # (same infinite-width prediction, different 1/n corrections: the algorithm dependence)
    return [TrainingCase("circle", "newton", widths=widths, networks=M),
            TrainingCase("circle", "newton+gd", 5, widths=widths, networks=M),
            TrainingCase("pair", "newton", widths=widths, networks=M, seed=2),
            TrainingCase("pair", "gd", 100, widths=(16, 32, 64), networks=6000, seed=2),
            TrainingCase("diabetes", "newton+gd", 5, widths=widths, networks=M, seed=1),
            GELU_MEAN_CASES[1], *VARIANCE_CASES[1:]]


#: the trained variance's 1/n shift (rows "trained variance (1/n)"): Newton leap + 5 steps,
#: no NTK, no mean rows (gelu's trained mean on 'circle-far' after the leap and 5 steps reads
#: 8-10 % below its 1/n coefficient at n = 16-128; that is higher order, not a theory error:
#: see GELU_MEAN_CASES). Default
#: report: gelu, task 'circle-far', n = 16, 32 (20 000 networks, ~35 CPU s; resolution 0.24
#: when written). --full adds gelu at n = 16, 32, 64 (40 000 networks) and tanh on the
#: 'circle' task at n = 32, 64 (180 000 networks, ~130 CPU s: resolution 0.17 and 0.28,
#: measured 2026-12-03; at 60 000 it was 0.37 and 0.42: tanh's shift is 0.024-0.028
#: against v_inf = 0.005; benchmarks/README.md, "Variance corrections (#14)").
VARIANCE_CASES = tuple(
    TrainingCase(task, "newton+gd", 5, widths=w, networks=M, activation=a, ntk=False,
                 variance=True, mean=False)
    for a, task, w, M in (("gelu", "circle-far", (16, 32), 20000),
                          ("gelu", "circle-far", (16, 32, 64), 40000),
                          ("tanh", "circle", (32, 64), 180000)))


#: gelu's trained mean (rows "trained mean (1/n)", gelu) and NTK change: one Newton leap on
#: the 'circle' task. Default report: n = 16, 32, 12 000 networks (~16 CPU s, 15-16 %; 16 000:
#: 13-14 %); --full: n =
#: 16, 32, 64 (adds the 1/n extrapolation rows). Why the leap and not the leap + small steps:
#: gelu's NTK fluctuates strongly (n Var(u.DeltaH.u) / lambda^2 = 1.7-4.4 over the
#: eigenmodes u of Theta_AA, depth 3), so after gradient steps, which make the trained output
#: a polynomial in DeltaH, the terms beyond second order in DeltaH (order 1/n^2 in the mean)
#: are large at n <= 128; after the leap the kernel map is linear in the NTK and they vanish
#: exactly. Measured on 'circle-far' (leap + 5 steps, 8000 networks, n = 32 / 64 / 128;
#: benchmarks/gelu_offsets.py split): the frozen kernel map of each network's own initial NTK
#: beyond its second order in DeltaH moves n (E[z] - m_inf) at training input 3 by -0.38(5) /
#: -0.13(2) / -0.054(8), the dynamics beyond order 1/n by +0.14(5) / -0.04(2) / -0.04(1), while
#: the order-1/n kernel piece agrees (the quadratic AB term per network 1.10(3) / 1.05(2) /
#: 1.002(20) against 1.004); their sum reads 8-10 % low and nearly flat in n (1.47(2), 1.48(3),
#: 1.47(4), 1.42(6), 1.50(6) at n = 16, 32, 64, 128, 128 against 1.63). tanh reads ~10 % low
#: on the same task too (0.50(2), 0.54(2), 0.50(4) at n = 16-64 against 0.56). At depth 2,
#: where wide networks are cheap, the leap's dynamics at training input 3 reads 0.37(1) at n =
#: 32 and 64, 0.352(12) at 128 and 0.330(11) at 512 against 0.332: it converges to the theory,
#: whose order 1/n is exact there against first-layer Gaussian averages
#: (tests/learning/test_finite_training.py); gelu itself is torch's exact GELU
#: (tests/test_activations.py).
GELU_MEAN_CASES = (TrainingCase("circle", "newton", widths=(16, 32), networks=12000,
                                activation="gelu", seed=3),
                   TrainingCase("circle", "newton", widths=(16, 32, 64), networks=16000,
                                activation="gelu", seed=3))


def _task(name):
    if name == "circle":
        ang, angt = np.array([0.0, 1.2, 2.4, 3.6]), np.array([0.6, 3.0])
        X, Xt = np.c_[np.cos(ang), np.sin(ang)], np.c_[np.cos(angt), np.sin(angt)]
        return X, 0.5 * np.sin(ang) + 0.2, Xt
    if name == "circle-far":
        # the circle's training set and one test input on its far side (angle 4.8), where
        # the trained variance's 1/n shift is largest against its sampling noise
        X, y, _ = _task("circle")
        return X, y, np.array([[np.cos(4.8), np.sin(4.8)]])
    if name == "pair":
        # two training inputs at right angles, three test inputs around the circle
        ang, angt = np.array([0.0, 0.5 * np.pi]), np.array([0.25 * np.pi, 2.0, 3.5])
        X, Xt = np.c_[np.cos(ang), np.sin(ang)], np.c_[np.cos(angt), np.sin(angt)]
        return X, np.array([0.6, -0.4]), Xt
    if name == "diabetes":
        # standardized over all 442 patients (a 4-patient training set can have a constant
        # feature), then 4 training and 2 test patients drawn with a fixed seed
        try:
            from sklearn.datasets import load_diabetes
        except ImportError as exc:
            raise ImportError("the diabetes task needs scikit-learn: pip install "
                              "'pdlt[learning]'") from exc
        X, y = load_diabetes(return_X_y=True)
        X = (X - X.mean(0)) / X.std(0)
        y = (y - y.mean()) / y.std()
        # data seed 3: a training NTK without a tiny eigenvalue, so the Newton step's
        # 1/n corrections are O(1) in units of 1/n (seed 0 has lambda_min = 0.12 and
        # n (m - m_inf) ~ 24 at a training input: not perturbative at n <= 256)
        idx = np.random.default_rng(3).permutation(X.shape[0])[:6]
        return X[idx[:4]], y[idx[:4]], X[idx[4:]]
    raise ValueError(f"task must be 'circle', 'circle-far', 'pair' or 'diabetes'; got {name!r}")


def run_training_case(case: TrainingCase, log=None) -> dict:
    """Theory and trained ensembles for one case; a dict of arrays (JSON-ready)."""
    from ..experiment.training import train_ensemble
    from ..learning.finite_training import algorithm_schedule, end_of_training, training_statistics
    from ..network import MLP
    from ..theory.criticality import criticality

    X, y, Xt = _task(case.task)
    crit = criticality(case.activation)
    mlp = MLP(n0=X.shape[1], width=case.widths[0], depth=case.depth, n_out=1,
              activation=case.activation, C_b=crit.C_b, C_W=crit.C_W)
    st = training_statistics(mlp, X, Xt)
    Na = X.shape[0]
    ThA = st.Theta[:Na, :Na]
    kw = {} if case.algorithm == "newton" else dict(
        learning_rate=1.0 / np.linalg.eigvalsh(ThA)[-1], steps=case.steps)
    sched = algorithm_schedule(ThA, case.algorithm, **kw)
    pred = end_of_training(st, y, sched)
    m_inf = np.concatenate([pred.train_mean_infinite, pred.mean_infinite])
    m1 = np.concatenate([pred.train_mean_correction, pred.mean_correction])
    v_inf, v1 = np.diag(pred.cov_infinite), np.diag(pred.cov_correction)
    C0 = _infinite_width_map(st, sched)[Na:] if case.variance else None
    d, se, dh, dh_se, dv, dv_se = [], [], [], [], [], []
    for n in case.widths:
        if log:
            log(f"  {case.label}: n={n}, {case.networks} networks")
        seed = case.seed * 1000 + n
        te = train_ensemble(mlp.with_(width=n), X, y, Xt, networks=case.networks,
                            step_matrices=sched, seed=seed, antithetic=True, ntk=case.ntk)
        ma, mt = te.mean(on="train"), te.mean(on="test")
        d.append(n * (np.concatenate([ma.mean[:, 0], mt.mean[:, 0]]) - m_inf))
        se.append(n * np.concatenate([ma.stderr[:, 0], mt.stderr[:, 0]]))
        if case.ntk:
            ch = te.ntk_change()
            dh.append(n * ch.mean)
            dh_se.append(n * ch.stderr)
        if case.variance:
            from .learning import hidden_kernels
            v = te.variance(C0, hidden_kernels(mlp.with_(width=n), np.r_[X, Xt], case.networks,
                                               seed=seed))
            dv.append(n * (v.mean - v_inf))
            dv_se.append(n * v.stderr)
    return {"case": case, "n_train": Na, "m1": m1, "m_inf": m_inf, "widths": np.array(case.widths),
            "d": np.array(d), "se": np.array(se), "ntk_change": pred.ntk_change,
            "dh": np.array(dh), "dh_se": np.array(dh_se), "parts": pred.parts,
            "v1": v1, "v_inf": v_inf, "dv": np.array(dv), "dv_se": np.array(dv_se)}


def _infinite_width_map(st, sched):
    """``C0`` (N, N): the trained outputs at infinite width are ``C0 z(0) + F0 y``."""
    from ..learning.finite_training import _kernel_map_jets

    Na, N = st.n_train, st.N
    F0 = _kernel_map_jets(st.Theta, np.zeros((0, N, N)), sched, Na)[0]
    C0 = np.eye(N)
    C0[:, :Na] -= F0
    return C0


def _fit(widths, d, se):
    """Weighted least squares ``d = a + c / n``: (a, se_a, c)."""
    x = 1.0 / np.asarray(widths, float)
    W = 1.0 / np.asarray(se, float) ** 2
    A = np.stack([np.ones_like(x), x], axis=1)
    cov = np.linalg.inv(A.T @ (W[:, None] * A))
    a, c = cov @ A.T @ (W * d)
    return float(a), float(math.sqrt(cov[0, 0])), float(c)


def _rows(res):
    case = res["case"]
    Na = res["n_train"]
    n = case.widths[-1]
    d, se, m1 = res["d"], res["se"], res["m1"]
    rows = []
    # the training input with the largest predicted shift; none when the training outputs
    # are pinned to the targets at every width (gradient descent run to convergence)
    i_tr = int(np.argmax(np.abs(m1[:Na])))
    idx = ([i_tr] if abs(m1[i_tr]) > 1e-3 * np.abs(m1).max() else []) + list(range(Na, m1.size))
    for i in idx if case.mean else ():
        where = f"train {i}" if i < Na else f"test {i - Na}"
        allow = abs(d[-2, i] - d[-1, i])
        rows.append(make_row(f"trained mean shift n(m-m_inf), {case.label}, {where}",
                             case.activation, n, case.depth, m1[i], d[-1, i], se[-1, i], allow,
                             key="trained mean (1/n)"))
        if len(case.widths) >= 3:
            a, sa, _ = _fit(case.widths, d[:, i], se[:, i])
            rows.append(make_row(f"1/n extrapolation of n(m-m_inf), {case.label}, {where}",
                                 case.activation, n, case.depth, m1[i], a, sa, 0.0,
                                 key="trained mean (1/n)"))
    if case.variance:
        v1, dv, dv_se = res["v1"], res["dv"], res["dv_se"]
        for b in np.flatnonzero(np.abs(v1) >= 0.2 * np.abs(v1).max()):
            rows.append(make_row(f"trained variance shift n(v-v_inf), {case.label}, test {b}",
                                 case.activation, n, case.depth, v1[b], dv[-1, b], dv_se[-1, b],
                                 abs(dv[-2, b] - dv[-1, b]), key="trained variance (1/n)"))
    if not case.ntk:
        return rows
    th = res["ntk_change"]
    k = np.unravel_index(np.argmax(np.abs(th)), th.shape)
    allow = abs(res["dh"][-2][k] - res["dh"][-1][k])
    entry = tuple(int(v) for v in k)
    rows.append(make_row(f"NTK change n E[H(T)-H(0)], {case.label}, entry {entry}",
                         case.activation, n, case.depth, th[k], res["dh"][-1][k], res["dh_se"][-1][k],
                         allow, key="NTK change (1/n)"))
    if len(case.widths) >= 3:
        dk = np.array([v[k] for v in res["dh"]])
        sk = np.array([v[k] for v in res["dh_se"]])
        a, sa, _ = _fit(case.widths, dk, sk)
        rows.append(make_row(f"1/n extrapolation of the NTK change, {case.label}, entry {entry}",
                             case.activation, n, case.depth, th[k], a, sa, 0.0,
                             key="NTK change (1/n)"))
    return rows


def _figure(results):
    plt = pyplot()
    k = len(results)
    cols = min(k, 3)
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.ravel()[k:]:
        ax.set_visible(False)
    for ax, res in zip(axes.ravel(), results):
        case = res["case"]
        x = 1.0 / res["widths"]
        xs = np.linspace(0, x.max() * 1.05, 50)
        Na = res["n_train"]
        for i in range(res["m1"].size):
            lab = f"train {i}" if i < Na else f"test {i - Na}"
            col = f"C{i % 10}"
            ax.errorbar(x, res["d"][:, i], yerr=res["se"][:, i], fmt="o", color=col, ms=3,
                        label=lab, capsize=2)
            ax.plot([0], [res["m1"][i]], marker="*", color=col, ms=10)
            if len(x) >= 3:
                a, _, c = _fit(res["widths"], res["d"][:, i], res["se"][:, i])
                ax.plot(xs, a + c * xs, ":", color=col, lw=1)
        ax.set_xlabel("1/n")
        ax.set_ylabel("n (E[z(T)] - m_inf)")
        ax.set_title(case.label, fontsize=9)
        ax.axhline(0, color="0.8", lw=0.5)
        ax.legend(fontsize=6)
    fig.suptitle("trained finite-width networks: stars = predicted 1/n coefficient at 1/n = 0; "
                 "dotted = fit a + c/n (residual ~ 1/n^2)", fontsize=9)
    fig.tight_layout()
    return fig


def finite_training_study(cases=None, *, quick=False, full=False, log=None):
    """The end-of-training study for the report (:class:`pdlt.report.rows.Study`)."""
    cases = default_training_cases(quick, full) if cases is None else list(cases)
    results = [run_training_case(c, log=log) for c in cases]
    rows = tuple(r for res in results for r in _rows(res))

    def figure():
        return {"finite_training": _figure(results)}

    nets = sorted({c.networks for c in cases})
    tasks = {"circle": "'circle' (4 training, 2 test inputs on the unit circle)",
             "circle-far": "'circle-far' (the circle's training inputs, one test input at "
                           "angle 4.8)",
             "pair": "'pair' (2 training inputs at right angles, 3 test inputs on the circle)",
             "diabetes": "scikit-learn's diabetes data (4 training, 2 test patients)"}
    used = ", ".join(tasks[t] for t in dict.fromkeys(c.task for c in cases))
    acts = "/".join(dict.fromkeys(c.activation for c in cases))
    var_note = ("" if not any(c.variance for c in cases) else
                " Trained variance rows (cases 'circle-far'/variance): n (Var z(T) - v_inf) "
                "measured with the exactly zero-mean control variate w^2 - C0 Khat C0^T (w = "
                "C0 z(0), the infinite-width image of the initial outputs; Khat the network's "
                "own last-layer kernel), against the 1/n coefficient of the trained covariance "
                "(G1, H1, A, B, D, F and the dynamics P..U); these cases show no mean rows: "
                "gelu's trained mean on 'circle-far' after the leap and small steps reads ~8-10 % "
                "below the 1/n theory at n = 16-128, from terms of third and fourth order in the "
                "NTK fluctuation (large for gelu at these widths; gelu's mean rows use one "
                "Newton leap, where the kernel map is linear in the NTK and they vanish; "
                "pdlt.report.finite_training.GELU_MEAN_CASES).")
    return Study(
        "Learning at finite width: the end of training at order 1/n",
        f"critical {acts} MLPs, depth 3, one output, trained by a Newton giant leap, the leap and "
        "small gradient steps, or many gradient steps to convergence (the step matrices of "
        "pdlt.learning.finite_training.algorithm_schedule); cases: "
        + "; ".join(f"{c.label}, widths {'/'.join(map(str, c.widths))}" for c in cases)
        + f"; tasks: {used}; {'/'.join(map(str, nets))} networks per width in antithetic "
        "pairs. The measured n(E[z(T)] - m_inf) against the predicted 1/n coefficient from H1, "
        "A, B, D, F, P, Q, R, S, T, U. Allowance for the single-width rows: the change of the "
        "measured value between the two largest widths (the size of the 1/n^2 term); the 1/n "
        "extrapolation rows have none." + var_note, rows, figure)
