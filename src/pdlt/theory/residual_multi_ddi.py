r"""N-input ddNTK statistics T (and R) of residual MLPs at order 1/n, any activation.

``T[l, a0, a1, a2, a3] = n_{l-1} E[ddIIH_{ijij; a0a1a2a3}]`` (i != j;
``shared/NOTATION.md``), the plain convention of :func:`pdlt.theory.ddntk.ddntk_T_step`.
The one-input construction (:func:`pdlt.theory.residual_ntk.residual_ddntk_t`,
``docs/derivations/residual_ntk.md`` section 13b) carries over with input slots
(``docs/derivations/residual_ntk_multi.md``, section "R and T at N inputs (h42)"): the
conditional mean of ``ddIIH_{ijij}`` given the two trajectories is a constant, and a
step reads

* F's bilinear form ``n E[H_{ik;ab} | .] = phi(i)^T M^{ab} phi(k)`` (the recursion of
  :func:`pdlt.theory.residual_multi.residual_f_multi`, repeated here because that
  function does not expose ``M``), and
* Q's linear form ``n E[dH_{jjk; a0a1a2} | .] = w^{a0a1a2} . phi(k)`` in neuron k's features
  (increments ``U_{m;c}``, ``sigma_c sigma'_e(z^(p))``, ``sigma''_c sigma'_e(z^(p))``), the
  N-input form of :func:`pdlt.theory.residual_ntk.residual_dntk_q`.

Q itself comes out of the same fold (:func:`residual_q_multi_ddi`, used here only as the
check of ``w``: at gamma = 0 the plain Q, for coinciding inputs the one-input Q).
"""

from __future__ import annotations

import numpy as np

from ..gaussian._multi import PiecewiseMonomial, entire_growth, expect_nd
from ..network import MLP
from .residual_multi import _UP, _coefficients, _layer_tables, _ntk_multi, _stein_sd

__all__ = ["residual_t_multi", "residual_q_multi_ddi"]


def residual_t_multi(mlp: MLP, x=None, *, Ks=None, Thetas=None, accuracy="default") -> np.ndarray:
    r"""Exact N-input ddNTK statistic ``T`` of a residual MLP at every layer, any activation.

    ``T[l, a0, a1, a2, a3] = n_{l-1} E[ddIIH_{ijij; a0a1a2a3}]`` (i != j), with
    ``ddIIH_{i0i1i2i3} = g_{i2}^T Hs_{i0} Hs_{i1} g_{i3}`` (gradients ``g``, Hessians ``Hs``
    rescaled by the learning rates). A step (``s, p, q = sigma, sigma', sigma''`` at layer
    l, index 0..3 for the inputs a0..a3; ``chi_ab = xi^2 C_W <p_a p_b> + gamma^2``;
    ``e^{f}`` the one-neuron averages ``E[f(z^(l)) phi]``;
    ``v_{ab} = C_W Theta_ab e^{q_a p_b} + lambda_W e^{p_a s_b}``):

    .. math::
        T'_{0123} = \xi^4\Theta_{01}\big(C_W^2\Theta_{02}\Theta_{13}\langle q_0q_1p_2p_3\rangle
            + \lambda_W C_W\Theta_{02}\langle q_0p_2p_1s_3\rangle
            + \lambda_W C_W\Theta_{13}\langle p_0s_2q_1p_3\rangle
            + \lambda_W^2\langle p_0s_2p_1s_3\rangle\big)
          + r\xi^4\,v_{02}^T M^{01} v_{13}
          + r\xi^2\chi_{13}\,w^{130}\cdot v_{02} + r\xi^2\chi_{02}\,w^{021}\cdot v_{13}
          + r\chi_{02}\chi_{13}T_{0123},

    ``M`` the bilinear form of F and ``w`` the linear form of Q at layer l (the ``w``
    contraction runs over all of Q's features, ``v`` extended by the ``sigma''sigma'``
    features). At gamma = 0 this is :func:`pdlt.theory.ddntk.ddntk_T_step`; for one input
    :func:`pdlt.theory.residual_ntk.residual_ddntk_t`. Derivation:
    ``docs/derivations/residual_ntk_multi.md``, section "R and T at N inputs (h42)".

    Parameters
    ----------
    mlp : MLP
        Any activation, per-layer ``gamma``, ``xi`` (unequal widths only where
        ``gamma = 0``).
    x : array_like (N, n0), optional
        Inputs.
    Ks, Thetas : ndarray (L, N, N), optional
        The infinite-width kernel and NTK at every layer instead of ``x`` (both or neither).
    accuracy : {"fast", "default", "high"}
        Rule of the three- and four-variable averages.

    Returns
    -------
    ndarray (L, N, N, N, N)
        ``T`` normalized by ``n_{l-1}``; layer 1 is 0.

    Raises
    ------
    ValueError
        Bad arguments, or an input of zero variance.
    FloatingPointError
        If T overflows (far from criticality at large depth).

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.theory.residual_multi_ddi import residual_t_multi
    >>> m = pdlt.MLP(n0=2, width=8, depth=3, activation="tanh", gamma=0.5)
    >>> residual_t_multi(m, np.array([[1.0, 0.0], [0.6, 0.8]])).shape
    (3, 2, 2, 2, 2)
    """
    return _ntk_multi(mlp, x, Ks, Thetas, accuracy, lambda *a: _qt_multi(*a, want="T"))["T"]


