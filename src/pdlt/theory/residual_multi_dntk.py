r"""Exact N-input dNTK statistics P and Q of residual MLPs at order 1/n, any activation.

Definitions (``shared/NOTATION.md``), for two distinct neurons j != k:
``P[l, a0, a1, a2, a3] = n_{l-1} E[dH_{jkk;a0a1a2} z_{j;a3}]`` and
``Q[l, a0, a1, a2, a3] = n_{l-1} E[dH_{jjk;a0a1a2} z_{k;a3}]``, the normalization and
index order of the plain N-input steps of :mod:`pdlt.theory.dntk`.

The one-input construction of :mod:`pdlt.theory.residual_ntk`
(:func:`~pdlt.theory.residual_ntk.residual_dntk_p`,
:func:`~pdlt.theory.residual_ntk.residual_dntk_q`) with input slots (derivation:
``docs/derivations/residual_ntk_multi.md``, section "P and Q at N inputs (h40)"):

* P: given the two neurons' trajectories, ``n E[dH_{jkk;t} | .] = phi(j)^T Pi^t psi(k)``
  for every triple ``t = (a0, a1, a2)``, bilinear in the increments ``U_{m;d}`` of neuron
  j and the features ``1``, ``sigma''_e sigma_f(z_k^(p))``, ``sigma'_e sigma'_f(z_k^(p))``
  of neuron k. The step is fed by the attachments of B (the history recursion of
  :func:`pdlt.theory.residual_multi.residual_b_multi`, run alongside);
* Q: ``n E[dH_{jjk;t} | .] = w^t . phi(k)``, linear in neuron k's features ``U_{m;d}``,
  ``sigma_c sigma'_e(z^(p))``, ``sigma''_c sigma'_e(z^(p))``, fed by the bilinear form
  ``M`` of F (:func:`pdlt.theory.residual_multi.residual_f_multi`, run alongside).

The new ingredients are one-neuron two-depth averages
``E[f_e g_f(z^(l)) h_g k_h(z^(p))]`` of up to four jointly Gaussian variables
(:func:`pdlt.gaussian.expect_nd`; the ReLU family as exact piecewise monomials, where
``sigma'' = 0`` pointwise makes every average with a ``sigma''`` vanish).

At gamma = 0 both are the plain recursions (:func:`pdlt.theory.dntk.dntk_P_step`,
:func:`~pdlt.theory.dntk.dntk_Q_step`); the diagonal ``P_{aaaa}``, ``Q_{aaaa}`` of
distinct inputs and one input are the one-input P and Q of
:mod:`pdlt.theory.residual_ntk`.
Served by :func:`pdlt.statistics` for residual MLPs and N inputs (``get=["P", "Q"]``).
Cost: ``O(L^2 N^4)`` averages of up to four variables (depth 5, one thread: N = 2 relu
0.04 s, tanh 0.3 s, GELU 1.2 s; N = 3 GELU 8 s).

Where the increment covariance ``G`` of a layer is singular (collinear inputs of a ReLU
network, antipodal inputs of an odd one, with ``C_b = 0``) only the projector ``G^+ G``
enters (the features are the conditioned increments ``G^+ u``), so those inputs are exact.

"""

from __future__ import annotations

import numpy as np

from ..gaussian._exppw import exp_product, exp_slots
from ..gaussian._multi import PiecewiseMonomial, entire_growth
from ..network import MLP
from .residual_multi import _expect, _gather, _neuron, _ntk_multi, _rule

__all__ = ["residual_dntk_multi", "residual_dntk_p_multi", "residual_dntk_q_multi"]


