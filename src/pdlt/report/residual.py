"""Report figures for residual MLPs and the optimal aspect ratio (matplotlib, Agg).

Each function returns ``(fig, data)``: the matplotlib figure and the numbers
it draws (JSON-ready), so the report can both embed and tabulate them.
``residual_depth_figure`` runs an ensemble (needs torch); the others are
theory only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .figures import pyplot
from .rows import compare, width_extrapolation

__all__ = ["optimal_aspect_ratio_figure", "residual_depth_figure", "information_figure",
           "residual_ntk_rows", "residual_aspect_ratio_figure", "residual_ntk_mean_measure",
           "residual_dntk_p_measure", "residual_dntk_q_measure"]


def optimal_aspect_ratio_figure(activations=("relu", "gelu", "tanh", "linear"), gammas=None,
                                n_out=1):
    """r* = 4/((20 + 3 n_L) nu(gamma)) against the residual strength gamma (xi = 1).

    Parameters
    ----------
    activations : sequence of str
    gammas : array_like, optional
        Residual strengths in [0, 1); default 60 points on [0, 0.98].
    n_out : int
        Output width n_L.

    Returns
    -------
    fig, data
        ``data[act] = {"gamma": [...], "r_star": [...], "vertex_slope": [...]}``.
    """
    from ..theory.information import optimal_aspect_ratio_from_slope
    from ..theory.residual import residual_vertex_slope

    plt = pyplot()
    g = np.linspace(0.0, 0.98, 60) if gammas is None else np.asarray(gammas, float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    data = {}
    for act in activations:
        nu = np.array([residual_vertex_slope(act, float(x)) for x in g])
        r = np.array([optimal_aspect_ratio_from_slope(v, n_out) for v in nu])
        data[act] = dict(gamma=g.tolist(), vertex_slope=nu.tolist(), r_star=r.tolist())
        ax1.plot(g, nu, label=act)
        ax2.semilogy(g, r, label=act)
    ax1.set_xlabel("residual strength gamma (xi = 1, critical C_W)")
    ax1.set_ylabel("vertex slope nu(gamma)")
    ax1.set_title("V/(n K^2) ~ nu L/n")
    ax2.set_xlabel("residual strength gamma")
    ax2.set_ylabel(f"optimal L/n, n_L = {n_out}")
    ax2.set_title("r* = 4 / ((20 + 3 n_L) nu)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig, data


def residual_metric_measure(mlp, networks, seed=0, K1=1.0, chunk=1000):
    """K (= E[z z]), G1 and V per layer of a residual MLP, with exactly zero-mean controls.

    Draws the networks of ``Ensemble(mlp, networks, seed)``, keeps their
    single-input preactivations and applies
    :func:`pdlt.experiment.estimators.residual_metric_martingale` (the
    derivation) with coefficients cross-fitted over two halves
    (:func:`~pdlt.experiment.estimators.residual_crossfit`). Needs torch.

    Returns
    -------
    dict
        ``"K"``, ``"G1"``, ``"V"``: :class:`pdlt.experiment.Estimate` with (L,) mean and
        stderr (i.i.d. networks); G1 against the infinite-width kernel.
    """
    from ..experiment import Ensemble, Estimate
    from ..experiment.estimators import (residual_crossfit, residual_metric_martingale,
                                         vertex_from_martingale)
    from ..theory.statistics import flow

    ens = Ensemble(mlp, networks=networks, seed=seed)
    x = ens.single_input(K1)
    cols = [[] for _ in range(mlp.depth)]
    for start in range(0, networks, chunk):
        for l, z in enumerate(ens.preactivations(x, start, min(networks, start + chunk))):
            cols[l].append(z[..., 0].double().cpu().numpy())
    z = [np.concatenate(c) for c in cols]
    K = np.asarray(flow(mlp, K1=K1).K, float)
    parts = residual_crossfit(residual_metric_martingale(
        z, K1, mlp.C_b, mlp.C_W, mlp.gamma, mlp.xi, mlp.activation, K))
    n = np.array([mlp.fan_in(l) for l in range(1, mlp.depth + 1)], float)
    Y = parts["Y"]
    mY, sY = Y.mean(0), Y.std(0, ddof=1) / np.sqrt(networks)
    V, sV = vertex_from_martingale(parts, K, n)
    return {"K": Estimate(mY, sY, networks), "G1": Estimate(n * (mY - K), n * sY, networks),
            "V": Estimate(V, sV, networks)}


def residual_depth_figure(activation="relu", gamma=0.5, *, width=64, depth=8, networks=2000,
                          seed=0, K1=1.0):
    """K, V/(n K^2) and G1/(n K) against depth: theory vs an ensemble of residual networks.

    The network is at residual criticality (:func:`pdlt.theory.residual.residual_mlp`),
    with ``n_out = width`` so every layer l >= 2 is residual. Measured with
    zero-mean control variates (:func:`residual_metric_measure`). Needs torch.

    Returns
    -------
    fig, data
        ``data`` holds per-layer theory, ensemble mean and stderr for K, V, G1.
    """
    from ..theory.residual import residual_mlp
    from ..theory.statistics import statistics

    mlp = residual_mlp(activation, gamma, width=width, depth=depth, n_out=width)
    fl = statistics(mlp, K1=K1, get=("V", "G1"))
    meas = residual_metric_measure(mlp, networks, seed=seed, K1=K1)
    layers = np.arange(1, depth + 1)
    n = np.array([mlp.fan_in(l) for l in layers], float)
    K = fl.K
    rows = {
        "K (incl. G1/n)": (K + fl["G1"] / n, meas["K"].mean, meas["K"].stderr),
        "V / (n K^2)": (fl["V"] / (n * K ** 2), meas["V"].mean / (n * K ** 2),
                        meas["V"].stderr / (n * K ** 2)),
        "G1 / (n K)": (fl["G1"] / (n * K), meas["G1"].mean / (n * K),
                       meas["G1"].stderr / (n * K)),
    }
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    data = dict(activation=activation, gamma=gamma, width=width, depth=depth,
                networks=networks, seed=seed)
    for ax, (name, (th, mean, err)) in zip(axes, rows.items()):
        ax.plot(layers, th, "-", lw=1.4, label="theory")
        ax.errorbar(layers, mean, yerr=err, fmt="o", ms=4, capsize=2,
                    label=f"ensemble (M={networks})")
        ax.set_xlabel("layer l")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        data[name] = dict(theory=np.asarray(th).tolist(), mean=np.asarray(mean).tolist(),
                          stderr=np.asarray(err).tolist())
    for s, th in (("K", K), ("V", fl["V"]), ("G1", fl["G1"])):
        data[s] = dict(theory=np.asarray(th).tolist(), mean=np.asarray(meas[s].mean).tolist(),
                       stderr=np.asarray(meas[s].stderr).tolist())
    fig.suptitle(f"residual {activation}, gamma = {gamma:g}, n = {width} (residual criticality)",
                 fontsize=9)
    return fig, data


def information_figure(n_out=1, *, k2_max=0.4, points=40):
    """Mutual information between output groups vs the output non-Gaussianity k2 = V/(n K^2).

    The truncated series ``m_A m_B [k2^2/8 - (3 n_L + 20) k2^3/48]`` (whose
    maximum sets r*) against the exact mutual information of a lognormal
    scale mixture with the same k2 (the scale-invariant class's law), for
    ``m_A = 1, m_B = max(n_L - 1, 1)``.

    Returns
    -------
    fig, data
    """
    from ..theory.information import (optimal_vertex, scale_mixture_mi_series,
                                      scale_mixture_mutual_information)

    mA, mB = 1, max(n_out - 1, 1)
    k2 = np.linspace(k2_max / points, k2_max, points)
    y, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    exact = []
    for k in k2:
        s = math.log1p(k)                       # lognormal with Var(eps) = k
        exact.append(scale_mixture_mutual_information(np.exp(-s / 2 + math.sqrt(s) * y), w,
                                                      mA, mB))
    series = scale_mixture_mi_series(k2, mA, mB)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.plot(k2, series, "-", label="series to k2^3 (the r* argument)")
    ax.plot(k2, exact, "--", label="exact, lognormal mixing")
    ks = optimal_vertex(mA + mB)
    ax.axvline(ks, color="k", lw=0.8, ls=":", label=f"k2* = 4/(20 + 3 n_L) = {ks:.3g}")
    ax.set_xlabel("k2 = V/(n K^2) at the output  (~ nu L/n)")
    ax.set_ylabel("I(A; B) [nats]")
    ax.set_title(f"output neurons' mutual information, n_L = {mA + mB}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig, dict(k2=k2.tolist(), series=np.asarray(series).tolist(), exact=exact,
                     k2_star=ks, m_A=mA, m_B=mB)


def residual_ntk_rows(activations=("relu", "tanh", "gelu"), gammas=(0.3, 0.7), *, depth=5,
                      widths=(16, 32), networks=10000, seed=17, stats=("B", "F"),
                      remainder=0.25, K1=None):
    """Residual NTK statistics against ensembles of real residual networks, with power.

    For each activation and residual strength: a residual MLP at residual
    criticality (:func:`pdlt.theory.residual.residual_mlp`, ``n_out = width``
    so every layer l >= 2 is residual, ``lambda_b = 0.5``, ``lambda_W = 1``,
    one input at ``K1`` (default ``K*``, or 1 where ``K* = 0``), measured at two
    widths ``n, 2n`` (independent seeds) and extrapolated, ``m = 2 m(2n) - m(n)`` (removes the
    1/n term; ``se = sqrt(4 se(2n)^2 + se(n)^2)``). The allowance for the
    O(1/n^2) remainder is ``remainder * |m(n) - m(2n)|`` (a quarter of the
    observed 1/n shift between the widths: data-based, it does not grow with
    the theory value). Layer 2 is exact at any width (layer 1 is Gaussian, its
    NTK deterministic), so there the widest ensemble is used alone, with no
    allowance.

    Each row: ``theory``, ``measured``, ``se``, ``allowance``,
    ``resolution = (4 se + allowance)/|theory|``, ``z = |measured - theory|/se``,
    ``passed = |measured - theory| <= 4 se + allowance`` and the same test for
    the theory x0.5 and x2 (``z_half``, ``z_double``, ``rejects_half``,
    ``rejects_double``, and ``rejects_zero`` for x0), plus the closure value of B
    (two-depth averages replaced by products, :mod:`pdlt.theory.residual_ntk`) and
    its verdict.

    ``"H1"`` in ``stats`` (the NTK mean, :func:`pdlt.theory.residual_ntk.residual_ntk_mean`)
    is measured as ``n (E[H] - Theta)`` by :func:`residual_ntk_mean_measure` (real
    networks, the last two steps integrated exactly; numpy, no torch) on ``networks``
    networks per width, layers 3..depth (layers 1, 2 vanish exactly), extrapolated
    and allowed for like the others.

    ``"P"`` (the dNTK-preactivation correlation,
    :func:`pdlt.theory.residual_ntk.residual_dntk_p`) is measured by
    :func:`residual_dntk_p_measure` (real networks, the last layer integrated exactly;
    numpy) on ``networks`` networks per width, layers 2..depth (layer 2 exact at any
    width); ``"Q"`` likewise by :func:`residual_dntk_q_measure`
    (:func:`pdlt.theory.residual_ntk.residual_dntk_q`).

    ``"R"``, ``"S"``, ``"T"``, ``"U"`` (the ddNTK statistics,
    :func:`pdlt.theory.residual_ntk.residual_ddntk_r` ..
    :func:`pdlt.theory.residual_ntk.residual_ddntk_u`) are measured like A, B, D, F by
    :class:`pdlt.experiment.Ensemble` (autodiff on real networks), layers 2..depth.

    Needs torch for A, B, D, F, R, S, T, U. Cost ~2.5 ms per network and width at depth 5
    (two CPU cores); H1 ~0.2-1 ms per network and width at widths 16-32; R (third-order
    jets) ~10 ms, S, T, U ~1.5-3 ms per network and width at depth 3-4, widths 16-32.
    """
    import pdlt

    from ..theory.residual import residual_mlp
    from ..theory.residual_ntk import residual_b_closure, residual_statistics

    n1, n2 = widths
    own = {"H1": residual_ntk_mean_measure, "P": residual_dntk_p_measure,   # numpy estimators
           "Q": residual_dntk_q_measure}
    ens_stats = [s for s in stats if s not in own]
    rows = []
    for act in activations:
        crit = pdlt.criticality(act)
        k1 = (crit.K_star if crit.K_star else 1.0) if K1 is None else float(K1)
        for gamma in gammas:
            meas, meas_own = {}, {}
            for i, n in enumerate(widths):
                m = residual_mlp(act, gamma, width=n, depth=depth, n_out=n, lambda_b=0.5)
                if ens_stats:
                    from ..experiment import Ensemble
                    meas[n] = Ensemble(m, networks=networks, seed=seed + 1000 * i).measure(
                        K1=k1, stats=ens_stats, progress=False)
                meas_own[n] = {k: _Measured(*f(m, k1, networks, seed + 1000 * i + 1 + j))
                               for j, (k, f) in enumerate(own.items()) if k in stats}
            th = residual_statistics(m, k1, stats)
            clos = residual_b_closure(m, k1) if "B" in stats else None
            for name in stats:
                src = meas_own if name in own else meas
                for l in range(3 if name == "H1" else 2, depth + 1):
                    a1, s1 = float(src[n1][name].mean[l - 1]), float(src[n1][name].stderr[l - 1])
                    a2, s2 = float(src[n2][name].mean[l - 1]), float(src[n2][name].stderr[l - 1])
                    if l == 2:
                        mean, se, allow = a2, s2, 0.0
                    else:
                        mean, se, _ = width_extrapolation(a1, s1, a2, s2)
                        mean, se = float(mean), float(se)
                        allow = remainder * abs(a1 - a2)
                    t = float(th[name][l - 1])
                    c = compare(t, mean, se, allow)
                    row = dict(statistic=name, activation=act, gamma=gamma, layer=l,
                               widths=list(widths), networks=networks, K1=k1, theory=t,
                               measured=mean, se=se, allowance=allow,
                               resolution=float(c.tolerance) / abs(t), z=float(c.z),
                               passed=c.passed,
                               z_half=abs(mean - 0.5 * t) / se,
                               z_double=abs(mean - 2 * t) / se,
                               rejects_half=c.rejects(0.5), rejects_double=c.rejects(2.0),
                               rejects_zero=c.rejects(0.0))
                    if name == "B":
                        closure = float(clos[l - 1])
                        row.update(closure=closure, closure_z=abs(mean - closure) / se,
                                   closure_rejected=not compare(closure, mean, se, allow).passed)
                    rows.append(row)
    return rows


def _last_step_integrals(act, m, t, xi, nodes=64):
    """One-variable averages over ``y ~ N(m, t)`` (``y = xi u + m``, ``u ~ N(0, t / xi^2)``).

    Returns ``A0 = E[sigma^2(y)]``, ``F0 = E[sigma'^2(y)]``, ``F1 = E[sigma'^2(y) u]``,
    ``F2 = E[sigma'^2(y) (u^2 - t / xi^2)]``, shaped like ``m``. ReLU in closed form
    (its ``sigma'^2`` jumps); smooth activations by Gauss-Hermite (``nodes`` points).
    """
    from scipy.special import ndtr
    st = np.sqrt(t)
    if act.name == "relu":
        with np.errstate(divide="ignore"):
            a = m / st
        phi = np.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
        Phi = ndtr(a)
        A0 = (m * m + t) * Phi + m * st * phi
        return A0, Phi, st * phi / xi, -m * st * phi / xi ** 2
    if act.kinks:
        raise NotImplementedError(f"the residual NTK-mean estimator integrates {act.name!r} "
                                  "by Gauss-Hermite, which a kink spoils; use relu, tanh, gelu")
    e, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    y = m[..., None] + st[..., None] * e
    s2, p2 = act.sigma(y) ** 2, act.d1(y) ** 2
    A0 = s2 @ w
    F0 = p2 @ w
    F1 = (p2 * e) @ w * st / xi
    F2 = (p2 * (e * e - 1.0)) @ w * t / xi ** 2
    return A0, F0, F1, F2


def residual_ntk_mean_measure(mlp, K1, networks, seed, *, chunk=2000):
    r"""``n (E[H_ii^(l)] - Theta^(l))`` of real residual networks, layers 3..L (one input).

    Rao-Blackwellized: layers ``1..l-2`` of each network are sampled (the
    preactivations and the full NTK matrix by the forward equation
    ``H' = xi^2 (lambda_b + lambda_W S) 1 + Y H Y^T``, ``Y = xi W diag(sigma') + gamma 1``),
    and the last two steps are integrated exactly. Given layer k,
    ``E[H^(k+2)] = xi^2 [lambda_b + lambda_W E S_{k+1} + C_W E P_{k+1}] + gamma^2 E H^(k+1)``
    with, per neuron j of layer k+1 (``y = xi u + gamma z_j``, ``u ~ N(0, G)``,
    ``G = C_b + C_W S_k``, ``c = C_W / n``; Gaussian conditioning of the row ``W_j``
    on ``u``: ``E[W_ja W_jb | u] = c d_ab + c^2 s_a s_b (u^2 - G) / G^2``,
    ``E[W_ja | u] = c s_a u / G``):

    .. math::
        E[\sigma'^2(y) H'_{jj}] = \xi^2[(\lambda_b + \lambda_W S + C_W P) F_0
            + c^2 F_2\, q / G^2] + 2\xi\gamma (c / G) F_1 r_j + \gamma^2 H_{jj} F_0,

    ``P = mean_a sigma'^2_a H_aa``, ``q = (s p)^T H (s p)``, ``r = H (s p)``
    (``s = sigma, p = sigma'`` of layer k), ``F_0, F_1, F_2`` of
    :func:`_last_step_integrals` (the residual form of
    :func:`pdlt.experiment.estimators.ntk_martingale`'s conditional mean, with the
    half-skip term and the neuron's own past ``gamma z_j``). The estimator is unbiased
    at any width; control variates with exactly zero mean (Hermite means of the
    standardized layer-1 preactivations and of every sampled increment ``u / sqrt(G)``,
    of the standardized weights, the layer-1 means of ``sigma^2, sigma'^2`` and, for
    every sampled layer, the martingale differences of ``S``, ``P`` and the NTK
    diagonal against their exact conditional means) are regressed out. Numpy only (float64).

    Parameters
    ----------
    mlp : MLP
        Residual MLP with equal hidden widths.
    K1 : float > 0
    networks : int
    seed : int

    Returns
    -------
    mean, se : ndarray (L,)
        ``n (m - Theta)`` and its standard error; entries for layers 1, 2 are 0 (exact).
    """
    from .. import gaussian
    from ..theory.residual_ntk import one_input_kernel
    act = mlp.activation
    L = mlp.depth
    n = int(mlp.widths[1])
    if any(int(w) != n for w in mlp.widths[1:L]):
        raise ValueError(f"residual_ntk_mean_measure needs equal hidden widths; got {mlp.widths}")
    if L < 3:
        raise ValueError(f"H1 vanishes at layers 1 and 2; need depth >= 3, got {L}")
    K, Th = one_input_kernel(mlp, K1)
    Cb, CW, lb, lW, xi, ga = (np.asarray(v, float) for v in
                              (mlp.C_b, mlp.C_W, mlp.lambda_b, mlp.lambda_W, mlp.xi, mlp.gamma))
    kw = dict(kinks=act.kinks, period=act.period)
    ss1 = float(gaussian.expect(lambda v: act.sigma(v) ** 2, float(K1), **kw))
    pp1 = float(gaussian.expect(lambda v: act.d1(v) ** 2, float(K1), **kw))
    rng = np.random.default_rng(seed)
    He = [lambda x: x, lambda x: x * x - 1, lambda x: x ** 3 - 3 * x,
          lambda x: x ** 4 - 6 * x * x + 3]
    Y, CV = [], []
    done = 0
    eye = np.eye(n)
    while done < networks:
        b = min(chunk, networks - done)
        done += b
        x1 = rng.standard_normal((b, n))
        z = math.sqrt(K1) * x1
        H = np.broadcast_to(Th[0] * eye, (b, n, n)).copy()
        est = np.zeros((b, L))
        cv = [n * f(x1).mean(1) for f in He] + [n * (x1 ** 5 - 10 * x1 ** 3 + 15 * x1).mean(1)]
        s1, p1 = act.sigma(z), act.d1(z)
        cv += [n * ((s1 * s1).mean(1) - ss1), n * ((p1 * p1).mean(1) - pp1)]
        for k in range(L - 2):                 # state: 0-based layer k; targets layer k+2
            s, p = act.sigma(z), act.d1(z)
            S = (s * s).mean(1)
            Hd = np.einsum("bii->bi", H)
            P = (p * p * Hd).mean(1)
            sp = s * p
            r = np.einsum("bij,bj->bi", H, sp)
            q = np.einsum("bi,bi->b", sp, r)
            l1 = k + 1
            G = Cb[l1] + CW[l1] * S
            c = CW[l1] / n
            # G = 0 (ReLU, C_b = 0, every neuron off): the increment vanishes and so do
            # s p, q and r; the conditional terms are then 0 (a guard, not an approximation)
            live = G > 0
            G = np.where(live, G, 1.0)
            t = np.where(live, xi[l1] ** 2 * G, 1e-300)
            A0, F0, F1, F2 = _last_step_integrals(act, ga[l1] * z, np.broadcast_to(
                t[:, None], z.shape), xi[l1])
            base = lb[l1] + lW[l1] * S + CW[l1] * P
            EspH = (xi[l1] ** 2 * (base[:, None] * F0 + c * c * F2 * (live * q / G ** 2)[:, None])
                    + 2 * xi[l1] * ga[l1] * (live * c / G)[:, None] * F1 * r
                    + ga[l1] ** 2 * Hd * F0)
            EH = xi[l1] ** 2 * base[:, None] + ga[l1] ** 2 * Hd
            l2 = k + 2
            est[:, l2] = n * (xi[l2] ** 2 * (lb[l2] + lW[l2] * A0.mean(1) + CW[l2] * EspH.mean(1))
                              + ga[l2] ** 2 * EH.mean(1) - Th[l2])
            if k + 1 >= L - 2:
                break
            # sample layer k+1 of the real network
            W = rng.standard_normal((b, n, n)) * math.sqrt(CW[l1] / n)
            u = math.sqrt(Cb[l1]) * rng.standard_normal((b, n)) + np.einsum("bij,bj->bi", W, s)
            e = np.where(live[:, None], u / np.sqrt(G)[:, None],      # N(0, 1) given the past
                         rng.standard_normal((b, n)))
            wn = W * math.sqrt(n / CW[l1])
            cv += [n * f(e).mean(1) for f in He]
            cv += [n * (wn * wn - 1).mean((1, 2)),
                   n * np.einsum("bii->bi", wn).mean(1) / math.sqrt(n), n * (e * x1).mean(1)]
            Yk = xi[l1] * W * p[:, None, :] + ga[l1] * eye
            H = (xi[l1] ** 2 * (lb[l1] + lW[l1] * S))[:, None, None] * eye + Yk @ H @ \
                np.swapaxes(Yk, 1, 2)
            z = xi[l1] * u + ga[l1] * z
            # martingale differences (exactly zero mean): what layer k+1 adds to S, P and
            # the NTK diagonal beyond their conditional means given layer k
            s1, p1 = act.sigma(z), act.d1(z)
            Hd1 = np.einsum("bii->bi", H)
            cv += [n * ((s1 * s1).mean(1) - A0.mean(1)),
                   n * ((p1 * p1 * Hd1).mean(1) - EspH.mean(1)),
                   n * (Hd1.mean(1) - EH.mean(1))]
        Y.append(est)
        CV.append(np.stack(cv, 1))
    Y, C = np.concatenate(Y), np.concatenate(CV)
    mean, se = np.zeros(L), np.zeros(L)
    for l in range(2, L):
        A = np.column_stack([np.ones(len(Y)), C])
        coef, *_ = np.linalg.lstsq(A, Y[:, l], rcond=None)
        res = Y[:, l] - C @ coef[1:]
        mean[l] = res.mean()
        se[l] = res.std(ddof=A.shape[1]) / math.sqrt(len(res))
    return mean, se


def _dntk_step(act, z, H, dH, W, bias, hp, n, diag_only):
    """One residual layer of a real network: ``z, H`` and the dNTK (or its ``[i0, k, k]`` part).

    ``hp = (xi, gamma, lambda_b, lambda_W)`` of the new layer; ``dH`` (B, n, n, n) or None
    (layer 1: zero). Returns ``z', H'`` and ``dH'`` (B, n, n, n), or ``dH'_{i0 k k}``
    (B, n, n) when ``diag_only`` (all the estimator needs at the last sampled layer).
    """
    xi, ga, lb, lW = hp
    s, p, q = act.sigma(z), act.d1(z), act.d2(z)
    B = z.shape[0]
    eye = np.eye(n)
    Y = xi * W * p[:, None, :] + ga * eye                  # Y_ia = xi W_ia p_a + gamma d_ia
    YT = np.swapaxes(Y, 1, 2)
    Hhat = H @ YT                                          # Hhat[a, i] = sum_b H_ab Y_ib
    v = np.einsum("bk,bki->bi", s * p, Hhat)               # sum_b s_b p_b Hhat_{b,i}
    f = lW * xi * xi / n
    Wq = W * q[:, None, :]
    if diag_only:
        T = xi * (Wq @ (Hhat * Hhat))
        if dH is not None:                                 # sum_abc Y_ia Y_kb Y_kc dH_abc
            X = (dH.reshape(B, n * n, n) @ YT).reshape(B, n, n, n)      # [a, b, k]
            T = T + Y @ np.einsum("bkx,baxk->bak", Y, X)
        T = T + 2.0 * f * eye * v[:, None, :]
    else:
        HH = Hhat[:, :, :, None] * Hhat[:, :, None, :]
        T = xi * (Wq @ HH.reshape(B, n, n * n)).reshape(B, n, n, n)
        if dH is not None:                                 # Y (x) Y (x) Y on the three slots
            X = (Y @ dH.reshape(B, n, n * n)).reshape(B, n, n, n)       # [i0, b, c]
            X = np.ascontiguousarray(X.transpose(0, 2, 1, 3)).reshape(B, n, n * n)
            X = ((Y @ X).reshape(B, n * n, n) @ YT).reshape(B, n, n, n)  # [i1, i0, i2]
            T = T + X.transpose(0, 2, 1, 3)
        T += f * (eye[None, :, :, None] * v[:, None, None, :]
                  + eye[None, :, None, :] * v[:, None, :, None])
    S = (s * s).mean(1)
    Hn = (xi * xi * (lb + lW * S))[:, None, None] * eye + Y @ H @ YT
    zn = xi * (bias + np.einsum("bij,bj->bi", W, s)) + ga * z
    return zn, Hn, T


def _dntk_p_conditional(act, z, H, Dm, xi, ga, CW, n):
    """``n E[dH'_{jkk} z'_j | layer]``, averaged over the ordered pairs j != k (per network).

    ``Dm[a, k] = dH_{akk}`` of the given layer (None: zero). The next layer's row
    ``W_j`` enters ``z'_j`` and the first slot, the row ``W_k`` the other two;
    ``E[W_ja z'_j] = xi c s_a``, ``E[Y_ja z'_j] = xi^2 c p_a s_a + gamma^2 d_ja z_j``,
    ``E[Y_kb Y_kc] = xi^2 c p_b^2 d_bc + gamma^2 d_kb d_kc`` (``c = C_W / n``).
    """
    s, p, q = act.sigma(z), act.d1(z), act.d2(z)
    c = CW / n
    sq, sp, p2 = s * q, s * p, p * p
    sqH2 = np.einsum("ba,bak->bk", sq, H * H)
    out = (xi ** 4 * c * c * np.einsum("bk,bk->b", sqH2, p2)
           + xi ** 2 * ga ** 2 * c * sqH2.mean(1))
    if Dm is not None:
        Dp = np.einsum("bak,bk->ba", Dm, p2)
        pair = (np.einsum("bj,bjk->b", z, Dm)
                - np.einsum("bj,bj->b", z, np.einsum("bjj->bj", Dm))) / (n * (n - 1))
        out = (out + xi ** 4 * c * c * np.einsum("ba,ba->b", sp, Dp)
               + xi ** 2 * ga ** 2 * c * np.einsum("ba,bak->bk", sp, Dm).mean(1)
               + ga ** 2 * xi ** 2 * c * (z * Dp).mean(1) + ga ** 4 * pair)
    return n * out


def _dntk_q_conditional(act, z, H, dH, xi, ga, CW, lW, n):
    """``n E[dH'_{jjk} z'_k | layer]``, averaged over the ordered pairs j != k (per network).

    ``dH`` (B, n, n, n) of the given layer (None: zero). With ``E[W_ja Hhat_aj] = xi c p_a
    H_aa``, ``E[Hhat_ak z'_k] = xi^2 c (H s p)_a + gamma^2 H_ak z_k``, ``E[Y_ja Y_jb] =
    xi^2 c p_a^2 d_ab + gamma^2 d_ja d_jb``, ``E[Y_kc z'_k] = xi^2 c s_c p_c + gamma^2 d_kc z_k``
    and ``E[v_k z'_k] = xi^2 c (sp)^T H (sp) + gamma^2 z_k (H sp)_k`` (the lambda_W term).
    """
    s, p, q = act.sigma(z), act.d1(z), act.d2(z)
    c = CW / n
    qp, sp, p2 = q * p, s * p, p * p
    Hd = np.einsum("bii->bi", H)
    Hsp = np.einsum("bac,bc->ba", H, sp)
    w = np.einsum("ba,bak->bk", qp * Hd, H)
    out = (xi ** 4 * c * c * np.einsum("ba,ba->b", qp * Hd, Hsp)
           + xi ** 2 * ga ** 2 * c * (w * z).mean(1)
           + lW * xi ** 2 / n * (xi ** 2 * c * np.einsum("ba,ba->b", sp, Hsp)
                                 + ga ** 2 * (z * Hsp).mean(1)))
    if dH is not None:
        idx = np.arange(n)
        Dq = dH[:, idx, idx, :]                                 # [a, c] = dH_aac
        p2D = np.einsum("ba,bac->bc", p2, Dq)
        pair = (np.einsum("bjk,bk->b", Dq, z)
                - np.einsum("bj,bj->b", z, np.einsum("bjj->bj", Dq))) / (n * (n - 1))
        out = (out + xi ** 4 * c * c * np.einsum("bc,bc->b", p2D, sp)
               + xi ** 2 * ga ** 2 * c * (z * p2D).mean(1)
               + ga ** 2 * xi ** 2 * c * np.einsum("bjc,bc->bj", Dq, sp).mean(1)
               + ga ** 4 * pair)
    return n * out


def residual_dntk_p_measure(mlp, K1, networks, seed, *, chunk=None):
    r"""``P = n E[dH_{jkk}^(l) z_j^(l)]`` (j != k) of real residual networks, layers 2..L.

    Rao-Blackwellized, one input: layers ``1..l-1`` of each network are sampled
    with the full NTK matrix and dNTK tensor by the forward equations
    (``docs/derivations/residual_ntk.md``, section 9; ``Y = xi W diag(sigma') + gamma 1``,
    ``Hhat = H Y^T``)

    .. math::
        dH'_{i_0i_1i_2} = \xi\sum_a W_{i_0a}\sigma''_a\hat H_{a,i_1}\hat H_{a,i_2}
          + \sum_{abc}Y_{i_0a}Y_{i_1b}Y_{i_2c}\,dH_{abc}
          + \frac{\lambda_W\xi^2}{n}\big[\delta_{i_0i_1}v_{i_2} + \delta_{i_0i_2}v_{i_1}\big],

    ``v = Hhat^T (sigma sigma')`` (equal to autodiff to 1e-15), and layer l is
    integrated exactly: given layer l-1 the rows ``W_j`` and ``W_k`` of the new
    layer are independent, so

    .. math::
        E[dH'_{jkk} z'_j] = \xi^2 c\sum_a s_a q_a\big[\xi^2 c\sum_b p_b^2 H_{ab}^2
            + \gamma^2 H_{ak}^2\big] + \sum_a\big(\xi^2 c\,p_a s_a + \gamma^2\delta_{ja} z_j\big)
            \big[\xi^2 c\sum_b p_b^2\,dH_{abb} + \gamma^2 dH_{akk}\big]

    (``s, p, q = sigma, sigma', sigma''`` at layer l-1, ``c = C_W / n``), averaged
    over all ordered pairs j != k. Unbiased at any width; the integration removes
    the heavy tails of the per-network dNTK (autodiff estimates of GELU's P at
    n = 16 had kurtosis > 50 and stated errors that the two widths contradicted).
    Numpy only (float64).

    Parameters
    ----------
    mlp : MLP
        Residual MLP with equal hidden widths (``n_out`` = width), depth >= 2.
    K1 : float > 0
    networks : int
    seed : int
    chunk : int, optional
        Networks per batch (default ``4e6 / n^3``: the dNTK tensors stay in cache).

    Returns
    -------
    mean, se : ndarray (L,)
        ``P^(l)`` estimates and standard errors; layer 1 is 0 (exact).

    Notes
    -----
    Cost: ``O(n^4)`` per network and sampled layer (three contractions of the dNTK
    tensor): at depth 5 ~0.5, 4 and 50 ms per network at n = 16, 32, 64 (one core).
    """
    return _dntk_measure(mlp, K1, networks, seed, "P", chunk)


def residual_dntk_q_measure(mlp, K1, networks, seed, *, chunk=None):
    r"""``Q = n E[dH_{jjk}^(l) z_k^(l)]`` (j != k) of real residual networks, layers 2..L.

    As :func:`residual_dntk_p_measure` (layers ``1..l-1`` sampled with the full NTK and
    dNTK by the forward equations, layer l integrated exactly), with the conditional
    mean of the other contraction: given layer l-1 (``s, p, q`` its ``sigma, sigma',
    sigma''``, ``c = C_W / n``, ``v = Hhat^T (s p)``),

    .. math::
        E[dH'_{jjk} z'_k] = \xi^2 c\sum_a q_a p_a H_{aa}\big[\xi^2 c (H s p)_a
            + \gamma^2 H_{ak} z_k\big]
          + \sum_{abc}E[Y_{ja}Y_{jb}]\,E[Y_{kc}z'_k]\,dH_{abc}
          + \frac{\lambda_W\xi^2}{n}E[v_k z'_k]

    with ``E[Y_ja Y_jb] = xi^2 c p_a^2 d_ab + gamma^2 d_ja d_jb``, ``E[Y_kc z'_k] =
    xi^2 c s_c p_c + gamma^2 d_kc z_k``, ``E[v_k z'_k] = xi^2 c (sp)^T H (sp) + gamma^2
    z_k (H sp)_k``, averaged over all ordered pairs j != k. Unbiased at any width. Numpy
    only (float64); the full dNTK tensor at every sampled layer, ``O(n^4)`` per network
    and layer.

    Parameters, returns: as :func:`residual_dntk_p_measure` (``Q^(l)`` estimates).
    """
    return _dntk_measure(mlp, K1, networks, seed, "Q", chunk)


def _dntk_measure(mlp, K1, networks, seed, stat, chunk):
    """The P or Q estimator of :func:`residual_dntk_p_measure` / :func:`residual_dntk_q_measure`."""
    from ..theory.residual_ntk import one_input_kernel
    name = f"residual_dntk_{stat.lower()}_measure"
    act = mlp.activation
    L = mlp.depth
    n = int(mlp.widths[1])
    if any(int(w) != n for w in mlp.widths[1:]):
        raise ValueError(f"{name} needs equal widths from layer 1 on (n_out = width); "
                         f"got {mlp.widths}")
    if L < 2:
        raise ValueError(f"{stat} vanishes at layer 1; need depth >= 2, got {L}")
    if not (isinstance(networks, int) and networks >= 2):
        raise ValueError(f"networks must be an integer >= 2; got {networks!r}")
    _, Th = one_input_kernel(mlp, K1)
    Cb, CW, lb, lW, xi, ga = (np.asarray(v, float) for v in
                              (mlp.C_b, mlp.C_W, mlp.lambda_b, mlp.lambda_W, mlp.xi, mlp.gamma))
    rng = np.random.default_rng(seed)
    chunk = int(chunk or max(1, 4e6 // n ** 3))
    idx = np.arange(n)

    def conditional(z, H, T, diag, l):
        if stat == "P":
            D = None if T is None else (T if diag else T[:, :, idx, idx])
            return _dntk_p_conditional(act, z, H, D, xi[l], ga[l], CW[l], n)
        return _dntk_q_conditional(act, z, H, T, xi[l], ga[l], CW[l], lW[l], n)

    Ys, done = [], 0
    while done < networks:
        b = min(chunk, networks - done)
        done += b
        z = math.sqrt(K1) * rng.standard_normal((b, n))
        H = np.broadcast_to(Th[0] * np.eye(n), (b, n, n)).copy()
        est = np.zeros((b, L))
        est[:, 1] = conditional(z, H, None, False, 1)
        dH = None
        for k in range(1, L - 1):        # sample layer k+1 (0-based k), estimate layer k+2
            W = rng.standard_normal((b, n, n)) * math.sqrt(CW[k] / n)
            bias = math.sqrt(Cb[k]) * rng.standard_normal((b, n))
            diag = stat == "P" and k == L - 2      # P needs only dH_{akk} at the last one
            z, H, T = _dntk_step(act, z, H, dH, W, bias, (xi[k], ga[k], lb[k], lW[k]), n,
                                 diag_only=diag)
            est[:, k + 1] = conditional(z, H, T, diag, k + 1)
            dH = T
        Ys.append(est)
    Y = np.concatenate(Ys)
    return Y.mean(0), Y.std(0, ddof=1) / math.sqrt(len(Y))


@dataclass(frozen=True)
class _Measured:
    """Per-layer mean and standard error (the fields of an ensemble estimate rows read)."""

    mean: np.ndarray
    stderr: np.ndarray


def residual_aspect_ratio_figure(activations=("relu", "gelu"), gammas=None, *, n_out=1,
                                 depth=60):
    """r*(gamma) from the exact residual vertex slope, next to the NTK statistics' slopes.

    Six panels, against gamma (theory only, :func:`pdlt.theory.residual.residual_slopes`,
    ``lambda_b = lambda_W = 1``, recursions to ``depth``):

    1. the vertex slope ``nu(gamma)``, exact and its three-point part
       (:func:`pdlt.theory.residual.three_point_vertex_slope`);
    2. ``r* = 4/((20 + 3 n_L) nu)`` from both;
    3. the NTK fluctuation slopes: ``A, B/(n Theta^2)`` and ``D, F/(n K Theta)``;
    4. representation learning, the dNTK slopes ``P, Q/(n Theta^2)``;
    5. the ddNTK slopes ``R, S, T, U/(n Theta^3)``;
    6. the ratio of representation learning to NTK fluctuations,
       ``(nu_P + 2 nu_Q)/(nu_A + 2 nu_B)`` (one output: ``n E[dH z]`` against
       ``n Var H``; both grow like L/n, so the ratio does not depend on L/n), with
       r* on a second axis.

    Every slope is the coefficient of ``l^k/n`` with the powers ``k`` of
    :data:`pdlt.theory.ntk_criticality.SLOPE_DEPTH_POWERS` (1 in the scale-invariant
    class; in the half-stable class some statistics grow faster, marked ``l^k`` in
    the legend, and the ratio of panel 6 is not depth-independent, so it is drawn
    for scale-invariant activations only). K*=0 activations have no residual NTK
    slopes (:func:`~pdlt.theory.residual.residual_slopes`) and are skipped in
    panels 3-6. Accuracy of the slopes: the transient ``~ depth^k gamma^depth``
    (below 1e-6 for gamma <= 0.5 at depth 40, ~1 % at gamma = 0.9 and depth 40,
    ~0.3 % at depth 60). Cost (one CPU): ~3 s (ReLU) to ~6 s (GELU) per gamma at
    depth 40.

    Returns
    -------
    fig, data
        ``data[activation]`` holds ``nu_closed_form``, ``nu_exact``, ``r_star_*``,
        ``nu_A`` ... ``nu_U`` and ``learning_to_fluctuation`` (lists over gamma).
    """
    from ..theory.criticality import criticality
    from ..theory.information import optimal_aspect_ratio_from_slope
    from ..theory.ntk_criticality import SLOPE_DEPTH_POWERS
    from ..theory.residual import residual_slopes, three_point_vertex_slope

    g = np.linspace(0.0, 0.9, 10) if gammas is None else np.asarray(gammas, float)
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2))
    (ax1, ax2, ax3), (ax4, ax5, ax6) = axes
    ax6r = ax6.twinx()
    data = dict(gamma=g.tolist(), n_out=n_out, depth=depth)
    styles = ("-", "--", ":", "-.")
    for act in activations:
        cls = criticality(act).universality_class
        closed = np.array([three_point_vertex_slope(act, float(x)) for x in g])
        ntk = cls in SLOPE_DEPTH_POWERS and cls != "K*=0"
        if ntk:
            sl = [residual_slopes(act, float(x), depth=depth) for x in g]
            exact = np.array([s["nu_V"] for s in sl])
        else:
            from ..theory.residual import residual_vertex_slope
            exact = np.array([residual_vertex_slope(act, float(x)) for x in g])
        r_c = np.array([optimal_aspect_ratio_from_slope(v, n_out) for v in closed])
        r_e = np.array([optimal_aspect_ratio_from_slope(v, n_out) for v in exact])
        d = dict(nu_closed_form=closed.tolist(), nu_exact=exact.tolist(),
                 r_star_closed_form=r_c.tolist(), r_star_exact=r_e.tolist())
        line, = ax1.plot(g, exact, "-", label=f"{act} exact")
        c = line.get_color()
        ax1.plot(g, closed, "--", color=c, label=f"{act} three-point only")
        ax2.semilogy(g, r_e, "-", color=c, label=f"{act} exact")
        ax2.semilogy(g, r_c, "--", color=c)
        if ntk:
            pw = SLOPE_DEPTH_POWERS[cls]
            for ax, names in ((ax3, "ABDF"), (ax4, "PQ"), (ax5, "RSTU")):
                for name, ls in zip(names, styles):
                    vals = [s[name] for s in sl]
                    d[f"nu_{name}"] = vals
                    k = pw[name]
                    ax.plot(g, vals, ls, color=c,
                            label=f"{act} {name}" + ("" if k == 1 else f" (l^{k})"))
            ratio = [s["learning_to_fluctuation"] for s in sl]
            d["learning_to_fluctuation"] = ratio
            if all(q is not None for q in ratio):
                ax6.plot(g, ratio, "-", color=c, label=f"{act} (P + 2Q)/(A + 2B)")
                ax6r.semilogy(g, r_e, ":", color=c, label=f"{act} r*")
        data[act] = d
    ax1.set_ylabel("nu: V/(n K^2) ~ nu L/n")
    ax2.set_ylabel(f"r* = 4/((20 + 3 n_L) nu), n_L = {n_out}")
    ax3.set_ylabel("A, B/(n Theta^2); D, F/(n K Theta) per L/n")
    ax3.set_title("NTK fluctuation slopes")
    ax4.set_ylabel("P, Q/(n Theta^2) per L/n")
    ax4.set_title("representation learning (dNTK) slopes")
    ax5.set_ylabel("R, S, T, U/(n Theta^3) per L/n")
    ax5.set_title("ddNTK slopes")
    ax6.set_ylabel("(nu_P + 2 nu_Q)/(nu_A + 2 nu_B)")
    ax6r.set_ylabel("r* (dotted)")
    ax6.set_title("representation learning / NTK fluctuations")
    for ax in (ax1, ax2, ax3, ax4, ax5, ax6):
        ax.set_xlabel("residual strength gamma")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, data


def residual_multi_measure(mlp, x, networks, seed=0, *, chunk=2000, folds=2):
    r"""N-input V and G1 per layer of real residual MLPs (numpy), with zero-mean controls.

    Draws ``networks`` i.i.d. networks ``z' = xi [b + W sigma(z)] + gamma z``
    (``Var W = C_W / n``, ``Var b = C_b``; numpy, float64, generator ``seed``) at the inputs
    ``x`` (N, n0) and estimates, at every layer l >= 2 (equal widths ``n_1 = ... = n_L``:
    neuron i of a layer continues neuron i):

    * ``E[z_a z_b]`` by its conditional mean given layer l-1 (Rao-Blackwell),
      ``qhat_l = xi^2 (C_b + C_W s_{l-1}) + gamma^2 q_{l-1}`` (``s = mean_j sigma sigma^T``,
      ``q = mean_i z z^T``);
    * the pair term ``E[z_ia z_ib z_jc z_jd]`` (i != j) by its conditional mean
      ``(n^2 Abar_ab Abar_cd - sum_i A_i,ab A_i,cd) / (n (n - 1))``,
      ``A_i = xi^2 Ghat + gamma^2 y_i y_i^T`` (y: layer l-1);

    each minus control variates with mean exactly zero: for every earlier layer m and every
    monomial ``P`` of degree 1..4 in the inputs, ``mean_i [P(z_i^(m)) - E[P(z_i^(m)) | m-1]]``
    (given layer m-1 a neuron is Gaussian with mean ``gamma y_i`` and covariance
    ``xi^2 Ghat``, so the conditional moments are exact polynomials: Isserlis; degree 2 is
    ``e_m = q_m - qhat_m``), and ``d_1 = s_1 - <sigma sigma>_{K^(1)}`` (all pairs), with
    least-squares coefficients
    cross-fitted over ``folds`` blocks (each block's coefficients come from the other
    blocks, so every block keeps its mean exactly). Then ``G1 = n_{l-1} (E[qhat] - K)``
    (against the infinite-width K) and ``V_{(ab)(cd)} = n_{l-1} [E(pair) - E(q_ab) E(q_cd)]``
    (stderr by the delta method; the product's O(1/networks) bias is far below it).

    Returns
    -------
    dict
        ``"G1"``: (mean (L, N, N), stderr (L, N, N)); ``"V"``: (mean (L, N, N, N, N),
        stderr); layer 1 entries are 0.
    """
    from ..theory._averages import LayerAverages, OneVariableTable
    from ..theory.statistics import statistics

    x = np.atleast_2d(np.asarray(x, float))
    N, L = len(x), mlp.depth
    w = mlp.widths
    if len(set(w[1:])) != 1:
        raise ValueError(f"residual_multi_measure needs equal widths n_1 = ... = n_L; got {w}")
    act = mlp.activation
    Ks = statistics(mlp, x).K
    S1 = LayerAverages(act, Ks[0], OneVariableTable(act, np.diag(Ks[0]).copy())).S
    rng = np.random.default_rng(seed)
    iu = np.triu_indices(N)
    Q, PP, Fe = [[] for _ in range(L)], [[] for _ in range(L)], [[] for _ in range(L)]
    for start in range(0, networks, chunk):
        M = min(chunk, networks - start)
        W = rng.normal(size=(M, w[1], w[0])) * np.sqrt(mlp.C_W[0] / w[0])
        b = rng.normal(size=(M, w[1], 1)) * np.sqrt(mlp.C_b[0])
        z = W @ x.T + b                                         # (M, n, N)
        sz = act.sigma(z)
        s = np.einsum("min,mip->mnp", sz, sz) / w[1]
        Fe[0].append(np.concatenate([
            _moment_controls(z, np.zeros_like(z), np.broadcast_to(Ks[0], (M, N, N))),
            (s - S1)[:, iu[0], iu[1]]], axis=1))
        for l in range(1, L):
            xi, g, CW, Cb, n = mlp.xi[l], mlp.gamma[l], mlp.C_W[l], mlp.C_b[l], w[l]
            G = Cb + CW * np.einsum("min,mip->mnp", sz, sz) / n
            A = xi * xi * G[:, None] + g * g * np.einsum("min,mip->minp", z, z)   # (M, n, N, N)
            qhat = A.mean(1)
            Q[l].append(qhat)
            sA = A.sum(1)
            PP[l].append((np.einsum("mab,mcd->mabcd", sA, sA)
                          - np.einsum("miab,micd->mabcd", A, A)) / (n * (n - 1)))
            if l == L - 1:
                break
            W = rng.normal(size=(M, n, n)) * np.sqrt(CW / n)
            b = rng.normal(size=(M, n, 1)) * np.sqrt(Cb)
            mu = g * z
            z = xi * (W @ sz + b) + mu
            sz = act.sigma(z)
            Fe[l].append(_moment_controls(z, mu, xi * xi * G))
    out = {"G1": (np.zeros((L, N, N)), np.zeros((L, N, N))),
           "V": (np.zeros((L,) + (N,) * 4), np.zeros((L,) + (N,) * 4))}
    edges = np.linspace(0, networks, int(folds) + 1).astype(int)
    for l in range(1, L):
        X = np.concatenate([np.concatenate(Fe[m]) for m in range(l)], axis=1)
        y = np.concatenate(Q[l]).reshape(networks, -1)
        p = np.concatenate(PP[l]).reshape(networks, -1)
        T = np.concatenate([y, p], axis=1)
        Tc = np.empty_like(T)
        for f in range(int(folds)):
            inb = np.zeros(networks, dtype=bool)
            inb[edges[f]:edges[f + 1]] = True
            Xo, To = X[~inb], T[~inb]
            Xo = Xo - Xo.mean(0)
            # least squares by the (small) normal equations
            beta, *_ = np.linalg.lstsq(Xo.T @ Xo, Xo.T @ (To - To.mean(0)), rcond=None)
            Tc[inb] = T[inb] - X[inb] @ beta           # E[X] = 0 exactly: mean kept
        y = Tc[:, :N * N].reshape(networks, N, N)
        p = Tc[:, N * N:].reshape((networks,) + (N,) * 4)
        n = mlp.fan_in(l + 1)
        my = y.mean(0)
        out["G1"][0][l] = n * (my - Ks[l])
        out["G1"][1][l] = n * y.std(0, ddof=1) / np.sqrt(networks)
        psi = n * (p - np.einsum("mab,cd->mabcd", y, my) - np.einsum("ab,mcd->mabcd", my, y))
        out["V"][0][l] = n * (p.mean(0) - np.einsum("ab,cd->abcd", my, my))
        out["V"][1][l] = psi.std(0, ddof=1) / np.sqrt(networks)
    return out


def _moment_controls(z, mu, Sig):
    """``mean_i [P(z_i) - E P]`` for every monomial P of degree 1..4 in the N inputs.

    ``z`` (M, n, N) with ``z_i ~ N(mu_i, Sig)`` given the previous layer (``mu`` (M, n, N),
    ``Sig`` (M, N, N)); ``E P`` by expanding ``z = mu + eps`` (Isserlis for eps).
    Returns (M, F), mean exactly zero.
    """
    import itertools

    N = z.shape[-1]
    cols = []
    for d in range(1, 5):
        for idx in itertools.combinations_with_replacement(range(N), d):
            val = np.prod([z[..., k] for k in idx], axis=0)
            mean = np.zeros(z.shape[:-1])
            for r in (0, 2, 4):
                for S in itertools.combinations(range(d), r):
                    rest = [idx[j] for j in range(d) if j not in S]
                    part = np.prod([mu[..., k] for k in rest], axis=0) if rest else 1.0
                    e = [idx[j] for j in S]
                    if r == 0:
                        m = 1.0
                    elif r == 2:
                        m = Sig[:, None, e[0], e[1]]
                    else:
                        a, b, c, f = e
                        m = (Sig[:, None, a, b] * Sig[:, None, c, f] + Sig[:, None, a, c]
                             * Sig[:, None, b, f] + Sig[:, None, a, f] * Sig[:, None, b, c])
                    mean = mean + part * m
            cols.append((val - mean).mean(1))
    return np.stack(cols, axis=1)


def residual_multi_rows(activations=("relu", "tanh"), gamma=0.5, *, x=((1.0, 0.0), (0.6, 0.8)),
                        widths=(16, 32), depth=4, networks=16000, seed=71, ntk_networks=0):
    """Rows: the N-input residual V and G1 against real residual networks, last layer.

    For each activation a residual MLP at residual criticality
    (:func:`pdlt.theory.residual.residual_mlp`, ``n_out = width`` so every layer l >= 2 is
    residual) at the inputs ``x`` (N, n0), measured by :func:`residual_multi_measure` at
    the two widths (independent seeds) and extrapolated, ``2 m(2n) - m(n)`` with the
    measured allowance ``|m(2n) - m(n)|/2`` (:func:`pdlt.report.rows.width_extrapolation`),
    against :func:`pdlt.statistics` (exact N-input V, G1:
    :mod:`pdlt.theory.residual_multi`). One row per distinct entry at layer ``depth``:
    ``V_(ab)(cd)`` over unordered pairs ``(ab) <= (cd)``, ``G1_ab`` over ``a <= b``
    (off-diagonal entries included), keys ``"residual V (N inputs)"`` and
    ``"residual G1 (N inputs)"``.

    ``ntk_networks > 0`` adds the NTK statistics A, B, D and F (:func:`residual_ad_multi
    <pdlt.theory.residual_multi.residual_ad_multi>`, ``residual_b_multi``,
    ``residual_f_multi``) measured on that many real networks per width (torch autodiff
    NTK, :class:`pdlt.experiment.Ensemble`, one run, ``lambda_b = 0.5``), extrapolated and
    allowed for the same way, one row per entry up to the symmetries (B:
    ``(a1a2)(a3a4) = (a2a1)(a4a3) = (a3a4)(a1a2)``; F: the i <-> k swap; A: a1 <-> a2,
    a3 <-> a4 and the pair swap; D: a1 <-> a2, a3 <-> a4), keys ``"residual A (N inputs)"``,
    ..., ``"residual F (N inputs)"``.

    Cost: two ensembles of ``networks`` numpy networks per activation (N = 2, depth 4,
    widths 16/32, 16000 networks: ~3.5 CPU s per activation); B and F at 4000 networks
    ~10 CPU s per activation (needs torch).

    Returns
    -------
    list of :class:`pdlt.report.rows.Row`
    """
    import pdlt

    from ..theory.residual import residual_mlp
    from .rows import make_row, width_extrapolation

    x = np.atleast_2d(np.asarray(x, float))
    N, L = x.shape[0], depth
    pairs = [(a, b) for a in range(N) for b in range(a, N)]
    rows = []
    for act in activations:
        ms = []
        for k, n in enumerate(widths):
            m = residual_mlp(act, gamma, n0=x.shape[1], width=n, depth=L, n_out=n)
            ms.append(residual_multi_measure(m, x, networks, seed=seed + k))
        th = pdlt.statistics(m, x, get=["V", "G1"])
        for name, idx in (("V", [p + q for i, p in enumerate(pairs) for q in pairs[i:]]),
                          ("G1", pairs)):
            ext, se, al = width_extrapolation(ms[0][name][0][L - 1], ms[0][name][1][L - 1],
                                              ms[1][name][0][L - 1], ms[1][name][1][L - 1])
            t = getattr(th, name)[L - 1]
            for ix in idx:
                lab = ("V_(%d%d)(%d%d)" % ix) if name == "V" else ("G1_%d%d" % ix)
                rows.append(make_row(f"{lab} (gamma={gamma:g}, {N} inputs, "
                                     f"2m({widths[1]})-m({widths[0]}))", act, widths[1], L,
                                     float(t[ix]), float(ext[ix]), float(se[ix]),
                                     float(al[ix]), key=f"residual {name} (N inputs)"))
        if ntk_networks > 0:
            rows += _residual_multi_ntk_rows(act, gamma, x, widths, L, ntk_networks, seed + 2)
    return rows


def _residual_multi_ntk_rows(act, gamma, x, widths, L, networks, seed):
    """A, B, D and F rows of :func:`residual_multi_rows` (last layer, one row per orbit)."""
    import itertools

    import pdlt

    from ..experiment import Ensemble
    from ..theory.residual import residual_mlp
    from .rows import make_row, width_extrapolation

    N = x.shape[0]
    ms = []
    for k, n in enumerate(widths):
        m = residual_mlp(act, gamma, n0=x.shape[1], width=n, depth=L, n_out=n, lambda_b=0.5)
        ms.append(Ensemble(m, networks=networks, seed=seed + k).measure(
            x, stats=("A", "B", "D", "F"), layers=[L], progress=False))
    th = pdlt.statistics(m, x, get=["A", "B", "D", "F"])

    def pair_swaps(q, swap):
        out = {q}
        for _ in range(3):
            out |= {(r[1], r[0], r[2], r[3]) for r in out} | {(r[0], r[1], r[3], r[2])
                                                               for r in out}
            if swap:
                out |= {(r[2], r[3], r[0], r[1]) for r in out}
        return out

    orbit = {"B": lambda q: (q, (q[1], q[0], q[3], q[2]), (q[2], q[3], q[0], q[1]),
                             (q[3], q[2], q[1], q[0])),
             "F": lambda q: (q, (q[2], q[3], q[0], q[1])),
             "A": lambda q: pair_swaps(q, True), "D": lambda q: pair_swaps(q, False)}
    lab = {"A": "A_(%d%d)(%d%d)", "B": "B_(%d%d)(%d%d)", "D": "D_(%d%d)(%d%d)",
           "F": "F[%d,%d,%d,%d]"}
    rows = []
    for name in ("A", "B", "D", "F"):
        e = [ms[i].layer(L)[name] for i in range(2)]
        ext, se, al = width_extrapolation(e[0].mean, e[0].stderr, e[1].mean, e[1].stderr)
        t = getattr(th, name)[L - 1]
        for q in itertools.product(range(N), repeat=4):
            if min(orbit[name](q)) != q:
                continue
            rows.append(make_row(f"{lab[name] % q} (gamma={gamma:g}, {N} inputs, "
                                 f"2m({widths[1]})-m({widths[0]}))", act, widths[1], L,
                                 float(t[q]), float(ext[q]), float(se[q]), float(al[q]),
                                 key=f"residual {name} (N inputs)"))
    return rows


# ---------------------------------------------------------------------------
# h41: the N-input residual ddNTKs S and U against real residual networks
# ---------------------------------------------------------------------------

def residual_multi_ddii_rows(activation="tanh", gamma=0.5, *, x=((1.0, 0.0), (0.6, 0.8)),
                             widths=(16, 32), depth=4, layers=(3, 4), networks=6000, seed=91,
                             neurons=2):
    """Rows: the N-input residual S and U against real residual networks at ``layers``.

    A residual MLP at residual criticality (:func:`pdlt.theory.residual.residual_mlp`,
    ``n_out = width``, ``lambda_b = 0.5``) at the inputs ``x`` (N, n0); the ddNTKs
    ``ddIIH`` of real networks by torch autodiff (:class:`pdlt.experiment.Ensemble`,
    averaged over the ordered pairs of ``neurons`` neurons per network) at the two widths
    (independent seeds), extrapolated ``2 m(2n) - m(n)`` with the measured allowance
    ``|m(2n) - m(n)|/2`` (:func:`pdlt.report.rows.width_extrapolation`), against
    :func:`pdlt.statistics` (:mod:`pdlt.theory.residual_multi_ddii`). One row per entry
    and layer up to the exact symmetry ``(a0a1a2a3) = (a1a0a3a2)``, keys
    ``"residual S (N inputs)"`` and ``"residual U (N inputs)"``. Layers 3 and 4 carry the
    two-depth history terms (layer 2 is the plain form at any width).

    Cost (N = 2, depth 4, widths 16/32, 6000 networks, 2 neurons): ~25 CPU s (needs torch).
    U's 1/n^2 terms are large: at 4000 networks its best layer-4 entry resolved 28 %
    (the allowance ``|m(32) - m(16)|/2`` is half of it).

    Returns
    -------
    list of :class:`pdlt.report.rows.Row`
    """
    import itertools

    import pdlt

    from ..experiment import Ensemble
    from ..theory.residual import residual_mlp
    from .rows import make_row, width_extrapolation

    x = np.atleast_2d(np.asarray(x, float))
    N, L = x.shape[0], depth
    ms = []
    for k, n in enumerate(widths):
        m = residual_mlp(activation, gamma, n0=x.shape[1], width=n, depth=L, n_out=n,
                         lambda_b=0.5)
        ms.append(Ensemble(m, networks=networks, seed=seed + k).measure(
            x, stats=("S", "U"), layers=list(layers), progress=False,
            derivative_neurons=neurons))
    th = pdlt.statistics(m, x, get=["S", "U"])
    rows = []
    for name, lay in itertools.product(("S", "U"), layers):
        e = [ms[i].layer(lay)[name] for i in range(2)]
        ext, se, al = width_extrapolation(e[0].mean, e[0].stderr, e[1].mean, e[1].stderr)
        t = getattr(th, name)[lay - 1]
        for q in itertools.product(range(N), repeat=4):
            if (q[1], q[0], q[3], q[2]) < q:
                continue
            lab = "".join(map(str, q))
            rows.append(make_row(f"{name}[{lab}] (gamma={gamma:g}, {N} inputs, "
                                 f"2m({widths[1]})-m({widths[0]}))", activation, widths[1], lay,
                                 float(t[q]), float(ext[q]), float(se[q]), float(al[q]),
                                 key=f"residual {name} (N inputs)"))
    return rows



def residual_multi_ntk_mean_measure(mlp, x, networks, seed=0, *, chunk=2000, folds=2):
    r"""``n (E[H_{ii;ab}^(l)] - Theta^(l)_{ab})`` of real residual MLPs at N inputs (numpy).

    The N-input NTK mean ``H1`` (:mod:`pdlt.theory.residual_multi_mean`) measured on
    ``networks`` i.i.d. networks ``z' = xi [b + W sigma(z)] + gamma z`` (equal widths
    ``n_1 = ... = n_L``, float64, generator ``seed``) that carry the full NTK matrix
    ``H_{ik;ab}`` by the forward equation ``H'_{ab} = xi^2 (lambda_b + lambda_W S_ab) 1 +
    Y_a H_ab Y_b^T``, ``Y_a = xi W diag(sigma'_a) + gamma 1``. At layer l the last step is
    integrated exactly (Rao-Blackwell): given layer l-1,

    .. math::
        E[\bar H^{(l)}_{ab} \mid l-1] = \xi^2(\lambda_b + \lambda_W S_{ab} + C_W P_{ab})
            + \gamma^2 \bar H^{(l-1)}_{ab},

    ``S_ab = mean_j sigma_a sigma_b(z_j)``, ``P_ab = mean_j sigma'_a sigma'_b(z_j) H_{jj;ab}``,
    ``Hbar = mean_i H_ii`` (the half-skip term is linear in the new W). Minus control
    variates with mean exactly zero, cross-fitted over ``folds`` blocks (as
    :func:`residual_multi_measure`): the layer-1 means of ``sigma_a sigma_b`` and
    ``sigma'_a sigma'_b`` minus their Gaussian averages; for every sampled layer m the
    Isserlis moment controls of ``_moment_controls`` (a neuron is Gaussian with mean
    ``gamma y_i`` and covariance ``xi^2 G`` given layer m-1), and the NTK diagonal's
    innovations ``mean_i w_i (H_ii^(m) - E[H_ii^(m) | m-1])`` with weights ``w_i = 1``,
    ``sigma_a sigma_b`` and ``sigma'_a sigma'_b`` of neuron i at layer m-1 (per-neuron
    conditional mean ``xi^2 (lambda_b + lambda_W S + C_W P) + gamma^2 H_ii``: exact).

    Parameters
    ----------
    mlp : MLP
        Residual MLP with equal widths ``n_1 = ... = n_L`` (``n_out = width``).
    x : array_like (N, n0)
    networks, seed, chunk, folds : int

    Returns
    -------
    mean, stderr : ndarray (L, N, N)
        ``n_{l-1} (E[Hbar^(l)] - Theta^(l))``, which is ``H1^(l) + O(1/n)``; layers 1, 2 are 0.
    """
    from ..theory._averages import LayerAverages, OneVariableTable
    from ..theory.statistics import statistics

    x = np.atleast_2d(np.asarray(x, float))
    N, L = len(x), mlp.depth
    w = mlp.widths
    if len(set(w[1:])) != 1:
        raise ValueError(f"residual_multi_ntk_mean_measure needs equal widths n_1 = ... = n_L; "
                         f"got {w}")
    if L < 3:
        raise ValueError(f"H1 vanishes at layers 1 and 2; need depth >= 3, got {L}")
    act = mlp.activation
    st = statistics(mlp, x)
    Ks, Ths = st.K, st.Theta
    av1 = LayerAverages(act, Ks[0], OneVariableTable(act, np.diag(Ks[0]).copy()))
    iu = np.triu_indices(N)                 # the pairs a <= b (H_ba is H_ab transposed)
    pa, pb = iu
    n = int(w[1])
    eye = np.eye(n)
    rng = np.random.default_rng(seed)
    Y = [[] for _ in range(L)]
    Fe = [[] for _ in range(L)]
    for start in range(0, networks, chunk):
        M = min(chunk, networks - start)
        W = rng.normal(size=(M, n, w[0])) * np.sqrt(mlp.C_W[0] / w[0])
        b = rng.normal(size=(M, n, 1)) * np.sqrt(mlp.C_b[0])
        z = W @ x.T + b                                          # (M, n, N)
        H = np.broadcast_to(Ths[0][pa, pb][None, :, None, None] * eye,
                            (M, len(pa), n, n)).copy()            # (M, pairs, n, n)
        sz, pz = act.sigma(z), act.d1(z)
        s1 = np.einsum("mia,mib->mab", sz, sz) / n
        p1 = np.einsum("mia,mib->mab", pz, pz) / n
        Fe[0].append(np.concatenate([
            _moment_controls(z, np.zeros_like(z), np.broadcast_to(Ks[0], (M, N, N))),
            (s1 - av1.S)[:, pa, pb], (p1 - av1.PP)[:, pa, pb]], axis=1))
        for l in range(1, L):
            xi, g, CW, Cb = mlp.xi[l], mlp.gamma[l], mlp.C_W[l], mlp.C_b[l]
            lb, lW = mlp.lambda_b[l], mlp.lambda_W[l]
            Hd = np.einsum("mpii->mip", H)                        # (M, n, pairs)
            ss = sz[:, :, pa] * sz[:, :, pb]
            pp = pz[:, :, pa] * pz[:, :, pb]
            S, P = ss.mean(1), (pp * Hd).mean(1)
            base = xi * xi * (lb + lW * S + CW * P)               # (M, pairs)
            Ei = base[:, None] + g * g * Hd                       # E[H_ii^(l) | l-1], per neuron
            Y[l].append(n * (Ei.mean(1) - Ths[l][pa, pb]))
            if l == L - 1:
                break
            W = rng.normal(size=(M, n, n)) * np.sqrt(CW / n)
            b = rng.normal(size=(M, n, 1)) * np.sqrt(Cb)
            mu = g * z
            G = Cb + CW * np.einsum("mia,mib->mab", sz, sz) / n
            z = xi * (W @ sz + b) + mu
            Yk = xi * W[:, None] * pz.transpose(0, 2, 1)[:, :, None, :] + g * eye   # (M, N, n, n)
            H = Yk[:, pa] @ H @ np.swapaxes(Yk[:, pb], 2, 3)
            H += (xi * xi * (lb + lW * S))[:, :, None, None] * eye
            innov = np.einsum("mpii->mip", H) - Ei                # zero mean given layer l-1
            cols = [_moment_controls(z, mu, xi * xi * G)]
            for wgt in (None, ss, pp):
                v = innov if wgt is None else wgt * innov
                cols.append(n * v.mean(1))
            Fe[l].append(np.concatenate(cols, axis=1))
            sz, pz = act.sigma(z), act.d1(z)
    mean, se = np.zeros((L, N, N)), np.zeros((L, N, N))
    edges = np.linspace(0, networks, int(folds) + 1).astype(int)
    for l in range(2, L):
        X = np.concatenate([np.concatenate(Fe[m]) for m in range(l)], axis=1)
        T = np.concatenate(Y[l]).reshape(networks, -1)
        Tc = np.empty_like(T)
        for f in range(int(folds)):
            inb = np.zeros(networks, dtype=bool)
            inb[edges[f]:edges[f + 1]] = True
            Xo, To = X[~inb], T[~inb]
            Xo = Xo - Xo.mean(0)
            beta, *_ = np.linalg.lstsq(Xo.T @ Xo, Xo.T @ (To - To.mean(0)), rcond=None)
            Tc[inb] = T[inb] - X[inb] @ beta            # E[X] = 0 exactly: mean kept
        mean[l][pa, pb] = mean[l][pb, pa] = Tc.mean(0)
        se[l][pa, pb] = se[l][pb, pa] = Tc.std(0, ddof=1) / np.sqrt(networks)
    return mean, se


def residual_multi_ntk_mean_rows(activations=("relu", "tanh"), gamma=0.5, *,
                                 x=((1.0, 0.0), (0.6, 0.8)), widths=(16, 32), depth=4,
                                 networks=40000, seed=83):
    """Rows: the N-input residual NTK mean H1 against real residual networks, last layer.

    For each activation a residual MLP at residual criticality
    (:func:`pdlt.theory.residual.residual_mlp`, ``n_out = width``, ``lambda_b = 0.5``) at
    the inputs ``x`` (N, n0), measured by :func:`residual_multi_ntk_mean_measure` at the
    two widths (independent seeds), extrapolated ``2 m(2n) - m(n)`` with the measured
    allowance ``|m(2n) - m(n)|/2``, against ``pdlt.statistics(..., get="H1")``
    (:mod:`pdlt.theory.residual_multi_mean`). One row per entry ``H1_ab``, ``a <= b``, at
    layer ``depth``; key ``"residual H1 (N inputs)"``. Resolution at the defaults
    (measured, seed 83): relu 12-16 %, tanh 13-22 %, max z 0.69, x0.5 and x2 rejected at
    z >= 9.5. Cost ~45 CPU s per activation
    (numpy, float64; the NTK matrix of every network is carried).

    Returns
    -------
    list of :class:`pdlt.report.rows.Row`
    """
    import pdlt

    from ..theory.residual import residual_mlp
    from .rows import make_row, width_extrapolation

    x = np.atleast_2d(np.asarray(x, float))
    N, L = x.shape[0], depth
    rows = []
    for act in activations:
        ms = []
        for k, n in enumerate(widths):
            m = residual_mlp(act, gamma, n0=x.shape[1], width=n, depth=L, n_out=n,
                             lambda_b=0.5)
            ms.append(residual_multi_ntk_mean_measure(m, x, networks, seed=seed + k))
        th = pdlt.statistics(m, x, get="H1").H1[L - 1]
        ext, se, al = width_extrapolation(ms[0][0][L - 1], ms[0][1][L - 1],
                                          ms[1][0][L - 1], ms[1][1][L - 1])
        for a in range(N):
            for b in range(a, N):
                rows.append(make_row(f"H1_{a}{b} (gamma={gamma:g}, {N} inputs, "
                                     f"2m({widths[1]})-m({widths[0]}))", act, widths[1], L,
                                     float(th[a, b]), float(ext[a, b]), float(se[a, b]),
                                     float(al[a, b]), key="residual H1 (N inputs)"))
    return rows


def residual_multi_kappa3_measure(mlp, x, networks, seed=0, *, chunk=2000, folds=2):
    r"""``kappa3_abc = n E[z_{i;a} z_{i;b} z_{k;c}]`` (i != k) of real residual MLPs (numpy).

    The N-input three-point function (:func:`pdlt.theory.residual_multi_mean.residual_kappa3_multi`)
    on ``networks`` i.i.d. networks (equal widths ``n_1 = ... = n_L``, float64, generator
    ``seed``), the last layer integrated given the previous one (Rao-Blackwell): a neuron is
    ``xi u_i + gamma y_i`` with ``u_i ~ N(0, G)`` independent, so for i != k
    ``E[z_ia z_ib z_kc | l-1] = A_{i;ab} gamma y_{kc}``, ``A_i = xi^2 G + gamma^2 y_i y_i^T``,
    averaged over the ordered pairs i != k. Minus the cross-fitted zero-mean controls of
    :func:`residual_multi_measure` (Isserlis moment controls of degree 1..4 of every earlier
    layer and the layer-1 means of ``sigma_a sigma_b``).

    Returns
    -------
    mean, stderr : ndarray (L, N, N, N)
        ``n_{l-1}`` times the pair average (``kappa3[l, a, b, c]``); layer 1 is 0.
    """
    from ..theory._averages import LayerAverages, OneVariableTable
    from ..theory.statistics import statistics

    x = np.atleast_2d(np.asarray(x, float))
    N, L = len(x), mlp.depth
    w = mlp.widths
    if len(set(w[1:])) != 1:
        raise ValueError(f"residual_multi_kappa3_measure needs equal widths n_1 = ... = n_L; "
                         f"got {w}")
    act = mlp.activation
    Ks = statistics(mlp, x).K
    S1 = LayerAverages(act, Ks[0], OneVariableTable(act, np.diag(Ks[0]).copy())).S
    rng = np.random.default_rng(seed)
    iu = np.triu_indices(N)
    T, Fe = [[] for _ in range(L)], [[] for _ in range(L)]
    n = int(w[1])
    for start in range(0, networks, chunk):
        M = min(chunk, networks - start)
        W = rng.normal(size=(M, n, w[0])) * np.sqrt(mlp.C_W[0] / w[0])
        b = rng.normal(size=(M, n, 1)) * np.sqrt(mlp.C_b[0])
        z = W @ x.T + b
        sz = act.sigma(z)
        s = np.einsum("min,mip->mnp", sz, sz) / n
        Fe[0].append(np.concatenate([
            _moment_controls(z, np.zeros_like(z), np.broadcast_to(Ks[0], (M, N, N))),
            (s - S1)[:, iu[0], iu[1]]], axis=1))
        for l in range(1, L):
            xi, g, CW, Cb = mlp.xi[l], mlp.gamma[l], mlp.C_W[l], mlp.C_b[l]
            G = Cb + CW * np.einsum("min,mip->mnp", sz, sz) / n
            A = xi * xi * G[:, None] + g * g * np.einsum("min,mip->minp", z, z)   # (M, n, N, N)
            gy = g * z
            T[l].append(n * (np.einsum("mab,mc->mabc", A.sum(1), gy.sum(1))
                             - np.einsum("miab,mic->mabc", A, gy)) / (n * (n - 1)))
            if l == L - 1:
                break
            W = rng.normal(size=(M, n, n)) * np.sqrt(CW / n)
            b = rng.normal(size=(M, n, 1)) * np.sqrt(Cb)
            z = xi * (W @ sz + b) + gy
            sz = act.sigma(z)
            Fe[l].append(_moment_controls(z, gy, xi * xi * G))
    mean, se = np.zeros((L,) + (N,) * 3), np.zeros((L,) + (N,) * 3)
    edges = np.linspace(0, networks, int(folds) + 1).astype(int)
    for l in range(1, L):
        X = np.concatenate([np.concatenate(Fe[m]) for m in range(l)], axis=1)
        Y = np.concatenate(T[l]).reshape(networks, -1)
        Yc = np.empty_like(Y)
        for f in range(int(folds)):
            inb = np.zeros(networks, dtype=bool)
            inb[edges[f]:edges[f + 1]] = True
            Xo, Yo = X[~inb], Y[~inb]
            Xo = Xo - Xo.mean(0)
            beta, *_ = np.linalg.lstsq(Xo.T @ Xo, Xo.T @ (Yo - Yo.mean(0)), rcond=None)
            Yc[inb] = Y[inb] - X[inb] @ beta
        Yc = Yc.reshape((networks,) + (N,) * 3)
        mean[l] = Yc.mean(0)
        se[l] = Yc.std(0, ddof=1) / np.sqrt(networks)
    return mean, se


def residual_multi_kappa3_rows(activations=("relu", "gelu"), gamma=0.5, *,
                               x=((1.0, 0.0), (0.6, 0.8)), widths=(16, 32), depth=4,
                               networks=32000, seed=89):
    """Rows: the N-input residual three-point function kappa3 against real networks.

    As :func:`residual_multi_ntk_mean_rows` (residual criticality, ``n_out = width``, two
    widths extrapolated, allowance ``|m(2n) - m(n)|/2``), with
    :func:`residual_multi_kappa3_measure` against ``pdlt.statistics(..., get="kappa3")``
    (:func:`pdlt.theory.residual_multi_mean.residual_kappa3_multi`); non-odd activations
    only (odd ones have kappa3 = 0). One row per entry ``kappa3_abc``, ``a <= b``, at layer
    ``depth``; key ``"residual kappa3 (N inputs)"``. Measured at the defaults (seed 89):
    relu 19-24 %, gelu 21-24 %, max z 1.3, x0.5 and x2 rejected at z >= 7.5. Cost ~5 CPU s
    per activation.

    Returns
    -------
    list of :class:`pdlt.report.rows.Row`
    """
    import pdlt

    from ..theory.residual import residual_mlp
    from .rows import make_row, width_extrapolation

    x = np.atleast_2d(np.asarray(x, float))
    N, L = x.shape[0], depth
    rows = []
    for act in activations:
        ms = []
        for k, n in enumerate(widths):
            m = residual_mlp(act, gamma, n0=x.shape[1], width=n, depth=L, n_out=n)
            ms.append(residual_multi_kappa3_measure(m, x, networks, seed=seed + k))
        th = pdlt.statistics(m, x, get="kappa3").kappa3[L - 1]
        ext, se, al = width_extrapolation(ms[0][0][L - 1], ms[0][1][L - 1],
                                          ms[1][0][L - 1], ms[1][1][L - 1])
        for a in range(N):
            for b in range(a, N):
                for c in range(N):
                    ix = (a, b, c)
                    rows.append(make_row(f"kappa3_{a}{b}{c} (gamma={gamma:g}, {N} inputs, "
                                         f"2m({widths[1]})-m({widths[0]}))", act, widths[1], L,
                                         float(th[ix]), float(ext[ix]), float(se[ix]),
                                         float(al[ix]), key="residual kappa3 (N inputs)"))
    return rows


def residual_mixed_vertex_measure(mlp, x, networks, seed=0, *, chunk=2000):
    r"""``n C^(l,L)_{(ab)(cd)} = n Cov(Ghat^(l)_ab, z^(L)_{i;c} z^(L)_{i;d})``, real residual MLPs.

    The mixed vertex of :func:`pdlt.theory.residual_multi_mean.residual_mixed_vertex` on
    ``networks`` i.i.d. numpy networks (float64, generator ``seed``; equal hidden widths
    ``n``; the output layer plain, ``n_out`` neurons, or residual, ``n_out = n``). Per network:
    every hidden metric ``Ghat^(l) = (1/n) sum_j z_j z_j^T`` and the output pair integrated
    given layer L-1 and averaged over the output neurons, ``mean_i E[z_i z_i^T | L-1] =
    xi^2 (C_b + C_W S) + gamma^2 mean_i y_i y_i^T``; the covariance over networks (delta-method
    standard error of the centred products), times ``n``.

    Returns
    -------
    mean, stderr : ndarray (L-1, N, N, N, N)
        ``n C^(l,L)`` for l = 1..L-1.
    """
    x = np.atleast_2d(np.asarray(x, float))
    L = mlp.depth
    w = mlp.widths
    n = int(w[1])
    if len(set(w[1:L])) != 1:
        raise ValueError(f"residual_mixed_vertex_measure needs equal hidden widths; got {w}")
    act = mlp.activation
    rng = np.random.default_rng(seed)
    Gs, Qs = [], []
    for start in range(0, networks, chunk):
        M = min(chunk, networks - start)
        W = rng.normal(size=(M, n, w[0])) * np.sqrt(mlp.C_W[0] / w[0])
        b = rng.normal(size=(M, n, 1)) * np.sqrt(mlp.C_b[0])
        z = W @ x.T + b
        G = [np.einsum("mia,mib->mab", z, z) / n]
        for l in range(1, L - 1):
            W = rng.normal(size=(M, n, n)) * np.sqrt(mlp.C_W[l] / n)
            b = rng.normal(size=(M, n, 1)) * np.sqrt(mlp.C_b[l])
            z = mlp.xi[l] * (W @ act.sigma(z) + b) + mlp.gamma[l] * z
            G.append(np.einsum("mia,mib->mab", z, z) / n)
        sz = act.sigma(z)
        l = L - 1
        q = mlp.xi[l] ** 2 * (mlp.C_b[l] + mlp.C_W[l] * np.einsum("mia,mib->mab", sz, sz) / n)
        if mlp.gamma[l] != 0.0:
            q = q + mlp.gamma[l] ** 2 * G[-1]
        Gs.append(np.stack(G, 1))
        Qs.append(q)
    Gs, Qs = np.concatenate(Gs), np.concatenate(Qs)          # (R, L-1, N, N), (R, N, N)
    dG, dQ = Gs - Gs.mean(0), Qs - Qs.mean(0)
    psi = n * np.einsum("rlab,rcd->rlabcd", dG, dQ)
    R_ = len(psi)
    return psi.sum(0) / (R_ - 1), psi.std(0, ddof=1) / np.sqrt(R_)


def residual_mixed_vertex_rows(cases=(("tanh", True), ("relu", False)), gamma=0.5, *,
                               x=((1.0, 0.0), (0.6, 0.8)), widths=(32, 64), depth=4,
                               networks=16000, seed=97):
    """Rows: the residual mixed vertex ``n C^(l,L)`` of the Hebbian shift against real networks.

    For each ``(activation, residual_output)`` a residual MLP at residual criticality
    (``n_out = width`` when the output is residual, else 1: the two cases
    :func:`pdlt.learning.finite_bayes.hebbian_kernel_shift` serves for tanh and relu), measured
    by :func:`residual_mixed_vertex_measure` at the two widths (32/64: its 1/n terms are
    large), extrapolated ``2 m(2n) - m(n)`` with the allowance ``|m(2n) - m(n)|/2``, against
    :func:`pdlt.theory.residual_multi_mean.residual_mixed_vertex` times the width. One row per
    entry ``(ab)(cd)``, ``a <= b``, ``c <= d``, at the last hidden layer; key
    ``"residual mixed vertex (N inputs)"``. Measured at the defaults (seed 97): tanh (residual
    output) 11-24 %, relu (plain output) 22-32 %, max z 2.0, x0.5 and x2 rejected at z >= 5.3.
    Cost ~7 CPU s per case.

    Returns
    -------
    list of :class:`pdlt.report.rows.Row`
    """
    from ..theory.residual import residual_mlp
    from ..theory.residual_multi_mean import residual_mixed_vertex
    from .rows import make_row, width_extrapolation

    x = np.atleast_2d(np.asarray(x, float))
    N, L = x.shape[0], depth
    pairs = [(a, b) for a in range(N) for b in range(a, N)]
    rows = []
    for act, res_out in cases:
        ms = []
        for k, n in enumerate(widths):
            m = residual_mlp(act, gamma, n0=x.shape[1], width=n, depth=L,
                             n_out=n if res_out else 1)
            ms.append(residual_mixed_vertex_measure(m, x, networks, seed=seed + k))
        th = widths[1] * residual_mixed_vertex(m, x)[L - 2]
        ext, se, al = width_extrapolation(ms[0][0][L - 2], ms[0][1][L - 2],
                                          ms[1][0][L - 2], ms[1][1][L - 2])
        out = "residual" if res_out else "plain"
        for p in pairs:
            for q in pairs:
                ix = p + q
                rows.append(make_row(f"n C^({L - 1},{L})_({ix[0]}{ix[1]})({ix[2]}{ix[3]}) "
                                     f"(gamma={gamma:g}, {out} output, {N} inputs, "
                                     f"2m({widths[1]})-m({widths[0]}))", act, widths[1], L - 1,
                                     float(th[ix]), float(ext[ix]), float(se[ix]),
                                     float(al[ix]), key="residual mixed vertex (N inputs)"))
    return rows



# ---------------------------------------------------------------------------
# (h40) N-input residual P and Q (the dNTK statistics) against real residual networks
# ---------------------------------------------------------------------------

def residual_multi_dntk_measure(act, gamma, x, widths, depth, networks, seed, *, neurons=4,
                                layers=None):
    """P and Q of real residual networks at the inputs ``x`` (N, n0), two widths.

    A residual MLP at residual criticality (:func:`pdlt.theory.residual.residual_mlp`,
    ``n_out = width``, ``lambda_b = 0.5``) per width, measured by
    :class:`pdlt.experiment.Ensemble` (torch autodiff dNTK on the ordered pairs of
    ``neurons`` neurons per network; seeds ``seed``, ``seed + 1``) at ``layers`` (default
    2..depth), extrapolated ``2 m(2n) - m(n)`` with the measured allowance ``|m(2n) -
    m(n)|/2`` (:func:`pdlt.report.rows.width_extrapolation`).

    Returns
    -------
    dict
        ``{"P", "Q": (ext, se, allowance, theory)}``, each (layers, N, N, N, N), the theory
        :func:`pdlt.statistics` (exact N-input P, Q:
        :mod:`pdlt.theory.residual_multi_dntk`); ``"layers"``; ``"seconds"`` (wall).
    """
    import time

    import pdlt

    from ..experiment import Ensemble
    from ..theory.residual import residual_mlp
    from .rows import width_extrapolation

    x = np.atleast_2d(np.asarray(x, float))
    layers = list(range(2, depth + 1)) if layers is None else [int(v) for v in layers]
    t0 = time.perf_counter()
    ms = []
    for k, n in enumerate(widths):
        m = residual_mlp(act, gamma, n0=x.shape[1], width=n, depth=depth, n_out=n,
                         lambda_b=0.5)
        ms.append(Ensemble(m, networks=networks, seed=seed + k).measure(
            x, stats=["P", "Q"], layers=layers, progress=False, derivative_neurons=neurons))
    th = pdlt.statistics(m, x, get=["P", "Q"])
    out = {"layers": layers}
    for name in ("P", "Q"):
        a, b = ms[0][name], ms[1][name]
        ext, se, al = width_extrapolation(a.mean, a.stderr, b.mean, b.stderr)
        out[name] = (ext, se, al, np.asarray(th[name])[[l - 1 for l in layers]])
    out["seconds"] = time.perf_counter() - t0
    return out


#: default cases of :func:`residual_multi_dntk_rows` (``pdlt report --full``): two distinct
#: inputs ``(1, 0), (0.6, 0.8)``, gamma = 0.5, depth 3, widths 16/32, rows at layer 3 (the
#: two-depth terms enter there). tanh: P and Q through every sigma'' term; ReLU: P = 0
#: exactly (sigma'' = 0 pointwise: absolute rows), Q through the lambda_W terms and F's
#: form. Measured on 2 busy cores (seeds 140-143): tanh 4000 networks per width, best P
#: 16 %, Q 20 %, every entry within 1.3 se; ReLU 4000 networks (another seed): Q 24-30 %,
#: every entry within 0.8 se, hence 6000 here. GELU (4000 networks) passes every entry but
#: at these inputs is not a case: its autodiff dNTK estimates are heavy-tailed (P 51 %,
#: Q 25.5 %; two runs of Q read 5-10 % high and 10-15 % low); with the inputs scaled by 0.7
#: (K1_aa = 0.66) they are milder (one run, 4000 networks: Q 21 %, P 41 % at layer 3,
#: every entry within 1.6 se), so GELU's case is Q there (the only non-odd sigma'' case).
#: Entries ``(activation, networks, input scale)``.
RESIDUAL_MULTI_DNTK_CASES = (("tanh", 4000, 1.0), ("relu", 6000, 1.0), ("gelu", 5000, 0.7))


def residual_multi_dntk_rows(cases=RESIDUAL_MULTI_DNTK_CASES, gamma=0.5, *,
                             x=((1.0, 0.0), (0.6, 0.8)), widths=(16, 32), depth=3, seed=140):
    """Rows: the N-input residual P and Q against real residual networks, last layer.

    One row per entry of ``P`` (up to its symmetry ``a1 <-> a2``) and of ``Q`` at layer
    ``depth``, keys ``"residual P (N inputs)"``, ``"residual Q (N inputs)"``, measured by
    :func:`residual_multi_dntk_measure` for each ``(activation, networks, scale)`` of
    ``cases`` at the inputs ``scale * x``.

    Returns
    -------
    list of :class:`pdlt.report.rows.Row`
    """
    import itertools

    from .rows import make_row

    x = np.atleast_2d(np.asarray(x, float))
    N = x.shape[0]
    rows = []
    for i, (act, networks, scale) in enumerate(cases):
        r = residual_multi_dntk_measure(act, gamma, scale * x, widths, depth, networks,
                                        seed + 2 * i, layers=[depth])
        xs = "" if scale == 1.0 else f", inputs x{scale:g}"
        for name in ("P", "Q"):
            ext, se, al, th = (v[0] for v in r[name])
            for q in itertools.product(range(N), repeat=4):
                if name == "P" and q[2] < q[1]:
                    continue
                rows.append(make_row(
                    f"{name}[{''.join(map(str, q))}] (gamma={gamma:g}, {N} inputs{xs}, "
                    f"2m({widths[1]})-m({widths[0]}))", act, widths[1], depth, float(th[q]),
                    float(ext[q]), float(se[q]), float(al[q]),
                    key=f"residual {name} (N inputs)"))
    return rows



# ---------------------------------------------------------------------------
# h42: N-input residual R and T (pdlt.theory.residual_multi_ddi) against real networks
# ---------------------------------------------------------------------------

#: entries of :func:`residual_multi_ddi_rows`: the diagonal and the ones that mix the inputs
RESIDUAL_DDI_ENTRIES = ((0, 0, 0, 0), (0, 0, 1, 1), (0, 1, 0, 1), (0, 1, 1, 0), (0, 0, 0, 1))


def residual_multi_ddi_measure(act, gamma=0.5, *, x=((1.0, 0.0), (0.6, 0.8)), widths=(16, 32),
                               depth=3, networks=1500, neurons=4, seed=4200, lambda_b=0.5):
    """N-input R and T of real residual networks at two widths, extrapolated, and the theory.

    A residual MLP at residual criticality (:func:`pdlt.theory.residual.residual_mlp`,
    ``n_out = width``: every layer l >= 2 residual) at the inputs ``x`` (N, n0); the
    ddNTK estimators of :class:`pdlt.experiment.Ensemble` (torch autodiff on the ordered
    pairs of ``neurons`` neurons per network, last layer) at each width with independent
    seeds, extrapolated ``2 m(2n) - m(n)`` with allowance ``|m(2n) - m(n)|/2``
    (:func:`pdlt.report.rows.width_extrapolation`).

    Returns
    -------
    dict
        ``{"R": (theory, extrapolated, stderr, allowance), "T": (...)}``, each an ndarray
        (N, N, N, N) at layer ``depth``, and ``"seconds"`` (wall, both widths).
    """
    import time

    import pdlt

    from ..experiment import Ensemble
    from ..theory.residual import residual_mlp
    from .rows import width_extrapolation

    x = np.atleast_2d(np.asarray(x, float))
    L = depth
    t0 = time.perf_counter()
    ms = []
    for k, n in enumerate(widths):
        m = residual_mlp(act, gamma, n0=x.shape[1], width=n, depth=L, n_out=n,
                         lambda_b=lambda_b)
        ms.append(Ensemble(m, networks=networks, seed=seed + k).measure(
            x, stats=("R", "T"), layers=[L], progress=False, derivative_neurons=neurons))
    th = pdlt.statistics(m, x, get=["R", "T"])
    out = {"seconds": time.perf_counter() - t0}
    for s in ("R", "T"):
        e = [ms[i].layer(L)[s] for i in range(2)]
        ext, se, al = width_extrapolation(e[0].mean, e[0].stderr, e[1].mean, e[1].stderr)
        out[s] = (np.asarray(getattr(th, s)[L - 1], float), ext, se, al)
    return out


def residual_multi_ddi_rows(activations=("tanh",), gamma=0.5, *, entries=RESIDUAL_DDI_ENTRIES,
                            **kw):
    """Rows: the N-input residual R and T against real residual networks, last layer.

    :func:`residual_multi_ddi_measure` per activation (keyword arguments passed on;
    default tanh, gamma = 0.5, two inputs ``(1, 0)``, ``(0.6, 0.8)``, depth 3, widths 16/32,
    1500 networks, 4 neurons), one row per entry of ``entries`` and statistic, keys
    ``"residual R (N inputs)"``, ``"residual T (N inputs)"``. Cost (2 shared cores): ~2.5
    min for the default case. Returns a list of :class:`pdlt.report.rows.Row`.
    """
    from .rows import make_row

    rows = []
    for act in activations:
        d = residual_multi_ddi_measure(act, gamma, **kw)
        L = kw.get("depth", 3)
        ws = kw.get("widths", (16, 32))
        for s in ("R", "T"):
            t, ext, se, al = d[s]
            for q in entries:
                rows.append(make_row(f"{s}[{''.join(map(str, q))}] (gamma={gamma:g}, "
                                     f"{t.shape[0]} inputs, 2m({ws[1]})-m({ws[0]}))", act,
                                     ws[1], L, float(t[q]), float(ext[q]), float(se[q]),
                                     float(al[q]), key=f"residual {s} (N inputs)"))
    return rows



# ---------------------------------------------------------------------------
# h43: trained residual networks against the order-1/n end of training
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ResidualTrainingCase:
    """One trained-residual-network comparison of :func:`residual_training_rows`.

    ``X`` (N_A, n0) training inputs with targets ``y``; ``X_test`` (N_B, n0) or
    None (one-input case: the training outputs and the NTK there);
    ``algorithm``/``steps`` as :func:`pdlt.learning.finite_training.algorithm_schedule`
    (gradient steps at ``eta = 1 / lambda_max(Theta_AA)``); ``variance``: trained
    variance rows at the test inputs (control variate, plain output layer with xi = 1).
    """

    activation: str = "tanh"
    gamma: float = 0.5
    X: tuple = ((math.sqrt(2.0), 0.0),)
    y: tuple = (1.5,)
    X_test: tuple | None = None
    depth: int = 3
    algorithm: str = "newton"
    steps: int = 0
    widths: tuple = (16, 32)
    networks: int = 40000
    seed: int = 0
    variance: bool = False

    @property
    def label(self):
        alg = self.algorithm + (f" ({self.steps} steps)" if self.algorithm != "newton" else "")
        where = (f"{len(self.X)} input" if self.X_test is None
                 else f"{len(self.X)} train + {len(self.X_test)} test inputs")
        return f"gamma={self.gamma:g}, {where}, {alg}"


#: the default cases. One input (what pdlt.statistics serves for residual MLPs today):
#: tanh, gamma 0.5, depth 3, K1 = 1, target y = 1.5 (3 sqrt(K^(L))), one Newton leap.
#: Measured 2026-12-04 (40 000 networks, antithetic pairs; theory m1 = -1.1725, NTK change
#: -8.755): n (E[z(1)] - y) = -1.057(34) / -1.100(53) / -1.123(79) at n = 16 / 32 / 64,
#: n E[H(1) - H(0)] = -5.79(5) / -6.90(5) / -7.76(5), i.e. 2m(2n) - m(n) = -8.02(11) from
#: 16/32 and -8.62(10) from 32/64: the 1/n^2 term of the NTK change is large, the two-width
#: extrapolation removes it. The variance at the training input after the leap is all
#: order 1/n (v_inf = 0; theory n Var = 2.454): 1.65(3) / 1.96(3) / 2.18(3) at n = 16 / 32
#: / 64 (20 000 networks), 2m(2n) - m(n) = 2.28(7) and 2.39(7), and the second Richardson
#: step (the 1/n^2 term removed too) 2.43. Report seed: mean 21 %, NTK change 18 %, variance 22 %
#: resolution, all pass. Cost ~25 CPU s (n = 16, 32). Not included: gamma 0.7, depth 4
#: (theory: mean -1.889, NTK change -17.06, variance 3.468): at seed 7 the NTK change reads
#: -10.10(20) / -12.58(20) / -14.42(12) at n = 16 / 32 / 64 (40 000 / 40 000 / 20 000
#: networks), so 2m(2n) - m(n) = -15.06 (16/32) and -16.27(32) (32/64), and the second
#: Richardson step (1/n^2 removed too) -16.67, 2 % from the theory; but the 1/n^2 term
#: shrinks by 0.74, not <= 0.5, from 16/32 to 32/64, so half the 16-to-32 change is too
#: small an allowance there (at the report seed that row missed by 0.01 of its bound 2.02;
#: the rows now allow the whole change, which it passes), and
#: n = 64 costs ~80 CPU s. The variance reads 2.11 / 2.64 / 3.06 (second
#: step 3.58 against 3.47), the mean -1.53(4) / -1.71(6) / -1.69(13). gamma 0.3, depth 4
#: passes at n = 16, 32 (23 %, 12 %, 16 %), not included for cost.
RESIDUAL_TRAINING_CASES = (ResidualTrainingCase(),)

#: N-input cases (issue #17: the trained mean's 1/n shift at test inputs): the report's
#: 'pair' task (2 training inputs at right angles, targets 0.6, -0.4; 3 test inputs on the
#: unit circle at angles pi/4, 2, 3.5), tanh, gamma 0.5, depth 3, from the N-input residual
#: statistics (N = 5; theory ~18 CPU s, shared by both cases). Measured 2026-12-04 (antithetic
#: pairs; report seed = case seed + 80; n (E[z] - m_inf) at test 1, the largest shift):
#:
#: * one Newton leap, n = 16, 32, 60 000 networks (~47 CPU s besides the theory): test 1
#:   0.583(17) / 0.582(27) against m1 = 0.526 (seed 2: 0.603(18) / 0.586(27)): resolution
#:   0.20, x0.5 / x2 rejected at z 11.9 / 17.6; tests 0 and 2 (m1 = -0.041, 0.072) are below
#:   the noise (unresolved rows). Both seeds read ~1.11 x m1 and flat from 16 to 32, so the
#:   16-to-32 change does not bound the higher-order term there, and n = 64 reads 0.624(55)
#:   (30 000 networks): the test-1 shift sits 10-20 % above m1 at n = 16-64. The plain MLP
#:   (gamma = 0, m1 = 0.519) does the same: 0.651(25) / 0.552(38) / 0.608(55) at n = 16 /
#:   32 / 64 (30 000 networks), so it is not the residual statistics. The split
#:   (benchmarks/residual_training_split.py --case 1, 16 000 networks) says a slow
#:   approach: the trained mean's dynamics piece (the output minus each network's frozen
#:   kernel map; noise 0.008, against 0.05 for the total, whose noise is the H1 piece)
#:   reads 0.513(10) / 0.491(8) at n = 16 / 32 against its 0.444 at test 1, the excess
#:   shrinking 0.069 -> 0.047 (x 0.68 per doubling, slower than 1/n^2 in the mean), and
#:   -0.776(16) / -0.802(14) against -0.839 at training input 0.
#:   NTK change (entry (0, 0), -4.445) extrapolated -4.05(6), allowance 0.58, resolution
#:   0.18; the trained variance at the training inputs (1.32, 1.11) and at tests 0, 1
#:   (0.275, 0.988) 14-22 %, all pass, x0.5 / x2 rejected at z >= 8.7.
#: * gradient descent to convergence (100 steps, eta = 1 / lambda_max), n = 32, 64, 8000
#:   networks (~87 CPU s besides the theory): test 1 -0.218(17) / -0.263(26) against m1 =
#:   -0.306, resolution 0.48 (passes; x0.5 not rejected, z 3.0; x2 z 9.5); the NTK change
#:   at test 0 (2.42, the largest entry) extrapolated 2.53(12), resolution 0.21, x0.5 / x2
#:   at z 10.6 / 18.4. Not affordable to <= 25 %: at n = 16, 32 the shift reads -0.197(6) /
#:   -0.217(10) (24 000 networks, seed 1), 0.71 of m1 and nearly flat, so the row there
#:   resolves 0.20 and FAILS (the 16-to-32 change, 0.02, is no bound on the higher-order
#:   term); n = 64 moves it to -0.271(22) (10 000 networks, ~80 CPU s), -0.263(26) at the
#:   report seed: the approach to m1 is slow, and <= 25 % at n = 32, 64 needs ~4x the
#:   networks (~300 CPU s). The plain MLP (gamma = 0, same task) reads the same: -0.193(8) /
#:   -0.214(12) at n = 16 / 32 against its m1 = -0.291. Where it sits
#:   (benchmarks/residual_training_split.py, n = 32, 4000 networks): the frozen kernel
#:   map's quadratic (A, B) piece reads -0.202(11) against -0.169, the dynamics (dNTK,
#:   ddNTK) -0.108(15) against -0.180 (plain: -0.217(13) against -0.170, -0.091(15) against
#:   -0.158): higher orders at n = 32 of the same size with and without the skip connection,
#:   not the residual statistics. At n = 16 some networks' frozen GD map diverges (eta
#:   lambda_max(H0) > 2), the sign of an expansion far from converged there.
RESIDUAL_TRAINING_N_INPUT_CASES = tuple(
    ResidualTrainingCase(X=((1.0, 0.0), (0.0, 1.0)), y=(0.6, -0.4),
                         X_test=tuple((math.cos(t), math.sin(t))
                                      for t in (0.25 * math.pi, 2.0, 3.5)),
                         algorithm=alg, steps=s, widths=w, networks=M, seed=seed,
                         variance=var)
    for alg, s, w, M, seed, var in (("gd", 100, (32, 64), 8000, 1, False),
                                    ("newton", 0, (16, 32), 60000, 2, True)))


#: gelu (not odd; plain output layer), gamma 0.5, depth 3: the 'pair' task's two training
#: inputs and one test input (angle 2; N = 3, theory ~12 CPU s), one Newton leap with the
#: trained variance, n = 16, 32, 40 000 networks (~17 CPU s of training). Not in the default
#: rows: at its report seed (83) the test-input shift reads 1.567(33) / 1.511(53) at n = 16
#: / 32 against m1 = 1.307 (resolution 0.20, passes, x0.5 / x2 at z 12.9 / 16.6), but the
#: training input 0 reads -2.112(37) / -2.115(60) against -1.796: 1.18 x m1, flat from 16
#: to 32, so that row FAILS (bound 0.24, off by 0.32). The NTK change (-16.25) reads
#: -16.83(39) extrapolated (allowance 2.15, resolution 0.23), the variance 0.33-0.41, all
#: pass. The plain MLP (gamma = 0) reads the same way: -2.351(58) against -2.087 (1.13 x)
#: and 1.720(50) against 1.579 (1.09 x), passing narrowly; 20 000 networks (seed 3) passed
#: everything (test 1.478(74), resolution 0.31). So after a Newton leap on this task the
#: trained mean sits 10-20 % above m1 at n = 16-64 for tanh and gelu, plain and residual
#: alike (RESIDUAL_TRAINING_N_INPUT_CASES, where the split of the tanh case shows the
#: excess shrinking with n, ~x 0.68 per doubling: a slow approach; not split for gelu).
RESIDUAL_TRAINING_GELU_CASE = ResidualTrainingCase(
    activation="gelu", X=((1.0, 0.0), (0.0, 1.0)), y=(0.6, -0.4),
    X_test=((math.cos(2.0), math.sin(2.0)),), algorithm="newton", networks=40000, seed=3,
    variance=True)


@functools.lru_cache(maxsize=8)
def _residual_training_statistics(activation, gamma, depth, width, X, X_test):
    """:func:`pdlt.learning.finite_training.training_statistics` of a case's residual MLP,
    cached: the N-input cases share their inputs (and cost ~18 s at N = 5, tanh)."""
    from ..learning.finite_training import training_statistics
    from ..theory.residual import residual_mlp

    X = np.asarray(X, float)
    mlp = residual_mlp(activation, gamma, n0=X.shape[1], width=width, depth=depth)
    return training_statistics(mlp, X, None if X_test is None else np.asarray(X_test, float))


def residual_training_case(case: ResidualTrainingCase, log=None) -> dict:
    """Theory and trained ensembles for one :class:`ResidualTrainingCase` (needs torch).

    Theory: :func:`pdlt.learning.finite_training.end_of_training` on the residual MLP's
    output-layer statistics (:func:`pdlt.learning.finite_training.training_statistics`).
    Measurement: :func:`pdlt.experiment.training.train_ensemble` (residual forward pass,
    antithetic pairs, NTK recorded) at every width, seeds ``1000 seed + n``.

    Returns
    -------
    dict
        ``m1``, ``m_inf`` (N,), the 1/n coefficient and infinite-width trained mean over
        the training then test inputs; ``d``, ``se`` (widths, N): ``n (E[z(T)] -
        m_inf)``; ``ntk_change`` (N, N) theory and ``dh``, ``dh_se`` (widths, N, N)
        measured, times n; ``v1``, ``dv``, ``dv_se`` for the test variances
        (``case.variance``); ``tv1``, ``tv_inf`` (N_A,) and ``tv``, ``tv_se``
        (widths, N_A): the variance over networks at the training inputs, ``n (Var -
        v_inf)``, by the plain sample variance (its noise is ~ ``v_inf + v1/n``: precise
        after a Newton leap, where ``v_inf = 0``); ``K_train`` (N_A,) the training
        inputs' kernel (the scale below which ``tv1`` counts as zero).
    """
    from ..experiment.training import train_ensemble
    from ..learning.finite_training import algorithm_schedule, end_of_training
    from ..theory.residual import residual_mlp
    from .finite_training import _infinite_width_map

    X = np.asarray(case.X, float)
    y = np.asarray(case.y, float)
    Xt = None if case.X_test is None else np.asarray(case.X_test, float)
    Na = X.shape[0]
    mlp = residual_mlp(case.activation, case.gamma, n0=X.shape[1], width=case.widths[0],
                       depth=case.depth)
    st = _residual_training_statistics(case.activation, case.gamma, case.depth,
                                       case.widths[0], case.X, case.X_test)
    ThA = st.Theta[:Na, :Na]
    kw = {} if case.algorithm == "newton" else dict(
        learning_rate=1.0 / np.linalg.eigvalsh(ThA)[-1], steps=case.steps)
    sched = algorithm_schedule(ThA, case.algorithm, **kw)
    pred = end_of_training(st, y, sched)
    m_inf = np.concatenate([pred.train_mean_infinite, pred.mean_infinite])
    m1 = np.concatenate([pred.train_mean_correction, pred.mean_correction])
    N = m1.size
    variance = case.variance and Xt is not None
    if variance and mlp.xi[-1] != 1.0:
        raise ValueError("the trained-variance control variate needs a plain output layer "
                         "with xi = 1 (pdlt.report.learning.hidden_kernels)")
    C0 = _infinite_width_map(st, sched)[Na:] if variance else None
    d, se, dh, dh_se, dv, dv_se, tv, tv_se = [], [], [], [], [], [], [], []
    tv_inf = np.diag(pred.train_cov_infinite)
    for n in case.widths:
        if log:
            log(f"  residual training, {case.activation}, {case.label}: n={n}, "
                f"{case.networks} networks")
        seed = 1000 * case.seed + n
        m_n = mlp.with_(width=n)
        te = train_ensemble(m_n, X, y, X[:1] if Xt is None else Xt, networks=case.networks,
                            step_matrices=sched, seed=seed, antithetic=True, ntk=True)
        ma = te.mean(on="train")
        mean, err = ma.mean[:, 0], ma.stderr[:, 0]
        if Xt is not None:
            mt = te.mean(on="test")
            mean, err = np.r_[mean, mt.mean[:, 0]], np.r_[err, mt.stderr[:, 0]]
        d.append(n * (mean - m_inf))
        se.append(n * err)
        tc = te.cov(on="train")
        tv.append(n * (np.diag(tc.mean) - tv_inf))
        tv_se.append(n * np.diag(tc.stderr))
        ch = te.ntk_change()
        dh.append(n * ch.mean[:N, :N])
        dh_se.append(n * ch.stderr[:N, :N])
        if variance:
            from .learning import hidden_kernels
            v = te.variance(C0, hidden_kernels(m_n, np.r_[X, Xt], case.networks, seed=seed))
            dv.append(n * (v.mean - np.diag(pred.cov_infinite)))
            dv_se.append(n * v.stderr)
    return {"case": case, "n_train": Na, "m1": m1, "m_inf": m_inf, "d": np.array(d),
            "se": np.array(se), "ntk_change": pred.ntk_change, "dh": np.array(dh),
            "dh_se": np.array(dh_se), "v1": np.diag(pred.cov_correction) if variance else None,
            "dv": np.array(dv), "dv_se": np.array(dv_se),
            "tv1": np.diag(pred.train_cov_correction), "tv_inf": tv_inf, "tv": np.array(tv),
            "tv_se": np.array(tv_se), "K_train": np.diag(st.K)[:Na].copy()}


def residual_training_case_rows(res) -> list:
    """Rows of one :func:`residual_training_case` result.

    * ``residual trained mean (1/n)``: ``n (E[z(T)] - m_inf)`` at the largest width
      against ``m1``, at the training input with the largest ``|m1|`` (none when
      training pins the outputs to the targets) and at every test input; allowance
      ``|d(n_max/2) - d(n_max)|``, the measured size of the 1/n^2 term there (as the
      plain rows of :mod:`pdlt.report.finite_training`);
    * ``residual NTK change (1/n)``: ``n E[H(T) - H(0)]`` at its largest predicted entry,
      two-width extrapolation ``2 m(2n) - m(n)`` of the two largest widths
      (:func:`pdlt.report.rows.width_extrapolation`) with the allowance ``|m(2n) -
      m(n)|``, the whole measured change, not its half: here the terms beyond 1/n do not
      halve per doubling. Measured at n = 16 / 32 / 64 (gamma 0.5, depth 3): the change
      shrinks by 0.77 from 16/32 to 32/64, and the remainder of the 16/32 extrapolation
      (against the second Richardson step) is 0.72 of ``|m(32) - m(16)|``;
    * ``residual trained variance (1/n)``: at the training inputs (``|v1| >= 0.2 max
      |v1|``), ``n (Var z(T) - v_inf)`` extrapolated the same way with the same allowance
      (remainder 0.55 of the change); with ``case.variance`` also at the test inputs, at
      the largest width with the allowance ``|dv(n_max/2) - dv(n_max)|``.
    """
    from .rows import make_row

    case = res["case"]
    Na, m1, d, se = res["n_train"], res["m1"], res["d"], res["se"]
    n, L, act = case.widths[-1], case.depth, case.activation
    rows = []
    i_tr = int(np.argmax(np.abs(m1[:Na])))
    # no training-input row when training pins the outputs to the targets (|m1| there is
    # then what 100 steps leave unconverged, ~1e-5 of the kernel's scale)
    scale = max(np.abs(m1).max(), math.sqrt(res["K_train"].max()))
    idx = ([i_tr] if abs(m1[i_tr]) > 1e-3 * scale else []) + list(range(Na, m1.size))
    for i in idx:
        where = f"train {i}" if i < Na else f"test {i - Na}"
        rows.append(make_row(f"trained mean shift n(m-m_inf), {case.label}, {where}", act, n, L,
                             m1[i], d[-1, i], se[-1, i], abs(d[-2, i] - d[-1, i]),
                             key="residual trained mean (1/n)"))
    th = res["ntk_change"]
    k = np.unravel_index(np.argmax(np.abs(th)), th.shape)
    ext, s, al = width_extrapolation(res["dh"][-2][k], res["dh_se"][-2][k], res["dh"][-1][k],
                                     res["dh_se"][-1][k])
    rows.append(make_row(f"NTK change n E[H(T)-H(0)], {case.label}, entry "
                         f"{tuple(int(v) for v in k)}, 2m({n})-m({case.widths[-2]})", act, n, L,
                         th[k], ext, s, 2.0 * al, key="residual NTK change (1/n)"))
    tv1 = res["tv1"]
    # none after gradient descent to convergence: the training outputs are pinned to the
    # targets at every width (tv1 is then rounding, ~1e-12 of the kernel)
    pinned = np.abs(tv1).max() <= 1e-6 * res["K_train"].max()
    for a in [] if pinned else np.flatnonzero(np.abs(tv1) >= 0.2 * np.abs(tv1).max()):
        ext, s, al = width_extrapolation(res["tv"][-2][a], res["tv_se"][-2][a], res["tv"][-1][a],
                                         res["tv_se"][-1][a])
        rows.append(make_row(f"trained variance shift n(v-v_inf), {case.label}, train {a}, "
                             f"2m({n})-m({case.widths[-2]})", act, n, L, tv1[a], ext, s, 2.0 * al,
                             key="residual trained variance (1/n)"))
    if res["v1"] is not None:
        v1, dv, dv_se = res["v1"], res["dv"], res["dv_se"]
        for b in np.flatnonzero(np.abs(v1) >= 0.2 * np.abs(v1).max()):
            rows.append(make_row(f"trained variance shift n(v-v_inf), {case.label}, test {b}",
                                 act, n, L, v1[b], dv[-1, b], dv_se[-1, b],
                                 abs(dv[-2, b] - dv[-1, b]), key="residual trained variance (1/n)"))
    return rows


def residual_training_rows(cases=None, *, seed=0, log=None) -> list:
    """Trained residual networks against the order-1/n end-of-training prediction.

    Default cases: :data:`RESIDUAL_TRAINING_CASES` (one input) and
    :data:`RESIDUAL_TRAINING_N_INPUT_CASES` (two training and three test inputs, from the
    N-input residual statistics of :func:`pdlt.statistics`); a case whose theory raises
    NotImplementedError (a statistic :func:`pdlt.statistics` does not serve) is skipped
    with a log line. ``seed`` is added to every case's seed. Rows:
    :func:`residual_training_case_rows`. Cost (measured 2026-12-04, report seed): 162
    CPU s for the three default cases: the one-input tanh case ~25, the N-input ones ~18
    for their shared theory (computed once, :func:`_residual_training_statistics`) plus
    ~75 (gradient descent, n = 32, 64) and ~45 (Newton leap, n = 16, 32, with the
    variance). At the report seed every row passes; the N-input rows whose theory is
    below the noise (tests 0 and 2 of the mean, test 2 of the variance) are unresolved,
    and the gradient-descent mean row (resolution 0.48) does not reject x0.5.
    """
    import dataclasses

    if cases is None:
        cases = RESIDUAL_TRAINING_CASES + RESIDUAL_TRAINING_N_INPUT_CASES
    rows = []
    for case in cases:
        case = dataclasses.replace(case, seed=case.seed + seed)
        try:
            res = residual_training_case(case, log=log)
        except NotImplementedError as exc:
            if log:
                log(f"  residual training, {case.label}: skipped ({str(exc).splitlines()[0]})")
            continue
        rows += residual_training_case_rows(res)
    return rows


__all__ += ["ResidualTrainingCase", "RESIDUAL_TRAINING_CASES", "RESIDUAL_TRAINING_N_INPUT_CASES",
            "RESIDUAL_TRAINING_GELU_CASE",
            "residual_training_case", "residual_training_case_rows", "residual_training_rows"]
