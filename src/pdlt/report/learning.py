"""Learning at infinite width in the report: trained networks against the theory.

:func:`width_convergence` is the long verification (trained ensembles of real
MLPs at several widths against the kernel prediction, with the gap shrinking
like 1/n); :func:`learning_figures` returns matplotlib figures for

1. the NNGP posterior on a 1-D task and the log evidence against C_W and depth,
2. gradient-descent trajectories with the frozen NTK (discrete steps),
3. the bias-variance decomposition against C_W and depth (test average over
   every other test input when there are more than 41), interpolation versus
   extrapolation,
4. trained real networks against the kernel prediction as the width grows.

torch and matplotlib are imported inside the functions.
"""

from __future__ import annotations

import numpy as np

from .figures import pyplot

__all__ = ["width_convergence", "learning_figures"]


def width_convergence(mlp, task, *, widths=(64, 128, 256, 512), networks=400, steps=40,
                      lr_fraction=0.5, seed=0, dtype=None, device="cpu"):
    """Train ensembles at several widths and compare them with the kernel prediction.

    For each width n, ``networks`` copies of ``mlp.with_(width=n)`` are trained
    by full-batch gradient descent (:func:`pdlt.experiment.training.train_ensemble`)
    for ``steps`` steps of ``eta = lr_fraction * 2 / lambda_max(Theta_AA)``,
    and compared at the test inputs with
    :func:`pdlt.learning.kernel_prediction` at the same ``eta`` and ``steps``.

    The gap is measured with a control variate: each network's own initial
    outputs pushed through the frozen-NTK linear model give ``z_lin``, whose
    ensemble mean is exactly the theory mean; so ``d = z_trained - z_lin`` has
    mean equal to the mean gap and a per-network spread of O(1/sqrt(n))
    instead of O(1). ``E[d^2]`` (the mean squared departure from the
    infinite-width dynamics) should fall like 1/n.

    Parameters
    ----------
    mlp : pdlt.MLP
        Depth, activation and hyperparameters (its width is replaced).
    task : pdlt.learning.Task
    widths : sequence of int
    networks, steps, lr_fraction, seed
    dtype : torch.dtype, optional
        Default float64.
    device : str

    Returns
    -------
    dict
        ``widths``; per width (lists): ``mean_z`` (max ``|z-score|`` of the
        ensemble mean against the theory mean), ``cov_z`` (same for the
        covariance), ``mean_gap`` (max ``|E[d]|``) and ``mean_gap_stderr``,
        ``msd`` (``E[d^2]`` averaged over test inputs) and ``msd_stderr``;
        ``theory`` (mean (M,), cov (M, M)) per width; ``slope``: the
        least-squares slope of log msd against log n (-1 expected);
        ``learning_rate``.
    """
    import torch

    from ..experiment.training import train_ensemble
    from ..learning._common import last_layer_kernels
    from ..learning.kernel_learning import kernel_prediction, linear_model_outputs, stability_bound

    dtype = torch.float64 if dtype is None else dtype
    Xa, ya, Xb = task.X_train, np.asarray(task.y_train, float), task.X_test
    N, M = Xa.shape[0], Xb.shape[0]
    # the infinite-width kernels do not depend on the width
    K, Th = last_layer_kernels(mlp, Xa, Xb)
    eta = lr_fraction * stability_bound(Th[:N, :N])
    theory = kernel_prediction(K[:N, :N], K[N:, :N], K[N:, N:], Th[:N, :N], Th[N:, :N], ya,
                               eta, steps)
    out = {k: [] for k in ("mean_z", "cov_z", "mean_gap", "mean_gap_stderr", "msd", "msd_stderr",
                           "ensemble_mean", "ensemble_cov")}
    for n in widths:
        tr = train_ensemble(mlp.with_(width=int(n)), Xa, ya, Xb, networks=networks,
                            learning_rate=eta, steps=steps, seed=seed, dtype=dtype, device=device)
        m, c = tr.mean(), tr.cov()
        out["mean_z"].append(float(np.max(np.abs(m.mean[:, 0] - theory.mean[:, 0]) / m.stderr[:, 0])))
        out["cov_z"].append(float(np.max(np.abs(c.mean - theory.cov) / c.stderr)))
        out["ensemble_mean"].append(m.mean[:, 0])
        out["ensemble_cov"].append(c.mean)
        z0a, z0b = tr.train[:, 0, :, 0].T, tr.test[:, 0, :, 0].T
        _, zlin = linear_model_outputs(Th[:N, :N], Th[N:, :N], z0a, z0b,
                                       np.repeat(ya[:, None], networks, 1), eta, steps)
        d = tr.test[:, -1, :, 0] - zlin.T                        # (networks, M)
        gap, se = d.mean(0), d.std(0, ddof=1) / np.sqrt(networks)
        k = int(np.argmax(np.abs(gap)))
        out["mean_gap"].append(float(abs(gap[k])))
        out["mean_gap_stderr"].append(float(se[k]))
        sq = (d ** 2).mean(1)                                    # per network
        out["msd"].append(float(sq.mean()))
        out["msd_stderr"].append(float(sq.std(ddof=1) / np.sqrt(networks)))
    w = np.asarray(widths, float)
    slope = float(np.polyfit(np.log(w), np.log(out["msd"]), 1)[0]) if len(w) > 1 else float("nan")
    return {"widths": list(map(int, widths)), **out, "slope": slope, "learning_rate": eta,
            "steps": steps, "theory_mean": theory.mean[:, 0], "theory_cov": theory.cov,
            "networks": networks}


