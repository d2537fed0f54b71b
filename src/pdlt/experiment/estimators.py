r"""Estimators with standard errors for the statistics of ``shared/NOTATION.md``.

numpy only: the ensemble engine (:mod:`pdlt.experiment.ensemble`) reduces
each network to a few *sufficient statistics* (neuron averages such as
``mean_i z_{i;a} z_{i;b}``), and this module turns their sums into estimates.

How the error bars are made
---------------------------
Networks are independent; neurons inside one network are not. So every
sufficient statistic is first averaged over the neurons (or neuron pairs with
the index pattern the statistic needs) *inside* each network, and the
networks are then the independent samples. The M networks are split into
``G = min(M, 100)`` contiguous groups by network index (so the groups, and
hence the numbers, do not depend on how the work was chunked). Every
estimate is a smooth function ``f`` of the ensemble means of the sufficient
statistics, and is reported with the delete-one-group jackknife:

.. math::
    \hat f = G f(\bar s) - (G-1)\,\overline{f(\bar s_{(-g)})},\qquad
    \mathrm{se}^2 = \frac{G-1}{G}\sum_g \big(f(\bar s_{(-g)}) - \overline{f(\bar s_{(-g)})}\big)^2.

For ``f`` linear in the means this is the plain mean and its standard error
over groups. For ``f`` quadratic in the means (every connected correlator
here: ``E[XY] - E[X]E[Y]``) the bias-corrected jackknife equals the
U-statistic over groups, which is *exactly* unbiased; so every estimator in
this module is an exactly unbiased estimator of the finite-width quantity it
names (``n x`` the connected correlator). What remains is the truncation of
the 1/n expansion: the measured ``n x (connected correlator)`` equals the
O(1/n) coefficient (V, A, B, ...) plus O(1/n) corrections, i.e. the
``O(1/n^2)`` terms of the correlator divided by ``1/n``.

Calibration (``tests/experiment/test_estimators.py``, synthetic data with
known truth): the reported standard errors match the scatter of replicate
ensembles within the test's 15 %, and 2-sigma intervals of statistics linear
in the means (K, Theta, B, F, ...) cover ~95 %. For the variance-type
estimators (V, A, D) with small or strongly non-Gaussian ensembles the
sampling distribution is skewed and coverage is lower: 0.83-0.92 at
M = 120-1000 on the synthetic stress case (neurons sharing a chi^2_6 scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import gaussian

__all__ = ["Estimate", "GroupSums", "jackknife", "n_groups", "group_of",
           "STATISTICS", "SUFFICIENT", "estimate_statistic", "mean_estimate",
           "gaussian_expectation", "metric_martingale",
           "vertex_from_martingale", "ntk_martingale"]

#: Statistic names of ``shared/NOTATION.md`` that :func:`estimate_statistic` knows,
#: plus the two separate V estimators.
STATISTICS = ("K", "G1", "V", "V_pair", "V_same", "Theta", "A", "B", "D", "F",
              "P", "Q", "R", "S", "T", "U")


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate with its standard error.

    Attributes
    ----------
    mean : float or ndarray
        The estimate (shape of the statistic: scalar for one input, one axis
        per input index otherwise).
    stderr : float or ndarray
        Its standard error (same shape), from the jackknife over groups of
        networks.
    n_networks : int
        Number of networks it was measured on.
    """

    mean: np.ndarray | float
    stderr: np.ndarray | float
    n_networks: int

    def to_dict(self) -> dict:
        """``{"mean": ..., "stderr": ...}`` with arrays as nested lists."""
        def conv(v):
            v = np.asarray(v)
            return v.item() if v.ndim == 0 else v.tolist()
        return {"mean": conv(self.mean), "stderr": conv(self.stderr)}

    def zscore(self, theory) -> np.ndarray:
        """``(mean - theory) / stderr``, elementwise."""
        return (np.asarray(self.mean) - np.asarray(theory)) / np.asarray(self.stderr)


def n_groups(n_networks: int) -> int:
    """Number of jackknife groups: ``min(M, 100)``."""
    return int(min(n_networks, 100))


def group_of(index, n_networks: int) -> np.ndarray:
    """Jackknife group of each network index (contiguous, near-equal groups)."""
    G = n_groups(n_networks)
    return (np.asarray(index, dtype=np.int64) * G) // n_networks


class GroupSums:
    """Per-group sums of named sufficient statistics.

    Parameters
    ----------
    n_networks : int
        Total number of networks M (fixes the groups).

    Notes
    -----
    :meth:`add` takes per-network values for a contiguous range of network
    indices; the order of calls does not matter (sums are exact up to
    floating-point association, which is below 1e-15 relative).
    """

    def __init__(self, n_networks: int):
        self.n_networks = int(n_networks)
        self.G = n_groups(self.n_networks)
        self.counts = np.bincount(group_of(np.arange(self.n_networks), self.n_networks),
                                  minlength=self.G).astype(float)
        self.sums: dict[str, np.ndarray] = {}

    def add(self, name: str, values, start: int) -> None:
        """Add per-network values of shape (B, ...) for networks ``start..start+B-1``."""
        values = np.asarray(values, dtype=float)
        groups = group_of(np.arange(start, start + values.shape[0]), self.n_networks)
        if name not in self.sums:
            self.sums[name] = np.zeros((self.G,) + values.shape[1:])
        np.add.at(self.sums[name], groups, values)

    def __contains__(self, name):
        return name in self.sums


def jackknife(f, sums: GroupSums, names) -> tuple:
    """Bias-corrected delete-one-group jackknife of ``f(*means)``.

    Parameters
    ----------
    f : callable
        ``f(m1, m2, ...)`` of the ensemble means of the named sufficient
        statistics; must broadcast over a leading group axis.
    sums : GroupSums
    names : sequence of str

    Returns
    -------
    mean, stderr : ndarray
    """
    G = sums.G
    tot = [sums.sums[n].sum(axis=0) for n in names]
    M = sums.counts.sum()
    full = f(*[t / M for t in tot])
    if G < 2:
        return np.asarray(full), np.full(np.shape(full), np.nan)
    loo = [(t[None] - sums.sums[n]) / (M - sums.counts).reshape((G,) + (1,) * np.ndim(t))
           for t, n in zip(tot, names)]
    fg = np.asarray(f(*loo))
    fbar = fg.mean(axis=0)
    est = G * np.asarray(full) - (G - 1) * fbar
    # sum of squares scaled by the largest deviation: no overflow of the squares
    # where the deviations themselves are finite (e.g. K ~ 1e200 deep in the
    # chaotic phase); a zero scale gives se = 0
    dev = fg - fbar
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.max(np.abs(dev), axis=0)
        safe = np.where((scale > 0) & np.isfinite(scale), scale, 1.0)
        ss = ((dev / safe) ** 2).sum(axis=0)
    se = np.where(np.isfinite(scale), safe * np.sqrt((G - 1) / G * ss), scale)
    return est, se


def mean_estimate(values) -> Estimate:
    """Estimate of ``E[X]`` from i.i.d. samples of shape (M, ...) (no grouping)."""
    values = np.asarray(values, dtype=float)
    M = values.shape[0]
    se = values.std(axis=0, ddof=1) / np.sqrt(M) if M > 1 else np.full(values.shape[1:], np.nan)
    return Estimate(values.mean(axis=0), se, M)


# ---------------------------------------------------------------------------
# the statistics as functions of sufficient statistics
# ---------------------------------------------------------------------------

def _outer(a, b):
    # a (..., N, N), b (..., N, N) -> (..., N, N, N, N) with [a b c d] = a[a,b] b[c,d]
    return a[..., :, :, None, None] * b[..., None, None, :, :]