def residual_q_multi_ddi(mlp: MLP, x=None, *, Ks=None, Thetas=None,
                         accuracy="default") -> np.ndarray:
    """N-input ``Q`` of a residual MLP from the linear form ``w`` that T reads.

    ``Q[l, a0, a1, a2, a3] = n_{l-1} E[dH_{jjk; a0a1a2} z_{k;a3}]`` (j != k): the readout
    ``w^{a0a1a2} . E[phi z^(l)_{a3}]`` of the form :func:`residual_t_multi` propagates.
    Exposed as the check of that form (gamma = 0: the plain Q; one input:
    :func:`pdlt.theory.residual_ntk.residual_dntk_q`) and as an independent cross-check
    of any other N-input residual Q. Parameters and returns as :func:`residual_t_multi`.
    """
    return _ntk_multi(mlp, x, Ks, Thetas, accuracy, lambda *a: _qt_multi(*a, want="Q"))["Q"]


# ---------------------------------------------------------------------------
# one-neuron two-depth averages of products of sigma, sigma', sigma''
# ---------------------------------------------------------------------------

def _letter_fn(act, letters):
    """The product of ``{"s": sigma, "p": sigma', "q": sigma''}`` over ``letters`` (one
    variable), as an integrand of :func:`expect_nd`; None where it vanishes pointwise
    (``sigma''`` of the ReLU family)."""
    si = act.scale_invariant if act.name != "monomial" else None
    if si is not None:
        if "q" in letters:
            return None
        k = len(letters)
        return PiecewiseMonomial(si[0] ** k, si[1] ** k, letters.count("s"))
    f = {"s": act.sigma, "p": act.d1, "q": act.d2}
    fs = [f[c] for c in letters]
    if len(fs) == 1:
        return fs[0]

    def prod(z):
        v = fs[0](z)
        for g in fs[1:]:
            v = v * g(z)
        return v
    return prod


