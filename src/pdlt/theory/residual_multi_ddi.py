r"""N-input ddNTK statistics R and T of residual MLPs at order 1/n (and the P, Q they read).

``R[l, a0, a1, a2, a3] = n_{l-1} E[ddIH_{iijj; a0a1a2a3}]`` and ``T[l, a0, a1, a2, a3] =
n_{l-1} E[ddIIH_{ijij; a0a1a2a3}]`` (i != j; ``shared/NOTATION.md``), the plain conventions
of :func:`pdlt.theory.ddntk.ddntk_R_step` and :func:`~pdlt.theory.ddntk.ddntk_T_step`. The
one-input constructions (:func:`pdlt.theory.residual_ntk.residual_ddntk_r`,
:func:`~pdlt.theory.residual_ntk.residual_ddntk_t`; ``docs/derivations/residual_ntk.md``
sections 13b, 13c) carry over with input slots (``docs/derivations/residual_ntk_multi.md``,
section "R and T at N inputs (h42)"). A neuron carries its own past, so each step reads
conditional forms over one neuron's trajectory, built here at N inputs:

* T: the conditional mean of ``ddIIH_{ijij}`` is a constant; a step reads F's bilinear form
  ``n E[H_{ik;ab} | .] = phi(i)^T M^{ab} phi(k)`` (the recursion of
  :func:`pdlt.theory.residual_multi.residual_f_multi`, repeated because that function does
  not expose ``M``) and Q's linear form ``n E[dH_{jjk; a0a1a2} | .] = w^{a0a1a2} . phi(k)``
  (increments ``U_{m;c}``, ``sigma_c sigma'_e(z^(p))``, ``sigma''_c sigma'_e(z^(p))``);
* R: the conditional mean of ``ddIH_{iijj}`` is a linear form in neuron j's features
  (``sigma'''_c sigma'_e``, ``sigma''_c sigma_e``, ``sigma'_c sigma'_e`` at every depth); a
  step reads B's attachments (:func:`pdlt.theory.residual_multi.residual_b_multi`) and P's
  bilinear form ``n E[dH_{jkk; b0b1b2} | .] = phi(j)^T Pi^{b0b1b2} psi(k)``.

P and Q come out of the same folds (:func:`residual_p_multi_ddi`, :func:`residual_q_multi_ddi`:
the checks of ``Pi`` and ``w``, equal to the plain P, Q at gamma = 0 and to the one-input ones
for coinciding inputs). One-neuron two-depth averages of products of sigma, sigma', sigma''
are four-variable Gaussian averages (:func:`pdlt.gaussian.expect_nd`); sigma''' is never
evaluated (Stein's lemma on sigma''). Cost: ``O(L^2 N^4)`` such averages (tanh, N = 2,
depth 4: ~1 s for P, Q, R, T; N = 3: 10-15 s; kinked activations other than the ReLU family
take the split rules and are much slower: ELU, N = 2, depth 3, minutes).
"""

from __future__ import annotations

import numpy as np

from ..gaussian._exppw import exp_product, exp_slots
from ..gaussian._multi import PiecewiseMonomial, entire_growth
from ..network import MLP
from . import residual_multi
from .residual_multi import _expect, _fn, _gather, _neuron, _ntk_multi, _rule, _stein_sd

__all__ = ["residual_ddi_multi", "residual_r_multi", "residual_t_multi", "residual_p_multi_ddi",
           "residual_q_multi_ddi"]


def residual_ddi_multi(mlp: MLP, x=None, *, Ks=None, Thetas=None, accuracy="default",
                       stats=("R", "T")) -> dict:
    """The N-input residual statistics ``stats`` (a subset of P, Q, R, T), one fold per pair.

    R and P share one fold (P's bilinear form), T and Q another (F's and Q's forms):
    :func:`residual_r_multi`, :func:`residual_p_multi_ddi`, :func:`residual_t_multi`,
    :func:`residual_q_multi_ddi`. What :func:`pdlt.statistics` calls for residual MLPs
    at N inputs.

    Parameters
    ----------
    mlp, x, Ks, Thetas, accuracy
        As :func:`residual_t_multi`.
    stats : sequence of str
        Names from ``("P", "Q", "R", "T")``.

    Returns
    -------
    dict
        name -> ndarray (L, N, N, N, N), normalized by ``n_{l-1}``.

    Raises
    ------
    ValueError
        An unknown name in ``stats``, or as :func:`residual_t_multi` and
        :func:`residual_r_multi`.
    """
    stats = tuple(stats)
    bad = [k for k in stats if k not in ("P", "Q", "R", "T")]
    if bad:
        raise ValueError(f"stats: {bad} are not computed here; choose from P, Q, R, T "
                         "(the others: pdlt.statistics)")
    pr = tuple(k for k in ("P", "R") if k in stats)
    qt = tuple(k for k in ("Q", "T") if k in stats)

    def core(*a):
        out = _pr_multi(*a, want=pr) if pr else {}
        if qt:
            out.update(_qt_multi(*a, want=qt))
        return out
    return _ntk_multi(mlp, x, Ks, Thetas, accuracy, core)


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
    return _ntk_multi(mlp, x, Ks, Thetas, accuracy, lambda *a: _qt_multi(*a, want=("T",)))["T"]


