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

:func:`finite_bayes_study` checks the O(1/n) Bayesian posterior (variance and
mean, :func:`pdlt.learning.finite_bayes.finite_width_posterior`) against exact
inference over ensembles of real networks with the last layer integrated out
(:func:`hidden_kernels`, :func:`conditional_posterior`).

torch and matplotlib are imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .figures import pyplot

__all__ = ["width_convergence", "learning_figures", "hidden_kernels", "conditional_posterior",
           "hidden_kernel_martingale", "posterior_control_variate",
           "BayesCase", "default_bayes_cases", "run_bayes_case", "finite_bayes_study",
           "residual_hidden_state", "residual_bayes_three_point"]


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
    N = Xa.shape[0]
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


# ---------------------------------------------------------------------------
# the O(1/n) Bayesian posterior against exact inference over real networks
# ---------------------------------------------------------------------------

def hidden_kernels(mlp, X, networks, seed=0, *, chunk=4000, dtype=None):
    """Every network's own last-layer kernel ``Khat_ab = C_b + (C_W/n) sum_j s_j;a s_j;b``.

    ``s = sigma(z^(L-1))`` are network m's penultimate activations (``n =
    n_{L-1}``) on the inputs ``X``; networks as drawn by
    ``pdlt.experiment.Ensemble(mlp, networks, seed)`` (needs torch). Given its
    hidden layers a network's output is exactly Gaussian, ``z ~ N(0, Khat)``
    for each output neuron (the last layer is linear with Gaussian weights and
    biases), so ``Khat`` carries everything about the prior of that network
    except the last layer's own draw.

    Parameters
    ----------
    mlp : pdlt.MLP
        Plain MLP with at least one hidden layer.
    X : array_like (D, n0)
    networks, seed : int
    chunk : int, default 4000
        Networks per forward pass (memory).
    dtype : torch.dtype, optional
        Default float64.

    Returns
    -------
    ndarray (networks, D, D)
    """
    import torch

    from ..experiment import Ensemble
    from ..experiment.activations import torch_activation

    if mlp.depth < 2:
        raise ValueError(f"hidden_kernels needs an MLP with a hidden layer (depth >= 2); got "
                         f"depth {mlp.depth}")
    ens = Ensemble(mlp, networks=networks, seed=seed,
                   dtype=torch.float64 if dtype is None else dtype)
    sigma = torch_activation(mlp.activation).sigma
    c_b, c_w, n = mlp.C_b[-1], mlp.C_W[-1], mlp.widths[-2]
    out = np.empty((networks, len(X), len(X)))
    for s in range(0, networks, chunk):
        h = sigma(ens.preactivations(X, s, min(networks, s + chunk))[-2])     # (m, n, D)
        out[s:s + h.shape[0]] = (c_b + c_w / n * torch.einsum("mja,mjb->mab", h, h)).double().numpy()
    return out