def residual_dntk_multi(mlp: MLP, x=None, *, Ks=None, Thetas=None, accuracy="default",
                        stats=("P", "Q")) -> dict:
    r"""Exact N-input ``P`` and ``Q`` of a residual MLP at every layer, any activation.

    ``P[l, a0, a1, a2, a3] = n_{l-1} E[dH_{jkk;a0a1a2} z_{j;a3}]`` and
    ``Q[l, a0, a1, a2, a3] = n_{l-1} E[dH_{jjk;a0a1a2} z_{k;a3}]`` (j != k;
    ``shared/NOTATION.md``). Layer steps (``t = (a0, a1, a2)``, ``s, p, q = sigma,
    sigma', sigma''`` at layer l, ``Gt`` the pseudo-inverse of the new increment's
    covariance, ``r = n_l / n_{l-1}``):

    .. math::
        \Pi'^t &= r\gamma^3\Pi^t + r\gamma\xi^2C_W(\Pi^t e_\psi^{a_1a_2})\otimes 1
          + \textstyle\sum_c (Gt\,U_{l+1})_c \otimes \big[\xi^3C_W^2(\Theta_{01}\Theta_{02}
          \langle q_0p_1p_2s_c\rangle + r B^t_c + r\,e_\phi^{ca_0}\cdot\Pi^t e_\psi^{a_1a_2})
          + \xi\gamma^2C_W(\Theta_{01}\Theta_{02}\,q_{a_0}s_c(z_k^{(l)}) + r\,b^t_c(k)
          + r\,e_\phi^{ca_0}\cdot\Pi^t)\big],\\
        w'^t &= r(\gamma^3 + \xi^2\gamma C_W\langle p_0p_1\rangle)w^t
          + r\xi^2\gamma(C_W\Theta_{01}e_{qp}^{a_0a_1}M^{a_0a_2}
          + \lambda_W e_{sp}^{a_1a_0}M^{a_0a_2})
          + \xi^2\gamma C_W\Theta_{01}\Theta_{02}\,q_{a_0}p_{a_1}(z^{(l)})
          + \lambda_W\xi^2\gamma\Theta_{02}\,s_{a_1}p_{a_0}(z^{(l)})
          + \textstyle\sum_e (Gt\,U_{l+1})_e\,Y^t_e,

    ``B^t_c``, ``b^t_c`` B's attachments weighted by ``q_{a0} s_c`` and ``p_{a1} p_{a2}``,
    ``e_phi``, ``e_psi``, ``e_sp``, ``e_qp`` one-neuron averages of the features,
    ``M^{ab}`` F's bilinear form and ``Y^t_e`` the one-input bracket with input slots
    (derivation ``docs/derivations/residual_ntk_multi.md``, section "P and Q at N
    inputs"). ``P^(l) = sum Pi^t E[phi z_{a3}] E[psi]``, ``Q^(l) = w^t . E[phi z_{a3}]``.

    Exact checks: gamma = 0 is the plain fold, the diagonal of distinct inputs is the
    one-input P, Q, collinear ReLU-family inputs scale, antipodal inputs of an odd network
    flip signs, the deep linear Q is isotropic. Against real residual networks (two
    inputs, gamma = 0.5, :class:`pdlt.experiment.Ensemble`): every entry of tanh's P, Q at
    layers 2-3, ReLU's Q and GELU's Q (inputs scaled by 0.7) at layer 3 (best entry
    12-22 %, x0.5 and x2 rejected); GELU's autodiff P estimates are too heavy-tailed to
    resolve it (44 %).

    Parameters
    ----------
    mlp : MLP
        Any activation (sigma'' pointwise, as autodiff sees it), per-layer ``gamma``,
        ``xi``; unequal widths only where ``gamma = 0``.
    x : array_like (N, n0), optional
        Inputs.
    Ks, Thetas : ndarray (L, N, N), optional
        The infinite-width kernel and NTK at every layer instead of ``x`` (both or neither).
    accuracy : {"fast", "default", "high"}
        Rule of the three- and four-variable averages.
    stats : sequence of {"P", "Q"}

    Returns
    -------
    dict
        name -> ndarray (L, N, N, N, N), normalized by ``n_{l-1}``; layer 1 is 0.

    Raises
    ------
    ValueError
        Bad arguments, an unknown statistic, or an input of zero variance.
    FloatingPointError
        A statistic that overflowed.

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.theory.residual_multi_dntk import residual_dntk_multi
    >>> m = pdlt.MLP(n0=2, width=8, depth=3, activation="tanh", C_W=0.75, gamma=0.5)
    >>> out = residual_dntk_multi(m, np.array([[1.0, 0.0], [0.6, 0.8]]))
    >>> out["P"].shape, out["Q"].shape
    ((3, 2, 2, 2, 2), (3, 2, 2, 2, 2))
    """
    stats = (stats,) if isinstance(stats, str) else tuple(stats)
    bad = [k for k in stats if k not in ("P", "Q")]
    if bad or not stats:
        raise ValueError(f"stats must name 'P' and/or 'Q'; got {stats!r}")
    return _ntk_multi(mlp, x, Ks, Thetas, accuracy,
                      lambda *a: _dntk_multi(*a, want=frozenset(stats)))