def residual_q_multi_ddi(mlp: MLP, x=None, *, Ks=None, Thetas=None,
                         accuracy="default") -> np.ndarray:
    """N-input ``Q`` of a residual MLP from the linear form ``w`` that T reads.

    ``Q[l, a0, a1, a2, a3] = n_{l-1} E[dH_{jjk; a0a1a2} z_{k;a3}]`` (j != k): the readout
    ``w^{a0a1a2} . E[phi z^(l)_{a3}]`` of the form :func:`residual_t_multi` propagates.
    Exposed as the check of that form (gamma = 0: the plain Q; one input:
    :func:`pdlt.theory.residual_ntk.residual_dntk_q`) and as an independent cross-check
    of any other N-input residual Q. Parameters and returns as :func:`residual_t_multi`.
    """
    return _ntk_multi(mlp, x, Ks, Thetas, accuracy, lambda *a: _qt_multi(*a, want=("Q",)))["Q"]


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
    if "t" in letters:
        raise ValueError("the third derivative is taken by Stein (_TwoDepth._stein)")
    f = {"s": act.sigma, "p": act.d1, "q": act.d2}
    ex = exp_slots(act)                  # elu: exponential polynomials (exact inner axis)
    if ex is not None:
        f = dict(zip("spq", ex))
    fs = [f[c] for c in letters]
    if len(fs) == 1:
        return fs[0]

    def prod(z):
        v = fs[0](z)
        for g in fs[1:]:
            v = v * g(z)
        return v
    return exp_product(fs, prod)


#: conditional variance, relative to the variance, below which :meth:`_stein`'s variable is
#: a linear combination of the others (float64 round-off of the Schur complement: ~eps x
#: the condition number; exactly collinear inputs give ~1e-16)
_STEIN_MIN_S = 1e-13
#: relative error of :meth:`_stein`'s moments, for the estimate of what its division by the
#: conditional variance leaves: ``_STEIN_EPS * sum |terms| / s``. With the regression
#: solved accurately (:func:`_regression`) the terms' errors cancel with the terms (the same
#: nodes at nearly the same covariances): swish, four inputs of one bias-dominated direction
#: 3e-4 and 3e-6 apart (s / var 5e-8 and ~5e-12, terms 4.7e8 and ~5e12 x the difference), R
#: 3e-10 and 3.6e-6 off (reference: R - R_diag ~ |x|^2 from the inputs 100x and 1000x
#: larger), an effective 2e-18 of the terms; this covers float64 rounding of every term
#: uncorrelated (~2e-16) 500x. (With the former pseudo-inverse regression R was 3.6e-5 and
#: 88 % off there, gelu 9 % at 1e-4, and 1e-11 here still understated it 2-34x.)
_STEIN_EPS = 1e-13
#: variance above which a conditional variance below :data:`_STEIN_MIN_S` is taken for the
#: kernel's size (flagged: an estimate of at least the value), not for collinear inputs
#: (refused): tanh, two residual inputs at K1 = 1e11 hit it across depths
_STEIN_HUGE_K = 1e8