def conditional_posterior(Khat, y_train, noise, *, blocks=50, prior_mean=None):
    """Exact Bayesian posterior of an ensemble of networks, the last layer integrated out.

    Network m contributes its hidden layers, i.e. its last-layer kernel
    ``Khat_m`` (:func:`hidden_kernels`); given them its output is the Gaussian
    process ``N(0, Khat_m)``, so conditioning on ``y = z_A + noise`` is exact in
    closed form: ``mu_m = Khat_BA (Khat_AA + s I)^-1 y``, ``S_m = Khat_BB -
    Khat_BA (Khat_AA + s I)^-1 Khat_AB`` and the evidence ``p_m = N(y; 0,
    Khat_AA + s I)``. The posterior over all networks is the mixture: mean
    ``sum p_m mu_m / sum p_m``, variance ``sum p_m (S_m + mu_m^2) / sum p_m -
    mean^2``. This is :func:`pdlt.learning.finite_bayes.importance_posterior`
    with the last layer's draw replaced by its exact conditional expectation
    (Rao-Blackwell): unbiased up to the O(1/M) of self-normalization, and the
    weights vary only with ``Khat`` (an O(1/sqrt(n)) fluctuation) instead of
    with the sampled outputs, so the effective sample size stays near M even
    for small noise. Standard errors by a jackknife over ``blocks`` blocks.

    Parameters
    ----------
    Khat : array_like (M, D, D)
        Per-network kernels over the N training inputs first, then the test ones.
    y_train : array_like (N,)
        One output's targets.
    noise : float
        Observation-noise variance s (``0`` allowed when every ``Khat_AA`` is
        invertible, i.e. n >= N and distinct inputs).
    blocks : int, default 50
    prior_mean : array_like (M, D), optional
        Each network's conditional prior mean of the output given its hidden layers (a
        residual output layer: ``gamma z^(L-1)_i`` of the neuron observed,
        :func:`residual_hidden_state`); default 0 (a plain output layer).

    Returns
    -------
    pdlt.learning.finite_bayes.ImportancePosterior
        ``mean``, ``var`` and their stderrs of shape (D - N, 1), ``ess``,
        ``networks``.
    """
    from ..learning.finite_bayes import ImportancePosterior

    Kh = np.asarray(Khat, float)
    y = np.asarray(y_train, float)
    if Kh.ndim != 3 or Kh.shape[1] != Kh.shape[2]:
        raise ValueError(f"Khat must have shape (M, D, D); got {Kh.shape}")
    M, D = Kh.shape[:2]
    N = y.size
    if y.ndim != 1 or not 1 <= N < D:
        raise ValueError(f"y_train must be 1-D with fewer entries than the D = {D} inputs of "
                         f"Khat (the training inputs come first); got shape {y.shape}")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite variance >= 0; got {noise!r}")
    if not (isinstance(blocks, (int, np.integer)) and 2 <= blocks <= M):
        raise ValueError(f"blocks must be an integer in [2, M={M}]; got {blocks!r}")
    if prior_mean is not None:
        mu0 = np.asarray(prior_mean, float)
        if mu0.shape != (M, D):
            raise ValueError(f"prior_mean must have shape (M, D) = {(M, D)}; got {mu0.shape}")
        return _conditional_posterior_shifted(Kh, y, noise, blocks, mu0)
    A = Kh[:, :N, :N] + noise * np.eye(N)
    try:
        L = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        raise ValueError("some network's Khat_AA + noise I is singular; add noise > 0, use "
                         "distinct training inputs, or a width n >= the number of training "
                         "inputs") from None
    rhs = np.concatenate([np.broadcast_to(y[None, :, None], (M, N, 1)), Kh[:, :N, N:]], axis=2)
    sol = np.linalg.solve(A, rhs)
    alpha, R = sol[:, :, 0], sol[:, :, 1:]
    mu = np.einsum("mab,ma->mb", Kh[:, :N, N:], alpha)                     # (M, D - N)
    S = np.diagonal(Kh[:, N:, N:], axis1=1, axis2=2) - np.einsum("mab,mab->mb", Kh[:, :N, N:], R)
    logw = -0.5 * np.einsum("a,ma->m", y, alpha) - np.log(np.diagonal(L, axis1=1, axis2=2)).sum(1)
    w = np.exp(logw - logw.max())
    edges = np.linspace(0, M, blocks + 1).astype(int)
    parts = [np.add.reduceat(a, edges[:-1], axis=0)
             for a in (w, w[:, None] * mu, w[:, None] * (S + mu * mu))]

    def estimate(sw, swm, sws):
        m = swm / sw
        return m, sws / sw - m * m

    total = [p.sum(0) for p in parts]
    mean, var = estimate(*total)
    loo = [estimate(*(t - p[k] for t, p in zip(total, parts))) for k in range(blocks)]
    errs = []
    for j in range(2):
        arr = np.array([e[j] for e in loo])
        errs.append(np.sqrt((blocks - 1) / blocks * ((arr - arr.mean(0)) ** 2).sum(0)))
    ess = float(w.sum() ** 2 / np.sum(w * w))
    return ImportancePosterior(mean=mean[:, None], mean_stderr=errs[0][:, None], var=var[:, None],
                               var_stderr=errs[1][:, None], observables=None,
                               observables_stderr=None, ess=ess, networks=M)


def _mixture_parts(Kh, y, noise, mu0):
    """Per-network evidence weight, posterior mean and variance of the Gaussian output
    ``N(mu0, Kh)`` given ``y = z_A + noise``: ``w`` (M,), ``mu`` and ``S`` (M, D - N)."""
    M, D = Kh.shape[:2]
    N = y.size
    A = Kh[:, :N, :N] + noise * np.eye(N)
    try:
        L = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        raise ValueError("some network's Khat_AA + noise I is singular; add noise > 0") from None
    r = y[None, :] - mu0[:, :N]                                              # (M, N)
    rhs = np.concatenate([r[:, :, None], Kh[:, :N, N:]], axis=2)
    sol = np.linalg.solve(A, rhs)
    alpha, R = sol[:, :, 0], sol[:, :, 1:]
    mu = mu0[:, N:] + np.einsum("mab,ma->mb", Kh[:, :N, N:], alpha)
    S = np.diagonal(Kh[:, N:, N:], axis1=1, axis2=2) - np.einsum("mab,mab->mb", Kh[:, :N, N:], R)
    logw = -0.5 * np.einsum("ma,ma->m", r, alpha) - np.log(np.diagonal(L, axis1=1, axis2=2)).sum(1)
    return np.exp(logw - logw.max()), mu, S


def _block_jackknife(per_network, estimate, blocks):
    """Estimate and jackknife stderr of ``estimate(*block sums)`` over ``blocks`` blocks."""
    M = per_network[0].shape[0]
    edges = np.linspace(0, M, blocks + 1).astype(int)
    parts = [np.add.reduceat(a, edges[:-1], axis=0) for a in per_network]
    total = [p.sum(0) for p in parts]
    full = estimate(*total)
    loo = [estimate(*(t - p[k] for t, p in zip(total, parts))) for k in range(blocks)]
    errs = []
    for j in range(len(full)):
        arr = np.array([e[j] for e in loo])
        errs.append(np.sqrt((blocks - 1) / blocks * ((arr - arr.mean(0)) ** 2).sum(0)))
    return full, errs