def residual_dntk_p_multi(mlp: MLP, x=None, *, Ks=None, Thetas=None,
                          accuracy="default") -> np.ndarray:
    """``P`` (L, N, N, N, N) of :func:`residual_dntk_multi`."""
    return residual_dntk_multi(mlp, x, Ks=Ks, Thetas=Thetas, accuracy=accuracy,
                               stats=("P",))["P"]


def residual_dntk_q_multi(mlp: MLP, x=None, *, Ks=None, Thetas=None,
                          accuracy="default") -> np.ndarray:
    """``Q`` (L, N, N, N, N) of :func:`residual_dntk_multi`."""
    return residual_dntk_multi(mlp, x, Ks=Ks, Thetas=Thetas, accuracy=accuracy,
                               stats=("Q",))["Q"]


# ---------------------------------------------------------------------------
# one-neuron averages of products
# ---------------------------------------------------------------------------

def _kinds(act):
    """Integrands ``{"s", "p", "q"}`` (sigma, sigma', sigma''); None for sigma'' of the
    ReLU family (0 pointwise), whose ``s``, ``p`` are exact piecewise monomials."""
    si = act.scale_invariant if act.name != "monomial" else None
    if si is not None:
        return {"s": PiecewiseMonomial(si[0], si[1], 1), "p": PiecewiseMonomial(si[0], si[1], 0),
                "q": None}
    ex = exp_slots(act)                  # elu: exponential polynomials (exact inner axis)
    if ex is not None:
        return dict(zip("spq", ex))
    return {"s": act.sigma, "p": act.d1, "q": act.d2}


def _product(fns):
    if all(isinstance(f, PiecewiseMonomial) for f in fns):
        out = fns[0]
        for f in fns[1:]:
            out = out * f
        return out
    if len(fns) == 1:
        return fns[0]
    return exp_product(fns, lambda z: np.prod([f(z) for f in fns], axis=0))


def _products(act, C, l, p, kl, kp, N, accuracy):
    """``T[e, f, g, h] = E[kl0_e kl1_f(z^(l)) kp0_g kp1_h(z^(p))]`` for one neuron.

    ``C[l, p]`` (N, N) is ``Cov(z^(l), z^(p))``; ``kl``, ``kp`` two kinds from "spq" each.
    Factors at one depth and one input are merged into one function (up to four
    variables); ``l == p`` is allowed (one depth). Zero where a factor is sigma'' of the
    ReLU family.
    """
    fk = _kinds(act)
    if any(fk[k] is None for k in kl + kp):
        return np.zeros((N,) * 4)
    kw = dict(kinks=act.kinks, growth=entire_growth(act))
    groups = {}
    for ix in np.ndindex(*(N,) * 4):
        var = {}                                  # (depth, input) -> kinds, in slot order
        for (dep, k), i in zip(((l, kl[0]), (l, kl[1]), (p, kp[0]), (p, kp[1])), ix):
            var.setdefault((dep, i), []).append(k)
        keys = list(var)
        names = tuple("".join(var[v]) for v in keys)
        groups.setdefault(names, []).append((ix, keys))
    T = np.empty((N,) * 4)
    for names, items in groups.items():
        d = len(names)
        cov = _gather(C, [[k[0] for k in keys] for _, keys in items],
                      [[k[1] for k in keys] for _, keys in items])
        fs = [_product([fk[c] for c in nm]) for nm in names]
        acc = _rule(accuracy, act, d)
        vals = np.atleast_1d(np.asarray(_expect(act, fs, cov, accuracy=acc, **kw), dtype=float))
        for k, (ix, _) in enumerate(items):
            T[ix] = vals[k]
    return T


# ---------------------------------------------------------------------------
# the fold
# ---------------------------------------------------------------------------

class _Zeros(dict):
    """The two-depth tables of one step; a missing one (uncorrelated depths) is zero."""

    def __init__(self, tab, zero):
        super().__init__(tab)
        self.zero = zero

    def __missing__(self, key):
        return self.zero