def _cumulant4(m4, m2):
    # E z_a z_b z_c z_d - (K_ab K_cd + K_ac K_bd + K_ad K_bc)
    return (m4 - _outer(m2, m2) - np.swapaxes(_outer(m2, m2), -3, -2)
            - np.einsum("...ad,...bc->...abcd", m2, m2))


#: sufficient statistics each statistic needs (names produced by the engine)
SUFFICIENT = {
    "K": ("zz",),
    "G1": ("zz",),
    "V_pair": ("zzzz_pair", "zz"),
    "V_same": ("zzzz_same", "zz"),
    "Theta": ("Hd",),
    "A": ("HH_A", "Hd"),
    "B": ("HH_B",),
    "D": ("Hzz_D", "Hd", "zz"),
    "F": ("Hzz_F",),
    "P": ("dHz_P",),
    "Q": ("dHz_Q",),
    "R": ("ddI_R",),
    "S": ("ddII_S",),
    "T": ("ddII_T",),
    "U": ("ddII_U",),
}


def estimate_statistic(name: str, sums: GroupSums, n: int, K_theory=None) -> Estimate:
    r"""One statistic of ``shared/NOTATION.md`` from group sums at one layer.

    Parameters
    ----------
    name : str
        One of :data:`STATISTICS` except ``"V"`` (the engine picks between
        ``V_pair`` and ``V_same``).
    sums : GroupSums
        Sufficient statistics of the layer (names in :data:`SUFFICIENT`).
    n : int
        ``n_{l-1}``, the width feeding the layer (the 1/n of NOTATION.md).
    K_theory : ndarray (N, N), optional
        Required for ``G1``.

    Returns
    -------
    Estimate
        Shapes: ``K, G1, Theta`` (N, N); the rest (N, N, N, N), index order
        as NOTATION.md writes the statistic (``V[a1,a2,a3,a4] =
        V_{(a1a2)(a3a4)}``, ``B[a1,a2,a3,a4] = B_{(a1a2)(a3a4)}``,
        ``F[a1,a2,a3,a4] = F_{a1a2a3a4}``, ...).

    Notes
    -----
    Definitions (``i != j`` are different neurons of the layer; every
    estimator averages over all ordered neuron pairs inside each network,
    except P..U, which average over the ordered pairs of the first
    ``derivative_neurons`` neurons (:meth:`Ensemble.measure`; unbiased by
    the exchangeability of neurons at initialization)):

    * ``K = E[z_i z_i]`` -- the metric; it differs from the infinite-width
      kernel by ``G1/n + O(1/n^2)``.
    * ``G1 = n (E[z_i z_i] - K_theory)``; bias ``O(1/n)`` (the 1/n^2 term of
      the metric times n).
    * ``V_pair = n Cov(z_i z_i, z_j z_j)``, ``V_same = n kappa_4 / 3`` with
      ``kappa_4`` the same-neuron fourth cumulant, symmetrized over the three
      pairings (``V_same`` equals V for one input; for several inputs it is
      ``(V_(12)(34) + V_(13)(24) + V_(14)(23)) / 3``).
    * ``Theta = E[H_ii]``; ``A = n Cov(H_ii, H_jj)``;
      ``B_{(a1a3)(a2a4)} = n E[H_{ij;a1a2} H_{ij;a3a4}]``.
    * ``D_{a1a2a3a4} = n Cov(H_{ii;a1a2}, z_{j;a3} z_{j;a4})``;
      ``F_{a1a3a2a4} = n E[H_{ij;a1a2} z_{i;a3} z_{j;a4}]``.
    * ``P_{a0a1a2a3} = n E[dH_{ijj;a0a1a2} z_{i;a3}]``;
      ``Q_{a0a1a2a3} = n E[dH_{iij;a0a1a2} z_{j;a3}]`` (averaged with the
      mirror pattern ``dH_{iji;a0a2a1} z_{j;a3}``).
    * ``R = n E[ddIH_{iijj}]``; ``S, T, U = n E[ddIIH_{iijj}], n E[ddIIH_{ijij}],
      n E[ddIIH_{ijji}]``.

    Means of off-diagonal ``H_ij``, of ``dH`` and ``z`` vanish exactly (sign
    flips of a row of the last weight matrix), so B, F, P, Q need no
    subtraction. Each is an unbiased estimator of ``n x`` its finite-width
    correlator, which is the statistic plus ``O(1/n)``.
    """
    if name == "K":
        return Estimate(*jackknife(lambda m: m, sums, ["zz"]), sums.n_networks)
    if name == "G1":
        if K_theory is None:
            raise ValueError("G1 needs the infinite-width kernel: pass K_theory (e.g. "
                             "pdlt.flow(mlp, x).K) to measure(..., K_theory=...)")
        Kt = np.asarray(K_theory, dtype=float)
        return Estimate(*jackknife(lambda m: n * (m - Kt), sums, ["zz"]), sums.n_networks)
    if name == "V_pair":
        return Estimate(*jackknife(lambda m4, m2: n * (m4 - _outer(m2, m2)), sums,
                                   ["zzzz_pair", "zz"]), sums.n_networks)
    if name == "V_same":
        return Estimate(*jackknife(lambda m4, m2: n * _cumulant4(m4, m2) / 3.0, sums,
                                   ["zzzz_same", "zz"]), sums.n_networks)
    if name == "Theta":
        return Estimate(*jackknife(lambda h: h, sums, ["Hd"]), sums.n_networks)
    if name == "A":
        return Estimate(*jackknife(lambda hh, h: n * (hh - _outer(h, h)), sums, ["HH_A", "Hd"]),
                        sums.n_networks)
    if name == "D":
        return Estimate(*jackknife(lambda hzz, h, m2: n * (hzz - _outer(h, m2)), sums,
                                   ["Hzz_D", "Hd", "zz"]), sums.n_networks)
    if name in ("B", "F", "P", "Q", "R", "S", "T", "U"):
        key = SUFFICIENT[name][0]
        return Estimate(*jackknife(lambda m: n * m, sums, [key]), sums.n_networks)
    raise ValueError(f"unknown statistic {name!r}; choose from {', '.join(STATISTICS)}")


# ---------------------------------------------------------------------------
# control variates with exactly known means
# ---------------------------------------------------------------------------