def _conditional_posterior_shifted(Kh, y, noise, blocks, mu0):
    """:func:`conditional_posterior` with a per-network prior mean ``mu0`` (M, D)."""
    from ..learning.finite_bayes import ImportancePosterior

    w, mu, S = _mixture_parts(Kh, y, noise, mu0)

    def estimate(sw, swm, sws):
        m = swm / sw
        return m, sws / sw - m * m

    (mean, var), errs = _block_jackknife([w, w[:, None] * mu, w[:, None] * (S + mu * mu)],
                                         estimate, blocks)
    ess = float(w.sum() ** 2 / np.sum(w * w))
    return ImportancePosterior(mean=mean[:, None], mean_stderr=errs[0][:, None], var=var[:, None],
                               var_stderr=errs[1][:, None], observables=None,
                               observables_stderr=None, ess=ess, networks=len(w))


def residual_hidden_state(mlp, X, networks, seed=0, *, neuron=0, chunk=4000):
    """Each network's output law given its hidden layers, for a residual output layer.

    ``z^(L)_i = xi [b_i + W_i sigma(z^(L-1))] + gamma z^(L-1)_i``: given layer L-1 the
    output neuron i is Gaussian with mean ``gamma z^(L-1)_i`` and covariance ``Khat =
    xi^2 [C_b + (C_W/n) sum_j sigma_j sigma_j^T]`` (the same for every neuron).

    Parameters
    ----------
    mlp : pdlt.MLP
        Residual output layer (``n_out = n_{L-1}``), depth >= 2.
    X : array_like (D, n0)
    networks, seed : int
        Networks as drawn by ``pdlt.experiment.Ensemble(mlp, networks, seed)``.
    neuron : int, default 0
        The output neuron whose conditional mean is returned.
    chunk : int, default 4000

    Returns
    -------
    Khat : ndarray (networks, D, D)
    mean : ndarray (networks, D)
        ``gamma z^(L-1)_neuron``.
    """
    import torch

    from ..experiment import Ensemble
    from ..experiment.activations import torch_activation

    if mlp.depth < 2 or mlp.n_out != mlp.widths[-2]:
        raise ValueError("residual_hidden_state needs depth >= 2 and n_out = n_{L-1} (a "
                         f"residual output layer); got depth {mlp.depth}, widths {mlp.widths}")
    ens = Ensemble(mlp, networks=networks, seed=seed, dtype=torch.float64)
    sigma = torch_activation(mlp.activation).sigma
    c_b, c_w, n = mlp.C_b[-1], mlp.C_W[-1], mlp.widths[-2]
    xi2, g = mlp.xi[-1] ** 2, mlp.gamma[-1]
    Kh = np.empty((networks, len(X), len(X)))
    mean = np.empty((networks, len(X)))
    for s in range(0, networks, chunk):
        z = ens.preactivations(X, s, min(networks, s + chunk))[-2]         # (m, n, D)
        h = sigma(z)
        Kh[s:s + h.shape[0]] = xi2 * (c_b + c_w / n * torch.einsum("mja,mjb->mab", h, h)).numpy()
        mean[s:s + h.shape[0]] = g * z[:, neuron, :].numpy()
    return Kh, mean