def _regression(Kyy, cxy):
    """``beta`` (B, m) with ``Kyy beta = cxy`` for a batch of covariances ``Kyy`` (B, m, m):
    the coefficients of the Stein form's regression of x on the others.

    LU solves (backward stable) with one step of iterative refinement; a singular ``Kyy``
    (linearly dependent others: N > n0 inputs without a bias) by the pseudo-inverse. The
    Stein form needs the residual ``cxy - Kyy beta`` small against s: the former
    eigendecomposition-based pseudo-inverse for every row left it ~eps kappa, which the
    division by s amplified (gelu, four nearly coinciding residual inputs 1e-4 apart: R 9 %
    off; tanh, sigmoid 2e-4 of scale; LU: within the references, 2e-8).
    """
    beta = np.empty_like(cxy)
    try:
        beta[:] = np.linalg.solve(Kyy, cxy[..., None])[..., 0]
        ok = np.all(np.isfinite(beta), axis=1)
    except np.linalg.LinAlgError:
        ok = np.zeros(len(Kyy), dtype=bool)
        for k in range(len(Kyy)):
            try:
                beta[k] = np.linalg.solve(Kyy[k], cxy[k])
                ok[k] = bool(np.all(np.isfinite(beta[k])))
            except np.linalg.LinAlgError:
                pass
    if np.any(ok):
        r = cxy[ok] - np.einsum("kab,kb->ka", Kyy[ok], beta[ok])
        beta[ok] += np.linalg.solve(Kyy[ok], r[..., None])[..., 0]
    if not np.all(ok):
        bad = ~ok
        beta[bad] = np.einsum("kab,kb->ka", np.linalg.pinv(Kyy[bad], hermitian=True), cxy[bad])
    return beta


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
            cov = _gather(C, [[v[0] for v in var] for _, var in items],
                          [[v[1] for v in var] for _, var in items])
            vals = self._stein(names, cov) if any("t" in nm for nm in names) else \
                self._nd(names, cov)
            if vals is None:
                continue                                  # sigma'' of the ReLU family: 0
            for k, (ix, _) in enumerate(items):
                out[ix] = vals[k]
        return out

    def _nd(self, names, cov, powers=None, up=False):
        """``E[prod_k z_k^powers[k] f_k(z_k)]`` over a batch of covariances (None: 0);
        ``up``: one rule up also for four variables."""
        fs = [self.fn(nm) for nm in names]
        if any(f is None for f in fs):
            return None
        if powers is not None:
            fs = [_fn(f, k) for f, k in zip(fs, powers)]
        acc = _rule(self.accuracy, self.act, 3 if up else len(fs))
        return np.atleast_1d(np.asarray(_expect(self.act, fs, cov, accuracy=acc, **self.kw),
                                        dtype=float))

    def _stein(self, names, cov):
        """Averages with one ``t = sigma'''`` factor, without evaluating sigma''' (Stein).

        For the variable x that carries t (with ``rest`` in ``{"", "p"}`` on the same
        input), ``t rest = (q rest)' - q rest'``, and ``E[f'(x) G(Y)] = E[f(x) G(Y) (x -
        beta^T Y)] / s`` (``x = beta^T Y + e``, ``s = Var e``): moments of sigma'' only, so
        a kink of sigma'' (not a jump: R refuses those) is
        integrated. The ReLU family: 0 (None). The moments take one rule up: the division
        by ``s`` amplifies their error (tanh, two depths at gamma = 0.5, four variables: 1e-6
        relative at the default rule, 5e-10 one up).
        """
        act = self.act
        if (act.scale_invariant if act.name != "monomial" else None) is not None:
            return None
        ix = [k for k, nm in enumerate(names) if "t" in nm]
        if len(ix) != 1 or names[ix[0]] not in ("t", "pt"):
            raise NotImplementedError(f"two-depth average of {names}")
        i = ix[0]
        rest = names[i].replace("t", "")
        others = [k for k in range(len(names)) if k != i]
        carried = list(names)
        carried[i] = "".join(sorted("q" + rest))          # f = q rest: t rest = f' - q rest'
        d = len(names)
        Kyy = cov[:, others][:, :, others]
        cxy = cov[:, i, others]
        beta = _regression(Kyy, cxy)
        s = cov[:, i, i] - np.einsum("ka,ka->k", beta, cxy)
        pw = [0] * d
        pw[i] = 1
        num = self._nd(carried, cov, pw, up=True)
        mag = np.abs(num)
        for j, k in enumerate(others):
            pw = [0] * d
            pw[k] = 1
            term = beta[:, j] * self._nd(carried, cov, pw, up=True)
            num = num - term
            mag = mag + np.abs(term)
        # x a linear combination of the others to round-off (exactly collinear inputs, e.g.
        # n0 = 1 without a bias): the Stein form divides by s = 0 (was a NaN, then "R
        # overflowed; reduce the depth", which does not help). Moments that all vanish
        # (sin at K ~ 1e12, where every such average is e^(-K/2)) leave 0 at any s
        small = (s <= _STEIN_MIN_S * cov[:, i, i]) & (mag > 0)
        bad = small & (cov[:, i, i] <= _STEIN_HUGE_K)
        if np.any(bad):
            k = int(np.flatnonzero(bad)[0])
            raise FloatingPointError(
                f"R of a residual MLP at N inputs: an average with sigma''' ({names}) needs "
                f"the variable carrying it not to be a linear combination of the others, but "
                f"its conditional variance is {max(float(s[k]), 0.0):.1e} of its variance "
                f"{float(cov[k, i, i]):.3g}: inputs collinear or coinciding to round-off (with "
                "n0 = 1 and C_b = 0 every input is +-collinear; N > n0 inputs without a bias "
                "are linearly dependent). Give the network a bias (C_b > 0), merge inputs meant "
                "to coincide, use inputs that are not collinear, or compute R one input at a "
                "time")
        zero = mag == 0
        # above _STEIN_HUGE_K one input's trajectory is collinear across depths to float64
        # (residual increments of order 1 against the variance): flagged, not refused (R
        # is not resolved there anyway; the other statistics of the call are)
        s = np.where(zero, 1.0, np.where(small, np.maximum(np.abs(s), _STEIN_MIN_S
                                                           * cov[:, i, i]), s))
        val = np.where(zero, 0.0, num / s)
        # the division amplifies the moments' error by mag / |numerator| (~5e8 for inputs
        # 3e-4 apart in relative norm, _STEIN_EPS). Reported like the averages past their
        # point budget: within unresolved_averages, and moved by the estimate within
        # perturbed_unresolved
        est = _STEIN_EPS * mag / s + np.where(small, np.abs(val), 0.0)
        if residual_multi._COLLECT is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(zero, 0.0, est / (np.abs(val) + est))
            residual_multi._COLLECT.append((float(np.nan_to_num(np.max(rel), nan=1.0)),
                                            float(np.max(cov[:, i, i])), d))
        if residual_multi._PERTURB:
            val = val + est
        if rest == "p":                                   # rest' = q: - E[q q(x) G]
            qq = list(names)
            qq[i] = "qq"
            val = val - self._nd(qq, cov, up=True)
        return val