def gaussian_expectation(fn, G, nodes: int = 96) -> np.ndarray:
    """``E[fn(z)]`` for ``z ~ N(0, G)``, elementwise in ``G``, to ~1e-12 relative.

    Gauss-Hermite with ``nodes`` and ``3 nodes / 2`` points; where the two
    differ by more than 1e-12 of the value, :func:`pdlt.gaussian.expect`
    (error < 1e-14) replaces them. Gauss-Hermite alone converges slowly for
    functions with poles near the real axis: 96 nodes are 2.5e-9 off for
    ``tanh^4`` at ``G = 1``, 2e-6 at ``G = 2`` and 8e-4 for ``tanh^2`` at
    ``G = 10`` -- a control variate built on such a value would be biased by
    it. An even node count puts no node at the kink of a piecewise-linear
    activation, so ``E[relu(z)^2] = G/2`` comes out exactly (symmetric nodes).
    """
    G = np.asarray(G, dtype=float)

    def rule(q):
        y, w = np.polynomial.hermite_e.hermegauss(int(q))
        return (np.asarray(fn(np.sqrt(G)[..., None] * y), dtype=float) * (w / w.sum())).sum(-1)
    coarse, fine = rule(nodes), rule(int(nodes) + int(nodes) // 2)
    bad = ~(np.abs(fine - coarse) <= 1e-12 * np.abs(fine))
    if np.any(bad):
        fine = np.array(fine, dtype=float)
        fine[bad] = gaussian.expect(fn, G[bad])
    return fine


def metric_martingale(s, K1, C_b, C_W, g, chi, v=None, widths=None) -> dict:
    r"""Per-network metric and vertex estimators with exactly zero-mean control variates.

    One input. Conditional on layer ``l-1`` the preactivations of layer ``l``
    are i.i.d. ``N(0, G_l)`` with ``G_l = C_b + C_W s_{l-1}``,
    ``s_{l-1} = mean_j sigma(z_{l-1,j})^2`` (and ``G_1 = K1``). Hence

    * ``E[mean_i z_{l,i}^2] = E[G_l]`` and ``E[z_{l,i}^2 z_{l,j}^2] = E[G_l^2]``
      (``i != j``): ``G_l`` replaces the neuron averages (Rao-Blackwell),
      removing their within-layer scatter;
    * ``d_l = s_l - g(G_l)``, ``g(G) = E_{N(0,G)}[sigma^2]``, has conditional
      mean zero given layer ``l - 1`` (a martingale difference), and
      conditional variance ``v(G_l) / n_l`` with ``v(G) = Var_{N(0,G)}[sigma^2]``.

    ``G_l - K_l`` is driven at linear order by ``Lambda_l = chi_l Lambda_{l-1} +
    C_W d_{l-1}`` (``chi_l`` the slope of the kernel map; any fixed numbers
    keep the estimators unbiased, they only set how much variance is removed).
    Returned per network:

    * ``Y_l = G_l - Lambda_l``: ``E[Y_l] = E[mean_i z_{l,i}^2]`` *exactly* at
      every width, with scatter O(1/n) instead of O(1/sqrt(n)); so
      ``n (mean Y - K)`` measures G1 (plus its own O(1/n));
    * ``Q_l = (G_l - K_l)^2 - Lambda_l^2 + W_l`` with
      ``W_l = chi_l^2 W_{l-1} + C_W^2 v(G_{l-1}) / n_{l-1}``: ``E[Lambda_l^2] =
      E[W_l]`` exactly (the d's are orthogonal), so ``E[Q_l] = E[(G_l - K_l)^2]``
      and ``n (mean Q - (mean Y - K)^2)`` measures ``n Var(G_l)``, which is
      exactly the estimand of the pair estimator of V (``n Cov(z_i^2, z_j^2)``),
      with the leading ``Lambda^2`` scatter removed.

    Parameters
    ----------
    s : ndarray (M, L)
        Per network and layer, the neuron average of ``sigma(z)^2``.
    K1 : float
        First-layer kernel (``G_1``, deterministic).
    C_b, C_W : ndarray (L,)
        Per layer (``C_W[l]`` multiplies layer ``l``'s incoming weights; index 0 unused).
    g : callable
        ``G (any shape) -> E_{N(0,G)}[sigma(z)^2]``, exact to float rounding
        (e.g. :func:`gaussian_expectation`).
    chi : ndarray (L,)
        Propagation coefficients (``chi[l] = C_W[l] g'(K_{l-1})``; index 0 unused).
    v : callable, optional
        ``G -> Var_{N(0,G)}[sigma(z)^2]`` exactly; needed for ``Q``.
    widths : ndarray (L,), optional
        Neurons per layer (``n_l``); needed for ``Q``.

    Returns
    -------
    dict
        ``"Y"`` (M, L) with ``Y[:, 0] = K1``; ``"G"``, ``"Lambda"``, ``"d"`` (M, L); and
        ``"W"``, ``"Q"`` (M, L) given ``v`` and ``widths`` (``Q`` needs the
        theory ``K``: it is returned as ``(G, Lambda, W)`` parts, combine with
        :func:`vertex_from_martingale`).
    """
    s = np.asarray(s, dtype=float)
    if s.ndim != 2:
        raise ValueError(f"s must have shape (networks, layers); got {s.shape}")
    M, L = s.shape
    C_b, C_W, chi = (np.broadcast_to(np.asarray(v_, float), (L,)) for v_ in (C_b, C_W, chi))
    # the N-input control variate at N = 1 (g is elementwise, so it takes (..., 1, 1) as is)
    multi = metric_martingale_multi(s[:, :, None, None], np.full((1, 1), float(K1)), C_b, C_W,
                                    g, chi.reshape(L, 1, 1, 1, 1))
    out = {k: v[..., 0, 0] for k, v in multi.items()}
    G = out["G"]
    if v is not None:
        if widths is None:
            raise ValueError("the vertex control variate needs widths (neurons per layer)")
        n = np.broadcast_to(np.asarray(widths, float), (L,))
        var = v(G)
        W = np.zeros((M, L))
        for l in range(1, L):
            W[:, l] = chi[l] ** 2 * W[:, l - 1] + C_W[l] ** 2 * var[:, l - 1] / n[l - 1]
        out["W"] = W
    return out


def vertex_from_martingale(parts, K, fan_in) -> tuple:
    """V per layer from :func:`metric_martingale` parts: ``(mean, stderr)`` each (L,).

    ``n [mean(Q) - (mean(Y) - K)^2]`` with ``Q = (G - K)^2 - Lambda^2 + W``,
    standard error by the delta method over networks (i.i.d.).
    """
    K = np.asarray(K, float)
    n = np.asarray(fan_in, float)
    G, lam, W, Y = parts["G"], parts["Lambda"], parts["W"], parts["Y"]
    Q = (G - K) ** 2 - lam ** 2 + W
    M = Q.shape[0]
    y = Y - K
    ybar = y.mean(0)
    est = n * (Q.mean(0) - ybar ** 2)
    # linearization: n [Q - 2 ybar y] per network
    lin = n * (Q - 2 * ybar * y)
    se = lin.std(0, ddof=1) / np.sqrt(M)
    return est, se


def ntk_martingale(metric, s, u, q, Theta, C_W, lambda_b, lambda_W, g1, g2, coef_K,
                   coef_T, widths) -> np.ndarray:
    r"""Per-network NTK-mean estimator with exactly zero-mean control variates (one input).

    With ``H_l`` the NTK of layer l (n_l x n_l), ``s_l = mean sigma(z_l)^2``,
    ``u_l = mean_k sigma'(z_{l,k})^2 H_{l,kk}`` and
    ``q_l = (sigma sigma')_l^T H_l (sigma sigma')_l``, the forward equation gives,
    conditional on layers ``<= l``,

    ``E[mean_i H_{l+1,ii}] = T_{l+1} = lambda_b + lambda_W s_l + C_W u_l``

    (Rao-Blackwell: ``T`` replaces the neuron average), and conditional on
    layers ``<= l-1`` (row ``w`` of ``W_l`` Gaussian, jointly with ``z = b + w.a``,
    ``beta = C_W / n_{l-1}``, ``G = G_l``)

    ``E[u_l] = (T_l - beta^2 q_{l-1} / G) g1(G) + beta^2 q_{l-1} / G^2 g2(G)``,

    ``g1(G) = E[sigma'^2]``, ``g2(G) = E[z^2 sigma'^2]`` under ``N(0, G)``. So
    ``f_l = u_l - E[u_l | l-1]`` (and ``d_l`` of :func:`metric_martingale`)
    are martingale differences. Their linear propagation

    ``Gamma_l = (lambda_W g'(K_{l-1}) + C_W g1'(K_{l-1}) Theta_{l-1}) Lambda_{l-1}
    + C_W g1(K_{l-1}) Gamma_{l-1} + lambda_W d_{l-1} + C_W f_{l-1}``

    is subtracted: ``Z_l = T_l - Gamma_l`` has ``E[Z_l] = E[mean_i H_{l,ii}]``
    exactly at every width (the coefficients only set how much variance goes).

    Parameters
    ----------
    metric : dict
        :func:`metric_martingale` of the same networks (its ``G``, ``d``, ``Lambda``).
    s, u, q : ndarray (M, L)
        Per network and layer (``q`` unused at the last layer).
    Theta : float
        The deterministic first-layer NTK.
    C_W, lambda_b, lambda_W : ndarray (L,)
        Per layer (index 0 unused).
    g1, g2 : callable
        ``G -> E[sigma'^2], E[z^2 sigma'^2]`` under ``N(0, G)``, exact to float rounding.
    coef_K, coef_T : ndarray (L,)
        Propagation coefficients: ``coef_K[l] = lambda_W g'(K_{l-1}) + C_W g1'(K_{l-1})
        Theta_{l-1}``, ``coef_T[l] = C_W g1(K_{l-1})`` (index 0 unused; any fixed
        numbers keep ``Z`` unbiased).
    widths : ndarray (L,)
        Neurons per layer.

    Returns
    -------
    ndarray (M, L)
        ``Z``; ``Z[:, 0] = Theta``.
    """
    s, u, q = (np.asarray(a, dtype=float) for a in (s, u, q))
    G, d, lam = metric["G"], metric["d"], metric["Lambda"]
    M, L = s.shape
    C_W, lb, lw, cK, cT, n = (np.broadcast_to(np.asarray(a, float), (L,)) for a in
                              (C_W, lambda_b, lambda_W, coef_K, coef_T, widths))
    T = np.empty((M, L))
    T[:, 0] = float(Theta)
    T[:, 1:] = lb[1:] + lw[1:] * s[:, :-1] + C_W[1:] * u[:, :-1]
    ubar = np.empty((M, L))
    ubar[:, 0] = float(Theta) * g1(G[:, 0])
    beta2q = (C_W[1:] / n[:-1]) ** 2 * q[:, :-1]
    Gl = G[:, 1:]
    ubar[:, 1:] = (T[:, 1:] - beta2q / Gl) * g1(Gl) + beta2q / Gl ** 2 * g2(Gl)
    f = u - ubar
    gam = np.zeros((M, L))
    for l in range(1, L):
        gam[:, l] = (cK[l] * lam[:, l - 1] + cT[l] * gam[:, l - 1] + lw[l] * d[:, l - 1]
                     + C_W[l] * f[:, l - 1])
    return T - gam


# ---------------------------------------------------------------------------
# the metric control variate at N distinct inputs
# ---------------------------------------------------------------------------

def gaussian_pair_expectation(fn, G, step: float = 0.25, cutoff: float = 7.5,
                              chunk: int = 256) -> np.ndarray:
    r"""``E[fn(z_a) fn(z_b)]`` for ``z ~ N(0, G)``, every pair ``a, b``, vectorized over ``G``.

    A tensor trapezoidal rule in the Cholesky coordinates of each 2 x 2 block,
    ``z_a = sqrt(G_aa) u``, ``z_b = sqrt(G_bb) (rho u + sqrt(1 - rho^2) w)``,
    ``u, w`` on the grid ``-cutoff..cutoff`` of spacing ``step / max(1,
    sqrt(max G_aa / 2))`` with normalized Gaussian weights. For an activation
    analytic in a strip (tanh: poles at ``z = +-i pi/2``; GELU: entire) the
    trapezoidal rule converges exponentially in ``1/step`` (Gauss-Hermite
    converges only like ``exp(-c sqrt(nodes))`` for tanh); the truncation
    costs ``exp(-cutoff^2/2) ~ 7e-13``. Measured against
    :func:`pdlt.gaussian.pair_expectations` (rtol 1e-12): <= 1e-10 absolute for
    tanh and GELU at ``G_aa <= 4`` (tested), far below what the control
    variate needs (a bias ``delta`` in ``g`` moves ``n (mean Y - K)`` by about
    ``n L delta``). The covariances are processed in chunks of ``chunk``
    sorted by their largest variance, so that one wide network does not
    refine the grid of all. Not meant for kinked activations (ReLU: the grid
    does not resolve the kink).

    Parameters
    ----------
    fn : callable
        Elementwise activation (numpy arrays in, numpy arrays out).
    G : ndarray (..., N, N)
        Symmetric positive semi-definite covariances (any leading shape).
    step, cutoff : float
        Grid spacing (at ``G_aa <= 2``) and half-width, in standard deviations.
    chunk : int
        Covariances per grid.

    Returns
    -------
    ndarray (..., N, N)
        Exactly symmetric.
    """
    G = np.asarray(G, dtype=float)
    if G.ndim < 2 or G.shape[-1] != G.shape[-2]:
        raise ValueError(f"G must have shape (..., N, N); got {G.shape}")
    if not np.all(np.isfinite(G)) or np.any(np.diagonal(G, axis1=-2, axis2=-1) < 0):
        raise ValueError("G must be finite covariance matrices (diagonal >= 0)")
    shape, N = G.shape, G.shape[-1]
    flat = G.reshape(-1, N, N)
    diag = np.diagonal(flat, axis1=-2, axis2=-1)
    order = np.argsort(diag.max(-1) if N else np.zeros(len(flat)), kind="stable")
    out = np.empty(flat.shape)
    for lo in range(0, len(flat), int(chunk)):
        idx = order[lo:lo + int(chunk)]
        out[idx] = _pair_trapezoid(fn, flat[idx], diag[idx], step, cutoff)
    return out.reshape(shape)


def _pair_trapezoid(fn, G, diag, step, cutoff):
    """:func:`gaussian_pair_expectation` on one grid: G (B, N, N), diag (B, N)."""
    N = G.shape[-1]
    h = float(step) / max(1.0, math.sqrt(float(diag.max(initial=0.0)) / 2.0))
    m = int(math.ceil(float(cutoff) / h))
    y = h * np.arange(-m, m + 1)
    w = np.exp(-0.5 * y * y)
    w /= w.sum()
    sd = np.sqrt(diag)                                       # (B, N)
    f1 = np.asarray(fn(sd[..., None] * y), float)           # (B, N, q): fn(z_a) at nodes u
    out = np.empty(G.shape)
    for a in range(N):
        out[:, a, a] = f1[:, a, :] ** 2 @ w
        for b in range(a + 1, N):
            den = sd[:, a] * sd[:, b]
            rho = np.clip(np.divide(G[:, a, b], den, out=np.zeros_like(den), where=den > 0),
                          -1.0, 1.0)
            c = np.sqrt(1.0 - rho ** 2)
            zb = sd[:, b, None, None] * (rho[:, None, None] * y[:, None]
                                         + c[:, None, None] * y[None, :])
            inner = np.asarray(fn(zb), float) @ w            # (B, q_u): E_w[fn(z_b) | u]
            out[:, a, b] = out[:, b, a] = (f1[:, a, :] * inner) @ w
    return out


def kernel_map_jacobian(g, K, C_W, h: float = 1e-5) -> np.ndarray:
    r"""Propagation coefficients of :func:`metric_martingale_multi`: ``C_W[l] dg/dG`` at ``K_{l-1}``.

    ``chi[l, a, b, c, d] = C_W[l] d g_ab / d G_cd`` at ``G = K[l-1]``, by central
    differences of ``g`` along each symmetric direction (an off-diagonal
    direction moves ``G_cd`` and ``G_dc`` together; its derivative is split
    evenly between ``(c, d)`` and ``(d, c)`` so that ``sum_cd chi_abcd X_cd``
    is the directional derivative along a symmetric ``X``). Only ``cd`` in
    ``{aa, bb, ab, ba}`` are nonzero. Finite differences suffice: any fixed
    coefficients keep the control variate exactly unbiased.

    Parameters
    ----------
    g : callable
        ``(..., N, N) -> (..., N, N)``, the Gaussian average ``<sigma_a sigma_b>_G``.
    K : ndarray (L, N, N)
        Infinite-width kernel per layer.
    C_W : ndarray (L,)
    h : float
        Relative step (times the largest diagonal entry of each ``K[l-1]``).

    Returns
    -------
    ndarray (L, N, N, N, N)
        ``chi[0] = 0`` (the first layer is deterministic).
    """
    K = np.asarray(K, float)
    if K.ndim != 3 or K.shape[1] != K.shape[2]:
        raise ValueError(f"K must have shape (layers, N, N); got {K.shape}")
    L, N, _ = K.shape
    C_W = np.broadcast_to(np.asarray(C_W, float), (L,))
    chi = np.zeros((L, N, N, N, N))
    pairs = [(c, d) for c in range(N) for d in range(c, N)]
    for l in range(1, L):
        base = K[l - 1]
        step = h * float(np.max(np.diag(base)))
        dirs = np.zeros((len(pairs), N, N))
        for p, (c, d) in enumerate(pairs):
            dirs[p, c, d] = dirs[p, d, c] = 1.0
        gp = g(base + step * dirs)
        gm = g(base - step * dirs)
        der = (gp - gm) / (2 * step)                         # (P, N, N): d g / d(direction p)
        for p, (c, d) in enumerate(pairs):
            if c == d:
                chi[l, :, :, c, c] = C_W[l] * der[p]
            else:
                chi[l, :, :, c, d] = chi[l, :, :, d, c] = 0.5 * C_W[l] * der[p]
    # g_ab depends on G_aa, G_bb, G_ab only: drop the finite differences' rounding elsewhere
    idx = np.arange(N)
    a, b, c, d = np.meshgrid(idx, idx, idx, idx, indexing="ij")
    chi[:, ~(((c == a) | (c == b)) & ((d == a) | (d == b)))] = 0.0
    return chi


def metric_martingale_multi(S, K1, C_b, C_W, g, chi) -> dict:
    r"""Per-network metric estimator at N inputs with an exactly zero-mean control variate.

    The N-input version of :func:`metric_martingale`. Conditional on layer
    ``l-1`` the preactivation vectors ``(z_{l,i;a})_a`` of layer ``l`` are
    i.i.d. over neurons ``i``, ``N(0, G_l)`` with ``G_l = C_b + C_W S_{l-1}``
    (N x N), ``S_{l-1,ab} = mean_j sigma(z_{l-1,j;a}) sigma(z_{l-1,j;b})``, and
    ``G_1 = K1``. Hence ``E[mean_i z_{l,i;a} z_{l,i;b}] = E[G_l]``, and
    ``d_l = S_l - g(G_l)`` with ``g(G)_ab = <sigma_a sigma_b>_G`` has
    conditional mean zero given layer ``l - 1`` (a martingale difference).
    ``Lambda_l = chi_l[Lambda_{l-1}] + C_W d_{l-1}`` (``chi_l`` a fixed linear
    map of symmetric matrices, the kernel map's Jacobian at the theory kernel
    from :func:`kernel_map_jacobian`) is a fixed linear combination of earlier
    d's, so ``E[Lambda_l] = 0`` exactly for ANY fixed ``chi``, and
    ``Y_l = G_l - Lambda_l`` has ``E[Y_l] = E[mean_i z_{l,i;a} z_{l,i;b}]``
    exactly at every width, with the leading O(1/sqrt(n)) scatter of ``G_l``
    (which ``Lambda_l`` follows to linear order) removed.

    Parameters
    ----------
    S : ndarray (M, L, N, N)
        Per network and layer, the neuron average of ``sigma(z_a) sigma(z_b)``.
    K1 : ndarray (N, N)
        First-layer kernel (``G_1``, deterministic).
    C_b, C_W : ndarray (L,)
        Per layer (index 0 unused).
    g : callable
        ``(..., N, N) -> (..., N, N)``, ``<sigma_a sigma_b>`` under ``N(0, G)``,
        exact to float rounding (e.g. :func:`gaussian_pair_expectation`).
    chi : ndarray (L, N, N, N, N)
        Propagation coefficients (:func:`kernel_map_jacobian`; index 0 unused).

    Returns
    -------
    dict
        ``"Y"``, ``"G"``, ``"Lambda"``, ``"d"``: each (M, L, N, N), ``Y[:, 0] = K1``.
        With N = 1 and ``chi[l] = chi_1[l]`` it equals :func:`metric_martingale`.
    """
    S = np.asarray(S, dtype=float)
    if S.ndim != 4 or S.shape[2] != S.shape[3]:
        raise ValueError(f"S must have shape (networks, layers, N, N); got {S.shape}")
    M, L, N, _ = S.shape
    K1 = np.asarray(K1, float).reshape(N, N) if np.size(K1) == N * N else None
    if K1 is None:
        raise ValueError(f"K1 must be an (N, N) = ({N}, {N}) kernel matching S")
    chi = np.asarray(chi, float)
    if chi.shape != (L, N, N, N, N):
        raise ValueError(f"chi must have shape (L, N, N, N, N) = {(L, N, N, N, N)}; got "
                         f"{chi.shape} (build it with kernel_map_jacobian)")
    C_b, C_W = (np.broadcast_to(np.asarray(v_, float), (L,)) for v_ in (C_b, C_W))
    G = np.empty((M, L, N, N))
    G[:, 0] = K1
    G[:, 1:] = C_b[1:, None, None] + C_W[1:, None, None] * S[:, :-1]
    d = S - g(G)
    lam = np.zeros((M, L, N, N))
    for l in range(1, L):
        lam[:, l] = (np.einsum("abcd,mcd->mab", chi[l], lam[:, l - 1])
                     + C_W[l] * d[:, l - 1])
    return {"Y": G - lam, "G": G, "Lambda": lam, "d": d}


__all__ += ["gaussian_pair_expectation", "kernel_map_jacobian", "metric_martingale_multi"]


# ---------------------------------------------------------------------------
# residual networks: the metric and the vertex with exactly zero-mean controls
# ---------------------------------------------------------------------------

def _positive_moments(a, kmax):
    """``E[(a + Y)^k 1{a + Y > 0}]``, ``Y ~ N(0, 1)``, for k = 0..kmax: list of arrays.

    Truncated-normal recursion ``M_j = E[Y^j 1{Y > -a}] = (-a)^(j-1) phi(a) +
    (j - 1) M_(j-2)`` (``M_0 = Phi(a)``, ``M_1 = phi(a)``) and the binomial sum.
    """
    from scipy.special import ndtr

    phi = np.exp(-0.5 * a * a) / np.sqrt(2 * np.pi)
    Mj = [ndtr(a), phi]
    for j in range(2, kmax + 1):
        Mj.append((-a) ** (j - 1) * phi + (j - 1) * Mj[j - 2])
    from math import comb
    return [sum(comb(k, j) * a ** (k - j) * Mj[j] for j in range(k + 1)) for k in range(kmax + 1)]


def shifted_activation_moments(activation, mu, var, nodes: int = 64):
    r"""``E[sigma^2]``, ``E[sigma^4]``, ``E[sigma^2 X^2]`` for ``X ~ N(mu, var)``, elementwise.

    The conditional moments of a residual layer's new preactivation (its mean
    is ``gamma z`` of the same neuron one layer down, not zero). Exact to
    float rounding: piecewise-linear (scale-invariant) activations in closed
    form (truncated-normal moments, the kink need not sit at a node), smooth
    ones by the trapezoid rule in ``(x - mu)/sd`` on ``[-8.5, 8.5]`` with step
    ``min(0.25, 0.25/sd_max, 17/nodes)`` (geometric convergence for integrands
    analytic in a strip; below 1e-13 relative for tanh and GELU at ``var <= 4``,
    against adaptive quadrature in the tests).

    Parameters
    ----------
    activation : pdlt.Activation or str
    mu, var : ndarray, broadcastable; ``var > 0``

    Returns
    -------
    tuple of three ndarrays (the broadcast shape)
    """
    from ..activations import activation as _activation

    act = _activation(activation) if isinstance(activation, str) else activation
    mu, var = np.broadcast_arrays(np.asarray(mu, float), np.asarray(var, float))
    if act.scale_invariant is not None:
        ap, am = act.scale_invariant
        # var = 0 happens (a ReLU layer with every neuron off and C_b = 0): X = mu exactly
        point = var <= 0
        s = np.sqrt(np.where(point, 1.0, var))
        # X^k 1{X > 0} = s^k (a + Y)^k 1{..}, a = mu / s; X^k 1{X < 0} by the sign flip
        pos = _positive_moments(mu / s, 4)
        neg = [(-1) ** k * m for k, m in enumerate(_positive_moments(-mu / s, 4))]
        m2 = s ** 2 * (ap ** 2 * pos[2] + am ** 2 * neg[2])
        m4 = s ** 4 * (ap ** 4 * pos[4] + am ** 4 * neg[4])
        mx = s ** 4 * (ap ** 2 * pos[4] + am ** 2 * neg[4])
        if np.any(point):
            sq = np.asarray(act(mu), float) ** 2
            m2, m4, mx = (np.where(point, p_, m_) for p_, m_ in
                          ((sq, m2), (sq * sq, m4), (sq * mu * mu, mx)))
        return m2, m4, mx
    if not act.is_smooth:
        raise ValueError(f"activation {act.name!r} has kinks {act.kinks} but is not "
                         "piecewise linear: Gauss-Hermite would not be exact; use a smooth or "
                         "a scale-invariant (ReLU-family) activation")
    # trapezoid in the standardized variable: geometric convergence for integrands analytic
    # in a strip (tanh: poles at distance pi/(2 sd) in y); Gauss-Hermite converges slowly for
    # saturating activations at large variance (3e-4 relative for tanh^4 at var 4, 64 nodes)
    sd_max = float(np.sqrt(np.max(var))) if var.size else 1.0
    step = min(0.25, 0.25 / max(sd_max, 1e-300), 8.5 / max(int(nodes) // 2, 1))
    y = np.arange(-8.5, 8.5 + step / 2, step)
    w = np.exp(-0.5 * y * y)
    w = w / w.sum()
    x = mu[..., None] + np.sqrt(var)[..., None] * y
    s2 = np.asarray(act(x), float) ** 2
    return (s2 @ w, (s2 * s2) @ w, (s2 * x * x) @ w)


def residual_metric_martingale(z, K1, C_b, C_W, gamma, xi, activation, K, coef=None,
                               nodes: int = 64, chunk: int = 1000) -> dict:
    r"""Per-network metric and vertex estimators of a residual MLP with zero-mean controls.

    One input; ``z^(l) = xi_l [b + W sigma(z^(l-1))] + gamma_l z^(l-1)``
    (``shared/NOTATION.md``), ``Var(W_ij) = C_W / n_(l-1)``, ``Var(b) = C_b``.

    Derivation. Given layer ``l - 1`` the new preactivations ``z_{l,i}`` are
    independent over neurons ``i`` and Gaussian with mean ``gamma_l
    z_{l-1,i}`` (each neuron's own past) and variance ``xi_l^2 G_l``,
    ``G_l = C_b + C_W s_{l-1}``, ``s = mean_j sigma(z_j)^2``. Write ``q_l =
    mean_i z_{l,i}^2``. Then

    * ``Ghat_l = E[q_l | l-1] = xi_l^2 G_l + gamma_l^2 q_{l-1}`` (``Ghat_1 =
      K1``): Rao-Blackwell, ``E[Ghat_l] = E[q_l]`` exactly;
    * ``e_l = q_l - Ghat_l`` and ``d_l = s_l - h_l``, ``h_l = mean_i
      E_{N(gamma_l z_{l-1,i}, xi_l^2 G_l)}[sigma^2]`` (``h_1 = g(K1)``), have
      conditional mean zero given layer ``l - 1`` (martingale differences);
      ``h_l`` is a per-neuron one-dimensional Gaussian average
      (:func:`shifted_activation_moments`, exact to float rounding: a bias
      there would bias the estimator);
    * linearizing ``Ghat_l = xi_l^2 (C_b + C_W s_{l-1}) + gamma_l^2 q_{l-1}`` with
      ``s = h + d``, ``q = Ghat + e`` and ``h_l ~ g(Ghat_l)`` (``g(G) =
      E_{N(0,G)}[sigma^2]``, slope ``g'`` at the theory kernel ``K``) gives
      ``Lambda_l = chi_l Lambda_{l-1} + xi_l^2 C_W d_{l-1} + gamma_l^2 e_{l-1}``,
      ``chi_l = xi_l^2 C_W g'(K_{l-1}) + gamma_l^2``, ``Lambda_1 = 0``.
      ``Lambda_l`` is a combination with FIXED coefficients of martingale
      differences, so ``E[Lambda_l] = 0`` exactly whatever the quality of the
      linearization (which only sets how much scatter is removed), and
      ``Y_l = Ghat_l - Lambda_l`` has ``E[Y_l] = E[q_l]`` exactly at every width;
    * the martingale differences are orthogonal, so ``E[Lambda_l^2] = E[W_l]``
      with ``W_l = chi_l^2 W_{l-1} + Var(xi_l^2 C_W d_{l-1} + gamma_l^2 e_{l-1} |
      l-2)``, the conditional variance ``(1/n^2) sum_i Var(c_s sigma^2 + c_q
      z^2)`` per neuron from the same Gaussian moments;
    * the pair moment ``E[z_{l,i}^2 z_{l,j}^2 | l-1]`` (``i != j``) averaged over
      ordered pairs is ``Ghat_l^2 - C_l`` with ``C_l = gamma_l^4 var_i(z_{l-1,i}^2)
      / (n_l - 1)`` (population variance over the neurons), so
      ``V_l = n_{l-1} [E(pair) - E(q_l)^2] = n_{l-1} [E((Ghat_l - K_l)^2) - E(C_l) -
      (E[q_l] - K_l)^2]`` and ``(Ghat - K)^2 - Lambda^2 + W - C`` has mean
      ``E((Ghat - K)^2) - E(C)``: :func:`vertex_from_martingale` with ``W - C``
      in place of ``W``.

    At ``gamma = 0``, ``xi = 1``: ``Ghat = G``, ``h = g(G)``, ``e`` drops out and this
    is :func:`metric_martingale`.

    The linearization ``h_l ~ g(Ghat_l)`` ignores that ``h_l`` depends on the
    whole empirical distribution of ``z_{l-1}``, not only on its second moment;
    for ReLU most of the scatter stays. Better coefficients (``coef``, e.g.
    fitted by :func:`residual_crossfit` on other networks) are just as
    unbiased. A third martingale difference helps further:
    ``r_l = mean_i F_l(z_{l,i}) - mean_i E[F_l(z_{l,i}) | l-1]`` with the fixed
    function ``F_l(y) = E_eps[sigma^2(gamma_{l+1} y + xi_{l+1} sqrt(G*_{l+1}) eps)]``,
    ``G*_{l+1} = C_b + C_W g(K_l)`` (what ``h_{l+1}`` is per neuron at the theory
    variance): its conditional mean is ``E sigma^2`` under ``N(gamma_{l+1} mu,
    gamma_{l+1}^2 var + xi_{l+1}^2 G*_{l+1})``, again one Gaussian average. Its
    conditional variance has no closed form, so ``r`` serves the metric (``Y``)
    only, not the ``W`` of the vertex.

    Parameters
    ----------
    z : sequence of L ndarrays (M, n_l)
        Single-input preactivations of layers 1..L of M networks.
    K1 : float
        First-layer kernel (``Ghat_1``, deterministic).
    C_b, C_W, gamma, xi : ndarray (L,)
        Per layer (``mlp.C_b`` etc.; layer 1's entries are not used except
        ``gamma_1 = 0`` implied).
    activation : pdlt.Activation or str
    K : ndarray (L,)
        The infinite-width kernel (the linearization point; any fixed values keep
        the estimators unbiased).
    coef : ndarray (L, L, 2), optional
        ``Lambda_l = sum_{k<l} coef[l, k, 0] d_k + coef[l, k, 1] e_k`` (fixed
        numbers; entries with ``k >= l`` are ignored). Default: the linearized
        recursion above.
    nodes, chunk : int
        Quadrature resolution for smooth activations (:func:`shifted_activation_moments`)
        and networks per block.

    Returns
    -------
    dict
        ``"Y"``, ``"G"`` (= ``Ghat``), ``"Lambda"``, ``"W"`` (``W - C``, ready for
        :func:`vertex_from_martingale`), ``"d"``, ``"e"``, ``"r"`` (``r[:, L-1] = 0``),
        ``"C"``: each (M, L); ``"cov"`` (M, L, 3): ``Var(d_l)``, ``Cov(d_l, e_l)``,
        ``Var(e_l)`` given layer ``l - 1``.
    """
    from ..activations import activation as _activation

    act = _activation(activation) if isinstance(activation, str) else activation
    z = [np.asarray(a, float) for a in z]
    L = len(z)
    if L == 0 or any(a.ndim != 2 or a.shape[0] != z[0].shape[0] for a in z):
        raise ValueError("z must be a list of L arrays (networks, neurons) with the same "
                         f"number of networks; got shapes {[a.shape for a in z]}")
    M = z[0].shape[0]
    C_b, C_W, gamma, xi, K = (np.broadcast_to(np.asarray(v_, float), (L,))
                              for v_ in (C_b, C_W, gamma, xi, K))
    for l in range(1, L):
        if gamma[l] != 0.0 and z[l].shape[1] != z[l - 1].shape[1]:
            raise ValueError(f"gamma[{l}] = {gamma[l]:g} needs equal widths in layers {l} and "
                             f"{l + 1}; got {z[l - 1].shape[1]} and {z[l].shape[1]}")
    # slope g'(K) = E[(x^2/K - 1) sigma^2] / (2K) at mean zero
    s2, _, sx = shifted_activation_moments(act, 0.0, K, nodes)
    gp = sx / (2 * K * K) - s2 / (2 * K)
    chi = np.r_[0.0, xi[1:] ** 2 * C_W[1:] * gp[:-1] + gamma[1:] ** 2]
    q = np.stack([(a * a).mean(1) for a in z], 1)
    s = np.stack([(np.asarray(act(a), float) ** 2).mean(1) for a in z], 1)
    Ghat, h = np.empty((M, L)), np.empty((M, L))
    cov = np.zeros((M, L, 3))      # Var(d_l), Cov(d_l, e_l), Var(e_l) given layer l-1
    C, r = np.zeros((M, L)), np.zeros((M, L))
    Ghat[:, 0] = float(K1)
    Gstar = np.r_[0.0, C_b[1:] + C_W[1:] * s2[:-1]]   # G*_{l+1} = C_b + C_W g(K_l)
    for l in range(L):
        for a in range(0, M, chunk):
            b = min(M, a + chunk)
            if l == 0:
                mu, var = np.zeros((b - a, 1)), np.full((b - a, 1), float(K1))
            else:
                G = C_b[l] + C_W[l] * s[a:b, l - 1]
                Ghat[a:b, l] = xi[l] ** 2 * G + gamma[l] ** 2 * q[a:b, l - 1]
                mu, var = gamma[l] * z[l - 1][a:b], (xi[l] ** 2 * G)[:, None]
                if gamma[l] != 0.0:
                    z2 = z[l - 1][a:b] ** 2
                    C[a:b, l] = gamma[l] ** 4 * z2.var(1) / (z[l].shape[1] - 1)
            m2, m4, mx = shifted_activation_moments(act, mu, var, nodes)
            n_l = z[l].shape[1]
            if l == 0:
                m2, m4, mx = (np.broadcast_to(m, (b - a, n_l)) for m in (m2, m4, mx))
            h[a:b, l] = m2.mean(1)
            x2 = mu * mu + var
            x4 = mu ** 4 + 6 * mu * mu * var + 3 * var * var
            for c, per in enumerate((m4 - m2 * m2, mx - m2 * x2, x4 - x2 * x2)):
                cov[a:b, l, c] = np.broadcast_to(per, (b - a, n_l)).mean(1) / n_l
            if l + 1 < L and gamma[l + 1] != 0.0:
                vs = xi[l + 1] ** 2 * Gstar[l + 1]
                F = shifted_activation_moments(act, gamma[l + 1] * z[l][a:b], vs, nodes)[0]
                EF = shifted_activation_moments(act, gamma[l + 1] * mu,
                                                gamma[l + 1] ** 2 * var + vs, nodes)[0]
                r[a:b, l] = F.mean(1) - np.broadcast_to(EF, (b - a, n_l)).mean(1)
    d, e = s - h, q - Ghat
    if coef is None:
        coef = np.zeros((L, L, 2))
        for l in range(1, L):
            coef[l, : l - 1] = chi[l] * coef[l - 1, : l - 1]
            coef[l, l - 1] = xi[l] ** 2 * C_W[l], gamma[l] ** 2
    coef = np.asarray(coef, float)
    if coef.shape != (L, L, 2):
        raise ValueError(f"coef must have shape (L, L, 2) = {(L, L, 2)}; got {coef.shape}")
    low = np.tril(np.ones((L, L)), -1)[..., None] * coef      # only k < l
    lam = np.einsum("lk,mk->ml", low[..., 0], d) + np.einsum("lk,mk->ml", low[..., 1], e)
    # E[Lambda_l^2] = sum_k E[Var(a d_k + b e_k | k-1)] (orthogonal martingale differences)
    W = (np.einsum("lk,mk->ml", low[..., 0] ** 2, cov[..., 0])
         + 2 * np.einsum("lk,mk->ml", low[..., 0] * low[..., 1], cov[..., 1])
         + np.einsum("lk,mk->ml", low[..., 1] ** 2, cov[..., 2]))
    return {"Y": Ghat - lam, "G": Ghat, "Lambda": lam, "W": W - C, "d": d, "e": e, "r": r,
            "C": C, "cov": cov}


def residual_crossfit(parts, folds: int = 2) -> dict:
    r"""Cross-fitted control-variate coefficients for :func:`residual_metric_martingale`.

    The networks are split into ``folds`` contiguous blocks; for each block the
    coefficients are the least-squares fit of ``Ghat_l`` on the martingale
    differences of the earlier layers, computed on the OTHER blocks only, so
    inside a block they are fixed numbers independent of its networks and
    every block's estimators keep exactly their means (``E[Y] = E[q]``,
    ``E[Lambda^2] = E[W]``). The metric uses ``d_k, e_k, r_k`` (k < l); the
    vertex's ``Lambda`` uses ``d_k, e_k`` only (its ``W`` needs their
    conditional variances).

    Parameters
    ----------
    parts : dict
        The output of :func:`residual_metric_martingale` (any ``coef``).
    folds : int
        Number of blocks (>= 2).

    Returns
    -------
    dict
        ``"Y"`` (M, L) the metric estimator; ``"G"``, ``"Lambda"``, ``"W"`` (M, L)
        ready for :func:`vertex_from_martingale` (with this ``Y``).
    """
    G, d, e, r, C, cov = (parts[k] for k in ("G", "d", "e", "r", "C", "cov"))
    M, L = G.shape
    if int(folds) < 2 or M < 4 * int(folds):
        raise ValueError(f"folds must be >= 2 with at least 4 networks per fold; got folds="
                         f"{folds} for {M} networks")
    edges = np.linspace(0, M, int(folds) + 1).astype(int)
    Y, lam, W = G.copy(), np.zeros((M, L)), np.zeros((M, L))
    for f in range(int(folds)):
        inside = np.zeros(M, bool)
        inside[edges[f]:edges[f + 1]] = True
        for l in range(1, L):
            for X, out in ((np.c_[d[:, :l], e[:, :l], r[:, :l]], "Y"),
                           (np.c_[d[:, :l], e[:, :l]], "V")):
                fit = np.c_[np.ones(M), X][~inside]
                beta = np.linalg.lstsq(fit, G[~inside, l], rcond=None)[0][1:]
                control = X[inside] @ beta
                if out == "Y":
                    Y[inside, l] = G[inside, l] - control
                else:
                    lam[inside, l] = control
                    a, b = beta[:l], beta[l:]
                    W[inside, l] = (cov[inside, :l, 0] @ a ** 2
                                    + 2 * cov[inside, :l, 1] @ (a * b)
                                    + cov[inside, :l, 2] @ b ** 2)
    return {"Y": Y, "G": G, "Lambda": lam, "W": W - C}


__all__ += ["shifted_activation_moments", "residual_metric_martingale", "residual_crossfit"]


# ---------------------------------------------------------------------------
# ReLU: the NTK-metric cross-correlation D by conditional (Rao-Blackwell) martingale terms
# ---------------------------------------------------------------------------

def relu_ntk_metric_martingale(s, u, q, K1, Theta1, C_b, C_W, lambda_b, lambda_W,
                               widths) -> np.ndarray:
    r"""Per-network estimator of ``n_{l-1} Cov(H_{ii}, z_j z_j)`` (D, one input, ReLU).

    One input, ReLU (any ``C_b``, ``C_W``, ``lambda_b``, ``lambda_W`` per
    layer). With ``G_l = C_b + C_W s_{l-1}`` and ``T_l = lambda_b + lambda_W
    s_{l-1} + C_W u_{l-1}`` (the conditional means of ``z_{l,i}^2``
    and ``H_{l,ii}`` given layer ``l - 1``, :func:`ntk_martingale`), and
    different neurons ``i != j`` independent given layer ``l - 1``,
    ``Cov(H_{l,ii}, z_{l,j}^2) = Cov(T_l, G_l)`` exactly. For ReLU
    ``E[sigma^2] = G/2`` and ``E[u_l | l-1] = T_l / 2`` (the ``q`` terms of
    :func:`ntk_martingale` cancel), so with the martingale differences
    ``d_l = s_l - G_l/2``, ``f_l = u_l - T_l/2``

    ``dG_{l+1} = (C_W/2) dG_l + C_W d_l``,
    ``dT_{l+1} = (lambda_W/2) dG_l + (C_W/2) dT_l + lambda_W d_l + C_W f_l``

    (``dG = G - K``, ``dT = T - Theta``, both of mean exactly zero): linear in
    the d's and f's with fixed coefficients. Different layers' differences are
    orthogonal, so ``E[dT_l dG_l] = sum_k g_k (t_k E[d_k^2] + t'_k E[d_k f_k])``
    (``g_k``, ``t_k``, ``t'_k``: the coefficients of ``d_k`` in ``dG_l`` and of
    ``d_k``, ``f_k`` in ``dT_l``)
    and each square is replaced by its conditional mean given layer ``k - 1``
    (exact Gaussian moments, ``beta = C_W / n_{k-1}``):

    ``E[d_k^2 | k-1] = (5/4) G_k^2 / n_k``,
    ``E[d_k f_k | k-1] = (G_k T_k / 4 + beta^2 q_{k-1}) / n_k``

    (``q_0 = 0``: the first layer's NTK does not depend on its weights). The
    result is an exactly unbiased estimator of the finite-width
    ``n_{l-1} Cov(H_{l,ii}, z_{l,j}^2)`` at every width (D plus O(1/n)), whose
    per-network scatter is O(1/sqrt(n)) of D instead of O(1) (the plain
    product of two fluctuations).

    Parameters
    ----------
    s, u, q : ndarray (M, L)
        Per network and layer: ``mean sigma(z)^2``, ``mean_k sigma'(z_k)^2 H_kk``,
        ``(sigma sigma')^T H (sigma sigma')`` (as in :func:`ntk_martingale`;
        the last layer's values are not used).
    K1, Theta1 : float
        The deterministic first-layer kernel and NTK.
    C_b, C_W, lambda_b, lambda_W : ndarray (L,)
        Per layer (index 0 unused).
    widths : ndarray (L,)
        Neurons per layer ``n_l``.

    Returns
    -------
    ndarray (M, L)
        Per network, ``n_{l-1} sum_{k<l} g_k (t_k E[d_k^2 | k-1] + t'_k E[d_k f_k | k-1])`` at each layer (0 at the first layer,
        where D vanishes).

    Raises
    ------
    ValueError
        If the shapes of ``s, u, q`` differ or are not (networks, layers).
    """
    s, u, q = (np.asarray(a, dtype=float) for a in (s, u, q))
    if s.ndim != 2 or s.shape != u.shape or s.shape != q.shape:
        raise ValueError(f"s, u, q must share one shape (networks, layers); got {s.shape}, "
                         f"{u.shape}, {q.shape}")
    M, L = s.shape
    C_b, C_W, lb, lw, n = (np.broadcast_to(np.asarray(a, float), (L,))
                           for a in (C_b, C_W, lambda_b, lambda_W, widths))
    G = np.empty((M, L))
    T = np.empty((M, L))
    G[:, 0], T[:, 0] = float(K1), float(Theta1)
    G[:, 1:] = C_b[1:] + C_W[1:] * s[:, :-1]
    T[:, 1:] = lb[1:] + lw[1:] * s[:, :-1] + C_W[1:] * u[:, :-1]
    beta2q = np.zeros((M, L))
    beta2q[:, 1:] = (C_W[1:] / n[:-1]) ** 2 * q[:, :-1]
    dd = 1.25 * G ** 2 / n                      # E[d_k^2 | k-1]
    df = (G * T / 4 + beta2q) / n               # E[d_k f_k | k-1]
    out = np.zeros((M, L))
    cG = np.zeros(L)           # coefficient of d_k in dG_l, k < l
    cTd = np.zeros(L)          # of d_k in dT_l
    cTf = np.zeros(L)          # of f_k in dT_l
    for l in range(1, L):
        k = l - 1
        nG = C_W[l] / 2 * cG
        nTd = lw[l] / 2 * cG + C_W[l] / 2 * cTd
        nTf = C_W[l] / 2 * cTf
        nG[k] += C_W[l]
        nTd[k] += lw[l]
        nTf[k] += C_W[l]
        cG, cTd, cTf = nG, nTd, nTf
        out[:, l] = n[l - 1] * ((dd[:, :l] * (cG[:l] * cTd[:l])).sum(1)
                                + (df[:, :l] * (cG[:l] * cTf[:l])).sum(1))
    return out


__all__ += ["relu_ntk_metric_martingale"]