def residual_bayes_three_point(activation="relu", *, widths=(8, 16), networks=100000,
                               noise=0.05, gamma=0.5, C_W=1.5, C_b=0.1, depth=3, seed=0,
                               blocks=50):
    """The output three-point function in the Bayesian posterior of residual MLPs.

    A residual output layer (``gamma``, ``n_out = width``) with a non-odd activation: one
    output neuron observed (targets ``+y`` and ``-y`` on :data:`BAYES_X_TRAIN`), its
    posterior at :data:`BAYES_X_TEST`. At O(1/n) the part of the posterior mean *even* in
    ``y`` and the part of the posterior variance *odd* in ``y`` come from ``kappa3`` alone
    (V's terms have the other parity, G1 none, the infinite-width posterior neither), so
    ``n [m(y) + m(-y)] / 2`` and ``n [v(y) - v(-y)] / 2`` measure the three-point terms
    directly; the theory without ``kappa3`` predicts 0 for both. Exact posterior:
    :func:`conditional_posterior` with each network's ``gamma z^(L-1)_0`` prior mean
    (:func:`residual_hidden_state`), the same networks for ``+y`` and ``-y`` (joint
    jackknife).

    Returns
    -------
    dict
        ``mean3``, ``var3`` (N_B,): theory coefficients of the kappa3 terms (even mean,
        odd variance, times n); ``mean1_full``: the whole 1/n mean coefficient at ``+y``;
        per width (W, N_B): ``dm``, ``dm_se``, ``dv``, ``dv_se`` (measured, times n),
        ``dm_plus``, ``dm_plus_se`` (the whole ``n (m(y) - m_inf)``), ``ess`` (2W,),
        ``widths``, ``activation``.
    """
    import pdlt
    from ..learning.finite_bayes import nearly_gaussian_posterior
    from ..theory.statistics import statistics

    XA, ya, XB = BAYES_X_TRAIN, BAYES_Y_TRAIN, BAYES_X_TEST
    X = np.vstack([XA, XB])
    N = len(XA)

    def mlp_at(n):
        return pdlt.MLP(2, width=n, depth=depth, n_out=n, gamma=gamma, activation=activation,
                        C_W=C_W, C_b=C_b)

    st = statistics(mlp_at(widths[0]), X, get=("V", "G1", "kappa3"))
    big = float(_COEFFICIENT_WIDTH)
    args = (st.K[-1], st.V[-1])
    out = {}
    full = nearly_gaussian_posterior(*args, ya, N, noise, G1=st.G1[-1], n=big,
                                     kappa3=st.kappa3[-1])
    no3 = nearly_gaussian_posterior(*args, ya, N, noise, G1=st.G1[-1], n=big)
    out["mean3"] = big * (full.mean - no3.mean)[:, 0]
    out["var3"] = big * np.diag(full.cov - no3.cov)
    out["mean1_full"] = big * (full.mean - full.mean_infinite_width)[:, 0]
    m_inf = full.mean_infinite_width[:, 0]
    v_inf = np.diag(full.cov_infinite_width)
    res = {k: [] for k in ("dm", "dm_se", "dv", "dv_se", "ess", "dm_plus", "dm_plus_se")}
    for n in widths:
        Kh, mu0 = residual_hidden_state(mlp_at(n), X, networks, seed=seed * 1000 + n)
        parts = []
        for y in (ya, -ya):
            w, mu, S = _mixture_parts(Kh, y, noise, mu0)
            parts += [w, w[:, None] * mu, w[:, None] * (S + mu * mu)]
            res["ess"].append(float(w.sum() ** 2 / np.sum(w * w)))

        def estimate(sw1, swm1, sws1, sw2, swm2, sws2):
            m1, m2 = swm1 / sw1, swm2 / sw2
            v1, v2 = sws1 / sw1 - m1 * m1, sws2 / sw2 - m2 * m2
            return (n * 0.5 * (m1 + m2), n * 0.5 * (v1 - v2), n * (m1 - m_inf))

        (dm, dv, dmp), (sm, sv, smp) = _block_jackknife(parts, estimate, blocks)
        res["dm"].append(dm)
        res["dm_se"].append(sm)
        res["dv"].append(dv)
        res["dv_se"].append(sv)
        res["dm_plus"].append(dmp)
        res["dm_plus_se"].append(smp)
    out.update({k: np.array(v) for k, v in res.items()})
    out["widths"] = np.array(widths)
    out["activation"] = activation
    out["var_inf"], out["mean_inf"] = v_inf, m_inf
    return out


@dataclass(frozen=True)
class BayesCase:
    """One case of :func:`finite_bayes_study`: a critical MLP, widths and ensemble size."""

    activation: str
    depth: int = 3
    widths: tuple = (16, 32)
    networks: int = 40000
    noise: float = 0.05
    seed: int = 0
    #: measure with the zero-mean control of :func:`hidden_kernel_martingale`
    #: (:func:`posterior_control_variate`) instead of :func:`conditional_posterior` alone
    control_variate: bool = False


#: the study's data: two training inputs and targets, two test inputs on the far side of the
#: circle of radius 1.2 (where the O(1/n) posterior variance is largest against its noise)
BAYES_X_TRAIN = np.array([[1.0, 0.3], [-0.4, 0.9]])
BAYES_Y_TRAIN = np.array([1.3, -1.0])
BAYES_X_TEST = 1.2 * np.c_[np.cos([1.25 * np.pi, 1.75 * np.pi]), np.sin([1.25 * np.pi, 1.75 * np.pi])]

#: width of the theory's 1/n coefficient: ``n (v(n) - v_inf)`` at this n (O(1/n^2) of it
#: is below 1e-6 of the coefficient)
_COEFFICIENT_WIDTH = 10 ** 7


#: networks per width of the control-variate cases (relu, gelu) in the default report.
#: Measured at 40,000 networks, widths 16/32: the control removes 2.2-2.5x of the
#: posterior mean's stderr at width 32 (relu 0.095 -> 0.039, gelu 0.085 -> 0.033, in units
#: of n) and 1.6-1.9x of the variance's; the extrapolated mean rows were then at 41 %
#: (relu, test 1) and 36 % (gelu), so 25 % needs ~3.4x and ~2.3x the networks. Cost
#: ~2 s CPU per width per 40,000 networks (closed-form pair rules).
BAYES_CV_NETWORKS = {"relu": 150000, "gelu": 100000}