# ---------------------------------------------------------------------------
# the fold: F's form M, Q's form w, T
# ---------------------------------------------------------------------------

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


def _evec(lay, l, a, proj, J, td, f_slots, used):
    """``E[a, b, alpha] = E[phi_alpha f_ab(z^(l))]`` over all nQ features.

    ``f_ab = f1_a f2_b`` with ``f_slots = "f1f2"`` (``"ps"``: sigma'_a sigma_b, ``"qp"``:
    sigma''_a sigma'_b); ``J[a, b, f] = <d_f f_ab>_{K^(l)}`` (Stein on the increments).
    Two-depth blocks whose feature no form uses yet (``used``, (nQ,) bool) stay 0: they
    are only ever contracted with those forms (at gamma = 0, every one).
    """
    N = lay.N
    E = np.zeros((N, N, lay.nQ))
    for m in range(l + 1):
        E[:, :, lay.U(m)] = a[l, m] * np.einsum("df,abf->abd", proj[m], J)
    for p in range(l):
        for blk, g in ((lay.S(p), "sp"), (lay.QP(p), "qp")):
            if used[blk].any():
                E[:, :, blk] = td(l, p, g + f_slots).transpose(2, 3, 0, 1).reshape(N, N, N * N)
    return E


def _qt_multi(mlp, Ks, Ths, accuracy, want=("T",)):
    L, N = Ks.shape[0], Ks.shape[1]
    out = {"T": np.zeros((L,) + (N,) * 4), "Q": np.zeros((L,) + (N,) * 4)}
    if L == 1:
        return {k: out[k] for k in want}
    act = mlp.activation
    nr = _neuron(mlp, Ks, accuracy)     # one neuron's trajectory: C = Cov(z^(l), z^(m))
    avg, a, proj, C = nr.avg, nr.a, nr.proj, nr.C
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
        Gi = proj[l + 1]         # increment features as G^+ w (residual_multi._Neuron)
        Th, PP = Ths[l], avg[l].PP
        used = np.any(w != 0.0, axis=(0, 1, 2))
        used[:nM] |= np.any(M != 0.0, axis=(0, 1, 3)) | np.any(M != 0.0, axis=(0, 1, 2))
        Esp = _evec(lay, l, a, proj, Jsp[l], td, "ps", used)      # [a, b]: sigma'_a sigma_b
        Eqp = _evec(lay, l, a, proj, Jqp[l], td, "qp", used)      # [a, b]: sigma''_a sigma'_b
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
        if "Q" in want:
            vz = np.zeros((N, lay.nQ))
            for m in range(l + 2):
                vz[:, lay.U(m)] = a[l + 1, m] * proj[m].T
            for p in range(l + 1):
                vz[:, lay.S(p)] = np.einsum("yf,ecf->yce", C[l + 1, p], Jsp[p]).reshape(N, N * N)
                vz[:, lay.QP(p)] = np.einsum("yf,cef->yce", C[l + 1, p], Jqp[p]).reshape(N, N * N)
            out["Q"][l + 1] = np.einsum("xyzk,uk->xyzu", w, vz)
    return {k: out[k] for k in want}