class _TwoDepth:
    """``E[X_c Y_e(z^(p)) Z_a W_b(z^(l))]`` as (N, N, N, N) tensors [c, e, a, b], cached.

    One neuron at two depths (``C[l, p]`` the (N, N) covariance of ``z^(l)`` with
    ``z^(p)``); ``X, Y, Z, W`` from ``"spq"``. Coinciding inputs at one depth are merged
    (their functions multiplied), so every entry is an average over up to four jointly
    Gaussian variables (:func:`pdlt.gaussian.expect_nd`; three or fewer one rule up).
    """

    def __init__(self, act, C, N, accuracy):
        self.act, self.C, self.N, self.accuracy = act, C, N, accuracy
        self.kw = dict(kinks=act.kinks, growth=entire_growth(act))
        self._cache = {}
        self._fns = {}

    def fn(self, letters):
        key = "".join(sorted(letters))
        if key not in self._fns:
            self._fns[key] = _letter_fn(self.act, key)
        return self._fns[key]

    def __call__(self, l, p, slots):
        key = (l, p, slots)
        if key not in self._cache:
            self._cache[key] = self._compute(l, p, slots)
        return self._cache[key]

    def _compute(self, l, p, slots):
        N, C = self.N, self.C
        groups = {}
        for c in range(N):
            for e in range(N):
                for a in range(N):
                    for b in range(N):
                        var = []
                        for dep, ins, lets in ((p, (c, e), slots[:2]), (l, (a, b), slots[2:])):
                            per = {}
                            for i, ch in zip(ins, lets):
                                per.setdefault(i, []).append(ch)
                            var += [(dep, i, "".join(sorted(v))) for i, v in sorted(per.items())]
                        names = tuple(v[2] for v in var)
                        groups.setdefault(names, []).append(((c, e, a, b), var))
        out = np.zeros((N,) * 4)
        for names, items in groups.items():
            fs = [self.fn(nm) for nm in names]
            if any(f is None for f in fs):
                continue                                  # sigma'' of the ReLU family: 0
            d = len(names)
            cov = np.empty((len(items), d, d))
            for k, (_, var) in enumerate(items):
                for i in range(d):
                    for j in range(d):
                        cov[k, i, j] = C[var[i][0], var[j][0]][var[i][1], var[j][1]]
            acc = _UP[self.accuracy] if d <= 3 else self.accuracy
            vals = np.atleast_1d(np.asarray(expect_nd(fs, cov, accuracy=acc, **self.kw),
                                            dtype=float))
            for k, (ix, _) in enumerate(items):
                out[ix] = vals[k]
        return out


# ---------------------------------------------------------------------------
# the fold: F's form M, Q's form w, T
# ---------------------------------------------------------------------------

def _setup(mlp, Ks, accuracy):
    """Layer tables, trajectory coefficients, increment covariances and ``C[l, m]``."""
    L = Ks.shape[0]
    diag, avg = _layer_tables(mlp, Ks, accuracy)
    a = _coefficients(mlp)
    CW, Cb = np.asarray(mlp.C_W, float), np.asarray(mlp.C_b, float)
    N = Ks.shape[1]
    varw = np.empty((L, N, N))
    varw[0] = Ks[0]
    for q in range(1, L):
        varw[q] = Cb[q] + CW[q] * avg[q - 1].S
    C = np.einsum("lq,mq,qab->lmab", a, a, varw)   # Cov(z^(l), z^(m)), one neuron
    return avg, a, varw, C


class _Layout:
    """Feature indices: ``U_{m;c}`` (L N), ``S_{p;(c,e)} = sigma_c sigma'_e(z^(p))``
    (L N^2), ``QP_{p;(c,e)} = sigma''_c sigma'_e(z^(p))`` (L N^2). F's form M lives on
    the first two blocks (``nM`` features), Q's form w on all three (``nQ``)."""

    def __init__(self, L, N):
        self.L, self.N = L, N
        self.nU = L * N
        self.nM = self.nU + L * N * N
        self.nQ = self.nM + L * N * N

    def U(self, m):
        return slice(m * self.N, (m + 1) * self.N)

    def S(self, p):
        return slice(self.nU + p * self.N ** 2, self.nU + (p + 1) * self.N ** 2)

    def QP(self, p):
        return slice(self.nM + p * self.N ** 2, self.nM + (p + 1) * self.N ** 2)