def learning_figures(mlp=None, task=None, *, C_W=None, depths=(2, 4, 8, 16), noise=1e-4,
                     convergence=None, steps=(0, 1, 2, 5, 10, 20, 50, 100, 1000)):
    """Figures for the learning part of the report.

    Parameters
    ----------
    mlp : pdlt.MLP, optional
        Default: critical tanh (C_b = 0, C_W = 1), depth 4, one input feature.
    task : pdlt.learning.Task, optional
        A 1-D task; default :func:`pdlt.learning.sine_task`.
    C_W : array_like, optional
        Grid for the evidence and bias-variance scans; default 0.5..2 around
        the MLP's C_W.
    depths : sequence of int
    noise : float
        Observation noise of the NNGP figures and ridge of the scans (keeps
        deep ordered-phase kernels invertible).
    convergence : dict, optional
        The result of :func:`width_convergence` (figure 4 is omitted without it).
    steps : sequence of int
        Steps shown in the trajectory figure.

    Returns
    -------
    dict of str -> matplotlib.figure.Figure
        Keys ``"nngp_posterior"``, ``"evidence"``, ``"gd_trajectory"``,
        ``"bias_variance"``, ``"interpolation"``, and ``"width_convergence"``
        when ``convergence`` is given.
    """
    import pdlt
    from ..learning import (bias_variance, bias_variance_scan, evidence_scan, ntk_prediction,
                            nngp_posterior, sine_task)

    plt = pyplot()
    task = sine_task() if task is None else task
    mlp = pdlt.MLP(task.n0, width=100, depth=4, activation="tanh", C_b=0.0, C_W=1.0) \
        if mlp is None else mlp
    cw0 = mlp.C_W[0]
    C_W = np.linspace(0.5 * cw0, 2.0 * cw0, 13) if C_W is None else np.asarray(C_W, float)
    xa, xb = task.X_train[:, 0], task.X_test[:, 0]
    figs = {}

    # (1) NNGP posterior and evidence
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    post = nngp_posterior(mlp, task.X_train, task.y_train, task.X_test, noise=noise)
    ax.plot(xb, task.y_test, "k--", lw=1, label="target")
    ax.plot(xb, post.mean[:, 0], label="NNGP posterior mean")
    ax.fill_between(xb, post.mean[:, 0] - 2 * post.std, post.mean[:, 0] + 2 * post.std,
                    alpha=0.3, label="±2 std")
    ax.plot(xa, task.y_train, "o", color="k", ms=4, label="training data")
    ax.set(xlabel="x", ylabel="output", title=f"Bayesian inference, {mlp.activation.name} L={mlp.depth}")
    ax.legend(fontsize=7)
    figs["nngp_posterior"] = fig

    scan = evidence_scan(mlp, task.X_train, task.y_train, C_W=C_W, depth=depths, noise=noise)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for j, L in enumerate(scan.depth):
        ax.plot(scan.C_W, scan.log_evidence[:, j], marker=".", label=f"L={L}")
    ax.axvline(cw0, color="gray", ls=":", label=f"C_W={cw0:g}")
    ax.set(xlabel="C_W", ylabel="log evidence", title="Evidence vs C_W and depth")
    ax.legend(fontsize=7)
    figs["evidence"] = fig

    # (2) gradient descent with the frozen NTK
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for t in steps:
        p = ntk_prediction(mlp, task.X_train, task.y_train, task.X_test, steps=t)
        ax.plot(xb, p.mean[:, 0], lw=1, label=f"t={t}")
    inf = ntk_prediction(mlp, task.X_train, task.y_train, task.X_test, noise=0.0)
    ax.plot(xb, inf.mean[:, 0], "k", lw=2, label="t=∞")
    ax.plot(xa, task.y_train, "o", color="k", ms=4)
    ax.set(xlabel="x", ylabel="mean trained output",
           title="Gradient descent, eta = 1/lambda_max (half the bound)")
    ax.legend(fontsize=6, ncol=2)
    figs["gd_trajectory"] = fig

    # (3) bias-variance vs C_W and depth; interpolation vs extrapolation. The scan's
    # test average runs over every other test input (the 81-point sine grid -> 41): its
    # cost grows like (training + test inputs)^2 per grid point, and it was the most
    # expensive figure of the report (52 kernel computations on 89 inputs, depth <= 16)
    scan_task = type(task)(task.X_train, task.y_train, task.X_test[::2], task.y_test[::2],
                           task.name) if task.X_test.shape[0] > 41 else task
    bv = bias_variance_scan(mlp, scan_task, C_W=C_W, depth=depths, noise=noise)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for j, L in enumerate(bv["depth"]):
        axes[0].semilogy(bv["C_W"], bv["bias2"][:, j], marker=".", label=f"L={L}")
        axes[1].semilogy(bv["C_W"], bv["variance"][:, j], marker=".", label=f"L={L}")
    for ax, t in zip(axes, ("bias²", "variance over initializations")):
        ax.axvline(cw0, color="gray", ls=":")
        ax.set(xlabel="C_W", title=t)
    axes[0].set_ylabel("test average")
    axes[0].legend(fontsize=7)
    figs["bias_variance"] = fig

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    inside = (task.X_test >= task.X_train.min(0)).all(1) & (task.X_test <= task.X_train.max(0)).all(1)
    for L in depths:
        res = bias_variance(mlp.with_(depth=int(L)), task, noise=noise)
        ax.semilogy(xb, res.error + 1e-16, lw=1, label=f"L={L}")
    ax.axvspan(xb[inside].min(), xb[inside].max(), color="gray", alpha=0.15, label="interpolation")
    ax.set(xlabel="x", ylabel="expected squared error", title="Interpolation vs extrapolation")
    ax.legend(fontsize=7)
    figs["interpolation"] = fig

    # (4) trained real networks vs the kernel prediction
    if convergence is not None:
        c = convergence
        w = np.asarray(c["widths"], float)
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        axes[0].errorbar(w, c["msd"], yerr=2 * np.asarray(c["msd_stderr"]), fmt="o",
                         label="E[(z - z_lin)²]")
        axes[0].errorbar(w, c["mean_gap"], yerr=2 * np.asarray(c["mean_gap_stderr"]), fmt="s",
                         label="|E[z] - theory|")
        ref = c["msd"][0] * w[0] / w
        axes[0].loglog(w, ref, "k:", label="∝ 1/n")
        axes[0].set(xlabel="width n", title=f"Gap to the kernel prediction (slope {c['slope']:.2f})")
        axes[0].legend(fontsize=7)
        axes[1].plot(np.arange(len(c["theory_mean"])), c["theory_mean"], "k-", label="theory")
        sd = np.sqrt(np.clip(np.diag(c["theory_cov"]), 0, None))
        axes[1].fill_between(np.arange(len(sd)), c["theory_mean"] - sd, c["theory_mean"] + sd,
                             color="gray", alpha=0.3)
        for n, m in zip(c["widths"], c["ensemble_mean"]):
            axes[1].plot(np.arange(len(m)), m, ".", label=f"n={n}")
        axes[1].set(xlabel="test input", ylabel="trained output",
                    title=f"{c['networks']} networks, {c['steps']} steps")
        axes[1].legend(fontsize=7)
        figs["width_convergence"] = fig
    return figs