def default_bayes_cases(quick=False, full=False):
    """relu, tanh and gelu at depth 3; relu and gelu with the control variate on
    ``BAYES_CV_NETWORKS`` networks (``full``: widths 16/32/64, twice those, and
    60 000 for tanh)."""
    if quick:
        return [BayesCase("tanh", widths=(16, 32), networks=10000)]
    f = 2 if full else 1
    widths = (16, 32, 64) if full else (16, 32)
    return [BayesCase(a, widths=widths, networks=f * BAYES_CV_NETWORKS[a],
                      control_variate=True) if a in BAYES_CV_NETWORKS else
            BayesCase(a, widths=widths, networks=60000 if full else 40000)
            for a in ("relu", "tanh", "gelu")]


def run_bayes_case(case: BayesCase, log=None) -> dict:
    """Theory and exact ensemble posteriors (:func:`conditional_posterior`) for one case.

    Returns a dict: ``case``; the theory's 1/n coefficients ``var1``, ``mean1`` (N_B,)
    of the posterior variance and mean; per width (arrays (W, N_B)) the measured
    ``dv = n (var - var_inf)``, ``dm = n (mean - mean_inf)`` and their stderrs,
    ``ess``.
    """
    from ..learning.finite_bayes import finite_width_posterior
    from .rows import critical_mlp

    XA, ya, XB = BAYES_X_TRAIN, BAYES_Y_TRAIN, BAYES_X_TEST
    mlp = critical_mlp(case.activation, case.widths[0], case.depth, n0=2, n_out=1)
    big = _COEFFICIENT_WIDTH
    th = finite_width_posterior(mlp.with_(width=big), XA, ya, XB, noise=case.noise)
    v_inf, m_inf = np.diag(th.cov_infinite_width), th.mean_infinite_width[:, 0]
    var1, mean1 = big * (np.diag(th.cov) - v_inf), big * (th.mean[:, 0] - m_inf)
    out = {k: [] for k in ("dv", "dv_se", "dm", "dm_se", "ess")}
    X = np.vstack([XA, XB])
    for n in case.widths:
        if log:
            log(f"  Bayes {case.activation}: n={n}, {case.networks} networks")
        if case.control_variate:
            Kh, lam, _ = hidden_kernel_martingale(mlp.with_(width=n), X, case.networks,
                                                  seed=case.seed * 1000 + n)
            c = posterior_control_variate(Kh, lam, ya, case.noise)
            var, var_se, mean, mean_se = c["var"], c["var_stderr"], c["mean"], c["mean_stderr"]
            ess = c["ess"]
        else:
            Kh = hidden_kernels(mlp.with_(width=n), X, case.networks, seed=case.seed * 1000 + n)
            p = conditional_posterior(Kh, ya, case.noise)
            var, var_se, mean, mean_se = (p.var[:, 0], p.var_stderr[:, 0], p.mean[:, 0],
                                          p.mean_stderr[:, 0])
            ess = p.ess
        out["dv"].append(n * (var - v_inf))
        out["dv_se"].append(n * var_se)
        out["dm"].append(n * (mean - m_inf))
        out["dm_se"].append(n * mean_se)
        out["ess"].append(ess)
    return {"case": case, "var1": var1, "mean1": mean1, "var_inf": v_inf, "mean_inf": m_inf,
            "widths": np.array(case.widths), **{k: np.array(v) for k, v in out.items()}}


def _bayes_rows(res):
    """Variance rows at the largest width (allowance: the change from the previous width)
    and extrapolated over the two largest widths (:func:`pdlt.report.rows.width_extrapolation`);
    mean rows extrapolated only: at n = 16..32 the mean's measured d(n) still moves by more
    than ``|d(n/2) - d(n)|`` per halving (tanh, test 1: 0.34, 0.46 against 0.64), so the
    single-width allowance would understate its 1/n^2 term."""
    from .rows import make_row, width_extrapolation

    case = res["case"]
    n = int(res["widths"][-1])
    rows = []
    for what, th, d, se, key, single in (
            ("posterior variance n(v-v_inf)", res["var1"], res["dv"], res["dv_se"],
             "Bayes posterior variance (1/n)", True),
            ("posterior mean n(m-m_inf)", res["mean1"], res["dm"], res["dm_se"],
             "Bayes posterior mean (1/n)", False)):
        for b in np.flatnonzero(np.abs(th) >= 0.2 * np.abs(th).max()):
            where = f"{case.activation} L={case.depth}, noise {case.noise:g}, test {b}"
            if single:
                rows.append(make_row(f"{what}, {where}", case.activation, n, case.depth, th[b],
                                     d[-1, b], se[-1, b], abs(d[-1, b] - d[-2, b]), key=key))
            ext, sx, allow = width_extrapolation(d[-2, b], se[-2, b], d[-1, b], se[-1, b])
            rows.append(make_row(f"{what} (n/2,n extrap.), {where}", case.activation, n,
                                 case.depth, th[b], ext, sx, allow, key=key))
    return rows