# ---------------------------------------------------------------------------
# R: B's attachments, P's bilinear form Pi, R's linear form in neuron j's features
# ---------------------------------------------------------------------------

def residual_r_multi(mlp: MLP, x=None, *, Ks=None, Thetas=None, accuracy="default") -> np.ndarray:
    r"""Exact N-input ddNTK statistic ``R`` of a residual MLP at every layer.

    ``R[l, a0, a1, a2, a3] = n_{l-1} E[ddIH_{iijj; a0a1a2a3}]`` (i != j), with
    ``ddIH_{i0i1i2i3} = T3_{i0}[g_{i1}, g_{i2}, g_{i3}]`` (the third-derivative tensor of
    neuron i0 at input a0, rescaled by the learning rates). The conditional mean given
    the two trajectories is a linear form ``r^{0123}(j)`` in neuron j's features
    (``1``, ``sigma'''_c sigma'_e``, ``sigma''_c sigma_e``, ``sigma'_c sigma'_e`` at every
    depth). A step (``s, p, q, t = sigma, sigma', sigma'', sigma'''`` at layer l;
    ``g_{01} = C_W Theta_01 t_0 p_1 + lambda_W q_0 s_1``; ``h_{01} = C_W Theta_01 q_0 p_1
    + lambda_W p_0 s_1``; B's attachments for the pair slots ``(a0, a0; a2, a3)`` give
    ``B_{g,p_2p_3} = n E[g_{01}(z_a) p_2p_3(z_d) H_{ad;02} H_{ad;03}]`` and ``b_g(j) = n
    E_a[g_{01}(z_a) H_{aj;02} H_{aj;03}]``; ``Pi^{023}`` P's bilinear form, ``e_h =
    E[h_{01}(z^(l)) U]`` on the increments):

    .. math::
        r' = r(\gamma^4 + \xi^2\gamma^2 C_W\langle p_0p_1\rangle)\,r(j)
           + r(\xi^4 C_W^2\langle p_0p_1\rangle + \xi^2\gamma^2 C_W)\,E[p_2p_3(z_c)\,r(c)]
           + \xi^4 C_W\Theta_{02}\Theta_{03}\langle g_{01}p_2p_3\rangle + r\xi^4 C_W B_{g,p_2p_3}
           + \xi^2\gamma^2\big(\Theta_{02}\Theta_{03}\, g_{01}(z_j^{(l)}) + r\,b_g(j)\big)
           + r\xi^2 e_h^T\Pi^{023}\big(\xi^2 C_W E[p_2p_3\psi] + \gamma^2\psi(j)\big),

    ``R = E[r(j)]``. At gamma = 0 this is :func:`pdlt.theory.ddntk.ddntk_R_step`; for one
    input :func:`pdlt.theory.residual_ntk.residual_ddntk_r`. ``sigma'''`` is never
    evaluated (Stein's lemma on sigma''), and an activation whose sigma'' jumps at a kink
    is refused, as for plain MLPs. Derivation: ``docs/derivations/residual_ntk_multi.md``,
    section "R and T at N inputs (h42)".

    Parameters, returns and raises as :func:`residual_t_multi` (``R`` normalized by
    ``n_{l-1}``, shape (L, N, N, N, N), layer 1 is 0); also ValueError if sigma'' jumps.

    Examples
    --------
    >>> import numpy as np, pdlt
    >>> from pdlt.theory.residual_multi_ddi import residual_r_multi
    >>> m = pdlt.MLP(n0=2, width=8, depth=3, activation="tanh", gamma=0.5)
    >>> residual_r_multi(m, np.array([[1.0, 0.0], [0.6, 0.8]])).shape
    (3, 2, 2, 2, 2)
    """
    return _ntk_multi(mlp, x, Ks, Thetas, accuracy, lambda *a: _pr_multi(*a, want=("R",)))["R"]