def _dntk_multi(mlp, Ks, Ths, accuracy, want=frozenset("PQ")):
    """P and/or Q over the distinct inputs (:func:`residual_dntk_multi`): ``{name: (L, N,
    N, N, N)}``."""
    act = mlp.activation
    L, N = Ks.shape[0], Ks.shape[1]
    out = {k: np.zeros((L,) + (N,) * 4) for k in want}
    if L == 1:
        return out
    nr = _neuron(mlp, Ks, accuracy)     # one neuron's trajectory: C = Cov(z^(l), z^(m))
    avg, a, C = nr.avg, nr.a, nr.C
    CW = np.asarray(mlp.C_W, float)
    lW = np.asarray(mlp.lambda_W, float)
    # The increments enter as Ut_m = G_m^+ U_m (G_m = varw[m] their covariance): the
    # Gaussian conditioning E[W_ij | u_i] = c sigma_j^T G^+ u_i. Then E[Ut_m f(z)] and
    # E[Ut_m z] carry the projector G^+ G onto G's range, never G^+ alone (which is
    # round-off where G is singular: collinear inputs of a homogeneous network, antipodal
    # inputs of an odd one with C_b = 0). U_0 = z^(1) never carries a coefficient.
    proj = nr.proj
    NN = N * N
    nU = L * N                                    # U_{m;d} at m N + d
    Fd = nU + L * NN                              # F's features: U | S_{p;(c,e)} = s_c p_e
    Fq = Fd + L * NN                              # Q's: ... | QP_{p;(c,e)} = q_c p_e
    nP = 1 + 2 * L * NN                           # P's psi: 1 | QS_{p;(e,f)} | PP_{p;(e,f)}
    ar = np.arange(N)
    tri = [(a0, a1, a2) for a0 in range(N) for a1 in range(N) for a2 in range(N)]

    def qs_col(p):
        return 1 + p * NN

    def pp_col(p):
        return 1 + L * NN + p * NN

    def sp_col(p):
        return nU + p * NN

    def qp_col(p):
        return Fd + p * NN

    # state: B's attachments (residual_multi._b_multi), P's Pi, F's M, Q's w
    beta0 = np.zeros((N,) * 4)
    bk = np.zeros((L,) + (N,) * 4)
    bi = np.zeros((L,) + (N,) * 4)
    Pi = np.zeros((N, N, N, nU, nP))
    M = np.zeros((N, N, Fd, Fd))
    w = np.zeros((N, N, N, Fq))
    needP, needQ = "P" in want, "Q" in want
    for l in range(L - 1):                        # step layer l+1 -> l+2 (0-based l)
        r = mlp.widths[l + 1] / mlp.widths[l]
        cw, g, xi, lw = CW[l + 1], mlp.gamma[l + 1], mlp.xi[l + 1], lW[l + 1]
        av = avg[l]
        Th, PPl, QSl = Ths[l], av.PP, av.QS
        tab = {}
        for p in range(l):
            if not np.any(C[l, p] != 0.0):
                # a plain layer between p and l: every feature of depth p has a zero
                # coefficient from that step on (its gamma kills the history)
                continue
            kinds = []
            if needP:
                kinds += [("qs", "pp"), ("pp", "qs"), ("pp", "pp")]
            if needQ:
                kinds += [("sp", "sp"), ("sp", "qp"), ("qp", "sp")]
            for kl, kp in kinds:
                tab[kl, kp, p] = _products(act, C, l, p, kl, kp, N, accuracy)
        zero = np.zeros((N,) * 4)
        tab = _Zeros(tab, zero)
        # d-derivatives: G[a1, a2, b] = <d_b (p_a1 s_a2)>, G2[a1, a2, b] = <d_b (q_a1 p_a2)>
        esp = np.zeros((N, N, Fq))                # E[phi s_x p_y(z^(l))] on Q's features
        esp[:, :, :(l + 1) * N] = np.einsum("m,mdb,yxb->xymd", a[l, :l + 1], proj[:l + 1],
                                            av.G).reshape(N, N, (l + 1) * N)
        eqp = np.zeros((N, N, Fd))                # E[phi q_x p_y(z^(l))] on F's features
        eqp[:, :, :(l + 1) * N] = np.einsum("m,mdb,xyb->xymd", a[l, :l + 1], proj[:l + 1],
                                            av.G2).reshape(N, N, (l + 1) * N)
        if needQ:
            for p in range(l):
                esp[:, :, sp_col(p):sp_col(p) + NN] = tab["sp", "sp", p].reshape(N, N, NN)
                esp[:, :, qp_col(p):qp_col(p) + NN] = tab["sp", "qp", p].reshape(N, N, NN)
                eqp[:, :, sp_col(p):sp_col(p) + NN] = tab["qp", "sp", p].reshape(N, N, NN)
        esF = esp[:, :, :Fd]
        if needP:
            ephi = esp[:, :, :nU]                 # [c, a0]: E[U s_c p_a0(z^(l))]
            epsi = np.zeros((N, N, nP))           # [g, h]: E[p_g p_h(z^(l)) psi]
            epsi[:, :, 0] = PPl
            for p in range(l):
                epsi[:, :, qs_col(p):qs_col(p) + NN] = tab["pp", "qs", p].reshape(N, N, NN)
                epsi[:, :, pp_col(p):pp_col(p) + NN] = tab["pp", "pp", p].reshape(N, N, NN)
            Q4 = av.quad("qpps")                  # <q_a0 p_a1 p_a2 s_c>
            newPi = r * g ** 3 * Pi
            for (a0, a1, a2) in tri:
                P_t = Pi[a0, a1, a2]
                qB = (a0, a0, a1, a2)
                ThTh = Th[a0, a1] * Th[a0, a2]
                Pe = P_t @ epsi[a1, a2]
                ePi = ephi[:, a0] @ P_t           # (c, nP)
                ePe = ephi[:, a0] @ Pe            # (c,)
                bk_q = np.array([bk[p][qB] for p in range(l)])
                bi_q = np.array([bi[p][qB] for p in range(l)])
                qspp = (np.array([tab["qs", "pp", p][a0, :, a1, a2] for p in range(l)])
                        if l else np.zeros((0, N)))          # (p, c)
                pppp = np.array([tab["pp", "pp", p][a1, a2, a0, a0] for p in range(l)])
                Bfg = (beta0[qB] * QSl[a0] * PPl[a1, a2] + QSl[a0] * float(bk_q @ pppp)
                       + (bi_q @ qspp) * PPl[a1, a2])
                b0 = beta0[qB] * QSl[a0] + bi_q @ qspp
                coef = np.zeros((N, nP))
                coef[:, 0] = (xi ** 3 * cw ** 2 * (ThTh * Q4[a0, a1, a2] + r * Bfg + r * ePe)
                              + xi * cw * g * g * r * b0)
                coef[ar, qs_col(l) + a0 * N + ar] += xi * cw * g * g * ThTh
                for p in range(l):
                    coef[:, pp_col(p) + a0 * N + a0] += xi * cw * g * g * r * QSl[a0] * bk_q[p]
                coef += xi * cw * g * g * r * ePi
                newPi[a0, a1, a2][:, 0] += r * g * xi * xi * cw * Pe
                newPi[a0, a1, a2][(l + 1) * N:(l + 2) * N] += coef
            Pi = newPi
        if needQ:
            Q4 = av.quad("qpps")                  # <q_a0 p_a1 p_a2 s_e>
            S4 = av.quad("sspp")                  # <s_a1 s_e p_a0 p_a2>
            neww = np.empty_like(w)
            for (a0, a1, a2) in tri:
                w_t = w[a0, a1, a2]
                Mt = M[a0, a2]
                v1 = eqp[a0, a1] @ Mt
                v2 = esF[a1, a0] @ Mt
                we = esp[:, a2] @ w_t             # (e,)
                Y = (xi ** 3 * cw ** 2 * (Th[a0, a1] * Th[a0, a2] * Q4[a0, a1, a2]
                                          + r * Th[a0, a1] * (esF[:, a2] @ v1)
                                          + r * PPl[a0, a1] * we)
                     + r * xi * g * g * cw * we
                     + lw * xi ** 3 * cw * (Th[a0, a2] * S4[a1, :, a0, a2]
                                            + r * (esF[:, a2] @ v2)))
                new = r * (g ** 3 + xi * xi * g * cw * PPl[a0, a1]) * w_t
                new[:Fd] += r * xi * xi * g * (cw * Th[a0, a1] * v1 + lw * v2)
                new[qp_col(l) + a0 * N + a1] += xi * xi * g * cw * Th[a0, a1] * Th[a0, a2]
                new[sp_col(l) + a1 * N + a0] += lw * xi * xi * g * Th[a0, a2]
                new[(l + 1) * N:(l + 2) * N] += Y
                neww[a0, a1, a2] = new
            w = neww
            # F's form M (residual_multi._f_multi), E[a, c] = E[phi p_a s_c(z^(l))]
            E = esF.transpose(1, 0, 2)
            eMi = np.einsum("acx,abxy->abcy", E, M)
            Mek = np.einsum("abxy,bcy->abcx", M, E)
            eMe = np.einsum("abcy,bdy->abcd", eMi, E)
            Q4F = av.quad("ppss")
            M = r * g * g * M
            mix = xi * xi * cw * cw * (Q4F * Th[:, :, None, None] + r * eMe)
            u = slice((l + 1) * N, (l + 2) * N)
            M[:, :, u, u] += mix
            if g != 0.0:
                k = xi * g * cw
                for a_ in range(N):
                    for b_ in range(N):
                        for c in range(N):
                            M[a_, b_, (l + 1) * N + c, sp_col(l) + c * N + a_] += k * Th[a_, b_]
                            M[a_, b_, sp_col(l) + c * N + b_, (l + 1) * N + c] += k * Th[a_, b_]
                M[:, :, u, :] += k * r * eMi
                M[:, :, :, u] += k * r * Mek.transpose(0, 1, 3, 2)
        # B's attachments (residual_multi._b_multi)
        if needP:
            i1, i2 = ar[:, None, None, None], ar[None, :, None, None]
            i3, i4 = ar[None, None, :, None], ar[None, None, None, :]
            s12, s34 = PPl[i1, i2], PPl[i3, i4]
            ThTh4 = Th[i1, i3] * Th[i2, i4]
            hist_i = np.zeros((N,) * 4)
            hist_k = np.zeros((N,) * 4)
            for p in range(l):
                T = tab["pp", "pp", p]            # [a1, a2, a3, a4]: p_a1 p_a2 (l), p_a3 p_a4 (p)
                hist_i += bi[p] * T
                hist_k += bk[p] * T.transpose(2, 3, 0, 1)
            chi12, chi34 = xi * xi * cw * s12 + g * g, xi * xi * cw * s34 + g * g
            beta0 = (xi ** 4 * cw ** 2 * av.quad("pppp") * ThTh4
                     + r * (chi12 * chi34 * beta0
                            + xi * xi * cw * (chi34 * hist_i + chi12 * hist_k)))
            bk[:l] *= r * g * g * chi12
            bi[:l] *= r * g * g * chi34
            bk[l] = bi[l] = xi * xi * g * g * cw * ThTh4
        # readout at layer l+1: E[phi z^(l+1)_y] and E[psi]
        vz = np.zeros((N, Fq))                    # [y, feature]
        vz[:, :(l + 2) * N] = np.einsum("m,mdy->ymd", a[l + 1, :l + 2],
                                        proj[:l + 2]).reshape(N, (l + 2) * N)
        for p in range(l + 1):
            vz[:, sp_col(p):sp_col(p) + NN] = np.einsum(
                "yf,ecf->yce", C[l + 1, p], avg[p].G).reshape(N, NN)
            vz[:, qp_col(p):qp_col(p) + NN] = np.einsum(
                "yf,cef->yce", C[l + 1, p], avg[p].G2).reshape(N, NN)
        if needP:
            mpsi = np.zeros(nP)
            mpsi[0] = 1.0
            for p in range(l + 1):
                mpsi[qs_col(p):qs_col(p) + NN] = avg[p].QS.ravel()
                mpsi[pp_col(p):pp_col(p) + NN] = avg[p].PP.ravel()
            out["P"][l + 1] = np.einsum("ym,abcmk,k->abcy", vz[:, :nU], Pi, mpsi)
        if needQ:
            out["Q"][l + 1] = np.einsum("abck,yk->abcy", w, vz)
    return out