def finite_bayes_study(cases=None, *, quick=False, full=False, log=None):
    """The O(1/n) Bayesian posterior against exact inference over real networks (a
    :class:`pdlt.report.rows.Study`).

    For each case, ``networks`` critical MLPs per width are drawn and the exact posterior
    of the ensemble is computed with the last layer integrated out
    (:func:`conditional_posterior`); ``d(n) = n (v - v_inf)`` is compared with the
    predicted 1/n coefficient of :func:`pdlt.learning.finite_bayes.finite_width_posterior`
    at the largest width (allowance ``|d(n/2) - d(n)|``, the measured 1/n^2 term) and
    extrapolated in 1/n over the two largest widths (allowance half that change); the
    posterior mean ``n (m - m_inf)`` extrapolated only.
    """
    from .figures import pyplot
    from .rows import Study

    cases_default = cases is None
    cases = default_bayes_cases(quick, full) if cases is None else list(cases)
    results = [run_bayes_case(c, log=log) for c in cases]
    rows = tuple(r for res in results for r in _bayes_rows(res))
    three_point = not quick and cases_default
    if three_point:         # residual output layers: the output three-point function
        for act in ("relu", "gelu"):
            if log:
                log(f"  Bayes residual kappa3 {act}: {RESIDUAL_BAYES_NETWORKS * (3 if full else 1)}"
                    " networks per width")
            rows += tuple(_residual_bayes_rows(residual_bayes_three_point(
                act, networks=RESIDUAL_BAYES_NETWORKS * (3 if full else 1), seed=5)))

    def figure():
        plt = pyplot()
        fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4),
                                 squeeze=False)
        for ax, res in zip(axes[0], results):
            x = 1.0 / res["widths"]
            for b in range(res["var1"].size):
                ax.errorbar(x, res["dv"][:, b], yerr=res["dv_se"][:, b], fmt="o", ms=3,
                            color=f"C{b}", capsize=2, label=f"test {b}")
                ax.plot([0], [res["var1"][b]], "*", color=f"C{b}", ms=10)
            ax.set(xlabel="1/n", ylabel="n (v - v_inf)", title=res["case"].activation)
            ax.axhline(0, color="0.8", lw=0.5)
            ax.legend(fontsize=7)
        fig.suptitle("posterior variance at finite width: exact ensemble posterior (dots) "
                     "against the predicted 1/n coefficient (stars)", fontsize=9)
        fig.tight_layout()
        return {"finite_bayes": fig}

    c0 = cases[0]
    return Study(
        "Bayesian inference at finite width: the O(1/n) posterior variance and mean",
        f"critical MLPs ({', '.join(c.activation for c in cases)}), depth {c0.depth}, one "
        f"output, 2 training and 2 test inputs, noise variance {c0.noise:g}; widths "
        + "; ".join(f"{c.activation} {'/'.join(map(str, c.widths))} ({c.networks} networks)"
                    for c in cases)
        + ". The referee is exact Bayesian inference over the ensemble: given its hidden "
        "layers a network's output is the Gaussian process N(0, Khat) of its own last-layer "
        "kernel, so each network's posterior and evidence are closed-form and the ensemble "
        "posterior is their evidence-weighted mixture (the last layer integrated out: "
        "unbiased up to O(1/M), effective sample size near M). "
        + ("Cases " + ", ".join(c.activation for c in cases if c.control_variate)
           + " subtract the exactly zero-mean control of the metric martingale (the "
           "layer-to-layer differences S_l - <sigma sigma>_{G_l} propagated to the last "
           "kernel), cross-fitted (report.learning.posterior_control_variate): 2.2-2.5x "
           "smaller stderr of the mean. " if any(c.control_variate for c in cases) else "")
        + "The measured n (v - v_inf) "
        "and n (m - m_inf) against the predicted 1/n coefficients (K, G1, V); allowance of "
        "the single-width rows (variance only): the change from the previous width; "
        "extrapolated rows: half of it. The mean has extrapolated rows only: at these widths "
        "its d(n) still moves by more than |d(n/2) - d(n)| per halving."
        + (" Residual output layers (relu, gelu; gamma 0.5, n_out = width 8/16, one output "
           "neuron observed): the output three-point function kappa3, isolated by its parity "
           "in the targets (the y-even posterior mean, extrapolated, and the y-odd variance; "
           "zero without kappa3) (report.learning.residual_bayes_three_point)."
           if three_point else ""), rows, figure)


#: networks per width of the residual kappa3 rows (x3 with --full): ~11 s per activation;
#: measured at 1 200 000 (docs/derivations/finite_bayes.rst) the rows resolve to 0.09-0.27.
RESIDUAL_BAYES_NETWORKS = 400000