def residual_p_multi_ddi(mlp: MLP, x=None, *, Ks=None, Thetas=None,
                         accuracy="default") -> np.ndarray:
    """N-input ``P`` of a residual MLP from the bilinear form ``Pi`` that R reads.

    ``P[l, a0, a1, a2, a3] = n_{l-1} E[dH_{jkk; a0a1a2} z_{j;a3}]`` (j != k). Exposed as the
    check of ``Pi`` (gamma = 0: the plain P; one input:
    :func:`pdlt.theory.residual_ntk.residual_dntk_p`) and as an independent cross-check
    of any other N-input residual P. Parameters and returns as :func:`residual_t_multi`.
    """
    return _ntk_multi(mlp, x, Ks, Thetas, accuracy, lambda *a: _pr_multi(*a, want=("P",)))["P"]


class _JLayout:
    """Features of one neuron: ``1`` | ``QS_{p;(c,e)} = sigma''_c sigma_e`` | ``PP_{p;(c,e)}
    = sigma'_c sigma'_e`` | ``TP_{p;(c,e)} = sigma'''_c sigma'_e`` (P's psi uses the
    first three blocks, R's form all four)."""

    def __init__(self, L, N):
        self.L, self.N, self.n2 = L, N, N * N
        self.nPsi = 1 + 2 * L * N * N
        self.nR = self.nPsi + L * N * N

    def blk(self, kind, p):
        o = {"qs": 1, "pp": 1 + self.L * self.n2, "tp": self.nPsi}[kind] + p * self.n2
        return slice(o, o + self.n2)

    def at(self, kind, p, c, e):
        return self.blk(kind, p).start + c * self.N + e