def _evec(lay, l, a, varw, J, td, f_slots):
    """``E[a, b, alpha] = E[phi_alpha f_ab(z^(l))]`` over all nQ features.

    ``f_ab = f1_a f2_b`` with ``f_slots = "f1f2"`` (``"ps"``: sigma'_a sigma_b, ``"qp"``:
    sigma''_a sigma'_b); ``J[a, b, f] = <d_f f_ab>_{K^(l)}`` (Stein on the increments).
    """
    N = lay.N
    E = np.zeros((N, N, lay.nQ))
    for m in range(l + 1):
        E[:, :, lay.U(m)] = a[l, m] * np.einsum("df,abf->abd", varw[m], J)
    for p in range(l):
        E[:, :, lay.S(p)] = td(l, p, "sp" + f_slots).transpose(2, 3, 0, 1).reshape(N, N, N * N)
        E[:, :, lay.QP(p)] = td(l, p, "qp" + f_slots).transpose(2, 3, 0, 1).reshape(N, N, N * N)
    return E


def _qt_multi(mlp, Ks, Ths, accuracy, want="T"):
    L, N = Ks.shape[0], Ks.shape[1]
    out = {"T": np.zeros((L,) + (N,) * 4), "Q": np.zeros((L,) + (N,) * 4)}
    if L == 1:
        return {want: out[want]}
    act = mlp.activation
    avg, a, varw, C = _setup(mlp, Ks, accuracy)
    td = _TwoDepth(act, C, N, accuracy)
    lay = _Layout(L, N)
    nM = lay.nM
    Jsp = [_stein_sd(av) for av in avg]            # [a, c, f] = <d_f (sigma'_a sigma_c)>
    Jqp = [np.asarray(av.G2) for av in avg]        # [a, c, f] = <d_f (sigma''_a sigma'_c)>
    CW, lW = np.asarray(mlp.C_W, float), np.asarray(mlp.lambda_W, float)
    M = np.zeros((N, N, nM, nM))                   # F's form, [a, b] -> (nM, nM)
    w = np.zeros((N, N, N, lay.nQ))                # Q's form, [a0, a1, a2] -> (nQ,)
    T = np.zeros((N,) * 4)
    for l in range(L - 1):                         # step layer l+1 -> l+2 (0-based l)
        r = mlp.widths[l + 1] / mlp.widths[l]
        cw, g, xi, lw = CW[l + 1], mlp.gamma[l + 1], mlp.xi[l + 1], lW[l + 1]
        Gi = np.linalg.pinv(varw[l + 1], hermitian=True)
        Th, PP = Ths[l], avg[l].PP
        Esp = _evec(lay, l, a, varw, Jsp[l], td, "ps")      # [a, b]: sigma'_a sigma_b
        Eqp = _evec(lay, l, a, varw, Jqp[l], td, "qp")      # [a, b]: sigma''_a sigma'_b
        chi = xi * xi * cw * PP + g * g
        # --- T (reads M, w of layer l) ---
        v = cw * Th[:, :, None] * Eqp + lw * Esp            # [a, b, alpha]
        QPPS = avg[l].quad("qpps")
        phi2 = (cw ** 2 * Th[:, None, :, None] * Th[None, :, None, :] * avg[l].quad("qqpp")
                + lw * cw * Th[None, :, None, :] * np.einsum("badc->abcd", QPPS)
                + lw * cw * Th[:, None, :, None] * QPPS
                + lw ** 2 * np.moveaxis(avg[l].quad("sspp"), (0, 1), (2, 3)))
        wv = np.einsum("xyzk,zuk->xyzu", w, v)              # w^{xyz} . v_{zu}
        T = (xi ** 4 * Th[:, :, None, None] * phi2
             + r * xi ** 4 * np.einsum("ack,abkm,bdm->abcd", v[..., :nM], M, v[..., :nM])
             + r * xi * xi * chi[None, :, None, :] * np.einsum("bdac->abcd", wv)
             + r * xi * xi * chi[:, None, :, None] * np.einsum("acbd->abcd", wv)
             + r * chi[:, None, :, None] * chi[None, :, None, :] * T)
        out["T"][l + 1] = T
        # --- Q's form w' ---
        Mq = np.einsum("abk,ackm->abcm", Eqp[..., :nM], M)   # (e^{q_a p_b})^T M^{ac}
        Ms = np.einsum("abk,ackm->abcm", Esp[..., :nM], M)   # (e^{p_a s_b})^T M^{ac}
        wE = np.einsum("xyzk,zek->xyze", w, Esp)             # w^{xyz} . e^{p_z s_e}
        X = (xi ** 3 * cw ** 2 * (Th[:, :, None, None] * Th[:, None, :, None] * QPPS
                                  + r * Th[:, :, None, None] * np.einsum(
                                      "abcm,cem->abce", Mq, Esp[..., :nM])
                                  + r * PP[:, :, None, None] * wE)
             + r * xi * g * g * cw * wE
             + lw * xi ** 3 * cw * (Th[:, None, :, None] * avg[l].quad("psps")
                                    + r * np.einsum("abcm,cem->abce", Ms, Esp[..., :nM])))
        new = r * (g ** 3 + xi * xi * g * cw * PP)[:, :, None, None] * w
        new[..., :nM] += r * xi * xi * g * (cw * Th[:, :, None, None] * Mq + lw * Ms)
        for a0 in range(N):
            for a1 in range(N):
                for a2 in range(N):
                    new[a0, a1, a2, lay.QP(l).start + a0 * N + a1] += \
                        xi * xi * g * cw * Th[a0, a1] * Th[a0, a2]
                    new[a0, a1, a2, lay.S(l).start + a1 * N + a0] += lw * xi * xi * g * Th[a0, a2]
        new[..., lay.U(l + 1)] += np.einsum("xyze,ef->xyzf", X, Gi)
        w = new
        # --- F's form M' (residual_multi._f_multi) ---
        E = Esp[..., :nM]
        eMi = np.einsum("acx,abxy->abcy", E, M)
        Mek = np.einsum("abxy,bcy->abcx", M, E)
        eMe = np.einsum("abcy,bdy->abcd", eMi, E)
        M = r * g * g * M
        mix = xi * xi * cw * cw * (avg[l].quad("ppss") * Th[:, :, None, None] + r * eMe)
        M[:, :, lay.U(l + 1), lay.U(l + 1)] += np.einsum("abcd,ce,df->abef", mix, Gi, Gi)
        if g != 0.0:
            k = xi * g * cw
            s0 = lay.S(l).start
            for a_ in range(N):
                for b_ in range(N):
                    for c in range(N):
                        M[a_, b_, lay.U(l + 1), s0 + c * N + a_] += k * Th[a_, b_] * Gi[c]
                        M[a_, b_, s0 + c * N + b_, lay.U(l + 1)] += k * Th[a_, b_] * Gi[c]
            M[:, :, lay.U(l + 1), :] += k * r * np.einsum("cu,abcy->abuy", Gi, eMi)
            M[:, :, :, lay.U(l + 1)] += k * r * np.einsum("cu,abcx->abxu", Gi, Mek)
        # --- Q readout at layer l+1: vz[y, alpha] = E[phi_alpha z^(l+1)_y] ---
        if want == "Q":
            vz = np.zeros((N, lay.nQ))
            for m in range(l + 2):
                vz[:, lay.U(m)] = a[l + 1, m] * varw[m].T
            for p in range(l + 1):
                vz[:, lay.S(p)] = np.einsum("yf,ecf->yce", C[l + 1, p], Jsp[p]).reshape(N, N * N)
                vz[:, lay.QP(p)] = np.einsum("yf,cef->yce", C[l + 1, p], Jqp[p]).reshape(N, N * N)
            out["Q"][l + 1] = np.einsum("xyzk,uk->xyzu", w, vz)
    return {want: out[want]}