def _residual_bayes_rows(res):
    """Rows of :func:`residual_bayes_three_point`: the y-even mean extrapolated over the
    two widths and the y-odd variance at the larger width, at the test inputs whose
    kappa3 term is >= 0.2 of the largest."""
    from .rows import make_row, width_extrapolation

    n = int(res["widths"][-1])
    rows = []
    for b in np.flatnonzero(np.abs(res["mean3"]) >= 0.2 * np.abs(res["mean3"]).max()):
        ext, sx, allow = width_extrapolation(res["dm"][0, b], res["dm_se"][0, b],
                                             res["dm"][1, b], res["dm_se"][1, b])
        rows.append(make_row(f"residual output kappa3: y-even posterior mean n(m(y)+m(-y))/2 "
                             f"(n/2,n extrap.), test {b}", res["activation"], n, 3,
                             res["mean3"][b], ext, sx, allow, key="Bayes kappa3 (1/n)"))
    for b in np.flatnonzero(np.abs(res["var3"]) >= 0.2 * np.abs(res["var3"]).max()):
        d, se = res["dv"][:, b], res["dv_se"][:, b]
        rows.append(make_row(f"residual output kappa3: y-odd posterior variance "
                             f"n(v(y)-v(-y))/2, test {b}", res["activation"], n, 3,
                             res["var3"][b], d[-1], se[-1], abs(d[-1] - d[-2]),
                             key="Bayes kappa3 (1/n)"))
    return rows


# ---------------------------------------------------------------------------
# the posterior with exactly zero-mean control variates (the metric martingale)
# ---------------------------------------------------------------------------

def _pair_rule(act):
    """``G (..., N, N) -> <sigma(z_a) sigma(z_b)>_G`` for every pair, exact to rounding: the
    closed form where the activation has one (ReLU's arc-cosine kernel, GELU, erf:
    ``pdlt.gaussian._closed``), else the trapezoid rule of
    :func:`pdlt.experiment.estimators.gaussian_pair_expectation` (smooth activations)."""
    from ..experiment.estimators import gaussian_pair_expectation
    from ..gaussian._closed import closed_family, closed_form_pair

    if closed_family(act) is not None:
        def g(G):
            G = np.asarray(G, float)
            dg = np.diagonal(G, axis1=-2, axis2=-1)
            return closed_form_pair(act, "sigma", "sigma", dg[..., :, None], G,
                                    dg[..., None, :])
        return g
    if act.is_smooth:
        return lambda G: gaussian_pair_expectation(act, G)
    raise ValueError(f"activation {act.name!r}: the control variate needs an exact pair rule "
                     "(a closed form such as relu, gelu, erf, or a smooth activation such as "
                     "tanh)")


def hidden_kernel_martingale(mlp, X, networks, seed=0, *, chunk=4000):
    """Every network's last-layer kernel ``Khat`` and its exactly zero-mean control ``Lambda``.

    The networks of :func:`hidden_kernels` (same ``seed``). ``Lambda`` (M, D, D)
    is :func:`pdlt.experiment.estimators.metric_martingale_multi`'s linear
    propagation of the layer-to-layer martingale differences ``d_l = S_l -
    <sigma sigma>_{G_l}`` into the last layer: a fixed linear combination of
    them, so ``E[Lambda] = 0`` exactly at every width, and ``Khat - K =
    Lambda + O(1/n)`` (it follows Khat's leading fluctuation). The pair averages
    are exact: closed forms (ReLU's arc-cosine kernel, GELU), else the trapezoid
    rule of :func:`pdlt.experiment.estimators.gaussian_pair_expectation`
    (<= 1e-10, smooth activations).

    Parameters
    ----------
    mlp : pdlt.MLP
        Plain MLP with at least one hidden layer.
    X : array_like (D, n0)
    networks, seed : int
    chunk : int, default 4000
        Networks per forward pass.

    Returns
    -------
    Khat, Lambda : ndarray (networks, D, D)
    d : ndarray (networks, (L - 1) D (D + 1) / 2)
        The martingale differences of the hidden layers (distinct entries), each of
        mean exactly zero.

    Raises
    ------
    ValueError
        If the activation is neither ReLU nor smooth (no exact pair rule here).
    """
    import torch

    from ..experiment import Ensemble
    from ..experiment.activations import torch_activation
    from ..experiment.estimators import kernel_map_jacobian, metric_martingale_multi
    from ..theory.statistics import statistics

    if mlp.depth < 2:
        raise ValueError(f"hidden_kernel_martingale needs an MLP with a hidden layer (depth "
                         f">= 2); got depth {mlp.depth}")
    act = mlp.activation
    g = _pair_rule(act)
    X = np.asarray(X, float)
    D, L = len(X), mlp.depth
    ens = Ensemble(mlp, networks=networks, seed=seed, dtype=torch.float64)
    sigma = torch_activation(act).sigma
    S = np.zeros((networks, L, D, D))
    for s in range(0, networks, chunk):
        zs = ens.preactivations(X, s, min(networks, s + chunk))
        for l, z in enumerate(zs[:-1]):
            h = sigma(z)
            S[s:s + h.shape[0], l] = (torch.einsum("mja,mjb->mab", h, h) / h.shape[1]).numpy()
    K = np.asarray(statistics(mlp, X).K, float)
    chi = kernel_map_jacobian(g, K, mlp.C_W)
    S[:, -1] = S[:, -2]   # unused (no layer above L)
    parts = metric_martingale_multi(S, K[0], mlp.C_b, mlp.C_W, g, chi)
    iu = np.triu_indices(D)
    d = parts["d"][:, :-1][:, :, iu[0], iu[1]].reshape(networks, -1)
    return parts["G"][:, -1], parts["Lambda"][:, -1], d