def _pr_multi(mlp, Ks, Ths, accuracy, want=("R",)):
    L, N = Ks.shape[0], Ks.shape[1]
    out = {k: np.zeros((L,) + (N,) * 4) for k in want}
    if L == 1:
        return out
    act = mlp.activation
    nr = _neuron(mlp, Ks, accuracy)     # one neuron's trajectory: C = Cov(z^(l), z^(m))
    avg, a, proj, C = nr.avg, nr.a, nr.proj, nr.C
    if "R" in want:
        for av in avg:
            av.t["q3p"]                                # refuses a jumping sigma''
    td = _TwoDepth(act, C, N, accuracy)
    jl = _JLayout(L, N)
    nU = L * N
    Jsp = [_stein_sd(av) for av in avg]            # [a, c, f] = <d_f (sigma'_a sigma_c)>
    Jqp = [np.asarray(av.G2) for av in avg]        # [a, c, f] = <d_f (sigma''_a sigma'_c)>
    CW, lW = np.asarray(mlp.C_W, float), np.asarray(mlp.lambda_W, float)
    ar = np.arange(N)
    beta0 = np.zeros((N,) * 4)                     # B's attachments (residual_multi._b_multi)
    bk = np.zeros((L,) + (N,) * 4)
    bi = np.zeros((L,) + (N,) * 4)
    Pi = np.zeros((N, N, N, nU, jl.nPsi))          # P's form [b0, b1, b2] -> (U of j, psi of k)
    rf = np.zeros((N,) * 4 + (jl.nR,))             # R's form [a0..a3] -> features of j

    def mean_feats(p_max):
        """``E[f]`` of every feature of depth < p_max (one neuron; ``<t_c p_e> = dqp``)."""
        m = np.zeros(jl.nR)
        m[0] = 1.0
        for p in range(p_max):
            m[jl.blk("qs", p)] = avg[p].QS.ravel()
            m[jl.blk("pp", p)] = avg[p].PP.ravel()
            m[jl.blk("tp", p)] = avg[p].dqp.ravel()
        return m

    for l in range(L - 1):                          # step layer l+1 -> l+2 (0-based l)
        r = mlp.widths[l + 1] / mlp.widths[l]
        cw, g, xi, lw = CW[l + 1], mlp.gamma[l + 1], mlp.xi[l + 1], lW[l + 1]
        Gi = proj[l + 1]         # increment features as G^+ w (residual_multi._Neuron)
        Th, PP, QS = Ths[l], avg[l].PP, avg[l].QS
        live = [p for p in range(l) if np.any(bk[p]) or np.any(bi[p])]
        PPPP = {p: td(l, p, "pppp") for p in live}  # [c, e, a, b]: pp(z^(p)) pp(z^(l))
        # E[p_b1 p_b2(z^(l)) psi] and E[p_b1 p_b2(z^(l)) f(z^(p))] for R's features
        used = np.any(Pi != 0.0, axis=(0, 1, 2, 3)) | np.any(rf != 0.0, axis=(0, 1, 2, 3))[:jl.nPsi]
        epsi = np.zeros((N, N, jl.nR))
        epsi[:, :, 0] = PP
        for p in range(l):
            for kind in ("qs", "pp", "tp"):
                blk = jl.blk(kind, p)
                if kind == "tp" and not np.any(rf[..., blk]):
                    continue
                if kind != "tp" and not used[blk].any():
                    continue
                epsi[:, :, blk] = td(l, p, kind + "pp").reshape(N * N, N, N).transpose(1, 2, 0)
        # ------------------------------------------------------------- R (reads layer l)
        if "R" in want:
            Q3PPP = (avg[l].quad("xppp") - avg[l].K[:, :, None, None] * avg[l].quad("qqpp")
                     - avg[l].K[:, None, :, None] * np.einsum("acbd->abcd", avg[l].quad("qqpp"))
                     - avg[l].K[:, None, None, :] * np.einsum("adbc->abcd", avg[l].quad("qqpp"))
                     ) / avg[l].diag[:, None, None, None]     # <t_0 p_1 p_2 p_3> (Stein)
            gm = cw * Th * avg[l].dqp + lw * QS                  # <g_01>
            gpp = cw * Th[:, :, None, None] * Q3PPP + lw * avg[l].quad("qspp")
            eh = np.zeros((N, N, nU))                            # E[h_01(z^(l)) U_{m;c}]
            for m in range(l + 1):
                eh[:, :, m * N:(m + 1) * N] = a[l, m] * np.einsum(
                    "ch,abh->abc", proj[m], cw * Th[:, :, None] * Jqp[l] + lw * Jsp[l])
            Er = np.einsum("abcdk,cdk->abcd", rf, epsi)          # E[p_2 p_3(z_c) r(c)]
            new = r * (g ** 4 + xi * xi * g * g * cw * PP)[:, :, None, None, None] * rf
            const = (xi ** 4 * cw * Th[:, None, :, None] * Th[:, None, None, :] * gpp
                     + r * (xi ** 4 * cw ** 2 * PP + xi * xi * g * g * cw)[:, :, None, None] * Er)
            for a0 in range(N):
                for a2 in range(N):
                    for a3 in range(N):
                        q4 = (a0, a0, a2, a3)
                        p23 = PP[a2, a3]
                        for a1 in range(N):
                            gG = {p: cw * Th[a0, a1] * td(l, p, "pptp")[a2, a3, a0, a1]
                                  + lw * td(l, p, "ppqs")[a2, a3, a0, a1] for p in live}
                            hist_i = sum(bi[p][q4] * gG[p] for p in live)
                            hist_k = sum(bk[p][q4] * PPPP[p][a0, a0, a2, a3] for p in live)
                            Bg = beta0[q4] * gm[a0, a1] * p23 + gm[a0, a1] * hist_k + hist_i * p23
                            piv = eh[a0, a1] @ Pi[a0, a2, a3]             # (nPsi,)
                            c = const[a0, a1, a2, a3]
                            c += r * xi ** 4 * cw * Bg
                            c += r * xi * xi * g * g * (beta0[q4] * gm[a0, a1] + hist_i)
                            c += r * xi * xi * (xi * xi * cw * float(piv @ epsi[a2, a3, :jl.nPsi])
                                                + g * g * piv[0])
                            f = new[a0, a1, a2, a3]
                            f[0] += c
                            f[1:jl.nPsi] += r * xi * xi * g * g * piv[1:]
                            f[jl.at("tp", l, a0, a1)] += xi * xi * g * g * Th[a0, a2] * Th[a0, a3] \
                                * cw * Th[a0, a1]
                            f[jl.at("qs", l, a0, a1)] += xi * xi * g * g * Th[a0, a2] * Th[a0, a3] \
                                * lw
                            for p in live:
                                f[jl.at("pp", p, a0, a0)] += r * xi * xi * g * g * gm[a0, a1] \
                                    * bk[p][q4]
            rf = new
            out["R"][l + 1] = rf @ mean_feats(l + 1)
        # ------------------------------------------------------------- Pi' (P's form)
        esp = np.zeros((N, N, nU))                   # E[p_b0 s_e(z^(l)) U_{m;c}] [b0, e, c]
        for m in range(l + 1):
            esp[:, :, m * N:(m + 1) * N] = a[l, m] * np.einsum("ch,abh->abc", proj[m], Jsp[l])
        QSPP = avg[l].quad("qspp")
        newPi = r * g ** 3 * Pi
        newPi[..., 0] += r * g * xi * xi * cw * np.einsum("xyzak,yzk->xyza", Pi,
                                                          epsi[:, :, :jl.nPsi])
        X = np.zeros((N, N, N, N, jl.nPsi))          # [b0, b1, b2, e] -> psi of k
        for b0 in range(N):
            for b1 in range(N):
                for b2 in range(N):
                    q4 = (b0, b0, b1, b2)
                    for e in range(N):
                        fq = QS[b0, e]                                # <q_b0 s_e>
                        hG = {p: td(l, p, "ppqs")[b1, b2, b0, e] for p in live}
                        hist_i = sum(bi[p][q4] * hG[p] for p in live)
                        hist_k = sum(bk[p][q4] * PPPP[p][b0, b0, b1, b2] for p in live)
                        Bq = beta0[q4] * fq * PP[b1, b2] + fq * hist_k + hist_i * PP[b1, b2]
                        ephPi = esp[b0, e] @ Pi[b0, b1, b2]           # (nPsi,)
                        v = X[b0, b1, b2, e]
                        ePe = float(ephPi @ epsi[b1, b2, :jl.nPsi])
                        v[0] += xi * xi * cw * (Th[b0, b1] * Th[b0, b2] * QSPP[b0, e, b1, b2]
                                                + r * Bq + r * ePe)
                        v[0] += g * g * r * (beta0[q4] * fq + hist_i)
                        v[jl.at("qs", l, b0, e)] += g * g * Th[b0, b1] * Th[b0, b2]
                        for p in live:
                            v[jl.at("pp", p, b0, b0)] += g * g * r * fq * bk[p][q4]
                        v += g * g * r * ephPi
        newPi[:, :, :, (l + 1) * N:(l + 2) * N, :] += xi * cw * np.einsum("xyzek,ef->xyzfk",
                                                                           X, Gi)
        Pi = newPi
        # ------------------------------------------------------------- B's attachments
        chi = xi * xi * cw * PP + g * g
        i1, i2 = ar[:, None, None, None], ar[None, :, None, None]
        i3, i4 = ar[None, None, :, None], ar[None, None, None, :]
        ThTh = Th[i1, i3] * Th[i2, i4]
        hi = sum(bi[p] * np.einsum("cdab->abcd", PPPP[p]) for p in live) if live else 0.0
        hk = sum(bk[p] * PPPP[p] for p in live) if live else 0.0
        chi12, chi34 = chi[i1, i2], chi[i3, i4]
        beta0 = (xi ** 4 * cw ** 2 * avg[l].quad("pppp") * ThTh
                 + r * (chi12 * chi34 * beta0 + xi * xi * cw * (chi34 * hi + chi12 * hk)))
        bk[:l] *= r * g * g * chi12
        bi[:l] *= r * g * g * chi34
        bk[l] = bi[l] = xi * xi * g * g * cw * ThTh
        if "P" in want:
            vz = np.zeros((N, nU))                   # E[U_{m;c} z_y^(l+1)] [y, (m, c)]
            for m in range(l + 2):
                vz[:, m * N:(m + 1) * N] = a[l + 1, m] * proj[m].T
            out["P"][l + 1] = np.einsum("xyzak,ua,k->xyzu", Pi, vz,
                                        mean_feats(l + 1)[:jl.nPsi])
    return out