def posterior_control_variate(Khat, Lam, y_train, noise, *, folds=2, features=None):
    """:func:`conditional_posterior` with the zero-mean control ``Lambda``, cross-fitted.

    The mixture mean and variance are smooth functions of weighted network
    averages; their per-network influence values ``psi_m`` (delta method) are
    regressed on the 10 (for D = 4 inputs) distinct entries of ``Lambda_m``
    (:func:`hidden_kernel_martingale`, ``E[Lambda] = 0`` exactly), each block of
    ``folds`` with the coefficients fitted on the other blocks, and
    ``beta . mean(Lambda)`` of each block is subtracted: the estimate keeps the
    mean of :func:`conditional_posterior`'s (a fixed coefficient times a mean-zero
    average), while the leading O(1/sqrt(n)) part of the scatter, which follows
    ``Khat``'s linear fluctuation, is removed. Standard errors from the
    adjusted influence values (i.i.d. networks).

    Parameters
    ----------
    Khat, Lam : array_like (M, D, D)
        :func:`hidden_kernel_martingale` (training inputs first, then the test ones).
    y_train : array_like (N,)
    noise : float
        Observation-noise variance (>= 0).
    folds : int, default 2
        Cross-fitting blocks (>= 2, with >= 20 networks each).
    features : array_like (M, P), optional
        Other exactly zero-mean per-network controls instead of ``Lambda``'s
        entries (e.g. the per-layer differences ``d`` of
        :func:`hidden_kernel_martingale`; measured: no gain over ``Lambda``).

    Returns
    -------
    dict
        ``mean``, ``mean_stderr``, ``var``, ``var_stderr`` (D - N,),
        ``plain_mean_stderr``, ``plain_var_stderr`` (the same without the
        control, same delta method) for the gain, and ``ess``.
    """
    Kh = np.asarray(Khat, float)
    Lam = np.asarray(Lam, float)
    y = np.asarray(y_train, float)
    M, D = Kh.shape[:2]
    N = y.size
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite variance >= 0; got {noise!r}")
    if Lam.shape != Kh.shape:
        raise ValueError(f"Lambda must have Khat's shape {Kh.shape}; got {Lam.shape}")
    if int(folds) < 2 or M < 20 * int(folds):
        raise ValueError(f"folds must be >= 2 with >= 20 networks per fold; got folds={folds}, "
                         f"M={M}")
    A = Kh[:, :N, :N] + noise * np.eye(N)
    Lc = np.linalg.cholesky(A)
    rhs = np.concatenate([np.broadcast_to(y[None, :, None], (M, N, 1)), Kh[:, :N, N:]], axis=2)
    sol = np.linalg.solve(A, rhs)
    alpha, R = sol[:, :, 0], sol[:, :, 1:]
    mu = np.einsum("mab,ma->mb", Kh[:, :N, N:], alpha)
    Sv = np.diagonal(Kh[:, N:, N:], axis1=1, axis2=2) - np.einsum("mab,mab->mb", Kh[:, :N, N:], R)
    logw = -0.5 * np.einsum("a,ma->m", y, alpha) - np.log(np.diagonal(Lc, axis1=1, axis2=2)).sum(1)
    w = np.exp(logw - logw.max())
    w = w / w.mean()
    mean = (w[:, None] * mu).mean(0)
    second = (w[:, None] * (Sv + mu * mu)).mean(0)
    var = second - mean ** 2
    # influence values (delta method of ratios): mean = E[w mu]/E[w], var = E[w t]/E[w] - mean^2
    psi_m = w[:, None] * (mu - mean)
    psi_v = w[:, None] * (Sv + mu * mu - second) - 2 * mean * psi_m
    iu = np.triu_indices(D)
    F = Lam[:, iu[0], iu[1]] if features is None else np.asarray(features, float)  # (M, P)
    edges = np.linspace(0, M, int(folds) + 1).astype(int)
    out = {"ess": float(w.sum() ** 2 / np.sum(w * w))}
    for name, est, psi in (("mean", mean, psi_m), ("var", var, psi_v)):
        adj = psi.copy()
        shift = np.zeros(D - N)
        for f in range(int(folds)):
            inside = np.zeros(M, bool)
            inside[edges[f]:edges[f + 1]] = True
            Fo = np.c_[np.ones((~inside).sum()), F[~inside]]
            beta = np.linalg.lstsq(Fo, psi[~inside], rcond=None)[0][1:]   # (P, D - N)
            adj[inside] -= F[inside] @ beta
            shift += (F[inside] @ beta).sum(0) / M
        out[name] = est - shift
        out[f"{name}_stderr"] = adj.std(0, ddof=1) / np.sqrt(M)
        out[f"plain_{name}_stderr"] = psi.std(0, ddof=1) / np.sqrt(M)
    return out

